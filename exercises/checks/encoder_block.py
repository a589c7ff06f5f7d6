"""Checks of the `encoder_block` exercise: TransformerEncoderBlock(d_model, n_heads, d_ff, dropout, norm_first).

The learner's block gets the weights of PyTorch's nn.TransformerEncoderLayer(batch_first=True)
copied into self_attn, feed_forward.linear1/linear2, norm1 and norm2 (make_block), and must
return the same output, post-LN and pre-LN, with no mask, a causal and a padding mask.
block_variant writes the block out with one known mistake at a time (a missing residual, LayerNorm
in the wrong place, the mask not passed on, ...) to name the one made. With dropout > 0 the block
must equal PyTorch's in eval mode, at every call; in training mode each sublayer's output is
dropped at rate p before it is added to x (measured with sublayers made to output a constant).
The attention inside it comes from the multi_head_attention checks (weight copying, masks, mha_variant).
"""
import functools

import torch
import torch.nn as nn
import torch.nn.functional as F

from exercises.checks.helpers import (CheckFailed, Checklist, Hint, binomial_interval, call, call_keeping_inputs,
                                      compare, describe, expect, expect_kind, expect_no_nan, expect_shape, randn,
                                      reference_module, share_line)
from exercises.checks.multi_head_attention import (DROPOUT_IN_EVAL, causal_mask, copy_attention, copy_linear,
                                                   mha_variant, module_attr, padding_mask, randomize, torch_attn_mask)

CHECKS = Checklist()


def make_block(cls, norm_first, d_model=16, n_heads=4, d_ff=32, dropout=0.0):
    block = call(cls, d_model, n_heads, d_ff, dropout=dropout, norm_first=norm_first)
    expect(isinstance(block, nn.Module), f"TransformerEncoderBlock(...) is {describe(block)}, not an nn.Module")
    ref = reference_module(lambda: nn.TransformerEncoderLayer(d_model, n_heads, d_ff, dropout=dropout,
                                                              batch_first=True, norm_first=norm_first))
    randomize(ref)
    block.eval()
    ref.eval()
    P = {"attn": copy_attention(block, ref.self_attn, prefix="self_attn."), "eps": ref.norm1.eps}
    copy_linear(block, "feed_forward.linear1", ref.linear1.weight, ref.linear1.bias,
                "nn.TransformerEncoderLayer's linear1", "linear1 maps d_model -> d_ff: nn.Linear(d_model, d_ff).")
    copy_linear(block, "feed_forward.linear2", ref.linear2.weight, ref.linear2.bias,
                "nn.TransformerEncoderLayer's linear2", "linear2 maps d_ff -> d_model: nn.Linear(d_ff, d_model).")
    P["ff"] = tuple(t.detach().clone() for t in (ref.linear1.weight, ref.linear1.bias,
                                                 ref.linear2.weight, ref.linear2.bias))
    for name in ("norm1", "norm2"):
        ours, theirs = module_attr(block, name), getattr(ref, name)
        expect(isinstance(ours, nn.LayerNorm), f"{name}: expected an nn.LayerNorm named {name}, "
                                               f"found {describe(ours) if ours is not None else 'nothing'}",
               hint=Hint("attribute names", f"The checker found no nn.LayerNorm named {name}: look at the "
                         "constructor.", "norm1 goes with the attention sublayer, norm2 with the feed-forward; the "
                         "checker copies PyTorch's weights into them by name.", "keep the constructor the stub gives"))
        with torch.no_grad():
            ours.weight.copy_(theirs.weight)
            ours.bias.copy_(theirs.bias)
        P[name] = (theirs.weight.detach().clone(), theirs.bias.detach().clone())
    return block, ref, P


