"""Challenge: does the model work on inputs longer or shorter than those it was trained on?

What you will learn
  - the sinusoidal positional encoding is a formula, so it gives every position up to --max-len a
    vector, also positions that no training input reached;
  - whether the trained weights know what to do with those positions is a different question,
    measured here: exact-match by input length, and accuracy by answer position.

Run it (from the repository root), after lesson 05 has saved mini_transformer.pt:
  python -m challenges.length_generalization --lengths 8,12,16,20,24
  python -m challenges.length_generalization --checkpoint out/mini_transformer.pt --lengths 4,8,16,24
  python 05_mini_transformer.py --min-len 4 --eval-lengths 4,8,12,16,20,24   # train, then the same
Writes length_generalization.png (and length_generalization.json) to --out-dir. While lengths are
measured, those done are in length_generalization.partial.json; only a complete measurement replaces
length_generalization.json, so an interrupted rerun keeps the last complete one.
"""
import sys
from pathlib import Path

if __package__ in (None, ""):     # run as a file: common/ is one folder up
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import common  # noqa: E402  (first: it checks $OMP_NUM_THREADS before torch reads it)
import torch  # noqa: E402

import lesson05_plumbing  # noqa: E402
from lesson05_plumbing import checkpoints  # noqa: E402
from lesson05_plumbing.flags import parse_lengths  # noqa: E402

TEST_SIZE = 500                   # random inputs per length
LENGTH_SEED = 3_000_003           # the set of length L is drawn from seed LENGTH_SEED + L
JSON_NAME = "length_generalization.json"


def lesson05():
    """Lesson 05: the running script under `python 05_mini_transformer.py --eval-lengths`, else loaded."""
    return lesson05_plumbing.lesson()


def trained_lengths(config, checkpoint=None) -> list:
    """The input lengths the model was trained on: this run's and, after --resume, the checkpoint's."""
    lengths = set(range(config.resolved_min_len(), config.seq_len + 1))
    if checkpoint is not None:
        saved = type(config)(**checkpoint["config"])
        lengths |= set(range(saved.resolved_min_len(), saved.seq_len + 1))
    return sorted(lengths)


def length_test_set(config, length: int, size: int = TEST_SIZE):
    """`size` random inputs of exactly `length` digits, from seed LENGTH_SEED + length: the same set
    for every run and every training seed."""
    L5 = lesson05()
    g = torch.Generator().manual_seed(LENGTH_SEED + length)
    return L5.make_batch(L5.sample_inputs(size, length, length, config.n_digits, g), config)


def measure(config, model, length, device):
    """Greedy exact-match, token accuracy, answer lengths and accuracy by position at one input length."""
    L5 = lesson05()
    data = length_test_set(config, length)
    tokens = L5.decode(model, data.src.to(device), L5.output_len(config.task, length, config.n_digits) + 1).cpu()
    greedy = L5.score_answers(tokens, data.tgt_out)
    written = [len(L5.tokens_to_digits(row)) for row in tokens]
    expected = [len(L5.tokens_to_digits(row)) for row in data.tgt_out]
    return {"sequences": len(data), "exact_match": greedy["exact_match"], "exact_count": greedy["exact_count"],
            "token_accuracy": greedy["token_accuracy"],
            "answers_of_right_length": sum(w == e for w, e in zip(written, expected)) / len(data),
            "accuracy_by_position": [1 - w / n for w, n in zip(greedy["position_wrong"], greedy["position_count"])]}


def verdict(results, trained, reference) -> list:
    """Sentences built from the measured exact-match of each length and of the trained lengths."""
    lo, hi = min(trained), max(trained)
    if reference < 0.5:
        return [f"The model did not learn the trained lengths (exact-match {reference:.1%} there), so other "
                "lengths say nothing about the positional encoding: train it to the target first."]
    sentences = []
    longer, shorter = [L for L in results if L > hi], [L for L in results if L < lo]
    if longer:
        acc = results[max(longer)]["exact_match"]
        holds = reference - acc <= 0.1
        sentences.append(f"Longer inputs: every position has an encoding, but at length {max(longer)} exact-match "
                         f"was {acc:.1%} against {reference:.1%} on the trained lengths: "
                         + ("what the model learned carried over." if holds else
                            "nothing in training taught the weights what to do with the new positions."))
    if shorter:
        acc = results[min(shorter)]["exact_match"]
        sentences.append(f"Shorter inputs use only known positions; at length {min(shorter)} exact-match was "
                         f"{acc:.1%} (trained lengths {reference:.1%})"
                         + ("." if reference - acc <= 0.1 or lo < hi else
                            ": trained on one length only, the model never saw an input end earlier (try --min-len)."))
    if not sentences:
        sentences.append(f"Every length asked for lies in the trained range {lo}..{hi}; ask for longer or shorter "
                         "ones to see what the positional encoding does not buy.")
    return sentences


