"""Exercise: scaled dot-product attention (lesson 01), from memory.

Replace the body of the function below, then check it from the repository root:

    python -m exercises check attention

The reference version is `scaled_dot_product_attention` in 01_attention_mechanism.py: look at it
only after the checker has had its say (`python -m exercises compare attention` shows it beside
yours). `python -m exercises check attention --exam` grades without hints.
"""
import math  # noqa: F401

import torch  # noqa: F401


def scaled_dot_product_attention(query, key, value, mask=None):
    """Scaled dot-product attention, as F.scaled_dot_product_attention computes it, with the weights.

    query (..., T_q, d_k), key (..., T_k, d_k), value (..., T_k, d_v).
    mask: optional boolean, broadcastable to (..., T_q, T_k), True = may attend.
    Returns (output (..., T_q, d_v), weights (..., T_q, T_k)). Each row of weights sums to 1,
    except a query row with nothing to attend to, whose weights and output are all 0 (not NaN).
    """
    raise NotImplementedError("write scaled_dot_product_attention, then run: python -m exercises check attention")
