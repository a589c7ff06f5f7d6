"""The exercise checker (`python -m exercises`) is itself checked here: the command and its report.

The lessons' own code scores full marks, in the sandbox too; the untouched stubs are reported as
not attempted, in one line each; hints come in three levels (--hint), --exam shows pass or fail
only, compare prints the learner's version and the lesson's with file and line, progress is
remembered (and a damaged record is set aside); attempts that exit, crash, hang or print without
end fail with one line; usage mistakes exit with status 2 and one line. The catalogue of wrong
attempts is in test_exercises_catalogue.py, the sandbox's escapes in test_exercises_sandbox.py.
"""
import functools
import inspect
import json
import math
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch
import torch.nn.functional as F

from common import load_lesson
from conftest import REPO_ROOT, run_script
from exercises import EXERCISES
from exercises._checker import check, check_file, load_attempt, load_reference
from exercises._cli import main
from exercises._isolation import grade
from exercises.checks import attention, beam_search, checks_of, encoder_block, multi_head_attention, stand_in_model
from exercises.checks import positional_encoding
from exercises.checks.helpers import random_mask
from test_exercises_catalogue import simple_beam_search

L1, L2, L3, L4, L5 = (load_lesson(n) for n in range(1, 6))
TOTAL = sum(len(checks_of(name)) for name in EXERCISES)


def failure_text(result):
    """Every failed check's title, lines and hint, for assertion messages and searches."""
    return "\n".join(f"{c.title}: " + " | ".join(c.lines) + (f" | hint: {' '.join(c.hint.levels(3))}" if c.hint else "")
                     for c in result.checks if not c.passed)


# ----------------------------------------------------------------------------------------------
# The lessons pass, the stubs are "not attempted"
@pytest.mark.parametrize("name", list(EXERCISES))
def test_lesson_code_scores_full_marks(name):
    implementation, path = load_reference(name)
    result = check(name, implementation, source_file=path)
    assert result.state == "checked"
    assert result.total == len(checks_of(name)) >= 4
    assert result.passed == result.total, failure_text(result)


@pytest.mark.parametrize("name", list(EXERCISES))
def test_untouched_stub_is_not_attempted(name):
    result = check_file(name)
    assert result.state == "not attempted", failure_text(result)
    assert result.passed == 0 and result.checks == []
    assert "NotImplementedError" in result.note and "\n" not in result.note
    assert EXERCISES[name].file in result.note  # names the file (and line) that still raises


def test_check_command_on_the_stubs_in_process(capsys):
    assert main(["check"]) == 1
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err
    lines = captured.out.splitlines()
    for name in EXERCISES:
        mine = [line for line in lines if line.startswith(f"{name}: ")]
        assert len(mine) == 1 and "not attempted yet" in mine[0], mine  # one line per exercise
        assert f"[0/{len(checks_of(name))}]" in mine[0]
    assert any(line.split()[:2] == ["total", f"0/{TOTAL}"] for line in lines), captured.out


def test_check_command_on_the_stubs_in_a_real_process():
    result = run_script("-m", "exercises", "check")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert result.stdout.count("not attempted yet") == len(EXERCISES)
    assert f"0/{TOTAL}" in result.stdout


def test_reference_flag_gives_full_marks_and_exit_0(capsys):
    assert main(["check", "--reference"]) == 0
    out = capsys.readouterr().out
    assert f"{TOTAL}/{TOTAL}" in out and "FAIL" not in out
    assert "compare" not in out  # the lesson's code is not compared with itself


def test_one_exercise_only(capsys):
    assert main(["check", "--reference", "causal_mask"]) == 0
    out = capsys.readouterr().out
    assert "causal_mask: 4/4 checks passed" in out
    assert not any(line.startswith("attention") for line in out.splitlines())


@pytest.mark.parametrize("argv, contains", [
    (["check", "atention"], "atention"),
    (["check", "attention", "atention"], "atention"),
    (["bogus"], "bogus"),
    (["list", "attention"], "attention"),
    (["list", "--dir", "/no/such/folder"], "--dir"),
    (["check", "attention", "--dir", "/no/such/folder"], "--dir"),
    (["check", "--dir", ""], "--dir"),
    (["check", "--dir", __file__], "--dir"),
    (["check", "--dir"], "--dir"),
    (["check", "--reference", "--dir", "exercises"], "--reference"),
    (["check", "--bogus"], "--bogus"),
    (["check", "--reference=yes"], "--reference"),
    (["check", "--time-limit", "0"], "--time-limit"),
    (["check", "--time-limit", "-1"], "--time-limit"),
    (["check", "--time-limit", "abc"], "--time-limit"),
    (["check", "--time-limit", "nan"], "--time-limit"),
    (["check", "--time-limit", "1e9"], "--time-limit"),
    (["check", "--time-limit"], "--time-limit"),
    (["check", "--hint", "0"], "--hint"),
    (["check", "--hint", "4"], "--hint"),
    (["check", "--hint", "two"], "--hint"),
    (["check", "--hint"], "--hint"),
    (["check", "--hint", "2", "--exam"], "--exam"),
    (["compare"], "NAME"),
    (["compare", "atention"], "atention"),
    (["compare", "attention", "causal_mask"], "causal_mask"),
    (["compare", "attention", "--dir", "/no/such/folder"], "--dir"),
    ([], "list"),
])
def test_usage_mistakes_are_one_line_exit_2(capsys, argv, contains):
    assert main(argv) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    assert contains in err and captured.out == ""
    if argv[:2] in (["check", "atention"], ["compare", "atention"]):
        assert all(name in err for name in EXERCISES)  # lists the valid names


