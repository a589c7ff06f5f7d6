"""challenges/length_generalization.py, and lesson 05's --eval-lengths that calls it."""
import json

import pytest
import torch

from challenges import length_generalization as LG
from common import load_lesson
from lesson05_plumbing import checkpoints as C
from conftest import expect_user_error

L = load_lesson(5)
SMALL = dict(seq_len=5, d_model=32, n_heads=1, d_ff=64, lr=5e-3, warmup=10, val_size=200, test_size=200,
             patience=0)


@pytest.fixture(scope="module")
def checkpoint_file(tmp_path_factory):
    config = L.TrainConfig(**SMALL, steps=200, target=0.99)
    result = L.train(config, quiet=True)
    return C.save_checkpoint(tmp_path_factory.mktemp("ckpt") / C.CHECKPOINT_NAME, result, config)


def test_length_sets_are_fixed_full_length_and_answered():
    config = L.TrainConfig(task="sort")
    a = LG.length_test_set(config, 9)
    b = LG.length_test_set(L.TrainConfig(task="sort", seed=5), 9)         # another training seed: same set
    assert torch.equal(a.src, b.src) and a.src.shape == (LG.TEST_SIZE, 9)
    assert bool((a.src != L.PAD).all())                                  # exactly 9 digits each
    assert torch.equal(a.tgt_out[:, :9], a.src.sort(dim=1).values) and bool((a.tgt_out[:, 9] == L.EOS).all())
    assert not torch.equal(LG.length_test_set(config, 10).src[:, :9], a.src)   # each length: a seed of its own


def test_evaluate_measures_every_length_and_draws_the_figure(checkpoint_file, tmp_path):
    model = C.load_checkpoint(checkpoint_file)
    config = L.TrainConfig(**C.read_checkpoint(checkpoint_file)["config"])
    found = LG.evaluate(config, model, [3, 5, 8], [5], "cpu", tmp_path)
    r = found["results"]
    assert list(r) == ["3", "5", "8"] and (tmp_path / "length_generalization.png").exists()
    assert r["5"]["exact_match"] >= 0.9                                   # the trained length is learned
    assert all(len(v["accuracy_by_position"]) == int(k) + 1 for k, v in r.items())   # every digit, then EOS
    assert r["5"]["exact_count"] == round(r["5"]["exact_match"] * r["5"]["sequences"])
    assert found["sentences"] and all("%" in text for text in found["sentences"])


def test_sum_answers_grow_by_a_digit_only_now_and_then(tmp_path):
    torch.manual_seed(0)
    config = L.TrainConfig(task="sum", seq_len=5)
    model = L.Seq2SeqTransformer(**{**config.model_config(), "d_model": 16, "d_ff": 32}).eval()
    found = LG.evaluate(config, model, [2, 20], [5], "cpu", tmp_path)
    # length 2: sums up to 18 (2 digits + EOS); length 20: about 1 in 5 sums reaches 100 (3 digits + EOS)
    assert [len(found["results"][k]["accuracy_by_position"]) for k in ("2", "20")] == [3, 4]
    assert any("did not learn" in text for text in found["sentences"])     # untrained: no verdict on lengths


def test_the_challenge_reads_a_checkpoint_and_writes_its_files(checkpoint_file, tmp_path):
    LG.main(["--checkpoint", str(checkpoint_file), "--lengths", "4,5,7", "--out-dir", str(tmp_path)])
    saved = json.loads((tmp_path / "length_generalization.json").read_text())
    assert sorted(saved["results"], key=int) == ["4", "5", "7"] and saved["trained"] == [5]


def test_eval_lengths_after_a_quick_resumed_run(run_main, checkpoint_file):
    out = run_main(5, "--quick", "--resume", str(checkpoint_file), "--steps", "400", "--beam-size", "1",
                   "--eval-lengths", "8, 3,5,3")
    assert (out / "length_generalization.png").exists()
    by_length = json.loads((out / "metrics.json").read_text())["length_generalization"]["results"]
    assert sorted(by_length, key=int) == ["3", "5", "8"]                 # sorted, each length once


@pytest.mark.parametrize("flags, contains", [
    (["--eval-lengths", "8,0"], "0 is out of range"),
    (["--eval-lengths", "8,x"], "'x' is not a whole number"),
    (["--eval-lengths", "8.5"], "'8.5'"),
    (["--eval-lengths", "64"], "from 1 to 63"),                               # reversal: the answer + EOS
    (["--quick", "--max-len", "12", "--eval-lengths", "12"], "from 1 to 11"),
    (["--quick", "--task", "sum", "--max-len", "12", "--eval-lengths", "13"], "from 1 to 12"),  # short answers
])
def test_bad_eval_lengths_give_one_line_and_exit_2_before_training(capsys, monkeypatch, flags, contains):
    monkeypatch.setattr(L, "train", lambda *a, **k: pytest.fail("trained before checking --eval-lengths"))
    err = expect_user_error(capsys, 5, *flags, contains=contains)
    assert "--eval-lengths" in err


def test_a_missing_checkpoint_is_one_line(capsys, tmp_path):
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        LG.main(["--checkpoint", str(tmp_path / "none.pt"), "--out-dir", str(tmp_path)])
    assert exc.value.code == 2 and "not found" in capsys.readouterr().err
