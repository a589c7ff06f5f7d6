"""Lesson 05 with its knobs edited (TrainConfig's defaults, the token ids, TASK_DEFAULTS, the held-out
seeds), as a learner edits them: an edited knob is used, or one `error:` line names it, before any
training starts. Each test runs an edited copy of the lesson in this process (tests/breakit.py)."""
import json

import pytest

from breakit import Edit, run_lesson


def field(name, old, new):
    """An Edit of one TrainConfig default: `    name: type = old` -> new."""
    kinds = {"task": "str", "sum_order": "str", "schedule": "str", "norm_first": "bool", "embed_scale": "bool",
             "dropout": "float", "lr": "float", "weight_decay": "float", "grad_clip": "float",
             "label_smoothing": "float", "target": "float"}
    return Edit(5, f"    {name}: {kinds.get(name, 'int')} = {old}  ", f"    {name}: {kinds.get(name, 'int')} = {new}  ")


SMALL = ["--seq-len", "5", "--steps", "30", "--beam-size", "1"]


def one_error_line(run, *names):
    assert run.exit_code == 2 and not run.traceback, run.traceback or run.err
    lines = run.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), run.err
    assert all(name in lines[0] for name in names), lines[0]
    assert "Training:" not in run.out, "the error came after training started"
    return lines[0]


def test_edited_training_knobs_are_used(tmp_path):
    run = run_lesson(5, ["--beam-size", "1"], tmp_path, field("steps", "600 ", "30  "),
                     field("d_model", "32", "48"), field("n_heads", "2 ", "3 "), field("eval_every", "10", "5 "),
                     field("val_size", "1000", "100 "), field("test_size", "1000", "100 "))
    assert run.exit_code is None and not run.traceback, run.traceback or run.err
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["config"]["steps"] == 30 and metrics["steps_run"] <= 30
    assert metrics["config"]["d_model"] == 48 and metrics["config"]["n_heads"] == 3
    assert metrics["test"]["greedy"]["n"] == 100
    out = " ".join(run.out.split())
    assert "schedule to step 30" in out and "Every 5 steps" in out


@pytest.mark.parametrize("edit, names", [
    (field("n_heads", "2 ", "3 "), ["TrainConfig.n_heads = 3"]),
    (field("seq_len", "16", "80"), ["TrainConfig.seq_len = 80"]),
    (field("lr", "5e-3", "0.0"), ["TrainConfig.lr = 0.0"]),
    (field("dropout", "0.0", "1.5"), ["TrainConfig.dropout = 1.5"]),
    (field("n_digits", "10", "10.5"), ["TrainConfig.n_digits = 10.5", "whole number"]),
    (field("dropout", "0.0", "'0.1'"), ["TrainConfig.dropout = '0.1'", "a number"]),
    (field("lr", "5e-3", "'5e-3'"), ["TrainConfig.lr = '5e-3'"]),
    (field("seq_len", "16", "'16'"), ["TrainConfig.seq_len = '16'"]),
    (field("norm_first", "True", "'yes'"), ["TrainConfig.norm_first = 'yes'", "True or False"]),
    (field("steps", "600", "1.5"), ["TrainConfig.steps = 1.5"]),
    (field("val_size", "1000", "0   "), ["TrainConfig.val_size = 0"]),
    (field("val_size", "1000", "-1  "), ["TrainConfig.val_size = -1"]),
    (field("test_size", "1000", "0   "), ["TrainConfig.test_size = 0"]),
    (field("test_size", "1000", "10**9"), ["TrainConfig.test_size = 1000000000", "100,000"]),
    (field("seed", "0", "'0'"), ["TrainConfig.seed = '0'"]),
    (field("seed", "0", "None"), ["TrainConfig.seed = None"]),
    (Edit(5, "FIRST_DIGIT = 3\n", "FIRST_DIGIT = 0\n"), ["FIRST_DIGIT"]),
    (Edit(5, "FIRST_DIGIT = 3\n", "FIRST_DIGIT = -1\n"), ["FIRST_DIGIT = -1"]),
    (Edit(5, "PAD, BOS, EOS = 0, 1, 2", "PAD, BOS, EOS = 0, 1, 1"), ["PAD, BOS, EOS"]),
    (Edit(5, 'TASK_DEFAULTS = {"copy": {"steps": 300}', 'TASK_DEFAULTS = {"copy": {"step": 300}'),
     ["TASK_DEFAULTS['copy']['step']", "no field"]),
    (Edit(5, '"sort": {"steps": 1500, "eval_every": 50}', '"sort": {"steps": "1500", "eval_every": 50}'),
     ["TASK_DEFAULTS['sort']['steps']"]),
    (Edit(5, "VAL_SEED, TEST_SEED = 1_000_003, 2_000_003", "VAL_SEED, TEST_SEED = 7, 7"), ["VAL_SEED"]),
])
def test_an_impossible_knob_is_one_line_naming_it_before_any_training(tmp_path, edit, names):
    one_error_line(run_lesson(5, [], tmp_path, edit), *names)


def test_an_edited_seed_wins_over_the_flags_default_and_the_flag_over_it(tmp_path):
    run = run_lesson(5, ["--quick", "--beam-size", "1"], tmp_path, field("seed", "0", "-1"))
    assert run.exit_code is None and "seed -1 |" in run.out, run.traceback or run.out[:400]
    assert json.loads((tmp_path / "metrics.json").read_text())["config"]["seed"] == -1
    run = run_lesson(5, ["--quick", "--beam-size", "1", "--seed", "4"], tmp_path, field("seed", "0", "-1"))
    assert json.loads((tmp_path / "metrics.json").read_text())["config"]["seed"] == 4


def test_quick_says_which_knobs_it_overrides(tmp_path):
    run = run_lesson(5, ["--quick", "--beam-size", "1", "--seq-len", "5"], tmp_path, field("steps", "600 ", "30  "))
    line = " ".join(run.out.split("--quick replaces", 1)[1].split("\n\n")[0].split())
    assert "TrainConfig.steps = 30 with 100" in line and "seq_len" not in line   # a typed flag is not replaced
    assert json.loads((tmp_path / "metrics.json").read_text())["config"]["steps"] == 100
