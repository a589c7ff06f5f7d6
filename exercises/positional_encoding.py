"""Exercise: the sinusoidal positional encoding (lesson 03), from memory.

Replace the body of the function below, then check it from the repository root:

    python -m exercises check positional_encoding

The reference version is `sinusoidal_positional_encoding` in 03_positional_encoding.py; after the
checker has had its say, `python -m exercises compare positional_encoding` shows it beside yours.
"""
import math  # noqa: F401

import torch  # noqa: F401


def sinusoidal_positional_encoding(max_len: int, d_model: int) -> torch.Tensor:
    """The (max_len, d_model) float32 table of sinusoidal positions, as in the paper.

    Row p encodes position p (positions start at 0). Columns come in pairs (0, 1), (2, 3), ...:
    pair i holds the sine (even column) and the cosine (odd column) of one angle, which grows
    with the position at pair i's own frequency; frequencies fall geometrically from 1 (pair 0)
    towards 1/10000 across the pairs, with the paper's base 10000. An odd d_model ends with a
    sine column without its cosine.
    """
    raise NotImplementedError(
        "write sinusoidal_positional_encoding, then run: python -m exercises check positional_encoding")
