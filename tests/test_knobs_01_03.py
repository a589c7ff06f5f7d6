"""Edited knobs of lessons 01 and 03: a second value gives a correct run, a bad one one line naming it.

Each case loads an edited copy of the lesson's source as a fresh module, the new values placed at the
end of the knob block, so everything computed or bound after them (function defaults included) sees
them, as when a learner edits the file. main() then runs in-process with a temporary --out-dir.
"""
import math
import re
import types

import pytest
import torch

from common import claims
from common.lessons import lesson_path

FIGURES = {1: ("attention_weights.png", "attention_scaling.png", "attention_masks.png"),
           3: ("positional_encoding_heatmap.png", "positional_encoding_wavelengths.png",
               "positional_encoding_dot_products.png", "positional_encoding_layouts.png")}


def edited_lesson(n, edits):
    """Lesson n as a fresh module, with each knob in `edits` set to the given source text."""
    path = lesson_path(n)
    knobs, marker, rest = path.read_text(encoding="utf-8").partition("# %% Building blocks")
    assert marker, f"{path.name} has no '# %% Building blocks' line after its knobs"
    for knob in edits:  # an edit of a name that is not a knob would test nothing
        assert re.search(rf"^[\w, ]*\b{knob}\b[\w, ]* = ", knobs, re.M), f"{knob} is not a knob of {path.name}"
    lines = "".join(f"{knob} = {value}\n" for knob, value in edits.items())
    module = types.ModuleType(f"edited_lesson_{n:02d}")
    module.__file__ = str(path)
    exec(compile(knobs + lines + marker + rest, str(path), "exec"), module.__dict__)
    return module


def source_edited_lesson(n, old, new):
    """Lesson n as a fresh module with the source line `old` (exactly once in the file) replaced by `new`."""
    path = lesson_path(n)
    text = path.read_text(encoding="utf-8")
    assert text.count(old) == 1, f"{old!r} is not once in {path.name}: update this test's edit"
    module = types.ModuleType(f"edited_lesson_{n:02d}")
    module.__file__ = str(path)
    exec(compile(text.replace(old, new), str(path), "exec"), module.__dict__)
    return module


