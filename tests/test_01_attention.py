"""Lesson 01: scaled dot-product attention and the causal mask, checked against PyTorch."""
import argparse
import math
import re

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from common import claims, load_lesson

L01 = load_lesson(1)
attention = L01.scaled_dot_product_attention
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def randn(*shape, seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g).requires_grad_(requires_grad)


def qkv(lead, T_q, T_k, d_k=8, d_v=5, seed=0):
    return (randn(*lead, T_q, d_k, seed=seed), randn(*lead, T_k, d_k, seed=seed + 1),
            randn(*lead, T_k, d_v, seed=seed + 2))


def padding_keep(lengths, T):
    """(B, T) bool, True = a real token: the first lengths[b] positions of sequence b."""
    return torch.arange(T) < torch.tensor(lengths)[:, None]


def reference_weights(q, k, mask=None):
    """PyTorch's own attention weights: F.scaled_dot_product_attention applied to V = identity."""
    T_k = k.size(-2)
    eye = torch.eye(T_k).expand(*k.shape[:-2], T_k, T_k)
    return F.scaled_dot_product_attention(q, k, eye, attn_mask=mask)


# --- equality with F.scaled_dot_product_attention -------------------------------------------
@pytest.mark.parametrize("lead, T_q, T_k", [
    ((), 5, 5),            # a single sequence, no batch
    ((3,), 5, 5),          # (B, T, d_k)
    ((2, 4), 6, 6),        # (B, n_heads, T, d_k)
    ((2, 4), 3, 7),        # cross-attention, T_q < T_k
    ((2, 4), 7, 3),        # T_q > T_k
    ((2, 3, 2), 4, 6),     # extra leading dims
])
def test_no_mask_matches_pytorch(lead, T_q, T_k):
    q, k, v = qkv(lead, T_q, T_k)
    out, weights = attention(q, k, v)
    assert out.shape == (*lead, T_q, v.size(-1)) and weights.shape == (*lead, T_q, T_k)
    assert_close(out, F.scaled_dot_product_attention(q, k, v))
    assert_close(weights, reference_weights(q, k))


@pytest.mark.parametrize("lead", [(), (3,), (2, 4)])
def test_causal_mask_matches_pytorch_is_causal(lead):
    T = 7
    q, k, v = qkv(lead, T, T)
    mask = L01.causal_mask(T)
    out, weights = attention(q, k, v, mask)
    assert_close(out, F.scaled_dot_product_attention(q, k, v, is_causal=True))
    assert_close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask))
    assert_close(weights, reference_weights(q, k, mask))


def test_padding_mask_B_1_1_Tk_matches_pytorch():
    B, H, T = 3, 2, 6
    q, k, v = qkv((B, H), T, T)
    mask = padding_keep([6, 4, 1], T)[:, None, None, :]  # (B, 1, 1, T_k): same for heads, queries
    out, weights = attention(q, k, v, mask)
    assert_close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask))
    assert_close(weights, reference_weights(q, k, mask))
    assert torch.all(weights[1, :, :, 4:] == 0) and torch.all(weights[2, :, :, 1:] == 0)


def test_padding_mask_B_1_Tq_Tk_and_cross_attention_match_pytorch():
    B, H, T_q, T_k = 2, 3, 4, 6
    q, k, v = qkv((B, H), T_q, T_k)
    keep_q, keep_k = padding_keep([4, 2], T_q), padding_keep([6, 3], T_k)
    mask = (keep_q[:, :, None] & keep_k[:, None, :])[:, None]  # (B, 1, T_q, T_k)
    out, weights = attention(q, k, v, mask)
    assert_close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask))
    assert_close(weights, reference_weights(q, k, mask))


def test_causal_and_padding_combined_match_pytorch():
    B, H, T = 2, 2, 5
    q, k, v = qkv((B, H), T, T)
    mask = L01.causal_mask(T) & padding_keep([5, 3], T)[:, None, None, :]  # (B, 1, T, T)
    out, _ = attention(q, k, v, mask)
    assert_close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask))


