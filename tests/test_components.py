"""The ablations' building blocks (challenges/components.py) against their references.

PyTorch's own modules where one exists (nn.RMSNorm, F.cross_entropy's label smoothing, lesson 02's
MultiHeadAttention), closed forms and hand-computed rotations otherwise, and the property each
block is there for (RoPE: scores depend on the offset only; no positions: permutation-equivariant;
decoder-only: never looks at the future).
"""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from challenges import components
from common import load_lesson

L1, L2, L3, L4, L5 = (load_lesson(n) for n in range(1, 6))


def test_attention_without_scale_is_softmax_of_q_k():
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 3, 5, 8), torch.randn(2, 3, 6, 8), torch.randn(2, 3, 6, 4)
    mask = torch.rand(2, 1, 5, 6) > 0.3
    out, weights = components.attention_without_scale(q, k, v, mask)
    scores = (q @ k.transpose(-2, -1)).masked_fill(~mask, float("-inf"))       # no / sqrt(8)
    expected = torch.softmax(scores, dim=-1).nan_to_num(0.0)
    torch.testing.assert_close(weights, expected)
    torch.testing.assert_close(out, expected @ v)
    scaled, _ = L1.scaled_dot_product_attention(q, k, v, mask)
    assert (out - scaled).abs().max() > 1e-2                                    # the division did change things


