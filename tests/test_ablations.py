"""The ablations (python -m challenges.ablations): each row changes what it says, the verdicts follow
the numbers, the outputs are written and kept, bad flags give one line.

Every row is trained for two steps at tiny sizes (a model that cannot be built or trained fails
here); one --quick run with a few rows checks the files end to end.
"""
import importlib
import json
import math
import sys

import pytest
import torch
import torch.nn as nn

from challenges import ablations, components, variants
from common import load_lesson
from lesson05_plumbing.training import TrainingDiverged

L1, L2, L4, L5 = load_lesson(1), load_lesson(2), load_lesson(4), load_lesson(5)
TINY = L5.TrainConfig(seq_len=4, d_model=16, n_heads=2, d_ff=32, steps=2, eval_every=1, warmup=1, val_size=16,
                      test_size=16, patience=0)
ROWS = {r.variant.name: r for r in ablations.make_rows(TINY, wide_head=8, deep_layers=2)}   # every task's rows


def build(name, config=TINY):
    """The row's model for `config` (with the row's changes), and the config, as a run builds them."""
    variant = ROWS[name].variant
    config = variants.configure(variant, config, seed=0)
    with variants.applied(variant):
        return variants.build(variant, config), config


def n_params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", sorted(ROWS))
def test_every_row_trains_with_lesson_05s_loop(name):
    row = ROWS[name]
    base = L5.TrainConfig(**{**vars(TINY), "task": row.task or "reverse"})
    data = L5.heldout_sets(variants.configure(row.variant, base))
    run = ablations.train_one(row, base, seed=0, budget=2, data=data, device="cpu")
    assert run["steps_run"] == 2 and run["stopped_because"] == "max steps", run
    assert 0.0 <= run["test_exact_match"] <= 1.0 and run["parameters"] > 0
    if row.reference is not None:
        assert row.reference in ROWS and row.variant.question.strip() and row.hint.strip()


def test_no_attention_scale_replaces_lesson_02s_function_only_while_applied():
    original = L2.scaled_dot_product_attention
    with variants.applied(ROWS["no_attention_scale"].variant):
        assert L2.scaled_dot_product_attention is components.attention_without_scale
    assert L2.scaled_dot_product_attention is original
    model, _ = build("wide_no_attention_scale")
    assert model.encoder.layers[0].self_attn.d_head == 8 and model.encoder.layers[0].self_attn.n_heads == 1


def test_embedding_rows_scale_the_tokens_and_the_fair_one_shrinks_their_initialisation():
    default, _ = build("default")
    scaled, _ = build("embed_scale")
    fair, _ = build("embed_scale_small_init")
    assert default.scale == 1.0 and scaled.scale == fair.scale == math.sqrt(16)
    assert 0.8 < float(scaled.embed.weight.detach().std()) < 1.2                      # PyTorch's N(0, 1)
    token_vectors = fair.embed.weight.detach() * fair.scale                           # what the model adds positions to
    assert 0.7 < float(token_vectors.std()) < 1.3 and float(fair.embed.weight.detach().std()) < 0.4


def test_position_rows_change_what_the_encoder_knows_about_order():
    src = torch.randint(L5.FIRST_DIGIT, L5.FIRST_DIGIT + 10, (3, 4))
    perm = torch.tensor([2, 0, 3, 1])

    def equivariant(model):
        model.eval()
        with torch.no_grad():
            return torch.allclose(model.encode(src[:, perm])[0], model.encode(src)[0][:, perm], atol=1e-5)

    assert equivariant(build("no_positions")[0])
    learned, _ = build("learned_positions")
    assert not equivariant(learned) and isinstance(learned.positions, components.LearnedPositions)
    rope, _ = build("rope")
    assert not equivariant(rope) and isinstance(rope.positions, components.NoPositions)
    attentions = [layer.self_attn for layer in [*rope.encoder.layers, *rope.decoder.layers]]
    assert all(isinstance(a, components.RotarySelfAttention) for a in attentions)
    assert all(isinstance(layer.cross_attn, L2.MultiHeadAttention) for layer in rope.decoder.layers)


