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

from exercises.checks.helpers import (NEG_INF, CheckFailed, Checklist, Hint, call_keeping_inputs, compare, expect,
                                      expect_pair, expect_shape, match_variant, randn, random_mask, shape_str,
                                      unravel)

KEY_T = Hint(
    "key.T", "A shape error on batched inputs: look at how key is transposed for the scores.",
    "On a tensor with more than 2 dimensions, .T (and .t()) reverses every dimension: (B, T_k, d_k) becomes "
    "(d_k, T_k, B), so the batch dimension moves. Only the last two dimensions should swap.",
    "scores = query @ key.transpose(-2, -1) / math.sqrt(d_k)")
MASK_BROADCAST = Hint(
    "mask broadcast", "A shape error where the mask meets the scores: look at the line that applies the mask.",
    "The mask is (T_q, T_k), (B, T_q, T_k) or (B, 1, 1, T_k) and broadcasts against the scores (..., T_q, T_k) "
    "as it is; it needs no reshaping.", "scores = scores.masked_fill(~mask, float('-inf'))")
CHECKS = Checklist(line_hints=[(r"\.T\b|\.t\(\)", KEY_T)])


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


def attention_variant(q, k, v, mask, scale="sqrt_dk", mask_use="as_given", softmax_dim=-1, empty_rows="zero",
                      fill=NEG_INF):
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
        scores = scores.masked_fill(~m, -1e9 if empty_rows == "finite" else fill)
        weights = torch.softmax(scores, dim=softmax_dim)
        if empty_rows == "zero":
            weights = weights.masked_fill(~m, 0.0)
    return weights @ v, weights


SCALE_MISSING = Hint(
    "scale missing", "The weights are too peaked (the largest weight of each row too large): look at the line "
    "that computes the scores.",
    "Dot products of d_k-dimensional vectors grow like sqrt(d_k); without dividing by it the softmax saturates "
    "and its gradients vanish (lesson 01, section 3).",
    "scores = query @ key.transpose(-2, -1) / math.sqrt(query.size(-1))")
SCALE_DK = Hint(
    "divided by d_k", "The weights are too flat: look at what the scores are divided by.",
    "Dot products of d_k terms have a variance of about d_k, so a spread of sqrt(d_k): dividing by sqrt(d_k) "
    "brings it to 1, dividing by d_k shrinks it to 1/sqrt(d_k) and flattens the softmax.",
    "scores = query @ key.transpose(-2, -1) / math.sqrt(d_k)")
SCALE_DV = Hint(
    "divided by sqrt(d_v)", "The scores are divided by the wrong size: look at where d_k comes from.",
    "The dot products run over the query/key size d_k = query.size(-1); value's size d_v plays no part in "
    "the scores.", "d_k = query.size(-1)")
MASK_POLARITY = Hint(
    "mask polarity", "The weights are large exactly where the mask is False and 0 where it is True: look at the "
    "line that applies the mask.",
    "In this course (as in F.scaled_dot_product_attention) True = may attend, so the blocked keys are where the "
    "mask is False. nn.MultiheadAttention uses the opposite convention.",
    "scores = scores.masked_fill(~mask, float('-inf'))")
MASK_TRANSPOSED = Hint(
    "mask transposed", "The weights are blocked in a pattern mirrored across the diagonal: look at how the mask "
    "is indexed.", "A mask's rows are query positions and its columns key positions, like the scores it "
    "applies to.", "scores.masked_fill(~mask, float('-inf')) with mask as given, no .T")
SOFTMAX_DIM = Hint(
    "softmax axis", "The weights' columns sum to 1 instead of their rows: look at the softmax.",
    "Each query distributes its attention over the keys, so the normalisation runs over the last axis (keys).",
    "weights = torch.softmax(scores, dim=-1)")
MASK_AFTER_SOFTMAX = Hint(
    "mask after softmax", "Rows of weights with blocked keys sum to less than 1: look at where the mask is "
    "applied.", "Masking must happen before the softmax, so the remaining keys share the whole weight; zeroing "
    "weights afterwards leaves the row short.",
    "scores = scores.masked_fill(~mask, float('-inf')) before weights = torch.softmax(scores, dim=-1)")
FILL_ZERO = Hint(
    "masked_fill with 0", "Blocked keys still get weight: look at the value the blocked scores are set to.",
    "A score of 0 is an ordinary score: after the softmax it still gets weight exp(0) / sum. Only -inf becomes "
    "exactly 0 after the softmax.", "scores = scores.masked_fill(~mask, float('-inf'))")
EMPTY_ROW_NAN = Hint(
    "empty row NaN", "NaN in the row of a query that may attend to nothing: look at what happens to such a row "
    "after the softmax.", "softmax over a row that is all -inf is 0/0 = NaN. The contract says such a row's "
    "weights and output are 0, so it must be set explicitly.",
    "weights = weights.masked_fill(~mask, 0.0)  # after the softmax")
EMPTY_ROW_FINITE = Hint(
    "finite fill", "A query with nothing to attend to gets equal weights on every key: look at the value the "
    "blocked scores are set to.", "A large finite fill (like -1e9) leaves a fully blocked row with equal "
    "finite scores, so the softmax spreads evenly; with -inf the row is NaN, which you then set to 0.",
    "scores.masked_fill(~mask, float('-inf')), then weights.masked_fill(~mask, 0.0)")
OUTPUT_ORDER = Hint(
    "return order", "The first value returned has the shape of the weights: look at the return line.",
    "The contract returns (output, weights), in that order.", "return output, weights")

