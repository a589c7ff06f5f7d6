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
