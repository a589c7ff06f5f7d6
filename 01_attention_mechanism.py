"""Lesson 01: the attention mechanism. (SKELETON: building blocks only; sections to be written.)"""
import math

import torch


# %% Building blocks
def causal_mask(T: int, device=None) -> torch.Tensor:
    """A (T, T) boolean mask, True on and below the diagonal: query t may attend to keys 0..t.

    True = may attend (the convention of F.scaled_dot_product_attention). Row = query position,
    column = key position; everything above the diagonal is the future and is blocked.
    """
    return torch.tril(torch.ones(T, T, dtype=torch.bool, device=device))


def scaled_dot_product_attention(query, key, value, mask=None):
    """Attention: each query takes a weighted average of the values, weighted by key similarity.

    query (..., T_q, d_k), key (..., T_k, d_k), value (..., T_k, d_v).
    mask: optional boolean, broadcastable to (..., T_q, T_k), True = may attend.
    Returns (output (..., T_q, d_v), weights (..., T_q, T_k)). Each row of weights sums to 1,
    except a query row with nothing to attend to, whose weights and output are all 0 (not NaN).
    """
    d_k = query.size(-1)
    # scores = Q K^T / sqrt(d_k)
    scores = query @ key.transpose(-2, -1) / math.sqrt(d_k)  # (..., T_q, d_k) @ (..., d_k, T_k) -> (..., T_q, T_k)
    if mask is not None:
        if mask.dtype != torch.bool:
            raise TypeError(f"mask must be boolean (True = may attend), got {mask.dtype}")
        scores = scores.masked_fill(~mask, float("-inf"))  # blocked keys get weight exp(-inf) = 0
    # weights = softmax(scores) over the keys
    weights = torch.softmax(scores, dim=-1)  # (..., T_q, T_k)
    if mask is not None:
        # A row where every key is blocked is softmax(all -inf) = 0/0 = NaN; make it 0 instead.
        weights = weights.masked_fill(~mask, 0.0)
    # output = weights V
    output = weights @ value  # (..., T_q, T_k) @ (..., T_k, d_v) -> (..., T_q, d_v)
    return output, weights