ATTENTION_MISTAKES = [
    (MASK_POLARITY, dict(mask_use="inverted")),
    (MASK_POLARITY, dict(mask_use="inverted", empty_rows="nan")),
    (MASK_POLARITY, dict(mask_use="inverted", empty_rows="finite")),
    (SCALE_MISSING, dict(scale="none")),
    (SCALE_DK, dict(scale="dk")),
    (SCALE_DV, dict(scale="sqrt_dv")),
    (MASK_TRANSPOSED, dict(mask_use="transposed")),
    (SOFTMAX_DIM, dict(softmax_dim=-2)),
    (MASK_AFTER_SOFTMAX, dict(mask_use="after_softmax")),
    (FILL_ZERO, dict(fill=0.0)),
    (FILL_ZERO, dict(fill=0.0, empty_rows="keep")),
    (EMPTY_ROW_NAN, dict(empty_rows="nan")),
    (EMPTY_ROW_FINITE, dict(empty_rows="finite")),
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
                          hint=OUTPUT_ORDER)
    compare("weights", weights, expected_weights, variants=_attention_hints(q, k, v, mask, 1))
    compare("output", output, expected_output, variants=_attention_hints(q, k, v, mask, 0))


@CHECKS.add("shapes: batch dims (2, 3), T_q=3, T_k=5, d_k=4, d_v=6", on_error=KEY_T)
def attention_shapes(fn):
    q, k, v = randn(2, 3, 3, 4), randn(2, 3, 5, 4), randn(2, 3, 5, 6)
    output, weights = _call_attention(fn, q, k, v, None)
    if torch.is_tensor(output) and tuple(output.shape) == (2, 3, 3, 5):
        raise CheckFailed("output has the shape of the weights (2, 3, 3, 5)", hint=OUTPUT_ORDER)
    expect_shape("output", output, (2, 3, 3, 6), legend=" = (..., T_q, d_v)", hints={
        (2, 3, 3, 4): Hint("d_v from query", "The output's last size is d_k = 4, not d_v = 6: look at what "
                           "multiplies the weights.", "Each output row is a weighted average of value rows, so "
                           "its size is value's, d_v.", "output = weights @ value"),
        (2, 3, 5, 6): Hint("rows per key", "One output row per key instead of per query: look at the order of "
                           "the matrix products.", "The weights are (T_q, T_k): one row per query. weights @ value "
                           "gives one output row per query.", "output = weights @ value")})
    expect_shape("weights", weights, (2, 3, 3, 5), legend=" = (..., T_q, T_k)", hints={
        (2, 3, 5, 3): Hint("scores transposed", "The weights are (T_k, T_q): look at the order in the scores' "
                           "product.", "Scores compare every query with every key: rows are queries.",
                           "scores = query @ key.transpose(-2, -1)")})


@CHECKS.add("no mask: output and weights equal F.scaled_dot_product_attention")
def attention_no_mask(fn):
    _attention_case(fn, randn(2, 6, 8), randn(2, 6, 8), randn(2, 6, 4), None)


@CHECKS.add("causal mask (T, T): equals F.scaled_dot_product_attention", on_error=MASK_BROADCAST)
def attention_causal(fn):
    T = 5
    mask = torch.tril(torch.ones(T, T, dtype=torch.bool))
    _attention_case(fn, randn(2, T, 8), randn(2, T, 8), randn(2, T, 4), mask)


@CHECKS.add("padding mask (B, 1, 1, T_k): the last 2 keys of example 1 are blocked", on_error=MASK_BROADCAST)
def attention_padding(fn):
    keep = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])  # (B, T_k)
    mask = keep[:, None, None, :]                                # (B, 1, 1, T_k)
    _attention_case(fn, randn(2, 2, 4, 8), randn(2, 2, 5, 8), randn(2, 2, 5, 4), mask)


@CHECKS.add("cross-attention T_q=3 != T_k=6 with a mask (B, T_q, T_k)", on_error=MASK_BROADCAST)
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
            SOFTMAX_DIM if torch.allclose(column_sums, torch.ones_like(column_sums), atol=1e-5) else
            MASK_AFTER_SOFTMAX if bool((sums < 1 - 1e-5).all()) else
            Hint("rows sum", "Rows of weights do not sum to 1: look at the softmax and anything after it.",
                 "Each query's weights are a probability distribution over the keys.",
                 "weights = torch.softmax(scores, dim=-1)"))
        raise CheckFailed(f"row {where} (batch, query) of the weights sums to {sums[where]:.4g}, not 1", hint=hint)
    blocked = weights.detach().masked_select(~mask)
    expect(bool((blocked.abs() < 1e-6).all()), f"a blocked key got weight {float(blocked.abs().max()):.4g}",
           hint=match_variant(weights, _attention_hints(q, k, v, mask, 1)) or MASK_POLARITY)
    expect(bool((weights >= 0).all()), f"a weight is negative ({float(weights.min()):.4g})",
           hint=Hint("negative weight", "A weight is negative: look at what happens after the softmax.",
                     "Weights come out of a softmax, so they lie in [0, 1].",
                     "weights = torch.softmax(scores, dim=-1)"))


@CHECKS.add("a query with nothing to attend to: no NaN, its weights and output are 0")
def attention_empty_row(fn):
    mask = random_mask(2, 4, 5)
    mask[0, 1] = False  # query 1 of example 0 may attend to nothing
    mask[1, 3] = False
    _attention_case(fn, randn(2, 4, 8), randn(2, 5, 8), randn(2, 5, 3), mask)


@CHECKS.add("no batch dims: query (4, 8), key (5, 8), value (5, 3), mask (4, 5)")
def attention_unbatched(fn):
    _attention_case(fn, randn(4, 8), randn(5, 8), randn(5, 3), random_mask(4, 5))
