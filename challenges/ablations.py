"""Challenge: the "why" questions about transformers, answered by measurement, one change at a time.

What you will learn
  - why attention divides by sqrt(d_k), why (or whether) to multiply embeddings by sqrt(d_model),
    why positional encodings, pre-LN or post-LN, why warmup and gradient clipping, and what
    dropout, label smoothing and tied embeddings do to a small model that sees fresh data;
  - what the building blocks of modern LLMs (LLaMA, Mistral: RoPE, RMSNorm, SwiGLU, one
    decoder-only stack, grouped-query attention, a sliding window) change, measured the same way;
  - that a difference is a finding only when it is larger than the seed-to-seed spread, and that a
    change that fails has a mechanism: each such row names it with numbers from its own runs (where
    the untrained model starts, where the trained one looks, which answer digits it gets right).

Every row is lesson 05's model and training loop (reused through common.load_lesson(5)) with one
change, compared with its reference: lesson 05's default, or for a change that needs another
starting point (a wider head, a 4+4 stack, a higher learning rate) that starting point without
the change. All runs of a task share the validation and test sets, the learning-rate schedule
and, for the same seed, the training batches. A run stops at 99% validation exact-match or at its
row's step budget (a multiple of its reference's median steps: 3, or 5 for the tied embeddings,
which learn slowly). The changed parts are in
challenges/components.py, each tested against a reference.

Run it (from the repository root)
  python -m challenges.ablations                       # reverse, every row, 3 seeds (about 7 min)
  python -m challenges.ablations --list                # the rows and the questions they answer
  python -m challenges.ablations --only no_warmup,no_clipping --seeds 5
  python -m challenges.ablations --task sum --only lsd_first    # sum: which digit to write first
  python -m challenges.ablations --task copy           # every row on another task
  python -m challenges.ablations --quick               # tiny sizes, end to end in well under a minute
Writes ablations.json and ablations.png to --out-dir. While the runs go on, the finished ones are in
ablations.partial.json (after every run); only a complete set of runs replaces ablations.json, so
an interrupted rerun (Ctrl-C, SIGTERM) keeps the last complete result.
"""
import math
import os
import statistics
import sys
import textwrap
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

if __package__ in (None, ""):     # run as a file (python challenges/ablations.py): common/ is one folder up
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import common  # noqa: E402  (first: it checks $OMP_NUM_THREADS before torch reads it)
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

from challenges import components, variants  # noqa: E402
from challenges.variants import Variant  # noqa: E402
from common import load_lesson  # noqa: E402
from lesson05_plumbing.settings import count_parameters, validate_config  # noqa: E402
from lesson05_plumbing.training import TrainingDiverged  # noqa: E402

# Reused from lesson 05 (one source for each component; edit it there and every row trains your
# version): its config, its data, its evaluation, its checks.
lesson05 = load_lesson(5)
TrainConfig = lesson05.TrainConfig
heldout_sets = lesson05.heldout_sets
evaluate_teacher_forced = lesson05.evaluate_teacher_forced

# %% Knobs (learners: edit these, or use the flags)
SEEDS = 3              # seeds per row: the spread of the same recipe is what a difference must beat
BUDGET_FACTOR = 3      # a row's step budget: this many times its reference's median steps to the target
SLOW_BUDGET_FACTOR = 5  # ... for the tied embeddings, known to learn slowly: slower is then told from failing
VAL_SIZE = 500         # validation sequences (lesson 05: 1000): half the time spent validating
WIDE_HEAD = 64         # the wider head of the sqrt(d_k) question: one head of this width (d_model = d_head)
DEEP_LAYERS = 4        # the deeper stack of the pre-LN question: this many encoder and decoder blocks
HIGH_LR_FACTOR = 10    # the high learning rate: this many times lesson 05's
# --quick: tiny sizes for smoke tests (every row, 1 seed unless --seeds is given)
QUICK = dict(seq_len=6, d_ff=64, warmup=4, eval_every=4, val_size=64, test_size=64, steps=100)
QUICK_WIDE_HEAD, QUICK_DEEP_LAYERS = 32, 2
GQA_HEADS = 4          # query heads of the grouped-query rows (and their reference, four_heads)
MAX_SEEDS = 20         # 20 seeds of every row is hours already
JSON_NAME, PNG_NAME = "ablations.json", "ablations.png"
PARTIAL_NAME = common.files.partial_name(JSON_NAME)     # the runs finished so far, while the rest go on


# %% The rows: one change each, and the question it answers
@dataclass(frozen=True)
class Row:
    variant: Variant           # the change (challenges/variants.py): config fields, patches, an edit
    reference: str | None      # the row it is compared with; None: a starting point only
    hint: str = ""             # what might show a difference that this size does not
    task: str | None = None    # only for this task (None: every task)
    mechanism: Callable | None = None   # mechanism(row, runs, reference runs) -> why, with this run's numbers
    budget_factor: float | None = None  # None: BUDGET_FACTOR


NO_SCALE = ((2, "scaled_dot_product_attention", components.attention_without_scale),)   # lesson 02's name


def pytorch_embedding_init(model, config):
    """Token embeddings drawn from N(0, 1), nn.Embedding's own initialisation (lesson 05's
    --embed-scale starts them at N(0, 1/d_model), the size its sqrt(d_model) scale assumes)."""
    nn.init.normal_(model.embed.weight, std=1.0)
    return model


def without_positions(model, config):
    model.positions = components.NoPositions(config.dropout)
    return model


def learned_positions(model, config):
    model.positions = components.LearnedPositions(config.d_model, model.max_len, config.dropout)
    return model


def rotary_positions(model, config):
    """Nothing added to the tokens; every self-attention rotates its queries and keys (RoPE).
    Cross-attention gets no positions (as in T5's relative scheme): it compares content only."""
    model.positions = components.NoPositions(config.dropout)
    for layer in [*model.encoder.layers, *model.decoder.layers]:
        layer.self_attn = components.RotarySelfAttention(layer.self_attn)
    return model


def tied_embeddings(model, config):
    model.out.weight = model.embed.weight          # one (V, d_model) tensor reads and writes tokens
    return model


def replace_modules(model, kind, make):
    """Replace every submodule of type `kind` with make(old one)."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, kind):
                setattr(parent, name, make(child))
    return model


def rms_norms(model, config):
    return replace_modules(model, nn.LayerNorm, lambda norm: components.RMSNorm(norm.normalized_shape[0], norm.eps))


def swiglu_feed_forwards(model, config):
    width = components.swiglu_width(config.d_ff)
    return replace_modules(model, load_lesson(4).FeedForward,
                           lambda ff: components.SwiGLU(config.d_model, width, config.dropout))


def decoder_only(model, config):
    """A DecoderOnlyTransformer with as many blocks as encoder and decoder together, and the d_ff
    that brings its parameter count closest to the encoder-decoder's (the count is linear in d_ff)."""
    answer = lesson05.output_len(config.task, config.seq_len, config.n_digits) + 1
    kwargs = {**config.model_config(), "n_layers": 2 * config.n_layers,
              "max_len": max(config.max_len, config.seq_len + answer)}    # one sequence: input, then answer

    def count(d_ff):
        return count_parameters(components.DecoderOnlyTransformer(**{**kwargs, "d_ff": d_ff}))

    d_ff = max(1, round(1 + (count_parameters(model) - count(1)) / (count(2) - count(1))))
    return components.DecoderOnlyTransformer(**{**kwargs, "d_ff": d_ff})


