"""--quick says, in one line, which knobs it replaces: an edited knob is never overridden silently.

Each lesson runs at --quick in this process with one knob edited (tests/breakit.py); the line under
the header must name that knob with the learner's value and the value --quick uses instead.
"""
import pytest

from breakit import Edit, run_lesson

CASES = [
    (1, Edit(1, "D_K_SWEEP = [4, 16, 64, 256, 512]", "D_K_SWEEP = [4, 16, 64, 128]"), [],
     "D_K_SWEEP = [4, 16, 64, 128] with [4, 16, 64]"),
    (2, Edit(2, "STEPS = 200          #", "STEPS = 150          #"), [], "STEPS = 150 with 100"),
    (3, Edit(3, "D_MODEL = 64       #", "D_MODEL = 32       #"), [], "D_MODEL = 32 with 16"),
    (4, Edit(4, "COST_LENGTHS = (128, 256, 512, 1024)", "COST_LENGTHS = (256, 512)"), [],
     "COST_LENGTHS = (256, 512) with (32, 64, 128)"),
]


def quick_line(out):
    """The --quick line under the header, unwrapped."""
    assert "--quick replaces" in out, out[:600]
    return " ".join(out.split("--quick replaces", 1)[1].split("\n\n")[0].split("\n")[0:3]).split("d_model=")[0]


@pytest.mark.parametrize("lesson, edit, flags, expected", CASES)
def test_quick_names_the_edited_knob_it_replaces(tmp_path, lesson, edit, flags, expected):
    run = run_lesson(lesson, ["--quick", *flags], tmp_path, edit)
    assert run.exit_code is None and not run.traceback, run.traceback or run.err
    assert expected in " ".join(quick_line(run.out).split()), quick_line(run.out)


def test_a_typed_flag_is_not_reported_as_replaced(tmp_path):
    run = run_lesson(3, ["--quick", "--d-model", "32"], tmp_path)
    line = quick_line(run.out)
    assert "MAX_LEN = 128 with 32" in " ".join(line.split()) and "D_MODEL" not in line
