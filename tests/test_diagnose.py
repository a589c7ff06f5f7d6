"""The mystery models (python -m challenges.diagnose) and their bug catalogue (challenges/bugs.py).

1. Each bug changes what it says it changes, through the lessons' own code, and the lessons'
   originals are back afterwards.
2. The telltales: each bug's symptom, measured by the game's own functions on small models.
3. The draw follows from --seed and --count alone.
4. The game end to end (--quick, two mystery models), its grading and its errors, and Ctrl-C.
"""
import dataclasses
import json
import math
import re

import pytest
import torch

from challenges import bugs, diagnose, variants
from common import load_lesson

L1, L2, L5 = load_lesson(1), load_lesson(2), load_lesson(5)
# Small models for the tests: the game's settings with short inputs and small held-out sets.
SMALL = dict(diagnose.GAME, seq_len=5, min_len=3, val_size=100, test_size=100, eval_every=20)
ONES = pytest.approx([1.0, 1.0], abs=1e-5)     # row sums of a softmax over the keys (float32)


def small_config(**changes):
    return L5.TrainConfig(**{**SMALL, **changes})


def patched_names():
    """Every lesson name a bug of the catalogue replaces, with the object it holds now."""
    found = {}
    for bug in bugs.CATALOGUE.values():
        for lesson, path, _ in bug.variant.patches:
            owner, name = variants._target(lesson, path)
            found[(lesson, path)] = owner.__dict__.get(name, getattr(owner, name))
    return found


def variant(name):
    return bugs.CATALOGUE[name].variant


@torch.no_grad()
def untrained_attention(name, config=None):
    """The attention numbers of an untrained model with bug `name` on a small test set (eval mode)."""
    config = config or small_config()
    v = bugs.REFERENCE if name == "reference" else variant(name)
    with variants.applied(v):
        _, test = L5.heldout_sets(config)
        model = variants.build(v, variants.configure(v, config)).eval()
        weights = model.attention_weights(test.src, test.tgt_in)
        weights = {k: torch.cat(w, dim=1) for k, w in weights.items() if k != "logits"}
        return diagnose.attention_numbers(weights, test.src, test.tgt_out)


# %% 1. Each bug changes what it says, and only while it is applied
def test_every_bug_is_applied_through_the_lessons_and_the_originals_come_back():
    before = patched_names()
    for name, bug in bugs.CATALOGUE.items():
        with variants.applied(bug.variant):
            for lesson, path, replacement in bug.variant.patches:
                owner, attr = variants._target(lesson, path)
                assert getattr(owner, attr) is replacement, (name, path)
        assert patched_names() == before, name
        assert bug.change and bug.mechanism and bug.symptom, name
    assert L5.causal_mask is L1.causal_mask and L2.scaled_dot_product_attention is L1.scaled_dot_product_attention


def test_originals_come_back_after_an_error_inside_the_variant():
    before = patched_names()
    with pytest.raises(RuntimeError):
        with variants.applied(variant("bos_is_pad")):
            assert L5.BOS == L5.PAD
            raise RuntimeError("boom")
    assert patched_names() == before and L5.BOS != L5.PAD


def test_the_mask_bugs_change_lesson_05s_causal_mask():
    T = 5
    with variants.applied(variant("flipped_mask")):
        assert torch.equal(L5.causal_mask(T), ~L1.causal_mask(T))     # True above the diagonal only
    with variants.applied(variant("no_causal_mask")):
        assert L5.causal_mask(T) is None
    with variants.applied(variant("padding_not_masked")):
        assert L5.padding_mask(torch.tensor([[4, 5, L5.PAD]])) is None
    assert L5.padding_mask(torch.tensor([[4, 5, L5.PAD]])).tolist() == [[[True, True, False]]]


