"""Lesson 02: MultiHeadAttention against nn.MultiheadAttention, the naive loop, and the lesson's claims."""
import ast
import math
import os
import shutil
import subprocess
import sys

import pytest
import torch
from torch.testing import assert_close

from common import claims, load_lesson
from common.lessons import lesson_path
from conftest import REPO_ROOT, expect_user_error

L02 = load_lesson(2)
causal_mask = load_lesson(1).causal_mask

D_MODEL, N_HEADS, B, T, T_K = 16, 4, 3, 5, 7
TOL = dict(atol=1e-5, rtol=1e-5)


def make_pair(bias=True, seed=0, dropout=0.0):
    """Our MultiHeadAttention and nn.MultiheadAttention(batch_first=True) holding the same weights."""
    torch.manual_seed(seed)
    ours = L02.MultiHeadAttention(D_MODEL, N_HEADS, dropout=dropout, bias=bias).eval()
    with torch.no_grad():  # non-zero biases, so a bias that is dropped or misplaced shows
        for p in ours.parameters():
            p.uniform_(-0.5, 0.5)
    return ours, L02.torch_reference(ours)


def padding_keep(t=T):
    """(B, t) bool, True = a real token; sequences 1 and 2 end with padding."""
    keep = torch.ones(B, t, dtype=torch.bool)
    keep[1, -2:] = False
    keep[2, -3:] = False
    return keep


def case_inputs(kind):
    """query, key/value, our mask (True = may attend), PyTorch's mask kwargs (True = blocked)."""
    x = torch.randn(B, T, D_MODEL)
    if kind == "none":
        return x, x, None, {}
    if kind == "causal":
        return x, x, causal_mask(T), {"attn_mask": ~causal_mask(T)}
    if kind == "padding":
        keep = padding_keep()
        return x, x, keep[:, None, :], {"key_padding_mask": ~keep}  # (B, 1, T_k)
    memory = torch.randn(B, T_K, D_MODEL)  # cross-attention: T_q = 5 queries, T_k = 7 keys
    keep = padding_keep(T_K)
    return x, memory, keep[:, None, :], {"key_padding_mask": ~keep}


@pytest.mark.parametrize("kind", ["none", "causal", "padding", "cross"])
def test_equals_nn_multihead_attention(kind):
    ours, reference = make_pair()
    q, kv, mask, torch_masks = case_inputs(kind)
    with torch.no_grad():
        out, weights = ours(q, kv, kv, mask=mask)
        ref_out, ref_per_head = reference(q, kv, kv, average_attn_weights=False, **torch_masks)
        _, ref_average = reference(q, kv, kv, average_attn_weights=True, **torch_masks)
        loop_out, loop_weights = L02.multi_head_attention_loop(ours, q, kv, kv, mask)
    t_k = kv.size(1)
    assert out.shape == (B, T, D_MODEL) and weights.shape == (B, N_HEADS, T, t_k)
    assert_close(out, ref_out, **TOL)
    assert_close(weights, ref_per_head, **TOL)
    assert_close(weights.mean(1), ref_average, **TOL)
    # the naive loop over heads is the same computation
    assert_close(loop_out, out, **TOL)
    assert_close(loop_weights, weights, **TOL)


@pytest.mark.parametrize("kind", ["none", "causal", "padding", "cross"])
def test_without_weights_and_with_the_fused_opt_in_the_output_is_the_same(kind):
    ours, _ = make_pair()
    fused = L02.MultiHeadAttention(D_MODEL, N_HEADS, fused=True).eval()
    fused.load_state_dict(ours.state_dict())
    assert not ours.fused  # the course's own attention is the default
    q, kv, mask, _ = case_inputs(kind)
    with torch.no_grad():
        naive, _ = ours(q, kv, kv, mask=mask, need_weights=True)
        plain, none = ours(q, kv, kv, mask=mask, need_weights=False)
        fast, also_none = fused(q, kv, kv, mask=mask, need_weights=False)
        fused_with_weights, weights = fused(q, kv, kv, mask=mask)  # weights asked for: lesson 01's path
    assert none is None and also_none is None and weights is not None
    assert torch.equal(plain, naive)  # the same code computed both
    assert_close(fast, naive, **TOL)
    assert torch.equal(fused_with_weights, naive)