def block_variant(x, P, n_heads, mask, norm_first, mistake=None):
    """The encoder block written out, or with one known mistake."""
    d_model = x.size(-1)

    def attn(h):
        use = {"mask_inverted": "inverted", "mask_ignored": "ignored"}.get(mistake, "as_given")
        return mha_variant(h, h, h, P["attn"], n_heads, mask, mask_use=use)[0]

    def ff(h):
        w1, b1, w2, b2 = P["ff"]
        return F.linear(F.relu(F.linear(h, w1, b1)), w2, b2)

    def ln(which):
        w, b = P[which]
        return lambda h: F.layer_norm(h, (d_model,), w, b, P["eps"])

    norm1, norm2 = {"norms_swapped": (ln("norm2"), ln("norm1")), "norm1_twice": (ln("norm1"), ln("norm1")),
                    "norm2_twice": (ln("norm2"), ln("norm2"))}.get(mistake, (ln("norm1"), ln("norm2")))
    no_attn_res = mistake in ("no_attn_residual", "no_residual")
    no_ff_res = mistake in ("no_ff_residual", "no_residual")
    if mistake == "norm_on_sublayer":  # x + norm(sublayer(x))
        x1 = x + norm1(attn(x))
        return x1 + norm2(ff(x1))
    pre = norm_first != (mistake == "other_placement")
    if pre and mistake == "normed_residual":  # x = norm(x); x = x + sublayer(x): the residual adds to norm(x)
        h = norm1(x)
        x1 = h + attn(h)
        h = norm2(x1)
        return h + ff(h)
    if pre:
        a = attn(norm1(x))
        x1 = a if no_attn_res else x + a
        f = ff(norm2(x if mistake == "ff_on_input" else x1))
        return f if no_ff_res else x1 + f
    a = attn(x)
    x1 = norm1(a if no_attn_res else x + a)
    f = ff(x if mistake == "ff_on_input" else x1)
    return norm2(f if no_ff_res else x1 + f)


OTHER_PLACEMENT = {
    True: Hint("post-LN for pre-LN", "With norm_first=True your block normalises after adding: look at the "
               "pre-LN branch of forward.",
               "Pre-LN normalises a copy of x for each sublayer and adds the sublayer's output to x itself, which "
               "is never normalised inside the block.",
               "x = x + attention(norm1(x)); x = x + feed_forward(norm2(x))"),
    False: Hint("pre-LN for post-LN", "With norm_first=False your block normalises before the sublayers: look at "
                "the post-LN branch of forward (or at whether norm_first is read at all).",
                "Post-LN (the paper) adds the sublayer's output to x first, then normalises the sum.",
                "x = norm1(x + attention(x)); x = norm2(x + feed_forward(x))")}
NORMED_RESIDUAL = Hint(
    "residual from norm(x)", "Pre-LN is off although the sublayers look right: look at whether x itself is "
    "overwritten by its normalised copy.",
    "In pre-LN the residual stream x is never normalised: each sublayer reads norm(x), but its output is added "
    "to the x that came in. Writing x = norm(x) first makes the residual add to the normalised x.",
    "x = x + attention(self.norm1(x))  # not: x = self.norm1(x); x = x + attention(x)")
NO_ATTN_RESIDUAL = Hint(
    "attention residual", "The attention sublayer's result replaces x: look at the line after the attention.",
    "Each sublayer is wrapped in a residual connection: its output is added to its input.",
    "x + attention(...)")
NO_FF_RESIDUAL = Hint(
    "feed-forward residual", "The feed-forward's result replaces x: look at the feed-forward line.",
    "Each sublayer is wrapped in a residual connection: its output is added to its input.",
    "x + feed_forward(...)")
NO_RESIDUAL = Hint(
    "no residuals", "Neither sublayer keeps its input: look at both sublayer lines.",
    "Each sublayer is wrapped in a residual connection, x + sublayer(...), so information (and gradient) "
    "flows past it.", "x + attention(...), then x + feed_forward(...)")
NORM_ON_SUBLAYER = Hint(
    "norm on the sublayer", "The LayerNorm is applied to the sublayer's output only: look at what each norm "
    "receives.", "Post-LN normalises the residual sum x + sublayer(x); pre-LN normalises the sublayer's input. "
    "Neither normalises the sublayer's output alone.",
    "post-LN: norm1(x + attention(x)); pre-LN: x + attention(norm1(x))")
NORMS_SWAPPED = Hint(
    "norms swapped", "norm1 and norm2 are used the other way round: look at which norm goes with which "
    "sublayer.", "norm1 belongs to the attention sublayer and norm2 to the feed-forward; the checker gave them "
    "different weights, so swapping shows.", "attention with self.norm1, feed-forward with self.norm2")
NORM1_TWICE = Hint(
    "norm1 twice", "The same LayerNorm serves both sublayers: look at the feed-forward line's norm.",
    "Each sublayer has its own LayerNorm with its own learned weights: norm1 for the attention, norm2 for the "
    "feed-forward.", "the feed-forward sublayer uses self.norm2")
NORM2_TWICE = Hint(
    "norm2 twice", "The same LayerNorm serves both sublayers: look at the attention line's norm.",
    NORM1_TWICE.concept, "the attention sublayer uses self.norm1")