def run_edited(n, edits, tmp_path, capsys, *flags):
    """Run the edited lesson; assert it finished and wrote its figures; return what it printed."""
    capsys.readouterr()
    claims.reset()
    edited_lesson(n, edits).main([*flags, "--out-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert "Key insights" in out
    assert not re.search(r"\bnan\b", out), "a number printed as nan"
    for name in FIGURES[n]:
        assert (tmp_path / name).stat().st_size > 1000, name
    return out


def error_line(n, edits, capsys, *flags):
    """Run the edited lesson; assert exit status 2 with one `error:` line; return that line."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        edited_lesson(n, edits).main(list(flags))
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    return err


# --- lesson 01 -------------------------------------------------------------------------------
def test_01_hand_example_with_four_words_and_a_tie(tmp_path, capsys):
    out = run_edited(1, {"TOKENS": '["a", "dog", "ran", "far"]',
                         "HAND_Q": "[[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 0, 0]]",
                         "HAND_K": "[[1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]]",
                         "HAND_V": "[[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 1]]"}, tmp_path, capsys, "--quick")
    out = " ".join(out.split())
    assert "'far' listens equally most to 'a' and 'dog'" in out  # 'far' asks for feature 0: 'a' and 'dog' offer it
    insights = out.split("Key insights")[1]
    assert "equally most to 'a' and 'dog'" in insights and "the keys with the largest q . k" in insights


def test_01_other_sizes_and_masks(tmp_path, capsys):
    out = run_edited(1, {"D_MODEL": 16, "D_K": 8, "SEQ_LEN": 5, "LENGTHS": "[5, 2, 0]", "T_Q_CROSS": 4,
                         "T_K_CROSS": 2, "N_KEYS_SWEEP": 4, "SATURATED": 0.9, "COST_D_K": 16,
                         "QUICK_D_K_SWEEP": "[2, 32]", "QUICK_N_QUERIES": 20, "QUICK_T_SWEEP": "[16, 48]"},
                     tmp_path, capsys, "--quick")
    flat = " ".join(out.split())
    assert "Left padding with a causal mask left 8 queries without keys" in flat  # 3 + 5 padding queries
    assert "0 NaN rows in ours" in flat
    # every claim holds but one, and the lesson says so: with SATURATED = 0.9 and 4 keys, a row counted as
    # saturated still sends its query more gradient than a scaled row does
    assert claims.broken() == ["saturated-rows-starve", "insight-scaling"]
    assert "weight on padding, sequence 1" in out and "has both tokens and padding" not in out  # length 2 of 5


def test_01_no_padding_at_all(tmp_path, capsys):
    out = run_edited(1, {"LENGTHS": "[6, 6]"}, tmp_path, capsys, "--quick")
    assert "left 0 queries without keys" in out


def test_01_small_d_k_sweep_stays_honest(tmp_path, capsys):
    # the sizes a learner may try first: dividing by sqrt(d_k) barely matters, nothing saturates
    out = run_edited(1, {"D_K_SWEEP": "[1, 2, 4]", "N_QUERIES_SWEEP": 200, "T_SWEEP": "[32, 64]"},
                     tmp_path, capsys)
    section, insights = (" ".join(part.split()) for part in out.split("Key insights"))
    assert "of unscaled rows are saturated" in section and not claims.broken() and "DOES NOT HOLD" not in out
    assert "larger d_k show the rows that starve" in insights and "sends little gradient back" not in out


def test_01_lengths_without_a_padded_sequence_say_so(tmp_path, capsys):
    out = " ".join(run_edited(1, {"LENGTHS": "[6, 0]"}, tmp_path, capsys, "--quick").split())
    assert "No sequence in LENGTHS = [6, 0] has both tokens and padding" in out


@pytest.mark.parametrize("edits, flags, names", [
    ({"LENGTHS": "[7, 2]"}, (), "LENGTHS = [7, 2]"),
    ({"HAND_V": "[[0, 0], [1, 0]]"}, (), "HAND_V"),
    ({"D_MODEL": 0}, (), "D_MODEL"),
    ({"SATURATED": 1.5}, (), "SATURATED = 1.5"),
    ({"QUICK_T_SWEEP": "[64]"}, ("--quick",), "QUICK_T_SWEEP = [64]"),
    ({"D_MODEL": 8.0}, (), "D_MODEL = 8.0"),          # wrong types: one line, not a TypeError
    ({"D_K": True}, (), "D_K = True"),
    ({"LENGTHS": "[6, 4.0]"}, (), "LENGTHS = [6, 4.0]"),
    ({"T_SWEEP": "[256, 512.0]"}, (), "T_SWEEP = [256, 512.0]"),
    ({"SATURATED": '"high"'}, (), "SATURATED = 'high'"),
])
def test_01_impossible_knobs_give_one_line_naming_them(capsys, edits, flags, names):
    assert names in error_line(1, edits, capsys, *flags)


# --- lesson 03 -------------------------------------------------------------------------------
def test_03_base_reaches_every_function(tmp_path, capsys):
    lesson = edited_lesson(3, {"BASE": 100.0})
    d_model, max_len = 8, 30
    pe = lesson.sinusoidal_positional_encoding(max_len, d_model).double()
    w = torch.tensor([100.0 ** (-2 * i / d_model) for i in range(d_model // 2)], dtype=torch.float64)
    angles = torch.arange(max_len, dtype=torch.float64)[:, None] * w
    torch.testing.assert_close(pe[:, 0::2], angles.sin(), atol=1e-7, rtol=0)
    torch.testing.assert_close(pe[:, 1::2], angles.cos(), atol=1e-7, rtol=0)
    torch.testing.assert_close(lesson.pair_wavelengths(d_model), 2 * math.pi / w)
    torch.testing.assert_close(lesson.PositionalEncoding(d_model, max_len).pe.double(), pe)
    moved = pe[:-3] @ lesson.relative_position_matrix(3, d_model, torch.float64).T
    torch.testing.assert_close(moved, pe[3:], atol=1e-6, rtol=0)
    out = run_edited(3, {"BASE": 100.0}, tmp_path, capsys, "--quick")
    assert "BASE=100" in out and "10000" not in out
    assert "zigzag" not in out  # the last cosine moves at a third of its sine's pace here (test_03: 10000 does)
    assert "to within float32 rounding of the table" in " ".join(out.split()) and "DOES NOT HOLD" not in out


def test_03_other_sizes_without_quick(tmp_path, capsys):
    out = run_edited(3, {"D_MODEL": 32, "MAX_LEN": 48, "N_HEADS": 2}, tmp_path, capsys)
    assert "d_model=32, max_len=48" in out


def test_03_other_section_knobs(tmp_path, capsys):
    out = run_edited(3, {"SEQ_LEN": 3, "VOCAB_SIZE": 2, "OFFSETS": "(2, 3)", "LOOK_BACK_SCALES": "(2, 50)",
                         "QUICK_D_MODEL": 8, "QUICK_MAX_LEN": 20}, tmp_path, capsys, "--quick")
    assert "d_model=8, max_len=20" in out and "rows peaking at p-2" in out


@pytest.mark.parametrize("flags, size_knob", [(("--quick",), "QUICK_D_MODEL"), ((), "D_MODEL")])
def test_03_three_heads_name_the_knobs_and_suggest_a_size_that_works(tmp_path, capsys, flags, size_knob):
    err = error_line(3, {"N_HEADS": 3}, capsys, *flags)
    assert "N_HEADS = 3" in err and f"{size_knob} = " in err
    suggested = int(re.search(r"try (\d+)", err).group(1))
    assert suggested % 6 == 0
    edits = {"N_HEADS": 3, size_knob: suggested, "MAX_LEN": 32}  # MAX_LEN small: a fast run
    assert f"d_model={suggested}" in run_edited(3, edits, tmp_path, capsys, *flags)


@pytest.mark.parametrize("edits, flags, names", [
    ({"BASE": 1.0}, (), "BASE = 1.0"),
    ({"BASE": 'float("inf")'}, (), "BASE = inf"),  # was a traceback from matplotlib's axis limits
    ({"BASE": "1e12"}, ("--quick",), "BASE = 1000000000000.0"),
    ({"OFFSETS": "(0, 2)"}, (), "OFFSETS = (0, 2)"),
    ({"QUICK_MAX_LEN": 8}, ("--quick",), "QUICK_MAX_LEN = 8"),
    ({"N_HEADS": 0}, (), "N_HEADS = 0"),
    ({"VOCAB_SIZE": 20.0}, (), "VOCAB_SIZE = 20.0"),  # wrong types: one line, not a TypeError
    ({"BASE": '"100"'}, (), "BASE = '100'"),
    ({"N_HEADS": 4.0}, (), "N_HEADS = 4.0"),
    ({"OFFSETS": "(1, 2.5)"}, (), "OFFSETS = (1, 2.5)"),
    ({"LOOK_BACK_SCALES": "(1, -4)"}, (), "LOOK_BACK_SCALES = (1, -4)"),
])
def test_03_impossible_knobs_give_one_line_naming_them(capsys, edits, flags, names):
    assert names in error_line(3, edits, capsys, *flags)


def test_03_flag_errors_name_the_flag_not_the_knob(capsys):
    err = error_line(3, {"N_HEADS": 3}, capsys, "--d-model", "64")
    assert "--d-model 64" in err and "D_MODEL =" not in err