def test_a_usage_mistake_in_a_real_process_is_one_line_exit_2():
    result = run_script("-m", "exercises", "check", "--time-limit", "forever")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith("error: --time-limit 'forever'") and len(result.stderr.splitlines()) == 1


# ----------------------------------------------------------------------------------------------
# The stubs state the contract, not the formula; so do the list and the check titles
FORMULA = re.compile(r"sin\(|cos\(|sqrt|softmax\(|\^|\*\*|norm\(x|exp\(|log\(| / length|Q K|QK|transpose|"
                     r"reshape|\.view|masked_fill|10000\^|tril|triu")


def _methods(cls):
    return {name: getattr(cls, name) for name in ("__init__", "forward", "split_heads", "merge_heads")
            if name in vars(cls)}


@pytest.mark.parametrize("name", list(EXERCISES))
def test_stub_has_the_lessons_signature_and_a_docstring_without_the_formula(name):
    stub, _ = load_attempt(name)
    lesson, _ = load_reference(name)
    if inspect.isclass(stub):
        for method_name, method in _methods(stub).items():
            assert inspect.signature(method) == inspect.signature(getattr(lesson, method_name)), method_name
    else:
        assert inspect.signature(stub) == inspect.signature(lesson)
    docs = [inspect.getdoc(stub)] + [inspect.getdoc(m) or "" for m in _methods(stub).values()] if inspect.isclass(
        stub) else [inspect.getdoc(stub)]
    for doc in docs:
        assert doc and not FORMULA.search(doc), f"{name}: {FORMULA.search(doc or '')} in\n{doc}"