def test_gradients_match_pytorch_with_padding():
    B, H, T = 2, 2, 5
    mask = padding_keep([5, 2], T)[:, None, None, :]
    grads = []
    for fn in (lambda q, k, v: attention(q, k, v, mask)[0],
               lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=mask)):
        q, k, v = (randn(B, H, T, 4, seed=s, requires_grad=True) for s in (10, 11, 12))
        (fn(q, k, v) * randn(B, H, T, 4, seed=13)).sum().backward()
        grads.append((q.grad, k.grad, v.grad))
    for ours, ref in zip(*grads):
        assert_close(ours, ref)


# --- properties ------------------------------------------------------------------------------
def test_weight_rows_sum_to_one_and_are_nonnegative():
    q, k, v = qkv((2, 3), 5, 7)
    for mask in (None, padding_keep([7, 2], 7)[:, None, None, :], L01.causal_mask(7)[:5]):
        _, weights = attention(q, k, v, mask)
        assert torch.all(weights >= 0)
        assert_close(weights.sum(-1), torch.ones(2, 3, 5))


def test_scale_is_sqrt_d_k():
    q, k, v = qkv((2,), 4, 6, d_k=16)
    _, weights = attention(q, k, v)
    assert_close(weights, torch.softmax(q @ k.transpose(-2, -1) / 4.0, dim=-1))


def test_causal_outputs_do_not_see_the_future():
    T, t = 8, 4
    q, k, v = qkv((2,), T, T)
    out, _ = attention(q, k, v, L01.causal_mask(T))
    k2, v2 = k.clone(), v.clone()
    k2[:, t + 1:] = randn(2, T - t - 1, k.size(-1), seed=99) * 10  # change tokens after t
    v2[:, t + 1:] = randn(2, T - t - 1, v.size(-1), seed=98) * 10
    out2, _ = attention(q, k2, v2, L01.causal_mask(T))
    assert torch.equal(out[:, : t + 1], out2[:, : t + 1])
    assert not torch.allclose(out[:, t + 1:], out2[:, t + 1:])  # later positions do see them


def test_fully_masked_row_gives_zeros_not_nan_in_values_and_gradients():
    q, k, v = (randn(2, 4, 3, seed=s, requires_grad=True) for s in (0, 1, 2))
    mask = torch.ones(2, 4, 4, dtype=torch.bool)
    mask[0, 1] = False  # query 1 of sequence 0 may attend to nothing
    mask[1] = False     # sequence 1: every query blocked
    out, weights = attention(q, k, v, mask)
    assert not out.isnan().any() and not weights.isnan().any()
    assert torch.all(out[0, 1] == 0) and torch.all(weights[0, 1] == 0)
    assert torch.all(out[1] == 0) and torch.all(weights[1] == 0)
    assert_close(weights[0, [0, 2, 3]].sum(-1), torch.ones(3))
    out.sum().backward()
    for t in (q, k, v):
        assert torch.isfinite(t.grad).all()
    assert torch.all(q.grad[0, 1] == 0) and torch.all(q.grad[1] == 0)
    assert q.grad[0, 0].abs().sum() > 0  # gradients still flow through the other rows


def test_causal_mask_is_lower_triangular_bool():
    for T in (1, 2, 5):
        mask = L01.causal_mask(T)
        assert mask.dtype == torch.bool and mask.shape == (T, T)
        for i in range(T):
            for j in range(T):
                assert bool(mask[i, j]) == (j <= i)  # True on and below the diagonal
    assert L01.causal_mask(3, device="cpu").device.type == "cpu"


@pytest.mark.parametrize("dtype", [torch.float32, torch.int64, torch.uint8])
def test_non_bool_mask_raises_type_error(dtype):
    q, k, v = qkv((), 3, 3)
    with pytest.raises(TypeError, match="bool"):
        attention(q, k, v, torch.ones(3, 3, dtype=dtype))


