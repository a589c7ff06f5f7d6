"""Exercises: write the course's components from memory, then let the checker grade them.

Each file here is a stub with the same signature and docstring as the lesson's version and a body
that raises NotImplementedError. Replace the body, then run from the repository root:

    python -m exercises list                  # the exercises and what each covers
    python -m exercises check attention       # check one exercise
    python -m exercises check                 # check all of them, with a score
    python -m exercises check --reference     # the same checks on the lessons' own code

The checks are the ones the lessons are held to: shapes, equality with PyTorch's own modules after
copying weights, every mask case, no NaN on rows with nothing to attend to. See README.md here.

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
                 "softmax(Q K^T / sqrt(d_k)) V with a boolean mask; empty rows give 0, not NaN"),
        Exercise("causal_mask", "causal_mask.py", "causal_mask", 1,
                 "the (T, T) mask that lets query t see keys 0..t"),
        Exercise("multi_head_attention", "multi_head_attention.py", "MultiHeadAttention", 2,
                 "split into heads, attend per head, merge back, project with W_o"),
        Exercise("positional_encoding", "positional_encoding.py", "sinusoidal_positional_encoding", 3,
                 "the sin/cos table PE[p, 2i], PE[p, 2i+1]"),
        Exercise("encoder_block", "encoder_block.py", "TransformerEncoderBlock", 4,
                 "attention + feed-forward, residuals and LayerNorm, post-LN and pre-LN"),
        Exercise("beam_search", "beam_search.py", "beam_search", 5,
                 "keep the best beam_size partial outputs; finished ones end in EOS"),
    )
}

__all__ = ["EXERCISES", "Exercise"]