def evaluate(config, model, lengths, trained, device, out_dir, show=False, save=None) -> dict:
    """Measure each length, print a table and the verdict, draw length_generalization.png.
    save(found, complete) (if given) is called after each length, and with everything before the figure."""
    L5 = lesson05()
    lo, hi = min(trained), max(trained)
    reference = L5.evaluate_teacher_forced(model, L5.heldout_sets(config)[1].to(device))["exact_match"]
    results = {}
    for L in lengths:
        results[L] = measure(config, model, L, device)
        if save is not None:
            save({"results": {str(k): r for k, r in results.items()}, "trained": trained, "reference": reference},
                 complete=False)
    rows = [[L, "yes" if L in trained else "longer" if L > hi else "shorter" if L < lo else "no (gap)",
             common.stats.share_text(r["exact_count"], r["sequences"]), r["token_accuracy"],
             r["answers_of_right_length"]] for L, r in results.items()]
    common.table(rows, ["length", "trained on", "exact-match (95% interval)", "token acc.", "right length"])
    print(f"  (the test set at the trained lengths: exact-match {reference:.4f}; right length: share of answers "
          "with as many digits as expected)")
    sentences = verdict(results, trained, reference)
    common.explain("\n\n".join(sentences))
    found = {"results": {str(L): r for L, r in results.items()}, "trained": trained, "reference": reference,
             "sentences": sentences}
    if save is not None:
        save(found, complete=True)                 # the measurement first, then the figure
    plot(config, results, trained, reference, out_dir, show)
    return found


def after_lesson_05(config, model, args, device, checkpoint=None) -> dict:
    """Lesson 05's --eval-lengths: this challenge's measurement on the model the lesson just trained."""
    common.section(8, "Length generalization (--eval-lengths): inputs longer and shorter than in training")
    return evaluate(config, model, args.eval_lengths, trained_lengths(config, checkpoint), device, args.out_dir,
                    args.show)


def plot(config, results, trained, reference, out_dir, show):
    """Left: exact-match by input length, trained lengths shaded. Right: accuracy by answer position.
    Only measured lengths get a marker; no line joins lengths that were not measured in between."""
    plt = common.pyplot(show)
    lengths = sorted(results)
    fig, axes = common.new_figure(1, 2, figsize=(13, 5.4), show=show, layout="constrained")
    ax = axes[0]
    runs = list(zip([L for L in trained if L - 1 not in trained], [L for L in trained if L + 1 not in trained]))
    for i, (a, b) in enumerate(runs):
        ax.axvspan(a - 0.5, b + 0.5, color="tab:green", alpha=0.15, label=None if i else "trained lengths")
    ax.plot(lengths, [results[L]["exact_match"] for L in lengths], "o", ms=7, label="exact-match (whole answer)")
    ax.plot(lengths, [results[L]["token_accuracy"] for L in lengths], "s", ms=5, label="token accuracy")
    ax.axhline(reference, color="gray", ls=":", lw=1, label=f"test set, trained lengths ({reference:.1%})")
    ax.set_xticks(lengths)
    ax.set(xlabel="input length (digits)", ylabel=f"accuracy on {TEST_SIZE} inputs (greedy)", ylim=(-0.02, 1.02),
           title="Accuracy by input length (markers: measured lengths)")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2)
    ax = axes[1]
    colors = plt.cm.viridis([0.9 * i / max(1, len(lengths) - 1) for i in range(len(lengths))])
    for L, color in zip(lengths, colors):
        by_pos = results[L]["accuracy_by_position"]
        ax.plot(range(1, len(by_pos) + 1), by_pos, "-" if L in trained else "--", marker=".", color=color,
                label=f"length {L}" + ("" if L in trained else " (not trained on)"))
    ax.set(xlabel="answer position (1 = first token; the last one is EOS)", ylabel="token accuracy (greedy)",
           ylim=(-0.02, 1.02), title="Where the answers go wrong: accuracy by answer position")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=3)
    span = f"length {trained[0]}" if len(trained) == 1 else f"lengths {min(trained)}..{max(trained)}"
    fig.suptitle(f"Length generalization on '{config.task}': trained on {span}")
    common.save_figure(fig, out_dir, "length_generalization.png", show=show)


@common.entry_point
def main(argv=None):
    parser = common.lesson_parser(__doc__)
    parser.add_argument("--checkpoint", default="mini_transformer.pt", help="a model saved by lesson 05")
    parser.add_argument("--lengths", default="8,12,16,20,24", help="input lengths to test, e.g. 8,16,24")
    args = common.parse_args(parser, argv)
    checkpoint = checkpoints.read_checkpoint(args.checkpoint)
    config = lesson05().TrainConfig(**checkpoint["config"])
    lengths = parse_lengths(args.lengths, config)
    device = common.setup(args, "Challenge: length generalization")
    model = checkpoints.load_checkpoint(args.checkpoint).to(device)
    trained = trained_lengths(config)
    print(f"  model: {args.checkpoint} (task {config.task}, trained on lengths {trained[0]}..{trained[-1]})")
    result, done = common.files.Result(args.out_dir, JSON_NAME), {}

    def save(found, complete):                     # NAME.partial.json until every length is measured
        done.update(found, checkpoint=str(args.checkpoint), lengths=lengths, complete=complete, interrupted=False)
        return result.complete(done) if complete else result.save(done)

    try:
        evaluate(config, model, lengths, trained, device, args.out_dir, args.show, save=save)
    except KeyboardInterrupt:
        if done and not done["complete"]:
            result.save({**done, "interrupted": True})
        raise


if __name__ == "__main__":
    main()
