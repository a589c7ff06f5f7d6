"""Checks of the `multi_head_attention` exercise: MultiHeadAttention(d_model, n_heads, dropout=0.0).

The learner's module gets the weights of PyTorch's nn.MultiheadAttention(batch_first=True) copied
into its W_q, W_k, W_v, W_o (copy_attention) and must return the same output and per-head weights
for each mask shape the docstring lists. nn.MultiheadAttention takes the opposite mask convention
(True = blocked), so the checker inverts our masks for it (torch_attn_mask). mha_variant writes
multi-head attention out with one known mistake at a time (MHA_MISTAKES) to name the one made.
With dropout > 0: in eval mode the module must equal PyTorch's and give the same result at every
call; in training mode the returned weights must be dropped out at rate p (within the binomial
interval), the kept ones scaled by 1 / (1 - p), and the output must come from those weights.

The encoder block's checks (encoder_block.py) reuse the weight copying, masks and mha_variant.
"""
import functools
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from exercises.checks.helpers import (GENERATOR, NEG_INF, CheckFailed, Checklist, Hint, binomial_interval, call,
                                      call_keeping_inputs, compare, describe, expect, expect_no_nan, expect_pair,
                                      expect_shape, random_mask, randn, reference_module, shape_str, share_line)

CHECKS = Checklist()


def randomize(module):
    """Give every bias and LayerNorm a random value, so a missing or misplaced one shows."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("bias"):
                p.copy_(0.2 * torch.randn(p.shape, generator=GENERATOR))
            elif p.dim() == 1:  # LayerNorm weights
                p.copy_(1.0 + 0.3 * torch.randn(p.shape, generator=GENERATOR))


def module_attr(obj, dotted):
    for part in dotted.split("."):
        obj = getattr(obj, part, None)
    return obj


def _names_hint(path, source):
    return Hint("attribute names", f"The checker found no nn.Linear named {path}: look at the constructor.",
                f"The checker copies {source} into {path}, so the stub's attribute names must stay.",
                "keep the constructor the stub gives")


def copy_linear(ours, path, weight, bias, source, shape_hint):
    """Copy a weight and bias (from `source`, in words) into the learner's nn.Linear at `path`."""
    layer = module_attr(ours, path)
    expect(isinstance(layer, nn.Linear),
           f"{path}: expected an nn.Linear named {path}, found {describe(layer) if layer is not None else 'nothing'}",
           hint=_names_hint(path, source))
    expect(tuple(layer.weight.shape) == tuple(weight.shape),
           f"{path}.weight has shape {shape_str(layer.weight.shape)}, expected {shape_str(weight.shape)}",
           hint=Hint("layer size", f"{path} has the wrong size: look at the constructor.", shape_hint,
                     "keep the constructor the stub gives"))
    expect(layer.bias is not None, f"{path} has no bias, but {source} has one",
           hint=Hint("bias", f"{path} has no bias: look at the constructor.", "nn.Linear has a bias by "
                     "default, and PyTorch's module uses it.", "keep bias=True (the default)"))
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
                    f"One nn.Linear(d_model, d_model) = ({d}, {d}) holds every head's projection.")
    return weights


def to_4d(mask):
    """Our mask shapes (T_q, T_k), (B, T_q, T_k), (B, 1, T_k), (B, n_heads, T_q, T_k) -> 4-D."""
    if mask is None or mask.dim() == 4:
        return mask
    return mask.unsqueeze(1) if mask.dim() == 3 else mask[None, None]


