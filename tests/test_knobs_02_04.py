"""Lessons 02 and 04 with their knobs edited, as a learner edits them at the top of the file.

Each test loads an edited copy of the lesson's source text as a fresh module (so values bound when
the file runs, such as default arguments, are edited too) and runs its main(). Every knob set to a
second valid value must give a run that uses it; an impossible value must give one `error:` line
that names the knob, not a flag the learner never passed.
"""
import re
import types

import pytest

from common.lessons import lesson_path


def edited_lesson(n: int, **knobs):
    """Lesson n as a fresh module, with each `NAME = value` line at the top replaced (comments kept).
    Knob names with a comma, like "B, T", are passed as B_T."""
    source = lesson_path(n).read_text()
    for name, value in knobs.items():
        name = name.replace("_T", ", T") if name == "B_T" else name
        pattern = re.compile(rf"^({re.escape(name)} = )[^#\n]*?(\s*#.*)?$", re.M)
        source, count = pattern.subn(lambda m: f"{m.group(1)}{value}{m.group(2) or ''}", source)
        assert count == 1, f"knob {name} not found (once) in lesson {n}"
    module = types.ModuleType(f"edited_lesson_{n:02d}")
    module.__file__ = str(lesson_path(n))
    exec(compile(source, module.__file__, "exec"), module.__dict__)
    return module


def run(module, tmp_path, capsys, *flags):
    """module.main() with a temporary --out-dir; returns what it printed, every run of spaces and
    line breaks made one space (the console wraps its paragraphs)."""
    capsys.readouterr()
    module.main([*flags, "--threads", "1", "--out-dir", str(tmp_path)])
    return " ".join(capsys.readouterr().out.split())


