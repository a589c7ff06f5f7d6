"""Challenge: mystery models. Each has one hidden bug; read its symptoms and name the bug.

What you will learn
  - to read what a broken transformer shows: loss curves, teacher-forced against free-running
    exact-match, attention maps and their row sums, the answers themselves;
  - what the classic bugs do (a flipped mask, no positions, the softmax over the wrong axis, ...),
    why, and the symptom that gives each one away.

Every model is lesson 05's, trained by lesson 05's train() on reversal with the same settings and
the same seed. Each mystery model has one bug from challenges/bugs.py, applied through the
lessons' own code (a lesson's function swapped for a buggy one, a setting, or an edit of the built
model); the reference has none. The models are labelled by letters only: which bug is where
follows from --seed and --count.

Run it (from the repository root)
  python -m challenges.diagnose                      # 6 mystery models and the reference (2-3 min)
  python -m challenges.diagnose --list               # the bugs a model may have
  python -m challenges.diagnose --answer A=no_positions,B=flipped_mask,...   # grade your diagnosis
  python -m challenges.diagnose --reveal             # the answers, explained
  python -m challenges.diagnose --seed 7 --count 4   # another game (grade it with --seed 7)
  python -m challenges.diagnose --quick              # tiny models in seconds (a smoke test)
Writes to --out-dir: mystery_reference.png, mystery_A.png, ... (one figure per model),
mystery_reference.html, mystery_A.html, ... (every attention map of a few test examples, for a
browser) and mystery_models.json (the numbers; --answer and --reveal read it, so they need no
retraining). While a game trains, its finished models are in mystery_models.partial.json,
mystery_reference.partial.png, mystery_reference.partial.html, ...; only a finished game replaces
the files of the last one, so Ctrl-C (or SIGTERM) keeps both: the last finished game, and the
models this one finished (--answer grades those when no finished game of that seed is there).
"""
import hashlib
import json
import math
import os
import random
import sys
import time
from dataclasses import asdict
from pathlib import Path

if __package__ in (None, ""):     # run as a file (python challenges/diagnose.py): common/ is one folder up
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import common  # noqa: E402  (first: it checks $OMP_NUM_THREADS before torch reads it)
import torch  # noqa: E402

from challenges import bugs, variants  # noqa: E402
from common import load_lesson  # noqa: E402
from lesson05_plumbing import text, training  # noqa: E402
from lesson05_plumbing.settings import validate_config  # noqa: E402
from lesson05_plumbing import explorer  # noqa: E402

# Reused from lesson 05 (one source for each component): its config, data, training loop and decoding.
lesson05 = load_lesson(5)
TrainConfig = lesson05.TrainConfig

# %% Knobs (edit these, or use the flags)
COUNT = 6                  # mystery models per game (--count); each gets a different bug
# The game's settings: lesson 05's TrainConfig with these fields changed, the same for every model.
GAME = dict(
    task="reverse",
    seq_len=8, min_len=4,  # inputs of 4 to 8 digits: padding, so a missing padding mask matters
    d_model=64, n_heads=2,  # heads of d_head = 32: wide enough for the missing 1/sqrt(d_k) to matter
    d_ff=128,
    dropout=0.1,           # some dropout, so that evaluating with dropout on is a bug with symptoms
    lr=1e-2,               # lesson 05's 5e-3 doubled: the missing 1/sqrt(d_k) then shows plainly
    steps=800,             # the most steps; training stops earlier at the target (99% exact-match)
    eval_every=10, patience=0,   # validate every 10 steps; no early stop but the target
    val_size=500, test_size=500,
)
QUICK = dict(seq_len=5, min_len=3, d_model=32, d_ff=64, steps=60, val_size=100, test_size=100)  # --quick
FREE_RUNNING_CHECKS = 100  # validation inputs decoded greedily at every validation (the free-running curve)
EXAMPLES = 5               # test inputs shown with each model's answers
STATE_NAME = "mystery_models.json"
PARTIAL_STATE_NAME = common.files.partial_name(STATE_NAME)   # the models of a game that is not finished
STATE_FORMAT = "mystery-models-v1"
REFERENCE = "reference"


# %% Building blocks: the draw
def drawable():
    """The names of the bugs that may be hidden in a model (those with symptoms at these settings)."""
    return [name for name, bug in bugs.CATALOGUE.items() if bug.drawn]


def draw(seed: int, count: int) -> dict:
    """{letter: bug name} for a game: `count` different bugs, chosen and ordered by `seed` alone."""
    names = random.Random(seed).sample(drawable(), count)
    return {chr(ord("A") + i): name for i, name in enumerate(names)}


def draw_check(drawn: dict) -> str:
    """A fingerprint of the draw, kept in the state file: grading refuses a catalogue that changed."""
    return hashlib.sha256(json.dumps(sorted(drawn.items())).encode()).hexdigest()[:16]