def test_unshifted_targets_feeds_the_answer_itself_to_the_decoder():
    config = small_config()
    src = torch.tensor([[4, 5, 6, L5.PAD, L5.PAD]])
    right = L5.make_batch(src, config)
    with variants.applied(variant("unshifted_targets")):
        wrong = L5.make_batch(src, config)
    assert right.tgt_in[0].tolist()[:4] == [L5.BOS, 6, 5, 4]                 # BOS, then the answer shifted
    assert wrong.tgt_in[0].tolist()[:4] == [6, 5, 4, L5.PAD]                 # the answer itself
    assert torch.equal(wrong.tgt_out, right.tgt_out)                          # the same targets


def test_attention_function_bugs_change_lesson_02s_attention():
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 4, 32), torch.randn(2, 6, 32), torch.randn(2, 6, 8)
    with variants.applied(variant("softmax_wrong_axis")):
        _, w = L2.scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(w.sum(-2), torch.ones(2, 6))                   # columns sum to 1
    assert (w.sum(-1) - 1).abs().max() > 0.1                                  # rows do not
    with variants.applied(variant("no_scaling_wide")):
        out, w = L2.scaled_dot_product_attention(q, k, v)
    ref_out, ref_w = L1.scaled_dot_product_attention(q * math.sqrt(32), k, v)  # no 1/sqrt(d_k)
    torch.testing.assert_close(w, ref_w)
    torch.testing.assert_close(out, ref_out)


def test_merge_without_transpose_breaks_equality_with_the_head_by_head_loop():
    torch.manual_seed(0)
    mha = L2.MultiHeadAttention(16, 2).eval()
    x = torch.randn(3, 5, 16)
    loop, _ = L2.multi_head_attention_loop(mha, x, x, x)
    torch.testing.assert_close(mha(x, x, x)[0], loop)
    with variants.applied(variant("merge_without_transpose")):
        assert (mha(x, x, x)[0] - loop).abs().max() > 1e-3


def test_no_positions_removes_the_positional_encoding():
    config = small_config()
    tokens = torch.tensor([[4, 5, 6]])
    model = variants.build(variant("no_positions"), config).eval()
    torch.testing.assert_close(model.embed_tokens(tokens), model.embed(tokens))   # nothing added
    lesson_model = variants.build(bugs.REFERENCE, config).eval()
    assert (lesson_model.embed_tokens(tokens) - lesson_model.embed(tokens)).abs().max() > 0.1


def test_eval_with_dropout_keeps_dropout_on_after_eval():
    config = small_config()
    model = variants.build(variant("eval_with_dropout"), config)
    assert model.eval() is model and model.training                             # eval() did nothing
    src, tgt_in = torch.tensor([[4, 5, 6]]), torch.tensor([[L5.BOS, 6, 5, 4]])
    assert not torch.equal(model(src, tgt_in), model(src, tgt_in))              # dropout: two answers
    assert not variants.build(bugs.REFERENCE, config).eval().training


def test_lr_too_high_is_a_setting():
    config = variants.configure(variant("lr_too_high"), small_config())
    assert config.lr >= 10 * SMALL["lr"] and config.warmup == 0


# %% 2. The telltales: structural ones on untrained models, learned ones after a short training
def test_structural_telltales_untrained():
    ref = untrained_attention("reference")
    assert all(ref[f"{kind}_rows"] == ONES for kind in ("enc", "dec", "cross"))
    assert ref["enc_pad"] == ref["cross_pad"] == ref["dec_later"] == 0.0
    assert ref["cross_same_digit"] > 0.005
    flipped = untrained_attention("flipped_mask")                # all weight on later positions
    assert flipped["dec_own"] == 0.0 and flipped["dec_first"] == 0.0 and flipped["dec_later"] > 0.9
    assert flipped["dec_rows"][0] == 0.0                          # nothing later: a row of zeros, no NaN
    bos = untrained_attention("bos_is_pad")                       # BOS hidden by the padding mask
    assert bos["dec_first"] == 0.0 and bos["dec_later"] == 0.0
    assert bos["dec_rows"] == pytest.approx([0.0, 1.0], abs=1e-5)
    pad = untrained_attention("padding_not_masked")
    assert pad["enc_pad"] > 0.05 and pad["cross_pad"] > 0.05
    wrong = untrained_attention("softmax_wrong_axis")
    for kind in ("enc", "dec", "cross"):
        low, high = wrong[f"{kind}_rows"]
        assert low < 0.9 and high > 1.1, kind
    blind = untrained_attention("no_positions")                   # equal digits, equal weights
    assert blind["cross_same_digit"] < 1e-6


