"""Lesson 05's settings checked before any work: every knob (TrainConfig's fields, the token ids,
TASK_DEFAULTS, the held-out seeds) and every flag gets one `error:` line naming it and what would
work, instead of a traceback minutes later. Also the sizes these checks need: parameters, memory,
positions."""
import math
import numbers
from dataclasses import fields

from common.cli import SEED_RANGE
from common.errors import UserError
from lesson05_plumbing import lesson

MAX_PARAMETERS = 50_000_000      # a CPU lesson: larger models would take hours and gigabytes


MAX_POSITIONS = 10_000           # rows of the positional-encoding table


MAX_DIGITS = 1_000               # --digits: the vocabulary is the digits plus 3 special tokens


MAX_MEMORY = 2 * 1024 ** 3       # bytes one training step or one decoding chunk may need (estimated)

# --quick: a tiny version for smoke tests (flags typed still win).
QUICK = dict(seq_len=6, steps=100, warmup=10, val_size=200, test_size=200)
# flag -> (TrainConfig field, help). Types and defaults come from TrainConfig (and TASK_DEFAULTS).


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


# Fields that decide the validation set: a resume that changes one starts a new history.
DATA_FIELDS = ("seq_len", "min_len", "n_digits", "sum_order", "val_size")
# Fields that fix what a checkpoint's model is: a --resume run may not contradict them.


# Fields that fix what a checkpoint's model is: a --resume run may not contradict them.
ARCHITECTURE_FIELDS = ("task", "n_digits", "d_model", "n_heads", "n_layers", "d_ff", "norm_first",
                       "embed_scale", "max_len")


FLAG_OF = {**{field: flag for flag, (field, _) in FLAGS.items()}, "norm_first": "--norm", "embed_scale": "--embed-scale",
           "seed": "--seed"}


def positions_needed(task: str, src_len: int, n_digits: int) -> int:
    """Rows of the positional-encoding table used: src_len in the encoder, answer + EOS in the decoder."""
    return max(src_len, lesson().output_len(task, src_len, n_digits) + 1)


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


def namer(c, typed):
    """name(field): how a message names a setting: the flag and its value when it was typed (or
    typed is None), else where the value comes from, the knob (TrainConfig.n_heads = 3).
    fix(field, value): a flag that sets it, which always works."""
    def name(field):
        value = getattr(c, field)
        if field not in FLAG_OF and typed is not None and field in QUICK and field in typed:
            return f"--quick's {field} = {value!r}"
        if field not in FLAG_OF or (typed is not None and field not in typed):
            return f"TrainConfig.{field} = {value!r}"
        return f"{FLAG_OF[field]} {value}"

    def fix(field, value):
        return f"{FLAG_OF[field]} {value}" if field in FLAG_OF else f"TrainConfig.{field} = {value!r}"
    return name, fix


MAX_HELDOUT = 100_000            # --val-size, --test-size: held-out sequences kept in memory and decoded
KINDS = {int: "a whole number", float: "a number", bool: "True or False", str: "a text"}


def of_kind(value, kind) -> bool:
    """Whether value fits a TrainConfig field's type: an int is no bool, a float may be any real number."""
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    return isinstance(value, kind)


def field_kinds(config_class) -> dict:
    """{field: int | float | bool | str} from the dataclass's annotations."""
    kinds = {k.__name__: k for k in KINDS}
    return {f.name: f.type if f.type in KINDS else kinds.get(str(f.type), str) for f in fields(config_class)}