def test_norm_rows():
    post, _ = build("post_ln")
    assert not any(layer.norm_first for layer in [*post.encoder.layers, *post.decoder.layers])
    deep, config = build("deep_post_ln")
    assert config.n_layers == len(deep.encoder.layers) == len(deep.decoder.layers) == 2 and not config.norm_first
    default, _ = build("default")
    rms, _ = build("rmsnorm")
    norms = sum(isinstance(m, nn.LayerNorm) for m in default.modules())
    assert norms > 0 and not any(isinstance(m, nn.LayerNorm) for m in rms.modules())
    assert sum(isinstance(m, components.RMSNorm) for m in rms.modules()) == norms


def test_training_rows_change_their_config_fields():
    expected = {"no_warmup": {"warmup": 0}, "no_clipping": {"grad_clip": 0.0}, "lr_10x": {"lr": TINY.lr * 10},
                "lr_10x_no_warmup": {"lr": TINY.lr * 10, "warmup": 0}, "dropout": {"dropout": 0.1},
                "label_smoothing": {"label_smoothing": 0.1}}
    for name, fields in expected.items():
        config = variants.configure(ROWS[name].variant, TINY)
        changed = {k: v for k, v in vars(config).items() if v != getattr(TINY, k)}
        assert changed == pytest.approx(fields), name
    assert ROWS["lr_10x_no_warmup"].reference == "lr_10x" and ROWS["deep_post_ln"].reference == "deep"


def test_tied_embeddings_share_one_tensor_with_the_papers_recipe_and_without_it():
    default, _ = build("default")
    tied, config = build("tied_embeddings")
    assert tied.out.weight is tied.embed.weight and config.embed_scale and tied.scale == math.sqrt(16)
    assert float(tied.embed.weight.detach().std()) < 0.4                          # N(0, 1/d_model)
    assert ROWS["tied_embeddings"].reference == "embed_scale_small_init"          # the same recipe, untied
    assert n_params(default) - n_params(tied) == tied.vocab_size * 16           # one (V, d_model) table fewer
    unscaled, config = build("tied_embeddings_unscaled")
    assert unscaled.out.weight is unscaled.embed.weight and unscaled.scale == 1.0 and not config.embed_scale
    assert 0.8 < float(unscaled.embed.weight.detach().std()) < 1.2                # nn.Embedding's N(0, 1)


def test_the_untrained_n01_tie_starts_far_above_uniform_and_copies_the_decoders_input():
    base = L5.TrainConfig(**{**vars(TINY), "val_size": 200})
    val = L5.heldout_sets(base)[0]
    found = {name: ablations.at_start(ROWS[name].variant, variants.configure(ROWS[name].variant, base, 0), val, "cpu")
             for name in ("default", "tied_embeddings_unscaled", "tied_embeddings", "embed_scale")}
    uniform = math.log(L5.vocab_size(10))
    assert found["default"]["uniform_loss"] == pytest.approx(uniform)
    assert found["tied_embeddings_unscaled"]["start_loss"] > 3 * uniform > 2 * found["default"]["start_loss"]
    assert found["tied_embeddings_unscaled"]["start_copy_share"] > 0.7 > 0.3 > found["default"]["start_copy_share"]
    assert found["tied_embeddings"]["start_loss"] < found["tied_embeddings_unscaled"]["start_loss"] / 2
    assert found["embed_scale"]["token_to_position_length"] > 3 * found["default"]["token_to_position_length"]