FF_ON_INPUT = Hint(
    "feed-forward on the input", "The feed-forward reads the block's input: look at what the feed-forward "
    "receives.", "The two sublayers run in sequence: the feed-forward reads the attention sublayer's result.",
    "x = ... attention ...; then x = ... feed_forward(x) ...")
MASK_POLARITY = Hint(
    "mask polarity", "The masked cases differ: look at the mask you pass to self_attn.",
    "True = may attend, as in lesson 02's MultiHeadAttention; pass the mask on unchanged.",
    "self.self_attn(x, x, x, mask=mask)")
MASK_NOT_PASSED = Hint(
    "mask not passed", "The unmasked cases pass but the masked ones differ: look at the self-attention call.",
    "The block's mask must reach the attention, or every query sees every key (future and padding included).",
    "self.self_attn(x, x, x, mask=mask)")


def _block_mistakes(norm_first):
    return [(OTHER_PLACEMENT[norm_first], "other_placement"), (NORMED_RESIDUAL, "normed_residual"),
            (MASK_NOT_PASSED, "mask_ignored"), (MASK_POLARITY, "mask_inverted"),
            (NO_ATTN_RESIDUAL, "no_attn_residual"), (NO_FF_RESIDUAL, "no_ff_residual"), (NO_RESIDUAL, "no_residual"),
            (NORM_ON_SUBLAYER, "norm_on_sublayer"), (NORMS_SWAPPED, "norms_swapped"), (NORM1_TWICE, "norm1_twice"),
            (NORM2_TWICE, "norm2_twice"), (FF_ON_INPUT, "ff_on_input")]


RETURN_TENSOR = Hint(
    "return a tensor", "forward returned a pair or list: look at its return line.",
    "The block returns x alone; the weights only with return_weights=True.", "return x")


def _call_block(block, x, mask):
    result = (call_keeping_inputs(block, x, names=("x",)) if mask is None else
              call_keeping_inputs(block, x, mask, names=("x", "mask")))
    expect(torch.is_tensor(result) or not isinstance(result, (tuple, list)),
           f"forward(x, mask) returned {describe(result)}, expected a tensor", hint=RETURN_TENSOR)
    expect_kind("forward(x, mask)", result)
    return result


def reference_block(ref, x, mask):
    """nn.TransformerEncoderLayer with our mask (True = may attend) as its src_mask (True = blocked)."""
    with torch.enable_grad():  # PyTorch's plain path (the fused inference path is another code path)
        return ref(x, src_mask=torch_attn_mask(mask, x.size(0), ref.self_attn.num_heads, x.size(1),
                                               x.size(1))).detach()


def _variants(x, P, n_heads, mask, norm_first):
    return [(hint, functools.partial(lambda m: block_variant(x, P, n_heads, mask, norm_first, m), m))
            for hint, m in _block_mistakes(norm_first)]


def _block_case(cls, norm_first, mask_kind=None, B=2, T=5, d_model=16, n_heads=4):
    block, ref, P = make_block(cls, norm_first, d_model, n_heads)
    x = randn(B, T, d_model)
    mask = {"causal": causal_mask(B, T, T), "padding": padding_mask(B, T, T), None: None}[mask_kind]
    output = _call_block(block, x, mask)
    compare("output", output, reference_block(ref, x, mask), variants=_variants(x, P, n_heads, mask, norm_first))


ATTN_RESULT = Hint(
    "attention returns a pair", "A shape error right after the self-attention: look at what you take from it.",
    "self_attn(q, k, v, mask) returns (output, weights), like lesson 02's MultiHeadAttention.",
    "attended = self.self_attn(x, x, x, mask=mask)[0]")


@CHECKS.add("shapes: TransformerEncoderBlock(16, 4, 32) maps (2, 5, 16) to (2, 5, 16)", on_error=ATTN_RESULT)
def block_shapes(cls):
    block = call(cls, 16, 4, 32, dropout=0.0, norm_first=False).eval()
    expect_shape("output", _call_block(block, randn(2, 5, 16), None), (2, 5, 16), legend=" = (B, T, d_model)")


@CHECKS.add("post-LN, no mask: equals nn.TransformerEncoderLayer (weights copied)", on_error=ATTN_RESULT)
def block_post_no_mask(cls):
    _block_case(cls, False)


@CHECKS.add("post-LN, causal mask (T, T)", on_error=ATTN_RESULT)
def block_post_causal(cls):
    _block_case(cls, False, "causal")