def one_error_line(module, capsys, *flags):
    """Run module.main(); assert exit status 2 and one `error:` line on stderr; return that line."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        module.main([*flags, "--threads", "1"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and "Traceback" not in err, err
    return err


LESSON_02_KNOBS = dict(D_MODEL=24, N_HEADS=3, VOCAB_SIZE=5, SEQ_LEN=5, LR=0.02, WARMUP=5,
                       HEAD_COUNTS=(1, 3, 5), STEPS=40, BATCH_SIZE=16, N_EVAL=100)


def test_lesson_02_uses_every_edited_knob(tmp_path, capsys):
    out = run(edited_lesson(2, **LESSON_02_KNOBS), tmp_path, capsys)
    assert "d_model=24, n_heads=3, d_head=8" in out
    assert "digits 0..4 on a ring of 5 positions" in out and "a class from -4 to +4" in out
    assert "3-head and a 1-head model with the same d_model=24, 40 steps" in out
    assert "100 held-out sequences" in out and "query 0's left neighbour is key 4" in out
    assert "not possible: 5 does not divide 24" in out  # HEAD_COUNTS
    assert (tmp_path / "multi_head_attention.png").exists()


def test_lesson_02_quick_uses_the_edited_quick_sizes(tmp_path, capsys):
    module = edited_lesson(2, D_MODEL=16, N_HEADS=4, QUICK="dict(steps=12, batch_size=8, n_eval=50)")
    out = run(module, tmp_path, capsys, "--quick")
    assert "d_model=16, n_heads=4" in out and "12 steps" in out and "50 held-out sequences" in out


@pytest.mark.parametrize("knobs,flags,named", [
    (dict(N_HEADS=3), (), "N_HEADS = 3 must divide D_MODEL = 32"),
    (dict(D_MODEL=2000), (), "D_MODEL = 2000"),
    (dict(D_MODEL=30), ("--heads", "4"), "--heads 4 must divide D_MODEL = 30"),
    (dict(SEQ_LEN=2), (), "SEQ_LEN = 2"),
    (dict(VOCAB_SIZE=1), (), "VOCAB_SIZE = 1"),
    (dict(STEPS=0), (), "STEPS = 0"),
    (dict(QUICK="dict(steps=0, batch_size=8, n_eval=50)"), ("--quick",), "QUICK['steps'] = 0"),
    (dict(D_MODEL=32.0), (), "D_MODEL = 32.0"),  # wrong types: one line, not a TypeError
    (dict(N_HEADS=True), (), "N_HEADS = True"),
    (dict(LR='"fast"'), (), "LR = 'fast'"),
    (dict(HEAD_COUNTS=(1, 2.0)), (), "HEAD_COUNTS = (1, 2.0)"),
    (dict(QUICK="dict(steps=1.5, batch_size=8, n_eval=50)"), ("--quick",), "QUICK['steps'] = 1.5"),
])
def test_lesson_02_impossible_knobs_give_one_line_naming_them(capsys, knobs, flags, named):
    assert named in one_error_line(edited_lesson(2, **knobs), capsys, *flags)


LESSON_04_KNOBS = dict(D_MODEL=48, N_HEADS=3, D_FF=96, N_LAYERS=2, B_T="3, 5", DROPOUT=0.2,
                       COST_LENGTHS=(16, 48, 32), DEPTH_STUDY="dict(depths=(3, 1), d_model=12, heads=3, B=2, T=5, seeds=(2,))")


def test_lesson_04_uses_every_edited_knob(tmp_path, capsys):
    out = run(edited_lesson(4, **LESSON_04_KNOBS), tmp_path, capsys)
    assert "(3, 5, 48)" in out and "feed-forward hidden, after ReLU (3, 5, 96)" in out  # B, T, sizes
    assert "attention weights (3, 3, 5, 5)" in out and "ends with 2 of them" in out
    assert "With p = 0.2" in out
    assert "From T = 16 to 48 (3x longer)" in out and "d_model=48, 3 heads, d_ff=96" in out
    assert "Stacking 2 blocks" in out and "2 blocks, pre-LN" in out
    assert "We stack 1 to 3 blocks (d_model 12, heads 3, B 2, T 5, seeds (2,))" in out
    assert "At 3 blocks: " in out
    for name in ("transformer_block_gradients.png", "transformer_block_layernorm.png"):
        assert (tmp_path / name).exists()


def test_lesson_04_quick_uses_the_edited_quick_sizes(tmp_path, capsys):
    module = edited_lesson(4, QUICK_COST_LENGTHS=(8, 16), QUICK_DEPTH_STUDY=(
        "dict(depths=(2, 3), d_model=8, heads=2, B=2, T=4, seeds=(0, 1))"))
    out = run(module, tmp_path, capsys, "--quick")
    assert "From T = 8 to 16" in out and "We stack 2 to 3 blocks (d_model 8, heads 2, B 2, T 4" in out
    flat = " ".join(out.split()).replace("- ", "-")
    assert re.search(r"than its last in every seed \(\S+ \(\S+-\S+\)\), pre-LN's more", flat)  # two seeds: their range
    assert "seeds (0, 1)" in out


@pytest.mark.parametrize("knobs,flags,named", [
    (dict(N_HEADS=5), (), "N_HEADS = 5 must divide D_MODEL = 64"),
    (dict(D_FF=0), (), "D_FF = 0"),
    (dict(N_LAYERS=-1), (), "N_LAYERS = -1"),
    (dict(D_MODEL=48), ("--heads", "5"), "--heads 5 must divide D_MODEL = 48"),
    (dict(B_T="2, 1"), (), "T = 1 must be a whole number of 2 or more"),
    (dict(COST_LENGTHS=(64,)), (), "COST_LENGTHS"),
    (dict(DEPTH_STUDY="dict(depths=(2, 4), d_model=32, heads=3, B=8, T=16, seeds=(0,))"), (), "DEPTH_STUDY"),
    (dict(QUICK_DEPTH_STUDY="dict(depths=(2, 4), d_model=16, heads=2, B=4, T=1, seeds=(0,))"), ("--quick",),
     "QUICK_DEPTH_STUDY"),
    (dict(D_MODEL=64.0), (), "D_MODEL = 64.0"),  # wrong types and ranges: one line, no traceback
    (dict(DROPOUT=1.5), (), "DROPOUT = 1.5"),
    (dict(DROPOUT='"0.1"'), (), "DROPOUT = '0.1'"),
    (dict(B_T="2, 6.0"), (), "T = 6.0"),
    (dict(COST_LENGTHS=(128, 256.0)), (), "COST_LENGTHS = (128, 256.0)"),
    (dict(DEPTH_STUDY="(2, 4)"), (), "DEPTH_STUDY = (2, 4) must be a dict"),
    (dict(DEPTH_STUDY="dict(depths=(2, 4), d_model=32.0, heads=4, B=8, T=16, seeds=(0,))"), (),
     "DEPTH_STUDY['d_model'] = 32.0"),
])
def test_lesson_04_impossible_knobs_give_one_line_naming_them(capsys, knobs, flags, named):
    assert named in one_error_line(edited_lesson(4, **knobs), capsys, *flags)
