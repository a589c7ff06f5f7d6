"""The reference checks of each exercise: the same checks the lessons' own code is held to.

Every check builds small random inputs, runs the learner's code and PyTorch's reference on them
(after copying weights where there are any) and compares. When they differ, the known mistakes
("variants": the right computation with one thing done wrong) are computed on the same inputs;
the one the learner's result matches becomes the hint.

Masks are boolean with True = may attend, as everywhere in the course. nn.MultiheadAttention and
nn.TransformerEncoderLayer take the opposite (True = blocked), so their masks are inverted here.
"""
import functools
import math
import random

import torch
import torch.nn as nn
import torch.nn.functional as F

from exercises._checker import CheckFailed, _match_variant, case, compare, describe, expect, shape_str, unravel

NEG_INF = float("-inf")


def _randn(*shape):
    return torch.randn(*shape)


def _random_mask(*shape, p_keep=0.6):
    """A random boolean mask (True = may attend) with at least one True in every row."""
    mask = torch.rand(*shape) < p_keep
    first = torch.randint(0, shape[-1], shape[:-1])
    mask.scatter_(-1, first.unsqueeze(-1), True)
    return mask


def _expect_shape(what, tensor, shape, hints=None, legend=""):
    """Fail unless `tensor` is a tensor of `shape`; hints maps a wrong shape to its likely cause."""
    if not torch.is_tensor(tensor):
        raise CheckFailed(f"{what}: expected a tensor of shape {shape_str(shape)}{legend}, got {describe(tensor)}")
    got = tuple(tensor.shape)
    if got != tuple(shape):
        hint = (hints or {}).get(got, "")
        raise CheckFailed(f"{what}: expected shape {shape_str(shape)}{legend}, got {shape_str(got)}",
                          hint and "hint: " + hint)


def _expect_no_nan(what, tensor, why, hint):
    nan = torch.isnan(tensor)
    if nan.any():
        where = tuple(int(i) for i in nan.nonzero()[0])
        raise CheckFailed(f"{what}: NaN at index {where} {why}", "hint: " + hint)


def _expect_pair(result, names="(output, weights)"):
    expect(isinstance(result, (tuple, list)) and len(result) == 2,
           f"expected a pair {names}, got {describe(result)}",
           f"hint: end with `return {names.strip('()')}`")
    return result


# ==============================================================================================
# attention: scaled_dot_product_attention(query, key, value, mask=None) -> (output, weights)
def _call_attention(fn, q, k, v, mask):
    result = fn(q, k, v) if mask is None else fn(q, k, v, mask)
    return _expect_pair(result)


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


@case("attention", "shapes: batch dims (2, 3), T_q=3, T_k=5, d_k=4, d_v=6")
def attention_shapes(fn):
    q, k, v = _randn(2, 3, 3, 4), _randn(2, 3, 5, 4), _randn(2, 3, 5, 6)
    output, weights = _call_attention(fn, q, k, v, None)
    if torch.is_tensor(output) and tuple(output.shape) == (2, 3, 3, 5):
        raise CheckFailed("output has the shape of the weights (2, 3, 3, 5)",
                          "hint: return output, weights in that order")
    _expect_shape("output", output, (2, 3, 3, 6), legend=" = (..., T_q, d_v)", hints={
        (2, 3, 3, 4): "the output's last size comes from value (d_v = 6), not from query (d_k = 4)",
        (2, 3, 5, 6): "one output row per query (T_q = 3), not per key"})
    _expect_shape("weights", weights, (2, 3, 3, 5), legend=" = (..., T_q, T_k)", hints={
        (2, 3, 5, 3): "scores are query @ key.transpose(-2, -1): (T_q, d_k) @ (d_k, T_k) -> (T_q, T_k)"})


@case("attention", "no mask: output and weights equal F.scaled_dot_product_attention")
def attention_no_mask(fn):
    _attention_case(fn, _randn(2, 6, 8), _randn(2, 6, 8), _randn(2, 6, 4), None)


@case("attention", "causal mask (T, T): equals F.scaled_dot_product_attention",
      on_error="the mask is (T_q, T_k) and broadcasts over the batch dims")
def attention_causal(fn):
    T = 5
    mask = torch.tril(torch.ones(T, T, dtype=torch.bool))
    _attention_case(fn, _randn(2, T, 8), _randn(2, T, 8), _randn(2, T, 4), mask)


@case("attention", "padding mask (B, 1, 1, T_k): the last 2 keys of example 1 are blocked",
      on_error="a (B, 1, 1, T_k) mask broadcasts against scores (B, n_heads, T_q, T_k)")
def attention_padding(fn):
    keep = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])  # (B, T_k)
    mask = keep[:, None, None, :]                                # (B, 1, 1, T_k)
    _attention_case(fn, _randn(2, 2, 4, 8), _randn(2, 2, 5, 8), _randn(2, 2, 5, 4), mask)


@case("attention", "cross-attention T_q=3 != T_k=6 with a mask (B, T_q, T_k)")
def attention_cross(fn):
    _attention_case(fn, _randn(2, 3, 8), _randn(2, 6, 8), _randn(2, 6, 5), _random_mask(2, 3, 6))


