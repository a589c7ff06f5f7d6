"""Printing what lesson 05 measured, and metrics.json. The measurements themselves are in the lesson."""
import math
from dataclasses import asdict

import torch

import common
from common import claims, stats
from lesson05_plumbing import lesson
from lesson05_plumbing.checkpoints import CHECKPOINT_NAME
from lesson05_plumbing.settings import count_parameters
from lesson05_plumbing.text import digits_text, say, show_tokens

def show_tokens_and_example(config, test):
    """Section 1: the token table and one test example as src, tgt_in and tgt_out."""
    L = lesson()
    V = L.vocab_size(config.n_digits)
    common.table([[L.PAD, "PAD", "padding (no loss; the input's PAD is masked)"], [L.BOS, "BOS", "start of the answer"],
                  [L.EOS, "EOS", "end of the answer"],
                  [f"{L.FIRST_DIGIT}..{V - 1}", f"0..{config.n_digits - 1}", "the digits"]],
                 ["token id", "shown as", "meaning"])
    src, tgt_in, tgt_out = test.src[0], test.tgt_in[0], test.tgt_out[0]
    print(f"\n  one test example ({int((src != L.PAD).sum())} digits):")
    print(f"    encoder input  src     : {show_tokens(src)}")
    print(f"    decoder input  tgt_in  : {show_tokens(tgt_in)}")
    print(f"    decoder target tgt_out : {show_tokens(tgt_out)}\n")


def show_padding(config, val):
    """Section 1, when input lengths vary: the shortest validation input with its PAD and its mask."""
    PAD = lesson().PAD
    lengths = (val.src != PAD).sum(1)
    if int(lengths.min()) < config.seq_len:
        row = val.src[int(lengths.argmin())]
        say(f"lengths vary from {config.resolved_min_len()} to {config.seq_len}; shorter inputs end in PAD, which "
            "the padding mask (True = may attend) hides from every query:")
        print(f"    src  : {show_tokens(row, keep_pad=True)}")
        print(f"    mask : {' '.join('1' if t != PAD else '0' for t in row.tolist())}\n")


def parameter_table(model, n_layers):
    """Section 2: parameters per part of the model."""
    count = count_parameters
    common.table([["token embedding (shared)", count(model.embed)],
                  [f"encoder: {n_layers} block(s) + final norm", count(model.encoder)],
                  [f"decoder: {n_layers} block(s) + final norm", count(model.decoder)],
                  ["output layer", count(model.out)], ["total", count(model)]], ["part", "parameters"])


