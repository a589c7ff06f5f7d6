"""Lesson 04: the encoder block and stack against PyTorch's, and the properties the lesson teaches."""
import pytest
import torch
import torch.nn as nn
from torch.testing import assert_close

from common import claims, load_lesson
from conftest import expect_user_error

L04 = load_lesson(4)
causal_mask = load_lesson(1).causal_mask

D_MODEL, N_HEADS, D_FF, B, T = 16, 4, 32, 3, 5


def make_pair(norm_first, seed=0):
    """An nn.TransformerEncoderLayer and our block with its weights copied in, both in eval mode."""
    torch.manual_seed(seed)
    reference = nn.TransformerEncoderLayer(D_MODEL, N_HEADS, D_FF, dropout=0.0, batch_first=True,
                                           norm_first=norm_first).eval()
    ours = L04.TransformerEncoderBlock(D_MODEL, N_HEADS, D_FF, norm_first=norm_first).eval()
    return L04.copy_weights_from_torch(ours, reference), reference


def padding_keep():
    """(B, T) bool, True = a real token; the last sequences end with padding."""
    keep = torch.ones(B, T, dtype=torch.bool)
    keep[1, -2:] = False
    keep[2, -1:] = False
    return keep


@pytest.mark.parametrize("norm_first", [False, True], ids=["post-LN", "pre-LN"])
@pytest.mark.parametrize("mask_kind", ["none", "causal", "padding"])
def test_block_equals_torch_layer(norm_first, mask_kind):
    ours, reference = make_pair(norm_first)
    x = torch.randn(B, T, D_MODEL)
    keep = padding_keep()
    if mask_kind == "none":
        our_mask, torch_kwargs = None, {}
    elif mask_kind == "causal":
        # ours: True = may attend; PyTorch's src_mask: True = blocked, hence ~mask
        our_mask, torch_kwargs = causal_mask(T), {"src_mask": ~causal_mask(T)}
    else:
        our_mask, torch_kwargs = keep[:, None, :], {"src_key_padding_mask": ~keep}  # (B, 1, T_k)
    with torch.no_grad():
        expected = reference(x, **torch_kwargs)
        got = ours(x, mask=our_mask)
    assert got.shape == (B, T, D_MODEL)
    if mask_kind == "padding":
        # Only the real tokens are compared. In eval mode without gradients PyTorch may take its
        # "fast path" (fused kernels, nested tensors inside nn.TransformerEncoder), which is free to
        # return anything (zeros, typically) for padded query rows; ours computes them like any
        # other row. Padded rows are thrown away by any model, so only real rows must agree.
        assert_close(got[keep], expected[keep], atol=1e-5, rtol=1e-5)
    else:
        assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("norm_first", [False, True], ids=["post-LN", "pre-LN"])
def test_block_gradients_equal_torch_layer(norm_first):
    # With gradients on, PyTorch takes its ordinary path: the backward pass must agree too.
    ours, reference = make_pair(norm_first)
    x = torch.randn(B, T, D_MODEL)
    x_ours, x_ref = x.clone().requires_grad_(), x.clone().requires_grad_()
    ours(x_ours, mask=causal_mask(T)).square().sum().backward()
    reference(x_ref, src_mask=~causal_mask(T)).square().sum().backward()
    assert_close(x_ours.grad, x_ref.grad, atol=1e-4, rtol=1e-4)
    assert_close(ours.feed_forward.linear1.weight.grad, reference.linear1.weight.grad, atol=1e-4, rtol=1e-4)


def test_copy_weights_refuses_a_different_layout():
    reference = nn.TransformerEncoderLayer(D_MODEL, N_HEADS, D_FF, batch_first=True, norm_first=True)
    with pytest.raises(ValueError, match="norm_first"):
        L04.copy_weights_from_torch(L04.TransformerEncoderBlock(D_MODEL, N_HEADS, D_FF), reference)


def test_post_ln_and_pre_ln_differ_with_the_same_weights():
    post = L04.TransformerEncoderBlock(D_MODEL, N_HEADS, D_FF, norm_first=False).eval()
    pre = L04.TransformerEncoderBlock(D_MODEL, N_HEADS, D_FF, norm_first=True).eval()
    pre.load_state_dict(post.state_dict())
    x = torch.randn(B, T, D_MODEL)
    with torch.no_grad():
        assert (post(x) - pre(x)).abs().max() > 1e-2