# %% Building blocks: training one model, measuring its symptoms
def train_model(variant, base, device, bar=None):
    """Train lesson 05's model with `variant` applied, then measure it while it is still applied.

    The held-out sets are made inside the variant too: a bug in how the data is built (the shift,
    BOS) is in the learner's validation data as well. Returns a plain record (the json's entry).
    KeyboardInterrupt if Ctrl-C stopped the training (lesson 05's train() returns early then).
    """
    config = variants.configure(variant, base)
    curves = {"free_step": [], "free_exact_match": []}
    validations = {"val_step": [], "val_loss": [], "val_exact_match": []}   # kept if training diverges
    start, cpu = time.perf_counter(), time.process_time()
    with variants.applied(variant):
        val, test = lesson05.heldout_sets(config)
        model = variants.build(variant, config).to(device)
        checks = val.src[:FREE_RUNNING_CHECKS].to(device), val.tgt_out[:FREE_RUNNING_CHECKS]

        def after_validation(step, metrics):   # lesson 05's train() calls this after each validation
            tokens = lesson05.greedy_decode(model, checks[0], answer_len(config) + 1).cpu()
            curves["free_step"].append(step)
            curves["free_exact_match"].append(exact_share(lesson05.score_answers(tokens, checks[1])))
            for key, value in (("val_step", step), ("val_loss", metrics["loss"]),
                               ("val_exact_match", metrics["exact_match"])):
                validations[key].append(value)
            if bar is not None:
                bar.set_postfix(step=step, refresh=True)

        try:
            result = lesson05.train(config, device, quiet=True, data=(val, test), model=model,
                                    callback=after_validation)
        except training.TrainingDiverged as exc:          # "the training loss became nan at step N (...)"
            result, diverged = None, str(exc).split(" (")[0]
        if result is not None and result.interrupted:
            raise KeyboardInterrupt
        finite = all(bool(torch.isfinite(p).all()) for p in model.parameters())
        found, answers = symptoms(model, config, test, device) if finite else ({}, None)
        example = attention_example(model, test, device, config) if finite else None
        explored = explore(model, test, answers) if finite else None
    shown = range(min(EXAMPLES, len(test))) if answers is not None else ()
    examples = [[lesson05.tokens_to_digits(test.src[i]), lesson05.tokens_to_digits(test.tgt_out[i]),
                 lesson05.tokens_to_digits(answers[i])] for i in shown]      # input, expected, answer
    record = {"history": validations, **curves, "symptoms": found, "example": example, "examples": examples,
              "explorer": explored}                      # the page's data: not saved in the json
    if result is None:
        record.update(stopped=f"diverged: {diverged}", steps_run=None, target_step=None)
        found.update(train_loss=None, val_loss=None)
    else:
        h = result.history
        record["history"] = {k: h[k] for k in ("step", "loss", "val_step", "val_loss", "val_exact_match")}
        record.update(stopped=result.stopped_because, steps_run=result.steps_run, target_step=result.target_step)
        found["train_loss"] = sum(h["loss"][-20:]) / len(h["loss"][-20:]) if h["loss"] else None
        found["val_loss"] = h["val_loss"][-1]
    record.update(wall_seconds=time.perf_counter() - start, cpu_seconds=time.process_time() - cpu)
    return record


def exact_share(compared):
    """Exact-match of lesson05.score_answers' counts, as a plain float (the same as the teacher-forced one)."""
    return compared["exact_count"] / compared["n"]


def answer_len(config):
    return lesson05.output_len(config.task, config.seq_len, config.n_digits)


@torch.no_grad()
def symptoms(model, config, test, device):
    """The numbers of the summary, measured on the test set (call while the model's bug is applied),
    and the free-running answers (B, L)."""
    src = test.src.to(device)
    forced = lesson05.evaluate_teacher_forced(model, test.to(device))
    first = lesson05.greedy_decode(model, src, answer_len(config) + 1).cpu()
    again = lesson05.greedy_decode(model, src, answer_len(config) + 1).cpu()   # the same inputs once more
    free = lesson05.score_answers(first, test.tgt_out)
    answers = [lesson05.tokens_to_digits(row) for row in first]
    model.eval()                   # as lesson 05 plots attention (a bug may stop eval() from working)
    weights = model.attention_weights(src, test.tgt_in.to(device))
    weights = {k: torch.cat(v, dim=1).cpu() for k, v in weights.items() if k != "logits"}  # layers as heads
    return {"tf_exact": forced["exact_match"], "tf_token_accuracy": forced["token_accuracy"],
            "free_exact": exact_share(free), "free_token_accuracy": free["token_accuracy"],
            "changed": float((first != again).any(dim=1).float().mean()),
            "one_digit": sum(len(a) > 1 and len(set(a)) == 1 for a in answers) / len(answers),
            **attention_numbers(weights, test.src, test.tgt_out)}, first


