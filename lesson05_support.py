"""The plumbing of lesson 05, kept out of the lesson so that it reads as a transformer.

You do not need to read this file to follow lesson 05. It holds, in this order: sizes of the tasks,
text helpers, keeping held-out inputs out of training, the flags and their checks, checkpoints
(write, read, check, keep the earlier ones), the bookkeeping around the training loop (history,
timing, progress bar, resume, Ctrl-C), reports of the numbers, figures, and metrics.json.
What is generic (atomic files, checkpoints of a dataclass, flags from a dataclass, statistics)
lives in common/.
"""
import copy
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

import common
from common import checkpoints, stats
from common.cli import UserError

CHECKPOINT_NAME = "mini_transformer.pt"
METRICS_NAME = "metrics.json"
CHECKPOINT_FORMATS = ("mini-transformer-v2", "mini-transformer-v1")   # the first is written
MAX_PARAMETERS = 50_000_000      # a CPU lesson: larger models would take hours and gigabytes
MAX_POSITIONS = 10_000           # rows of the positional-encoding table
MAX_DIGITS = 1_000               # --digits: the vocabulary is the digits plus 3 special tokens
MAX_MEMORY = 2 * 1024 ** 3       # bytes one training step or one decoding chunk may need (estimated)


def lesson():
    """Lesson 05 as a module: the running script itself under `python 05_mini_transformer.py`, else
    load_lesson(5). (Called inside functions only: the lesson imports this file while loading.)"""
    main = sys.modules.get("__main__")
    if Path(getattr(main, "__file__", "") or "").name.startswith("05_"):
        return main
    return common.load_lesson(5)


# ---------------------------------------------------------------- sizes of the tasks
def sum_digits_needed(seq_len: int, n_digits: int) -> int:
    """How many digits the largest possible sum ((n_digits-1) * seq_len) has in base n_digits."""
    largest, count = (n_digits - 1) * seq_len, 1
    while largest >= n_digits:
        largest //= n_digits
        count += 1
    return count


def output_len(task: str, src_len: int, n_digits: int) -> int:
    """The longest answer (without EOS) for inputs of length src_len."""
    return sum_digits_needed(src_len, n_digits) if task == "sum" else src_len


def positions_needed(task: str, src_len: int, n_digits: int) -> int:
    """Rows of the positional-encoding table used: src_len in the encoder, answer + EOS in the decoder."""
    return max(src_len, output_len(task, src_len, n_digits) + 1)


def possible_inputs(config) -> int:
    """How many different inputs the config allows (an exact, possibly huge, integer)."""
    return sum(config.n_digits ** L for L in range(config.resolved_min_len(), config.seq_len + 1))


def count_text(n: int) -> str:
    """A possibly huge integer for reading: 1,000 or about 10^17."""
    return f"{n:,}" if n < 10 ** 12 else f"about 10^{len(str(n)) - 1}"


def count_parameters(module) -> int:
    return sum(p.numel() for p in module.parameters())


def estimated_parameters(c) -> int:
    """The model's parameter count from its config, without building it (to refuse absurd sizes)."""
    d, ff, V = c.d_model, c.d_ff, c.n_digits + lesson().FIRST_DIGIT
    attention = 4 * d * d + 4 * d                        # W_q, W_k, W_v, W_o with biases
    feed_forward = 2 * d * ff + ff + d
    encoder_block = attention + feed_forward + 2 * 2 * d  # + two LayerNorms
    decoder_block = 2 * attention + feed_forward + 3 * 2 * d
    final_norms = 2 * 2 * d if c.norm_first else 0       # pre-LN ends both stacks with a LayerNorm
    return V * d + c.n_layers * (encoder_block + decoder_block) + final_norms + d * V + V


def decode_memory(c, rows: int) -> int:
    """Rough bytes to decode `rows` hypotheses without gradients: the prefix cache (every decoder
    layer's inputs), the encoder output, and one layer's working tensors at a time."""
    T = positions_needed(c.task, c.seq_len, c.n_digits)
    return 4 * rows * T * (c.n_layers * c.d_model + 8 * c.d_model + c.d_ff + 3 * c.n_heads * T)


def step_memory(c, rows: int) -> int:
    """Rough bytes of activations for `rows` sequences through the model (training keeps them all
    for backward): per layer and position, a few d_model-wide tensors, the feed-forward's hidden
    layer and the attention weights."""
    T = positions_needed(c.task, c.seq_len, c.n_digits)
    per_position = c.n_layers * (24 * c.d_model + 4 * c.d_ff + 9 * c.n_heads * T)
    return 4 * rows * T * per_position


# ---------------------------------------------------------------- text
TASK_TEXT = {
    "reverse": "reverse the digits: 3 1 4 -> 4 1 3",
    "copy": "copy the digits: 3 1 4 -> 3 1 4",
    "sort": "sort the digits: 3 1 4 -> 1 3 4",
    "sum": "write the sum of the digits: 3 1 4 -> 8 (9 9 9 -> 2 7)",
}


def show_tokens(row, keep_pad=False):
    """Tokens as text: digits as digits, PAD as '.', BOS/EOS by name; trailing PAD dropped."""
    L = lesson()
    names = {L.PAD: ".", L.BOS: "BOS", L.EOS: "EOS"}
    items = row.tolist()
    while items and items[-1] == L.PAD and not keep_pad:
        items.pop()
    return " ".join(names.get(t, str(t - L.FIRST_DIGIT)) for t in items)


def tokens_to_digits(row):
    """One row of tokens -> the digit list up to EOS (PAD and BOS dropped)."""
    L, digits = lesson(), []
    for t in row.tolist():
        if t == L.EOS:
            break
        if t >= L.FIRST_DIGIT:
            digits.append(t - L.FIRST_DIGIT)
    return digits


def say(text: str):
    """Print a long line wrapped to the console width, indented by two spaces."""
    import textwrap
    print(textwrap.fill(" ".join(text.split()), common.console.WIDTH, initial_indent="  ", subsequent_indent="    "))


def digits_text(digits):
    return " ".join(str(d) for d in digits) if digits else "(nothing)"


def check_sequences(sequences, model):
    """ValueError, with what would work, for inputs that predict() cannot answer with `model`."""
    n_digits = model.config["n_digits"]
    for seq in sequences:
        if len(seq) == 0:
            raise ValueError("every sequence needs at least one digit")
        if any(isinstance(d, bool) or int(d) != d or not 0 <= d < n_digits for d in seq):
            raise ValueError(f"digits must be whole numbers from 0 to {n_digits - 1} for this model, got {list(seq)}")
    if sequences:
        T = max(len(s) for s in sequences)
        needed = positions_needed(model.config["task"], T, n_digits)
        if needed > model.max_len:
            raise ValueError(f"sequences of length {T} need {needed} positions; this model's positional "
                             f"encoding has {model.max_len}")