def split(x, n_heads):
    """(B, T, d_model) -> (B, n_heads, T, d_head)."""
    B, T, d_model = x.shape
    return x.view(B, T, n_heads, d_model // n_heads).transpose(1, 2)


def merge(x):
    """(B, n_heads, T, d_head) -> (B, T, d_model)."""
    B, n_heads, T, d_head = x.shape
    return x.transpose(1, 2).reshape(B, T, n_heads * d_head)


def mha_variant(query, key, value, W, n_heads, mask, scale="d_head", split_heads="transpose",
                merge_heads="transpose", mask_use="as_given", project_out=True):
    """Multi-head attention written out, with one thing changed: a known mistake, to recognise it."""
    B, T_q, d_model = query.shape
    d_head = d_model // n_heads

    def heads(x):  # (B, T, d_model) -> (B, n_heads, T, d_head)
        return split(x, n_heads) if split_heads == "transpose" else x.reshape(B, n_heads, x.size(1), d_head)

    q = heads(F.linear(query, *W["W_q"]))
    k = heads(F.linear(key, *W["W_k"]))
    v = heads(F.linear(value, *W["W_v"]))
    divisor = {"d_head": math.sqrt(d_head), "d_model": math.sqrt(d_model), "none": 1.0}[scale]
    scores = q @ k.transpose(-2, -1) / divisor  # (B, n_heads, T_q, T_k)
    m = None if mask_use == "ignored" else to_4d(mask)
    if m is not None:
        m = ~m if mask_use == "inverted" else m
        scores = scores.masked_fill(~m, NEG_INF)
    weights = torch.softmax(scores, dim=-1)
    if m is not None:
        weights = weights.masked_fill(~m, 0.0)
    out = weights @ v  # (B, n_heads, T_q, d_head)
    merged = merge(out) if merge_heads == "transpose" else out.reshape(B, T_q, d_model)
    return (F.linear(merged, *W["W_o"]) if project_out else merged), weights


SCALE_D_MODEL = Hint(
    "divided by sqrt(d_model)", "The weights are too flat: look at what the scores are divided by.",
    "Each head's dot products run over its own d_head = d_model // n_heads features, so the scale is "
    "sqrt(d_head), not sqrt(d_model).", "scores = q @ k.transpose(-2, -1) / math.sqrt(self.d_head)")
SCALE_MISSING = Hint(
    "scale missing", "The weights are too peaked: look at the line that computes the scores.",
    "Dot products over d_head features grow like sqrt(d_head); dividing by it keeps the softmax from "
    "saturating.", "scores = q @ k.transpose(-2, -1) / math.sqrt(self.d_head)")
MERGE_NO_TRANSPOSE = Hint(
    "merge without transpose", "The weights are right but the output is not: look at merge_heads.",
    "(B, n_heads, T, d_head) must become (B, T, n_heads, d_head) before the last two dimensions are joined; "
    "a reshape alone mixes values of different positions into one row.",
    "x.transpose(1, 2).reshape(B, T, self.d_model)")
SPLIT_NO_TRANSPOSE = Hint(
    "split without transpose", "Even the weights differ: look at split_heads.",
    "Each head takes a slice of every position's features: view (B, T, d_model) as (B, T, n_heads, d_head), then "
    "move the heads dimension forward. Viewing straight to (B, n_heads, T, d_head) gives each head a slab of "
    "positions instead.", "x.view(B, T, self.n_heads, self.d_head).transpose(1, 2)")
NO_TRANSPOSES = Hint(
    "no transposes", "Weights and output both differ: look at split_heads and merge_heads.",
    "Splitting and merging each need a transpose: heads come from slices of the features of every position.",
    "split: x.view(B, T, n_heads, d_head).transpose(1, 2); merge: x.transpose(1, 2).reshape(B, T, d_model)")
MASK_POLARITY = Hint(
    "mask polarity", "Weights are large where the mask is False: look at how the mask is applied.",
    "True = may attend here, as in lesson 01; nn.MultiheadAttention takes the opposite, which is why the "
    "checker inverts the mask for PyTorch.", "pass the mask on as it is (lesson 01's attention blocks where it "
    "is False)")
NO_W_O = Hint(
    "W_o missing", "The merged heads come out as they are: look at the end of forward.",
    "The heads' outputs are mixed back together by the output projection W_o.",
    "output = self.W_o(self.merge_heads(heads))")
MASK_IGNORED = Hint(
    "mask ignored", "The masked cases differ but the unmasked ones pass: look at whether the mask reaches the "
    "attention.", "A mask that is not passed on lets every query see every key.",
    "scaled_dot_product_attention(q, k, v, mask)")
MASK_3D = Hint(
    "3-D mask", "A shape error with a 3-D mask: look at how the mask meets the 4-D scores.",
    "A mask (B, T_q or 1, T_k) has no heads dimension; the scores are (B, n_heads, T_q, T_k). Insert a dimension "
    "at 1 so it broadcasts over the heads.", "if mask is not None and mask.dim() == 3: mask = mask.unsqueeze(1)")
HEADS_NOT_MERGED = Hint(
    "heads not merged", "The output still has a heads dimension: look at the end of forward.",
    "The heads' outputs are joined back into d_model features per position before W_o.",
    "self.W_o(self.merge_heads(heads))")
WEIGHTS_AVERAGED = Hint(
    "weights averaged", "The weights have no heads dimension: look at what forward returns.",
    "The contract returns one attention map per head, (B, n_heads, T_q, T_k).", "return output, weights")
SCORES_TRANSPOSED = Hint(
    "scores transposed", "The weights are (T_k, T_q): look at the order in the scores' product.",
    "Rows are queries, columns keys.", "scores = q @ k.transpose(-2, -1)")
MHA_MISTAKES = [
    (SCALE_D_MODEL, dict(scale="d_model")),
    (SCALE_MISSING, dict(scale="none")),
    (MERGE_NO_TRANSPOSE, dict(merge_heads="reshape")),
    (SPLIT_NO_TRANSPOSE, dict(split_heads="reshape")),
    (NO_TRANSPOSES, dict(split_heads="reshape", merge_heads="reshape")),
    (MASK_POLARITY, dict(mask_use="inverted")),
    (MASK_IGNORED, dict(mask_use="ignored")),
    (NO_W_O, dict(project_out=False)),
]


def _mha_hints(q, k, v, W, n_heads, mask, index):
    return [(hint, functools.partial(lambda kw: mha_variant(q, k, v, W, n_heads, mask, **kw)[index], kw))
            for hint, kw in MHA_MISTAKES]


def _make_mha(cls, d_model, n_heads, **kwargs):
    module = call(cls, d_model, n_heads, **kwargs)
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


def torch_mha(d_model, n_heads, dropout=0.0):
    ref = reference_module(lambda: nn.MultiheadAttention(d_model, n_heads, dropout=dropout, bias=True,
                                                         batch_first=True)).eval()
    randomize(ref)
    return ref


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


def _expect_mha_shapes(output, weights, B, T_q, T_k, d_model, n_heads):
    expect_shape("output", output, (B, T_q, d_model), legend=" = (B, T_q, d_model)",
                 hints={(B, n_heads, T_q, d_model // n_heads): HEADS_NOT_MERGED})
    expect_shape("weights", weights, (B, n_heads, T_q, T_k), legend=" = (B, n_heads, T_q, T_k)",
                 hints={(B, T_q, T_k): WEIGHTS_AVERAGED, (B, n_heads, T_k, T_q): SCORES_TRANSPOSED})


def _mha_case(cls, B, T_q, T_k, mask_fn=None, d_model=16, n_heads=4, rows=None):
    """Compare with nn.MultiheadAttention on one mask case; `rows` picks the examples to compare."""
    module = _make_mha(cls, d_model, n_heads)
    ref = torch_mha(d_model, n_heads)
    W = copy_attention(module, ref)
    q, k, v = randn(B, T_q, d_model), randn(B, T_k, d_model), randn(B, T_k, d_model)
    mask = mask_fn(B, T_q, T_k) if mask_fn else None
    output, weights = _call_mha(module, q, k, v, mask)
    expected_output, expected_weights = reference_mha(ref, q, k, v, mask, n_heads)
    _expect_mha_shapes(output, weights, B, T_q, T_k, d_model, n_heads)
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


@CHECKS.add("shapes: B=2, T_q=3, T_k=5, d_model=16, n_heads=4")
def mha_shapes(cls):
    module = _make_mha(cls, 16, 4)
    output, weights = _call_mha(module, randn(2, 3, 16), randn(2, 5, 16), randn(2, 5, 16), None)
    _expect_mha_shapes(output, weights, 2, 3, 5, 16, 4)


@CHECKS.add("no mask: output and weights equal nn.MultiheadAttention (weights copied)")
def mha_no_mask(cls):
    _mha_case(cls, 2, 5, 5)


@CHECKS.add("causal mask (T, T)", on_error=MASK_3D)
def mha_causal(cls):
    _mha_case(cls, 2, 5, 5, causal_mask)


@CHECKS.add("padding mask (B, 1, T_k): the last 2 keys of example 1 are padding", on_error=MASK_3D)
def mha_padding(cls):
    _mha_case(cls, 2, 5, 5, padding_mask)


@CHECKS.add("cross-attention T_q=3 != T_k=6 with a padding mask (B, 1, T_k)", on_error=MASK_3D)
def mha_cross(cls):
    _mha_case(cls, 2, 3, 6, padding_mask)


@CHECKS.add("a mask per example (B, T_q, T_k): causal and padding together", on_error=MASK_3D)
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


EMPTY_ROWS = Hint(
    "empty rows", "NaN (or equal weights) for an example whose keys are all padding: look at what the attention "
    "does with a row that may attend to nothing.", "softmax over a row of -inf is 0/0 = NaN; the contract says "
    "such a row gets weight 0 everywhere (lesson 01's attention does that).",
    "weights = weights.masked_fill(~mask, 0.0) after the softmax (or reuse lesson 01's attention)")


@CHECKS.add("an example whose keys are all padding: no NaN, the other one matches", on_error=MASK_3D)
def mha_empty_rows(cls):
    def all_padding(B, T_q, T_k):
        keep = torch.ones(B, T_k, dtype=torch.bool)
        keep[1] = False  # example 1: nothing to attend to
        return keep[:, None, :]

    output, weights = _mha_case(cls, 2, 4, 4, all_padding, rows=0)
    for name, t in (("output", output), ("weights", weights)):
        expect_no_nan(name, t, "(example 1, every key blocked)", EMPTY_ROWS)
    expect(bool((weights[1].abs() < 1e-6).all()),
           f"weights of example 1 (every key blocked) should be 0, largest is {float(weights[1].abs().max()):.4g}",
           hint=EMPTY_ROWS)


# ----------------------------------------------------------------------------------------------
# Dropout: eval mode is PyTorch's and repeatable; training mode drops the weights at rate p
DROPOUT_IN_EVAL = Hint(
    "dropout in eval mode", "In eval mode two calls on the same input differ: something random runs after "
    "model.eval(); look at your dropout call.",
    "Dropout acts only while training. F.dropout(x, p) has training=True by default, so it drops values even in "
    "eval mode; an nn.Dropout module (self.dropout) follows model.train() and model.eval().",
    "weights = self.dropout(weights)  # or F.dropout(weights, p, training=self.training)")
DROPOUT_MISSING = Hint(
    "dropout missing", "In training mode with dropout > 0 nothing is dropped: look for where dropout should act.",
    "nn.MultiheadAttention drops attention weights at rate p while training (and rescales the kept ones by "
    "1 / (1 - p)); the dropped weights are the ones that multiply V and the ones returned.",
    "if self.training and self.dropout.p > 0: weights = self.dropout(weights); heads = weights @ v")
DROPOUT_RATE = Hint(
    "dropout rate", "In training mode the share of zeroed weights is far from p: look at the probability you "
    "pass to dropout, and whether dropout runs twice.",
    "p is the probability of dropping a value (nn.Dropout(p)), not of keeping it; applied twice it drops "
    "1 - (1 - p)^2.", "weights = self.dropout(weights)  # once, with p = the constructor's dropout")
DROPOUT_SCALE = Hint(
    "dropout scale", "The kept weights are not the eval-mode weights times 1 / (1 - p): look at how you drop "
    "values.", "Inverted dropout scales what it keeps by 1 / (1 - p), so the expected value is unchanged and "
    "eval mode needs no rescaling. nn.Dropout does that for you; multiplying by a 0/1 mask does not.",
    "weights = self.dropout(weights)")
DROPOUT_PLACE = Hint(
    "dropout placement", "The output does not come from the weights you return: look at the order of dropout and "
    "weights @ v.", "Dropout acts on the attention weights before they multiply V, and the weights returned are "
    "those dropped-out ones (as nn.MultiheadAttention returns them).",
    "weights = self.dropout(weights); heads = weights @ v; return self.W_o(self.merge_heads(heads)), weights")
EVAL_MODE_P = 0.3
TRAIN_MODE_P = 0.25


@CHECKS.add(f"dropout={EVAL_MODE_P} in eval mode: equals nn.MultiheadAttention, the same at every call")
def mha_dropout_eval(cls):
    module = _make_mha(cls, 16, 4, dropout=EVAL_MODE_P)
    ref = torch_mha(16, 4, dropout=EVAL_MODE_P)
    W = copy_attention(module, ref)
    q, k, v = randn(2, 5, 16), randn(2, 5, 16), randn(2, 5, 16)
    mask = causal_mask(2, 5, 5)
    first, second = _call_mha(module, q, k, v, mask), _call_mha(module, q, k, v, mask)
    _expect_mha_shapes(*first, 2, 5, 5, 16, 4)
    for name, a, b in (("weights", first[1], second[1]), ("output", first[0], second[0])):
        compare(f"{name} of a second call in eval mode (the first call's are expected)", b, a, hint=DROPOUT_IN_EVAL)
    expected_output, expected_weights = reference_mha(ref, q, k, v, mask, 4)
    compare("weights (eval mode)", first[1], expected_weights, variants=_mha_hints(q, k, v, W, 4, mask, 1),
            hint=DROPOUT_IN_EVAL)
    compare("output (eval mode)", first[0], expected_output, variants=_mha_hints(q, k, v, W, 4, mask, 0),
            hint=DROPOUT_IN_EVAL)


@CHECKS.add(f"dropout={TRAIN_MODE_P} in training mode: weights dropped at that rate and rescaled, "
            "the output made from them")
def mha_dropout_train(cls):
    p, B, T, d_model, n_heads = TRAIN_MODE_P, 4, 16, 16, 4
    module = _make_mha(cls, d_model, n_heads, dropout=p)
    W = copy_attention(module, torch_mha(d_model, n_heads))
    q, k, v = randn(B, T, d_model), randn(B, T, d_model), randn(B, T, d_model)
    _, expected_weights = mha_variant(q, k, v, W, n_heads, None)  # eval mode's weights
    module.train()
    output, weights = _call_mha(module, q, k, v, None)
    again = _call_mha(module, q, k, v, None)
    _expect_mha_shapes(output, weights, B, T, T, d_model, n_heads)
    expect_shape("output of a second call", again[0], output.shape)
    expect(not torch.equal(output, again[0]), "in training mode two calls on the same input gave the same output",
           hint=DROPOUT_MISSING)
    zeros, n = int((weights == 0).sum()), weights.numel()
    low, high = binomial_interval(p, n)
    if not low <= zeros / n <= high:  # the output varies, so when no weight is 0 dropout acts elsewhere
        raise CheckFailed(share_line("weights (training mode)", zeros, n, p),
                          hint=DROPOUT_PLACE if zeros == 0 else DROPOUT_RATE)
    kept = weights != 0
    compare("kept weights (training mode), expected: the eval-mode weights / (1 - p)", weights[kept],
            (expected_weights / (1 - p))[kept], variants=[(DROPOUT_SCALE, expected_weights[kept])],
            hint=DROPOUT_SCALE)
    heads = weights @ split(F.linear(v, *W["W_v"]), n_heads)  # the returned weights applied to the values
    compare("output (training mode), expected: W_o applied to your returned weights times V", output,
            F.linear(merge(heads), *W["W_o"]), hint=DROPOUT_PLACE)