def test_rope_is_the_hand_computed_rotation():
    x = torch.tensor([[1.0, 2.0, 3.0, -1.0]])                                   # (T=1, d_head=4): two pairs
    p = 3.0
    w = L3.pair_frequencies(4)                                                  # 1 and 1/100 for the default BASE
    rotated = components.apply_rope(x, torch.tensor([p]))
    for i, (a, b) in enumerate(((1.0, 2.0), (3.0, -1.0))):
        c, s = math.cos(p * w[i]), math.sin(p * w[i])
        torch.testing.assert_close(rotated[0, 2 * i:2 * i + 2], torch.tensor([a * c - b * s, a * s + b * c]))
    # the same block of 2x2 rotations as lesson 03's relative_position_matrix (x M_p, rows as vectors)
    torch.manual_seed(0)
    y = torch.randn(5, 16)
    for p in (0, 1, 7, 40):
        M = L3.relative_position_matrix(p, 16).float()
        torch.testing.assert_close(components.apply_rope(y, torch.full((5,), p)), y @ M, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(components.apply_rope(y, torch.zeros(5)), y)          # position 0: unchanged
    torch.testing.assert_close(components.apply_rope(y, torch.arange(5)).norm(dim=-1), y.norm(dim=-1))


def test_rope_scores_depend_only_on_the_offset():
    torch.manual_seed(1)
    q, k = torch.randn(16), torch.randn(16)                                     # one query and one key vector

    def score(p_q, p_k):
        rq = components.apply_rope(q[None], torch.tensor([p_q]))
        rk = components.apply_rope(k[None], torch.tensor([p_k]))
        return float(rq @ rk.T)

    for offset in (-5, 0, 3, 11):
        scores = [score(p, p + offset) for p in (0, 4, 9, 30)]
        assert max(scores) - min(scores) < 1e-4, (offset, scores)
    assert abs(score(0, 3) - score(0, 5)) > 1e-3                                 # but the offset does matter


def window_of_two(T):
    """(T, T) boolean, True = may attend: query i sees keys i-1 and i."""
    i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
    return (j <= i) & (j >= i - 1)


def test_rotary_self_attention_keeps_lesson_02s_weights_and_is_shift_invariant():
    torch.manual_seed(2)
    mha = L2.MultiHeadAttention(16, 2).eval()
    rotary = components.RotarySelfAttention(mha).eval()
    assert rotary.attention is mha and sum(p.numel() for p in rotary.parameters()) == \
        sum(p.numel() for p in mha.parameters())                                 # no new weights
    one = torch.randn(3, 1, 16)
    torch.testing.assert_close(rotary(one, one, one)[0], mha(one, one, one)[0])   # position 0 is not rotated
    # with a window of 2 keys (itself and the one before), prepending a token changes nothing for the
    # old tokens: only offsets matter; yet the rotation does change the result (positions are used)
    x, z = torch.randn(3, 6, 16), torch.randn(3, 1, 16)
    out = rotary(x, x, x, mask=window_of_two(6))[0]
    shifted = torch.cat([z, x], dim=1)
    out_shifted = rotary(shifted, shifted, shifted, mask=window_of_two(7))[0]
    torch.testing.assert_close(out[:, 1:], out_shifted[:, 2:], atol=1e-5, rtol=1e-5)
    assert (out - mha(x, x, x, mask=window_of_two(6))[0]).abs().max() > 1e-3
    # decoding with lesson 05's prefix cache: the newest query alone gets the last row of the full pass
    causal = L1.causal_mask(6)
    full = rotary(x, x, x, mask=causal)[0]
    torch.testing.assert_close(rotary(x[:, -1:], x, x)[0], full[:, -1:], atol=1e-5, rtol=1e-5)


def test_no_positions_makes_the_encoder_permutation_equivariant_and_learned_ones_do_not():
    torch.manual_seed(3)
    model = L5.Seq2SeqTransformer(d_model=16, n_heads=2, d_ff=32).eval()
    src = torch.randint(L5.FIRST_DIGIT, model.vocab_size, (4, 7))
    perm = torch.randperm(7)

    def equivariant():
        with torch.no_grad():
            return torch.allclose(model.encode(src[:, perm])[0], model.encode(src)[0][:, perm], atol=1e-5)

    assert not equivariant()                                                    # lesson 03's sinusoids
    model.positions = components.NoPositions()
    assert equivariant()
    model.positions = components.LearnedPositions(16, max_len=64)
    assert not equivariant()


def test_learned_positions_add_a_trained_table():
    torch.manual_seed(4)
    positions = components.LearnedPositions(8, max_len=10)
    x = torch.randn(2, 5, 8)
    torch.testing.assert_close(positions(x) - x, positions.table.weight[:5].expand(2, 5, 8))
    positions(x).sum().backward()
    assert positions.table.weight.grad[:5].abs().sum() > 0 and positions.table.weight.grad[5:].abs().sum() == 0
    with pytest.raises(ValueError, match="max_len 10"):
        positions(torch.randn(1, 11, 8))


def test_rmsnorm_equals_pytorchs():
    torch.manual_seed(5)
    ours, theirs = components.RMSNorm(12, eps=1e-5), nn.RMSNorm(12, eps=1e-5)
    with torch.no_grad():
        ours.weight.copy_(torch.randn(12))
        theirs.weight.copy_(ours.weight)
    x = 3 * torch.randn(4, 5, 12) + 1
    torch.testing.assert_close(ours(x), theirs(x))
    # no mean subtracted: unlike LayerNorm, a constant vector keeps its sign
    torch.testing.assert_close(components.RMSNorm(4)(torch.full((1, 4), 2.0)), torch.ones(1, 4), atol=1e-5, rtol=0)


def test_swiglu_is_the_closed_form_with_about_the_ffn_parameters():
    torch.manual_seed(6)
    ff = components.SwiGLU(16, 21)
    x = torch.randn(3, 4, 16)
    gate, up = x @ ff.W_gate.weight.T, x @ ff.W_up.weight.T
    expected = (gate * torch.sigmoid(gate) * up) @ ff.W_down.weight.T            # silu(z) = z sigmoid(z)
    torch.testing.assert_close(ff(x), expected)
    for d_model, d_ff in ((32, 128), (64, 256), (16, 32), (16, 31)):
        relu = L4.FeedForward(d_model, d_ff)
        weights = relu.linear1.weight.numel() + relu.linear2.weight.numel()    # 2 d_model d_ff, biases aside
        gated = sum(p.numel() for p in components.SwiGLU(d_model, components.swiglu_width(d_ff)).parameters())
        assert abs(gated - weights) <= 1.5 * d_model, (d_model, d_ff, gated, weights)   # 3 d_model round(2/3 d_ff)


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.3])
def test_label_smoothing_written_out_equals_pytorchs(smoothing):
    torch.manual_seed(7)
    logits = torch.randn(4, 13, 6, requires_grad=True)                           # (B, V, T)
    target = torch.randint(3, 13, (4, 6))
    target[:, 4:] = L5.PAD                                                       # ignored positions
    ours = components.label_smoothed_cross_entropy(logits, target, smoothing, ignore_index=L5.PAD)
    theirs = F.cross_entropy(logits, target, ignore_index=L5.PAD, label_smoothing=smoothing)
    torch.testing.assert_close(ours, theirs)
    g_ours, = torch.autograd.grad(ours, logits)
    g_theirs, = torch.autograd.grad(theirs, logits)
    torch.testing.assert_close(g_ours, g_theirs)