def report_training(config, result, resume):
    if result.resumed_at is not None:
        say(f"resumed at step {result.resumed_at} of the checkpoint; times below count both runs together")
        if result.data_changed:
            say(f"the data changed ({', '.join(result.data_changed)}): the checkpoint's validation history "
                "was measured on another set, so this run's history starts at the resume")
        if result.steps_run == result.resumed_at and result.stopped_because == "target reached":
            say(f"the checkpoint already meets the target ({config.target:.0%}): nothing to train; raise "
                "--target (e.g. --target 1.0) to train further")
    say(f"stopped: {result.stopped_because}, after {result.steps_run} steps; {result.train_seconds:.2f} s in "
        f"training steps, {result.wall_seconds:.2f} s with validation and saving")
    bv = result.best_val
    say(f"best model: step {result.best_step}, validation loss {bv['loss']:.4f}, token accuracy "
        f"{bv['token_accuracy']:.4f}, exact-match {bv['exact_match']:.4f}")
    if result.best_step == (result.resumed_at or 0) and result.steps_run > result.best_step:
        say(f"no step improved on the model training started from (step {result.best_step}): that is the model "
            "the sections below evaluate")
    drawn = (result.steps_run - (result.resumed_at or 0)) * config.batch_size
    possible = lesson().possible_inputs(config)
    cap = max(1, possible // 10)                          # heldout_sets' cap on each held-out set
    chance = drawn * (min(config.val_size, cap) + min(config.test_size, cap)) / possible
    say(f"training sequences dropped because they equal a held-out input: {result.heldout_removed} (about "
        f"{chance:.2g} expected by chance in {drawn:,} drawn)")
    say(f"the best model is saved in {CHECKPOINT_NAME} (rewritten whenever it improved)")


def when_reached(result) -> str:
    """' first at step 110, 1.14 s of training' (or '' when the target was not reached)."""
    if result.target_step is None:
        return ""
    seconds = f", {result.target_seconds:.2f} s of training" if result.target_seconds is not None else ""
    return f" first at step {result.target_step}{seconds}"


def report_cache(found):
    """Section 4's measurement: recomputing the prefix against the cache, and whether they agree."""
    n, ratio = found["decoded"], found["recompute_seconds"] / found["cached_seconds"]
    say(f"greedy decoding of {n} test inputs ({found['max_tokens']} steps at most), fastest of 5: recomputing the "
        f"prefix {found['recompute_seconds']:.3f} s, with the cache {found['cached_seconds']:.3f} s "
        f"({ratio:.1f}x); identical answers: {found['identical']} of {n}")
    if ratio < 1.2:
        say(f"no faster here: answers of at most {found['max_tokens']} tokens leave little prefix to skip")


def report_test_table(greedy, forced_exact, forced_token_accuracy, beam, beam_size):
    """The table of exact-match with its 95% interval and token accuracy: greedy, beam, teacher-forced."""
    n = greedy["n"]
    rows = [["greedy (free-running)", stats.share_text(greedy["exact_count"], n), greedy["token_accuracy"]]]
    if beam is not None:
        rows.append([f"beam search, beam size {beam_size}", stats.share_text(beam["exact_count"], n),
                     beam["token_accuracy"]])
    rows.append(["teacher-forced (one pass)", stats.share_text(forced_exact, n), forced_token_accuracy])
    common.table(rows, ["", "exact-match (95% interval)", "token accuracy"])


def report_wrong_tokens(greedy, forced_wrong):
    """Section 5: wrong tokens teacher-forced and free-running, before and after the first mistakes."""
    wrong_answers, after = greedy["n"] - greedy["exact_count"], greedy["wrong_after_first_mistake"]
    say(f"wrong tokens: teacher-forced {forced_wrong} of {greedy['token_count']}; free-running "
        f"{greedy['wrong_tokens']}: the first mistakes of {wrong_answers} wrong answers and {after} more after them"
        + (", each written by a decoder that had read its own earlier mistake (teacher forcing never shows "
           "it one)" if after else ""))


def report_beam_changes(changed, fixed, broke, p, n=None):
    """How many answers beam search changed, fixed and broke, with the sign test's verdict."""
    say(f"beam search changed {changed}{f' of {n}' if n else ''} answers: {fixed} wrong -> right, {broke} right -> wrong (sign test "
        f"p = {p:.2g}: " + ("a difference beyond chance)." if p < 0.05 else "within chance: not a finding)."))


def report_where_wrong(config, test, greedy):
    """Where the answers go wrong: by answer length for sums, by answer position otherwise; examples."""
    tokens_to_digits = lesson().tokens_to_digits
    expected = [tokens_to_digits(row) for row in test.tgt_out]
    answers = [tokens_to_digits(row) for row in greedy["tokens"]]
    if config.task == "sum":
        report_sum_lengths(config, test, expected, answers)
    wrong, count = greedy["position_wrong"], greedy["position_count"]
    print("\n  wrong tokens by answer position (greedy; position 0 is the first answer token, and the last")
    print("  position of each answer is its EOS):")
    for start in range(0, len(wrong), 16):
        chunk = range(start, min(start + 16, len(wrong)))
        print("   position " + " ".join(f"{i:>4}" for i in chunk))
        print("   wrong    " + " ".join(f"{wrong[i]:>4}" for i in chunk))
        print("   of       " + " ".join(f"{count[i]:>4}" for i in chunk))
    wrong_rows = [i for i in range(len(expected)) if answers[i] != expected[i]]
    print("\n  examples (input -> greedy answer (expected)):")
    for i in list(range(4)) + [i for i in wrong_rows if i >= 4][:2]:
        mark = "ok" if answers[i] == expected[i] else "WRONG"
        print(f"   {digits_text(tokens_to_digits(test.src[i]))} -> {digits_text(answers[i])} "
              f"({digits_text(expected[i])}) {mark}")


def report_sum_lengths(config, test, expected, answers):
    """Sums: exact-match by the number of digits in the answer, and what the model writes instead."""
    from collections import Counter

    print("\n  exact-match by the number of digits of the sum (greedy):")
    rows, failing = [], []
    for digits in sorted({len(e) for e in expected}):
        group = [i for i, e in enumerate(expected) if len(e) == digits]
        right = sum(answers[i] == expected[i] for i in group)
        rows.append([digits, f"{len(group)} ({len(group) / len(expected):.1%} of inputs)",
                     stats.share_text(right, len(group))])
        if stats.wilson_interval(right, len(group))[1] < 0.5:
            failing.append((digits, group, right))
    common.table(rows, ["digits", "test answers", "right (95% interval)"])
    for digits, group, right in failing:
        written, times = Counter(digits_text(answers[i]) for i in group).most_common(1)[0]
        share = len(group) / len(expected)
        say(f"it fails on {digits}-digit sums ({right} of {len(group)} right; most often it writes '{written}', "
            f"{times} times); such sums are {share:.1%} of the inputs"
            + (", so training shows them rarely." if share < 0.05 else "."))


def report_attention(focused, aligned):
    """Print section 6's tables. focused: {kind: [(focus, spread evenly) per layer]}; aligned: {what:
    [(shares per head, chance) per layer]} (empty for sums). Returns them as plain numbers, with the
    head that beats chance by the most."""
    kinds = ("encoder_self", "decoder_self", "cross")
    rows = [[f"layer {layer + 1}", *(focused[k][layer][0] for k in kinds)] for layer in range(len(focused["cross"]))]
    rows.append(["spread evenly", *(focused[k][-1][1] for k in kinds)])
    common.table(rows, ["focus (heads averaged)", "encoder self", "decoder self (masked)", "cross"])
    found = {"focus": {k: [f[0] for f in focused[k]] for k in kinds}, "alignment": None}
    found["focus"]["spread_evenly"] = rows[-1][1:]
    if not aligned:
        print("  each digit of a sum depends on every input, so no input position is the right one to look at")
        return found
    table = [[f"layer {layer + 1}, head {head + 1}", what, share, chance]
             for what, layers in aligned.items() for layer, (shares, chance) in enumerate(layers)
             for head, share in enumerate(shares.tolist())]
    print("\n  alignment: share of answer positions whose strongest cross-attention weight falls on ...")
    common.table(table, ["cross-attention", "...", "share", "chance"])
    found["alignment"] = {"rows": table, "best": max(table, key=lambda row: row[2] - row[3])}
    return found


def plain(value):
    """value as JSON-ready plain data: tensors dropped (0-d ones become numbers), NaN as None, a claim
    as its verdict and sentence."""
    if isinstance(value, claims.Claim):
        return {"claim": value.name, "holds": value.holds, "text": str(value)}
    if isinstance(value, torch.Tensor):
        return value.item() if value.dim() == 0 else None
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items() if not (isinstance(v, torch.Tensor) and v.dim())}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class Metrics:
    """metrics.json: written as soon as training ends, then updated (atomically) after each section.
    "complete" stays false until the lesson finishes, so an interrupted run says so. A run that
    SIGTERM stopped during training ends right after this first write: its model and metrics.json
    describe the same run, and the interruption goes on to common.entry_point (one line, exit 143)."""

    def __init__(self, path, config, result):
        self.path = path
        self.data = {"complete": False, "task": config.task, "config": asdict(config),
                     "steps_run": result.steps_run, "train_seconds": result.train_seconds,
                     "wall_seconds_with_validation": result.wall_seconds, "stopped_because": result.stopped_because,
                     "resumed_at": result.resumed_at, "target": config.target, "target_step": result.target_step,
                     "target_seconds": result.target_seconds, "best_step": result.best_step,
                     "val": result.best_val, "heldout_sequences_removed_from_training": result.heldout_removed,
                     "checkpoint": CHECKPOINT_NAME}
        self.write()
        if result.interruption is not None and common.interruption_name(result.interruption) != "Ctrl-C":
            raise result.interruption

    def update(self, **parts):
        """Add the parts (one section's findings) and rewrite the file; returns the part as given."""
        self.data.update(plain(parts))
        self.write()
        return next(iter(parts.values())) if len(parts) == 1 else None

    def write(self):
        common.write_json(self.path, plain(self.data))