@pytest.mark.parametrize("norm_first", [False, True], ids=["post-LN", "pre-LN"])
def test_return_weights_gives_the_same_output(norm_first):
    block = L04.TransformerEncoderBlock(D_MODEL, N_HEADS, D_FF, norm_first=norm_first).eval()
    x = torch.randn(B, T, D_MODEL)
    mask = causal_mask(T)
    with torch.no_grad():
        plain = block(x, mask=mask)
        with_weights, weights = block(x, mask=mask, return_weights=True)
    assert_close(plain, with_weights, atol=1e-5, rtol=1e-5)
    assert weights.shape == (B, N_HEADS, T, T)
    assert_close(weights.sum(-1), torch.ones(B, N_HEADS, T))
    assert (weights[..., ~mask] == 0).all()  # nothing attends to the future


@pytest.mark.parametrize("norm_first", [False, True], ids=["post-LN", "pre-LN"])
def test_encoder_equals_torch_encoder(norm_first):
    n_layers = 3
    torch.manual_seed(1)
    layer = nn.TransformerEncoderLayer(D_MODEL, N_HEADS, D_FF, dropout=0.0, batch_first=True,
                                       norm_first=norm_first)
    reference = nn.TransformerEncoder(layer, n_layers, norm=nn.LayerNorm(D_MODEL) if norm_first else None,
                                      enable_nested_tensor=False).eval()
    # nn.TransformerEncoder deep-copies `layer`: give each copy its own weights, so a mix-up of
    # layers (or of the final norm) cannot go unnoticed.
    with torch.no_grad():
        for p in reference.parameters():
            p.add_(0.1 * torch.randn_like(p))
    ours = L04.TransformerEncoder(n_layers, D_MODEL, N_HEADS, D_FF, norm_first=norm_first).eval()
    for block, layer in zip(ours.layers, reference.layers, strict=True):  # block by block, then the final norm
        L04.copy_weights_from_torch(block, layer)
    if norm_first:
        ours.norm.load_state_dict(reference.norm.state_dict())
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in reference.parameters())
    x = torch.randn(B, T, D_MODEL)
    with torch.no_grad():
        assert_close(ours(x), reference(x), atol=1e-5, rtol=1e-5)
        assert_close(ours(x, mask=causal_mask(T)), reference(x, mask=~causal_mask(T)), atol=1e-5, rtol=1e-5)
        out, all_weights = ours(x, return_weights=True)
    assert_close(out, ours(x).detach(), atol=1e-5, rtol=1e-5)
    assert len(all_weights) == n_layers and all(w.shape == (B, N_HEADS, T, T) for w in all_weights)


def test_parameter_count_formula():
    block = L04.TransformerEncoderBlock(D_MODEL, N_HEADS, D_FF)
    formula = 4 * (D_MODEL ** 2 + D_MODEL) + 2 * D_MODEL * D_FF + D_FF + D_MODEL + 4 * D_MODEL
    assert sum(p.numel() for p in block.parameters()) == formula
    pre = L04.TransformerEncoder(3, D_MODEL, N_HEADS, D_FF, norm_first=True)
    assert sum(p.numel() for p in pre.parameters()) == 3 * formula + 2 * D_MODEL


def test_feed_forward_is_position_wise():
    ffn = L04.FeedForward(D_MODEL, D_FF).eval()
    x = torch.randn(B, T, D_MODEL)
    perm = torch.randperm(T)
    with torch.no_grad():
        y = ffn(x)
        assert y.shape == (B, T, D_MODEL)
        assert_close(ffn(x[:, 2:3]), y[:, 2:3])             # one token alone = inside the sequence
        assert_close(ffn(x[:, perm]), y[:, perm])           # shuffling tokens shuffles the outputs
        x2 = x.clone()
        x2[:, 0] += 1.0
        assert_close(ffn(x2)[:, 1:], y[:, 1:])              # other tokens are untouched
        assert (ffn(x2)[:, 0] - y[:, 0]).abs().max() > 1e-3  # ... while token 0 did change