def test_list_shows_no_formula_and_the_check_titles_none_either(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert all(f"exercises/{e.file}" in out for e in EXERCISES.values())
    assert not FORMULA.search(out), FORMULA.search(out)
    for name in EXERCISES:
        for c in checks_of(name):
            assert not FORMULA.search(c.title), f"{name}: {c.title}"


# ----------------------------------------------------------------------------------------------
# An attempt: the lesson's code in a stub (what a learner writes who remembers it exactly)
def _copy_into_stub(name, folder):
    """Write the stub with its body replaced by the lesson's code, the lesson's other names available."""
    exercise = EXERCISES[name]
    stub_text = (REPO_ROOT / "exercises" / exercise.file).read_text()
    lines = stub_text.splitlines(keepends=True)
    start = next(i for i, line in enumerate(lines)
                 if line.startswith((f"def {exercise.entry}(", f"class {exercise.entry}(")))
    while start > 0 and lines[start - 1].startswith("@"):
        start -= 1  # keep decorators with the definition
    lesson_source = inspect.getsource(getattr(load_lesson(exercise.lesson), exercise.entry))
    # the lesson's code may use other names of its lesson (lesson 03's BASE, lesson 05's PrefixCache)
    names = (f"from common import load_lesson as _load\n"
             f"globals().update({{k: v for k, v in vars(_load({exercise.lesson})).items()\n"
             f"                  if not k.startswith('_') and k != {exercise.entry!r}}})\n\n\n")
    (folder / exercise.file).write_text("".join(lines[:start]) + names + lesson_source)


def test_a_copy_of_the_lessons_code_in_the_stubs_scores_full_marks_and_points_to_compare(tmp_path, capsys):
    for name in EXERCISES:
        _copy_into_stub(name, tmp_path)
    assert main(["check", "--dir", str(tmp_path)]) == 0, capsys.readouterr().out
    out = capsys.readouterr().out
    assert f"{TOTAL}/{TOTAL}" in out and "uses the lesson's code" not in out
    for name in EXERCISES:  # a full pass ends by pointing to compare
        assert f"All checks pass. Compare yours with the lesson's: python -m exercises compare {name}" in out


def test_an_exception_in_the_learners_code_names_the_line_without_traceback(tmp_path, capsys):
    (tmp_path / "attention.py").write_text(
        "import torch\n"
        "\n"
        "def scaled_dot_product_attention(query, key, value, mask=None):\n"
        "    scores = query @ key.transpose(-2, -1) / math.sqrt(query.size(-1))\n"
        "    return torch.softmax(scores, -1) @ value, torch.softmax(scores, -1)\n")
    assert main(["check", "attention", "--dir", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "Traceback" not in out
    assert "NameError: name 'math' is not defined" in out
    assert f"at {tmp_path / 'attention.py'}:4, in scaled_dot_product_attention:" in out
    assert "scores = query @ key.transpose(-2, -1) / math.sqrt(query.size(-1))" in out
    assert "(the same error as in check 1)" in out
    assert "attention: 0/8 checks passed" in out


def test_a_file_that_cannot_be_imported_is_one_line(tmp_path, capsys):
    (tmp_path / "causal_mask.py").write_text("def causal_mask(T, device=None)\n    return None\n")
    assert main(["check", "causal_mask", "--dir", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if line.startswith("causal_mask: "))
    assert "SyntaxError at line 1" in line and "[0/4]" in line and "Traceback" not in out


def test_a_syntax_error_without_a_line_number_is_named_without_one(tmp_path, capsys):
    (tmp_path / "causal_mask.py").write_bytes(b"import torch\x00\n")             # a null byte: no line number
    assert main(["check", "causal_mask", "--dir", str(tmp_path)]) == 1
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("causal_mask: "))
    assert "SyntaxError: source code string cannot contain null bytes" in line and "None" not in line


# ----------------------------------------------------------------------------------------------
# Hints in three levels, and --exam without any
STRICT_TRIANGLE = ("import torch\n\ndef causal_mask(T, device=None):\n"
                   "    return torch.tril(torch.ones(T, T, dtype=torch.bool, device=device), diagonal=-1)\n")


@pytest.mark.parametrize("level", [1, 2, 3])
def test_a_hint_shows_the_level_asked_for_and_says_how_to_get_the_next(tmp_path, capsys, level):
    (tmp_path / "causal_mask.py").write_text(STRICT_TRIANGLE)
    assert main(["check", "causal_mask", "--dir", str(tmp_path), "--hint", str(level)]) == 1
    text = " ".join(capsys.readouterr().out.split())  # as one line: wrapping aside
    hint = next(c.hint for c in check("causal_mask", load_attempt("causal_mask", tmp_path)[0]).checks if not c.passed)
    assert hint.key == "diagonal missing"
    assert f"hint: {hint.look}" in text
    assert (f"why: {hint.concept}" in text) == (level >= 2)
    assert (f"code: {hint.code}" in text) == (level == 3)
    more = {1: "more (the idea behind the hint): python -m exercises check causal_mask --hint 2",
            2: "more (the line of code): python -m exercises check causal_mask --hint 3", 3: "more ("}[level]
    assert (more in text) == (level < 3)
    assert text.count("hint: ") == 2 and "hint: the same as in check 2" in text  # checks 2 and 3, said once


def test_exam_mode_shows_pass_or_fail_per_property_only(tmp_path, capsys):
    (tmp_path / "causal_mask.py").write_text(STRICT_TRIANGLE)
    assert main(["check", "causal_mask", "--dir", str(tmp_path), "--exam"]) == 1
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("  ")]
    checks = [line for line in lines if re.match(r"  (ok  |FAIL) +\d\. ", line)]
    assert [line.split()[0] for line in checks] == ["ok", "FAIL", "FAIL", "ok"]
    assert not [line for line in lines if line.startswith(" " * 11)]  # no line under a check
    assert not any(word in out for word in ("hint:", "expected", "largest difference", "tril", "diagonal"))
    assert "causal_mask: 2/4 checks passed" in out and "Exam mode" in out
    assert "python -m exercises check causal_mask --exam" in out


# ----------------------------------------------------------------------------------------------
# compare
def test_compare_prints_the_attempt_then_the_lessons_version_with_file_and_line(tmp_path, capsys):
    _copy_into_stub("attention", tmp_path)
    assert main(["compare", "attention", "--dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    lines, first = inspect.getsourcelines(L1.scaled_dot_product_attention)
    mine = (tmp_path / "attention.py").read_text().splitlines()
    my_first = next(i for i, line in enumerate(mine, 1) if line.startswith("def scaled_dot_product_attention"))
    assert f"Yours: {tmp_path / 'attention.py'}, lines {my_first}-{my_first + len(lines) - 1}" in out
    assert f"The lesson's: 01_attention_mechanism.py, lines {first}-{first + len(lines) - 1}" in out
    assert out.index("Yours:") < out.index("The lesson's:")
    assert f"{first} | def scaled_dot_product_attention(query, key, value, mask=None):" in out


def moved_causal_mask(T: int, device=None):
    """Stands in for lesson 01's causal_mask after it moved."""
    return torch.tril(torch.ones(T, T, dtype=torch.bool, device=device))


def test_compare_finds_the_lessons_function_where_it_is_now(tmp_path, capsys, monkeypatch):
    # compare asks inspect where the loaded object's code is, so it follows a function that moved
    (tmp_path / "causal_mask.py").write_text(STRICT_TRIANGLE)
    monkeypatch.setattr(L1, "causal_mask", moved_causal_mask)
    assert main(["compare", "causal_mask", "--dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    lines, first = inspect.getsourcelines(moved_causal_mask)
    assert f"The lesson's: tests/test_exercises.py, lines {first}-{first + len(lines) - 1}" in out
    assert "Stands in for lesson 01's causal_mask after it moved." in out


def test_compare_on_an_untouched_stub_says_so_in_one_line(capsys):
    assert main(["compare", "beam_search"]) == 1
    out = capsys.readouterr().out.strip()
    assert len(out.splitlines()) == 1 and "not attempted yet" in out and "def beam_search" not in out


@pytest.mark.parametrize("content, contains", [
    (None, "not found"),
    (b"def causal_mask(T, device=None)\n    return None\n", "SyntaxError at line 1"),
    (b"\xff\xfe not utf-8", "cannot read"),
    (b"import torch\n\ndef something_else():\n    pass\n", "defines no causal_mask"),
])
def test_compare_with_a_missing_or_damaged_attempt_is_one_line_exit_2(tmp_path, capsys, content, contains):
    if content is not None:
        (tmp_path / "causal_mask.py").write_bytes(content)
    assert main(["compare", "causal_mask", "--dir", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and contains in err, err
    assert captured.out == ""


# ----------------------------------------------------------------------------------------------
# Progress: best score, tries and dates, in a file git ignores
def test_progress_is_recorded_per_try_and_listed(tmp_path, capsys):
    (tmp_path / "causal_mask.py").write_text(STRICT_TRIANGLE)
    main(["check", "causal_mask", "--dir", str(tmp_path)])
    _copy_into_stub("causal_mask", tmp_path)
    main(["check", "causal_mask", "--dir", str(tmp_path)])
    (tmp_path / "causal_mask.py").write_text(STRICT_TRIANGLE)
    main(["check", "causal_mask", "--dir", str(tmp_path), "--exam"])
    main(["check", "attention", "--dir", str(tmp_path)])  # no attention.py there: cannot load, a try
    record = json.loads((tmp_path / ".progress.json").read_text())["exercises"]
    today = time.strftime("%Y-%m-%d")
    assert record["causal_mask"]["tries"] == 2 and record["causal_mask"]["best"] == 4
    assert record["causal_mask"]["total"] == 4 and record["causal_mask"]["best_date"] == today
    assert record["causal_mask"]["exam_tries"] == 1 and record["causal_mask"]["exam_best"] == 2
    assert record["attention"]["tries"] == 1 and record["attention"]["best"] == 0
    capsys.readouterr()
    assert main(["list", "--dir", str(tmp_path)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert f"best 4/4 on {today}, 2 tries (last {today})" in out and "not tried yet" in out
    assert main(["list", "--exam", "--dir", str(tmp_path)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert f"exam best 2/4 on {today}, 1 try" in out
    assert EXERCISES["causal_mask"].covers not in out  # exam mode: names and scores only


def test_the_reference_and_untouched_stubs_are_not_recorded(tmp_path, capsys):
    (tmp_path / "causal_mask.py").write_text((REPO_ROOT / "exercises" / "causal_mask.py").read_text())
    main(["check", "causal_mask", "--dir", str(tmp_path)])
    assert not (tmp_path / ".progress.json").exists()


def test_a_damaged_progress_file_is_set_aside_in_one_line_and_checking_goes_on(tmp_path, capsys):
    _copy_into_stub("causal_mask", tmp_path)
    (tmp_path / ".progress.json").write_text('{"exercises": {"causal_mask": {"tries": "three"')
    assert main(["check", "causal_mask", "--dir", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    notes = [line for line in captured.err.splitlines() if line.strip()]
    assert len(notes) == 1 and notes[0].startswith("note: ") and "damaged" in notes[0], captured.err
    assert "causal_mask: 4/4 checks passed" in captured.out
    assert (tmp_path / ".progress.json.damaged").read_text().startswith('{"exercises"')
    assert json.loads((tmp_path / ".progress.json").read_text())["exercises"]["causal_mask"]["tries"] == 1


def test_git_ignores_the_progress_file():
    for name in (".progress.json", ".progress.json.damaged"):
        result = subprocess.run(["git", "check-ignore", "-q", f"exercises/{name}"], cwd=REPO_ROOT)
        assert result.returncode == 0, name


# ----------------------------------------------------------------------------------------------
# Attempts that exit, crash, hang or print: graded in a child process, one clear line each
LIMIT = "0.5"  # --time-limit for the attempts that never return: the suite stays fast
HEADER = "import os, sys, time\n\ndef scaled_dot_product_attention(query, key, value, mask=None):\n"


def check_attempt(tmp_path, capsys, source, *flags):
    """Write attention.py with `source`, run `check attention` on it; returns (exit status, stdout)."""
    (tmp_path / "attention.py").write_text(source)
    status = main(["check", "attention", "--dir", str(tmp_path), "--time-limit", LIMIT, *flags])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err
    assert "Score" in captured.out and "attention   0/8" in captured.out  # the score is still printed
    return status, captured.out


def line_of(out, start):
    return next(line.strip() for line in out.splitlines() if line.strip().startswith(start))


@pytest.mark.parametrize("where", ["at import", "in the function"])
def test_an_attempt_calling_sys_exit_fails_with_its_line(tmp_path, capsys, where):
    source = "import sys\nsys.exit(0)\n" if where == "at import" else HEADER + "    sys.exit(0)\n"
    status, out = check_attempt(tmp_path, capsys, source)
    assert status == 1
    assert "your code called sys.exit(0)" in out
    if where == "at import":
        assert "cannot import" in line_of(out, "attention: ") and "attention.py:2" in out
    else:
        assert "FAIL  1." in out and f"at {tmp_path / 'attention.py'}:4, in scaled_dot_product_attention:" in out


@pytest.mark.parametrize("where", ["at import", "in the function"])
def test_an_attempt_calling_os_exit_fails_with_one_line(tmp_path, capsys, where):
    source = "import os\nos._exit(0)\n" if where == "at import" else HEADER + "    os._exit(0)\n"
    status, out = check_attempt(tmp_path, capsys, source)
    assert status == 1
    if where == "at import":
        assert "the process importing it exited with status 0" in line_of(out, "attention: ")
    else:
        assert line_of(out, "FAIL  1.").startswith("FAIL  1. shapes")
        assert "the process running your code exited with status 0" in out
        assert "FAIL  2-8. not run: check 1 did not finish" in out
    assert "exited with status 0" in line_of(out, "attention  ")  # the score table says it too


@pytest.mark.parametrize("raised", ["KeyboardInterrupt", "BaseException('give up')"])
def test_an_attempt_raising_a_base_exception_is_reported_as_that(tmp_path, capsys, raised):
    status, out = check_attempt(tmp_path, capsys, HEADER + f"    raise {raised}\n")
    assert status == 1
    name = raised.split("(")[0]
    assert f"your code raised {name}, which is not an Exception" in out
    assert "exited with status" not in out and "os._exit" not in out


@pytest.mark.parametrize("where", ["at import", "in the function"])
def test_an_endless_loop_is_stopped(tmp_path, capsys, where):
    source = "while True:\n    pass\n" if where == "at import" else HEADER + "    while True:\n        pass\n"
    status, out = check_attempt(tmp_path, capsys, source)
    assert status == 1
    assert f"still running after {LIMIT} s" in out  # the child's own time limit names the line
    assert f"{tmp_path / 'attention.py'}:" in out


@pytest.mark.parametrize("where", ["at import", "in the function"])
def test_an_endless_loop_that_catches_the_time_limit_is_stopped(tmp_path, capsys, where):
    loop = "while True:\n    try:\n        time.sleep(0.01)\n    except Exception:\n        pass\n"
    source = ("import time\n" + loop if where == "at import" else
              HEADER + "".join("    " + line + "\n" for line in loop.splitlines()))
    status, out = check_attempt(tmp_path, capsys, source, "--hint", "2")
    assert status == 1
    text = " ".join(out.split())  # as one line: wrapping aside
    assert "was stopped after" in text and f"still running (the limit is {LIMIT} s)" in text
    assert "stopped after" in line_of(out, "attention  ")
    if where == "in the function":
        assert "also catches the checker's time limit" in text


@pytest.mark.skipif(not hasattr(signal, "SIGSEGV") or sys.platform == "win32", reason="POSIX signals")
def test_a_crash_is_one_line(tmp_path, capsys):
    status, out = check_attempt(tmp_path, capsys, "import signal\n" + HEADER +
                                "    os.kill(os.getpid(), signal.SIGSEGV)\n")
    assert status == 1
    assert "the process running your code crashed (killed by SIGSEGV)" in out
    assert "crashed (SIGSEGV)" in line_of(out, "attention  ")
    assert f"File \"{tmp_path / 'attention.py'}\", line 5" in out  # where, from faulthandler


def test_what_the_attempt_prints_is_shown_under_it(tmp_path, capsys):
    source = HEADER + "    print('shape of query:', tuple(query.shape))\n    raise ValueError('not yet')\n"
    status, out = check_attempt(tmp_path, capsys, source)
    assert status == 1
    assert "  printed while checking:" in out  # one line per call: 8 of them
    assert "    | shape of query: (2, 3, 3, 4)" in out
    assert out.index("printed while checking") < out.index("attention: 0/8 checks passed")


def test_an_attempt_that_prints_without_end_is_stopped(tmp_path, capsys):
    status, out = check_attempt(tmp_path, capsys, "while True:\n    print('x' * 1000)\n")
    assert status == 1
    assert "was stopped: it printed more than 1 MB" in out
    assert "printed while checking (the first 10 of" in out


def test_the_next_exercise_is_graded_after_one_that_exits(tmp_path, capsys):
    (tmp_path / "attention.py").write_text(HEADER + "    os._exit(0)\n")
    _copy_into_stub("causal_mask", tmp_path)
    assert main(["check", "attention", "causal_mask", "--dir", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "causal_mask: 4/4 checks passed" in out and "exited with status 0" in out


def test_the_spawn_start_method_grades_the_same(tmp_path):
    # Windows has no fork: one spawned child grades the exercises in turn, a new one after an exit.
    (tmp_path / "attention.py").write_text(HEADER + "    os._exit(0)\n")
    _copy_into_stub("causal_mask", tmp_path)
    (tmp_path / "positional_encoding.py").write_text(
        "from common import load_lesson\n\nsinusoidal_positional_encoding = "
        "load_lesson(3).sinusoidal_positional_encoding\n")
    results = list(grade(["attention", "causal_mask", "positional_encoding"], folder=tmp_path, method="spawn"))
    assert [r.name for r in results] == ["attention", "causal_mask", "positional_encoding"]
    assert results[0].ended == "exited with status 0" and not results[0].ok
    assert results[1].ok and results[1].passed == 4
    assert results[2].state == "lesson's code" and results[2].passed == 0  # the sandbox holds there too


@pytest.mark.skipif(sys.platform == "win32", reason="sends SIGINT to a process group")
def test_ctrl_c_while_checking_is_one_line_and_exit_130(tmp_path):
    attempts, scratch = tmp_path / "attempts", tmp_path / "tmp"
    attempts.mkdir()
    scratch.mkdir()
    (attempts / "attention.py").write_text(
        HEADER + "    print('started', flush=True)\n    while True:\n        time.sleep(0.01)\n")
    process = subprocess.Popen([sys.executable, "-m", "exercises", "check", "attention", "--dir", str(attempts)],
                               cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True, env=dict(os.environ, OMP_NUM_THREADS="1", TMPDIR=str(scratch)))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None and not any(
            "started" in f.read_text() for f in scratch.glob("exercises-*/output-*.txt")):
        time.sleep(0.05)  # the attempt runs once its output (in the checker's scratch folder) says so
    assert process.poll() is None, "the checker ended before the attempt ran"
    os.killpg(process.pid, signal.SIGINT)  # as a terminal's Ctrl-C: to the checker and its child
    out, err = process.communicate(timeout=30)
    assert process.returncode == 130, out + err
    assert err.strip().startswith("interrupted (Ctrl-C)") and len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in out + err
    with pytest.raises(ProcessLookupError):  # nothing left running
        os.killpg(process.pid, 0)
    assert not list(scratch.iterdir())  # and the scratch folder is removed


# ----------------------------------------------------------------------------------------------
# Results of the wrong kind (complex, another dtype or device, numpy, NaN, ...) fail with the reason
def lesson_attention_then(change_output=None, change_weights=None):
    """Lesson 01's attention with its result changed: what a learner's code may return."""

    def scaled_dot_product_attention(query, key, value, mask=None):
        output, weights = L1.scaled_dot_product_attention(query, key, value, mask)
        return ((change_output or (lambda t: t))(output), (change_weights or (lambda t: t))(weights))

    return scaled_dot_product_attention


def pe_in(dtype):
    return lambda max_len, d_model: L3.sinusoidal_positional_encoding(max_len, d_model).to(dtype)


def pe_complex(max_len, d_model):  # sin and cos from a complex exponential, the complex part kept
    pe = L3.sinusoidal_positional_encoding(max_len, d_model)
    return torch.complex(pe, torch.zeros_like(pe))


def beam_search_returning(change):
    return lambda model, src, *args, **kwargs: change(*L5.beam_search(model, src, *args, **kwargs))


WRONG_KIND = [
    ("attention", lesson_attention_then(change_output=lambda t: t.to(torch.complex64)), "complex values"),
    ("attention", lesson_attention_then(lambda t: t.to(torch.complex64), lambda t: t.to(torch.complex64)),
     "complex values"),
    ("attention", lesson_attention_then(change_output=lambda t: t.double()),
     "dtype torch.float64, expected torch.float32"),
    ("attention", lesson_attention_then(change_weights=lambda t: t.half()), "torch.float16 holds fewer digits"),
    ("attention", lesson_attention_then(change_output=lambda t: t.round().long()), "Integer values"),
    ("attention", lesson_attention_then(change_output=lambda t: t.numpy()), "got a numpy array of shape"),
    ("attention", lesson_attention_then(change_output=lambda t: t.to("meta")), "on device meta"),
    ("attention", lesson_attention_then(change_weights=lambda t: t * float("nan")), "NaN at index"),
    ("attention", lambda *args: (*L1.scaled_dot_product_attention(*args), None), "got a tuple of 3"),
    ("causal_mask", lambda T, device=None: L1.causal_mask(T).to("meta"), "on device meta"),
    ("positional_encoding", pe_in(torch.float16), "torch.float16 holds fewer digits"),
    ("positional_encoding", pe_complex, "complex values"),
    ("multi_head_attention", type("ComplexOutput", (L2.MultiHeadAttention,), {
        "forward": lambda self, *a, **k: (lambda o, w: (o.to(torch.complex64), w))(
            *L2.MultiHeadAttention.forward(self, *a, **k))}), "complex values"),
    ("encoder_block", type("Float64Block", (L4.TransformerEncoderBlock,), {
        "forward": lambda self, x, mask=None, return_weights=False: L4.TransformerEncoderBlock.forward(
            self, x, mask).double()}), "dtype torch.float64, expected torch.float32"),
    ("beam_search", beam_search_returning(lambda tokens, scores: (tokens.float(), scores)), "integer token ids"),
    ("beam_search", beam_search_returning(lambda tokens, scores: (tokens, scores.to(torch.complex64))),
     "complex values"),
    ("beam_search", beam_search_returning(lambda tokens, scores: (tokens.to("meta"), scores)), "on device meta"),
]


@pytest.mark.parametrize("name, implementation, reason", WRONG_KIND, ids=[
    f"{name}-{reason.split(',')[0]}" for name, _, reason in WRONG_KIND])
def test_a_result_of_the_wrong_kind_fails_with_an_accurate_reason(name, implementation, reason):
    result = check(name, implementation)
    assert result.state == "checked"
    assert result.passed < result.total, f"{name}: a result with {reason!r} passed every check"
    text = failure_text(result)
    assert reason in text, text
    assert "in the checker" not in text and "mask polarity" not in text, text  # no crash, no wrong hint


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_result_on_another_device_fails_with_the_reason():
    result = check("attention", lesson_attention_then(change_output=lambda t: t.cuda()))
    assert "on device cuda:0; expected cpu" in failure_text(result)
    result = check("causal_mask", lambda T, device=None: L1.causal_mask(T, device="cuda"))
    assert "on device cuda:0; expected cpu" in failure_text(result)
    assert check("causal_mask", L1.causal_mask).passed == 4  # and a mask made on cuda when asked is right


# ----------------------------------------------------------------------------------------------
# The beam-search stand-in, and lesson 05's own beam search with its cache
def _small_real_model():
    torch.manual_seed(0)
    return L5.Seq2SeqTransformer(n_digits=3, d_model=16, n_heads=2, n_layers=2, d_ff=32).eval()


@pytest.mark.parametrize("kind", ["stand-in", "Seq2SeqTransformer"])
def test_the_stand_in_has_the_real_models_decoding_interface(kind):
    # What the exercise's beam search calls, used the same way on both.
    model = stand_in_model.TableModel(n_digits=3) if kind == "stand-in" else _small_real_model()
    for name in ("encode", "decode", "vocab_size", "eval", "train", "training"):
        assert hasattr(model, name), name
    src = torch.tensor([[3, 4, 5, 3], [5, 5, 4, 3]])
    memory, src_mask = model.encode(src)
    ys = torch.tensor([[L5.BOS, 3, 4], [L5.BOS, 4, 4]])
    with torch.no_grad():
        logits = model.decode(ys, memory, src_mask)
        assert logits.shape == (2, 3, model.vocab_size)
        torch.testing.assert_close(model.decode(ys[:, :2], memory, src_mask)[:, -1], logits[:, 1])  # causal


def lesson_beam_search_changed(**changes):
    """Lesson 05's beam_search with lines of its source changed (old line -> new, "" leaves it out).

    Built at its first call, so a change to lesson 05's beam_search fails only the tests that use it.
    """

    @functools.lru_cache(maxsize=1)
    def build():
        lines = inspect.getsource(L5.beam_search).splitlines(keepends=True)
        code = [text.split("#")[0].strip() for text in lines]
        for old, new in changes.values():
            assert code.count(old) == 1, f"lesson 05's beam_search has no line {old!r}"
            i = code.index(old)
            indent = lines[i][: len(lines[i]) - len(lines[i].lstrip())]
            lines[i] = indent + new + "\n" if new else ""
        namespace = dict(vars(L5))
        exec(compile("".join(lines), "<lesson 05 beam_search, changed>", "exec"), namespace)
        return namespace["beam_search"]

    def beam_search(model, src, beam_size, max_len, length_penalty=0.0, cache=False):
        return build()(model, src, beam_size, max_len, length_penalty, cache)

    return beam_search


def test_lesson_05s_beam_search_with_its_cache_equals_the_plain_one_and_needs_the_reordering():
    # On a real model: the PrefixCache gives the same answers and scores; a cache whose rows are not
    # reordered with the hypotheses scores them with other hypotheses' history.
    model = _small_real_model()
    not_reordered = lesson_beam_search_changed(reorder=("prefix.keep(rows)", "pass"))
    with torch.no_grad():
        model.out.bias[L5.EOS] -= 3.0  # untrained, it would end most answers at once: no beams to reorder
        src = torch.randint(L5.FIRST_DIGIT, model.vocab_size, (6, 4), generator=torch.Generator().manual_seed(1))
        tokens, scores = L5.beam_search(model, src, 3, 5)
        cached_tokens, cached_scores = L5.beam_search(model, src, 3, 5, cache=True)
        plain_tokens, plain_scores = simple_beam_search(model, src, 3, 5)
        _, wrong_scores = not_reordered(model, src, 3, 5, cache=True)
    assert torch.equal(plain_tokens, tokens[:, :plain_tokens.size(1)])
    torch.testing.assert_close(plain_scores, scores)
    assert torch.equal(cached_tokens, tokens)
    torch.testing.assert_close(cached_scores, scores)
    assert not torch.allclose(wrong_scores, scores)


# ----------------------------------------------------------------------------------------------
# The checker's own references: the written-out versions it names mistakes with are right
def test_written_out_references_equal_pytorch():
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 4, 8), torch.randn(2, 6, 8), torch.randn(2, 6, 3)
    mask = random_mask(2, 4, 6)
    torch.testing.assert_close(attention.attention_variant(q, k, v, mask)[0],
                               F.scaled_dot_product_attention(q, k, v, attn_mask=mask))

    mha = L2.MultiHeadAttention(16, 4).eval()
    ref = multi_head_attention.torch_mha(16, 4)
    W = multi_head_attention.copy_attention(mha, ref)
    x, memory = torch.randn(2, 3, 16), torch.randn(2, 5, 16)
    pad = multi_head_attention.padding_mask(2, 3, 5)
    with torch.no_grad():
        torch.testing.assert_close(multi_head_attention.mha_variant(x, memory, memory, W, 4, pad)[0],
                                   multi_head_attention.reference_mha(ref, x, memory, memory, pad, 4)[0])

    for norm_first in (False, True):
        block, layer, P = encoder_block.make_block(L4.TransformerEncoderBlock, norm_first)
        x, causal = torch.randn(2, 5, 16), multi_head_attention.causal_mask(2, 5, 5)
        with torch.no_grad():
            torch.testing.assert_close(encoder_block.block_variant(x, P, 4, causal, norm_first),
                                       encoder_block.reference_block(layer, x, causal))

    for max_len, d_model in ((40, 12), (7, 5)):
        torch.testing.assert_close(positional_encoding.pe_variant(max_len, d_model).float(),
                                   L3.sinusoidal_positional_encoding(max_len, d_model), atol=1e-5, rtol=1e-4)


def test_beam_search_checks_use_a_real_trap_and_a_complete_search():
    trap = beam_search.greedy_trap()
    src = torch.tensor([[3, 4, 3]])
    best, _ = stand_in_model.exhaustive_best(trap, src[0], 3)
    assert stand_in_model.greedy(trap, src[0], 3) != best  # greedy really is wrong there
    model = stand_in_model.TableModel(n_digits=2)
    answers = stand_in_model.all_answers(model, 3)
    # 1 + 2 + 4 answers ending in EOS (0, 1, 2 digits) and 8 unfinished ones of 3 digits
    assert len(answers) == 15 == len({tuple(a) for a in answers})


def test_the_dropout_checks_interval_is_the_binomial_one():
    from exercises.checks.helpers import binomial_interval

    low, high = binomial_interval(0.25, 4096)
    assert math.isclose(high - 0.25, 4.5 * math.sqrt(0.25 * 0.75 / 4096))
    draws = (torch.rand(2000, 4096, generator=torch.Generator().manual_seed(0)) < 0.25).float().mean(1)
    assert bool(((draws >= low) & (draws <= high)).all())  # correct dropout stays inside, 2000 times of 2000
