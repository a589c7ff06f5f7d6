"""Checks of the `attention` exercise: scaled_dot_product_attention(query, key, value, mask=None).

The learner's function returns (output, weights). Both are compared with PyTorch's
F.scaled_dot_product_attention (its weights are read out by attending to the identity matrix) on
small random inputs: no mask, a causal mask, a padding mask, T_q != T_k, no batch dimensions, and
a query with nothing to attend to. When they differ, the known mistakes in ATTENTION_MISTAKES are
computed on the same inputs by attention_variant; the one the learner's result equals gives the hint.

Masks are boolean with True = may attend, as everywhere in the course.
"""
import functools
import math

import torch
import torch.nn.functional as F

from exercises.checks.helpers import (NEG_INF, CheckFailed, Checklist, call_keeping_inputs, compare, expect,
                                      expect_pair, expect_shape, match_variant, randn, random_mask, shape_str,
                                      unravel)

CHECKS = Checklist()


def _call_attention(fn, q, k, v, mask):
    names = ("query", "key", "value", "mask")
    result = (call_keeping_inputs(fn, q, k, v, names=names) if mask is None else
              call_keeping_inputs(fn, q, k, v, mask, names=names))
    return expect_pair(result)


def _torch_attention(q, k, v, mask):
    """PyTorch's F.scaled_dot_product_attention; the weights come from it too, with value = I."""
    T_k = k.size(-2)
    output = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    eye = torch.eye(T_k).expand(*k.shape[:-2], T_k, T_k)  # value's shape, with d_v = T_k
    weights = F.scaled_dot_product_attention(q, k, eye, attn_mask=mask)  # weights @ I = weights
    return output, weights


def attention_variant(q, k, v, mask, scale="sqrt_dk", mask_use="as_given", softmax_dim=-1, empty_rows="zero"):
    """The right attention with one thing changed: a known mistake, to recognise it."""
    divisor = {"sqrt_dk": math.sqrt(q.size(-1)), "none": 1.0, "dk": float(q.size(-1)),
               "sqrt_dv": math.sqrt(v.size(-1))}[scale]
    scores = q @ k.transpose(-2, -1) / divisor
    if mask is None:
        weights = torch.softmax(scores, dim=softmax_dim)
        return weights @ v, weights
    m = {"as_given": mask, "inverted": ~mask, "transposed": mask.transpose(-2, -1),
         "after_softmax": mask}[mask_use]
    if mask_use == "after_softmax":
        weights = torch.softmax(scores, dim=softmax_dim) * m
    else:
        scores = scores.masked_fill(~m, -1e9 if empty_rows == "finite" else NEG_INF)
        weights = torch.softmax(scores, dim=softmax_dim)
        if empty_rows == "zero":
            weights = weights.masked_fill(~m, 0.0)
    return weights @ v, weights


ATTENTION_MISTAKES = [
    ("the scores were not divided by sqrt(d_k): scores = Q K^T / sqrt(d_k), d_k = query.size(-1)",
     dict(scale="none")),
    ("the scores were divided by d_k itself; divide by its square root, math.sqrt(d_k)", dict(scale="dk")),
    ("the scores were divided by sqrt(d_v), value's size; the dot products have d_k terms: sqrt(d_k)",
     dict(scale="sqrt_dv")),
    ("the mask is used the wrong way round. Here True = may attend (as F.scaled_dot_product_attention): "
     "set the scores to -inf where the mask is False, scores.masked_fill(~mask, float('-inf')). "
     "(nn.MultiheadAttention uses the opposite convention.)", dict(mask_use="inverted")),
    ("the mask is transposed: its rows are query positions, its columns key positions",
     dict(mask_use="transposed")),
    ("softmax over the wrong axis: each query's weights over the keys must sum to 1, softmax(scores, dim=-1)",
     dict(softmax_dim=-2)),
    ("the mask was applied after the softmax (weights * mask), so rows no longer sum to 1: "
     "set blocked scores to -inf before the softmax", dict(mask_use="after_softmax")),
    ("softmax over a row where every score is -inf is 0/0 = NaN: after the softmax, set the weights of "
     "blocked keys to 0, weights.masked_fill(~mask, 0.0)", dict(empty_rows="nan")),
    ("a query with nothing to attend to got equal weights on every key: a large finite fill (like -1e9) "
     "leaves softmax spreading over blocked keys; fill with -inf, then set blocked weights to 0",
     dict(empty_rows="finite")),
]


def _attention_hints(q, k, v, mask, index):
    return [(hint, functools.partial(lambda kw: attention_variant(q, k, v, mask, **kw)[index], kw))
            for hint, kw in ATTENTION_MISTAKES]


def _attention_case(fn, q, k, v, mask):
    output, weights = _call_attention(fn, q, k, v, mask)
    expected_output, expected_weights = _torch_attention(q, k, v, mask)
    if torch.is_tensor(output) and tuple(output.shape) == tuple(expected_weights.shape) != tuple(
            expected_output.shape):
        raise CheckFailed(f"output has the shape of the weights {shape_str(expected_weights.shape)}",
                          "hint: return output, weights in that order")
    compare("weights", weights, expected_weights, variants=_attention_hints(q, k, v, mask, 1))
    compare("output", output, expected_output, variants=_attention_hints(q, k, v, mask, 0))