def test_decoder_only_never_looks_at_the_future_and_reads_the_input():
    torch.manual_seed(8)
    model = components.DecoderOnlyTransformer(d_model=16, n_heads=2, n_layers=2, d_ff=32).eval()
    config = L5.TrainConfig(seq_len=5)
    src = L5.sample_inputs(4, 5, 3, 10, torch.Generator().manual_seed(0))    # lengths 3..5: PAD inside
    batch = L5.make_batch(src, config)
    with torch.no_grad():
        logits = model(batch.src, batch.tgt_in)
        assert logits.shape == (4, batch.tgt_in.size(1), model.vocab_size)
        k = 3
        changed = batch.tgt_in.clone()
        changed[:, k:] = L5.FIRST_DIGIT + (changed[:, k:] - L5.FIRST_DIGIT + 1) % 10
        moved = (model(batch.src, changed) - logits).abs()
        assert moved[:, :k].max() == 0 and moved[:, k:].max() > 1e-3           # only positions k.. moved
        other = batch.src.clone()
        other[:, 0] = L5.FIRST_DIGIT + (other[:, 0] - L5.FIRST_DIGIT + 1) % 10
        assert (model(other, batch.tgt_in) - logits)[:, 0].abs().max() > 1e-3  # the first answer reads the input
    # and lesson 05's teacher-forced evaluation and training loop take it as they are
    assert set(L5.evaluate_teacher_forced(model, batch)) == {"loss", "token_accuracy", "exact_match"}


# ---------------------------------------------------------------- LLaMA's and Mistral's pieces
def test_rope_halves_is_the_hand_computed_rotation_and_the_course_rope_reordered():
    x = torch.tensor([[1.0, 3.0, 2.0, -1.0]])                                   # pairs (0, 2) and (1, 3)
    p, w = 3.0, L3.pair_frequencies(4)
    rotated = components.apply_rope_halves(x, torch.tensor([p]))
    for i, (a, b) in enumerate(((1.0, 2.0), (3.0, -1.0))):
        c, s = math.cos(p * w[i]), math.sin(p * w[i])
        torch.testing.assert_close(rotated[0, [i, i + 2]], torch.tensor([a * c - b * s, a * s + b * c]))
    order = components.halves_order(8)
    assert order.tolist() == [0, 2, 4, 6, 1, 3, 5, 7]
    torch.manual_seed(9)
    y, positions = torch.randn(2, 3, 6, 8), torch.arange(6)
    torch.testing.assert_close(components.apply_rope_halves(y[..., order], positions),
                               components.apply_rope(y, positions)[..., order])
    assert (components.apply_rope_halves(y, positions) - components.apply_rope(y, positions)).abs().max() > 1e-2


@pytest.mark.parametrize("n_kv_heads", [4, 2, 1])
def test_interleaved_rope_with_reordered_rows_equals_halves_rope(n_kv_heads):
    torch.manual_seed(10)
    halves = components.GroupedQueryAttention(32, 4, n_kv_heads, bias=False, rope="halves").eval()
    pairs = components.GroupedQueryAttention(32, 4, n_kv_heads, bias=False, rope="interleaved").eval()
    pairs.load_state_dict(halves.state_dict())
    x, causal = torch.randn(2, 7, 32), L1.causal_mask(7)
    with torch.no_grad():
        assert (pairs(x, x, x, causal)[0] - halves(x, x, x, causal)[0]).abs().max() > 1e-2   # as is: differs
        for W, n in ((pairs.attention.W_q, 4), (pairs.attention.W_k, n_kv_heads)):
            W.weight.copy_(components.halves_to_interleaved(W.weight, n))
        torch.testing.assert_close(pairs(x, x, x, causal)[0], halves(x, x, x, causal)[0], atol=1e-6, rtol=1e-5)


def test_halves_to_interleaved_reorders_rows_inside_each_head_only():
    weight = torch.arange(16.0)[:, None].expand(16, 3)                          # row r holds r: 2 heads of 8
    moved = components.halves_to_interleaved(weight, n_heads=2)[:, 0]
    order = components.halves_order(8)
    assert moved[:8][order].tolist() == list(range(8)) and moved[8:][order].tolist() == list(range(8, 16))