def check_knobs():
    """The lesson's knobs other than TrainConfig's fields: the token ids, TASKS, the held-out seeds and
    TASK_DEFAULTS, each checked for type and range before anything runs (UserError names the knob)."""
    L = lesson()
    tokens = {"PAD": L.PAD, "BOS": L.BOS, "EOS": L.EOS, "FIRST_DIGIT": L.FIRST_DIGIT}
    for knob, value in tokens.items():
        if not of_kind(value, int) or not 0 <= value <= MAX_DIGITS:
            raise UserError(f"{knob} = {value!r}: a token id is a whole number from 0 to {MAX_DIGITS}")
    special = (L.PAD, L.BOS, L.EOS)
    if len(set(special)) < 3 or max(special) >= L.FIRST_DIGIT:
        raise UserError(f"PAD, BOS, EOS = {special} and FIRST_DIGIT = {L.FIRST_DIGIT!r}: the three special tokens "
                        "need three different ids below FIRST_DIGIT (digit d is token d + FIRST_DIGIT), e.g. 0, 1, 2 and 3")
    known = ("reverse", "copy", "sort", "sum")
    if not isinstance(L.TASKS, (tuple, list)) or not L.TASKS or any(t not in known for t in L.TASKS):
        raise UserError(f"TASKS = {L.TASKS!r}: each task needs an answer in task_outputs; use some of {known}")
    for knob, value in (("VAL_SEED", L.VAL_SEED), ("TEST_SEED", L.TEST_SEED)):
        if not of_kind(value, int) or not 0 <= value <= SEED_RANGE[1]:
            raise UserError(f"{knob} = {value!r}: a seed is a whole number from 0 to {SEED_RANGE[1]}")
    if L.VAL_SEED == L.TEST_SEED:
        raise UserError(f"VAL_SEED and TEST_SEED are both {L.VAL_SEED}: the two held-out sets need seeds of their own")
    kinds = field_kinds(L.TrainConfig)
    for field, kind in kinds.items():
        value = getattr(L.TrainConfig, field)
        if not of_kind(value, kind):
            raise UserError(f"TrainConfig.{field} = {value!r} must be {KINDS[kind]} (like its default in the lesson)")
    if not isinstance(L.TASK_DEFAULTS, dict):
        raise UserError(f"TASK_DEFAULTS = {L.TASK_DEFAULTS!r} must be a dict {{task: {{field: value}}}}")
    for task, values in L.TASK_DEFAULTS.items():
        if task not in L.TASKS or not isinstance(values, dict):
            raise UserError(f"TASK_DEFAULTS[{task!r}]: the keys are tasks from {tuple(L.TASKS)}, each holding a "
                            "dict of TrainConfig fields, e.g. {'copy': {'steps': 300}}")
        for field, value in values.items():
            if field not in kinds:
                raise UserError(f"TASK_DEFAULTS[{task!r}][{field!r}]: TrainConfig has no field {field!r}; "
                                f"fields are {', '.join(kinds)}")
            if not of_kind(value, kinds[field]):
                raise UserError(f"TASK_DEFAULTS[{task!r}][{field!r}] = {value!r} must be {KINDS[kinds[field]]}")


def validate_config(c, typed=None):
    """Raise UserError, naming the value and what would work, for settings that cannot run.
    typed: the fields set by flags (they are named as flags; the others as TrainConfig knobs)."""
    name, fix = namer(c, typed)
    for key, kind in field_kinds(type(c)).items():  # a wrong type would fail minutes later, or silently
        if not of_kind(getattr(c, key), kind):
            raise UserError(f"{name(key)}: must be {KINDS[kind]}")
    for key in ("lr", "weight_decay", "grad_clip", "dropout", "target", "label_smoothing"):
        if not math.isfinite(getattr(c, key)):      # nan slips through every comparison below
            raise UserError(f"{name(key)}: must be a finite number")
    for key, zero_ok in (("seq_len", False), ("n_digits", False), ("d_model", False), ("n_heads", False),
                           ("n_layers", False), ("d_ff", False), ("max_len", False), ("steps", False),
                           ("batch_size", False), ("eval_every", False), ("lr", False), ("min_len", True),
                           ("val_size", False), ("test_size", False),
                           ("warmup", True), ("patience", True), ("grad_clip", True), ("weight_decay", True)):
        value = getattr(c, key)
        if value < 0 or (value == 0 and not zero_ok):
            raise UserError(f"{name(key)}: must be {'0 or more' if zero_ok else 'a positive number'}")
    for key in ("val_size", "test_size"):
        if getattr(c, key) > MAX_HELDOUT:
            raise UserError(f"{name(key)}: at most {MAX_HELDOUT:,} held-out sequences (they are kept in memory and "
                            f"decoded); the default is 1000")
    if not SEED_RANGE[0] <= c.seed <= SEED_RANGE[1]:
        raise UserError(f"{name('seed')}: use a whole number from {SEED_RANGE[0]} to {SEED_RANGE[1]}")
    if c.task not in lesson().TASKS or c.sum_order not in CHOICES["sum_order"] or c.schedule not in CHOICES["schedule"]:
        raise UserError(f"{name('task')}, {name('sum_order')}, {name('schedule')}: expected a task from "
                        f"{lesson().TASKS}, a sum order from {CHOICES['sum_order']}, a schedule from {CHOICES['schedule']}")
    if c.d_model % c.n_heads:
        options = [h for h in range(1, min(c.d_model, 16) + 1) if c.d_model % h == 0]
        raise UserError(f"{name('d_model')} is not divisible by {name('n_heads')} (each head gets d_model / heads "
                        f"dimensions); use heads from {options}, e.g. "
                        f"{fix('n_heads', min(options, key=lambda h: abs(h - c.n_heads)))}")
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
    if lesson().possible_inputs(c) < 100:
        raise UserError(f"{name('seq_len')} with {name('n_digits')} allows only {lesson().possible_inputs(c)} different "
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