@CHECKS.add("shapes: batch dims (2, 3), T_q=3, T_k=5, d_k=4, d_v=6")
def attention_shapes(fn):
    q, k, v = randn(2, 3, 3, 4), randn(2, 3, 5, 4), randn(2, 3, 5, 6)
    output, weights = _call_attention(fn, q, k, v, None)
    if torch.is_tensor(output) and tuple(output.shape) == (2, 3, 3, 5):
        raise CheckFailed("output has the shape of the weights (2, 3, 3, 5)",
                          "hint: return output, weights in that order")
    expect_shape("output", output, (2, 3, 3, 6), legend=" = (..., T_q, d_v)", hints={
        (2, 3, 3, 4): "the output's last size comes from value (d_v = 6), not from query (d_k = 4)",
        (2, 3, 5, 6): "one output row per query (T_q = 3), not per key"})
    expect_shape("weights", weights, (2, 3, 3, 5), legend=" = (..., T_q, T_k)", hints={
        (2, 3, 5, 3): "scores are query @ key.transpose(-2, -1): (T_q, d_k) @ (d_k, T_k) -> (T_q, T_k)"})


@CHECKS.add("no mask: output and weights equal F.scaled_dot_product_attention")
def attention_no_mask(fn):
    _attention_case(fn, randn(2, 6, 8), randn(2, 6, 8), randn(2, 6, 4), None)


@CHECKS.add("causal mask (T, T): equals F.scaled_dot_product_attention",
            on_error="the mask is (T_q, T_k) and broadcasts over the batch dims")
def attention_causal(fn):
    T = 5
    mask = torch.tril(torch.ones(T, T, dtype=torch.bool))
    _attention_case(fn, randn(2, T, 8), randn(2, T, 8), randn(2, T, 4), mask)


@CHECKS.add("padding mask (B, 1, 1, T_k): the last 2 keys of example 1 are blocked",
            on_error="a (B, 1, 1, T_k) mask broadcasts against scores (B, n_heads, T_q, T_k)")
def attention_padding(fn):
    keep = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])  # (B, T_k)
    mask = keep[:, None, None, :]                                # (B, 1, 1, T_k)
    _attention_case(fn, randn(2, 2, 4, 8), randn(2, 2, 5, 8), randn(2, 2, 5, 4), mask)


@CHECKS.add("cross-attention T_q=3 != T_k=6 with a mask (B, T_q, T_k)")
def attention_cross(fn):
    _attention_case(fn, randn(2, 3, 8), randn(2, 6, 8), randn(2, 6, 5), random_mask(2, 3, 6))


@CHECKS.add("weights: rows sum to 1, blocked keys get 0, none is negative")
def attention_rows_sum_to_one(fn):
    q, k, v = randn(3, 4, 8), randn(3, 7, 8), randn(3, 7, 2)
    mask = random_mask(3, 4, 7)
    _, weights = _call_attention(fn, q, k, v, mask)
    expect_shape("weights", weights, (3, 4, 7), legend=" = (B, T_q, T_k)")
    sums = weights.detach().sum(-1)
    where = unravel((sums - 1).abs().argmax(), sums.shape)
    if not torch.allclose(sums, torch.ones_like(sums), atol=1e-5):
        column_sums = weights.detach().sum(-2)
        hint = match_variant(weights, _attention_hints(q, k, v, mask, 1)) or (
            "columns sum to 1 instead: softmax ran over the queries (dim=-2), not the keys (dim=-1)"
            if torch.allclose(column_sums, torch.ones_like(column_sums), atol=1e-5) else
            "rows sum to less than 1 where keys are blocked: mask the scores before the softmax, "
            "not the weights after it" if bool((sums < 1 - 1e-5).all()) else
            "softmax(scores, dim=-1) makes every row sum to 1")
        raise CheckFailed(f"row {where} (batch, query) of the weights sums to {sums[where]:.4g}, not 1",
                          "hint: " + hint)
    blocked = weights.detach().masked_select(~mask)
    expect(bool((blocked.abs() < 1e-6).all()),
           f"a blocked key got weight {float(blocked.abs().max()):.4g}",
           "hint: True = may attend; keys where the mask is False must get weight 0")
    expect(bool((weights >= 0).all()), f"a weight is negative ({float(weights.min()):.4g})",
           "hint: weights come out of a softmax, so they lie in [0, 1]")


@CHECKS.add("a query with nothing to attend to: no NaN, its weights and output are 0")
def attention_empty_row(fn):
    mask = random_mask(2, 4, 5)
    mask[0, 1] = False  # query 1 of example 0 may attend to nothing
    mask[1, 3] = False
    _attention_case(fn, randn(2, 4, 8), randn(2, 5, 8), randn(2, 5, 3), mask)


@CHECKS.add("no batch dims: query (4, 8), key (5, 8), value (5, 3), mask (4, 5)")
def attention_unbatched(fn):
    _attention_case(fn, randn(4, 8), randn(5, 8), randn(5, 3), random_mask(4, 5))