def attention_numbers(weights, src, tgt_out):
    """Row sums, weight on PAD keys, where the decoder looks: over the real query rows of a batch.

    weights: {kind: (B, heads, T_q, T_k)}. Real rows: input digits (encoder), answer positions and
    EOS (decoder, cross). PAD = lesson 05's padding token.
    """
    real = {"enc": src != lesson05.PAD, "dec": tgt_out != lesson05.PAD, "cross": tgt_out != lesson05.PAD}
    found = {}
    for short, kind in (("enc", "encoder_self"), ("dec", "decoder_self"), ("cross", "cross")):
        w = weights[kind]                                                 # (B, heads, T_q, T_k)
        rows = real[short][:, None, :].expand(w.shape[:3])               # (B, heads, T_q)
        sums = w.sum(-1)[rows]
        found[f"{short}_rows"] = [float(sums.min()), float(sums.max())]
        found[f"{short}_focus"] = float(w.max(-1).values[rows].mean())   # 1: one key takes all
        if short != "dec":                                                # keys are input positions
            pad_keys = (src == lesson05.PAD)[:, None, None, :]
            found[f"{short}_pad"] = float((w * pad_keys).sum(-1)[rows].mean())
    w, rows = weights["decoder_self"], real["dec"][:, None, :].expand(weights["decoder_self"].shape[:3])
    T = w.size(-1)
    later = torch.ones(T, T, dtype=torch.bool).triu(1)                   # key after the query
    found["dec_later"] = float((w * later).sum(-1)[rows].mean())
    found["dec_own"] = float(w.diagonal(dim1=-2, dim2=-1)[rows].mean())  # key = the query's position
    found["dec_first"] = float(w[..., 0][rows].mean())                   # key = position 0 (BOS)
    # Keys that hold the same digit: how differently does the cross-attention weigh them?
    w = weights["cross"]                                                  # (B, heads, T_tgt, T_src)
    same = (src[:, :, None] == src[:, None, :]) & (src != lesson05.PAD)[:, :, None]
    same &= ~torch.eye(src.size(1), dtype=torch.bool)                    # (B, T_src, T_src) pairs j != k
    pairs = real["cross"][:, None, :, None, None] & same[:, None, None]   # (B, 1, T_tgt, T_src, T_src)
    gaps = (w[..., :, None] - w[..., None, :]).abs()[pairs.expand(*w.shape, w.size(-1))]
    found["cross_same_digit"] = float(gaps.mean()) if gaps.numel() else 0.0
    return found


def example_index(test, config):
    """A test input shorter than the longest, so that its padding shows in the maps (else the first)."""
    lengths = (test.src != lesson05.PAD).sum(1)
    shorter = ((lengths > config.resolved_min_len()) & (lengths < config.seq_len)).nonzero()
    return int(shorter[0]) if len(shorter) else 0


@torch.no_grad()
def attention_example(model, test, device, config):
    """Every attention map of one test example (padding included), as plain lists for the json."""
    i = example_index(test, config)
    model.eval()
    weights = model.attention_weights(test.src[i:i + 1].to(device), test.tgt_in[i:i + 1].to(device))
    return {"src": test.src[i].tolist(), "tgt_in": test.tgt_in[i].tolist(), "tgt_out": test.tgt_out[i].tolist(),
            **{kind: torch.cat(weights[kind], dim=1)[0].cpu().tolist()
               for kind in ("encoder_self", "decoder_self", "cross")}}


# %% Building blocks: the state file (what --answer and --reveal read)
def new_state(seed, count, quick, base, drawn):
    return {"format": STATE_FORMAT, "seed": seed, "count": count, "quick": quick, "draw_check": draw_check(drawn),
            "letters": list(drawn), "settings": asdict(base), "models": {}, "interrupted": False,
            "complete": False, "wall_seconds": 0.0, "cpu_seconds": 0.0}