def decoder_only_rope(model, config):
    """decoder_only with RoPE in every self-attention (LLaMA's placement) and nothing added to the tokens."""
    model = decoder_only(model, config)
    model.positions = components.NoPositions(config.dropout)
    for layer in model.stack.layers:
        layer.self_attn = components.RotarySelfAttention(layer.self_attn)
    return model


def grouped_queries(n_kv_heads):
    """An edit: every attention (self and cross) computes n_kv_heads key/value heads for its query heads."""
    def edit(model, config):
        def make(attention):
            return components.GroupedQueryAttention(config.d_model, config.n_heads, n_kv_heads, dropout=config.dropout)
        return replace_modules(model, load_lesson(2).MultiHeadAttention, make)
    edit.__name__ = f"grouped_queries_{n_kv_heads}"
    return edit


def sliding_window(window):
    """A patch: lesson 05's causal_mask becomes a sliding window of `window` keys (Mistral): a query sees
    itself and the window - 1 positions before it. decoder_only's stack takes its mask from there."""
    def causal_mask(T, device=None):
        return components.sliding_window_mask(T, window, device)
    return ((5, "causal_mask", causal_mask),)


def row(name, question, change, reference="default", hint="", task=None, mechanism=None, budget_factor=None,
        **variant):
    """A Row: name, question, change in words, reference; config=, patches=, edit= make the Variant."""
    return Row(Variant(name, question, change, **variant), reference, hint, task, mechanism, budget_factor)


def make_rows(base, wide_head=WIDE_HEAD, deep_layers=DEEP_LAYERS):
    """The rows for `base` (lesson 05's settings for the task), in the order they are run and shown."""
    return [row("default", "the reference for most rows", "nothing: lesson 05's model and training", None),
            *model_rows(base, wide_head, deep_layers), *training_rows(base), *modern_rows(base)]


def model_rows(base, wide_head, deep_layers):
    """The questions about the 2017 model: attention scale, embedding scale, positions, norm placement."""
    d_head, wide, deep = base.d_model // base.n_heads, dict(d_model=wide_head, n_heads=1), dict(n_layers=deep_layers)
    return [
        row("no_attention_scale", "Why divide the attention scores by sqrt(d_k)?",
            f"scores = Q K^T, without / sqrt(d_head) (d_head {d_head})", patches=NO_SCALE,
            hint="wider heads (see wide_no_attention_scale)"),
        row("wide_heads", "the reference for the wider head",
            f"one head of width {wide_head} (d_model {wide_head}) instead of {base.n_heads} of {d_head}", None,
            config=wide),
        row("wide_no_attention_scale", "Why divide by sqrt(d_k), at a wider head?",
            f"scores = Q K^T at d_head {wide_head}", "wide_heads", config=wide, patches=NO_SCALE,
            hint="still wider heads, or larger initial weights"),
        row("embed_scale", "Why multiply the embeddings by sqrt(d_model)?",
            f"token embeddings x sqrt({base.d_model}), PyTorch's N(0, 1) initialisation",
            config=dict(embed_scale=True), edit=pytorch_embedding_init, mechanism=positions_drowned,
            hint="a larger d_model (the scaled tokens grow further against the positions)"),
        row("embed_scale_small_init", "... with the initialisation the paper's scaling assumes?",
            f"token embeddings x sqrt({base.d_model}), initialised N(0, 1/{base.d_model})",
            config=dict(embed_scale=True),                     # lesson 05's --embed-scale: N(0, 1/d_model)
            hint="longer training (at initialisation the scaled tokens are N(0, 1) as in the default; only how "
                 "fast they move differs)"),
        row("no_positions", "Why positional encodings at all?", "no positional encoding added to the tokens",
            edit=without_positions, mechanism=order_blind,
            hint="a task whose answer depends on the order of the input (reverse, copy)"),
        row("learned_positions", "Learned or sinusoidal positions?",
            "a trained table of position vectors (BERT, GPT-2)", edit=learned_positions,
            hint="input lengths never trained on (see challenges.length_generalization)"),
        row("rope", "Rotary position embeddings (RoPE, as in LLaMA)?",
            "queries and keys rotated by position in every self-attention; nothing added to the tokens; "
            "cross-attention without positions", edit=rotary_positions, mechanism=relative_only,
            hint="a task that needs offsets between positions more than absolute positions (copy)"),
        row("post_ln", "Why pre-LN rather than the paper's post-LN?", f"post-LN, {base.n_layers}+{base.n_layers} "
            "layers", config=dict(norm_first=False), hint="depth (see deep_post_ln)"),
        row("deep", "the reference for the deeper stack", f"{deep_layers}+{deep_layers} layers, pre-LN", None,
            config=deep),
        row("deep_post_ln", "Why pre-LN, in a deeper stack?", f"post-LN, {deep_layers}+{deep_layers} layers",
            "deep", config=dict(**deep, norm_first=False),
            hint="a still deeper stack, a higher learning rate or no warmup"),
    ]


def training_rows(base):
    """The questions about the training recipe: warmup, clipping, learning rate, regularisers, tying."""
    high_lr, high = base.lr * HIGH_LR_FACTOR, f"lr_{HIGH_LR_FACTOR:g}x"    # lr_10x
    return [
        row("no_warmup", "Why warm the learning rate up?", f"no warmup (lesson 05: {base.warmup} steps)",
            config=dict(warmup=0), hint=f"a higher learning rate (see {high}_no_warmup)"),
        row("no_clipping", "Why clip the gradient norm?", f"no clipping (lesson 05: norm {base.grad_clip:g})",
            config=dict(grad_clip=0.0), hint="a higher learning rate, a deeper stack or longer training"),
        row(high, "Why not a much larger learning rate?", f"lr {high_lr:g} ({HIGH_LR_FACTOR:g}x), with warmup",
            config=dict(lr=high_lr), hint="a still higher learning rate"),
        row(f"{high}_no_warmup", "Does warmup matter at a high learning rate?", f"lr {high_lr:g}, no warmup",
            high, config=dict(lr=high_lr, warmup=0), hint="a still higher learning rate"),
        row("dropout", "Why (not) dropout?", "dropout 0.1 everywhere (lesson 05: 0)", config=dict(dropout=0.1),
            hint="a small fixed training set that can be memorised (here every batch is new)"),
        row("label_smoothing", "Why (not) label smoothing?", "label smoothing 0.1 (lesson 05: 0)",
            config=dict(label_smoothing=0.1), hint="noisy labels or a fixed training set"),
        row("tied_embeddings", "Why tie the input and output embeddings (the paper's recipe)?",
            f"the output layer's weight is the embedding table, drawn N(0, 1/{base.d_model}) and multiplied by "
            f"sqrt({base.d_model}) on the way in", "embed_scale_small_init", config=dict(embed_scale=True),
            edit=tied_embeddings, mechanism=copy_prior, budget_factor=SLOW_BUDGET_FACTOR,
            hint="a large vocabulary, where the shared table saves many parameters"),
        row("tied_embeddings_unscaled", "... tied as nn.Embedding draws the table, N(0, 1) and unscaled?",
            "the output layer's weight is the embedding table, N(0, 1), no scale", edit=tied_embeddings,
            mechanism=copy_prior, budget_factor=SLOW_BUDGET_FACTOR,
            hint="the paper's recipe (tied_embeddings), or logits scaled by 1/sqrt(d_model)"),
    ]