# ---------------------------------------------------------------- held-out inputs stay out of training
def sequence_keys(src, n_digits):
    """One int64 per row, equal for equal rows: exact (base vocab_size) when it fits, else a hash.

    Equal sequences always get equal keys, so filtering by key never lets a held-out sequence
    through; with the hash a few unrelated sequences may be filtered too (counted, harmless).
    """
    base, T = n_digits + lesson().FIRST_DIGIT, src.size(1)
    if base ** T < 2 ** 62:                      # exact: the row read as a number in base vocab_size
        return (src * base ** torch.arange(T - 1, -1, -1)).sum(1)
    key = torch.zeros(src.size(0), dtype=torch.long)
    for t in range(T):                           # a rolling hash modulo a prime
        key = (key * base + src[:, t]) % 2_147_483_647
    return key


class HeldOut:
    """The keys of the held-out inputs; fresh(src) marks the rows of src that are none of them."""

    def __init__(self, heldout_src, n_digits):
        self.n_digits = n_digits
        self.keys = torch.unique(torch.cat([sequence_keys(s, n_digits) for s in heldout_src]))
        self.removed = 0

    def fresh(self, src):
        keep = ~torch.isin(sequence_keys(src, self.n_digits), self.keys)
        self.removed += int((~keep).sum())
        return keep


def draw_distinct(n, config, seed, exclude=None):
    """n different inputs (n, seq_len) from a generator seeded with `seed`, none equal to a row of
    `exclude`: the held-out sets. (With many possible inputs the first draw has no repeats at all.)"""
    L = lesson()
    generator = torch.Generator().manual_seed(seed)
    taken = set() if exclude is None else {tuple(row) for row in exclude.tolist()}
    rows = []
    while len(rows) < n:
        for row in L.sample_inputs(n, config.seq_len, config.resolved_min_len(), config.n_digits, generator).tolist():
            if tuple(row) not in taken and len(rows) < n:
                taken.add(tuple(row))
                rows.append(row)
    return torch.tensor(rows, dtype=torch.long).view(n, config.seq_len)


# ---------------------------------------------------------------- flags
# --quick: a tiny version for smoke tests (flags typed still win).
QUICK = dict(seq_len=6, steps=100, warmup=10, val_size=200, test_size=200)
# flag -> (TrainConfig field, help). Types and defaults come from TrainConfig (and TASK_DEFAULTS).
FLAGS = {
    "--task": ("task", "what to learn"),
    "--seq-len": ("seq_len", "longest input sequence"),
    "--min-len": ("min_len", "shortest input sequence; 0 = --seq-len (all equal)"),
    "--digits": ("n_digits", "number of different digits"),
    "--sum-order": ("sum_order", "sum: write the most (msd) or least (lsd) significant digit first"),
    "--d-model": ("d_model", "width of every token vector"),
    "--heads": ("n_heads", "attention heads (must divide --d-model)"),
    "--layers": ("n_layers", "encoder blocks, and as many decoder blocks"),
    "--d-ff": ("d_ff", "hidden width of the feed-forward"),
    "--dropout": ("dropout", "dropout probability"),
    "--max-len": ("max_len", "positions in the positional-encoding table"),
    "--steps": ("steps", "maximum optimizer steps"),
    "--batch-size": ("batch_size", "sequences per step"),
    "--lr": ("lr", "peak learning rate (AdamW)"),
    "--weight-decay": ("weight_decay", "AdamW weight decay"),
    "--warmup": ("warmup", "linear warmup steps"),
    "--schedule": ("schedule", "learning rate after warmup"),
    "--grad-clip": ("grad_clip", "clip the gradient norm to this; 0 = off"),
    "--label-smoothing": ("label_smoothing", "share of each target spread over all tokens"),
    "--eval-every": ("eval_every", "validate every this many steps"),
    "--patience": ("patience", "stop after this many validations without improvement; 0 = never"),
    "--target": ("target", "stop when validation exact-match reaches this"),
}
CHOICES = {"task": None, "schedule": ("cosine", "linear", "constant"), "sum_order": ("msd", "lsd")}
# Fields that decide the validation set: a resume that changes one starts a new history.
DATA_FIELDS = ("seq_len", "min_len", "n_digits", "sum_order", "val_size")
# Fields that fix what a checkpoint's model is: a --resume run may not contradict them.
ARCHITECTURE_FIELDS = ("task", "n_digits", "d_model", "n_heads", "n_layers", "d_ff", "norm_first",
                       "embed_scale", "max_len")


def build_parser(doc, config_class, tasks, task_defaults):
    import argparse

    parser = common.lesson_parser(doc, quick_help="tiny sizes (length 6, at most 100 steps, 200 held-out): "
                                                  "a few seconds, for smoke tests")
    group = parser.add_argument_group("lesson 05 (task, model, training)")
    per_task = {name: ", ".join(f"{d[name]} for {t}" for t, d in task_defaults.items() if name in d)
                for name in ("steps", "eval_every")}
    common.flags.add_dataclass_flags(group, config_class(), FLAGS, {**CHOICES, "task": tasks}, per_task)
    group.add_argument("--norm", choices=("pre", "post"), default=argparse.SUPPRESS,
                       help="LayerNorm before each sublayer (pre) or after it (post, the paper) (default: pre)")
    group.add_argument("--embed-scale", action="store_true", default=argparse.SUPPRESS,
                       help="multiply embeddings by sqrt(d_model), as the paper does (default: off)")
    group.add_argument("--beam-size", type=common.flags.whole_number, default=4,
                       help="beam width for beam search on the test set (1 = off)")
    group.add_argument("--length-penalty", type=float, default=0.0,
                       help="beam search ranks by log-probability / length**this (0 = plain log-probability)")
    group.add_argument("--resume", metavar="PATH", default=None,
                       help="continue training from a checkpoint (its task and model shape are kept)")
    group.add_argument("--eval-lengths", metavar="L1,L2,...", default=None,
                       help="after training, test the model on inputs of these lengths (e.g. 8,16,24), as "
                            "python -m challenges.length_generalization does; writes length_generalization.png")
    group.add_argument("--no-explorer", action="store_true",
                       help="do not write attention_explorer.html (every attention map, one page for a browser)")
    return parser


def typed_values(args) -> dict:
    """The TrainConfig values the user typed (flags not typed are absent from args)."""
    given = common.flags.typed_values(args, FLAGS)
    if hasattr(args, "norm"):
        given["norm_first"] = args.norm == "pre"
    if hasattr(args, "embed_scale"):
        given["embed_scale"] = True
    given["seed"] = args.seed  # the common --seed flag: model initialisation and training batches
    return given


def config_from_args(args, config_class, task_defaults, model_class):
    """(TrainConfig, checkpoint or None) from defaults < --quick < checkpoint (--resume) < flags typed.
    Every check runs before anything is trained: UserError (one line) for what cannot run."""
    given = typed_values(args)
    values = asdict(config_class())
    values.update(QUICK if args.quick else {})
    checkpoint = None
    if args.resume:
        checkpoint = read_checkpoint(args.resume, config_class)
        saved = checkpoint["config"]
        for name in ARCHITECTURE_FIELDS:
            if name in given and given[name] != saved[name]:
                raise CheckpointError(f"{name} = {given[name]!r} (from a flag) contradicts the checkpoint "
                                      f"{args.resume!r} ({name} = {saved[name]!r}); drop that flag to resume it, "
                                      "or train a new model without --resume")
        values.update(saved)
    elif not args.quick:
        values.update(task_defaults.get(given.get("task", values["task"]), {}))
    values.update(given)
    config = config_class(**values)
    if checkpoint is not None:
        check_positions(config, set(given), fixed_by=repr(args.resume))
    validate_config(config, typed=set(given) | (set(QUICK) if args.quick else set()))
    if checkpoint is not None:
        model = model_from_checkpoint(checkpoint, args.resume, config_class, model_class)
        check_resumable(checkpoint, args.resume, model)
        if config.steps <= checkpoint["step"]:
            raise CheckpointError(f"the checkpoint {args.resume!r} is already at step {checkpoint['step']} "
                                  f"and --steps is {config.steps}; pass a larger --steps to train further")
    check_decoding_flags(args, config)
    return config, checkpoint