_trained = {}


def trained(name, steps):
    """diagnose.train_model of bug `name` on the small settings (cached: each is trained once)."""
    if (name, steps) not in _trained:
        v = bugs.REFERENCE if name == "reference" else variant(name)
        _trained[(name, steps)] = diagnose.train_model(v, small_config(steps=steps), "cpu")
    return _trained[(name, steps)]


def test_reference_learns_and_its_free_running_equals_teacher_forced():
    s = trained("reference", 300)["symptoms"]
    assert s["tf_exact"] >= 0.95 and s["free_exact"] == s["tf_exact"]       # causal: the cheap pass is greedy's
    assert s["val_loss"] < 0.1 and s["val_loss"] < 0.3 * s["train_loss"]     # dropout off in validation
    assert s["changed"] == 0.0 and all(s[f"{kind}_rows"] == ONES for kind in ("enc", "dec", "cross"))
    assert s["one_digit"] < 0.1
    assert min(s["enc_focus"], s["dec_focus"], s["cross_focus"]) < 0.6
    assert s["cross_same_digit"] > 0.1


@pytest.mark.parametrize("name", ["flipped_mask", "no_causal_mask", "unshifted_targets", "softmax_wrong_axis",
                                  "merge_without_transpose"])
def test_future_seeing_bugs_are_right_when_forced_and_wrong_when_free(name):
    record = trained(name, 300)
    s = record["symptoms"]
    assert s["tf_exact"] >= 0.85 and s["free_exact"] <= 0.1, s
    telltale = {
        "flipped_mask": lambda: s["dec_later"] > 0.9 and s["dec_own"] == 0.0 and s["dec_rows"][0] == 0.0,
        "no_causal_mask": lambda: s["dec_later"] > 0.5 and s["dec_rows"] == ONES,
        "unshifted_targets": lambda: (s["dec_own"] > 0.6 and s["dec_later"] == 0.0 and record["target_step"] <= 40
                                      and s["one_digit"] > 0.9),     # it copies its own guesses: 7 7 7 7 7
        "softmax_wrong_axis": lambda: s["enc_rows"][1] > 1.5 and s["dec_rows"][1] > 1.5 and s["cross_rows"][0] < 0.5,
        "merge_without_transpose": lambda: s["dec_later"] == 0.0 and s["dec_rows"] == ONES,  # not in the weights
    }[name]()
    assert telltale, s


def test_no_positions_stops_at_a_loss_floor_with_equal_weights_for_equal_digits():
    s, ref = trained("no_positions", 120)["symptoms"], trained("reference", 300)["symptoms"]
    assert s["val_loss"] > 0.6 > 10 * ref["val_loss"]
    assert s["tf_token_accuracy"] < 0.75 and s["tf_exact"] < 0.15
    assert s["cross_same_digit"] < 1e-5


def test_no_scaling_saturates_every_attention_map():
    s = trained("no_scaling_wide", 120)["symptoms"]
    assert min(s["enc_focus"], s["dec_focus"], s["cross_focus"]) > 0.9
    assert s["tf_exact"] < 0.5


def test_lr_too_high_stays_at_the_loss_of_guessing():
    s = trained("lr_too_high", 120)["symptoms"]
    assert s["train_loss"] > 0.8 * math.log(10) and s["tf_exact"] == 0.0
    assert s["enc_focus"] > 0.95


def test_eval_with_dropout_validates_like_training_and_answers_twice_differently():
    s = trained("eval_with_dropout", 120)["symptoms"]
    assert s["val_loss"] > 0.7 * s["train_loss"]
    assert s["changed"] > 0.3
    assert s["dec_rows"][1] == pytest.approx(1 / 0.9, abs=1e-3) and s["dec_rows"][0] < 0.5


