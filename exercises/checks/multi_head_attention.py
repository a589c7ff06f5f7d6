"""Checks of the `multi_head_attention` exercise: MultiHeadAttention(d_model, n_heads).

The learner's module gets the weights of PyTorch's nn.MultiheadAttention(batch_first=True) copied
into its W_q, W_k, W_v, W_o (copy_attention) and must return the same output and per-head weights
for each mask shape the docstring lists. nn.MultiheadAttention takes the opposite mask convention
(True = blocked), so the checker inverts our masks for it (torch_attn_mask). mha_variant writes
multi-head attention out with one known mistake at a time (MHA_MISTAKES) to name the one made.

The encoder block's checks (encoder_block.py) reuse the weight copying, masks and mha_variant.
"""
import functools
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from exercises.checks.helpers import (NEG_INF, CheckFailed, Checklist, call_keeping_inputs, compare, describe, expect,
                                      expect_no_nan, expect_pair, expect_shape, random_mask, randn, shape_str)

CHECKS = Checklist()


def randomize(module):
    """Give every bias and LayerNorm a random value, so a missing or misplaced one shows."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("bias"):
                p.normal_(0.0, 0.2)
            elif p.dim() == 1:  # LayerNorm weights
                p.copy_(1.0 + 0.3 * torch.randn_like(p))


def module_attr(obj, dotted):
    for part in dotted.split("."):
        obj = getattr(obj, part, None)
    return obj


def copy_linear(ours, path, weight, bias, source, shape_hint):
    """Copy PyTorch's weight and bias (from `source`, in words) into the learner's nn.Linear at `path`."""
    layer = module_attr(ours, path)
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


def copy_attention(ours, ref, prefix=""):
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
        copy_linear(ours, prefix + name, w, b, sources[name],
                    f"one nn.Linear(d_model, d_model) = ({d}, {d}) holds every head's projection")
    return weights


def to_4d(mask):
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
    m = to_4d(mask)
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


def torch_attn_mask(mask, B, n_heads, T_q, T_k):
    """Our mask (True = may attend, any of our shapes) -> PyTorch's attn_mask (B * n_heads, T_q, T_k),
    True = blocked. (A padding mask could also go in key_padding_mask, True = padding; the checker
    avoids it because its first use imports sympy, which takes ~1.5 s.)"""
    if mask is None:
        return None
    return ~to_4d(mask).expand(B, n_heads, T_q, T_k).reshape(B * n_heads, T_q, T_k)


def reference_mha(ref, q, k, v, mask, n_heads):
    """nn.MultiheadAttention with our mask (True = may attend) turned into its attn_mask (True = blocked)."""
    attn_mask = torch_attn_mask(mask, q.size(0), n_heads, q.size(1), k.size(1))
    with torch.enable_grad():  # PyTorch's plain path (the fused inference path is another code path)
        output, weights = ref(q, k, v, attn_mask=attn_mask, need_weights=True, average_attn_weights=False)
    return output.detach(), weights.detach()


def _call_mha(module, q, k, v, mask):
    names = ("query", "key", "value")
    result = (call_keeping_inputs(module, q, k, v, names=names) if mask is None else
              call_keeping_inputs(module, q, k, v, names=names, mask=mask))
    return expect_pair(result)


def _mha_case(cls, B, T_q, T_k, mask_fn=None, d_model=16, n_heads=4, rows=None):
    """Compare with nn.MultiheadAttention on one mask case; `rows` picks the examples to compare."""
    module = _make_mha(cls, d_model, n_heads)
    ref = nn.MultiheadAttention(d_model, n_heads, dropout=0.0, bias=True, batch_first=True).eval()
    randomize(ref)
    W = copy_attention(module, ref)
    q, k, v = randn(B, T_q, d_model), randn(B, T_k, d_model), randn(B, T_k, d_model)
    mask = mask_fn(B, T_q, T_k) if mask_fn else None
    output, weights = _call_mha(module, q, k, v, mask)
    expected_output, expected_weights = reference_mha(ref, q, k, v, mask, n_heads)
    expect_shape("output", output, (B, T_q, d_model), legend=" = (B, T_q, d_model)", hints={
        (B, n_heads, T_q, d_model // n_heads): "the heads were not merged back: (B, n_heads, T_q, d_head) -> "
                                               "transpose(1, 2) -> reshape(B, T_q, d_model)"})
    expect_shape("weights", weights, (B, n_heads, T_q, T_k), legend=" = (B, n_heads, T_q, T_k)", hints={
        (B, T_q, T_k): "one attention map per head: keep the heads dimension (do not average over heads)"})
    pick = (lambda t: t[rows]) if rows is not None else (lambda t: t)
    hints_w = [(h, functools.partial(lambda f: pick(f()), f)) for h, f in _mha_hints(q, k, v, W, n_heads, mask, 1)]
    hints_o = [(h, functools.partial(lambda f: pick(f()), f)) for h, f in _mha_hints(q, k, v, W, n_heads, mask, 0)]
    which = "" if rows is None else f" of example {rows}"
    compare(f"weights{which} (n_heads, T_q, T_k)" if rows is not None else "weights (B, n_heads, T_q, T_k)",
            pick(weights), pick(expected_weights), variants=hints_w)
    compare(f"output{which}", pick(output), pick(expected_output), variants=hints_o)
    return output, weights


def causal_mask(B, T_q, T_k):
    return torch.tril(torch.ones(T_q, T_k, dtype=torch.bool))


def padding_mask(B, T_q, T_k):
    keep = torch.ones(B, T_k, dtype=torch.bool)
    keep[1, -2:] = False  # example 1: its last 2 keys are padding
    return keep[:, None, :]  # (B, 1, T_k)


MHA_3D_MASK_HINT = ("a 3-D mask (B, T_q or 1, T_k) needs .unsqueeze(1) to become (B, 1, T_q or 1, T_k) "
                    "and broadcast over the heads")


@CHECKS.add("shapes: B=2, T_q=3, T_k=5, d_model=16, n_heads=4")
def mha_shapes(cls):
    module = _make_mha(cls, 16, 4)
    output, weights = _call_mha(module, randn(2, 3, 16), randn(2, 5, 16), randn(2, 5, 16), None)
    expect_shape("output", output, (2, 3, 16), legend=" = (B, T_q, d_model)", hints={
        (2, 4, 3, 4): "the heads were not merged back: transpose(1, 2), then reshape(B, T_q, d_model)"})
    expect_shape("weights", weights, (2, 4, 3, 5), legend=" = (B, n_heads, T_q, T_k)", hints={
        (2, 3, 5): "one attention map per head: keep the heads dimension (do not average over heads)",
        (2, 4, 5, 3): "scores are q @ k.transpose(-2, -1): (T_q, d_head) @ (d_head, T_k) -> (T_q, T_k)"})


@CHECKS.add("no mask: output and weights equal nn.MultiheadAttention (weights copied)")
def mha_no_mask(cls):
    _mha_case(cls, 2, 5, 5)


@CHECKS.add("causal mask (T, T)", on_error="a (T, T) mask broadcasts over batch and heads")
def mha_causal(cls):
    _mha_case(cls, 2, 5, 5, causal_mask)


@CHECKS.add("padding mask (B, 1, T_k): the last 2 keys of example 1 are padding",
            on_error=MHA_3D_MASK_HINT)
def mha_padding(cls):
    _mha_case(cls, 2, 5, 5, padding_mask)


@CHECKS.add("cross-attention T_q=3 != T_k=6 with a padding mask (B, 1, T_k)",
            on_error=MHA_3D_MASK_HINT)
def mha_cross(cls):
    _mha_case(cls, 2, 3, 6, padding_mask)


@CHECKS.add("a mask per example (B, T_q, T_k): causal and padding together",
            on_error=MHA_3D_MASK_HINT)
def mha_per_example(cls):
    _mha_case(cls, 3, 5, 5, lambda B, T_q, T_k: causal_mask(B, T_q, T_k) & random_mask(B, 1, T_k, p_keep=0.7)
              | torch.eye(T_q, T_k, dtype=torch.bool))


@CHECKS.add("other sizes: d_model=24 with n_heads = 1, 3, 6")
def mha_other_sizes(cls):
    for n_heads in (1, 3, 6):
        try:
            _mha_case(cls, 2, 4, 4, causal_mask, d_model=24, n_heads=n_heads)
        except CheckFailed as failure:
            failure.lines[0] = f"n_heads={n_heads}: {failure.lines[0]}"
            raise


@CHECKS.add("an example whose keys are all padding: no NaN, the other one matches",
            on_error=MHA_3D_MASK_HINT)
def mha_empty_rows(cls):
    def all_padding(B, T_q, T_k):
        keep = torch.ones(B, T_k, dtype=torch.bool)
        keep[1] = False  # example 1: nothing to attend to
        return keep[:, None, :]

    output, weights = _mha_case(cls, 2, 4, 4, all_padding, rows=0)
    for name, t in (("output", output), ("weights", weights)):
        expect_no_nan(name, t, "(example 1, every key blocked)",
                      "softmax over a row of -inf is 0/0 = NaN: set the weights of blocked keys to 0 "
                       "after the softmax")
    expect(bool((weights[1].abs() < 1e-6).all()),
           f"weights of example 1 (every key blocked) should be 0, largest is {float(weights[1].abs().max()):.4g}",
           "hint: a query with nothing to attend to gets weight 0 everywhere, not equal weights")