FLAG_OF = {**{field: flag for flag, (field, _) in FLAGS.items()}, "norm_first": "--norm", "embed_scale": "--embed-scale"}


def namer(c, typed):
    """name(field): how a message names a setting: the flag and its value when it was typed (or
    typed is None), else where the value comes from, the knob (TrainConfig.n_heads = 3).
    fix(field, value): a flag that sets it, which always works."""
    def name(field):
        value = getattr(c, field)
        if typed is not None and field not in typed:
            return f"TrainConfig.{field} = {value!r}"
        return f"{FLAG_OF[field]} {value}"

    def fix(field, value):
        return f"{FLAG_OF[field]} {value}"
    return name, fix


def validate_config(c, typed=None):
    """Raise UserError, naming the value and what would work, for settings that cannot run.
    typed: the fields set by flags (they are named as flags; the others as TrainConfig knobs)."""
    name, fix = namer(c, typed)
    for key in ("lr", "weight_decay", "grad_clip", "dropout", "target", "label_smoothing"):
        if not math.isfinite(getattr(c, key)):      # nan slips through every comparison below
            raise UserError(f"{name(key)}: must be a finite number")
    for key, zero_ok in (("seq_len", False), ("n_digits", False), ("d_model", False), ("n_heads", False),
                           ("n_layers", False), ("d_ff", False), ("max_len", False), ("steps", False),
                           ("batch_size", False), ("eval_every", False), ("lr", False), ("min_len", True),
                           ("warmup", True), ("patience", True), ("grad_clip", True), ("weight_decay", True)):
        value = getattr(c, key)
        if value < 0 or (value == 0 and not zero_ok):
            raise UserError(f"{name(key)}: must be {'0 or more' if zero_ok else 'a positive number'}")
    if c.task not in lesson().TASKS or c.sum_order not in CHOICES["sum_order"] or c.schedule not in CHOICES["schedule"]:
        raise UserError(f"{name('task')}, {name('sum_order')}, {name('schedule')}: expected a task from "
                        f"{lesson().TASKS}, a sum order from {CHOICES['sum_order']}, a schedule from {CHOICES['schedule']}")
    if c.d_model % c.n_heads:
        options = [h for h in range(1, min(c.d_model, 16) + 1) if c.d_model % h == 0]
        raise UserError(f"{name('d_model')} is not divisible by {name('n_heads')} (each head gets d_model / heads "
                        f"dimensions); use heads from {options}, e.g. {fix('n_heads', options[-1])}")
    if not 2 <= c.n_digits <= MAX_DIGITS:
        raise UserError(f"{name('n_digits')}: use from 2 to {MAX_DIGITS} digits")
    if c.min_len > c.seq_len:
        raise UserError(f"{name('min_len')} is longer than {name('seq_len')}; use {fix('min_len', c.seq_len)} or less")
    if c.max_len > MAX_POSITIONS:
        raise UserError(f"{name('max_len')} is too many positions for this lesson: use at most {MAX_POSITIONS}; "
                        "the default 64 fits inputs of up to 63 digits")
    check_positions(c, typed)
    parameters = estimated_parameters(c)
    if parameters > MAX_PARAMETERS:
        raise UserError(f"{name('d_model')}, {name('d_ff')}, {name('n_layers')} make a model far too big for this "
                        f"lesson (about {parameters / 1e6:,.0f} million parameters, limit {MAX_PARAMETERS / 1e6:.0f} "
                        f"million); e.g. {fix('d_model', 128)}, {fix('d_ff', 512)}, {fix('n_layers', 2)}")
    if step_memory(c, c.batch_size) > MAX_MEMORY:
        fits = max(1, c.batch_size * MAX_MEMORY // step_memory(c, c.batch_size))
        raise UserError(f"{name('batch_size')} would need about {step_memory(c, c.batch_size) / 1024 ** 3:,.0f} GB "
                        f"for one training step with this model; use {fix('batch_size', min(fits, 4096))} or less")
    for key, low, high in (("dropout", 0.0, 1.0), ("label_smoothing", 0.0, 1.0)):
        if not low <= getattr(c, key) < high:
            raise UserError(f"{name(key)}: must be in [{low:g}, {high:g})")
    if not 0.0 < c.target <= 1.0:
        raise UserError(f"{name('target')}: the target is an exact-match share in (0, 1]")
    if c.lr * c.weight_decay >= 1.0:
        raise UserError(f"{name('weight_decay')} with {name('lr')} shrinks every weight by lr * weight_decay = "
                        f"{c.lr * c.weight_decay:g} of itself per step (1 or more wipes it out); use a weight "
                        f"decay below {1 / c.lr:g}, e.g. {fix('weight_decay', 0.01)}")
    if possible_inputs(c) < 100:
        raise UserError(f"{name('seq_len')} with {name('n_digits')} allows only {possible_inputs(c)} different "
                        "inputs, too few to hold some out for testing; use longer sequences or more digits")


def check_positions(c, typed=None, fixed_by=None):
    """UserError unless inputs of c.seq_len fit the positional-encoding table (max_len); fixed_by:
    the checkpoint whose model fixes max_len (then only shorter inputs can help)."""
    needed = positions_needed(c.task, c.seq_len, c.n_digits)
    if needed <= c.max_len:
        return
    name, fix = namer(c, typed)
    fits = max((L for L in range(1, c.max_len + 1) if positions_needed(c.task, L, c.n_digits) <= c.max_len),
               default=None)
    shorter = f"use {fix('seq_len', fits)} or less, or " if fits else ""
    longer = (f"train a new model with --max-len {needed} or more (max_len is fixed by {fixed_by})" if fixed_by
              else f"raise it to {fix('max_len', needed)} or more" if needed <= MAX_POSITIONS else
              f"max_len cannot go beyond {MAX_POSITIONS}")
    raise UserError(f"{name('seq_len')} needs {needed} positions (the input, and the answer plus EOS) but the "
                    f"positional encoding has {name('max_len')}; {shorter}{longer}")


def check_decoding_flags(args, config):
    """--beam-size, --length-penalty and --eval-lengths, checked before anything is trained."""
    common.check_positive("--beam-size", args.beam_size)
    rows = min(1000, config.test_size) * args.beam_size                 # decoded 1000 inputs at a time
    if decode_memory(config, rows) > MAX_MEMORY:
        fits = max(1, int(args.beam_size * MAX_MEMORY / decode_memory(config, rows)))
        raise UserError(f"--beam-size {args.beam_size} keeps {rows:,} hypotheses per chunk of the test set, "
                        f"about {decode_memory(config, rows) / 1024 ** 3:,.0f} GB with this model; "
                        f"use --beam-size {fits} or less")
    if not math.isfinite(args.length_penalty):
        raise UserError(f"--length-penalty must be a finite number, got {args.length_penalty}")
    if args.eval_lengths is not None:
        from challenges import length_generalization
        args.eval_lengths = length_generalization.parse_lengths(args.eval_lengths, config, "--eval-lengths")


# ---------------------------------------------------------------- checkpoints
class CheckpointError(UserError):
    """A checkpoint that is missing, unreadable, or does not fit what was asked for."""


def save_checkpoint(path, result, config):
    """Save the best model of a TrainResult with its config, the optimizer state and the history up
    to the best step: plain types, so torch.load(..., weights_only=True) reads it."""
    return write_checkpoint(path, config, result.model.state_dict(), result.best_step, result.best_val,
                            result.optimizer_state, result.history, result.best_train_seconds,
                            result.best_wall_seconds)


def write_checkpoint(path, config, state_dict, step, val, optimizer_state, history, train_seconds, wall_seconds):
    """The checkpoint of the model at `step` (history cut there), written atomically."""
    keep = [i for i, s in enumerate(history["step"]) if s <= step]
    keep_val = [i for i, s in enumerate(history["val_step"]) if s <= step]
    history = {k: [v[i] for i in (keep_val if k.startswith("val_") else keep)] for k, v in history.items()}
    return checkpoints.save(path, CHECKPOINT_FORMATS[0], config, state_dict, step=step, val=dict(val),
                            optimizer=optimizer_state, history=history, train_seconds=train_seconds,
                            wall_seconds=wall_seconds)


def read_checkpoint(path, config_class=None) -> dict:
    """torch.load(weights_only=True), every field checked; CheckpointError with the reason if not usable."""
    config_class = config_class or lesson().TrainConfig
    ckpt = checkpoints.load(path, CHECKPOINT_FORMATS, ("state_dict", "config", "step"), CheckpointError)
    name = repr(os.fspath(path))
    config = checkpoints.config_from_dict(ckpt["config"], config_class, required=ARCHITECTURE_FIELDS,
                                          where=name, error=CheckpointError)
    try:
        validate_config(config)
    except UserError as exc:
        raise CheckpointError(f"{name} holds settings this lesson cannot run ({exc}); retrain to write a new one") \
            from None
    checks = [(ckpt["step"], int, "a whole number of steps")]
    if "val" in ckpt:
        checks.append((ckpt["val"], dict, "a dict of validation numbers"))
    for value, kind, what in checks:
        if isinstance(value, bool) or not isinstance(value, kind) or (kind is int and value < 0):
            raise CheckpointError(f"{name} has {value!r} where {what} belongs; retrain to write a new one")
    checkpoints.check_finite_tensors(ckpt["state_dict"], name, "weights", CheckpointError)
    ckpt["config"] = asdict(config)
    return ckpt


def check_resumable(checkpoint: dict, path, model) -> None:
    """What --resume needs beyond the weights: the optimizer state for this model and a history."""
    name, n = repr(os.fspath(path)), count_parameters(model)
    why = "cannot resume from it (load_checkpoint still reads the model); train a new model without --resume"
    opt = checkpoint.get("optimizer")
    if not isinstance(opt, dict) or isinstance(opt.get("t"), bool) or not isinstance(opt.get("t"), int) or \
            any(not isinstance(opt.get(k), torch.Tensor) or opt[k].shape != (n,) for k in "mv"):
        raise CheckpointError(f"{name} has no usable optimizer state for its {n} weights, so training {why}")
    checkpoints.check_finite_tensors({k: opt[k] for k in "mv"}, name, "optimizer state", CheckpointError)
    history = checkpoint.get("history")
    lists = new_history()
    if not isinstance(history, dict) or any(not isinstance(history.get(k), list) for k in lists if k != "val_train_seconds"):
        raise CheckpointError(f"{name} has no usable training history, so training {why}")
    for group in ([k for k in lists if not k.startswith("val_")], [k for k in lists if k.startswith("val_")]):
        present = [history[k] for k in group if k in history]
        numbers = [x for v in present for x in v if x is not None]       # None: seconds an old format lacked
        if len({len(v) for v in present}) > 1 or any(isinstance(x, bool) or not isinstance(x, (int, float))
                                                     or not math.isfinite(x) for x in numbers):
            raise CheckpointError(f"{name} has a damaged training history (lists of unequal length or entries "
                                  f"that are not numbers), so training {why}")
    for key in ("train_seconds", "wall_seconds"):
        value = checkpoint.get(key, 0.0)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
            raise CheckpointError(f"{name} has {key} = {value!r}, not a number of seconds, so training {why}")


def model_from_checkpoint(checkpoint: dict, path, config_class=None, model_class=None):
    """Build the model the checkpoint describes and load its weights (on the CPU, eval mode)."""
    config_class = config_class or lesson().TrainConfig
    model_class = model_class or lesson().Seq2SeqTransformer
    config = config_class(**checkpoint["config"])
    model = model_class(**config.model_config())
    try:
        model.load_state_dict(checkpoint["state_dict"])
    except (RuntimeError, KeyError, TypeError) as exc:
        lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
        raise CheckpointError(f"{os.fspath(path)!r}: the weights do not fit the model its config describes "
                              f"(d_model {config.d_model}, {config.n_heads} heads, {config.n_layers} layers, "
                              f"d_ff {config.d_ff}): {checkpoints.shorten(' '.join(lines[1:3] or lines))}") from None
    return model.eval()


def load_checkpoint(path):
    """The trained model saved at `path`, on the CPU, in eval mode. Raises CheckpointError (a
    common.UserError) with a clear message if the file is missing, corrupt or mismatched."""
    return model_from_checkpoint(read_checkpoint(path), path)


def keep_previous_outputs(out_dir, resumed_from=None):
    """A checkpoint in out_dir that this run did not resume from is kept, never overwritten: it is
    renamed mini_transformer.previous-N.pt (with its metrics.json as metrics.previous-N.json)
    before training starts, and one line says so. Folders in the way of an output fail now."""
    out_dir = Path(out_dir)
    for name in (CHECKPOINT_NAME, METRICS_NAME, "training_progress.png", "transformer_attention_patterns.png"):
        if (out_dir / name).is_dir():
            raise UserError(f"a folder named {name!r} in {str(out_dir)!r} is in the way of an output of this "
                            "lesson; move it, or pass another --out-dir")
    path = out_dir / CHECKPOINT_NAME
    if not path.exists() or (resumed_from and Path(resumed_from).resolve() == path.resolve()):
        return None
    n = 1
    while (out_dir / f"mini_transformer.previous-{n}.pt").exists():
        n += 1
    kept = out_dir / f"mini_transformer.previous-{n}.pt"
    about = checkpoints.describe(path)
    os.replace(path, kept)
    if (out_dir / METRICS_NAME).is_file():
        os.replace(out_dir / METRICS_NAME, out_dir / f"metrics.previous-{n}.json")
    say(f"an earlier {CHECKPOINT_NAME} ({about}) is kept as {kept.name}; this run writes a new one")
    return kept


# ---------------------------------------------------------------- bookkeeping around the training loop
class TrainingDiverged(UserError):
    """The loss became NaN or infinite."""


def new_history():
    return {"step": [], "loss": [], "accuracy": [], "lr": [], "val_step": [], "val_loss": [],
            "val_token_accuracy": [], "val_exact_match": [], "val_train_seconds": []}


@dataclass
class TrainResult:
    model: nn.Module                 # the best model (by validation exact-match, then loss), eval mode
    history: dict                    # lists: step, loss, accuracy, lr (every step); val_* (every validation)
    steps_run: int                   # optimizer steps done (including those before --resume)
    train_seconds: float             # time in training steps (data, forward, backward, update)
    wall_seconds: float              # the same plus validation and saving
    target: float                    # the validation exact-match that counted as reaching the target
    best_step: int                   # step of the best model
    best_val: dict                   # its validation loss, token_accuracy, exact_match
    stopped_because: str             # "target reached", "patience", "max steps", "interrupted (Ctrl-C)"
    heldout_removed: int = 0         # generated training rows dropped for matching a held-out input
    resumed_at: int | None = None    # the step training resumed from (--resume), else None
    data_changed: list = field(default_factory=list)  # settings changed at the resume (new history)
    best_train_seconds: float = 0.0  # train_seconds at the best step (saved for --resume)
    best_wall_seconds: float = 0.0   # wall_seconds at the best step (saved for --resume)
    optimizer_state: dict = field(repr=False, default_factory=dict)  # at the best step (for --resume)

    @property
    def interrupted(self) -> bool:
        return self.stopped_because.startswith("interrupted")

    @property
    def target_step(self):
        """The first validation step whose exact-match reached the target (also before a resume)."""
        h = self.history
        return next((s for s, e in zip(h["val_step"], h["val_exact_match"]) if e >= self.target), None)

    @property
    def target_seconds(self):
        h = self.history
        return next((t for s, t in zip(h["val_step"], h["val_train_seconds"]) if s == self.target_step), None)


class TrainingRun:
    """Everything around lesson 05's training loop that is not training: the history, the clocks,
    the progress bar and printed lines, the best model (kept in memory and saved to
    `checkpoint_path` atomically whenever it improves), resuming, and Ctrl-C (`with run:` ends the
    loop cleanly). The loop itself stays in the lesson."""

    def __init__(self, config, model, optimizer, resume, quiet, checkpoint_path, callback, print_every):
        self.config, self.model, self.optimizer = config, model, optimizer
        self.quiet, self.checkpoint_path, self.callback, self.print_every = quiet, checkpoint_path, callback, print_every
        self.history, self.step, self.train_seconds, self.wall_before = new_history(), 0, 0.0, 0.0
        self.resumed_at = None
        self.data_changed = []
        if resume is not None:
            model.load_state_dict(resume["state_dict"])
            optimizer.load_state_dict(resume["optimizer"])
            saved = resume["config"]
            self.data_changed = [f"{k} {saved[k]} -> {getattr(config, k)}" for k in DATA_FIELDS
                                 if saved.get(k) != getattr(config, k)]
            if not self.data_changed:            # the same validation set: the history carries on
                self.history.update({k: list(v) for k, v in resume["history"].items() if k in self.history})
            if len(self.history["val_train_seconds"]) != len(self.history["val_step"]):   # older checkpoints
                self.history["val_train_seconds"] = [None] * len(self.history["val_step"])
            self.step = self.resumed_at = int(resume["step"])
            self.train_seconds = float(resume.get("train_seconds", 0.0))
            self.wall_before = float(resume.get("wall_seconds", 0.0))
        # a resumed run draws new batches; % 2**64 keeps any seed in the generator's range
        self.data_seed = (config.seed * 1_000_003 + self.step) % 2 ** 64
        self.best, self.saved_step, self.validations_since_best, self.stopped_because = None, None, 0, None

    @property
    def stopped(self):
        return self.stopped_because is not None

    def stop(self, reason):
        self.stopped_because = reason

    def __enter__(self):
        self.wall_start = time.perf_counter()
        self.bar = common.progress(total=self.config.steps, initial=self.step, desc="training", quiet=self.quiet)
        return self

    def __exit__(self, kind, exc, traceback):
        self.bar.close()
        if kind is KeyboardInterrupt:
            self.stopped_because = "interrupted (Ctrl-C)"
            return True                   # swallowed: the caller gets the best model so far
        return False

    def start_step(self) -> int:
        self.step += 1
        self.t0 = time.perf_counter()
        return self.step

    def check_finite(self, loss):
        self.loss_value = loss.item()
        if not math.isfinite(self.loss_value):
            lr = self.optimizer.lr
            raise TrainingDiverged(f"the training loss became {self.loss_value} at step {self.step} (learning "
                                   f"rate then {lr:.3g}): the updates grew too large; lower --lr (it is "
                                   f"{self.config.lr:g}; the default is {type(self.config).lr:g}) and keep "
                                   "--grad-clip on")

    def end_step(self, loss, logits, tgt_out):
        self.train_seconds += time.perf_counter() - self.t0
        with torch.no_grad():
            target = tgt_out != lesson().PAD
            accuracy = float(((logits.argmax(-1) == tgt_out) & target).sum() / target.sum())
        for key, value in (("step", self.step), ("loss", self.loss_value), ("accuracy", accuracy),
                           ("lr", self.optimizer.lr)):
            self.history[key].append(value)
        self.bar.update(1)
        if self.step % 5 == 0:
            self.bar.set_postfix(loss=f"{self.loss_value:.3f}", acc=f"{accuracy:.3f}", refresh=False)

    def wall_seconds(self):
        return self.wall_before + time.perf_counter() - self.wall_start

    def record_validation(self, metrics):
        h = self.history
        if not h["val_step"] or h["val_step"][-1] != self.step:       # (a resumed run has its start)
            for key, value in (("val_step", self.step), ("val_loss", metrics["loss"]),
                               ("val_token_accuracy", metrics["token_accuracy"]),
                               ("val_exact_match", metrics["exact_match"]), ("val_train_seconds", self.train_seconds)):
                h[key].append(value)
        key = (metrics["exact_match"], -metrics["loss"])              # best: exact-match, then loss
        if self.best is None or key > self.best["key"]:
            self.best = dict(key=key, step=self.step, val=metrics, state=copy.deepcopy(self.model.state_dict()),
                             opt=self.optimizer.state_dict(), seconds=self.train_seconds, wall=self.wall_seconds())
            self.validations_since_best = 0
            self.save()
        else:
            self.validations_since_best += 1
        if self.print_every and not self.quiet and self.step % self.print_every == 0:
            loss = f"{h['loss'][-1]:.4f}" if h["loss"] else "-"
            self.bar.write(f"  step {self.step:>5} | loss {loss} | "
                           f"val loss {metrics['loss']:.4f} | val token acc {metrics['token_accuracy']:.4f} | "
                           f"val exact {metrics['exact_match']:.4f} | lr {self.optimizer.lr:.2e}")
        if self.callback is not None:
            self.callback(self.step, metrics)

    def save(self):
        """Write the best model so far to checkpoint_path (atomically), unless it is there already."""
        if self.checkpoint_path is not None and self.best is not None and self.saved_step != self.best["step"]:
            b = self.best
            write_checkpoint(self.checkpoint_path, self.config, b["state"], b["step"], b["val"], b["opt"],
                             self.history, b["seconds"], b["wall"])
            self.saved_step = b["step"]

    def result(self, heldout_removed=0) -> TrainResult:
        """The TrainResult with the best model loaded (eval mode); the checkpoint is current.
        Ctrl-C before the first validation ends: there is no model worth keeping yet."""
        if self.best is None and self.stopped_because == "interrupted (Ctrl-C)":
            raise KeyboardInterrupt
        best = self.best or dict(step=self.step, val={}, state=None, opt={}, seconds=0.0, wall=0.0)
        if best["state"] is not None:
            self.model.load_state_dict(best["state"])
        self.save()                      # in case Ctrl-C cut the last save short
        return TrainResult(model=self.model.eval(), history=self.history, steps_run=self.step,
                           train_seconds=self.train_seconds, wall_seconds=self.wall_seconds(),
                           target=self.config.target, best_step=best["step"], best_val=best["val"],
                           stopped_because=self.stopped_because or "max steps", heldout_removed=heldout_removed,
                           resumed_at=self.resumed_at, data_changed=self.data_changed,
                           best_train_seconds=best["seconds"], best_wall_seconds=best["wall"],
                           optimizer_state=best["opt"])


# ---------------------------------------------------------------- reports: training
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
    if result.target_step is not None:
        seconds = f", after {result.target_seconds:.2f} s of training" if result.target_seconds is not None else ""
        say(f"validation exact-match first reached {config.target:.0%} at step {result.target_step}{seconds}")
    else:
        say(f"validation exact-match did not reach {config.target:.0%} (best "
            f"{result.best_val.get('exact_match', 0):.4f})")
    bv = result.best_val
    say(f"best model: step {result.best_step}, validation loss {bv['loss']:.4f}, token accuracy "
        f"{bv['token_accuracy']:.4f}, exact-match {bv['exact_match']:.4f}")
    say(f"training sequences dropped because they equal a held-out input: {result.heldout_removed}")
    say(f"the best model is saved in {CHECKPOINT_NAME} (rewritten whenever it improved)")


def plot_training(config, result, learning_rate, out_dir, show):
    """Loss, validation accuracy and learning rate against the optimizer step."""
    import numpy as np

    h = result.history
    fig, axes = common.new_figure(1, 3, figsize=(15, 4.6), show=show, layout="constrained")
    ax = axes[0]
    ax.plot(h["step"], h["loss"], color="tab:blue", alpha=0.5, lw=1, label="training batch")
    ax.plot(h["val_step"], h["val_loss"], "o-", color="tab:orange", ms=3, label="validation set")
    ax.set_yscale("log")
    ax.set(xlabel="optimizer step", ylabel="cross-entropy loss (log scale)", title="Loss")
    ax.legend(fontsize=8)
    ax = axes[1]
    ax.plot(h["val_step"], h["val_token_accuracy"], "o-", ms=3, label="token accuracy")
    ax.plot(h["val_step"], h["val_exact_match"], "s-", ms=3, label="exact-match (whole answer right)")
    ax.axhline(config.target, color="gray", ls="--", lw=1, label=f"target {config.target:.0%}")
    if result.target_step is not None:
        ax.axvline(result.target_step, color="tab:green", ls=":", lw=1.5, label=f"target reached, step {result.target_step}")
    ax.set(xlabel="optimizer step", ylabel="validation accuracy", ylim=(-0.02, 1.02),
           title="Validation: exact-match lags token accuracy")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)   # below: never on a curve
    ax = axes[2]
    horizon = min(config.steps, max(20 * result.steps_run, 100))        # never a point per planned step
    planned = sorted({int(x) for x in np.linspace(1, horizon, 400)})
    ax.plot(planned, [learning_rate(t, config) for t in planned], color="gray", ls="--", lw=1,
            label=f"planned ({config.steps} steps{'' if horizon == config.steps else f', first {horizon} shown'})")
    ax.plot(h["step"], h["lr"], color="tab:purple", lw=2, label=f"used (stopped at step {result.steps_run})")
    if result.resumed_at is not None:
        ax.axvline(result.resumed_at, color="tab:red", ls=":", lw=1.5,
                   label=f"resumed at step {result.resumed_at}: this run's schedule from here")
    ax.set(xlabel="optimizer step", ylabel="learning rate",
           title=f"Warmup ({config.warmup} steps), then {config.schedule}" if config.warmup else
           f"No warmup: {config.schedule} from the start")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=1)
    fig.suptitle(f"Training the mini transformer on '{config.task}' (length {config.seq_len})")
    common.save_figure(fig, out_dir, "training_progress.png", show=show)


