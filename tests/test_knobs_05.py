"""Lesson 05 with its knobs edited (the TrainConfig defaults, TASK_DEFAULTS), as a learner edits them.

Each test loads an edited copy of the lesson's source as a fresh module and runs its main(): an
edited knob must be used, and an impossible value must give one `error:` line that names the knob,
not a flag the learner never passed.
"""
import json
import re
import types

import pytest

from common.lessons import lesson_path


def edited_lesson_05(**fields):
    """Lesson 05 as a fresh module with TrainConfig's `field: type = value` lines changed."""
    source = lesson_path(5).read_text()
    for name, value in fields.items():
        pattern = re.compile(rf"^(    {name}: \w+ = )[^#\n]*?(\s*#.*)?$", re.M)
        source, count = pattern.subn(lambda m: f"{m.group(1)}{value!r}{m.group(2) or ''}", source)
        assert count == 1, f"TrainConfig field {name} not found (once)"
    module = types.ModuleType("edited_lesson_05")
    module.__file__ = str(lesson_path(5))
    exec(compile(source, module.__file__, "exec"), module.__dict__)
    return module


def test_edited_training_knobs_are_used(tmp_path, capsys):
    lesson = edited_lesson_05(steps=30, d_model=48, n_heads=3, eval_every=5, val_size=100, test_size=100)
    lesson.main(["--threads", "1", "--beam-size", "1", "--out-dir", str(tmp_path)])
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["config"]["steps"] == 30 and metrics["steps_run"] <= 30
    assert metrics["config"]["d_model"] == 48 and metrics["config"]["n_heads"] == 3
    assert metrics["test"]["greedy"]["n"] == 100
    out = " ".join(capsys.readouterr().out.split())
    assert "schedule to step 30" in out and "Every 5 steps" in out


@pytest.mark.parametrize("fields, names", [
    ({"n_heads": 3}, "TrainConfig.n_heads = 3"),
    ({"seq_len": 80}, "TrainConfig.seq_len = 80"),
    ({"lr": 0.0}, "TrainConfig.lr = 0.0"),
    ({"dropout": 1.5}, "TrainConfig.dropout = 1.5"),
])
def test_an_impossible_knob_is_one_line_naming_the_knob(capsys, tmp_path, fields, names):
    lesson = edited_lesson_05(**fields)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        lesson.main(["--threads", "1", "--out-dir", str(tmp_path)])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and names in err, err