def test_unscaled_score_variance_grows_with_d_k_scaled_stays_near_one():
    # Fixed seed, 20,000 scores per d_k: the estimates' relative error is ~1% (sd), far inside 15%.
    g = torch.Generator().manual_seed(1234)
    for d_k in (4, 64, 512):
        q = torch.randn(1000, 1, d_k, generator=g)
        k = torch.randn(1000, 20, d_k, generator=g)
        raw = q @ k.transpose(-2, -1)  # (1000, 1, 20)
        assert 0.85 < raw.var().item() / d_k < 1.15, (d_k, raw.var().item())
        assert 0.85 < (raw / math.sqrt(d_k)).var().item() < 1.15
    # Saturation: at d_k = 512 the unscaled softmax gives one key nearly everything.
    _, scaled_w = attention(q, k, k)
    raw_w = torch.softmax(raw, -1)
    assert raw_w.max(-1).values.mean() > 0.9
    assert scaled_w.max(-1).values.mean() < 0.5


def test_query_gradient_size_is_the_norm_of_the_jacobian_of_the_weights():
    keys = randn(3, 6, 5, seed=4)  # (N, T_k, d_k)
    q = randn(3, 5, seed=5)
    for scale in (1.0, math.sqrt(5)):
        weights = torch.softmax((keys @ q[:, :, None]).squeeze(-1) / scale, -1)  # (N, T_k)
        sizes = L01.query_gradient_size(weights, keys, scale)
        for n in range(3):
            jac = torch.autograd.functional.jacobian(lambda x: torch.softmax(keys[n] @ x / scale, -1), q[n])
            assert_close(sizes[n], jac.norm())


def test_scaling_statistics_saturation_and_gradient_spread():
    torch.manual_seed(0)
    big = L01.scaling_statistics(512, 400, "cpu")
    assert big["raw"]["saturated"] > 0.5 and big["scaled"]["saturated"] == 0
    low, median, high = big["raw"]["grad"]
    assert median < 0.1 * big["scaled"]["grad"][1] < high  # most rows starve, a few get more than scaled
    small = L01.scaling_statistics(4, 400, "cpu")
    for key in ("var", "top"):
        assert abs(small["scaled"][key] - big["scaled"][key]) < 0.15 * big["scaled"][key]
    same = L01.scaling_statistics(1, 50, "cpu")  # d_k = 1: dividing by sqrt(1) changes nothing
    assert same["raw"] == same["scaled"]


def test_first_masked_fill_backward_is_what_keeps_gradients_free_of_nan():
    # The comment in scaled_dot_product_attention: for a row with no key, softmax's backward gives
    # NaN; the backward of masked_fill(-inf) replaces the gradient of every blocked score by 0.
    scores = randn(2, 3, seed=7, requires_grad=True)
    mask = torch.tensor([[True, False, True], [False, False, False]])  # row 1: nothing to attend to
    filled = scores.masked_fill(~mask, float("-inf"))
    filled.retain_grad()
    torch.softmax(filled, -1).masked_fill(~mask, 0.0).sum().backward()
    assert filled.grad[1].isnan().all()        # NaN reaches the filled scores ...
    assert torch.all(scores.grad[1] == 0)      # ... and stops at the masked_fill
    assert torch.isfinite(scores.grad).all()


def test_left_padding_with_a_causal_mask_leaves_the_first_queries_without_keys():
    T, lengths = 6, torch.tensor([6, 4, 1])
    keep, masks = L01.example_masks(T, lengths, "cpu")
    assert torch.equal(keep, padding_keep([6, 4, 1], T))
    empty = ~masks["left padding + causal"].any(-1)  # (B, T_q)
    assert torch.equal(empty.sum(-1), T - lengths)    # exactly the padding queries at the start
    assert torch.equal(empty, torch.arange(T) < (T - lengths)[:, None])
    for name in ("causal", "padding", "causal + padding"):  # right padding leaves every query a key
        assert masks[name].expand(3, T, T).any(-1).all(), name
    q, k, v = qkv((3, 2), T, T)
    out, _ = attention(q, k, v, masks["left padding + causal"][:, None])
    assert_close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=masks["left padding + causal"][:, None]))
    assert torch.all(out[empty[:, None, :].expand(3, 2, T)] == 0)