def report_cache(found):
    """Section 4's measurement: recomputing the prefix against the cache, and whether they agree."""
    n, ratio = found["decoded"], found["recompute_seconds"] / found["cached_seconds"]
    say(f"greedy decoding of {n} test inputs ({found['max_tokens']} steps at most), median of 3: recomputing the "
        f"prefix {found['recompute_seconds']:.3f} s, with the cache {found['cached_seconds']:.3f} s "
        f"({ratio:.1f}x); identical answers: {found['identical']} of {n}")
    if found["identical"] < n:
        say("the two disagree: the cache assumes that earlier positions never change, which holds only when the "
            "decoder's mask is causal (section 2's causality check says whether it is)")
    elif ratio < 1.2:
        say(f"no faster here: answers of at most {found['max_tokens']} tokens leave little prefix to skip")


# ---------------------------------------------------------------- reports: the test set
def compare_decoded(predicted, expected):
    """Decoded answers (B, L) against tgt_out: counts of right tokens, whole answers, by position."""
    PAD = lesson().PAD
    L = max(predicted.size(1), expected.size(1))
    predicted = torch.nn.functional.pad(predicted, (0, L - predicted.size(1)), value=PAD)
    expected = torch.nn.functional.pad(expected, (0, L - expected.size(1)), value=PAD)
    target = expected != PAD                                         # answer + EOS positions
    right = (predicted == expected) & target
    exact = (predicted == expected).all(dim=1)                       # also no extra tokens after the answer
    present = target.sum(0)
    return {"tokens": predicted, "exact": exact, "n": len(exact), "exact_count": int(exact.sum()),
            "exact_match": float(exact.float().mean()), "token_right": int(right.sum()),
            "token_count": int(target.sum()), "token_accuracy": int(right.sum()) / int(target.sum()),
            "position_wrong": [int(n - r) for r, n in zip(right.sum(0), present) if n > 0],
            "position_count": [int(n) for n in present if n > 0]}