def read_state(out_dir, seed, count_flag):
    """The state of the game of --seed trained in out_dir: the last finished one (mystery_models.json),
    else the finished models of an interrupted one (mystery_models.partial.json), checked against
    --seed (and --count if given). UserError (one line) when there is none, it is another seed's, or
    it cannot be read. The state's "file" says which file it came from."""
    train_it = f"python -m challenges.diagnose --seed {seed} --out-dir {out_dir}"
    paths = [Path(out_dir) / name for name in (STATE_NAME, PARTIAL_STATE_NAME)]
    existing = [path for path in paths if os.path.lexists(path)]
    if not existing:
        raise common.UserError(f"no mystery models were trained in {out_dir} (no {STATE_NAME}); train them "
                               f"first: {train_it}")
    found, damaged = [], []
    for path in existing:
        try:
            found.append({**checked_state(path, train_it), "file": path.name})
        except common.UserError as exc:
            damaged.append(exc)
    fits = [s for s in found if s["seed"] == seed and count_flag in (None, s["count"])]
    if not fits:
        if damaged:
            raise damaged[0]
        trained_seed, count = found[0]["seed"], found[0]["count"]
        if trained_seed != seed:
            raise common.UserError(f"the mystery models in {out_dir} were trained with --seed {trained_seed}, not "
                                   f"--seed {seed}: use --seed {trained_seed}, or train seed {seed} first: {train_it}")
        raise common.UserError(f"--count {count_flag}: the models of seed {seed} in {out_dir} were trained with "
                               f"--count {count}; leave --count out (or give --count {count})")
    state = fits[0]
    drawn = draw(state["seed"], state["count"])
    if state.get("draw_check") != draw_check(drawn):
        raise common.UserError(f"the bug catalogue changed since the models in {out_dir} were trained, so the "
                               f"draw of seed {seed} is not theirs any more; train them again: {train_it}")
    trained = [letter for letter in drawn if letter in state["models"]]
    if not trained:
        raise common.UserError(f"no mystery model of seed {seed} finished training in {out_dir} (the run was "
                               f"interrupted); train them again: {train_it}")
    return state, {letter: drawn[letter] for letter in trained}


def checked_state(path, train_it):
    """The state file at `path`, with every part --answer and --reveal read of the type they need;
    UserError naming the file when it is damaged (or a folder, a FIFO: never opened then)."""
    again = f"train the models again: {train_it}"
    state = common.files.read_json(path, "the state file", again)

    def damaged(what):
        return common.UserError(f"{path} is not a state file of this game ({what}); {again}")

    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise damaged(f"no format {STATE_FORMAT!r}")
    whole = {k: state.get(k) for k in ("seed", "count")}
    if any(isinstance(v, bool) or not isinstance(v, int) for v in whole.values()) \
            or not 1 <= whole["count"] <= len(drawable()):
        raise damaged(f"seed {whole['seed']!r}, count {whole['count']!r}")
    models, letters = state.get("models"), state.get("letters")
    if not isinstance(models, dict) or not isinstance(letters, list) or not all(isinstance(x, str) for x in letters):
        raise damaged("its models or letters are not a dict and a list")
    for label, record in models.items():
        if not isinstance(record, dict) or not isinstance(record.get("symptoms"), dict) \
                or not isinstance(record.get("stopped"), str) \
                or not (record.get("steps_run") is None or isinstance(record.get("steps_run"), int)) \
                or not all(isinstance(v, (int, float, list, type(None))) for v in record["symptoms"].values()):
            raise damaged(f"the record of model {label!r} is damaged")
    if letters and not models.get(REFERENCE, {}).get("symptoms"):
        raise damaged("no reference model, or one without numbers to compare with")
    keys = set(models[REFERENCE]["symptoms"]) if REFERENCE in models else set()
    if any(r["symptoms"] and set(r["symptoms"]) != keys for r in models.values()):
        raise damaged("models measured with different symptoms")
    return state


def note_earlier_game(path, drawn):
    """A new game replaces the state of an earlier one in the same folder; say which of its figures stay."""
    try:
        earlier = json.loads(path.read_text()) if path.is_file() else {}
        left = [f"mystery_{letter}.png" for letter in earlier["letters"] if letter not in drawn]
    except (OSError, ValueError, KeyError, TypeError):
        return
    if left and (path.parent / left[0]).exists():
        print(f"  note: {', '.join(left)} in {path.parent} are from the earlier game (seed {earlier.get('seed')}), "
              "not this one")


# %% 1. The game
def section_1_game(base, count, seed, quick):
    common.section(1, f"The game: {count} mystery models and a reference, seed {seed}")
    print("  reused through common.load_lesson(5): TrainConfig, heldout_sets, Seq2SeqTransformer, train,")
    print("  evaluate_teacher_forced, greedy_decode; the bugs: challenges/bugs.py (challenges.variants)")
    common.explain(f"""
        Every model is lesson 05's ({base.d_model} wide, {base.n_heads} heads, {base.n_layers} encoder
        and {base.n_layers} decoder block{'s' if base.n_layers > 1 else ''}, dropout {base.dropout:g}),
        trained on reversal of {base.resolved_min_len()} to {base.seq_len} digits with the same
        settings, the same seed and the same batches, until validation exact-match reaches
        {base.target:.0%} or {base.steps} steps. The reference has no bug. Each mystery model, A to
        {chr(ord('A') + count - 1)}, has one bug from the list of --list, each letter a different one.""")
    common.explain(f"""
        How to read a figure. Top: the training and validation loss; validation exact-match
        teacher-forced (the decoder reads the right answer, shifted) and free-running (greedy: it
        reads its own answer), on {FREE_RUNNING_CHECKS} validation inputs; a few test inputs with
        the model's answers. Below: the attention maps of one test example (PAD shown as '.'), one
        row of maps per head, with each query row's sum on the right. Compare every panel with the
        reference's: a difference is a symptom.""")
    if quick:
        print("  --quick: tiny models trained for a few steps; their symptoms are faint. Play with the default run.")