# %% 3. The draw
def test_the_draw_depends_on_seed_and_count_only():
    assert diagnose.draw(5, 6) == diagnose.draw(5, 6)
    draws = {tuple(diagnose.draw(seed, 6).values()) for seed in range(20)}
    assert len(draws) > 15                                         # seeds give different games
    for seed in range(20):
        drawn = diagnose.draw(seed, 6)
        assert list(drawn) == list("ABCDEF") and len(set(drawn.values())) == 6
        assert set(drawn.values()) <= set(diagnose.drawable())
    everything = diagnose.draw(0, len(diagnose.drawable()))
    assert sorted(everything.values()) == sorted(diagnose.drawable())
    never = {name for name, bug in bugs.CATALOGUE.items() if not bug.drawn}
    assert never == {"no_scaling_narrow"} and not never & set(diagnose.drawable())   # no symptom: never hidden


def test_bad_count_is_one_line(capsys):
    for count in ("0", str(len(diagnose.drawable()) + 1)):
        with pytest.raises(SystemExit) as exc:
            diagnose.main(["--count", count, "--out-dir", "/tmp"])
        assert exc.value.code == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("error: --count"), err


# %% 4. The game end to end, grading, Ctrl-C
SEED = 3


@pytest.fixture(scope="module")
def quick_game(tmp_path_factory):
    """One --quick game with two mystery models: (output folder, its state, {letter: bug})."""
    out = tmp_path_factory.mktemp("diagnose")
    diagnose.main(["--quick", "--count", "2", "--seed", str(SEED), "--out-dir", str(out)])
    return out, json.loads((out / diagnose.STATE_NAME).read_text()), diagnose.draw(SEED, 2)


def grade(out, answer, *flags):
    """Run --answer; returns the exit status (0 when main returns normally)."""
    try:
        diagnose.main(["--seed", str(SEED), "--out-dir", str(out), "--answer", answer, *flags])
    except SystemExit as exc:
        return exc.code
    return 0


def test_quick_game_writes_a_figure_per_model_and_the_state(quick_game):
    out, state, drawn = quick_game
    for label in ("reference", *drawn):
        png = out / f"mystery_{label}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        record = state["models"][label]
        assert record["figure"] == png.name and record["symptoms"]["enc_rows"]
        assert record["free_step"] == record["history"]["val_step"]        # decoded at every validation
        assert len(record["examples"]) == diagnose.EXAMPLES
    assert state["complete"] and not state["interrupted"] and state["letters"] == ["A", "B"]
    assert not set(drawn.values()) & set(json.dumps(state).split('"'))     # the answers are not in the file


def test_right_answers_exit_0_and_explain(quick_game, capsys):
    out, _, drawn = quick_game
    assert grade(out, ",".join(f"{k}={v}" for k, v in drawn.items())) == 0
    text = capsys.readouterr().out
    for name in drawn.values():
        assert bugs.CATALOGUE[name].mechanism[:40] in " ".join(text.split())


def test_wrong_or_missing_answers_exit_1(quick_game, capsys):
    out, _, drawn = quick_game
    wrong = next(name for name in bugs.CATALOGUE if name != drawn["A"])
    assert grade(out, f"A={wrong},B={drawn['B']}") == 1
    text = capsys.readouterr().out
    assert "not that" in text and "1 of 2 right" in text
    assert bugs.CATALOGUE[drawn["A"]].mechanism[:40] not in " ".join(text.split())   # no spoiler
    assert grade(out, f"b={drawn['B']}") == 1                                     # A not answered
    assert "A: no answer" in capsys.readouterr().out


def test_a_bug_with_the_same_symptoms_as_another_is_accepted_for_it(quick_game, monkeypatch, capsys):
    out, _, drawn = quick_game
    other = next(name for name in bugs.CATALOGUE if name not in drawn.values())
    truth = bugs.CATALOGUE[drawn["A"]]
    monkeypatch.setitem(bugs.CATALOGUE, drawn["A"], dataclasses.replace(truth, accept=(other,)))
    assert grade(out, f"A={other},B={drawn['B']}") == 0
    assert "their symptoms are the same here" in capsys.readouterr().out