@CHECKS.add("post-LN, padding mask (B, 1, T): the last 2 positions of example 1 are padding", on_error=ATTN_RESULT)
def block_post_padding(cls):
    _block_case(cls, False, "padding")


@CHECKS.add("pre-LN (norm_first=True), no mask", on_error=ATTN_RESULT)
def block_pre_no_mask(cls):
    _block_case(cls, True)


@CHECKS.add("pre-LN, causal mask (T, T)", on_error=ATTN_RESULT)
def block_pre_causal(cls):
    _block_case(cls, True, "causal")


@CHECKS.add("pre-LN, padding mask (B, 1, T)", on_error=ATTN_RESULT)
def block_pre_padding(cls):
    _block_case(cls, True, "padding")


EMPTY_ROWS = Hint(
    "empty rows", "NaN in the output for a query with nothing to attend to: look at the attention your block "
    "uses.", "The attention must give 0 weights, not NaN, to a query that may attend to nothing; lesson 02's "
    "MultiHeadAttention does.", "self.self_attn(x, x, x, mask=mask)[0] with lesson 02's MultiHeadAttention")


@CHECKS.add("queries with nothing to attend to (causal + left padding): no NaN", on_error=ATTN_RESULT)
def block_empty_rows(cls):
    for norm_first in (False, True):
        block, ref, P = make_block(cls, norm_first)
        x = randn(2, 5, 16)
        keep = torch.ones(2, 5, dtype=torch.bool)
        keep[1, :2] = False  # example 1 starts with 2 padding positions: queries 0 and 1 see nothing
        mask = causal_mask(2, 5, 5) & keep[:, None, :]  # (B, T, T)
        output = _call_block(block, x, mask)
        expect_shape("output", output, (2, 5, 16))
        expect_no_nan(f"norm_first={norm_first}: output", output, "(a query with every key blocked)", EMPTY_ROWS)
        causal = causal_mask(1, 5, 5)
        compare(f"norm_first={norm_first}, example 0 (no padding)", output[:1], reference_block(ref, x[:1], causal),
                variants=_variants(x[:1], P, 4, causal, norm_first))


# ----------------------------------------------------------------------------------------------
# Dropout
SUBLAYER_DROPOUT_MISSING = {
    "attention": Hint("attention dropout missing", "In training mode the attention sublayer's output is never "
                      "dropped: look at the line that adds it to x.",
                      "nn.TransformerEncoderLayer drops each sublayer's output at rate p (dropout1 after the "
                      "attention, dropout2 after the feed-forward) before adding it to x, besides the dropout "
                      "inside the attention and the feed-forward.", "x = x + self.dropout1(attended)"),
    "feed-forward": Hint("feed-forward dropout missing", "In training mode the feed-forward sublayer's output is "
                         "never dropped: look at the line that adds it to x.",
                         "nn.TransformerEncoderLayer drops each sublayer's output at rate p before adding it to x: "
                         "dropout2 after the feed-forward.", "x = x + self.dropout2(self.feed_forward(...))")}
DROPOUT_WHERE = Hint(
    "dropout placement", "In training mode x itself is changed, not only the sublayer's output: look at what "
    "the dropout acts on.", "Dropout acts on the sublayer's output before the residual sum: the residual x passes "
    "unchanged, which is what makes deep stacks trainable.", "x = x + self.dropout1(attended)  # not "
    "self.dropout1(x + attended)")
DROPOUT_RATE = Hint(
    "dropout rate", "The share of dropped values is far from p: look at the probability you pass and whether "
    "dropout runs twice on one sublayer.", "p is the probability of dropping a value, and each sublayer's output "
    "goes through dropout once; a kept value is scaled by 1 / (1 - p).",
    "self.dropout1 = nn.Dropout(dropout) (given), used once: x = x + self.dropout1(attended)")
DROPOUT_NO_RESCALE = Hint(
    "dropout without rescaling", "The kept values are not scaled up: look at how you drop values.",
    "Inverted dropout scales what it keeps by 1 / (1 - p), so the expected value is unchanged and eval mode "
    "needs no rescaling. nn.Dropout does that; multiplying by a 0/1 mask does not.",
    "x = x + self.dropout1(attended)")
DROPOUT_MISSING_TRAIN = Hint(
    "no dropout", "In training mode two calls on the same input give the same output: dropout never acts.",
    "With dropout > 0 the block is random while training: dropout on the attention weights, inside the "
    "feed-forward, and on each sublayer's output.", "x = x + self.dropout1(attended); "
    "x = x + self.dropout2(self.feed_forward(...))")