def test_every_call_computes_with_lesson_01s_function(monkeypatch):
    ours, _ = make_pair()
    calls = []
    original = L02.scaled_dot_product_attention

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(L02, "scaled_dot_product_attention", counting)
    x = torch.randn(B, T, D_MODEL)
    ours(x, x, x, need_weights=False)
    ours.train()(x, x, x, need_weights=False)
    assert len(calls) == 2


def test_an_edit_to_lesson_01_changes_what_lessons_02_and_04_compute(tmp_path):
    """Copy the lessons and common/ to a temporary folder, remove the 1/sqrt(d_k) scaling from the
    copy of lesson 01, and run the copied lesson 02 (and 04) in a fresh process with the same weights."""
    for n in (1, 2, 4):
        shutil.copy(lesson_path(n), tmp_path)
    shutil.copytree(REPO_ROOT / "common", tmp_path / "common", ignore=shutil.ignore_patterns("__pycache__"))
    lesson_01 = tmp_path / lesson_path(1).name
    lines = lesson_01.read_text().splitlines(keepends=True)
    function = next(node for node in ast.parse("".join(lines)).body
                    if getattr(node, "name", "") == "scaled_dot_product_attention")
    body = "".join(lines[function.lineno - 1:function.end_lineno])
    assert body.count("/ math.sqrt(d_k)") == 1, "the scaling line of lesson 01 changed: update this edit"
    lines[function.lineno - 1:function.end_lineno] = [body.replace("/ math.sqrt(d_k)", "")]
    lesson_01.write_text("".join(lines))
    torch.manual_seed(0)
    mha = L02.MultiHeadAttention(D_MODEL, N_HEADS).eval()
    block = load_lesson(4).TransformerEncoderBlock(D_MODEL, N_HEADS, 2 * D_MODEL).eval()
    x = 3 * torch.randn(B, T, D_MODEL)  # large enough inputs that the scaling matters
    torch.save({"mha": mha.state_dict(), "block": block.state_dict(), "x": x}, tmp_path / "inputs.pt")
    script = f"""
import torch
from common import claims, load_lesson
data = torch.load("inputs.pt")
x, out = data["x"], {{}}
for fused in (False, True):
    mha = load_lesson(2).MultiHeadAttention({D_MODEL}, {N_HEADS}, fused=fused).eval()
    mha.load_state_dict(data["mha"])
    out[fused] = mha(x, x, x, need_weights=False)[0].detach()
    out["weights", fused] = mha(x, x, x)[1].detach()
block = load_lesson(4).TransformerEncoderBlock({D_MODEL}, {N_HEADS}, {2 * D_MODEL}).eval()
block.load_state_dict(data["block"])
out["block"] = block(x).detach()
torch.save(out, "outputs.pt")
"""
    env = dict(os.environ, MPLBACKEND="Agg", OMP_NUM_THREADS="1", PYTHONPATH=str(tmp_path))
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    edited = torch.load(tmp_path / "outputs.pt")
    with torch.no_grad():
        unedited, weights = mha(x, x, x, need_weights=False)[0], mha(x, x, x)[1]
        unedited_block = block(x)
    # The edit reaches the default path (what lesson 05 trains with) and the weights ...
    assert (edited[False] - unedited).abs().max() > 1e-2
    assert (edited["weights", False] - weights).abs().max() > 1e-2
    assert (edited["block"] - unedited_block).abs().max() > 1e-2
    # ... but not the fused opt-in, which computes with PyTorch's kernel (a control: same weights, same x)
    assert_close(edited[True], unedited, **TOL)


def test_weights_are_a_distribution_and_masked_keys_get_zero():
    ours, _ = make_pair()
    x = torch.randn(B, T, D_MODEL)
    keep = padding_keep()
    mask = keep[:, None, :] & causal_mask(T)  # (B, T, T): causal and padding together
    with torch.no_grad():
        _, weights = ours(x, x, x, mask=mask)
    assert_close(weights.sum(-1), torch.ones(B, N_HEADS, T))
    assert (weights[~mask.unsqueeze(1).expand_as(weights)] == 0).all()


def test_query_with_nothing_to_attend_gives_no_nan():
    ours, _ = make_pair()
    x = torch.randn(B, T, D_MODEL)
    mask = torch.ones(B, T, T, dtype=torch.bool)
    mask[0, 2, :] = False  # query 2 of sequence 0 may attend to nothing
    for need_weights in (True, False):
        with torch.no_grad():
            out, weights = ours(x, x, x, mask=mask, need_weights=need_weights)
        assert not out.isnan().any()
        # that query reads nothing: every head returns zeros, so only W_o's bias is left
        assert_close(out[0, 2], ours.W_o.bias.detach(), **TOL)
        if need_weights:
            assert (weights[0, :, 2] == 0).all()


