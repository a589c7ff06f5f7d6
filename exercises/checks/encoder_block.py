"""Checks of the `encoder_block` exercise: TransformerEncoderBlock(d_model, n_heads, d_ff, norm_first).

The learner's block gets the weights of PyTorch's nn.TransformerEncoderLayer(batch_first=True,
dropout=0.0) copied into self_attn, feed_forward.linear1/linear2, norm1 and norm2 (make_block), and
must return the same output, post-LN and pre-LN, with no mask, a causal and a padding mask.
block_variant writes the block out with one known mistake at a time (a missing residual, LayerNorm
in the wrong place, ...) to name the one made. The attention inside it comes from the
multi_head_attention checks (weight copying, masks, mha_variant).
"""
import functools

import torch
import torch.nn as nn
import torch.nn.functional as F

from exercises.checks.helpers import (Checklist, call_keeping_inputs, compare, describe, expect, expect_kind,
                                      expect_no_nan, expect_shape, randn)
from exercises.checks.multi_head_attention import (causal_mask, copy_attention, copy_linear, mha_variant,
                                                   module_attr, padding_mask, randomize, torch_attn_mask)

CHECKS = Checklist()


def make_block(cls, norm_first, d_model=16, n_heads=4, d_ff=32):
    block = cls(d_model, n_heads, d_ff, dropout=0.0, norm_first=norm_first)
    expect(isinstance(block, nn.Module), f"TransformerEncoderBlock(...) is {describe(block)}, not an nn.Module")
    ref = nn.TransformerEncoderLayer(d_model, n_heads, d_ff, dropout=0.0, batch_first=True, norm_first=norm_first)
    randomize(ref)
    block.eval()
    ref.eval()
    P = {"attn": copy_attention(block, ref.self_attn, prefix="self_attn."), "eps": ref.norm1.eps}
    copy_linear(block, "feed_forward.linear1", ref.linear1.weight, ref.linear1.bias,
                "nn.TransformerEncoderLayer's linear1", "linear1 maps d_model -> d_ff: nn.Linear(d_model, d_ff)")
    copy_linear(block, "feed_forward.linear2", ref.linear2.weight, ref.linear2.bias,
                "nn.TransformerEncoderLayer's linear2", "linear2 maps d_ff -> d_model: nn.Linear(d_ff, d_model)")
    P["ff"] = tuple(t.detach().clone() for t in (ref.linear1.weight, ref.linear1.bias,
                                                 ref.linear2.weight, ref.linear2.bias))
    for name in ("norm1", "norm2"):
        ours, theirs = module_attr(block, name), getattr(ref, name)
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
    result = (call_keeping_inputs(block, x, names=("x",)) if mask is None else
              call_keeping_inputs(block, x, mask, names=("x", "mask")))
    expect(torch.is_tensor(result) or not isinstance(result, (tuple, list)),
           f"forward(x, mask) returned {describe(result)}, expected a tensor",
           "hint: return x alone (the weights only with return_weights=True)")
    expect_kind("forward(x, mask)", result)
    return result


def reference_block(ref, x, mask):
    """nn.TransformerEncoderLayer with our mask (True = may attend) as its src_mask (True = blocked)."""
    with torch.enable_grad():  # PyTorch's plain path (the fused inference path is another code path)
        return ref(x, src_mask=torch_attn_mask(mask, x.size(0), ref.self_attn.num_heads, x.size(1),
                                               x.size(1))).detach()


def _block_case(cls, norm_first, mask_kind=None, B=2, T=5, d_model=16, n_heads=4):
    block, ref, P = make_block(cls, norm_first, d_model, n_heads)
    x = randn(B, T, d_model)
    mask = {"causal": causal_mask(B, T, T), "padding": padding_mask(B, T, T), None: None}[mask_kind]
    output = _call_block(block, x, mask)
    expected = reference_block(ref, x, mask)
    variants = [(hint, functools.partial(lambda m: block_variant(x, P, n_heads, mask, norm_first, m), m))
                for hint, m in _block_mistakes(norm_first)]
    compare("output", output, expected, variants=variants)


BLOCK_ERROR = "self_attn(q, k, v, mask) returns (output, weights): take output = result[0]"


@CHECKS.add("shapes: TransformerEncoderBlock(16, 4, 32) maps (2, 5, 16) to (2, 5, 16)")
def block_shapes(cls):
    block = cls(16, 4, 32, dropout=0.0, norm_first=False).eval()
    expect_shape("output", _call_block(block, randn(2, 5, 16), None), (2, 5, 16), legend=" = (B, T, d_model)")


@CHECKS.add("post-LN, no mask: equals nn.TransformerEncoderLayer (weights copied)",
            on_error=BLOCK_ERROR)
def block_post_no_mask(cls):
    _block_case(cls, False)


@CHECKS.add("post-LN, causal mask (T, T)", on_error=BLOCK_ERROR)
def block_post_causal(cls):
    _block_case(cls, False, "causal")


@CHECKS.add("post-LN, padding mask (B, 1, T): the last 2 positions of example 1 are padding",
            on_error=BLOCK_ERROR)
def block_post_padding(cls):
    _block_case(cls, False, "padding")


@CHECKS.add("pre-LN (norm_first=True), no mask", on_error=BLOCK_ERROR)
def block_pre_no_mask(cls):
    _block_case(cls, True)


@CHECKS.add("pre-LN, causal mask (T, T)", on_error=BLOCK_ERROR)
def block_pre_causal(cls):
    _block_case(cls, True, "causal")


@CHECKS.add("pre-LN, padding mask (B, 1, T)", on_error=BLOCK_ERROR)
def block_pre_padding(cls):
    _block_case(cls, True, "padding")


@CHECKS.add("queries with nothing to attend to (causal + left padding): no NaN",
            on_error=BLOCK_ERROR)
def block_empty_rows(cls):
    for norm_first in (False, True):
        block, ref, P = make_block(cls, norm_first)
        x = randn(2, 5, 16)
        keep = torch.ones(2, 5, dtype=torch.bool)
        keep[1, :2] = False  # example 1 starts with 2 padding positions: queries 0 and 1 see nothing
        mask = causal_mask(2, 5, 5) & keep[:, None, :]  # (B, T, T)
        output = _call_block(block, x, mask)
        expect_shape("output", output, (2, 5, 16))
        expect_no_nan(f"norm_first={norm_first}: output", output, "(a query with every key blocked)",
                      "the attention must give 0 weights, not NaN, to a query with nothing to attend to")
        causal = causal_mask(1, 5, 5)
        variants = [(hint, functools.partial(lambda m: block_variant(x[:1], P, 4, causal, norm_first, m), m))
                    for hint, m in _block_mistakes(norm_first)]
        compare(f"norm_first={norm_first}, example 0 (no padding)", output[:1],
                reference_block(ref, x[:1], causal), variants=variants)