def test_layernorm_is_per_token():
    block = L04.TransformerEncoderBlock(D_MODEL, N_HEADS, D_FF)
    scales = torch.tensor([0.1, 1.0, 5.0, 20.0, 0.5])
    offsets = torch.tensor([-3.0, 0.0, 2.0, 10.0, 7.0])
    x = torch.randn(B, T, D_MODEL) * scales[:, None] + offsets[:, None]
    with torch.no_grad():
        y = block.norm1(x)
        mean, std = L04.per_token_stats(y)
        assert_close(mean, torch.zeros(B, T), atol=1e-5, rtol=0)
        # std 1 up to LayerNorm's eps: exactly sqrt(var / (var + eps)) with var over one token
        var = x.var(dim=-1, unbiased=False)
        assert_close(std, torch.sqrt(var / (var + block.norm1.eps)), atol=1e-5, rtol=1e-5)
        assert (std - 1).abs().max() < 2e-3
        assert_close(block.norm1(x[:, 3:4]), y[:, 3:4])  # a token alone: the same result


@pytest.mark.parametrize("norm_first", [False, True], ids=["post-LN", "pre-LN"])
def test_causal_outputs_ignore_future_tokens(norm_first):
    block = L04.TransformerEncoderBlock(D_MODEL, N_HEADS, D_FF, norm_first=norm_first).eval()
    encoder = L04.TransformerEncoder(2, D_MODEL, N_HEADS, D_FF, norm_first=norm_first).eval()
    x = torch.randn(B, T, D_MODEL)
    x_future = x.clone()
    x_future[:, 3:] = torch.randn(B, T - 3, D_MODEL)  # change tokens 3.. only
    mask = causal_mask(T)
    with torch.no_grad():
        for model in (block, encoder):
            a, b = model(x, mask=mask), model(x_future, mask=mask)
            assert_close(a[:, :3], b[:, :3])                 # positions 0..2 cannot see 3..
            assert (a[:, 3:] - b[:, 3:]).abs().max() > 1e-3  # the changed positions do change
            unmasked = model(x_future)
            assert (unmasked[:, :3] - a[:, :3]).abs().max() > 1e-3  # without a mask, they would


def test_dropout_only_in_train_mode():
    torch.manual_seed(0)
    block = L04.TransformerEncoderBlock(D_MODEL, N_HEADS, D_FF, dropout=0.3)
    no_dropout = L04.TransformerEncoderBlock(D_MODEL, N_HEADS, D_FF, dropout=0.0)
    no_dropout.load_state_dict(block.state_dict())
    x = torch.randn(B, T, D_MODEL)
    block.train()
    assert (block(x) - block(x)).abs().max() > 1e-3  # two draws of the dropout masks differ
    block.eval()
    no_dropout.eval()
    with torch.no_grad():
        assert_close(block(x), block(x))
        assert_close(block(x), no_dropout(x))  # eval mode: dropout switched off entirely
        assert_close(block(x, return_weights=True)[0], no_dropout(x))


def test_depth_study_shows_what_sections_6_and_7_say():
    study = dict(L04.DEPTH_STUDY, depths=sorted(L04.DEPTH_STUDY["depths"]))  # the lesson's default run
    results, attention = L04.depth_study(study, "cpu")
    largest_weight, attn_sim, input_sim = attention["largest"], attention["sim_out"], attention["sim_in"]
    post, pre, no_res = results["post-LN"], results["pre-LN"], results["no residual"]
    n_seeds, n_depths = len(study["seeds"]), len(study["depths"])
    assert post["first"].shape == (n_seeds, n_depths) and post["per_layer"].shape == (n_seeds, study["depths"][-1])
    first = {k: r["first"].mean(0) for k, r in results.items()}
    # section 6: without residuals the first block's gradient collapses with depth, with them it stays
    assert first["no residual"][-1] < 0.3 * first["no residual"][0]
    assert first["no residual"][-1] < 0.5 * min(first["post-LN"][-1], first["pre-LN"][-1])
    assert min(first["post-LN"][-1] / first["post-LN"][0], first["pre-LN"][-1] / first["pre-LN"][0]) > 0.5
    assert (no_res["similarity"][:, 0] > 0.99).all() and (post["similarity"][:, 0] < 0.5).all()
    # at initialisation attention spreads its weight, so its outputs are alike for every token
    assert 1 / study["T"] <= largest_weight < 0.5 and attn_sim > 0.8 > 0.2 > input_sim
    # why shallow stacks without residuals get more: LayerNorm divides by a sublayer output's small std
    assert attention["std_out"] < 0.3 < 0.9 < attention["std_sum"]
    assert (no_res["first"][:, 0] > post["first"][:, 0]).all()
    # section 7, measured alike: post-LN's first block gets less than its last, pre-LN's more
    assert (post["first"][:, -1] < post["last"][:, -1]).all() and (pre["first"][:, -1] > pre["last"][:, -1]).all()
    assert (pre["stream_std"][:, -1] > pre["stream_std"][:, 0]).all()  # pre-LN's stream grows with depth
    assert_close(post["stream_std"], torch.ones(n_seeds, n_depths), atol=2e-3, rtol=0)  # post-LN's is normalised