def test_causal_output_ignores_future_tokens():
    ours, _ = make_pair()
    x = torch.randn(B, T, D_MODEL)
    changed = x.clone()
    changed[:, 3:] = torch.randn(B, T - 3, D_MODEL)  # change positions 3.. only
    with torch.no_grad():
        a, _ = ours(x, x, x, mask=causal_mask(T))
        b, _ = ours(changed, changed, changed, mask=causal_mask(T))
    assert_close(a[:, :3], b[:, :3], **TOL)
    assert (a[:, 3:] - b[:, 3:]).abs().max() > 1e-3


def test_no_bias_equals_reference_and_has_no_bias_parameters():
    ours, reference = make_pair(bias=False)
    assert all(W.bias is None for W in (ours.W_q, ours.W_k, ours.W_v, ours.W_o))
    assert sum(p.numel() for p in ours.parameters()) == 4 * D_MODEL**2
    q, kv, mask, torch_masks = case_inputs("causal")
    with torch.no_grad():
        out, weights = ours(q, kv, kv, mask=mask)
        ref_out, ref_weights = reference(q, kv, kv, average_attn_weights=False, **torch_masks)
        loop_out, _ = L02.multi_head_attention_loop(ours, q, kv, kv, mask)
    assert_close(out, ref_out, **TOL)
    assert_close(weights, ref_weights, **TOL)
    assert_close(loop_out, out, **TOL)


def test_batch_mask_of_shape_b_tq_tk_is_applied_per_batch_element():
    ours, reference = make_pair()
    x = torch.randn(B, T, D_MODEL)
    torch.manual_seed(1)
    mask = torch.rand(B, T, T) > 0.4  # a different (T_q, T_k) mask for each batch element
    mask[:, :, 0] = True               # every query keeps at least one key
    with torch.no_grad():
        out, weights = ours(x, x, x, mask=mask)
        # PyTorch takes a 3-D attn_mask as (B * n_heads, T_q, T_k): repeat each element's mask per head
        ref_out, ref_weights = reference(x, x, x, attn_mask=~mask.repeat_interleave(N_HEADS, 0),
                                         average_attn_weights=False)
        for b in range(B):  # and each element alone, with its own 2-D mask
            alone, _ = ours(x[b:b + 1], x[b:b + 1], x[b:b + 1], mask=mask[b])
            assert_close(alone[0], out[b], **TOL)
    assert_close(out, ref_out, **TOL)
    assert_close(weights, ref_weights, **TOL)
    assert (weights[~mask.unsqueeze(1).expand_as(weights)] == 0).all()


def test_per_head_mask_in_the_loop_and_the_class():
    ours, _ = make_pair()
    x = torch.randn(B, T, D_MODEL)
    mask = torch.rand(B, N_HEADS, T, T) > 0.5
    mask[..., 0] = True
    with torch.no_grad():
        out, weights = ours(x, x, x, mask=mask)
        loop_out, loop_weights = L02.multi_head_attention_loop(ours, x, x, x, mask)
    assert_close(loop_out, out, **TOL)
    assert_close(loop_weights, weights, **TOL)


def test_dropout_in_eval_mode_is_off_and_in_train_mode_is_on():
    ours, _ = make_pair(dropout=0.5)
    plain = L02.MultiHeadAttention(D_MODEL, N_HEADS, dropout=0.0).eval()
    plain.load_state_dict(ours.state_dict())
    x = torch.randn(B, T, D_MODEL)
    with torch.no_grad():
        first, w1 = ours(x, x, x)
        second, _ = ours(x, x, x)
        expected, w0 = plain(x, x, x)
        assert_close(first, second, atol=0, rtol=0)
        assert_close(first, expected, **TOL)
        assert_close(w1, w0, **TOL)
        ours.train()
        for need_weights in (True, False):
            dropped, _ = ours(x, x, x, need_weights=need_weights)
            assert (dropped - expected).abs().max() > 1e-3  # dropout really acts in training mode