def report_test_set(config, test, greedy, forced, beam, args):
    """The table of exact-match with intervals; teacher-forced vs free-running; beam vs greedy."""
    n = greedy["n"]
    forced_exact = round(forced["exact_match"] * n)
    rows = [["greedy (free-running)", stats.share_text(greedy["exact_count"], n), greedy["token_accuracy"]]]
    if beam is not None:
        rows.append([f"beam search, beam size {args.beam_size}", stats.share_text(beam["exact_count"], n),
                     beam["token_accuracy"]])
    rows.append(["teacher-forced (one pass)", stats.share_text(forced_exact, n), forced["token_accuracy"]])
    common.table(rows, ["", "exact-match (95% interval)", "token accuracy"])
    same = forced_exact == greedy["exact_count"]
    say(f"one teacher-forced pass gets {forced_exact} answers right, greedy decoding {greedy['exact_count']}: "
        + ("the same, so validation can use the cheap pass." if same else "NOT the same: the decoder sees "
           "something in training that it lacks when it decodes; section 2's causality check is the first suspect."))
    tokens = greedy["token_count"]
    forced_wrong = round((1 - forced["token_accuracy"]) * tokens)
    free_wrong, wrong_answers = tokens - greedy["token_right"], n - greedy["exact_count"]
    say(f"wrong tokens: teacher-forced {forced_wrong} of {tokens}; free-running {free_wrong}, in {wrong_answers} "
        f"wrong answers: {wrong_answers} first mistakes and {free_wrong - wrong_answers} more after them"
        + (", where the decoder reads its own earlier mistakes (a skipped digit shifts the rest)."
           if same and free_wrong > wrong_answers else "."))
    found = {"teacher_forced_exact_count": forced_exact, "teacher_forced_wrong_tokens": forced_wrong,
             "free_running_wrong_tokens": free_wrong, "free_running_wrong_after_first_mistake": free_wrong - wrong_answers,
             "cheap_equals_greedy": same}
    if beam is not None:
        fixed = int((beam["exact"] & ~greedy["exact"]).sum())
        broke = int((greedy["exact"] & ~beam["exact"]).sum())
        changed = int((beam["tokens"] != greedy["tokens"]).any(dim=1).sum())
        p = stats.sign_test(fixed, broke)
        verdict = "a difference beyond chance" if p < 0.05 else "within chance: not a finding"
        say(f"beam search changed {changed} of {n} answers: {fixed} wrong -> right, {broke} right -> wrong "
            f"(sign test p = {p:.2g}: {verdict}).")
        found.update(beam_changed=changed, beam_fixed=fixed, beam_broke=broke, beam_p=p)
    return found


