"""The checks of each exercise, one module per exercise, named as the exercise.

    exercises/checks/attention.py             scaled_dot_product_attention   (lesson 01)
    exercises/checks/causal_mask.py           causal_mask                    (lesson 01)
    exercises/checks/multi_head_attention.py  MultiHeadAttention             (lesson 02)
    exercises/checks/positional_encoding.py   sinusoidal_positional_encoding (lesson 03)
    exercises/checks/encoder_block.py         TransformerEncoderBlock        (lesson 04)
    exercises/checks/beam_search.py           beam_search                    (lesson 05)
    exercises/checks/stand_in_model.py        the model the beam-search checks decode with
    exercises/checks/helpers.py               what they share: CheckFailed, compare, expect, ...

Each exercise's module has a list CHECKS (helpers.Checklist) of its checks, in the order they run.
"""
import importlib

from exercises import EXERCISES


def checks_of(name: str):
    """The checks of exercise `name`: a list of helpers.Check(title, run, on_error)."""
    if name not in EXERCISES:
        raise KeyError(f"unknown exercise {name!r}; valid: {', '.join(EXERCISES)}")
    return importlib.import_module(f"exercises.checks.{name}").CHECKS