@pytest.mark.parametrize("kind", ["none", "padding", "cross"])
def test_training_mode_dropout_equals_nn_multihead_attention_with_the_same_random_draws(kind):
    ours, reference = make_pair(dropout=0.3)
    ours.train()
    reference.train()
    q, kv, mask, torch_masks = case_inputs(kind)
    torch.manual_seed(7)
    out, weights = ours(q, kv, kv, mask=mask)
    torch.manual_seed(7)
    ref_out, ref_weights = reference(q, kv, kv, average_attn_weights=False, **torch_masks)
    assert_close(out, ref_out, **TOL)
    # the weights returned are the dropped-out ones that multiplied V, as nn.MultiheadAttention's
    assert_close(weights, ref_weights, **TOL)
    assert (weights == 0).float().mean() > 0.2 and not torch.allclose(weights.sum(-1), torch.ones(1))
    v = ours.split_heads(ours.W_v(kv))
    assert_close(out, ours.W_o(ours.merge_heads(weights @ v)), **TOL)


def test_broken_merge_without_transpose_is_caught():
    ours, reference = make_pair()
    x = torch.randn(B, T, D_MODEL)
    with torch.no_grad():
        expected, _ = reference(x, x, x)
        good, _ = ours(x, x, x)
        ours.merge_heads = L02.merge_heads_without_transpose  # the bug, on this instance only
        bad, _ = ours(x, x, x)
    assert bad.shape == good.shape  # the bug does not change any shape ...
    assert_close(good, expected, **TOL)
    assert (bad - expected).abs().max() > 1e-2  # ... only a comparison catches it