def report_where_wrong(config, test, greedy):
    """Where the answers go wrong: by answer length for sums, by answer position otherwise; examples."""
    expected = [tokens_to_digits(row) for row in test.tgt_out]
    answers = [tokens_to_digits(row) for row in greedy["tokens"]]
    if config.task == "sum":
        report_sum_lengths(config, test, expected, answers)
    wrong, count = greedy["position_wrong"], greedy["position_count"]
    print("\n  wrong tokens by answer position (greedy; the last position of each answer is its EOS):")
    for start in range(0, len(wrong), 16):
        chunk = range(start, min(start + 16, len(wrong)))
        print("   position " + " ".join(f"{i + 1:>4}" for i in chunk))
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


# ---------------------------------------------------------------- reports: attention
def focus(weights, real_rows, keys):
    """The largest weight of each real query row, averaged over those rows, and the same average if
    every row spread its weight evenly over its keys: weights (B, n_heads, T_q, T_k), real_rows
    (B, T_q), keys (B, T_q) how many keys each row may attend to."""
    rows = real_rows[:, None, :].expand(-1, weights.size(1), -1)
    return float(weights.max(-1).values[rows].mean()), float((1 / keys.float())[real_rows].mean())


def alignment(task, cross, src, tgt_in, tgt_out):
    """Per head, the share of answer positions whose strongest cross-attention falls where the task
    points, and that share for a key drawn at random (chance). cross (B, n_heads, T_tgt, T_src).
    Returns {name: (shares (n_heads,), chance)}: reverse -> the mirror position L-1-i; copy -> i;
    sort -> a position holding the digit being written, and one holding the digit just written."""
    L = lesson()
    real = src != L.PAD                                               # (B, T_src)
    lengths = real.sum(1, keepdim=True)                               # (B, 1)
    answer = (tgt_out != L.PAD) & (tgt_out != L.EOS)                  # (B, T_tgt) answer digits
    strongest = cross.argmax(-1)                                      # (B, n_heads, T_tgt)
    i = torch.arange(tgt_out.size(1)).expand_as(tgt_out)
    if task in ("reverse", "copy"):
        where = lengths - 1 - i if task == "reverse" else i            # (B, T_tgt)
        hit = strongest == where[:, None, :]
        chance = (1 / lengths.float()).expand_as(tgt_out)[answer]
        name = "the mirror input position" if task == "reverse" else "the same input position"
        return {name: ((hit & answer[:, None, :]).sum((0, 2)).float() / answer.sum(), float(chance.mean()))}
    looked_at = src.gather(1, strongest.flatten(1)).view_as(strongest)  # (B, n_heads, T_tgt) token there
    found = {}
    for name, digit, rows in (("an input holding the digit being written", tgt_out, answer),
                              ("an input holding the digit just written", tgt_in, answer & (i > 0))):
        hit = (looked_at == digit[:, None, :]) & rows[:, None, :]
        holding = ((src[:, None, :] == digit[:, :, None]) & real[:, None, :]).sum(-1).float() / lengths  # (B, T_tgt)
        found[name] = (hit.sum((0, 2)).float() / rows.sum(), float(holding[rows].mean()))
    return found