def modern_rows(base):
    """The building blocks of LLaMA-style models, and the order of a sum's digits."""
    heads, long, short = dict(n_heads=GQA_HEADS), base.seq_len + 1, max(1, base.seq_len // 2)
    n_blocks = 2 * base.n_layers                                            # decoder_only's causal blocks
    return [
        row("rmsnorm", "RMSNorm instead of LayerNorm (LLaMA)?", "every LayerNorm replaced by RMSNorm",
            edit=rms_norms, hint="larger models, where its cheaper computation shows in seconds"),
        row("swiglu", "SwiGLU instead of the ReLU feed-forward (LLaMA)?",
            f"gated feed-forward, hidden width {components.swiglu_width(base.d_ff)} (2/3 of {base.d_ff}: "
            "about the same parameters)", edit=swiglu_feed_forwards, hint="larger models and harder tasks"),
        row("decoder_only", "One decoder-only stack instead of encoder + decoder (GPT, LLaMA)?",
            f"{2 * base.n_layers} causal blocks reading input, BOS, answer; d_ff set for the same parameter count",
            edit=decoder_only, hint="longer inputs or more layers"),
        row("decoder_only_rope", "RoPE in one decoder-only stack, as LLaMA places it?",
            "decoder_only with queries and keys rotated by position in every self-attention, nothing added to the "
            "tokens", "decoder_only", edit=decoder_only_rope, mechanism=relative_only,
            hint="a task that needs offsets between positions more than absolute positions (copy)"),
        row("sliding_window", "A sliding window, as in Mistral?", f"decoder_only whose queries see the {long} most "
            f"recent positions only ({n_blocks} blocks: {n_blocks * (long - 1)} positions back)", "decoder_only",
            patches=sliding_window(long), edit=decoder_only, mechanism=window_reach(long, n_blocks),
            hint="longer sequences, where the window saves memory and time"),
        row("short_sliding_window", "... a window shorter than the input?", f"decoder_only whose queries see the "
            f"{short} most recent positions only ({n_blocks} blocks: {n_blocks * (short - 1)} positions back)",
            "decoder_only", patches=sliding_window(short), edit=decoder_only, mechanism=window_reach(short, n_blocks),
            hint="more blocks (each passes information window - 1 positions further back)"),
        row("four_heads", "the reference for grouped queries",
            f"{GQA_HEADS} heads of {base.d_model // GQA_HEADS} instead of {base.n_heads}", None, config=heads),
        row("grouped_queries", "Grouped-query attention (LLaMA 2 70B, Mistral)?",
            f"{GQA_HEADS // 2} key/value heads shared by the {GQA_HEADS} query heads, in every attention",
            "four_heads", config=heads, edit=grouped_queries(GQA_HEADS // 2), mechanism=smaller_cache(base),
            hint="longer sequences and a cache of keys and values, where its memory counts"),
        row("multi_query", "Multi-query attention: one key/value head?",
            f"1 key/value head shared by the {GQA_HEADS} query heads, in every attention", "four_heads",
            config=heads, edit=grouped_queries(1), mechanism=smaller_cache(base),
            hint="longer sequences and a cache of keys and values, where its memory counts"),
        row("lsd_first", "Which digit of a sum to write first?", "least significant digit first (lesson 05: most)",
            config=dict(sum_order="lsd"), task="sum", hint="more training steps"),
    ]


def rows_for(base, names=None, quick=False):
    """The rows of base.task, or the named ones and the references they are compared with."""
    sizes = dict(wide_head=QUICK_WIDE_HEAD, deep_layers=QUICK_DEEP_LAYERS) if quick else {}
    rows = [r for r in make_rows(base, **sizes) if r.task in (None, base.task)]
    if names is None:
        return rows
    by_name, wanted = {r.variant.name: r for r in rows}, set()
    for name in names:
        while name is not None and name not in wanted:              # the row, its reference, and so on
            wanted.add(name)
            name = by_name[name].reference
    return [r for r in rows if r.variant.name in wanted]


def parse_only(text, base, quick=False):
    """'no_warmup,rope' -> the names, checked against the rows of base.task; UserError otherwise."""
    available = [r.variant.name for r in rows_for(base, quick=quick)]
    others = {r.variant.name: r.task for r in make_rows(base)}
    names = []
    for item in text.split(","):
        name = item.strip().replace("-", "_")
        if not name:
            raise common.UserError(f"--only {text!r} names an empty row; give row names separated by commas, e.g. "
                                   "--only no_warmup,rope (python -m challenges.ablations --list shows them)")
        if name in available:
            names.append(name)
        elif name in others:
            raise common.UserError(f"--only {name}: that row is for --task {others[name]} only (this run: "
                                   f"--task {base.task})")
        else:
            raise common.UserError(f"--only: no row named {item.strip()!r}; rows: {', '.join(available)} "
                                   "(python -m challenges.ablations --list shows their questions)")
    return names


# %% Building blocks: budgets, one training, the baselines
def same_schedule(schedule_steps):
    """Lesson 05's learning_rate, always planned over `schedule_steps`: a run that stops at a smaller
    budget still gets, at every step, the learning rate every other run gets (config.steps is the budget)."""
    planned = lesson05.learning_rate

    def learning_rate(step, config):
        return planned(step, replace(config, steps=schedule_steps))

    return learning_rate


def median_steps(runs):
    """Median steps to the target over the seeds, a seed that missed counting as infinitely many;
    None when that median is infinite (half the seeds or more missed)."""
    steps = [math.inf if r["target_step"] is None else r["target_step"] for r in runs]
    middle = statistics.median(steps)
    return None if math.isinf(middle) else middle


def budget_for(row, budgets, runs_by_row, base):
    """Steps a row may train: its reference's median times BUDGET_FACTOR (or the row's own factor), rounded up
    to a validation, at most the schedule's length; the whole schedule for a starting point; the reference's
    own budget when the reference mostly missed the target."""
    if row.reference is None:
        return base.steps
    middle = median_steps(runs_by_row[row.reference])
    if middle is None:
        return budgets[row.reference]
    steps = math.ceil((row.budget_factor or BUDGET_FACTOR) * middle / base.eval_every) * base.eval_every
    return min(base.steps, steps)


def train_one(row, base, seed, budget, data, device):
    """Train `row` once; returns a plain dict (the json's record of this run).

    KeyboardInterrupt if Ctrl-C cut the training short (lesson 05 returns early then): a run that
    did not finish is never recorded as a result.
    """
    variant = replace(row.variant, config={**row.variant.config, "steps": budget},
                      patches=row.variant.patches + ((5, "learning_rate", same_schedule(base.steps)),))
    test = data[1]
    best = {"exact_match": 0.0}

    def keep_best(step, metrics):                 # after every validation
        best["exact_match"] = max(best["exact_match"], metrics["exact_match"])

    def evaluate(model, config):                  # while the row's change is still in force
        found = {"test_exact_match": evaluate_teacher_forced(model, test.to(device))["exact_match"],
                 "parameters": count_parameters(model)}
        if config.task == "sum":
            found["place_accuracy"] = place_accuracy(model, test.to(device), config)
        if config.task == "reverse":
            found.update(reversal_measures(model, test.to(device)))
        return found

    record = {"seed": seed, "budget": budget,
              **at_start(row.variant, variants.configure(row.variant, base, seed), data[0], device)}
    start = time.perf_counter()
    try:
        _, result, found = variants.run(variant, base, seed, data, device, evaluate=evaluate, callback=keep_best)
    except TrainingDiverged as exc:
        return {**record, "target_step": None, "target_seconds": None, "steps_run": None, "train_seconds": None,
                "best_val_exact_match": best["exact_match"], "test_exact_match": None, "parameters": None,
                "stopped_because": f"diverged: {exc}", "wall_seconds": time.perf_counter() - start}
    if result.interrupted:
        raise KeyboardInterrupt
    return {**record, "target_step": result.target_step, "target_seconds": result.target_seconds,
            "steps_run": result.steps_run, "train_seconds": result.train_seconds,
            "best_val_exact_match": best["exact_match"], **found, "stopped_because": result.stopped_because,
            "wall_seconds": time.perf_counter() - start}


@torch.no_grad()
def place_accuracy(model, test, config):
    """Sum task: how often the units, tens, hundreds ... digit of the test answers is right
    (teacher-forced), wherever the order puts it (msd: units last; lsd: units first).
    Returns {"units": [right, of], "tens": [right, of], ...}."""
    logits = model(test.src, test.tgt_in)                                   # (B, T_tgt, V)
    right = lesson05.restrict_logits(logits).argmax(-1) == test.tgt_out     # (B, T_tgt)
    digits = test.tgt_out >= lesson05.FIRST_DIGIT                           # answer digits, not EOS or PAD
    n = digits.sum(1, keepdim=True)                                         # (B, 1) digits in each answer
    j = torch.arange(test.tgt_out.size(1), device=right.device)            # answer position
    place = j.expand_as(right) if config.sum_order == "lsd" else n - 1 - j  # 0 = units, 1 = tens, ...
    names = ("units", "tens", "hundreds", "thousands")
    found = {}
    for p in range(int(n.max())):
        here = digits & (place == p)                                        # (B, T_tgt) the digits of place p
        found[names[p] if p < len(names) else f"10^{p}"] = [int(right[here].sum()), int(here.sum())]
    return found


def place_text(runs, base):
    """'. Digits right ...: units 11.0% of 3000, ...' for the sum task (all seeds together), else ''."""
    places = [r["place_accuracy"] for r in runs if r.get("place_accuracy")]
    if not places:
        return ""
    parts = []
    for name in places[0]:
        right, of = (sum(p[name][i] for p in places if name in p) for i in (0, 1))
        parts.append(f"{name} {right / of:.1%} of {of:,}" if of else f"{name} -")
    return (f". Test digits right (teacher-forced, seeds together; guessing: {1 / base.n_digits:.0%}): "
            + ", ".join(parts))


def baselines(data, config):
    """What needs no model: the chance of a digit, and the test exact-match of always writing the
    validation set's most common answer."""
    val, test = data
    answers, counts = torch.unique(val.tgt_out, dim=0, return_counts=True)
    common_answer = answers[counts.argmax()]
    hits = int((test.tgt_out == common_answer).all(dim=1).sum())
    return {"digit_chance": 1 / config.n_digits, "most_common_answer_hits": hits, "test_size": len(test)}


def data_for(config, cache):
    """The held-out sets of this config's task (the same inputs for every row; sum_order changes the
    answers), made once."""
    key = (config.task, config.sum_order)
    if key not in cache:
        cache[key] = heldout_sets(config)
    return cache[key]


# %% Mechanisms: why a row does what it does, with numbers from its own runs
@torch.no_grad()
def at_start(variant, config, val, device):
    """The run's model before training (same seed, same change): its validation loss, how often its top
    guess repeats the decoder's input digit, and how long its token vectors are against its positions."""
    with variants.applied(variant):
        model = variants.build(variant, config).to(device).eval()
        found = {"start_loss": evaluate_teacher_forced(model, val.to(device))["loss"],
                 "uniform_loss": math.log(model.vocab_size)}
        src, tgt_in, tgt_out = (t.to(device) for t in (val.src, val.tgt_in, val.tgt_out))
        guess = lesson05.restrict_logits(model(src, tgt_in)).argmax(-1)          # (B, T_tgt)
    reads_digit = (tgt_in >= lesson05.FIRST_DIGIT) & (tgt_out != lesson05.PAD)   # answer positions reading a digit
    found["start_copy_share"] = float((guess == tgt_in)[reads_digit].float().mean())
    table = getattr(model.positions, "pe", None)                                  # lesson 03's, when it is used
    if table is not None:
        tokens = (model.embed.weight[lesson05.FIRST_DIGIT:] * model.scale).norm(dim=-1).mean()
        found["token_to_position_length"] = float(tokens / table[:src.size(1)].norm(dim=-1).mean())
    return found


@torch.no_grad()
def reversal_measures(model, test):
    """Reverse only. mirror_attention: the attention answer position j puts on input position L-1-j (the digit
    it must write), averaged over positions and inputs, in the layer and head that put the most there
    (uniform over the input: 1/L, mirror_chance); position_accuracy: teacher-forced accuracy per answer position."""
    model.eval()
    src, tgt_in, tgt_out = test.src, test.tgt_in, test.tgt_out
    T_src, lengths = src.size(1), (src != lesson05.PAD).sum(1)                   # (B,) L of each input
    j = torch.arange(T_src, device=src.device)                                   # answer positions
    mirror, valid = (lengths[:, None] - 1 - j).clamp(min=0), j < lengths[:, None]  # (B, T_src) each
    if isinstance(model, components.DecoderOnlyTransformer):                    # one sequence: input, BOS, answer
        maps = [w[:, :, T_src:2 * T_src, :T_src] for w in model.attention_weights(src, tgt_in)]
    else:                                                                        # cross-attention reads the input
        maps = [w[:, :, :T_src] for w in model.attention_weights(src, tgt_in)["cross"]]
    best = max(float(w.gather(-1, mirror[:, None, :, None].expand(-1, w.size(1), -1, 1)).squeeze(-1)
                     .transpose(0, 1)[:, valid].mean(-1).max()) for w in maps)   # (n_heads,) per map, then the best
    right = lesson05.restrict_logits(model(src, tgt_in)).argmax(-1) == tgt_out     # (B, T_tgt)
    real = tgt_out != lesson05.PAD
    accuracy = [float(right[:, k][real[:, k]].float().mean()) for k in range(T_src) if real[:, k].any()]
    return {"mirror_attention": best, "mirror_chance": float((1 / lengths.float()).mean()),
            "position_accuracy": accuracy}


def mean_of(runs, key):
    values = [r[key] for r in runs or [] if r.get(key) is not None]
    return statistics.mean(values) if values else None


def start_text(row, runs, reference_runs):
    """'untrained, it starts at validation loss 24.4 (...) and its top guess repeats ... at 100% (...)'."""
    loss, copies = mean_of(runs, "start_loss"), mean_of(runs, "start_copy_share")
    ref_loss, ref_copies = mean_of(reference_runs, "start_loss"), mean_of(reference_runs, "start_copy_share")
    if loss is None or ref_loss is None:
        return ""
    uniform = runs[0]["uniform_loss"]
    return (f"untrained (mean over its seeds) it starts at validation loss {loss:.3g} (guessing uniformly: "
            f"ln {round(math.exp(uniform))} = {uniform:.3g}; {row.reference}: {ref_loss:.3g}), and its top guess "
            f"repeats the digit the decoder reads at {copies:.0%} of answer positions "
            f"({row.reference}: {ref_copies:.0%})")


def mirror_text(row, runs, reference_runs):
    """'trained, the answer positions put 9.1% of their attention on the mirrored input (...)', or ''."""
    share, chance = mean_of(runs, "mirror_attention"), mean_of(runs, "mirror_chance")
    reference = mean_of(reference_runs, "mirror_attention")
    if share is None or reference is None:
        return ""
    return (f"trained, the answer positions put {share:.1%} of their attention on the mirrored input position "
            f"(best layer and head, mean over seeds; uniform: {chance:.1%}; {row.reference}: {reference:.1%})")


def sentence(*parts):
    return "; ".join(p for p in parts if p)


def measured(row, runs, reference_runs):
    """For a row that fails or does worse without a mechanism of its own: where it started, where it looks."""
    found = sentence(start_text(row, runs, reference_runs), mirror_text(row, runs, reference_runs))
    return f"Measured: {found}" if found else ""


def copy_prior(row, runs, reference_runs):
    """The tied rows: the output layer is the input table, so the untrained model scores highest the token the
    decoder reads (its vector rides the residual stream, and its dot product with itself is its squared length)."""
    return sentence("Mechanism: the output layer is the input table, so at the start the token the decoder reads "
                    "scores highest (its vector rides the residual stream; with itself its dot product is its "
                    "squared length)", start_text(row, runs, reference_runs), "a prior training must first undo")


def positions_drowned(row, runs, reference_runs):
    ratio, reference = mean_of(runs, "token_to_position_length"), mean_of(reference_runs, "token_to_position_length")
    drowned = "" if ratio is None or reference is None else (
        f"Mechanism: scaled by sqrt(d_model), N(0, 1) token vectors are {ratio:.3g} times as long as lesson 03's "
        f"position vectors ({row.reference}: {reference:.3g}): the positions are a ripple on the tokens")
    return sentence(drowned, mirror_text(row, runs, reference_runs))


def order_blind(row, runs, reference_runs):
    return sentence("Mechanism: without positions the encoder reads a set (permute the input and its outputs are "
                    "permuted alike), so no answer position can find input L-1-j",
                    mirror_text(row, runs, reference_runs))


def relative_only(row, runs, reference_runs):
    where = ("in one sequence the input digit that answer digit j writes lies 2j+1 positions back, an offset that "
             "changes with j, so each query would need its absolute j" if row.variant.edit is decoder_only_rope
             else "and cross-attention here compares content only")
    return sentence("Mechanism: reversal needs an absolute mirror mapping (answer digit j is input digit L-1-j); "
                    f"RoPE gives relative offsets only (rotated scores depend on p_k - p_q), {where}",
                    mirror_text(row, runs, reference_runs))


def window_reach(window, n_blocks):
    """The mechanism of a sliding-window row on reverse: which answer digits reach their input, and how."""
    reach = n_blocks * (window - 1)

    def mechanism(row, runs, reference_runs):
        accuracy = [statistics.mean(a) for a in zip(*[r["position_accuracy"] for r in runs
                                                       if r.get("position_accuracy")])]
        groups = [("in one hop", lambda back: back <= window - 1),
                  ("relayed through a position between", lambda back: window - 1 < back <= reach),
                  ("out of reach", lambda back: back > reach)]
        parts = []
        for name, holds in groups:
            digits = [j for j in range(len(accuracy)) if holds(2 * j + 1)]
            if digits:
                parts.append(f"digits {digits[0]}-{digits[-1]} {name}: right "
                             f"{statistics.mean(accuracy[j] for j in digits):.1%}")
        return "" if not parts else (
            f"Mechanism: answer digit j writes input digit L-1-j, 2j+1 positions back; a window of {window} reads "
            f"{window - 1} positions back, {n_blocks} blocks pass information {reach} back. Teacher-forced, mean "
            f"over seeds (guessing: 10%): " + "; ".join(parts))
    return mechanism


def smaller_cache(base):
    """The mechanism of a grouped-query row: fewer key/value weights, a smaller cache of keys and values."""
    def mechanism(row, runs, reference_runs):
        n_kv = int(row.variant.edit.__name__.rsplit("_", 1)[1])
        d_head = base.d_model // GQA_HEADS
        cache = components.cache_bytes_per_token(components.GroupedQueryAttention(base.d_model, GQA_HEADS, n_kv))
        params, reference = runs[0].get("parameters"), (reference_runs or [{}])[0].get("parameters")
        return (f"W_k and W_v keep {n_kv} x {d_head} rows: {params:,} parameters against {reference:,} for "
                f"{row.reference}, and a cache of keys and values holds {cache} bytes per token and attention "
                f"layer against {cache * GQA_HEADS // n_kv} (float32)") if params and reference else ""
    return mechanism


# %% Summaries and verdicts: a difference counts only outside the seed spread
def rank(run):
    """Smaller is better: reaching the target (then fewer steps), else a higher best validation score."""
    if run["target_step"] is not None:
        return (0, run["target_step"])
    return (1, -run["best_val_exact_match"])


def compare(runs, reference_runs):
    """'better' if every seed of `runs` beats every seed of the reference, 'worse' if every one is
    beaten, else 'same' (the seed ranges overlap); 'one seed' when one seed cannot show a spread."""
    if min(len(runs), len(reference_runs)) < 2:
        return "one seed"
    if max(map(rank, runs)) < min(map(rank, reference_runs)):
        return "better"
    if min(map(rank, runs)) > max(map(rank, reference_runs)):
        return "worse"
    return "same"


def span(values, fmt="{:.0f}"):
    """'110-150', or '120' when every value is the same."""
    low, high = min(values), max(values)
    return fmt.format(low) if low == high else f"{fmt.format(low)}-{fmt.format(high)}"


def runs_text(runs):
    """How a row's seeds did: '110-150 steps', 'not reached in 390 steps (best 0.0-8.8%)',
    '2 of 3 seeds in 120-470 steps, 1 not in 390 (best 91.0%)'."""
    reached = [r["target_step"] for r in runs if r["target_step"] is not None]
    missed = [r for r in runs if r["target_step"] is None]
    best = span([r["best_val_exact_match"] for r in missed], "{:.1%}") if missed else ""
    budget = span([r["budget"] for r in runs])
    if not missed:
        return f"{span(reached)} steps"
    if not reached:
        return f"not reached in {budget} steps (best {best})"
    return f"{len(reached)} of {len(runs)} seeds in {span(reached)} steps, {len(missed)} not in {budget} (best {best})"


def verdict(row, runs, reference_runs):
    """(word, sentence) for a row against its reference, derived from the numbers only."""
    if row.reference is None:
        return "reference", f"starting point: {runs_text(runs)}"
    numbers = f"{runs_text(runs)} against {runs_text(reference_runs)} for {row.reference}"
    outcome = compare(runs, reference_runs)
    if outcome == "one seed":
        return outcome, f"{numbers}; one seed shows no spread, so no verdict (use --seeds 3 or more)"
    reached = [sum(r["target_step"] is not None for r in x) for x in (runs, reference_runs)]
    if outcome == "same" and reached[0] != reached[1]:    # the ranges overlap, but how often did each reach it?
        p = fisher_exact(reached[0], len(runs), reached[1], len(reference_runs))
        if p < 0.05:
            word = "better" if reached[0] > reached[1] else "worse"
            return word, (f"{word}: {numbers}; {reached[0]} of {len(runs)} seeds reached it against {reached[1]} of "
                          f"{len(reference_runs)}, a difference seed luck gives {p:.1%} of the time (Fisher's test)")
    if outcome == "same":
        more = f"more seeds (--only {row.variant.name} --seeds {len(runs) + 2})"
        hint = row.hint if reached[0] == reached[1] else more
        return "no measurable difference", (f"no measurable difference at this size: {numbers}, inside the seed "
                                            f"spread; what might change that: {hint}")
    all_reached = all(r["target_step"] is not None for r in runs + reference_runs)
    if outcome == "better":
        word = "faster" if all_reached else "better"
    else:
        reached = [any(r["target_step"] is not None for r in x) for x in (runs, reference_runs)]
        word = "fails" if reached == [False, True] else "slower" if all_reached else "worse"
    return word, f"{word}{' within its budget' if word == 'fails' else ''}: {numbers}, outside the seed spread"


def summarize(row, runs, reference_runs):
    """The summary of a row: steps, seconds, test exact-match over its seeds, and the verdict."""
    reached = [r for r in runs if r["target_step"] is not None]
    tests = [r["test_exact_match"] for r in runs if r["test_exact_match"] is not None]
    word, said = ("", "") if row.reference and not reference_runs else verdict(row, runs, reference_runs)
    why = row.mechanism or (measured if word in ("fails", "worse") else None)
    return {"seeds_run": len(runs), "reached": len(reached), "budget": runs[0]["budget"],
            "median_steps": median_steps(runs),
            "steps_to_target": [r["target_step"] for r in runs],
            "seconds_to_target": [r["target_seconds"] for r in runs],
            "best_val_exact_match": [r["best_val_exact_match"] for r in runs],
            "test_exact_match_median": statistics.median(tests) if tests else None,
            "test_exact_match": [r["test_exact_match"] for r in runs],
            "parameters": next((r["parameters"] for r in runs if r["parameters"]), None),
            "verdict": word, "sentence": said,
            "mechanism": why(row, runs, reference_runs) if why and reference_runs else ""}


def fisher_exact(a, n, b, m):
    """Two-sided p-value that a of n seeds against b of m reached the target by luck alone, the
    chance of reaching being the same for both (Fisher's exact test: every split of the a + b
    successes among the n + m seeds as likely as it is under that assumption)."""
    k = a + b

    def p(x):                                          # x of the k successes among the first n seeds
        return math.comb(n, x) * math.comb(m, k - x) / math.comb(n + m, k)

    observed = p(a)
    return min(1.0, sum(p(x) for x in range(max(0, k - m), min(n, k) + 1) if p(x) <= observed * (1 + 1e-9)))


def percent(share):
    """0.1 -> '10%', 0.00794 -> '0.79%': two significant digits."""
    return f"{100 * share:.2g}%"


def separated_by_chance(n, m):
    """How often n seeds of one recipe and m of an identical one land fully apart (either side),
    with every ordering of the n + m results equally likely: 2 / C(n + m, n)."""
    return 2 / math.comb(n + m, n)


def row_record(row, runs, summary):
    v = row.variant
    return {"name": v.name, "question": v.question, "change": v.change, "reference": row.reference,
            "config_changes": dict(v.config), "patched": [f"lesson {n:02d}: {path}" for n, path, _ in v.patches],
            "edit": v.edit.__name__ if v.edit else None, "seeds": [r["seed"] for r in runs], "runs": runs,
            "summary": summary}


def measurements(base, rows, runs_by_row, seeds, extra):
    """Everything measured so far (the json): one record per row that has finished runs."""
    records = []
    for row in rows:
        runs = runs_by_row.get(row.variant.name)
        if runs:
            reference = runs_by_row.get(row.reference) if row.reference else None
            records.append(row_record(row, runs, summarize(row, runs, reference)))
    return {"task": base.task, "base_config": asdict(base), "schedule_steps": base.steps,
            "budget_factor": BUDGET_FACTOR, "target": base.target, "seeds": seeds, **extra, "rows": records}


# %% 1. The plan
def section_1_plan(base, rows, seeds, data, quick):
    common.section(1, f"The plan: one change at a time, task '{base.task}' (length {base.seq_len})")
    print("  reused through common.load_lesson(5): TrainConfig, train, heldout_sets, evaluate_teacher_forced;")
    print("  the changed parts: challenges/components.py (each tested against a reference)")
    common.explain(f"""
        Starting point: {"the tiny --quick model" if quick else "lesson 05's default model and training"}:
        d_model {base.d_model}, {base.n_heads} heads, {base.n_layers}+{base.n_layers} layers, d_ff
        {base.d_ff}. Every row changes one thing against its reference. Every run follows the same
        learning-rate schedule ({base.warmup} warmup steps, then {base.schedule} decay planned over
        {base.steps} steps) and, for the same seed, sees the same batches. It stops when validation
        exact-match ({len(data[0])} held-out sequences, checked every {base.eval_every} steps) reaches
        {base.target:.0%}, or at its row's budget: {BUDGET_FACTOR}x the median steps its reference
        needed (at most {base.steps}). Test exact-match is measured on {len(data[1])} other held-out
        sequences.""", indent=2)
    found = baselines(data, base)
    hits = common.stats.share_text(found["most_common_answer_hits"], found["test_size"])
    common.explain(f"""Baselines without a model: guessing a digit is right 1 time in {base.n_digits};
        always writing the validation set's most common answer gets {hits} test answers exactly
        right.""", indent=2)
    print(f"  {len(rows)} rows x {len(seeds)} seed{'s' if len(seeds) > 1 else ''} ({', '.join(map(str, seeds))}) = "
          f"{len(rows) * len(seeds)} trainings")
    if len(seeds) > 1:
        common.explain(f"""A difference counts only when the seed ranges do not overlap (two identical
            recipes with {len(seeds)} seeds each land fully apart {percent(separated_by_chance(len(seeds), len(seeds)))}
            of the time by luck alone), or when the numbers of seeds that reached the target differ
            more than luck explains (Fisher's exact test, under 5%).""", indent=2)
    return found


# %% 2. Training
def section_2_train(rows, base, seeds, device, data_cache, save):
    """Train every row once per seed, references first; returns {row name: [run, ...]}.
    save(runs_by_row, interrupted_run, interrupted) is called after every finished run: the partial json
    is always current. Ctrl-C or SIGTERM: it is marked interrupted and names the cut-short run (None:
    between two runs), which is left out of the results; then KeyboardInterrupt."""
    common.section(2, f"Training every row (Ctrl-C stops; the finished runs stay in {PARTIAL_NAME})")
    runs_by_row, budgets, current = {}, {}, None
    bar = common.progress(total=len(rows) * len(seeds), desc="ablations", unit="run")
    try:
        for row in rows:
            budgets[row.variant.name] = budget = budget_for(row, budgets, runs_by_row, base)
            data = data_for(variants.configure(row.variant, base), data_cache)
            runs = runs_by_row.setdefault(row.variant.name, [])
            for seed in seeds:
                bar.set_postfix_str(f"{row.variant.name}, seed {seed}")
                current = {"row": row.variant.name, "seed": seed, "budget": budget}
                runs.append(train_one(row, base, seed, budget, data, device))
                current = None
                save(runs_by_row, interrupted_run=None)
                bar.update(1)
            bar.write(f"  {row.variant.name:<24} {runs_text(runs)}"
                      + (f" (budget {budget})" if row.reference else ""))
    except KeyboardInterrupt:
        bar.close()
        if any(runs_by_row.values()):            # nothing finished: the files stay as they were
            save(runs_by_row, interrupted_run=current, interrupted=True)
        raise
    bar.close()
    return runs_by_row


# %% 3. The table, and one sentence per row
def cell(values, fmt):
    known = [v for v in values if v is not None]
    if not known:
        return "-"
    middle = statistics.median(known)
    return fmt.format(middle) + (f" ({span(known, fmt)})" if min(known) < max(known) else "")


def section_3_table(rows, runs_by_row, base):
    common.section(3, f"Results: steps and seconds to {base.target:.0%} validation exact-match, test exact-match")
    headers = ["row", "vs", "budget", "reached", f"steps to {base.target:.0%}", "seconds", "test exact", "params"]
    lines, notes = [], []
    for row in rows:
        runs = runs_by_row[row.variant.name]
        s = summarize(row, runs, runs_by_row.get(row.reference))
        lines.append([row.variant.name, row.reference or "-", str(s["budget"]), f"{s['reached']}/{s['seeds_run']}",
                      cell(s["steps_to_target"], "{:.0f}"), cell(s["seconds_to_target"], "{:.1f}"),
                      cell(s["test_exact_match"], "{:.1%}"), f"{s['parameters']:,}" if s["parameters"] else "-"])
        notes.append(s["sentence"] + place_text(runs, base) + (f". {s['mechanism']}" if s["mechanism"] else ""))
    widths = [max(len(str(x)) for x in column) for column in zip(headers, *lines)]
    print("  " + "  ".join(h.ljust(w) if i < 2 else h.rjust(w) for i, (h, w) in enumerate(zip(headers, widths))))
    print("  " + "  ".join("-" * w for w in widths))
    for line, note in zip(lines, notes):
        print("  " + "  ".join(x.ljust(w) if i < 2 else x.rjust(w) for i, (x, w) in enumerate(zip(line, widths))))
        print(textwrap.fill(note + ".", common.console.WIDTH, initial_indent="      ", subsequent_indent="      "))
    print()
    common.explain(f"""steps and seconds: median over the seeds that reached {base.target:.0%} (their range);
        seconds count the training steps only. test exact: median (range) over the seeds of the best
        model's test exact-match.""", indent=2)


# %% 4. The figure: steps to the target, every seed
COLORS = {"faster": "tab:green", "better": "tab:green", "slower": "tab:red", "worse": "tab:red", "fails": "tab:red",
          "no measurable difference": "tab:blue", "reference": "black", "one seed": "tab:gray"}


def section_4_plot(rows, runs_by_row, base, seeds, out_dir, show):
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    n = len(rows)
    fig, ax = common.new_figure(figsize=(10, 1.9 + 0.42 * n), show=show, layout="constrained")
    verdicts = []
    offsets = [0.0] if len(seeds) == 1 else [0.28 * (k / (len(seeds) - 1) - 0.5) for k in range(len(seeds))]
    for y, row in enumerate(rows):
        runs = runs_by_row[row.variant.name]
        reference = runs_by_row.get(row.reference)
        s = summarize(row, runs, reference)
        color = COLORS.get(s["verdict"], "tab:gray")
        verdicts.append(s["verdict"])
        if reference and all(r["target_step"] is not None for r in reference):   # the reference's seed range
            steps = [r["target_step"] for r in reference]
            ax.fill_betweenx([y - 0.3, y + 0.3], min(steps), max(steps), color="0.85", lw=0)
        ax.plot([s["budget"]] * 2, [y - 0.35, y + 0.35], color="0.4", lw=1.2)  # the budget
        for run, dy in zip(runs, offsets):
            if run["target_step"] is not None:
                ax.plot(run["target_step"], y + dy, "o", color=color, ms=6, mec="white", mew=0.6)
            else:
                ax.plot(run["budget"], y + dy, "x", color=color, ms=8, mew=2)
        test = s["test_exact_match_median"]
        ax.annotate(f"{s['reached']}/{s['seeds_run']} reached, test {test:.1%}" if test is not None else "diverged",
                    (1.01, y), xycoords=("axes fraction", "data"), va="center", fontsize=8)
    ax.set_yticks(range(n), [f"{r.variant.name}" + (f" (vs {r.reference})" if r.reference not in (None, "default")
                                                    else "") for r in rows], fontsize=8.5)
    ax.set_ylim(n - 0.5, -0.5)                                     # the first row at the top
    ax.set_xlim(0, None)
    ax.grid(axis="x", color="0.9")
    ax.set_xlabel(f"optimizer steps to reach {base.target:.0%} validation exact-match")
    ax.set_title(f"Task '{base.task}': steps each change needs to reach {base.target:.0%}, one mark per seed "
                 f"({len(seeds)} seed{'s' if len(seeds) > 1 else ''})\nx = not reached within the row's budget "
                 "(vertical bar); right: seeds that reached it, median test exact-match", fontsize=10)
    words = sorted(set(verdicts) & set(COLORS), key=list(COLORS).index)
    handles = [Line2D([], [], marker="o", ls="", color=COLORS[w], label=w) for w in words]
    handles += [Line2D([], [], marker="x", ls="", color="0.3", mew=2, label="not reached"),
                Line2D([], [], color="0.4", label="budget"), Patch(color="0.85", label="the reference's seeds")]
    fig.legend(handles=handles, fontsize=8, loc="outside lower center", ncol=4)
    common.save_figure(fig, out_dir, PNG_NAME, show=show)


# %% 5. What the numbers say
def observations(rows, runs_by_row, base, seeds, seconds):
    """Statements built from this run's numbers."""
    summaries = {r.variant.name: summarize(r, runs_by_row[r.variant.name], runs_by_row.get(r.reference))
                 for r in rows}
    by_word = {}
    for name, s in summaries.items():
        by_word.setdefault(s["verdict"], []).append(name)
    compared = [r for r in rows if r.reference is not None]
    items = []
    found = [w for w in ("faster", "better", "slower", "worse", "fails") if w in by_word]
    if found:
        items.append(f"{sum(len(by_word[w]) for w in found)} of {len(compared)} changes differed from their reference "
                     "by more than seed luck: " + "; ".join(f"{w}: {', '.join(by_word[w])}" for w in found) + ".")
    if "no measurable difference" in by_word:
        names = by_word["no measurable difference"]
        items.append(f"{len(names)} showed no measurable difference at this size: {', '.join(names)}.")
    if len(seeds) > 1 and compared:
        chance = separated_by_chance(len(seeds), len(seeds))
        n, more = len(compared), len(seeds) + 2
        items.append(f"With {len(seeds)} seeds per row, two identical recipes land fully apart {percent(chance)} of "
                     f"the time: among {n} comparison{'s' if n > 1 else ''} about {chance * n:.2g} such 'findings' are "
                     "expected by luck (the test on how many seeds reached the target adds at most 5% each). Rerun a "
                     f"finding with --only NAME --seeds {more} (then {percent(separated_by_chance(more, more))}).")
    spreads = [(max(s) - min(s), name) for name, x in summaries.items()
               if len(s := [v for v in x["steps_to_target"] if v is not None]) == len(x["steps_to_target"]) > 1]
    if spreads:
        spread, name = max(spreads)
        items.append(f"The seeds of one recipe differed by up to {spread} steps to the target ({name}): the "
                     "spread a difference has to beat.")
    user, system = seconds["cpu_user"], seconds["cpu_system"]
    items.append(f"{sum(len(v) for v in runs_by_row.values())} trainings took {seconds['wall']:.0f} s of wall time "
                 f"and {user:.0f} s of CPU time (user; {system:.0f} s system). Load average (1, 5, 15 minutes) on "
                 f"{os.cpu_count()} cores: {seconds['load_before']} before, {seconds['load_after']} after; other "
                 "programs running at the same time slow the seconds down, not the steps.")
    return items


# %% Flags
def build_parser():
    parser = common.lesson_parser(__doc__, quick_help="tiny sizes (length 6, d_ff 64, at most 100 steps): every "
                                                      "row, 1 seed, for smoke tests")
    group = parser.add_argument_group("the ablations")
    group.add_argument("--task", choices=lesson05.TASKS, default="reverse", help="what to learn (lesson 05's tasks)")
    group.add_argument("--only", default=None,
                       help="rows to run, comma-separated (their references are added); default: every row")
    group.add_argument("--seeds", type=common.flags.whole_number, default=None,
                       help=f"seeds per row: --seed, --seed+1, ... (default: {SEEDS}; 1 with --quick)")
    group.add_argument("--list", action="store_true", help="print the rows and their questions, then stop")
    return parser


def base_config(task, quick):
    """Lesson 05's settings for `task`, run to the target or the budget (no early stopping)."""
    values = {**asdict(TrainConfig()), **lesson05.TASK_DEFAULTS.get(task, {}), "task": task,
              "patience": 0, "val_size": VAL_SIZE}
    if quick:
        values.update(QUICK)
    base = TrainConfig(**values)
    validate_config(base)
    return base


def print_rows(rows):
    for row in rows:
        v = row.variant
        print(f"{v.name:<24} {v.question}")
        print(f"{'':<24}   change: {v.change}" + (f"; compared with {row.reference}" if row.reference else ""))


def load_average():
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:                                  # not available on Windows
        return "unknown"


@common.entry_point
def main(argv=None):
    args = common.parse_args(build_parser(), argv)
    base = base_config(args.task, args.quick)
    names = parse_only(args.only, base, args.quick) if args.only is not None else None
    rows = rows_for(base, names, args.quick)
    if args.list:
        print_rows(rows)
        return
    n_seeds = args.seeds if args.seeds is not None else 1 if args.quick else SEEDS
    common.check_positive("--seeds", n_seeds)
    if n_seeds > MAX_SEEDS:
        raise common.UserError(f"--seeds {n_seeds}: at most {MAX_SEEDS} (each seed trains every row once more)")
    seeds = [args.seed + i for i in range(n_seeds)]
    device = common.setup(args, "Challenge: the 'why' questions, measured one change at a time")
    data_cache, result = {}, common.files.Result(args.out_dir, JSON_NAME)
    load_before, wall, cpu = load_average(), time.perf_counter(), os.times()
    section_1_plan(base, rows, seeds, data_for(base, data_cache), args.quick)

    def save(runs_by_row, interrupted_run, interrupted=False):
        result.save(measurements(base, rows, runs_by_row, seeds, {
            "interrupted": interrupted, "interrupted_run": interrupted_run, "complete": False}))

    runs_by_row = section_2_train(rows, base, seeds, device, data_cache, save)
    now = os.times()
    seconds = {"wall": time.perf_counter() - wall, "cpu_user": now.user - cpu.user,
               "cpu_system": now.system - cpu.system, "load_before": load_before, "load_after": load_average()}
    path = result.complete(measurements(base, rows, runs_by_row, seeds, {
        "interrupted": False, "interrupted_run": None, "complete": True, "time": seconds}))
    print(f"  saved the measurements: {path}")
    section_3_table(rows, runs_by_row, base)
    section_4_plot(rows, runs_by_row, base, seeds, args.out_dir, args.show)
    common.key_insights(observations(rows, runs_by_row, base, seeds, seconds))


if __name__ == "__main__":
    main()