def test_attention_head_self_and_cross_use_the_projections():
    head = L01.AttentionHead(d_model=8, d_k=4)
    x, y = randn(2, 5, 8, seed=1), randn(2, 3, 8, seed=2)
    out, weights = head(y, x)  # cross-attention: 3 queries, 5 keys
    assert out.shape == (2, 3, 4) and weights.shape == (2, 3, 5)
    q, k, v = y @ head.W_q.weight.T, x @ head.W_k.weight.T, x @ head.W_v.weight.T
    assert_close(out, F.scaled_dot_product_attention(q, k, v))
    out_self, _ = head(x, x)
    assert_close(out_self, F.scaled_dot_product_attention(
        x @ head.W_q.weight.T, x @ head.W_k.weight.T, x @ head.W_v.weight.T))
    assert sum(p.numel() for p in head.parameters()) == 3 * 8 * 4  # three d_k x d_model, no biases
    mask = L01.causal_mask(5)  # the mask is passed through to the attention
    out_causal, _ = head(x, x, mask)
    assert_close(out_causal, F.scaled_dot_product_attention(
        x @ head.W_q.weight.T, x @ head.W_k.weight.T, x @ head.W_v.weight.T, attn_mask=mask))


# --- the lesson runs -------------------------------------------------------------------------
def test_lesson_quick_run_writes_its_figures(run_main, capsys):
    out_dir = run_main(1, "--quick")
    for name in ("attention_weights.png", "attention_scaling.png", "attention_masks.png"):
        path = out_dir / name
        assert path.exists(), name
        data = path.read_bytes()
        assert data[:8] == PNG_SIGNATURE and len(data) > 5000, name
    out = capsys.readouterr().out
    assert "Key insights" in out and not re.search(r"\bnan\b", out)  # no number printed as nan


@pytest.mark.parametrize("attention_ms, shown", [((1.0, 1.0, 1.0), False), ((1.0, 4.0, 16.0), True)])
def test_cost_section_says_when_the_lengths_are_too_short_to_show_t_squared(monkeypatch, capsys, attention_ms,
                                                                              shown):
    times = iter([t for a in attention_ms for t in (a / 1000, 0.001)])  # attention, then the linear layer, per T
    monkeypatch.setattr(L01.common, "best_time", lambda fn, device, repeats=5: next(times))
    slope, faster = L01.section_8_cost(torch.device("cpu"), argparse.Namespace(quick=True))
    out = " ".join(capsys.readouterr().out.split())
    assert (slope["attention"] >= 1.8) is shown and ("too short to show T^2" in out) is not shown
    assert "computed, not measured" in out and "memory" not in slope
    # flat times: attention does not outgrow the linear layer, and the claim says so
    assert faster.name == "attention-outgrows-linear" and bool(faster) is shown
    assert ("DOES NOT HOLD" in out) is not shown


# --- the claims the lesson states with common.claims.same and common.claims.every -------------
def test_same_holds_below_the_tolerance_and_never_on_nan():
    close = claims.same("rows", "Each row sums to 1", torch.tensor([1.0, 1.0 + 1e-7]), 1.0)
    assert close and close.text == "Each row sums to 1 (largest difference 1.192e-07)."
    assert not claims.same("rows", "Each row sums to 1", torch.tensor([1.0, 1.5]), 1.0)
    broken = claims.same("rows", "Each row sums to 1", torch.tensor([1.0, float("nan")]), 1.0)
    assert not broken and str(broken).startswith("DOES NOT HOLD: Each row sums to 1 (largest difference nan)")


def test_a_claim_built_from_claims_breaks_with_any_of_them_and_names_it():
    ok, bad = claims.below("ok", "small", 0.0, 1.0), claims.below("bad", "small too", 2.0, 1.0)
    assert claims.every("both", "Both are small.", [ok, ok])
    both = claims.every("both", "Both are small.", [ok, bad])
    assert not both and "Measured: bad: 2; if it held: bad: below 1." in str(both)