def test_gradient_measure_leaves_layernorms_out():
    block = L04.TransformerEncoderBlock(D_MODEL, N_HEADS, D_FF)
    block(torch.randn(B, T, D_MODEL)).square().sum().backward()
    sublayers = [*block.self_attn.parameters(), *block.feed_forward.parameters()]
    expected = torch.sqrt(sum((p.grad ** 2).sum() for p in sublayers))
    assert_close(torch.tensor(L04.sublayer_grad_norm(block)), expected)
    with torch.no_grad():
        block.norm2.weight.grad.mul_(1000)  # a LayerNorm's gradient does not enter the measure
    assert_close(torch.tensor(L04.sublayer_grad_norm(block)), expected)


def test_without_residual_is_the_post_ln_block_minus_its_two_additions():
    block = L04.TransformerEncoderBlock(D_MODEL, N_HEADS, D_FF).eval()
    x = torch.randn(B, T, D_MODEL)
    with torch.no_grad():
        h = block.norm1(block.self_attn(x, x, x)[0])
        assert_close(L04.without_residual(block)(x), block.norm2(block.feed_forward(h)))


def test_lesson_quick_run_writes_its_figures_and_its_depth_study_follows_the_seed(run_main, capsys):
    tables = {}
    for seed in ("0", "3"):
        out = run_main(4, "--quick", "--seed", seed)
        for name in ("transformer_block_gradients.png", "transformer_block_layernorm.png"):
            path = out / name
            assert path.exists(), name
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        text = " ".join(capsys.readouterr().out.split())
        assert f"seeds ({seed}, {int(seed) + 1})" in text  # QUICK_DEPTH_STUDY's seed offsets 0 and 1, added to --seed
        assert "DOES NOT HOLD" not in text
        tables[seed] = text.split("6. What residual")[1].split('"sim" is')[0]
    assert tables["0"] != tables["3"]


def flat(text):
    """Printed text as one line: the console wraps paragraphs, also after the hyphen of 'post-LN'."""
    return " ".join(text.split()).replace("- ", "-")


def fake_results(first, last, depths):
    """Depth-study results with the given first-block and last-block gradients, (seeds, depths) each."""
    first, last = torch.tensor(first), torch.tensor(last)
    one = dict(first=first, last=last, similarity=torch.zeros_like(first), stream_std=torch.ones_like(first),
               per_layer=torch.ones(first.size(0), depths[-1]))
    growing = torch.arange(1.0, len(depths) + 1).expand_as(first)  # pre-LN's stream grows with depth
    return {"post-LN": one, "pre-LN": dict(one, first=2 * last, stream_std=growing),
            "no residual": dict(one, first=first / 10)}


@pytest.mark.parametrize("post_first, holds", [
    ([[0.5, 0.6], [0.6, 1.2]], False),   # two seeds straddle 1: post-LN is not below 1 in every seed
    ([[0.5, 0.6]], True),                # one seed, below 1
    ([[0.5, 0.6], [0.4, 0.5]], True),    # each seed on its side
])
def test_section_7_says_post_ln_is_below_1_only_when_every_seed_is(tmp_path, capsys, post_first, holds):
    study = dict(depths=[2, 4], seeds=tuple(range(len(post_first))), T=8)
    results = fake_results(post_first, [[1.0, 1.0]] * len(post_first), study["depths"])
    claims.reset()
    insight = L04.section_7_norm_placement(results, study, tmp_path, False)
    out = flat(capsys.readouterr().out)
    assert ("post-LN-less-pre-LN-more" not in claims.broken()) is holds and insight.holds is holds
    assert ("DOES NOT HOLD: post-LN's first block gets less gradient" in out) is not holds
    assert (tmp_path / "transformer_block_gradients.png").exists()


