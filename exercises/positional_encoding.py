"""Exercise: the sinusoidal positional encoding (lesson 03), from memory.

Replace the body of the function below, then check it from the repository root:

    python -m exercises check positional_encoding

The reference version is `sinusoidal_positional_encoding` in 03_positional_encoding.py.
"""
import math  # noqa: F401

import torch  # noqa: F401


def sinusoidal_positional_encoding(max_len: int, d_model: int) -> torch.Tensor:
    """The (max_len, d_model) table of sinusoidal positions.

    PE[p, 2i]   = sin(p / BASE^(2i / d_model))
    PE[p, 2i+1] = cos(p / BASE^(2i / d_model))
    BASE is the knob at the top of lesson 03; the paper uses 10000.
    Sines in even columns, cosines in odd columns (interleaved, as in the paper).
    With an odd d_model the last column is a sine without its cosine.
    """
    raise NotImplementedError(
        "write sinusoidal_positional_encoding, then run: python -m exercises check positional_encoding")