def report_attention(config, weights, test):
    L = lesson()
    src_real, tgt_real = test.src != L.PAD, test.tgt_out != L.PAD
    n_src = src_real.sum(1, keepdim=True)                               # (B, 1) keys of every source row
    parts = (("encoder_self", src_real, n_src.expand_as(src_real)),
             ("decoder_self", tgt_real, torch.arange(1, tgt_real.size(1) + 1).expand_as(tgt_real)),  # causal
             ("cross", tgt_real, n_src.expand_as(tgt_real)))
    rows, even = [], []
    for layer in range(len(weights["cross"])):
        measured = [focus(weights[name][layer], real, keys) for name, real, keys in parts]
        rows.append([f"layer {layer + 1}", *(m[0] for m in measured)])
        even = [m[1] for m in measured]
    rows.append(["spread evenly", *even])
    common.table(rows, ["focus (heads averaged)", "encoder self", "decoder self (masked)", "cross"])
    found = {"focus": {"encoder_self": [r[1] for r in rows[:-1]], "decoder_self": [r[2] for r in rows[:-1]],
                       "cross": [r[3] for r in rows[:-1]], "spread_evenly": even}, "alignment": None}
    if config.task == "sum":
        print("  each digit of a sum depends on every input, so no input position is the right one to look at")
        return found
    table, best = [], None
    for name, _ in alignment(config.task, weights["cross"][0], test.src, test.tgt_in, test.tgt_out).items():
        for layer, cross in enumerate(weights["cross"]):
            shares, chance = alignment(config.task, cross, test.src, test.tgt_in, test.tgt_out)[name]
            for head, share in enumerate(shares.tolist()):
                table.append([f"layer {layer + 1}, head {head + 1}", name, share, chance])
                if best is None or share - chance > best[2] - best[3]:
                    best = (f"layer {layer + 1}, head {head + 1}", name, share, chance)
    print("\n  alignment: share of answer positions whose strongest cross-attention weight falls on ...")
    common.table(table, ["cross-attention", "...", "share", "chance"])
    head, name, share, chance = best
    verdict = ("most answer positions look there" if share >= 0.5 else
               "more often than chance, but not most" if share > 2 * chance else "about as often as chance")
    say(f"best: {head}, {name}: {share:.3f} against {chance:.3f} by chance: {verdict}.")
    found["alignment"] = {"rows": table, "best": list(best)}
    return found


