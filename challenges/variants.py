"""One way to train lesson 05's model with one change: the ablations' variants and the mystery bugs.

A Variant changes lesson 05's model or training in up to three ways, always through the code a
learner reads (no copy of the model with a change pasted in):
  config   TrainConfig fields to change (warmup=0, norm_first=False, d_model=128, ...);
  patches  names in a lesson replaced while the variant is built, trained and evaluated, e.g.
           lesson 02's scaled_dot_product_attention or lesson 05's causal_mask; everything else
           is the lessons' own code, and the originals are back afterwards;
  edit     edit(model, config) changes the freshly built model (tie two weights, swap a module)
           and returns it (or a new model with the same interface).

    variant = Variant("no_warmup", config={"warmup": 0})
    config, result, found = run(variant, base_config, seed=0, data=(val, test), evaluate=my_eval)

`run` trains with lesson 05's own train() and calls evaluate(model, config) while the variant is
still applied, so a patched function is in force for the evaluation too.
"""
import contextlib
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

if __package__ in (None, ""):     # run as a file: common/ is one folder up
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from common import load_lesson  # noqa: E402


@dataclass(frozen=True)
class Variant:
    name: str                               # short, for flags and tables: "no_warmup"
    question: str = ""                      # the question it answers: "Why warmup?"
    change: str = ""                        # what is changed, in words
    config: dict = field(default_factory=dict)   # TrainConfig fields to change
    patches: tuple = ()                     # ((lesson, "name" or "Class.name", replacement), ...)
    edit: Callable | None = None            # edit(model, config) -> model, after it is built


def _target(lesson: int, path: str):
    """(object, attribute name) for a patch: lesson 2, "MultiHeadAttention.merge_heads" ->
    (the class MultiHeadAttention of lesson 02, "merge_heads")."""
    owner = load_lesson(lesson)
    *parents, name = path.split(".")
    for parent in parents:
        owner = getattr(owner, parent)
    if not hasattr(owner, name):
        raise AttributeError(f"lesson {lesson:02d} has no {path!r} to patch")
    return owner, name


@contextlib.contextmanager
def applied(variant: Variant):
    """Inside the `with`, the variant's patches replace the lessons' names; afterwards (also after
    an error or Ctrl-C) the originals are back."""
    undo = []
    try:
        for lesson, path, replacement in variant.patches:
            owner, name = _target(lesson, path)
            undo.append((owner, name, owner.__dict__.get(name, getattr(owner, name))))
            setattr(owner, name, replacement)
        yield variant
    finally:
        for owner, name, original in reversed(undo):
            setattr(owner, name, original)


def configure(variant: Variant, base, seed=None):
    """The TrainConfig of `variant`: base with the variant's fields (and the seed) changed."""
    return replace(base, **variant.config, **({} if seed is None else {"seed": seed}))


def build(variant: Variant, config):
    """Lesson 05's model for `config`, seeded as train() seeds it, edited by the variant.
    Call inside `applied(variant)` so that patched names are used while it is built."""
    L5 = load_lesson(5)
    torch.manual_seed(config.seed)
    model = L5.Seq2SeqTransformer(**config.model_config())
    if variant.edit is not None:
        model = variant.edit(model, config) or model
    return model


def run(variant: Variant, base, seed=None, data=None, device="cpu", evaluate=None, **train_kwargs):
    """Train `variant` with lesson 05's train() and evaluate it while it is still applied.

    Returns (config, TrainResult, evaluate(model, config) or None). train_kwargs go to train()
    (callback, checkpoint_path, ...). A TrainResult whose `interrupted` is True was cut short by
    Ctrl-C: callers must not report it as a result.
    """
    L5 = load_lesson(5)
    config = configure(variant, base, seed)
    with applied(variant):
        model = build(variant, config)
        result = L5.train(config, device, quiet=True, data=data, model=model, **train_kwargs)
        found = evaluate(result.model, config) if evaluate is not None else None
    return config, result, found