@pytest.mark.parametrize("answer, flags, contains", [
    ("A=no_such_bug", (), "no bug is called"),
    ("A=flipped_mask,C=no_positions", (), "there is no model C"),
    ("A:flipped_mask", (), "is not LETTER=bug_name"),
    ("A=flipped_mask,A=no_positions", (), "twice"),
    ("A=flipped_mask", ("--count", "3"), "--count 3"),
])
def test_bad_answers_are_one_line(quick_game, capsys, answer, flags, contains):
    out = quick_game[0]
    capsys.readouterr()
    assert grade(out, answer, *flags) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and contains in err, err


def test_untrained_seed_or_folder_is_one_line(quick_game, tmp_path, capsys):
    out = quick_game[0]
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        diagnose.main(["--seed", str(SEED + 1), "--out-dir", str(out), "--answer", "A=flipped_mask"])
    assert exc.value.code == 2 and f"--seed {SEED}" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        diagnose.main(["--seed", str(SEED), "--out-dir", str(tmp_path), "--reveal"])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and len(err.splitlines()) == 1 and "no mystery models were trained" in err


def test_reveal_and_list(quick_game, capsys):
    out, _, drawn = quick_game
    diagnose.main(["--seed", str(SEED), "--out-dir", str(out), "--reveal"])
    text = capsys.readouterr().out
    for letter, name in drawn.items():
        assert f"{letter}: {name}" in text
    diagnose.main(["--list"])
    text = capsys.readouterr().out
    assert all(name in text for name in bugs.CATALOGUE)
    assert re.search(r"no_scaling_narrow: [^\[]*\[never drawn: no symptom", " ".join(text.split()))


def test_ctrl_c_keeps_the_models_that_finished(tmp_path, monkeypatch, capsys):
    """Ctrl-C while model B trains: the reference and A are kept (numbers and figures), B is not."""
    real, calls = L5.train, []

    def train_then_press_ctrl_c_on_the_third(config, *args, callback=None, **kwargs):
        calls.append(config)
        def press(step, metrics):
            callback(step, metrics)
            if len(calls) == 3 and step >= 10:
                raise KeyboardInterrupt
        return real(config, *args, callback=press, **kwargs)

    monkeypatch.setattr(L5, "train", train_then_press_ctrl_c_on_the_third)
    with pytest.raises(SystemExit) as exc:
        diagnose.main(["--quick", "--count", "2", "--seed", str(SEED), "--out-dir", str(tmp_path)])
    assert exc.value.code == 130
    state = json.loads((tmp_path / diagnose.PARTIAL_STATE_NAME).read_text())      # the game is not finished
    assert state["interrupted"] and not state["complete"] and list(state["models"]) == ["reference", "A"]
    assert (tmp_path / "mystery_A.partial.png").exists() and not (tmp_path / "mystery_B.partial.png").exists()
    drawn = diagnose.draw(SEED, 2)
    capsys.readouterr()
    assert grade(tmp_path, f"A={drawn['A']}") == 0                        # what finished can be graded
    assert "B: training did not finish" in capsys.readouterr().out
    assert grade(tmp_path, f"B={drawn['B']}") == 2                        # what did not, cannot


def test_a_diverged_training_is_recorded_and_drawn(tmp_path):
    """A learner who edits the settings into divergence gets a record and a figure, not a traceback."""
    config = small_config(steps=20)
    record = diagnose.train_model(variants.Variant("huge_lr", config={"lr": 1e3, "warmup": 0}), config, "cpu")
    assert record["stopped"].startswith("diverged: the training loss became nan") and record["steps_run"] is None
    assert record["history"]["val_step"] == [0]                       # the validation before it diverged
    assert diagnose.plot_model("A", record, config, tmp_path, show=False) == "mystery_A.png"
    assert diagnose.stopped_text(record, config).startswith("diverged")