@case("attention", "weights: rows sum to 1, blocked keys get 0, none is negative")
def attention_rows_sum_to_one(fn):
    q, k, v = _randn(3, 4, 8), _randn(3, 7, 8), _randn(3, 7, 2)
    mask = _random_mask(3, 4, 7)
    _, weights = _call_attention(fn, q, k, v, mask)
    _expect_shape("weights", weights, (3, 4, 7), legend=" = (B, T_q, T_k)")
    sums = weights.detach().sum(-1)
    where = unravel((sums - 1).abs().argmax(), sums.shape)
    if not torch.allclose(sums, torch.ones_like(sums), atol=1e-5):
        column_sums = weights.detach().sum(-2)
        hint = _match_variant(weights, _attention_hints(q, k, v, mask, 1)) or (
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


@case("attention", "a query with nothing to attend to: no NaN, its weights and output are 0")
def attention_empty_row(fn):
    mask = _random_mask(2, 4, 5)
    mask[0, 1] = False  # query 1 of example 0 may attend to nothing
    mask[1, 3] = False
    _attention_case(fn, _randn(2, 4, 8), _randn(2, 5, 8), _randn(2, 5, 3), mask)


@case("attention", "no batch dims: query (4, 8), key (5, 8), value (5, 3), mask (4, 5)")
def attention_unbatched(fn):
    _attention_case(fn, _randn(4, 8), _randn(5, 8), _randn(5, 3), _random_mask(4, 5))


# ==============================================================================================
# causal_mask: causal_mask(T, device=None) -> (T, T) bool, True on and below the diagonal
CAUSAL_MISTAKES = [
    ("True above the diagonal lets each query see the future and hides the past: keep the lower "
     "triangle, torch.tril", lambda T: torch.triu(torch.ones(T, T, dtype=torch.bool))),
    ("True marks the blocked positions here (nn.MultiheadAttention's convention); in this course "
     "True = may attend, so the allowed lower triangle is True", lambda T: ~torch.tril(torch.ones(T, T, dtype=torch.bool))),
    ("the diagonal is missing: query t may attend to itself (keys 0..t, t included): torch.tril(..., diagonal=0)",
     lambda T: torch.tril(torch.ones(T, T, dtype=torch.bool), diagonal=-1)),
]


def _compare_mask(T, mask):
    expected = torch.tril(torch.ones(T, T, dtype=torch.bool))
    _expect_shape(f"causal_mask({T})", mask, (T, T))
    expect(mask.dtype == torch.bool, f"causal_mask({T}) has dtype {mask.dtype}, expected torch.bool",
           "hint: a boolean mask selects (True = may attend); create it with dtype=torch.bool "
           "(torch.tril(torch.ones(T, T)) alone is float)")
    wrong = mask.cpu() != expected
    if wrong.any():
        row, col = (int(i) for i in wrong.nonzero()[0])
        hint = next((h for h, make in CAUSAL_MISTAKES if torch.equal(mask.cpu(), make(T))), "")
        raise CheckFailed(f"causal_mask({T})[{row}, {col}] (query {row}, key {col}) is {bool(mask[row, col])}, "
                          f"expected {bool(expected[row, col])} ({int(wrong.sum())} of {T * T} entries wrong)",
                          hint and "hint: " + hint)


@case("causal_mask", "causal_mask(5) is a (5, 5) tensor of dtype torch.bool")
def causal_shape(fn):
    mask = fn(5)
    _expect_shape("causal_mask(5)", mask, (5, 5))
    expect(mask.dtype == torch.bool, f"causal_mask(5) has dtype {mask.dtype}, expected torch.bool",
           "hint: create it with dtype=torch.bool: a float 0/1 mask would be added to the scores, "
           "not used to select")


@case("causal_mask", "values for T = 1, 2, 5, 8: True on and below the diagonal")
def causal_values(fn):
    for T in (1, 2, 5, 8):
        _compare_mask(T, fn(T))


@case("causal_mask", "as attn_mask of F.scaled_dot_product_attention it equals is_causal=True")
def causal_in_attention(fn):
    T = 6
    q, k, v = _randn(2, T, 8), _randn(2, T, 8), _randn(2, T, 4)
    mask = fn(T)
    expect(torch.is_tensor(mask), f"causal_mask({T}) returned {describe(mask)}")
    compare("output with your mask", F.scaled_dot_product_attention(q, k, v, attn_mask=mask),
            F.scaled_dot_product_attention(q, k, v, is_causal=True),
            hint="check the mask's values (the check above) and its dtype: a float mask is added to the "
                 "scores instead of selecting keys")


@case("causal_mask", "the device argument is used")
def causal_device(fn):
    if torch.cuda.is_available():
        mask = fn(4, device=torch.device("cuda"))
        expect(torch.is_tensor(mask) and mask.device.type == "cuda",
               f"causal_mask(4, device='cuda') returned {describe(mask)} on "
               f"{getattr(mask, 'device', 'no device')}", "hint: " + DEVICE_HINT)
        return
    # Without CUDA, creating a tensor on "cuda" raises; a mask that comes back means the device was ignored.
    try:
        mask = fn(4, device=torch.device("cuda"))
    except (AssertionError, RuntimeError):
        return
    raise CheckFailed(f"causal_mask(4, device='cuda') returned {describe(mask)} on "
                      f"{getattr(mask, 'device', 'no device')}, on a machine without CUDA: the device "
                      f"argument was ignored", "hint: " + DEVICE_HINT)


DEVICE_HINT = ("pass device=device to the tensor you create, e.g. torch.ones(T, T, dtype=torch.bool, "
               "device=device), so the mask lives where the scores are")


# ==============================================================================================
# multi_head_attention: MultiHeadAttention(d_model, n_heads, dropout=0.0, bias=True)
def _randomize(module):
    """Give every bias and LayerNorm a random value, so a missing or misplaced one shows."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("bias"):
                p.normal_(0.0, 0.2)
            elif p.dim() == 1:  # LayerNorm weights
                p.copy_(1.0 + 0.3 * torch.randn_like(p))


def _attr(obj, dotted):
    for part in dotted.split("."):
        obj = getattr(obj, part, None)
    return obj


def _copy_linear(ours, path, weight, bias, source, shape_hint):
    """Copy PyTorch's weight and bias (from `source`, in words) into the learner's nn.Linear at `path`."""
    layer = _attr(ours, path)
    expect(isinstance(layer, nn.Linear),
           f"{path}: expected an nn.Linear named {path}, found {describe(layer) if layer is not None else 'nothing'}",
           f"hint: the checker copies {source} into {path}; keep the stub's attribute names")
    expect(tuple(layer.weight.shape) == tuple(weight.shape),
           f"{path}.weight has shape {shape_str(layer.weight.shape)}, expected {shape_str(weight.shape)}",
           f"hint: {shape_hint}")
    expect(layer.bias is not None, f"{path} has no bias, but {source} has one",
           "hint: keep bias=True (the default)")
    with torch.no_grad():
        layer.weight.copy_(weight)
        layer.bias.copy_(bias)


def _copy_attention(ours, ref, prefix=""):
    """Copy nn.MultiheadAttention's weights into W_q, W_k, W_v, W_o; return them for the variants."""
    d = ref.embed_dim
    w_q, w_k, w_v = ref.in_proj_weight.detach().clone().chunk(3)
    b_q, b_k, b_v = ref.in_proj_bias.detach().clone().chunk(3)
    weights = {"W_q": (w_q, b_q), "W_k": (w_k, b_k), "W_v": (w_v, b_v),
               "W_o": (ref.out_proj.weight.detach().clone(), ref.out_proj.bias.detach().clone())}
    sources = {"W_q": "the query third of nn.MultiheadAttention's in_proj",
               "W_k": "the key third of nn.MultiheadAttention's in_proj",
               "W_v": "the value third of nn.MultiheadAttention's in_proj",
               "W_o": "nn.MultiheadAttention's out_proj"}
    for name, (w, b) in weights.items():
        _copy_linear(ours, prefix + name, w, b, sources[name],
                     f"one nn.Linear(d_model, d_model) = ({d}, {d}) holds every head's projection")
    return weights


def _to_4d(mask):
    """Our mask shapes (T_q, T_k), (B, T_q, T_k), (B, 1, T_k), (B, n_heads, T_q, T_k) -> 4-D."""
    if mask is None or mask.dim() == 4:
        return mask
    return mask.unsqueeze(1) if mask.dim() == 3 else mask[None, None]


def mha_variant(query, key, value, W, n_heads, mask, scale="d_head", split="transpose",
                merge="transpose", mask_use="as_given", project_out=True):
    """Multi-head attention written out, with one thing changed: a known mistake, to recognise it."""
    B, T_q, d_model = query.shape
    d_head = d_model // n_heads

    def heads(x):  # (B, T, d_model) -> (B, n_heads, T, d_head)
        if split == "transpose":
            return x.view(B, x.size(1), n_heads, d_head).transpose(1, 2)
        return x.reshape(B, n_heads, x.size(1), d_head)  # the mistake: no transpose

    q = heads(F.linear(query, *W["W_q"]))
    k = heads(F.linear(key, *W["W_k"]))
    v = heads(F.linear(value, *W["W_v"]))
    divisor = {"d_head": math.sqrt(d_head), "d_model": math.sqrt(d_model), "none": 1.0}[scale]
    scores = q @ k.transpose(-2, -1) / divisor  # (B, n_heads, T_q, T_k)
    m = _to_4d(mask)
    if m is not None:
        m = ~m if mask_use == "inverted" else m
        scores = scores.masked_fill(~m, NEG_INF)
    weights = torch.softmax(scores, dim=-1)
    if m is not None:
        weights = weights.masked_fill(~m, 0.0)
    out = weights @ v  # (B, n_heads, T_q, d_head)
    merged = out.transpose(1, 2).reshape(B, T_q, d_model) if merge == "transpose" else out.reshape(B, T_q, d_model)
    return (F.linear(merged, *W["W_o"]) if project_out else merged), weights


MHA_MISTAKES = [
    ("the scores were divided by sqrt(d_model); each head's dot products have only d_head = "
     "d_model // n_heads terms, so divide by sqrt(d_head)", dict(scale="d_model")),
    ("the scores were not scaled: divide them by sqrt(d_head)", dict(scale="none")),
    ("the heads were merged with a reshape/view but no transpose: (B, n_heads, T_q, d_head) must become "
     "(B, T_q, n_heads, d_head) with .transpose(1, 2) before .reshape(B, T_q, d_model); without it, "
     "values of different positions get mixed", dict(merge="reshape")),
    ("the heads were split with a view straight to (B, n_heads, T, d_head): view (B, T, d_model) as "
     "(B, T, n_heads, d_head) first, then .transpose(1, 2)", dict(split="reshape")),
    ("heads split and merged without transposes: each 'head' then holds a slab of positions instead of "
     "a slice of every position's features; use .view(B, T, n_heads, d_head).transpose(1, 2) and back",
     dict(split="reshape", merge="reshape")),
    ("the mask is used the wrong way round: True = may attend here (nn.MultiheadAttention takes the "
     "opposite, which is why the checker inverts it for PyTorch)", dict(mask_use="inverted")),
    ("W_o was not applied: the merged heads go through the output projection W_o", dict(project_out=False)),
]


def _mha_hints(q, k, v, W, n_heads, mask, index):
    return [(hint, functools.partial(lambda kw: mha_variant(q, k, v, W, n_heads, mask, **kw)[index], kw))
            for hint, kw in MHA_MISTAKES]


def _make_mha(cls, d_model, n_heads):
    module = cls(d_model, n_heads)
    expect(isinstance(module, nn.Module), f"MultiHeadAttention({d_model}, {n_heads}) is {describe(module)}, "
                                          "not an nn.Module")
    return module.eval()


def _torch_attn_mask(mask, B, n_heads, T_q, T_k):
    """Our mask (True = may attend, any of our shapes) -> PyTorch's attn_mask (B * n_heads, T_q, T_k),
    True = blocked. (A padding mask could also go in key_padding_mask, True = padding; the checker
    avoids it because its first use imports sympy, which takes ~1.5 s.)"""
    if mask is None:
        return None
    return ~_to_4d(mask).expand(B, n_heads, T_q, T_k).reshape(B * n_heads, T_q, T_k)


def _reference_mha(ref, q, k, v, mask, n_heads):
    """nn.MultiheadAttention with our mask (True = may attend) turned into its attn_mask (True = blocked)."""
    attn_mask = _torch_attn_mask(mask, q.size(0), n_heads, q.size(1), k.size(1))
    with torch.enable_grad():  # PyTorch's plain path (the fused inference path is another code path)
        output, weights = ref(q, k, v, attn_mask=attn_mask, need_weights=True, average_attn_weights=False)
    return output.detach(), weights.detach()


def _call_mha(module, q, k, v, mask):
    result = module(q, k, v) if mask is None else module(q, k, v, mask=mask)
    return _expect_pair(result)


def _mha_case(cls, B, T_q, T_k, mask_fn=None, d_model=16, n_heads=4, rows=None):
    """Compare with nn.MultiheadAttention on one mask case; `rows` picks the examples to compare."""
    module = _make_mha(cls, d_model, n_heads)
    ref = nn.MultiheadAttention(d_model, n_heads, dropout=0.0, bias=True, batch_first=True).eval()
    _randomize(ref)
    W = _copy_attention(module, ref)
    q, k, v = _randn(B, T_q, d_model), _randn(B, T_k, d_model), _randn(B, T_k, d_model)
    mask = mask_fn(B, T_q, T_k) if mask_fn else None
    output, weights = _call_mha(module, q, k, v, mask)
    expected_output, expected_weights = _reference_mha(ref, q, k, v, mask, n_heads)
    _expect_shape("output", output, (B, T_q, d_model), legend=" = (B, T_q, d_model)", hints={
        (B, n_heads, T_q, d_model // n_heads): "the heads were not merged back: (B, n_heads, T_q, d_head) -> "
                                               "transpose(1, 2) -> reshape(B, T_q, d_model)"})
    _expect_shape("weights", weights, (B, n_heads, T_q, T_k), legend=" = (B, n_heads, T_q, T_k)", hints={
        (B, T_q, T_k): "one attention map per head: keep the heads dimension (do not average over heads)"})
    pick = (lambda t: t[rows]) if rows is not None else (lambda t: t)
    hints_w = [(h, functools.partial(lambda f: pick(f()), f)) for h, f in _mha_hints(q, k, v, W, n_heads, mask, 1)]
    hints_o = [(h, functools.partial(lambda f: pick(f()), f)) for h, f in _mha_hints(q, k, v, W, n_heads, mask, 0)]
    which = "" if rows is None else f" of example {rows}"
    compare(f"weights{which} (n_heads, T_q, T_k)" if rows is not None else "weights (B, n_heads, T_q, T_k)",
            pick(weights), pick(expected_weights), variants=hints_w)
    compare(f"output{which}", pick(output), pick(expected_output), variants=hints_o)
    return output, weights


def _causal(B, T_q, T_k):
    return torch.tril(torch.ones(T_q, T_k, dtype=torch.bool))


def _padding(B, T_q, T_k):
    keep = torch.ones(B, T_k, dtype=torch.bool)
    keep[1, -2:] = False  # example 1: its last 2 keys are padding
    return keep[:, None, :]  # (B, 1, T_k)


MHA_3D_MASK_HINT = ("a 3-D mask (B, T_q or 1, T_k) needs .unsqueeze(1) to become (B, 1, T_q or 1, T_k) "
                    "and broadcast over the heads")


@case("multi_head_attention", "shapes: B=2, T_q=3, T_k=5, d_model=16, n_heads=4")
def mha_shapes(cls):
    module = _make_mha(cls, 16, 4)
    output, weights = _call_mha(module, _randn(2, 3, 16), _randn(2, 5, 16), _randn(2, 5, 16), None)
    _expect_shape("output", output, (2, 3, 16), legend=" = (B, T_q, d_model)", hints={
        (2, 4, 3, 4): "the heads were not merged back: transpose(1, 2), then reshape(B, T_q, d_model)"})
    _expect_shape("weights", weights, (2, 4, 3, 5), legend=" = (B, n_heads, T_q, T_k)", hints={
        (2, 3, 5): "one attention map per head: keep the heads dimension (do not average over heads)",
        (2, 4, 5, 3): "scores are q @ k.transpose(-2, -1): (T_q, d_head) @ (d_head, T_k) -> (T_q, T_k)"})


@case("multi_head_attention", "no mask: output and weights equal nn.MultiheadAttention (weights copied)")
def mha_no_mask(cls):
    _mha_case(cls, 2, 5, 5)


@case("multi_head_attention", "causal mask (T, T)", on_error="a (T, T) mask broadcasts over batch and heads")
def mha_causal(cls):
    _mha_case(cls, 2, 5, 5, _causal)


@case("multi_head_attention", "padding mask (B, 1, T_k): the last 2 keys of example 1 are padding",
      on_error=MHA_3D_MASK_HINT)
def mha_padding(cls):
    _mha_case(cls, 2, 5, 5, _padding)


@case("multi_head_attention", "cross-attention T_q=3 != T_k=6 with a padding mask (B, 1, T_k)",
      on_error=MHA_3D_MASK_HINT)
def mha_cross(cls):
    _mha_case(cls, 2, 3, 6, _padding)


@case("multi_head_attention", "a mask per example (B, T_q, T_k): causal and padding together",
      on_error=MHA_3D_MASK_HINT)
def mha_per_example(cls):
    _mha_case(cls, 3, 5, 5, lambda B, T_q, T_k: _causal(B, T_q, T_k) & _random_mask(B, 1, T_k, p_keep=0.7)
              | torch.eye(T_q, T_k, dtype=torch.bool))


@case("multi_head_attention", "other sizes: d_model=24 with n_heads = 1, 3, 6")
def mha_other_sizes(cls):
    for n_heads in (1, 3, 6):
        try:
            _mha_case(cls, 2, 4, 4, _causal, d_model=24, n_heads=n_heads)
        except CheckFailed as failure:
            failure.lines[0] = f"n_heads={n_heads}: {failure.lines[0]}"
            raise


@case("multi_head_attention", "an example whose keys are all padding: no NaN, the other one matches",
      on_error=MHA_3D_MASK_HINT)
def mha_empty_rows(cls):
    def all_padding(B, T_q, T_k):
        keep = torch.ones(B, T_k, dtype=torch.bool)
        keep[1] = False  # example 1: nothing to attend to
        return keep[:, None, :]

    output, weights = _mha_case(cls, 2, 4, 4, all_padding, rows=0)
    for name, t in (("output", output), ("weights", weights)):
        _expect_no_nan(name, t, "(example 1, every key blocked)",
                       "softmax over a row of -inf is 0/0 = NaN: set the weights of blocked keys to 0 "
                       "after the softmax")
    expect(bool((weights[1].abs() < 1e-6).all()),
           f"weights of example 1 (every key blocked) should be 0, largest is {float(weights[1].abs().max()):.4g}",
           "hint: a query with nothing to attend to gets weight 0 everywhere, not equal weights")


# ==============================================================================================
# positional_encoding: sinusoidal_positional_encoding(max_len, d_model) -> (max_len, d_model)
def pe_variant(max_len, d_model, mistake=None):
    """The closed form in float64, or with one known mistake."""
    p = torch.arange(max_len, dtype=torch.float64)[:, None] + (1 if mistake == "from_one" else 0)
    col = torch.arange(d_model, dtype=torch.float64)
    two_i = col - col % 2  # both columns of pair i use 2i
    exponent = {"own_index": col, "i_not_2i": two_i / 2}.get(mistake, two_i) / d_model
    angle = p * 10000.0 ** exponent if mistake == "multiplied" else p / 10000.0 ** exponent
    even = (col % 2 == 0)
    if mistake == "swapped":
        return torch.where(even, torch.cos(angle), torch.sin(angle))
    if mistake == "halves":
        half = (d_model + 1) // 2
        freq = p / 10000.0 ** (2 * torch.arange(half, dtype=torch.float64) / d_model)
        return torch.cat([torch.sin(freq), torch.cos(freq)[:, : d_model - half]], dim=1)
    return torch.where(even, torch.sin(angle), torch.cos(angle))


PE_MISTAKES = [
    ("sines and cosines are swapped: sin goes in the even columns (0, 2, 4, ...), cos in the odd ones",
     "swapped"),
    ("all sines first, then all cosines (concatenated halves): a model learns as well from that layout, "
     "but this course and the paper interleave them: pe[:, 0::2] = sin, pe[:, 1::2] = cos", "halves"),
    ("the odd column 2i+1 used its own index in the exponent; both columns of pair i share the "
     "frequency 1 / 10000^(2i / d_model)", "own_index"),
    ("the exponent used the pair number i instead of 2i: 10000^(2i / d_model), 2i being the even column",
     "i_not_2i"),
    ("positions start at 0: the first row is position 0 (sin 0 = 0, cos 0 = 1)", "from_one"),
    ("p was multiplied by 10000^(2i / d_model) instead of divided by it", "multiplied"),
]


def _pe_case(fn, max_len, d_model, rows=slice(None)):
    pe = fn(max_len, d_model)
    _expect_shape(f"sinusoidal_positional_encoding({max_len}, {d_model})", pe, (max_len, d_model),
                  legend=" = (max_len, d_model)",
                  hints={(d_model, max_len): "rows are positions, columns are dimensions: (max_len, d_model)"})
    variants = [(hint, functools.partial(lambda m: pe_variant(max_len, d_model, m)[rows], m)) for hint, m in PE_MISTAKES]
    compare(f"PE({max_len}, {d_model})[{'row 0' if rows == 0 else 'all rows'}]", pe[rows],
            pe_variant(max_len, d_model)[rows], variants=variants, atol=2e-4, rtol=1e-4)


@case("positional_encoding", "shape and dtype: (50, 16) gives a (50, 16) float32 table")
def pe_shape(fn):
    pe = fn(50, 16)
    _expect_shape("sinusoidal_positional_encoding(50, 16)", pe, (50, 16), legend=" = (max_len, d_model)",
                  hints={(16, 50): "rows are positions, columns are dimensions: (max_len, d_model)"})
    expect(pe.dtype == torch.float32, f"dtype is {pe.dtype}, expected torch.float32",
           "hint: the table is added to float32 embeddings; a float64 table would turn them into float64")


@case("positional_encoding", "row 0 (position 0) is [0, 1, 0, 1, ...]: sin 0 = 0, cos 0 = 1")
def pe_position_zero(fn):
    _pe_case(fn, 10, 8, rows=0)


@case("positional_encoding",
      "closed form (64, 16): PE[p, 2i] = sin(p / 10000^(2i/d_model)), PE[p, 2i+1] = cos(...)")
def pe_closed_form(fn):
    _pe_case(fn, 64, 16)


@case("positional_encoding", "other sizes: (1, 6), (30, 10), (512, 128)")
def pe_other_sizes(fn):
    for max_len, d_model in ((1, 6), (30, 10), (512, 128)):
        _pe_case(fn, max_len, d_model)


# ==============================================================================================
# encoder_block: TransformerEncoderBlock(d_model, n_heads, d_ff, dropout=0.0, norm_first=False)
def _make_block(cls, norm_first, d_model=16, n_heads=4, d_ff=32):
    block = cls(d_model, n_heads, d_ff, dropout=0.0, norm_first=norm_first)
    expect(isinstance(block, nn.Module), f"TransformerEncoderBlock(...) is {describe(block)}, not an nn.Module")
    ref = nn.TransformerEncoderLayer(d_model, n_heads, d_ff, dropout=0.0, batch_first=True, norm_first=norm_first)
    _randomize(ref)
    block.eval()
    ref.eval()
    P = {"attn": _copy_attention(block, ref.self_attn, prefix="self_attn."), "eps": ref.norm1.eps}
    _copy_linear(block, "feed_forward.linear1", ref.linear1.weight, ref.linear1.bias,
                 "nn.TransformerEncoderLayer's linear1", "linear1 maps d_model -> d_ff: nn.Linear(d_model, d_ff)")
    _copy_linear(block, "feed_forward.linear2", ref.linear2.weight, ref.linear2.bias,
                 "nn.TransformerEncoderLayer's linear2", "linear2 maps d_ff -> d_model: nn.Linear(d_ff, d_model)")
    P["ff"] = tuple(t.detach().clone() for t in (ref.linear1.weight, ref.linear1.bias,
                                                 ref.linear2.weight, ref.linear2.bias))
    for name in ("norm1", "norm2"):
        ours, theirs = _attr(block, name), getattr(ref, name)
        expect(isinstance(ours, nn.LayerNorm), f"{name}: expected an nn.LayerNorm named {name}, "
                                               f"found {describe(ours) if ours is not None else 'nothing'}",
               "hint: norm1 goes with the attention sublayer, norm2 with the feed-forward")
        with torch.no_grad():
            ours.weight.copy_(theirs.weight)
            ours.bias.copy_(theirs.bias)
        P[name] = (theirs.weight.detach().clone(), theirs.bias.detach().clone())
    return block, ref, P


def block_variant(x, P, n_heads, mask, norm_first, mistake=None):
    """The encoder block written out, or with one known mistake."""
    d_model = x.size(-1)

    def attn(h):
        use = "inverted" if mistake == "mask_inverted" else "as_given"
        return mha_variant(h, h, h, P["attn"], n_heads, mask, mask_use=use)[0]

    def ff(h):
        w1, b1, w2, b2 = P["ff"]
        return F.linear(F.relu(F.linear(h, w1, b1)), w2, b2)

    def ln(which):
        w, b = P[which]
        return lambda h: F.layer_norm(h, (d_model,), w, b, P["eps"])

    norm1, norm2 = (ln("norm2"), ln("norm1")) if mistake == "norms_swapped" else (ln("norm1"), ln("norm2"))
    no_attn_res = mistake in ("no_attn_residual", "no_residual")
    no_ff_res = mistake in ("no_ff_residual", "no_residual")
    if mistake == "norm_on_sublayer":  # x + norm(sublayer(x))
        x1 = x + norm1(attn(x))
        return x1 + norm2(ff(x1))
    pre = norm_first != (mistake == "other_placement")
    if pre:
        a = attn(norm1(x))
        x1 = a if no_attn_res else x + a
        f = ff(norm2(x if mistake == "ff_on_input" else x1))
        return f if no_ff_res else x1 + f
    a = attn(x)
    x1 = norm1(a if no_attn_res else x + a)
    f = ff(x if mistake == "ff_on_input" else x1)
    return norm2(f if no_ff_res else x1 + f)


def _block_mistakes(norm_first):
    placement = ("with norm_first=True your block computes post-LN, norm(x + sublayer(x)); pre-LN "
                 "normalises the sublayer's input and adds the sublayer's output to x unnormalised: "
                 "x = x + sublayer(norm(x))") if norm_first else (
        "with norm_first=False your block computes pre-LN, x + sublayer(norm(x)); post-LN (the paper) "
        "adds first, then normalises: x = norm(x + sublayer(x))")
    return [
        (placement, "other_placement"),
        ("the attention sublayer has no residual connection: add its input back, x + attention(...)",
         "no_attn_residual"),
        ("the feed-forward sublayer has no residual connection: add its input back, x + feed_forward(...)",
         "no_ff_residual"),
        ("neither sublayer has its residual connection (x + sublayer(...))", "no_residual"),
        ("the LayerNorm is in the wrong place, on the sublayer's output only, x + norm(sublayer(x)): "
         "post-LN normalises the sum, pre-LN the sublayer's input", "norm_on_sublayer"),
        ("norm1 and norm2 are swapped: norm1 goes with the attention sublayer, norm2 with the feed-forward "
         "(the checker gave them different weights)", "norms_swapped"),
        ("the feed-forward reads the block's input instead of the attention sublayer's result", "ff_on_input"),
        ("the mask is used the wrong way round: True = may attend", "mask_inverted"),
    ]


def _call_block(block, x, mask):
    result = block(x) if mask is None else block(x, mask)
    expect(torch.is_tensor(result), f"forward(x, mask) returned {describe(result)}, expected a tensor",
           "hint: return x alone (the weights only with return_weights=True)")
    return result


def _reference_block(ref, x, mask):
    """nn.TransformerEncoderLayer with our mask (True = may attend) as its src_mask (True = blocked)."""
    with torch.enable_grad():  # PyTorch's plain path (the fused inference path is another code path)
        return ref(x, src_mask=_torch_attn_mask(mask, x.size(0), ref.self_attn.num_heads, x.size(1),
                                                x.size(1))).detach()


def _block_case(cls, norm_first, mask_kind=None, B=2, T=5, d_model=16, n_heads=4):
    block, ref, P = _make_block(cls, norm_first, d_model, n_heads)
    x = _randn(B, T, d_model)
    mask = {"causal": _causal(B, T, T), "padding": _padding(B, T, T), None: None}[mask_kind]
    output = _call_block(block, x, mask)
    expected = _reference_block(ref, x, mask)
    variants = [(hint, functools.partial(lambda m: block_variant(x, P, n_heads, mask, norm_first, m), m))
                for hint, m in _block_mistakes(norm_first)]
    compare("output", output, expected, variants=variants)


BLOCK_ERROR = "self_attn(q, k, v, mask) returns (output, weights): take output = result[0]"


@case("encoder_block", "shapes: TransformerEncoderBlock(16, 4, 32) maps (2, 5, 16) to (2, 5, 16)")
def block_shapes(cls):
    block = cls(16, 4, 32, dropout=0.0, norm_first=False).eval()
    _expect_shape("output", _call_block(block, _randn(2, 5, 16), None), (2, 5, 16), legend=" = (B, T, d_model)")


@case("encoder_block", "post-LN, no mask: equals nn.TransformerEncoderLayer (weights copied)",
      on_error=BLOCK_ERROR)
def block_post_no_mask(cls):
    _block_case(cls, False)


@case("encoder_block", "post-LN, causal mask (T, T)", on_error=BLOCK_ERROR)
def block_post_causal(cls):
    _block_case(cls, False, "causal")


@case("encoder_block", "post-LN, padding mask (B, 1, T): the last 2 positions of example 1 are padding",
      on_error=BLOCK_ERROR)
def block_post_padding(cls):
    _block_case(cls, False, "padding")


@case("encoder_block", "pre-LN (norm_first=True), no mask", on_error=BLOCK_ERROR)
def block_pre_no_mask(cls):
    _block_case(cls, True)


@case("encoder_block", "pre-LN, causal mask (T, T)", on_error=BLOCK_ERROR)
def block_pre_causal(cls):
    _block_case(cls, True, "causal")


@case("encoder_block", "pre-LN, padding mask (B, 1, T)", on_error=BLOCK_ERROR)
def block_pre_padding(cls):
    _block_case(cls, True, "padding")


@case("encoder_block", "queries with nothing to attend to (causal + left padding): no NaN",
      on_error=BLOCK_ERROR)
def block_empty_rows(cls):
    for norm_first in (False, True):
        block, ref, P = _make_block(cls, norm_first)
        x = _randn(2, 5, 16)
        keep = torch.ones(2, 5, dtype=torch.bool)
        keep[1, :2] = False  # example 1 starts with 2 padding positions: queries 0 and 1 see nothing
        mask = _causal(2, 5, 5) & keep[:, None, :]  # (B, T, T)
        output = _call_block(block, x, mask)
        _expect_shape("output", output, (2, 5, 16))
        _expect_no_nan(f"norm_first={norm_first}: output", output, "(a query with every key blocked)",
                       "the attention must give 0 weights, not NaN, to a query with nothing to attend to")
        causal = _causal(1, 5, 5)
        variants = [(hint, functools.partial(lambda m: block_variant(x[:1], P, 4, causal, norm_first, m), m))
                    for hint, m in _block_mistakes(norm_first)]
        compare(f"norm_first={norm_first}, example 0 (no padding)", output[:1],
                _reference_block(ref, x[:1], causal), variants=variants)


# ==============================================================================================
# beam_search: beam_search(model, src, beam_size, max_len, length_penalty=0.0) -> (tokens, scores)
@functools.lru_cache(maxsize=1)
def _tokens():
    """PAD, BOS, EOS and the first digit's token, from lesson 05 (the beam search's conventions)."""
    from common import load_lesson

    lesson = load_lesson(5)
    return lesson.PAD, lesson.BOS, lesson.EOS, lesson.FIRST_DIGIT


class TableModel(nn.Module):
    """A stand-in for lesson 05's model with its decoding interface and nothing to learn.

    The interface lesson 05's decoders use, as Seq2SeqTransformer has it:
    encode(src) -> (memory, src_mask); decode(tgt_in, memory, src_mask) -> logits (B, T_tgt, vocab_size);
    new_cache() -> a list; decode_next(ys, memory, src_mask, cache) -> logits (B, vocab_size) of the
    next token only; forward(src, tgt_in) = decode(tgt_in, *encode(src)); vocab_size; eval()/train().
    The logits for a prefix come from `table` when it lists that prefix, else from a random generator
    seeded by (source, prefix), so they are fixed, and exhaustive search can score every possible answer.
    Wrong use of memory or of the cache is named at the call (CheckFailed) where the real model would
    fail with a shape error or, for a cache that was not reordered, silently give other scores.
    """

    def __init__(self, n_digits=2, spread=1.5, table=None):
        super().__init__()
        self.PAD, self.BOS, self.EOS, self.FIRST_DIGIT = _tokens()
        self.vocab_size = n_digits + self.FIRST_DIGIT
        self.n_digits = n_digits
        self.spread = spread
        self.table = table or {}
        self._table_cache = {}
        # One unused parameter, so `next(model.parameters()).device` works as with a real model.
        self.anchor = nn.Parameter(torch.zeros(1), requires_grad=False)

    def encode(self, src):
        return src.float().unsqueeze(-1), None  # the memory is just the source

    def _logits(self, source, prefix):
        key = (source, prefix)
        if key not in self._table_cache:
            if prefix in self.table:
                self._table_cache[key] = torch.tensor(self.table[prefix], dtype=torch.float32)
            else:
                rng = random.Random(f"{source}|{prefix}")
                self._table_cache[key] = torch.tensor([rng.gauss(0.0, self.spread) for _ in range(self.vocab_size)])
        return self._table_cache[key]

    def _sources(self, memory, tgt_in, method):
        """The source of each row of tgt_in, read from memory (which must have one row per row)."""
        expect(torch.is_tensor(tgt_in) and tgt_in.dim() == 2 and not tgt_in.dtype.is_floating_point,
               f"model.{method}: expected the tokens so far as an integer tensor (rows, t), got {describe(tgt_in)}",
               "hint: each row is one hypothesis: BOS, then the tokens chosen so far")
        expect(memory.size(0) == tgt_in.size(0),
               f"model.{method}: memory has {memory.size(0)} rows but the tokens have {tgt_in.size(0)}: "
               "the model needs one row of memory per hypothesis",
               "hint: repeat each example's memory for its beam_size hypotheses, "
               "memory.repeat_interleave(beam_size, dim=0) (and src_mask the same way when it is not None)")
        return [tuple(row) for row in memory[..., 0].long().tolist()]

    def decode(self, tgt_in, memory, src_mask=None):
        sources = self._sources(memory, tgt_in, "decode")
        B, T = tgt_in.shape
        rows = tgt_in.tolist()
        logits = torch.empty(B, T, self.vocab_size)
        for b in range(B):
            for t in range(T):
                logits[b, t] = self._logits(sources[b], tuple(rows[b][: t + 1]))
        return logits

    def new_cache(self):
        """An empty cache for decode_next: one slot, as the real model has one per decoder layer."""
        return [None]

    def decode_next(self, ys, memory, src_mask, cache):
        """Scores for the next token only, (B, vocab_size), given all tokens so far ys (B, t).

        As in the real model, `cache` keeps what earlier calls saw, one row per row of ys (here the
        tokens, a (B, t - 1) tensor), and a beam search reorders it with its hypotheses,
        cache = [c[rows] for c in cache]. Unlike the real model this one checks that the cache matches
        ys, so a cache that was not kept in step is named instead of giving other scores.
        """
        sources = self._sources(memory, ys, "decode_next")
        fix = ("hint: make one cache per search, cache = model.new_cache(), pass it to every decode_next "
               "call, and whenever you keep rows `rows` of ys keep the same rows of the cache: "
               "cache = [c[rows] for c in cache]. (Or use no cache: model.decode(ys, memory, src_mask)[:, -1].)")
        expect(isinstance(cache, list) and len(cache) == 1,
               f"model.decode_next: cache should be the list model.new_cache() made (or that list reordered), "
               f"got {describe(cache)}", fix)
        seen, before = cache[0], ys[:, :-1]
        if seen is None:
            expect(before.size(1) == 0, f"model.decode_next: ys has {ys.size(1)} tokens per row but the cache is "
                                        "new: the model has not seen the earlier ones", fix)
        else:
            expect(torch.is_tensor(seen) and tuple(seen.shape) == tuple(before.shape),
                   f"model.decode_next: the cache holds {describe(seen)}, the earlier tokens of ys are "
                   f"{shape_str(before.shape)} (rows, tokens): the cache is not in step with ys", fix)
            differ = (seen != before).any(dim=1).nonzero()
            if len(differ):
                r = int(differ[0])
                raise CheckFailed(f"model.decode_next: row {r} of ys is {_words(self, ys[r].tolist())} but row {r} "
                                  f"of the cache was made for {_words(self, seen[r].tolist())} "
                                  f"({len(differ)} of {ys.size(0)} rows differ): the cache did not follow the "
                                  "hypotheses", fix)
        cache[0] = ys.clone()  # filled in place, as the real model fills its list
        rows = ys.tolist()
        return torch.stack([self._logits(sources[b], tuple(rows[b])) for b in range(len(rows))])

    def forward(self, src, tgt_in):
        memory, src_mask = self.encode(src)
        return self.decode(tgt_in, memory, src_mask)


def _restricted_log_probs(model, logits, renormalize=False):
    """log_softmax over the vocabulary, then PAD and BOS ruled out (lesson 05's rule)."""
    if renormalize:  # the mistake: rule out first, then normalise over the allowed tokens
        logits = logits.clone()
        logits[..., [model.PAD, model.BOS]] = NEG_INF
        return F.log_softmax(logits, dim=-1)
    log_probs = F.log_softmax(logits, dim=-1).clone()
    log_probs[..., [model.PAD, model.BOS]] = NEG_INF
    return log_probs


def sequence_scores(model, src_row, candidates, renormalize=False, skip_eos=False):
    """Sum of log-probabilities of each candidate answer (a list of token lists) for one source."""
    L = max(len(c) for c in candidates)
    tokens = torch.full((len(candidates), L), model.PAD, dtype=torch.long)
    for i, c in enumerate(candidates):
        tokens[i, : len(c)] = torch.tensor(c, dtype=torch.long)
    tgt_in = torch.cat([torch.full((len(candidates), 1), model.BOS), tokens[:, :-1]], dim=1)
    src = src_row.unsqueeze(0).expand(len(candidates), -1)
    log_probs = _restricted_log_probs(model, model(src, tgt_in), renormalize)
    picked = log_probs.gather(2, tokens[..., None]).squeeze(2)
    counted = tokens != model.PAD
    if skip_eos:
        counted &= tokens != model.EOS
    return torch.where(counted, picked, torch.zeros_like(picked)).sum(1)


def all_answers(model, max_len):
    """Every possible output: digits then EOS (at most max_len tokens), or max_len digits (unfinished)."""
    digits = list(range(model.FIRST_DIGIT, model.vocab_size))
    answers, prefixes = [], [[]]
    for length in range(max_len):
        answers += [p + [model.EOS] for p in prefixes]
        prefixes = [p + [d] for p in prefixes for d in digits]
    return answers + prefixes  # the unfinished ones have exactly max_len digits


def exhaustive_best(model, src_row, max_len, length_penalty=0.0, **rule):
    answers = all_answers(model, max_len)
    scores = sequence_scores(model, src_row, answers, **rule)
    lengths = torch.tensor([len(a) for a in answers], dtype=torch.float32)
    ranking = scores / lengths.clamp(min=1) ** length_penalty if length_penalty else scores
    best = int(ranking.argmax())
    return answers[best], float(scores[best])


def greedy(model, src_row, max_len):
    answer = []
    memory, src_mask = model.encode(src_row[None])
    while len(answer) < max_len:
        tgt_in = torch.tensor([[model.BOS] + answer])
        token = int(_restricted_log_probs(model, model.decode(tgt_in, memory, src_mask)[0, -1]).argmax())
        answer.append(token)
        if token == model.EOS:
            break
    return answer


def _answer(model, row):
    """A returned row as a token list: cut at the first EOS (kept) or at the first PAD."""
    out = []
    for token in row.tolist():
        if token == model.PAD:
            break
        out.append(token)
        if token == model.EOS:
            break
    return out


def _words(model, answer):
    """Tokens for reading: digits as digits, EOS as EOS."""
    names = {model.PAD: "PAD", model.BOS: "BOS", model.EOS: "EOS"}
    return "[" + " ".join(names.get(t, str(t - model.FIRST_DIGIT)) for t in answer) + "]"


def _run_beam(fn, model, src, beam_size, max_len, **kwargs):
    result = fn(model, src, beam_size, max_len, **kwargs)
    tokens, scores = _expect_pair(result, "(tokens, scores)")
    B = src.size(0)
    expect(torch.is_tensor(tokens) and tokens.dim() == 2 and tokens.size(0) == B,
           f"tokens: expected a tensor (B={B}, L), got {describe(tokens)}")
    expect(tokens.size(1) <= max_len, f"tokens has {tokens.size(1)} columns, more than max_len={max_len}",
           "hint: max_len counts the generated tokens (answer + EOS), BOS not included")
    expect(not tokens.dtype.is_floating_point, f"tokens has dtype {tokens.dtype}, expected integer token ids")
    expect(torch.is_tensor(scores) and tuple(scores.shape) == (B,),
           f"scores: expected a tensor of shape ({B},), got {describe(scores)}",
           "hint: one summed log-probability per example: the best hypothesis's")
    return tokens, scores


def _sources(model, B, T=3):
    return torch.randint(model.FIRST_DIGIT, model.vocab_size, (B, T))


@case("beam_search", "shapes: src (3, 4), beam_size=2, max_len=4 -> tokens (3, L <= 4), scores (3,)")
def beam_shapes(fn):
    model = TableModel()
    _run_beam(fn, model, _sources(model, 3, 4), 2, 4)


@case("beam_search", "format: digits, then EOS, then only PAD")
def beam_format(fn):
    model = TableModel(n_digits=3, spread=1.0)
    tokens, _ = _run_beam(fn, model, _sources(model, 6), 3, 4)
    for b, row in enumerate(tokens.tolist()):
        seen_end = False
        for t, token in enumerate(row):
            if seen_end:
                expect(token == model.PAD, f"row {b}: {_words(model, row)} has {_words(model, [token])} at "
                                           f"position {t}, after the answer ended",
                       "hint: a hypothesis that produced EOS is finished: it is not extended any more "
                       "(only PAD follows), and it keeps its score")
            elif token in (model.EOS, model.PAD):
                seen_end = True
            else:
                expect(token != model.BOS, f"row {b}: {_words(model, row)} contains BOS",
                       "hint: the answer starts after BOS; leave BOS out of the result, and rule out "
                       "PAD and BOS as next tokens (restrict_logits)")


@case("beam_search", "beam_size=1 returns exactly what greedy decoding returns")
def beam_one_is_greedy(fn):
    model = TableModel(n_digits=3)
    src = _sources(model, 5)
    tokens, _ = _run_beam(fn, model, src, 1, 4)
    for b in range(src.size(0)):
        expected = greedy(model, src[b], 4)
        got = _answer(model, tokens[b])
        expect(got == expected, f"example {b}: greedy decoding gives {_words(model, expected)}, "
                                f"beam_size=1 gave {_words(model, got)}",
               "hint: with one hypothesis, beam search keeps the single best extension at every step, as "
               "greedy does; rule out PAD and BOS (restrict_logits) and stop a hypothesis at EOS")


@case("beam_search", "scores: the sum of the log-probabilities of the returned tokens")
def beam_scores(fn):
    model = TableModel(n_digits=2)
    src = _sources(model, 4)
    tokens, scores = _run_beam(fn, model, src, 3, 3)
    for b in range(src.size(0)):
        answer = _answer(model, tokens[b]) or [model.PAD]
        expected = float(sequence_scores(model, src[b], [answer])[0])
        got = float(scores[b])
        if abs(got - expected) > 1e-4 * max(1.0, abs(expected)):
            hint = ""
            whole_row = [t for t in tokens[b].tolist() if t != model.PAD]
            if len(whole_row) > len(answer) and abs(
                    got - float(sequence_scores(model, src[b], [whole_row])[0])) < 1e-4:
                hint = ("the score includes tokens after EOS: a finished hypothesis is not extended, "
                        "its score stays frozen")
            elif abs(got - float(sequence_scores(model, src[b], [answer], skip_eos=True)[0])) < 1e-4:
                hint = "EOS's log-probability is left out: it counts, like every generated token"
            elif abs(got - float(sequence_scores(model, src[b], [answer], renormalize=True)[0])) < 1e-4:
                hint = ("these are log-probabilities renormalised after ruling out PAD and BOS; the lesson "
                        "takes log_softmax over the whole vocabulary first, then rules them out")
            elif abs(got - expected / len(answer)) < 1e-4:
                hint = "this is the mean log-probability per token; return the sum"
            elif abs(got - math.exp(expected)) < 1e-4:
                hint = "this is a probability; return the summed log-probabilities"
            raise CheckFailed(f"example {b}: answer {_words(model, answer)} has log-probability "
                              f"{expected:.4f}, the returned score is {got:.4f}", hint and "hint: " + hint)


@case("beam_search", "every candidate kept (beam_size=15, 2 digits, max_len=3): exhaustive search's best")
def beam_exhaustive(fn):
    model = TableModel(n_digits=2, spread=1.2)
    src = _sources(model, 6)
    n_candidates = len(all_answers(model, 3))
    tokens, _ = _run_beam(fn, model, src, n_candidates, 3)
    for b in range(src.size(0)):
        best, best_score = exhaustive_best(model, src[b], 3)
        got = _answer(model, tokens[b])
        if got != best:
            got_score = float(sequence_scores(model, src[b], [got or [model.PAD]])[0])
            hint = ("this is greedy decoding's answer: keep the beam_size best hypotheses at every step, "
                    "not just one" if got == greedy(model, src[b], 3) else
                    "this is the best answer by log-probability renormalised after ruling out PAD and BOS; "
                    "take log_softmax over the whole vocabulary, then rule them out"
                    if got == exhaustive_best(model, src[b], 3, renormalize=True)[0] else
                    "this is the best answer by mean log-probability per token; with length_penalty=0 "
                    "rank by the plain sum" if got == exhaustive_best(model, src[b], 3, length_penalty=1.0)[0]
                    else "a finished hypothesis (ended by EOS) must stay in the beam with its score and "
                         "compete with the unfinished ones")
            raise CheckFailed(f"example {b}: the best of all {n_candidates} possible answers is "
                              f"{_words(model, best)} (log-probability {best_score:.4f}); you returned "
                              f"{_words(model, got)} ({got_score:.4f})", "hint: " + hint)


def _greedy_trap():
    """A model where the greedy first step leads to a worse answer than the runner-up."""
    PAD, BOS, EOS, D0 = _tokens()
    D1 = D0 + 1

    def row(**p):  # probabilities -> logits (PAD and BOS almost impossible)
        probs = [1e-6] * (D0 + 2)
        for token, value in p.items():
            probs[{"EOS": EOS, "d0": D0, "d1": D1}[token]] = value
        return [math.log(x) for x in probs]

    table = {(BOS,): row(EOS=0.1, d0=0.5, d1=0.4),         # greedy takes d0 ...
             (BOS, D0): row(EOS=0.34, d0=0.33, d1=0.33),   # ... after which nothing is likely: 0.5 * 0.34
             (BOS, D1): row(EOS=0.9, d0=0.05, d1=0.05)}    # d1 then EOS: 0.4 * 0.9 = 0.36, the best
    for a in (D0, D1):
        for b in (D0, D1):
            table[(BOS, a, b)] = row(EOS=0.34, d0=0.33, d1=0.33)
    return TableModel(n_digits=2, table=table)


@case("beam_search", "where greedy is wrong: beam_size=2 finds [1 EOS] (p 0.36), greedy [0 EOS] (p 0.17)")
def beam_beats_greedy(fn):
    model = _greedy_trap()
    src = _sources(model, 2)
    tokens, _ = _run_beam(fn, model, src, 2, 3)
    best = [model.FIRST_DIGIT + 1, model.EOS]
    for b in range(src.size(0)):
        got = _answer(model, tokens[b])
        expect(got == best, f"example {b}: expected {_words(model, best)}, got {_words(model, got)}",
               "hint: " + ("this is greedy's answer: after step 1 keep both d0 (0.5) and d1 (0.4), then extend "
                           "both and keep the 2 best of all their extensions" if got == greedy(model, src[b], 3)
                           else "score each hypothesis by the sum of its tokens' log-probabilities"))


@case("beam_search", "length_penalty=1.0, every candidate kept: the best by score / length")
def beam_length_penalty(fn):
    model = TableModel(n_digits=2, spread=1.2)
    src = _sources(model, 6)
    tokens, _ = _run_beam(fn, model, src, len(all_answers(model, 3)), 3, length_penalty=1.0)
    for b in range(src.size(0)):
        best, best_score = exhaustive_best(model, src[b], 3, length_penalty=1.0)
        got = _answer(model, tokens[b])
        if got != best:
            hint = ("this is greedy decoding's answer: keep the beam_size best hypotheses at every step"
                    if got == greedy(model, src[b], 3) else
                    "this is the best by plain log-probability: length_penalty was ignored"
                    if got == exhaustive_best(model, src[b], 3)[0] else
                    "rank the final hypotheses by score / length ** length_penalty, where length counts the "
                    "generated tokens up to and including EOS")
            raise CheckFailed(f"example {b}: the best answer by log-probability / length is {_words(model, best)} "
                              f"({best_score:.4f} / {len(best)}); you returned {_words(model, got)}", "hint: " + hint)
