"""The exercise checker (`python -m exercises`) is itself checked here.

The lessons' own code scores full marks; the untouched stubs are reported as not attempted, in one
line each; deliberately broken implementations (the mistakes learners make) fail, with the hint that
names the mistake; usage mistakes exit with status 2 and one line.
"""
import functools
import inspect
import math
import os
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

L1, L2, L3, L4, L5 = (load_lesson(n) for n in range(1, 6))
TOTAL = sum(len(checks_of(name)) for name in EXERCISES)


def failure_text(result):
    """Every failed check's title and lines, for assertion messages and hint searches."""
    return "\n".join(f"{c.title}: " + " | ".join(c.lines) for c in result.checks if not c.passed)


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
    ([], "list"),
])
def test_usage_mistakes_are_one_line_exit_2(capsys, argv, contains):
    assert main(argv) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    assert contains in err and captured.out == ""
    if argv[:2] == ["check", "atention"]:
        assert all(name in err for name in EXERCISES)  # lists the valid names


def test_a_usage_mistake_in_a_real_process_is_one_line_exit_2():
    result = run_script("-m", "exercises", "check", "--time-limit", "forever")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith("error: --time-limit 'forever'") and len(result.stderr.splitlines()) == 1


def test_list(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert all(f"exercises/{e.file}" in out for e in EXERCISES.values())


# ----------------------------------------------------------------------------------------------
# The stubs: same signature and docstring as the lesson's version
def _methods(cls):
    return {name: getattr(cls, name) for name in ("__init__", "forward", "split_heads", "merge_heads")
            if name in vars(cls)}


@pytest.mark.parametrize("name", list(EXERCISES))
def test_stub_has_the_lessons_signature_and_docstring(name):
    stub, _ = load_attempt(name)
    lesson, _ = load_reference(name)
    assert inspect.getdoc(stub) == inspect.getdoc(lesson)
    if inspect.isclass(stub):
        for method_name, method in _methods(stub).items():
            assert inspect.signature(method) == inspect.signature(getattr(lesson, method_name)), method_name
    else:
        assert inspect.signature(stub) == inspect.signature(lesson)


def _copy_into_stub(name, folder):
    """Write the stub with its body replaced by the lesson's code (what a learner would write)."""
    exercise = EXERCISES[name]
    stub_text = (REPO_ROOT / "exercises" / exercise.file).read_text()
    lines = stub_text.splitlines(keepends=True)
    start = next(i for i, line in enumerate(lines)
                 if line.startswith((f"def {exercise.entry}(", f"class {exercise.entry}(")))
    while start > 0 and lines[start - 1].startswith("@"):
        start -= 1  # keep decorators with the definition
    lesson_source = inspect.getsource(getattr(load_lesson(exercise.lesson), exercise.entry))
    # the lesson's function may use other names of its lesson (lesson 03's BASE, pair_frequencies)
    names = (f"from common import load_lesson as _load\n"
             f"globals().update({{k: v for k, v in vars(_load({exercise.lesson})).items()\n"
             f"                  if not k.startswith('_') and k not in globals()}})\n\n\n")
    (folder / exercise.file).write_text("".join(lines[:start]) + names + lesson_source)


def test_a_copy_of_the_lessons_code_in_the_stubs_scores_full_marks(tmp_path, capsys):
    for name in EXERCISES:
        _copy_into_stub(name, tmp_path)
    assert main(["check", "--dir", str(tmp_path)]) == 0, capsys.readouterr().out
    assert f"{TOTAL}/{TOTAL}" in capsys.readouterr().out


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
    assert "attention: 0/8 checks passed" in out


def test_a_file_that_cannot_be_imported_is_one_line(tmp_path, capsys):
    (tmp_path / "causal_mask.py").write_text("def causal_mask(T, device=None)\n    return None\n")
    assert main(["check", "causal_mask", "--dir", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if line.startswith("causal_mask: "))
    assert "SyntaxError at line 1" in line and "[0/4]" in line and "Traceback" not in out


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
    status, out = check_attempt(tmp_path, capsys, source)
    assert status == 1
    text = " ".join(out.split())  # as one line: wrapping aside
    assert "was stopped after" in text and f"still running (the limit is {LIMIT} s)" in text
    assert "also catches the checker's time limit" in text
    assert "stopped after" in line_of(out, "attention  ")


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
    results = list(grade(["attention", "causal_mask"], folder=tmp_path, method="spawn"))
    assert [r.name for r in results] == ["attention", "causal_mask"]
    assert results[0].ended == "exited with status 0" and not results[0].ok
    assert results[1].ok and results[1].passed == 4


@pytest.mark.skipif(sys.platform == "win32", reason="sends SIGINT to a process group")
def test_ctrl_c_while_checking_is_one_line_and_exit_130(tmp_path):
    started = tmp_path / "started"
    (tmp_path / "attention.py").write_text(
        HEADER + f"    open({str(started)!r}, 'w').close()\n    while True:\n        time.sleep(0.01)\n")
    process = subprocess.Popen([sys.executable, "-m", "exercises", "check", "attention", "--dir", str(tmp_path)],
                               cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    deadline = time.monotonic() + 60
    while not started.exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    assert started.exists(), "the attempt never ran"
    os.killpg(process.pid, signal.SIGINT)  # as a terminal's Ctrl-C: to the checker and its child
    out, err = process.communicate(timeout=30)
    assert process.returncode == 130, out + err
    assert err.strip().startswith("interrupted (Ctrl-C)") and len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in out + err
    with pytest.raises(ProcessLookupError):  # nothing left running
        os.killpg(process.pid, 0)


# ----------------------------------------------------------------------------------------------
# Broken implementations are caught, with the hint that names the mistake
def make_attention(divide_by="sqrt_d_k", mask_use="as_given", zero_blocked=True):
    def scaled_dot_product_attention(query, key, value, mask=None):
        d_k = query.size(-1)
        scores = query @ key.transpose(-2, -1) / {"sqrt_d_k": math.sqrt(d_k), "d_k": d_k, "1": 1.0}[divide_by]
        if mask is not None:
            mask = {"as_given": mask, "inverted": ~mask, "transposed": mask.transpose(-2, -1)}[mask_use]
            scores = scores.masked_fill(~mask, float("-inf"))
        weights = torch.softmax(scores, dim=-1)
        if mask is not None and zero_blocked:
            weights = weights.masked_fill(~mask, 0.0)
        return weights @ value, weights

    return scaled_dot_product_attention


class MergeWithoutTranspose(L2.MultiHeadAttention):
    def merge_heads(self, x):
        B, _, T, _ = x.shape
        return x.reshape(B, T, self.d_model)  # the bug: no transpose(1, 2) first


class SplitWithoutTranspose(L2.MultiHeadAttention):
    def split_heads(self, x):
        B, T, _ = x.shape
        return x.reshape(B, self.n_heads, T, self.d_head)  # the bug: no view(B, T, n_heads, d_head).transpose


class ScaledByDModel(L2.MultiHeadAttention):
    def forward(self, query, key, value, mask=None, need_weights=True):
        q, k, v = self.split_heads(self.W_q(query)), self.split_heads(self.W_k(key)), self.split_heads(self.W_v(value))
        if mask is not None and mask.dim() == 3:
            mask = mask.unsqueeze(1)
        scores = q @ k.transpose(-2, -1) / math.sqrt(self.d_model)  # the bug: d_model, not d_head
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        weights = torch.softmax(scores, dim=-1)
        if mask is not None:
            weights = weights.masked_fill(~mask, 0.0)
        return self.W_o(self.merge_heads(weights @ v)), weights


class InvertedMaskAttention(L2.MultiHeadAttention):
    def forward(self, query, key, value, mask=None, need_weights=True):
        return super().forward(query, key, value, None if mask is None else ~mask, need_weights)


def pe_sin_cos_swapped(max_len, d_model):
    pe = L3.sinusoidal_positional_encoding(max_len, d_model)
    swapped = torch.empty_like(pe)
    swapped[:, 0::2], swapped[:, 1::2] = pe[:, 1::2], pe[:, 0::2]
    return swapped


def pe_concatenated_halves(max_len, d_model):
    pe = L3.sinusoidal_positional_encoding(max_len, d_model)
    return torch.cat([pe[:, 0::2], pe[:, 1::2]], dim=1)


class NoAttentionResidual(L4.TransformerEncoderBlock):
    def forward(self, x, mask=None, return_weights=False):
        if self.norm_first:
            x = self._attend(self.norm1(x), mask, False)[0]  # the bug: x = attention(...), not x + ...
            return x + self.feed_forward(self.norm2(x))
        x = self.norm1(self._attend(x, mask, False)[0])
        return self.norm2(x + self.feed_forward(x))


class AlwaysPreLN(L4.TransformerEncoderBlock):
    def forward(self, x, mask=None, return_weights=False):  # the bug: ignores norm_first
        x = x + self._attend(self.norm1(x), mask, False)[0]
        return x + self.feed_forward(self.norm2(x))


class NormOnSublayerOutput(L4.TransformerEncoderBlock):
    def forward(self, x, mask=None, return_weights=False):  # the bug: x + norm(sublayer(x))
        x = x + self.norm1(self._attend(x, mask, False)[0])
        return x + self.norm2(self.feed_forward(x))


def simple_beam_search(model, src, beam_size, max_len, length_penalty=0.0, *, width=None, stop_at_eos=True,
                       renormalize=False):
    """A plain, one-example-at-a-time beam search (correct with the defaults), to break on purpose."""
    rows, best_scores = [], []
    for b in range(src.size(0)):
        memory, src_mask = model.encode(src[b:b + 1])
        beams = [([], 0.0, False)]  # (tokens, summed log-probability, finished)
        for _ in range(max_len):
            candidates = []
            for tokens, score, done in beams:
                if done and stop_at_eos:
                    candidates.append((tokens, score, True))
                    continue
                logits = model.decode(torch.tensor([[L5.BOS] + tokens]), memory, src_mask)[0, -1]
                log_probs = (F.log_softmax(L5.restrict_logits(logits), -1) if renormalize
                             else L5.restrict_logits(F.log_softmax(logits, -1)))
                for token in range(model.vocab_size):
                    if log_probs[token] > float("-inf"):
                        candidates.append((tokens + [token], score + float(log_probs[token]),
                                           done or token == L5.EOS))
            beams = sorted(candidates, key=lambda c: -c[1])[: width or beam_size]
            if all(done for _, _, done in beams):
                break
        rank = (lambda c: c[1] / max(len(c[0]), 1) ** length_penalty) if length_penalty else (lambda c: c[1])
        tokens, score, _ = max(beams, key=rank)
        rows.append(tokens)
        best_scores.append(score)
    out = torch.full((len(rows), max(len(r) for r in rows)), L5.PAD)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(row)
    return out, torch.tensor(best_scores)


def beam_search_that_is_greedy(model, src, beam_size, max_len, length_penalty=0.0):
    return simple_beam_search(model, src, beam_size, max_len, length_penalty, width=1)


def beam_search_without_stop_at_eos(model, src, beam_size, max_len, length_penalty=0.0):
    return simple_beam_search(model, src, beam_size, max_len, length_penalty, stop_at_eos=False)


def beam_search_renormalized(model, src, beam_size, max_len, length_penalty=0.0):
    return simple_beam_search(model, src, beam_size, max_len, length_penalty, renormalize=True)


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


beam_search_cache_not_reordered = lesson_beam_search_changed(
    reorder=("prefix.keep(rows)", "pass"))
beam_search_memory_not_repeated = lesson_beam_search_changed(
    repeat=("memory = memory.repeat_interleave(K, dim=0)", ""))


def causal_mask_triu(T, device=None):
    return torch.triu(torch.ones(T, T, dtype=torch.bool, device=device))


def causal_mask_float(T, device=None):
    return torch.tril(torch.ones(T, T, device=device))


def causal_mask_ignoring_device(T, device=None):
    return torch.tril(torch.ones(T, T, dtype=torch.bool))


BROKEN = [
    ("attention", make_attention(divide_by="d_k"), "divided by d_k itself"),
    ("attention", make_attention(divide_by="1"), "not divided by sqrt(d_k)"),
    ("attention", make_attention(mask_use="inverted"), "wrong way round"),
    ("attention", make_attention(mask_use="transposed"), "mask is transposed"),
    ("attention", make_attention(zero_blocked=False), "0/0 = NaN"),
    ("causal_mask", causal_mask_triu, "torch.tril"),
    ("causal_mask", causal_mask_float, "dtype=torch.bool"),
    ("causal_mask", causal_mask_ignoring_device, "device=device"),
    ("multi_head_attention", MergeWithoutTranspose, "merged with a reshape/view but no transpose"),
    ("multi_head_attention", SplitWithoutTranspose, "split with a view straight to"),
    ("multi_head_attention", ScaledByDModel, "divided by sqrt(d_model)"),
    ("multi_head_attention", InvertedMaskAttention, "wrong way round"),
    ("positional_encoding", pe_sin_cos_swapped, "sines and cosines are swapped"),
    ("positional_encoding", pe_concatenated_halves, "concatenated halves"),
    ("encoder_block", NoAttentionResidual, "attention sublayer has no residual"),
    ("encoder_block", AlwaysPreLN, "with norm_first=False your block computes pre-LN"),
    ("encoder_block", NormOnSublayerOutput, "LayerNorm is in the wrong place"),
    ("beam_search", beam_search_that_is_greedy, "greedy"),
    ("beam_search", beam_search_without_stop_at_eos, "after the answer ended"),
    ("beam_search", beam_search_renormalized, "renormalised"),
    ("beam_search", beam_search_memory_not_repeated, "memory.repeat_interleave(beam_size, dim=0)"),
]


@pytest.mark.parametrize("name, implementation, hint", BROKEN, ids=[
    f"{name}-{getattr(impl, '__name__', '')}-{hint.split()[0]}" for name, impl, hint in BROKEN])
def test_broken_implementation_is_caught_with_its_hint(name, implementation, hint):
    result = check(name, implementation)
    assert result.state == "checked"
    assert result.passed < result.total, f"{name}: a broken implementation passed every check"
    text = failure_text(result)
    assert hint in text, text
    assert "Traceback" not in text


# ----------------------------------------------------------------------------------------------
# Results of the wrong kind (complex, another dtype or device, numpy, NaN, ...) fail with the reason
def lesson_attention_then(change_output=None, change_weights=None):
    """Lesson 01's attention with its result changed: what a learner's code may return."""

    def scaled_dot_product_attention(query, key, value, mask=None):
        output, weights = L1.scaled_dot_product_attention(query, key, value, mask)
        return ((change_output or (lambda t: t))(output), (change_weights or (lambda t: t))(weights))

    return scaled_dot_product_attention


def attention_scaling_query_in_place(query, key, value, mask=None):
    query /= math.sqrt(query.size(-1))  # the bug: changes the caller's tensor
    return L1.scaled_dot_product_attention(query * math.sqrt(query.size(-1)), key, value, mask)


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
    ("attention", lesson_attention_then(change_output=lambda t: t.round().long()), "integer values"),
    ("attention", lesson_attention_then(change_output=lambda t: t.numpy()), "got a numpy array of shape"),
    ("attention", lesson_attention_then(change_output=lambda t: t.to("meta")), "on device meta"),
    ("attention", lesson_attention_then(change_weights=lambda t: t * float("nan")), "NaN at index"),
    ("attention", lambda *args: (*L1.scaled_dot_product_attention(*args), None), "got a tuple of 3"),
    ("attention", attention_scaling_query_in_place, "changed its argument query in place"),
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
    assert "in the checker" not in text and "wrong way round" not in text, text  # no crash, no wrong hint


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_result_on_another_device_fails_with_the_reason():
    result = check("attention", lesson_attention_then(change_output=lambda t: t.cuda()))
    assert "on device cuda:0; expected cpu" in failure_text(result)
    result = check("causal_mask", lambda T, device=None: L1.causal_mask(T, device="cuda"))
    assert "on device cuda:0; expected cpu" in failure_text(result)
    assert check("causal_mask", L1.causal_mask).passed == 4  # and a mask made on cuda when asked is right


def test_a_correct_beam_search_written_another_way_passes():
    # The checker grades behaviour, not the lesson's style: a loop over examples that calls decode on
    # the whole prefix passes.
    result = check("beam_search", simple_beam_search)
    assert result.passed == result.total, failure_text(result)


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
        torch.testing.assert_close(L5.next_token_logits(model, ys, memory, src_mask), logits[:, -1])


def test_lesson_05s_beam_search_with_its_cache_equals_the_plain_one_and_needs_the_reordering():
    # On a real model: the PrefixCache gives the same answers and scores; a cache whose rows are not
    # reordered with the hypotheses scores them with other hypotheses' history.
    model = _small_real_model()
    with torch.no_grad():
        model.out.bias[L5.EOS] -= 3.0  # untrained, it would end most answers at once: no beams to reorder
        src = torch.randint(L5.FIRST_DIGIT, model.vocab_size, (6, 4), generator=torch.Generator().manual_seed(1))
        tokens, scores = L5.beam_search(model, src, 3, 5)
        cached_tokens, cached_scores = L5.beam_search(model, src, 3, 5, cache=True)
        plain_tokens, plain_scores = simple_beam_search(model, src, 3, 5)
        _, wrong_scores = beam_search_cache_not_reordered(model, src, 3, 5, cache=True)
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
    ref = torch.nn.MultiheadAttention(16, 4, batch_first=True).eval()
    multi_head_attention.randomize(ref)
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

    torch.testing.assert_close(positional_encoding.pe_variant(40, 12).float(),
                               L3.sinusoidal_positional_encoding(40, 12),
                               atol=1e-5, rtol=1e-4)


def test_beam_search_checks_use_a_real_trap_and_a_complete_search():
    trap = beam_search.greedy_trap()
    src = torch.tensor([[3, 4, 3]])
    best, _ = stand_in_model.exhaustive_best(trap, src[0], 3)
    assert stand_in_model.greedy(trap, src[0], 3) != best  # greedy really is wrong there
    model = stand_in_model.TableModel(n_digits=2)
    answers = stand_in_model.all_answers(model, 3)
    # 1 + 2 + 4 answers ending in EOS (0, 1, 2 digits) and 8 unfinished ones of 3 digits
    assert len(answers) == 15 == len({tuple(a) for a in answers})


def test_a_syntax_error_without_a_line_number_is_named_without_one(tmp_path, capsys):
    (tmp_path / "causal_mask.py").write_bytes(b"import torch\x00\n")             # a null byte: no line number
    assert main(["check", "causal_mask", "--dir", str(tmp_path)]) == 1
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("causal_mask: "))
    assert "SyntaxError: source code string cannot contain null bytes" in line and "None" not in line