# %% 2. Training
def section_2_train(labels, base, device, state, save, out_dir, figure_name=lambda label: f"mystery_{label}.png",
                    page_name=lambda label: f"mystery_{label}.html"):
    """Train the reference and the mystery models in turn; after each one, its numbers go to the state
    file, its figure is drawn (as figure_name(label)) and its page written (page_name(label)). Returns True when every model finished,
    False after Ctrl-C or SIGTERM."""
    common.section(2, "Training the models (Ctrl-C stops and keeps what finished)")
    start, cpu = time.perf_counter(), time.process_time()
    bar = common.progress(total=len(labels), desc="mystery models", unit="model")
    try:
        for label, variant in labels.items():
            record = train_model(variant, base, device, bar)
            explored = record.pop("explorer")
            state["models"][label] = record
            save()                                              # the numbers first, then the figure
            with bar.external_write_mode():                   # "saved figure: ..." above the bar
                record["figure"] = plot_model(label, record, base, out_dir, show=False, name=figure_name(label))
                if explored is not None:
                    record["page"] = write_page(label, explored, base, out_dir, page_name(label))
            save()
            bar.update(1)
            bar.write(f"  {name_of(label)}: {stopped_text(record, base)}; {record['wall_seconds']:.1f} s "
                      f"({record['cpu_seconds']:.1f} s of CPU)")
    except KeyboardInterrupt:
        state["interrupted"] = True
    finally:
        bar.close()
        state["wall_seconds"] = time.perf_counter() - start
        state["cpu_seconds"] = time.process_time() - cpu
        state["complete"] = len(state["models"]) == len(labels)
        save()
    done = len(state["models"])
    print(f"  {done} of {len(labels)} models in {state['wall_seconds']:.0f} s of wall time "
          f"({state['cpu_seconds']:.0f} s of CPU time); their numbers: "
          f"{STATE_NAME if state['complete'] else PARTIAL_STATE_NAME}")
    return not state["interrupted"]


def name_of(label):
    return "reference" if label == REFERENCE else f"model {label}"


def stopped_text(record, base):
    if record["steps_run"] is None:
        return record["stopped"]
    if record["target_step"] is not None and record["stopped"] == "target reached":
        return f"reached {base.target:.0%} at step {record['target_step']}"
    return f"ran all {record['steps_run']} steps"


# %% 3. The symptoms in numbers
def section_3_summary(state, base):
    common.section(3, "The symptoms in numbers (test set; compare each line with the reference)")
    training, rows, where = [], [], []
    for label, record in state["models"].items():
        s, name = record["symptoms"], name_of(label)
        if not s:                                        # diverged: no finite weights to measure
            training.append([name, stopped_text(record, base)] + ["-"] * 5)
            continue
        training.append([name, stopped_text(record, base), loss_text(s.get("train_loss")),
                         loss_text(s.get("val_loss")), f"{s['tf_exact']:.1%}", f"{s['free_exact']:.1%}",
                         f"{s['changed']:.0%}"])
        rows.append([name] + [bugs.span(s[f"{kind}_rows"]) for kind in ("enc", "dec", "cross")]
                    + [f"{s[f'{kind}_focus']:.2f}" for kind in ("enc", "dec", "cross")])
        where.append([name] + [f"{s[key]:.2f}" for key in ("enc_pad", "cross_pad", "dec_later", "dec_own",
                                                            "dec_first")])
    common.table(training, ["", "training", "train loss", "val loss", "exact: forced", "exact: free", "changed"])
    common.explain(f"""
        train loss: the last 20 training batches (dropout on); val loss: the last validation
        (dropout off). Exact-match on the {base.test_size} test inputs: teacher-forced (one pass,
        the decoder reads the right answer) and free-running (greedy decoding). changed: the share
        of test answers that differ when the same inputs are decoded a second time. A digit
        guessed at random costs a loss of ln {base.n_digits} = {math.log(base.n_digits):.2f}.""")
    if rows:
        common.table(rows, ["", "row sums: enc", "dec", "cross", "focus: enc", "dec", "cross"])
        common.explain("""
            Attention on the test set, every head, real query rows only: the smallest and largest
            row sum (a softmax over the keys gives exactly 1), and the focus, the largest weight of
            a row averaged (1: one key takes all the weight).""")
        common.table(where, ["", "on PAD: enc", "on PAD: cross", "dec: on later", "dec: on own", "dec: on first"])
        common.explain("""
            Where the weight goes, on average: on PAD keys (encoder, cross-attention); and in the
            decoder's self-attention on later positions, on a position's own, on position 0 (BOS).""")
    return training


