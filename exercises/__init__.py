"""Exercises: write the course's components from memory, then let the checker grade them.

Each file here is a stub with the same signature and docstring as the lesson's version and a body
that raises NotImplementedError. Replace the body, then run from the repository root:

    python -m exercises list                  # the exercises, and your progress in each
    python -m exercises check attention       # check one exercise (--hint 2 or 3 for more help)
    python -m exercises check                 # check all of them, with a score
    python -m exercises check --exam          # from memory: pass or fail per property, no hints
    python -m exercises compare attention     # your version, then the lesson's
    python -m exercises check --reference     # the same checks on the lessons' own code

The checks are the ones the lessons are held to: shapes, equality with PyTorch's own modules after
copying weights, every mask case, no NaN on rows with nothing to attend to, dropout in training and
eval mode. See README.md here.

This file imports no torch, so `python -m exercises list` answers at once.
"""
from dataclasses import dataclass


@dataclass(frozen=True)
class Exercise:
    """One exercise: the stub file, the name the learner writes, and the lesson that teaches it."""

    name: str     # what you type after `check`
    file: str     # the stub in exercises/
    entry: str    # the function or class the checker calls
    lesson: int   # the lesson with the reference version (load_lesson(lesson).<entry>)
    covers: str   # one line for `list`


EXERCISES = {
    exercise.name: exercise
    for exercise in (
        Exercise("attention", "attention.py", "scaled_dot_product_attention", 1,
                 "each query's weighted average of the values, weighted by its similarity to the keys; a boolean "
                 "mask; a query with nothing to attend to gets 0"),
        Exercise("causal_mask", "causal_mask.py", "causal_mask", 1,
                 "the (T, T) mask that lets each query see only the past and itself"),
        Exercise("multi_head_attention", "multi_head_attention.py", "MultiHeadAttention", 2,
                 "several heads side by side, each on its own slice of d_model, merged and projected back; dropout "
                 "on the attention weights"),
        Exercise("positional_encoding", "positional_encoding.py", "sinusoidal_positional_encoding", 3,
                 "the paper's table of sines and cosines that tells a model where each token is, for any d_model"),
        Exercise("encoder_block", "encoder_block.py", "TransformerEncoderBlock", 4,
                 "attention and feed-forward with residual connections, LayerNorm and dropout; post-LN and pre-LN"),
        Exercise("beam_search", "beam_search.py", "beam_search", 5,
                 "keep the beam_size most likely partial answers; finished ones compete; an optional length penalty"),
    )
}

__all__ = ["EXERCISES", "Exercise"]