def test_gqa_with_as_many_kv_heads_as_heads_is_lesson_02s_attention():
    torch.manual_seed(11)
    mha = L2.MultiHeadAttention(16, 4).eval()
    gqa = components.GroupedQueryAttention(16, 4).eval()                       # n_kv_heads = n_heads
    assert isinstance(gqa.attention, L2.MultiHeadAttention)
    gqa.attention.load_state_dict(mha.state_dict())
    x, memory = torch.randn(3, 5, 16), torch.randn(3, 7, 16)
    mask = torch.rand(3, 5, 7) > 0.3                                            # (B, T_q, T_k), True = may attend
    for ours, theirs in zip(gqa(x, memory, memory, mask), mha(x, memory, memory, mask)):
        torch.testing.assert_close(ours, theirs)


@pytest.mark.parametrize("n_kv_heads", [2, 1])
def test_gqa_equals_lesson_02s_attention_with_each_kv_head_copied_to_its_query_heads(n_kv_heads):
    torch.manual_seed(12)
    gqa = components.GroupedQueryAttention(16, 4, n_kv_heads).eval()
    assert gqa.attention.W_k.weight.shape == (n_kv_heads * 4, 16)               # smaller W_k and W_v
    mha = L2.MultiHeadAttention(16, 4).eval()
    group, head_of = 4 // n_kv_heads, lambda h: slice(h * 4, (h + 1) * 4)       # noqa: E731
    with torch.no_grad():
        for name in ("W_q", "W_o"):
            getattr(mha, name).load_state_dict(getattr(gqa.attention, name).state_dict())
        for name in ("W_k", "W_v"):
            ours, theirs = getattr(gqa.attention, name), getattr(mha, name)
            for h in range(4):                                                  # query head h reads kv head h // group
                theirs.weight[head_of(h)] = ours.weight[head_of(h // group)]
                theirs.bias[head_of(h)] = ours.bias[head_of(h // group)]
    x = torch.randn(2, 6, 16)
    for ours, theirs in zip(gqa(x, x, x, L1.causal_mask(6)), mha(x, x, x, L1.causal_mask(6))):
        torch.testing.assert_close(ours, theirs)
    with pytest.raises(ValueError, match="must divide"):
        components.GroupedQueryAttention(16, 4, 3)


def test_gqa_cache_bytes_shrink_with_the_kv_heads_and_decoding_reads_the_cache():
    sizes = {n: components.cache_bytes_per_token(components.GroupedQueryAttention(32, 4, n)) for n in (4, 2, 1)}
    assert sizes == {4: 2 * 4 * 8 * 4, 2: 2 * 2 * 8 * 4, 1: 2 * 1 * 8 * 4}     # 2 (k, v) x n_kv x d_head x 4 bytes
    with torch.device("meta"):
        big = components.GroupedQueryAttention(4096, 32, 8, bias=False).to(torch.bfloat16)
    assert components.cache_bytes_per_token(big) == 2 * 8 * 128 * 2             # Mistral 7B: 4 KiB per layer
    torch.manual_seed(13)
    gqa = components.GroupedQueryAttention(32, 4, 2, rope="interleaved").eval()
    x = torch.randn(2, 6, 32)
    with torch.no_grad():
        full = gqa(x, x, x, L1.causal_mask(6))[0]
        torch.testing.assert_close(gqa(x[:, -1:], x, x)[0], full[:, -1:], atol=1e-5, rtol=1e-5)  # newest query


def test_sliding_window_blocks_keys_further_back_than_the_window_and_never_the_diagonal():
    T = 9
    for window in (1, 2, 3, 8):
        mask = components.sliding_window_mask(T, window)
        for i in range(T):
            for j in range(T):
                assert mask[i, j] == (i - window < j <= i), (window, i, j)
        assert mask.diagonal().all()
    assert torch.equal(components.sliding_window_mask(T, T), L1.causal_mask(T))    # window >= T: causal
    assert torch.equal(components.sliding_window_mask(T, 1), torch.eye(T, dtype=torch.bool))
    with pytest.raises(ValueError, match="window >= 1"):
        components.sliding_window_mask(T, 0)


def test_decoder_only_mask_is_causal_and_blocks_padded_keys():
    keep = torch.tensor([[True] * 5, [True, True, False, False, False]])
    mask = components.decoder_only_mask(5, keep)
    assert mask.shape == (2, 5, 5) and torch.equal(mask[0], L1.causal_mask(5))
    assert not mask[1, :, 2:].any() and torch.equal(mask[1, :, :2], L1.causal_mask(5)[:, :2])
    windowed = components.decoder_only_mask(5, keep, window=2)
    assert torch.equal(windowed[0], components.sliding_window_mask(5, 2))
    assert not windowed[1, 4].any()                                             # keys 3, 4 are padding: nothing left