EVAL_MODE_P = 0.3
TRAIN_MODE_P = 0.25


@CHECKS.add(f"dropout={EVAL_MODE_P} in eval mode: equals nn.TransformerEncoderLayer, the same at every call",
            on_error=ATTN_RESULT)
def block_dropout_eval(cls):
    for norm_first in (False, True):
        block, ref, P = make_block(cls, norm_first, dropout=EVAL_MODE_P)
        x, mask = randn(2, 5, 16), causal_mask(2, 5, 5)
        first, second = _call_block(block, x, mask), _call_block(block, x, mask)
        expect_shape("output", first, (2, 5, 16))
        compare(f"norm_first={norm_first}: output of a second call in eval mode (the first call's is expected)",
                second, first, hint=DROPOUT_IN_EVAL)
        compare(f"norm_first={norm_first}: output (eval mode)", first, reference_block(ref, x, mask),
                variants=_variants(x, P, 4, mask, norm_first), hint=DROPOUT_IN_EVAL)


def _constant_sublayer(block, sublayer, d_model=16, d_ff=32):
    """Make one sublayer output 1.0 everywhere and the other 0.0 (their own dropout then changes nothing)."""
    zeros, ones = torch.zeros(d_model, d_model), torch.ones(d_model)
    attention_out = ones if sublayer == "attention" else torch.zeros(d_model)
    ff_out = ones if sublayer == "feed-forward" else torch.zeros(d_model)
    copy_linear(block, "self_attn.W_v", zeros, torch.zeros(d_model), "zeros", "nn.Linear(d_model, d_model)")
    copy_linear(block, "self_attn.W_o", zeros, attention_out, "a constant", "nn.Linear(d_model, d_model)")
    copy_linear(block, "feed_forward.linear2", torch.zeros(d_model, d_ff), ff_out, "a constant",
                "nn.Linear(d_ff, d_model)")


@CHECKS.add(f"dropout={TRAIN_MODE_P} in training mode, pre-LN: each sublayer's output is dropped at that rate "
            "and rescaled before it is added to x", on_error=ATTN_RESULT)
def block_dropout_train(cls):
    p, B, T, d_model = TRAIN_MODE_P, 4, 16, 16
    x = randn(B, T, d_model)
    block, _, _ = make_block(cls, True, dropout=p)
    block.train()
    first, second = _call_block(block, x, None), _call_block(block, x, None)
    expect_shape("output", first, (B, T, d_model))
    expect(not torch.equal(first, second), "in training mode two calls on the same input gave the same output",
           hint=DROPOUT_MISSING_TRAIN)
    for sublayer in ("attention", "feed-forward"):
        block, _, _ = make_block(cls, True, dropout=p)
        _constant_sublayer(block, sublayer)
        block.train()
        added = _call_block(block, x, None) - x  # the dropped-out sublayer output: 0 or 1 / (1 - p)
        what = f"{sublayer} sublayer's output, all 1.0 before dropout (output - x)"
        kept_value = 1 / (1 - p)
        dropped, kept = added.abs() < 1e-4, (added - kept_value).abs() < 1e-4
        if not bool((dropped | kept).all()):
            odd = float(added[~(dropped | kept)][0])
            raise CheckFailed(f"{what}: a value is {odd:.4g}; dropout leaves 0 or 1 / (1 - p) = {kept_value:.4g}",
                              hint=_dropout_hint(added, sublayer))
        zeros, n = int(dropped.sum()), added.numel()
        low, high = binomial_interval(p, n)
        expect(low <= zeros / n <= high, share_line(what, zeros, n, p),
               hint=SUBLAYER_DROPOUT_MISSING[sublayer] if zeros == 0 else DROPOUT_RATE)


def _dropout_hint(added, sublayer):
    """The likely mistake, from the values a constant 1.0 sublayer output became (output - x)."""
    dropped = added.abs() < 1e-4
    if bool(((added - 1).abs() < 1e-4).all()):
        return SUBLAYER_DROPOUT_MISSING[sublayer]
    if bool((dropped | ((added - 1).abs() < 1e-4)).all()):
        return DROPOUT_NO_RESCALE
    if bool((dropped | ((added - added.max()).abs() < 1e-4)).all()):
        return DROPOUT_RATE
    return DROPOUT_WHERE