def test_split_heads_and_merge_heads_are_inverses_and_slice_rows():
    mha = L02.MultiHeadAttention(D_MODEL, N_HEADS)
    x = torch.randn(B, T, D_MODEL)
    split = mha.split_heads(x)
    assert split.shape == (B, N_HEADS, T, D_MODEL // N_HEADS)
    assert torch.equal(mha.merge_heads(split), x)
    assert torch.equal(split[:, 1], x[..., mha.d_head:2 * mha.d_head])  # head 1 = columns d_head..2*d_head-1


@pytest.mark.parametrize("d_model,n_heads", [(16, 3), (10, 4), (16, 0), (0, 2), (-8, 2), (8, -2)])
def test_impossible_sizes_raise_value_error(d_model, n_heads):
    with pytest.raises(ValueError):
        L02.MultiHeadAttention(d_model, n_heads)


@pytest.mark.parametrize("d_model", [8, 32, 48])
def test_parameter_count_formula(d_model):
    for n_heads in (h for h in (1, 2, 4, 8, 16) if d_model % h == 0):
        mha = L02.MultiHeadAttention(d_model, n_heads)
        count = sum(p.numel() for p in mha.parameters())
        assert count == L02.attention_parameter_count(d_model) == 4 * d_model**2 + 4 * d_model


def test_learning_rate_warms_up_to_its_peak_then_decays_by_a_cosine():
    steps, warmup = 100, 20
    factors = [L02.warmup_then_cosine(step, steps, warmup) for step in range(steps)]
    assert_close(torch.tensor(factors[:warmup]), torch.arange(1, warmup + 1) / warmup)  # linear warmup
    assert factors[warmup - 1] == factors[warmup] == 1.0  # the peak LR is reached, then the cosine starts
    assert all(a > b for a, b in zip(factors[warmup:], factors[warmup + 1:]))  # strictly decreasing
    assert_close(factors[warmup + (steps - warmup) // 2], 0.5)  # half way through the decay: half
    assert factors[-1] < 0.01
    assert L02.warmup_then_cosine(0, 10, warmup=0) == 1.0  # no warmup: start at the peak


def test_training_steps_adam_at_the_scheduled_learning_rate(monkeypatch):
    seen = []

    class RecordingAdam(torch.optim.Adam):
        def step(self, closure=None):
            seen.append(self.param_groups[0]["lr"])  # the learning rate this step uses
            return super().step(closure)

    monkeypatch.setattr(torch.optim, "Adam", RecordingAdam)
    steps, lr = 30, 0.01
    L02.train_neighbour_model(16, 2, steps=steps, batch_size=8, lr=lr)
    expected = [lr * L02.warmup_then_cosine(step, steps) for step in range(steps)]
    assert_close(torch.tensor(seen), torch.tensor(expected))
    assert max(seen) == lr  # the peak is reached


def test_neighbour_task_targets_are_left_minus_right():
    x, y = L02.neighbour_difference_batch(64, torch.Generator().manual_seed(0))
    n, T = x.shape
    V = L02.VOCAB_SIZE
    for b in range(n):
        for t in range(T):  # on the ring, position 0's left neighbour is position T - 1
            assert y[b, t] == x[b, (t - 1) % T] - x[b, (t + 1) % T] + V - 1
    assert y.min() >= 0 and y.max() <= 2 * V - 2 and len(y.unique()) > V  # many differences occur


def test_several_heads_beat_one_head_and_split_left_and_right():
    x, y = L02.neighbour_difference_batch(500, torch.Generator().manual_seed(123))
    two, _ = L02.train_neighbour_model(32, 2, steps=100, batch_size=64, seed=0)
    one, one_losses = L02.train_neighbour_model(32, 1, steps=100, batch_size=64, seed=0)
    acc_two, avg_two, at_two = L02.evaluate(two, x, y)
    acc_one, avg_one, at_one = L02.evaluate(one, x, y)
    assert acc_two >= acc_one  # several heads beat or match one head ...
    assert acc_two > 0.9 and acc_one < 0.6  # ... here clearly: the task needs both neighbours apart
    left, right = L02.offset_weights(avg_two, -1), L02.offset_weights(avg_two, +1)
    assert left.max() > 0.9 and right.max() > 0.9 and left.argmax() != right.argmax()
    # the heads read fixed positions: freezing their weights at the average keeps the accuracy
    assert L02.accuracy_with_frozen_weights(two, x, y, avg_two) > acc_two - 0.05
    assert at_two.min() > 0.9 and at_one.shape == (1,)  # ... and nearly every row sits at its head's average
    assert not two.training and math.isfinite(one_losses[-1])


def test_frozen_weights_path_reproduces_the_model_when_given_its_own_weights():
    model, _ = L02.train_neighbour_model(16, 2, steps=5, batch_size=8, seed=0)
    x, y = L02.neighbour_difference_batch(50, torch.Generator().manual_seed(5))
    with torch.no_grad():
        _, weights = model(x, need_weights=True)  # (B, n_heads, T, T): each input's own weights
    accuracy, _, _ = L02.evaluate(model, x, y)
    assert L02.accuracy_with_frozen_weights(model, x, y, weights) == accuracy


def test_training_is_deterministic_with_the_seed():
    _, a = L02.train_neighbour_model(16, 2, steps=5, batch_size=8, seed=3)
    _, b = L02.train_neighbour_model(16, 2, steps=5, batch_size=8, seed=3)
    _, c = L02.train_neighbour_model(16, 2, steps=5, batch_size=8, seed=4)
    assert a == b and a != c


def test_smoke_quick_run_writes_the_figure(run_main, capsys):
    out_dir = run_main(2, "--quick")
    png = out_dir / "multi_head_attention.png"
    assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Key insights" in capsys.readouterr().out


@pytest.mark.parametrize("flags,contains", [
    (("--heads", "5"), "--heads 5"),
    (("--heads", "0"), "--heads 0"),
    (("--d-model", "30", "--heads", "4"), "--d-model 30"),
    (("--d-model", "0"), "--d-model"),
    (("--d-model", "100000"), "--d-model 100000"),  # would need 160 GB for W_q .. W_o
])
def test_impossible_sizes_are_one_line_exit_2(capsys, flags, contains):
    err = expect_user_error(capsys, 2, *flags, contains=contains)
    if "--heads" in flags:
        assert "divisors" in err  # names what would work


def test_largest_calls_a_near_tie_a_blend():
    assert L02.largest(torch.tensor([0.83, 0.0, 0.17, 0.0])) == "left neighbour (0.83)"
    assert L02.largest(torch.tensor([0.494, 0.002, 0.497, 0.006])) == "right/left blend (0.50/0.49)"
    assert "blend" in L02.largest(torch.tensor([0.394, 0.067, 0.393, 0.146]))


def ring_weights(sides, T=6):
    """(T, T) average weights of a head whose query t reads its left (-1) or right (+1) neighbour."""
    w = torch.zeros(T, T)
    for t, side in enumerate(sides):
        w[t, (t + side) % T] = 1.0
    return w


def spots(*heads):
    """The table of section 3 for heads given as (T, T) average weights: shares on -1, 0, +1, elsewhere."""
    avg = torch.stack(heads)
    near = torch.stack([L02.offset_weights(avg, k) for k in (-1, 0, +1)], dim=1)
    return torch.cat([near, 1 - near.sum(1, keepdim=True)], dim=1)


def test_the_split_claim_follows_the_table_for_2_and_4_heads():
    left, right = ring_weights([-1] * 6), ring_weights([+1] * 6)
    two = L02.split_claim(spots(left, right))
    assert two and "head 0 (1.00) on the left neighbour, head 1 (1.00) on the right one" in two.text
    # --heads 4, seed 0: heads 0 and 1 blend, head 2 reads the right neighbour for every query, head 3 the
    # left one for 5 of 6 queries (0.83): the table shows one head on each neighbour, and so does the claim
    four = L02.split_claim(spots(0.41 * left + 0.59 * right, 0.67 * left + 0.33 * right, right,
                                 ring_weights([-1, -1, -1, +1, -1, -1])))
    assert four and "head 3 (0.83) on the left neighbour, head 2 (1.00) on the right one" in four.text


def test_the_split_claim_does_not_hold_without_a_reader_on_each_side():
    # right for queries 0-1, left for the others: 4 of 6 rows (0.67) on the left, not a left reader
    mixed = ring_weights([+1, +1, -1, -1, -1, -1])
    assert not L02.split_claim(spots(mixed, ring_weights([+1] * 6)))
    half = 0.49 * ring_weights([-1] * 6) + 0.51 * ring_weights([+1] * 6)
    assert not L02.split_claim(spots(half, half))
    broken = L02.split_claim(spots(ring_weights([-1] * 6), ring_weights([-1] * 6)))  # both read the left
    assert not broken and "no head on the right one" in str(broken) and "DOES NOT HOLD" in str(broken)


def measured(correct, frozen, at_avg=1.0):
    """One model's measurements as section 3 keeps them (1 head on a ring of 6, share in spots)."""
    return dict(correct=correct, frozen=frozen, spots=spots(ring_weights([-1] * 6)), at_avg=torch.tensor([at_avg]))


@pytest.mark.parametrize("frozen, costs", [(12000, False), (11990, False), (9892, True)])
def test_freezing_is_a_finding_only_beyond_the_noise(capsys, frozen, costs):
    n = 12000
    results = {2: dict(measured(11995, frozen), spots=spots(ring_weights([-1] * 6), ring_weights([+1] * 6))),
               1: measured(1626, 1500, at_avg=0.2)}
    said = L02.section_3_findings(results, 1190, n, 2)
    out = " ".join(capsys.readouterr().out.split())
    assert [c.name for c in said] == ["heads-beat-one", "heads-split"] and all(said)
    assert ("some of its weights follow the digits too" in out) is costs
    assert ("it needs no weights that follow the digits" in out) is not costs


def test_one_head_at_chance_is_said_to_be_inside_the_noise(capsys):
    # --seed 1: one head 10.25% of 12000, always answering 0 10.07%: no finding
    results = {1: measured(1230, 1230)}
    L02.section_3_findings(results, 1209, 12000, 1)
    out = " ".join(capsys.readouterr().out.split())
    assert "against 10.07% (9.55-10.63) for always answering 0: a difference inside the noise" in out


@pytest.mark.parametrize("at_avg, holds", [(0.17, True), (0.9, False)])
def test_frozen_below_always_0_is_explained_by_a_blend_the_model_rarely_made(capsys, at_avg, holds):
    # seed 0: one head frozen at 3.94% of 12000, below always answering 0 (9.92%), beyond the noise
    claims.reset()
    L02.section_3_findings({1: measured(1626, 473, at_avg=at_avg)}, 1190, 12000, 1)
    out = " ".join(capsys.readouterr().out.split())
    (why,) = [c for c in claims.made if c.name == "frozen-blend-unseen"]
    assert bool(why) is holds and f"only {at_avg:.0%} of its rows lie within 0.1 of the average blend" in out
    assert ("DOES NOT HOLD" in out) is not holds


def test_shares_are_a_finding_only_beyond_their_noise():
    # --seed 1's one head against always answering 0: 1230 and 1209 of 12000
    assert claims.noise(1230, 12000, 1209, 12000).startswith("a difference inside the noise")
    assert not claims.share_above("one-head", "one head beats always-0", 1230, 12000, 1209, 12000)
    assert claims.noise(1626, 12000, 1190, 12000) == "a difference beyond the noise"
    assert claims.share_above("one-head", "one head beats always-0", 1626, 12000, 1190, 12000)
    assert not claims.share_above("one-head", "reversed", 1190, 12000, 1626, 12000)
    assert claims.noise(1230, 12000, 1230, 12000) == "no difference"