def plot_attention(config, weights, test, found, out_dir, show, example=0):
    """One example: per layer, rows of encoder self-, decoder self- and cross-attention, a column per head."""
    L = lesson()
    src, tgt_out = test.src[example], test.tgt_out[example]
    T_src, T_tgt = int((src != L.PAD).sum()), int((tgt_out != L.PAD).sum())
    in_labels = [f"{i}:{show_tokens(t[None])}" for i, t in enumerate(src[:T_src])]
    out_labels = [f"{i}:{show_tokens(t[None])}" for i, t in enumerate(tgt_out[:T_tgt])]
    read_labels = [f"{i}:{show_tokens(t[None])}" for i, t in enumerate(test.tgt_in[example][:T_tgt])]
    n_layers, n_heads = len(weights["cross"]), weights["cross"][0].size(1)
    width = max(5.5, 3.6 * n_heads + 1.4)                             # inches
    fig, axes = common.new_figure(3 * n_layers, n_heads, figsize=(width, 3.3 * 3 * n_layers + 0.9),
                                  show=show, squeeze=False, layout="constrained")
    for layer in range(n_layers):
        panels = (("encoder self-attention", weights["encoder_self"][layer][example, :, :T_src, :T_src],
                   in_labels, in_labels, "query: input position", "key: input position"),
                  ("decoder self-attention (masked)", weights["decoder_self"][layer][example, :, :T_tgt, :T_tgt],
                   out_labels, read_labels, "query: answer position (writes)", "key: answer position (reads)"),
                  ("cross-attention", weights["cross"][layer][example, :, :T_tgt, :T_src],
                   out_labels, in_labels, "query: answer position (writes)", "key: input position"))
        for row, (title, w, ylabels, xlabels, ylabel, xlabel) in enumerate(panels):
            for head in range(n_heads):
                ax = axes[3 * layer + row][head]
                image = ax.imshow(w[head].numpy(), cmap="viridis", vmin=0, vmax=1,
                                  aspect="auto" if max(w.shape[-2:]) > 3 * min(w.shape[-2:]) else "equal")
                ax.set_xticks(range(len(xlabels)), xlabels, fontsize=6, rotation=90)
                ax.set_yticks(range(len(ylabels)), ylabels, fontsize=6)
                ax.set_xlabel(xlabel, fontsize=8)
                ax.set_ylabel(ylabel, fontsize=8)
                ax.set_title(f"{title}\nlayer {layer + 1}, head {head + 1}", fontsize=8)
    fig.colorbar(image, ax=axes, shrink=0.5, label="attention weight")
    best = (found.get("alignment") or {}).get("best")
    what = (f"best cross-attention head: {best[2]:.0%} of test answer positions look at {best[1]}"
            f" (chance {best[3]:.0%})" if best else "sum: each answer digit depends on every input")
    import textwrap
    title = f"Attention on one test example ({config.task}: {digits_text(tokens_to_digits(src))}); {what}"
    fig.suptitle(textwrap.fill(title, int(width * 12)), fontsize=8)
    common.save_figure(fig, out_dir, "transformer_attention_patterns.png", show=show)


# ---------------------------------------------------------------- metrics.json, length generalization, insights
def plain(value):
    """value as JSON-ready plain data: tensors dropped (0-d ones become numbers), NaN as None."""
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
    "complete" stays false until the lesson finishes, so an interrupted run says so."""

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

    def update(self, **parts):
        self.data.update(plain(parts))
        self.write()

    def write(self):
        common.write_json(self.path, plain(self.data))


def evaluate_lengths(args, config, model, device, checkpoint):
    """--eval-lengths: the length-generalization challenge on this run's model."""
    from challenges import length_generalization

    common.section(8, "Length generalization (--eval-lengths): inputs longer and shorter than in training")
    trained = length_generalization.trained_lengths(config, checkpoint)
    return length_generalization.evaluate(config, model, args.eval_lengths, trained, device, args.out_dir, args.show)


def insights(config, model_info, result, data, reloaded):
    test = data["test"]
    greedy, n = test["greedy"], test["greedy"]["n"]
    leak = model_info["causal_change_before"] > 1e-5
    items = [(f"The decoder's mask LEAKS: changing later decoder inputs moved earlier outputs by "
              f"{model_info['causal_change_before']:.3g}, so teacher forcing shows each position the answer."
              if leak else
              f"Teacher forcing trains every answer position in one pass, and the causal mask keeps it honest: "
              f"changing later decoder inputs moved earlier outputs by {model_info['causal_change_before']:.3g} "
              f"(later ones by {model_info['causal_change_after']:.3g}).")]
    if result.target_step is not None:
        items.append(f"{model_info['parameters']:,} parameters reached {config.target:.0%} validation exact-match "
                     f"on '{config.task}' (length {config.seq_len}) at step {result.target_step}"
                     + (f", {result.target_seconds:.1f} s of training." if result.target_seconds else "."))
    else:
        items.append(f"Training stopped ({result.stopped_because}) at {result.best_val['exact_match']:.1%} validation "
                     f"exact-match, short of the {config.target:.0%} target.")
    items.append(f"On {n} test answers greedy decoding got {stats.share_text(greedy['exact_count'], n)} whole "
                 f"answers right (95% interval) and {greedy['token_accuracy']:.2%} of tokens; one teacher-forced "
                 f"pass found {test['teacher_forced_exact_count']} right answers"
                 + (", the same: validation needs no decoding loop." if test["cheap_equals_greedy"] else "."))
    items.append(f"Wrong tokens: {test['teacher_forced_wrong_tokens']} teacher-forced, "
                 f"{test['free_running_wrong_tokens']} free-running, {test['free_running_wrong_after_first_mistake']} "
                 "of them after an answer's first mistake.")
    if test.get("beam") is not None:
        items.append(f"Beam search fixed {test['beam_fixed']} answers and broke {test['beam_broke']} "
                     f"(sign test p = {test['beam_p']:.2g}" + ("): a real difference." if test["beam_p"] < 0.05
                                                               else "): no difference beyond chance."))
    best = (data.get("attention") or {}).get("alignment")
    if best:
        head, name, share, chance = best["best"]
        items.append(f"Cross-attention ({head}) looks at {name} for {share:.1%} of answer positions "
                     f"(chance {chance:.1%}).")
    cache = data.get("cache") or {}
    if cache and cache["identical"] == cache["decoded"]:
        items.append(f"The prefix cache gave identical answers ({cache['identical']} of {cache['decoded']}) in "
                     f"{cache['cached_seconds'] / cache['recompute_seconds']:.0%} of the time of recomputing the prefix.")
    elif cache:
        items.append(f"The prefix cache and recomputing disagreed on {cache['decoded'] - cache['identical']} of "
                     f"{cache['decoded']} answers: the cache is exact only with a causal mask.")
    items.append(f"The checkpoint reloads with weights_only=True and predicts the same answers ({reloaded} of 8).")
    items.extend((data.get("length_generalization") or {}).get("sentences", []))
    return items