def section_6_text(capsys, none_first, post_first=((1.0, 1.0),)):
    """What section 6 prints for made-up no-residual gradients (seeds, depths 2 and 4)."""
    study = dict(depths=[2, 4], d_model=8, heads=2, B=2, T=4, seeds=tuple(range(len(none_first))))
    results = fake_results(list(post_first), [[1.0, 1.0]] * len(post_first), study["depths"])
    results["no residual"] = dict(results["no residual"], first=torch.tensor(none_first),
                                  similarity=torch.ones(len(none_first), 2))
    attention = dict(largest=0.3, sim_out=0.9, sim_in=0.0, std_out=0.15, std_sum=1.0)
    claims.reset()
    L04.section_6_residuals(results, attention, study)
    return flat(capsys.readouterr().out)


def test_section_6_names_a_peak_only_outside_the_seed_spread(capsys):
    # the lesson's seeds 0 and 1 once printed "peaks at 4 blocks" from these numbers (2 blocks 0.49-0.54,
    # 4 blocks 0.48-0.96): the ranges overlap, so no depth stands out
    out = section_6_text(capsys, [[0.487, 0.957], [0.542, 0.480]], post_first=[[0.16, 0.15], [0.162, 0.18]])
    assert "peaks at" not in out and "has its largest mean at 4 blocks (within the seed spread" in out
    out = section_6_text(capsys, [[3.0, 0.1], [2.8, 0.2]], post_first=[[1.0, 1.0], [1.1, 1.0]])
    assert "peaks at 2 blocks (beyond the seed spread of the other depths)" in out
    assert "At 4 blocks it is 0.15x post-LN's: below post-LN's in every seed" in out


def test_section_6_calls_a_shallow_difference_inside_the_noise_what_it_is(capsys):
    # a ratio of about 1.01 at 2 blocks, the seeds' ranges overlapping: no "scales the gradient up" as a finding
    out = section_6_text(capsys, [[1.02, 0.5], [0.99, 0.6]], post_first=[[1.0, 1.0], [1.0, 1.0]])
    assert claims.broken() == ["no-residual-more-when-shallow", "insight-residuals"]
    assert "DOES NOT HOLD: At 2 blocks the first block gets 1.005x post-LN's gradient" in out
    assert "Measured: within the seed spread (" in out and "if it held: above post-LN's in every seed" in out


@pytest.mark.parametrize("attention_ms, shown", [((1.0, 1.0, 1.0), False), ((1.0, 4.0, 16.0), True)])
def test_section_4_says_when_the_lengths_are_too_short_to_show_t_squared(monkeypatch, capsys, attention_ms, shown):
    times = iter([t for a in attention_ms for t in (a / 1000, 0.001)])  # attention, then feed-forward, per T
    monkeypatch.setattr(L04.common, "best_time", lambda fn, device, repeats=5: next(times))
    insight = L04.section_4_cost(8, 2, 16, [8, 16, 32], "cpu")
    out = flat(capsys.readouterr().out)
    assert ("too short to show T^2" in out) is not shown and ("too short to show T^2" in insight) is not shown
    assert ("Notice the ratio column" in out) is shown


def test_heads_must_divide_d_model(capsys):
    err = expect_user_error(capsys, 4, "--d-model", "30", "--heads", "4", contains="--heads")
    assert "30" in err and "4" in err


@pytest.mark.parametrize("flag", ["--d-model", "--heads", "--d-ff", "--layers"])
def test_sizes_must_be_positive(capsys, flag):
    expect_user_error(capsys, 4, flag, "0", contains=flag)


@pytest.mark.parametrize("flags", [("--d-model", "100000", "--heads", "1"), ("--d-ff", "100000000"),
                                   ("--layers", "100000")])
def test_sizes_too_large_for_memory_are_one_line_exit_2(capsys, flags):
    err = expect_user_error(capsys, 4, *flags, contains="million parameters")
    assert flags[1] in err


def test_a_feed_forward_that_mixes_tokens_is_called_out(tmp_path):
    # A learner's edit that lets every token see the sequence mean: section 3 must not say "alone".
    from breakit import Edit, run_lesson
    line = "return self.linear2(self.dropout(self.activation(self.linear1(x))))"
    run = run_lesson(4, ["--quick"], tmp_path, Edit(4, line, line + " + x.mean(1, keepdim=True)"))
    assert not run.traceback and "ffn-position-wise" in run.broken and "insight-mixing" in run.broken_insights
    assert "DOES NOT HOLD: The feed-forward then works on each mixed token alone" in flat(run.out)