def loss_text(value):
    return "-" if value is None else f"{value:.3f}"


# %% 4. Your diagnosis
def section_4_next(state, seed, out_dir):
    common.section(4, "Your diagnosis")
    letters = [letter for letter in state["letters"] if letter in state["models"]]
    print("  Name the bug of each model with the names of --list, then grade your answers (no retraining:")
    print("  the draw follows from the seed):")
    print(f"    python -m challenges.diagnose --seed {seed} --out-dir {out_dir} --answer "
          + ",".join(f"{letter}=..." for letter in letters))
    print("  Stuck? --reveal (with the same --seed and --out-dir) prints every answer with its explanation.")


# %% Grading, revealing, listing
def parse_answers(text):
    """'A=no_positions, b=flipped_mask' -> {'A': 'no_positions', 'B': 'flipped_mask'}; UserError otherwise."""
    answers = {}
    for item in text.split(","):
        letter, equals, name = (part.strip() for part in item.partition("="))
        if not equals or len(letter) != 1 or not letter.isalpha() or not name:
            raise common.UserError(f"--answer: {item.strip()!r} is not LETTER=bug_name; write e.g. "
                                   "--answer A=no_positions,B=flipped_mask")
        letter = letter.upper()
        if letter in answers:
            raise common.UserError(f"--answer names model {letter} twice; give one bug per letter")
        if name not in bugs.CATALOGUE:
            import difflib
            close = difflib.get_close_matches(name, bugs.CATALOGUE, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise common.UserError(f"--answer {letter}={name}: no bug is called {name!r}{hint}; the names: "
                                   "python -m challenges.diagnose --list")
        answers[letter] = name
    return answers


def grade(args, count_flag):
    answers = parse_answers(args.answer)
    state, drawn = read_state(args.out_dir, args.seed, count_flag)
    missing = [letter for letter in answers if letter not in drawn]
    if missing:
        planned = [letter for letter in state["letters"] if letter not in drawn]
        why = f" ({', '.join(planned)} did not finish training)" if planned else ""
        raise common.UserError(f"--answer: there is no model {missing[0]} in the game of seed {args.seed}; its "
                               f"models are {', '.join(drawn)}{why}")
    reference = state["models"][REFERENCE]["symptoms"]
    print(f"Seed {args.seed}: {len(drawn)} mystery model{'s' if len(drawn) > 1 else ''} trained in {args.out_dir}"
          + interrupted_note(state))
    right = 0
    for letter, truth in drawn.items():
        guess, record = answers.get(letter), state["models"][letter]
        bug = bugs.CATALOGUE[truth]
        print()
        if guess is None:
            print(f"{letter}: no answer")
        elif guess == truth or guess in bug.accept:
            right += 1
            print(f"{letter}: {guess}: right" + (f" (the bug is {truth}; their symptoms are the same here)"
                                                 if guess != truth else ""))
            explain_bug(bug, record, reference)
        else:
            text.say(f"{letter}: {guess}: not that. {guess} would show: {bugs.CATALOGUE[guess].symptom} "
                        f"Look at {record.get('figure', f'mystery_{letter}.png')} again.")
    total, unfinished = len(drawn), [letter for letter in state["letters"] if letter not in drawn]
    print(f"\n{right} of {total} right" + (" - every bug found." if right == total else
                                          "; --reveal prints the answers.")
          + (f" ({', '.join(unfinished)}: training did not finish, nothing to grade)" if unfinished else ""))
    if right < total:
        raise SystemExit(1)


def explain_bug(bug, record, reference):
    for title, sentence in (("the bug", bug.change), ("the mechanism", bug.mechanism),
                        ("the symptom that gives it away", bug.symptom),
                        ("in this model", bug.evidence(record["symptoms"], reference, record)
                         if record["steps_run"] is not None and record["symptoms"] else record["stopped"])):
        text.say(f"   {title}: {sentence}")


def interrupted_note(state):
    return f" (a game that was interrupted: {PARTIAL_STATE_NAME})" if state["file"] == PARTIAL_STATE_NAME else ""


def reveal(args, count_flag):
    state, drawn = read_state(args.out_dir, args.seed, count_flag)
    if interrupted_note(state):
        print(f"Seed {args.seed}:{interrupted_note(state)}")
    reference = state["models"][REFERENCE]["symptoms"]
    for letter, name in drawn.items():
        print(f"\n{letter}: {name}")
        explain_bug(bugs.CATALOGUE[name], state["models"][letter], reference)


def list_bugs():
    print("The bugs a mystery model may have (use these names in --answer):")
    for name, bug in bugs.CATALOGUE.items():
        text.say(f"{name}: {bug.change}" + ("" if bug.drawn else f" [never drawn: {bug.not_drawn}]"))
    print(f"{len(drawable())} of the {len(bugs.CATALOGUE)} can be drawn; each model of a game has a different one.")


# %% The figure of one model
KINDS = (("encoder_self", "encoder self-attention", "query: input position", "key: input position"),
         ("decoder_self", "decoder self-attention (masked)", "query: answer position (writes)",
          "key: decoder input (reads)"),
         ("cross", "cross-attention", "query: answer position (writes)", "key: input position"))


def plot_model(label, record, base, out_dir, show, name=None):
    """mystery_<label>.png: curves and answers on top, then the attention maps of one test example."""
    example = record["example"]
    n_maps = len(example["cross"]) if example else 0                    # heads (of every layer)
    fig, axes = common.new_figure(1 + max(n_maps, 1), 3, figsize=(15, 4.2 + 3.9 * max(n_maps, 1)), show=show,
                                  layout="constrained", squeeze=False)
    plot_curves(axes[0][0], axes[0][1], record, base)
    plot_answers(axes[0][2], record)
    if example:
        image, highest = None, 0.0
        for col, (kind, title, ylabel, xlabel) in enumerate(KINDS):
            for head, weights in enumerate(example[kind]):
                image = plot_map(axes[1 + head][col], weights, example, kind,
                                 f"{title}, head {head + 1}", ylabel, xlabel)
                highest = max(highest, max(max(row) for row in weights))
        fig.colorbar(image, ax=[ax for row in axes[1:] for ax in row], shrink=0.6, label="attention weight",
                     extend="max" if highest > 1 + 1e-6 else "neither")
    else:
        for ax in axes[1]:
            ax.axis("off")
        axes[1][1].text(0.5, 0.5, "no attention maps: the weights are not finite", ha="center")
    s = record["symptoms"]
    numbers = (f"test exact-match: teacher-forced {s['tf_exact']:.1%}, free-running {s['free_exact']:.1%}"
               if s else record["stopped"])
    fig.suptitle(f"{'Reference model (no bug)' if label == REFERENCE else f'Mystery model {label}'}: reverse "
                 f"{base.resolved_min_len()}-{base.seq_len} digits; {numbers}", fontsize=12)
    name = name or f"mystery_{label}.png"
    common.save_figure(fig, out_dir, name, show=show)
    return name


def explore(model, test, answers):
    """The explorer's data for a mystery page (None when the model's maps have other shapes)."""
    try:
        return explorer.explore(model, test.src, test.tgt_out, answers, hints=False)
    except ValueError:
        return None


def write_page(label, explored, base, out_dir, name=None):
    """mystery_<label>.html (or `name`): every attention map of a few test examples, for a browser."""
    who = "Reference model (no bug)" if label == REFERENCE else f"Mystery model {label}"
    subtitle = (f"Reverse {base.resolved_min_len()}-{base.seq_len} digits; d_model {base.d_model}, {base.n_heads} "
                f"heads, dropout {base.dropout:g}. Compare every map with mystery_reference.html: a difference "
                "is a symptom.")
    return explorer.write_page(Path(out_dir) / (name or f"mystery_{label}.html"), explored, f"{who}: its attention",
                               subtitle).name


def plot_curves(loss_ax, exact_ax, record, base):
    h = record["history"]
    if h.get("step"):                                     # (none when the training diverged)
        loss_ax.plot(h["step"], h["loss"], color="tab:blue", alpha=0.45, lw=1, label="training batch (dropout on)")
    loss_ax.plot(h["val_step"], h["val_loss"], "o-", color="tab:orange", ms=2.5, lw=1,
                 label="validation (dropout off)")
    exact_ax.plot(h["val_step"], h["val_exact_match"], "-", color="tab:green", lw=1.6,
                  label=f"teacher-forced ({base.val_size} inputs)")
    loss_ax.axhline(math.log(base.n_digits), color="gray", ls="--", lw=1,
                    label=f"a digit guessed at random (ln {base.n_digits})")
    loss_ax.set_yscale("log")
    loss_ax.set(xlabel="optimizer step", ylabel="cross-entropy loss (log scale)", title="Loss")
    loss_ax.legend(fontsize=8)
    exact_ax.plot(record["free_step"], record["free_exact_match"], "--", color="tab:red", lw=1.6,
                  label=f"free-running, greedy ({FREE_RUNNING_CHECKS} inputs)")
    exact_ax.axhline(base.target, color="gray", ls=":", lw=1, label=f"target {base.target:.0%}")
    exact_ax.set(xlabel="optimizer step", ylabel="validation exact-match", ylim=(-0.02, 1.02),
                 title="Validation exact-match")
    exact_ax.legend(fontsize=8, loc="best")


def plot_answers(ax, record):
    ax.axis("off")
    lines = [f"{'input':<17} {'expected':<17} answer"]
    for digits, expected, answer in record["examples"]:
        mark = "right" if answer == expected else "WRONG"
        lines.append(f"{text.digits_text(digits):<17} {text.digits_text(expected):<17} "
                     f"{text.digits_text(answer)}  {mark}")
    ax.text(0.0, 0.95, "\n".join(lines), family="monospace", fontsize=9, va="top", transform=ax.transAxes)
    ax.set_title("Test inputs and the answers (free-running)")


def token_labels(tokens):
    return [f"{i}:{text.show_tokens(torch.tensor([t]), keep_pad=True)}" for i, t in enumerate(tokens)]


def plot_map(ax, weights, example, kind, title, ylabel, xlabel):
    """One attention map with its labelled keys and queries, and each row's sum on the right."""
    queries = example["src"] if kind == "encoder_self" else example["tgt_out"]
    keys = example["tgt_in"] if kind == "decoder_self" else example["src"]
    image = ax.imshow(weights, cmap="viridis", vmin=0, vmax=1, aspect="auto")  # "auto": the row sums line up
    ax.set_xticks(range(len(keys)), token_labels(keys), fontsize=7, rotation=90)
    ax.set_yticks(range(len(queries)), token_labels(queries), fontsize=7)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.set_title(title, fontsize=9)
    sums = ax.twinx()
    sums.set_ylim(ax.get_ylim())
    sums.set_yticks(range(len(weights)), [f"{sum(row):.2f}" for row in weights], fontsize=7)
    sums.set_ylabel("row sum", fontsize=8)
    return image


# %% Flags
def build_parser():
    parser = common.lesson_parser(__doc__, quick_help="tiny models (length 3-5, 60 steps): seconds, a smoke test")
    group = parser.add_argument_group("the game")
    group.add_argument("--count", type=int, default=None,
                       help=f"mystery models to train (default: COUNT = {COUNT}; at most {len(drawable())})")
    what = group.add_mutually_exclusive_group()
    what.add_argument("--list", action="store_true", help="list the bugs a model may have, and stop")
    what.add_argument("--answer", metavar="A=bug,B=bug,...",
                      help="grade your diagnosis of the models of --seed trained in --out-dir (no retraining)")
    what.add_argument("--reveal", action="store_true",
                      help="print the answers for --seed with their explanations (no retraining)")
    return parser


def settings(args):
    """(base TrainConfig, count) from the knobs and flags; UserError for values that cannot work."""
    count, label = common.flag_or_knob(args, "count", "COUNT", COUNT)
    if not 1 <= count <= len(drawable()):
        raise common.UserError(f"{label}: a game has from 1 to {len(drawable())} mystery models (each a different "
                               f"bug of the {len(drawable())} that can be drawn)")
    values = {**asdict(TrainConfig()), **GAME, **(QUICK if args.quick else {}), "seed": args.seed}
    base = TrainConfig(**values)
    validate_config(base)
    return base, count


@common.entry_point
def main(argv=None):
    args = common.parse_args(build_parser(), argv)
    if args.list:
        return list_bugs()
    if args.answer is not None:
        return grade(args, args.count)
    if args.reveal:
        return reveal(args, args.count)
    base, count = settings(args)
    drawn = draw(args.seed, count)
    device = common.setup(args, "Challenge: mystery models - diagnose a broken transformer from its symptoms")
    labels = {REFERENCE: bugs.REFERENCE, **{letter: bugs.CATALOGUE[name].variant for letter, name in drawn.items()}}
    state = new_state(args.seed, count, args.quick, base, drawn)
    path, result = args.out_dir / STATE_NAME, common.files.Result(args.out_dir, STATE_NAME)

    def save():                                  # a finished game replaces the last one; until then: .partial
        if not state["complete"]:
            return result.save(state) if state["models"] else None
        for record in state["models"].values():
            for key in ("figure", "page"):
                if key in record:
                    record[key] = result.final_name(record[key])
        return result.complete(state)

    if args.show:
        common.pyplot(show=True)                 # the window backend, before the first figure is drawn
    note_earlier_game(path, drawn)
    section_1_game(base, count, args.seed, args.quick)
    finished = section_2_train(labels, base, device, state, save, args.out_dir,
                               lambda label: result.name(f"mystery_{label}.png"),
                               lambda label: result.name(f"mystery_{label}.html"))
    section_3_summary(state, base)
    if args.show:                                # the windows now, not one by one between trainings
        for label, record in state["models"].items():
            plot_model(label, record, base, args.out_dir, show=True, name=record.get("figure"))
    if not finished:
        kept = f"kept in {result.partial_path}" if state["models"] else "nothing to keep"
        print(f"  interrupted ({common.process.interruption()}): {len(state['models'])} of {len(labels)} models "
              f"finished; {kept}" + (f" ({STATE_NAME} still holds the last finished game)" if path.is_file() else ""))
        raise KeyboardInterrupt
    section_4_next(state, args.seed, args.out_dir)


if __name__ == "__main__":
    main()