def test_grouped_query_rows_share_key_value_heads_in_every_attention():
    reference, config = build("four_heads")
    assert config.n_heads == ablations.GQA_HEADS
    for name, n_kv in (("grouped_queries", ablations.GQA_HEADS // 2), ("multi_query", 1)):
        model, _ = build(name)
        attentions = [m for m in model.modules() if isinstance(m, components.GroupedQueryAttention)]
        assert len(attentions) == 3 and all(a.n_kv_heads == n_kv for a in attentions)    # enc self, dec self, cross
        assert not any(isinstance(m, L2.MultiHeadAttention) and m not in [a.attention for a in attentions]
                       for m in model.modules())
        d_head, fewer = 16 // ablations.GQA_HEADS, 2 * (16 + 1) * (16 - n_kv * 16 // ablations.GQA_HEADS)
        assert attentions[0].attention.W_k.weight.shape == (n_kv * d_head, 16)
        assert n_params(reference) - n_params(model) == 3 * fewer                  # W_k and W_v, weights and biases


def test_decoder_only_rope_and_the_sliding_windows():
    rope, _ = build("decoder_only_rope")
    assert isinstance(rope, components.DecoderOnlyTransformer) and isinstance(rope.positions, components.NoPositions)
    assert all(isinstance(layer.self_attn, components.RotarySelfAttention) for layer in rope.stack.layers)
    src = torch.randint(L5.FIRST_DIGIT, L5.FIRST_DIGIT + 10, (2, 4))
    tgt_in = torch.cat([torch.full((2, 1), L5.BOS), src.flip(1)], dim=1)         # T = 4 + 5
    for name, window in (("sliding_window", 5), ("short_sliding_window", 2)):
        variant = ROWS[name].variant
        with variants.applied(variant):
            model = variants.build(variant, variants.configure(variant, TINY, seed=0))
            _, mask = model.inputs(src, tgt_in)
        assert torch.equal(mask[0], components.sliding_window_mask(9, window)), name
    _, mask = build("decoder_only")[0].inputs(src, tgt_in)
    assert torch.equal(mask[0], L1.causal_mask(9))                                # the patch is gone afterwards


def test_reversal_measures_find_the_mirrored_input_and_the_accuracy_per_position():
    test = L5.heldout_sets(TINY)[1]
    L = test.src.size(1)

    class Mirror(nn.Module):
        """Cross-attention entirely on input L-1-j, and the right answer everywhere but position 0."""

        def attention_weights(self, src, tgt_in):
            w = torch.zeros(len(src), 1, tgt_in.size(1), L)
            for j in range(L):
                w[:, 0, j, L - 1 - j] = 1.0
            return {"cross": [torch.full_like(w, 1 / L), w]}                     # a uniform layer, then the mirror

        def forward(self, src, tgt_in):
            logits = torch.zeros(*tgt_in.shape, 13).scatter_(2, test.tgt_out.unsqueeze(-1), 1.0)
            logits[:, 0] = 0.0
            logits[:, 0, L5.EOS] = 1.0
            return logits

    found = ablations.reversal_measures(Mirror(), test)
    assert found["mirror_attention"] == pytest.approx(1.0) and found["mirror_chance"] == pytest.approx(1 / L)
    assert found["position_accuracy"][0] == 0.0 and found["position_accuracy"][1:] == [1.0] * (L - 1)
    decoder_only, _ = build("decoder_only")
    found = ablations.reversal_measures(decoder_only, test)                      # a real, untrained model
    assert 0.0 < found["mirror_attention"] < 1.0 and len(found["position_accuracy"]) == L


def test_every_row_that_fails_names_a_mechanism_with_its_numbers():
    rows = {r.variant.name: r for r in ablations.make_rows(L5.TrainConfig())}

    def measured(seed, step, loss, copies, mirror, accuracy=None):
        return {**run(seed, step), "start_loss": loss, "start_copy_share": copies, "uniform_loss": math.log(13),
                "mirror_attention": mirror, "mirror_chance": 1 / 16, "position_accuracy": accuracy}

    reference = [measured(s, 110 + 10 * s, 2.6, 0.08, 0.9, [1.0] * 16) for s in range(3)]
    failing = [measured(s, None, 24.4, 1.0, 0.07, [0.5] * 8 + [0.1] * 8) for s in range(3)]
    texts = {}
    own = ["no_positions", "rope", "decoder_only_rope", "tied_embeddings_unscaled", "short_sliding_window",
           "embed_scale"]
    for name in own + ["lr_10x", "deep_post_ln", "no_attention_scale"]:         # these 3: the measured fallback
        summary = ablations.summarize(rows[name], failing, reference)
        assert summary["verdict"] == "fails" and summary["mechanism"], name
        texts[name] = summary["mechanism"]
    assert "7.0% of their attention on the mirrored input" in texts["rope"] and "90.0%" in texts["rope"]
    assert "2j+1 positions back" in texts["decoder_only_rope"]
    assert "starts at validation loss 24.4" in texts["tied_embeddings_unscaled"] and "100%" in texts[
        "tied_embeddings_unscaled"] and "(default: 8%)" in texts["tied_embeddings_unscaled"]
    assert "a window of 8 reads 7 positions back, 2 blocks pass information 14 back" in texts["short_sliding_window"]
    assert ("digits 0-3 in one hop: right 50.0%; digits 4-6 relayed through a position between: right 50.0%; "
            "digits 7-15 out of reach: right 14.4%") in texts["short_sliding_window"]
    assert "starts at validation loss 24.4" in texts["lr_10x"]                   # the measured fallback
    assert ablations.summarize(rows["no_warmup"], reference, reference)["mechanism"] == ""


def test_swiglu_and_decoder_only_keep_the_parameter_count():
    default, config = build("default")
    swiglu, _ = build("swiglu")
    assert not any(isinstance(m, L4.FeedForward) for m in swiglu.modules())
    assert sum(isinstance(m, components.SwiGLU) for m in swiglu.modules()) == 2
    assert abs(n_params(swiglu) - n_params(default)) / n_params(default) < 0.03
    for base in (TINY, L5.TrainConfig()):                                        # tiny and lesson 05's default
        default, _ = build("default", base)
        decoder_only, _ = build("decoder_only", base)
        assert isinstance(decoder_only, components.DecoderOnlyTransformer)
        assert len(decoder_only.stack.layers) == 2 * base.n_layers
        assert abs(n_params(decoder_only) - n_params(default)) / n_params(default) < 0.01


def test_lsd_first_writes_the_same_sum_backwards():
    base = L5.TrainConfig(**{**vars(TINY), "task": "sum", "seq_len": 8})
    msd = L5.heldout_sets(base)[0]
    lsd = L5.heldout_sets(variants.configure(ROWS["lsd_first"].variant, base))[0]
    assert torch.equal(msd.src, lsd.src)
    assert torch.equal(L5.reverse_digits(L5.task_outputs(msd.src, "sum", 10, "msd")),
                       L5.task_outputs(lsd.src, "sum", 10, "lsd"))


def test_every_run_gets_the_same_learning_rate_whatever_its_budget():
    data = L5.heldout_sets(TINY)
    base = L5.TrainConfig(**{**vars(TINY), "steps": 40, "warmup": 4})
    run = ablations.same_schedule(40)
    variant = variants.Variant("x", config={"steps": 6}, patches=((5, "learning_rate", run),))
    _, result, _ = variants.run(variant, base, seed=0, data=data)
    assert result.steps_run == 6
    assert result.history["lr"] == pytest.approx([L5.learning_rate(s, base) for s in range(1, 7)])
    assert L5.learning_rate(6, L5.TrainConfig(**{**vars(base), "steps": 6})) != pytest.approx(result.history["lr"][-1])


def run(seed, step, best=0.0, budget=300):
    return {"seed": seed, "target_step": step, "target_seconds": None if step is None else step / 100,
            "best_val_exact_match": 1.0 if step else best, "test_exact_match": 0.9, "parameters": 10,
            "budget": budget}


def test_budgets_follow_the_reference_median():
    base = L5.TrainConfig(steps=600, eval_every=10)
    rows = {r.variant.name: r for r in ablations.make_rows(base)}
    runs = {"default": [run(0, 110), run(1, 150), run(2, 120)],
            "lr_10x": [run(0, None), run(1, 230), run(2, None)],
            "deep": [run(0, 250), run(1, 300), run(2, 260)]}
    budgets = {"default": 600, "deep": 600}
    assert ablations.budget_for(rows["default"], budgets, runs, base) == 600         # a starting point
    assert ablations.budget_for(rows["no_warmup"], budgets, runs, base) == 360       # 3 x 120
    assert ablations.budget_for(rows["deep_post_ln"], budgets, runs, base) == 600    # 3 x 260, capped
    runs["embed_scale_small_init"] = [run(0, 90), run(1, 100), run(2, 110)]
    assert ablations.budget_for(rows["tied_embeddings"], budgets, runs, base) == 500  # 5 x 100: slow, told from failing
    budgets["lr_10x"] = 360
    assert ablations.budget_for(rows["lr_10x_no_warmup"], budgets, runs, base) == 360   # its reference mostly missed
    assert ablations.median_steps(runs["default"]) == 120 and ablations.median_steps(runs["lr_10x"]) is None


def test_verdicts_follow_the_numbers():
    rows = {r.variant.name: r for r in ablations.make_rows(L5.TrainConfig())}
    reference = [run(0, 110), run(1, 150), run(2, 120)]
    word, text = ablations.verdict(rows["no_warmup"], [run(0, 60), run(1, 80), run(2, 100)], reference)
    assert word == "faster" and "60-100 steps against 110-150 steps for default" in text
    word, text = ablations.verdict(rows["no_warmup"], [run(0, 100), run(1, 130), run(2, 200)], reference)
    assert word == "no measurable difference" and "at this size" in text and "lr_10x_no_warmup" in text
    word, _ = ablations.verdict(rows["no_warmup"], [run(0, 160), run(1, 170), run(2, 160)], reference)
    assert word == "slower"
    word, text = ablations.verdict(rows["no_positions"], [run(s, None, 0.002) for s in range(3)], reference)
    assert word == "fails" and "not reached in 300 steps (best 0.2%)" in text
    word, text = ablations.verdict(rows["tied_embeddings"], [run(0, 470), run(1, None, 0.91), run(2, 200)], reference)
    assert word == "worse" and "2 of 3 seeds in 200-470 steps, 1 not in 300 (best 91.0%)" in text
    word, _ = ablations.verdict(rows["lsd_first"], [run(s, None, 0.1 + s / 100) for s in range(3)],
                                [run(s, None, 0.96 + s / 100) for s in range(3)])
    assert word == "worse"
    # overlapping ranges, but 0 of 5 against 4 of 5 seeds reaching the target is more than luck (p = 0.048)
    reference = [run(0, 130), run(1, 160), run(2, None), run(3, 200), run(4, 230)]
    word, text = ablations.verdict(rows["lr_10x_no_warmup"], [run(s, None) for s in range(5)], reference)
    assert word == "worse" and "0 of 5 seeds reached it against 4 of 5" in text and "4.8%" in text
    word, text = ablations.verdict(rows["lr_10x_no_warmup"], [run(s, None) for s in range(3)], reference[1:4])
    assert word == "no measurable difference" and "more seeds (--only lr_10x_no_warmup --seeds 5)" in text
    word, text = ablations.verdict(rows["no_warmup"], [run(0, 60)], [run(0, 110)])
    assert word == "one seed" and "no verdict" in text
    assert ablations.separated_by_chance(3, 3) == pytest.approx(0.1)


def test_fisher_exact_matches_hand_computed_values():
    # 0 of 3 against 3 of 3: only the two most extreme splits of 3 successes among 6, 2 / C(6, 3)
    assert ablations.fisher_exact(0, 3, 3, 3) == pytest.approx(0.1)
    assert ablations.fisher_exact(0, 5, 4, 5) == pytest.approx(10 / 210)        # splits 0+4 and 4+0: (5 + 5) / C(10, 4)
    assert ablations.fisher_exact(2, 3, 2, 3) == pytest.approx(1.0)
    assert ablations.fisher_exact(1, 4, 3, 4) == pytest.approx(ablations.fisher_exact(3, 4, 1, 4))


def test_place_accuracy_finds_the_units_digit_in_either_order():
    base = L5.TrainConfig(**{**vars(TINY), "task": "sum", "seq_len": 8})

    class FirstDigitOnly(nn.Module):
        """Right at the first answer position only: the units digit for lsd, the tens for msd."""

        def forward(self, src, tgt_in):
            logits = torch.zeros(*tgt_in.shape, 13)
            logits[..., L5.EOS] = 1.0
            logits[:, 0, :].scatter_(1, self.target[:, :1], 5.0)
            return logits

    for order, right in (("lsd", "units"), ("msd", "tens")):
        config = variants.configure(variants.Variant("x", config={"sum_order": order}), base)
        test = L5.heldout_sets(config)[1]
        model = FirstDigitOnly()
        model.target = test.tgt_out
        found = ablations.place_accuracy(model, test, config)
        share = {name: k / n for name, (k, n) in found.items()}
        assert found["units"][1] == found["tens"][1] + (test.tgt_out[:, 1] == L5.EOS).sum()    # 1-digit sums
        assert share[right] == 1.0 and all(v < 0.5 for k, v in share.items() if k != right), (order, found)


def test_baselines_count_the_most_common_answer():
    config = L5.TrainConfig(**{**vars(TINY), "task": "sum", "seq_len": 8, "val_size": 400, "test_size": 400})
    val, test = L5.heldout_sets(config)
    found = ablations.baselines((val, test), config)
    answers, counts = torch.unique(val.tgt_out, dim=0, return_counts=True)
    expected = int((test.tgt_out == answers[counts.argmax()]).all(1).sum())
    assert found["most_common_answer_hits"] == expected > 0 and found["digit_chance"] == 0.1


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ablations")
    ablations.main(["--quick", "--only", "no_warmup", "--seeds", "2", "--out-dir", str(out)])
    return out, json.loads((out / ablations.JSON_NAME).read_text())


def test_quick_run_writes_both_files_and_a_row_per_variant(quick_run):
    out, data = quick_run
    assert (out / ablations.PNG_NAME).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert data["complete"] is True and data["interrupted"] is False and data["seeds"] == [0, 1]
    names = [r["name"] for r in data["rows"]]
    assert names == ["default", "no_warmup"]                                           # its reference added
    for record in data["rows"]:
        assert record["question"] and record["change"] and record["seeds"] == [0, 1]
        assert [r["seed"] for r in record["runs"]] == [0, 1] and record["summary"]["verdict"]
        assert all(r["steps_run"] <= r["budget"] for r in record["runs"])
    by = {r["name"]: r for r in data["rows"]}
    assert by["no_warmup"]["reference"] == "default" and by["default"]["reference"] is None
    assert by["no_warmup"]["config_changes"] == {"warmup": 0} and by["no_warmup"]["edit"] is None


def test_only_adds_the_references_a_row_is_compared_with():
    names = lambda rows: [r.variant.name for r in rows]  # noqa: E731
    assert names(ablations.rows_for(TINY, ["lr_10x_no_warmup"])) == ["default", "lr_10x", "lr_10x_no_warmup"]
    assert names(ablations.rows_for(TINY, ["deep_post_ln", "rope"])) == ["default", "rope", "deep", "deep_post_ln"]
    assert "lsd_first" not in names(ablations.rows_for(TINY))
    assert "lsd_first" in names(ablations.rows_for(L5.TrainConfig(**{**vars(TINY), "task": "sum"})))


def test_ctrl_c_marks_the_json_interrupted_and_keeps_only_finished_runs(tmp_path, monkeypatch, capsys):
    real, calls = L5.train, []

    def train(config, *args, **kwargs):
        calls.append(config)
        if len(calls) == 3:                                      # Ctrl-C during the third training
            def press_ctrl_c(step, metrics):
                raise KeyboardInterrupt
            kwargs["callback"] = press_ctrl_c
        return real(config, *args, **kwargs)

    monkeypatch.setattr(L5, "train", train)
    with pytest.raises(SystemExit) as exc:
        ablations.main(["--quick", "--only", "no_warmup", "--seeds", "2", "--out-dir", str(tmp_path)])
    assert exc.value.code == 130
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "interrupted" in err and "Traceback" not in err
    data = json.loads((tmp_path / ablations.PARTIAL_NAME).read_text())      # never over ablations.json
    assert data["interrupted"] is True and data["complete"] is False and not (tmp_path / ablations.JSON_NAME).exists()
    assert data["interrupted_run"]["row"] == "no_warmup" and data["interrupted_run"]["seed"] == 0
    assert [(r["name"], len(r["runs"])) for r in data["rows"]] == [("default", 2)]     # the cut run is left out
    assert not (tmp_path / ablations.PNG_NAME).exists()


def test_a_diverging_run_is_recorded_and_the_rest_go_on(tmp_path, monkeypatch):
    real = L5.train

    def train(config, *args, **kwargs):
        if config.warmup == 0:
            raise TrainingDiverged("the training loss became nan at step 3")
        return real(config, *args, **kwargs)

    monkeypatch.setattr(L5, "train", train)
    ablations.main(["--quick", "--only", "no_warmup", "--seeds", "2", "--out-dir", str(tmp_path)])
    data = json.loads((tmp_path / ablations.JSON_NAME).read_text())
    record = {r["name"]: r for r in data["rows"]}["no_warmup"]
    assert all(r["stopped_because"].startswith("diverged") for r in record["runs"])
    assert record["summary"]["verdict"] in ("fails", "worse")


def expect_user_error(capsys, *flags, contains=()):
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        ablations.main(list(flags))
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and "Traceback" not in err, err
    for text in contains:
        assert text.lower() in err.lower(), f"{text!r} not in {err!r}"


@pytest.mark.parametrize("flags, contains", [
    (["--only", "no_warmup,warp_drive"], ["'warp_drive'", "no_warmup", "--list"]),
    (["--only", "lsd_first"], ["--task sum"]),
    (["--seeds", "0"], ["--seeds", "positive"]),
    (["--seeds", "-2"], ["--seeds"]),
    (["--seeds", "two"], ["--seeds", "two"]),
    (["--seeds", "1000"], ["--seeds 1000"]),
    (["--task", "add"], ["add", "reverse"]),
])
def test_bad_flags_give_one_line_and_exit_2(capsys, tmp_path, flags, contains):
    expect_user_error(capsys, *flags, "--out-dir", str(tmp_path), contains=contains)
    assert list(tmp_path.iterdir()) == []                                       # nothing trained, nothing written


def test_an_unwritable_folder_gives_one_line(capsys, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    expect_user_error(capsys, "--quick", "--out-dir", str(blocker / "out"), contains=["--out-dir", "writable"])


def test_list_prints_every_row_and_trains_nothing(capsys, tmp_path):
    ablations.main(["--list", "--task", "sum", "--out-dir", str(tmp_path)])
    out = capsys.readouterr().out
    for name in ROWS:
        assert name in out
    assert list(tmp_path.iterdir()) == []


def test_importing_prints_and_writes_nothing(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "challenges.ablations")
    importlib.import_module("challenges.ablations")
    out = capsys.readouterr()
    assert out.out == "" and out.err == "" and list(tmp_path.iterdir()) == []
