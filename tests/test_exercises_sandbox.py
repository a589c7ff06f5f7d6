"""An attempt cannot change its own grade: each way out of the exercise checker's sandbox, tried.

Each test writes an attempt that tries one escape, grades it the way a learner does
(`python -m exercises check NAME --dir FOLDER`, a child process per exercise), and asserts that it
does not pass and that the checker says what happened: replacing the checker's functions inside
the child, handing in the lesson's own version (by name, through importlib, through a subclass),
writing the checker's files or any file outside the scratch folder, starting processes that would
outlive the check, signalling the checker, forging the result channel or the printed report.
"""
import os
import sys
import textwrap
import uuid

import pytest

from conftest import REPO_ROOT
from exercises._cli import main

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX processes and paths")

CAUSAL_HEADER = "import os, sys, torch\n\n"
WRONG_CAUSAL = ("def causal_mask(T, device=None):\n"
                "    return torch.triu(torch.ones(T, T, dtype=torch.bool, device=device))  # wrong: the future\n")
RIGHT_CAUSAL = ("def causal_mask(T, device=None):\n"
                "    return torch.tril(torch.ones(T, T, dtype=torch.bool, device=device))\n")


def grade(tmp_path, capsys, name, source, printed_traceback=False):
    """Write exercise `name` with `source` into tmp_path, check it; returns (exit status, stdout, its score line).

    printed_traceback: the attempt breaks its own process, whose traceback is shown as printed by it.
    """
    file = {"causal_mask": "causal_mask.py", "multi_head_attention": "multi_head_attention.py",
            "attention": "attention.py"}[name]
    (tmp_path / file).write_text(source)
    status = main(["check", name, "--dir", str(tmp_path), "--time-limit", "5"])
    out = capsys.readouterr().out
    assert "Traceback" not in out.replace("    | Traceback", "") if printed_traceback else out
    score = next(line.split() for line in out.splitlines() if line.startswith(f"  {name} "))
    return status, out, score


# ----------------------------------------------------------------------------------------------
# The checker's functions replaced from inside the child
REPLACE_THE_CHECKER = CAUSAL_HEADER + """\
import exercises._checker as checker
import exercises.checks.causal_mask as checks
import exercises.checks.helpers as helpers

helpers.compare = helpers.expect = helpers.expect_shape = helpers.expect_kind = lambda *a, **k: None
checks.CHECKS[:] = [c._replace(run=lambda fn: None) for c in checks.CHECKS]
checker._run_check = lambda check_, *a, **k: checker.CheckResult(check_.title, True)
""" + WRONG_CAUSAL


def test_replacing_the_checkers_functions_from_inside_the_attempt_does_not_pass(tmp_path, capsys):
    status, out, score = grade(tmp_path, capsys, "causal_mask", REPLACE_THE_CHECKER)
    assert status == 1 and score[1] == "0/4", out
    assert out.count("passed in the process that ran your code, but not when the checker checked") == 4
    assert "look for code that changes the checker" in " ".join(out.split())


CHANGE_THE_MODEL = """\
import torch
from common import load_lesson

EOS = load_lesson(5).EOS


def beam_search(model, src, beam_size, max_len, length_penalty=0.0):
    # the checker's model is handed in: make every answer 'EOS' the best one, then return it
    model.table = {}
    model._table_cache.clear()
    model._logits = lambda source, prefix: torch.tensor([-50.0] * EOS + [0.0] + [-50.0] * (model.vocab_size - EOS - 1))
    tokens = torch.full((src.size(0), 1), EOS)
    return tokens, torch.zeros(src.size(0))
"""


def test_changing_the_model_the_checker_hands_over_does_not_pass(tmp_path, capsys):
    (tmp_path / "beam_search.py").write_text(CHANGE_THE_MODEL)
    assert main(["check", "beam_search", "--dir", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    score = next(line.split() for line in out.splitlines() if line.startswith("  beam_search "))
    assert score[1] != "7/7", out
    assert "passed in the process that ran your code, but not when the checker checked" in out


# ----------------------------------------------------------------------------------------------
# The lesson's own version handed in
@pytest.mark.parametrize("how, source", [
    ("by name", "from common import load_lesson\n\ncausal_mask = load_lesson(1).causal_mask\n"),
    ("wrapped", "from common import load_lesson\n\n\ndef causal_mask(T, device=None):\n"
                "    return load_lesson(1).causal_mask(T, device)\n"),
    ("importlib", "import importlib.util\nfrom common.lessons import lesson_path\n\n"
                  "spec = importlib.util.spec_from_file_location('copy_of_lesson_01', lesson_path(1))\n"
                  "lesson = importlib.util.module_from_spec(spec)\nspec.loader.exec_module(lesson)\n"
                  "causal_mask = lesson.causal_mask\n"),
    ("read and exec", "from common.lessons import lesson_path\n\nexec(lesson_path(1).read_text())\n"),
], ids=["by name", "wrapped", "importlib", "read and exec"])
def test_handing_in_the_lessons_own_version_is_graded_as_using_it(tmp_path, capsys, how, source):
    status, out, score = grade(tmp_path, capsys, "causal_mask", source)
    assert status == 1 and score[1] == "0/4" and "uses the lesson's code" in " ".join(score), out
    line = next(line for line in out.splitlines() if line.startswith("causal_mask: "))
    assert "uses the lesson's code: your causal_mask hands in lesson 01's own" in line


def test_a_subclass_that_keeps_the_lessons_forward_is_graded_as_using_it(tmp_path, capsys):
    source = ("from common import load_lesson\n\n\nclass MultiHeadAttention(load_lesson(2).MultiHeadAttention):\n"
              "    pass\n")
    status, out, score = grade(tmp_path, capsys, "multi_head_attention", source)
    assert status == 1 and "uses the lesson's code" in " ".join(score), out
    assert "MultiHeadAttention.forward of 02_multi_head_attention.py ran" in out


def test_building_on_another_lessons_component_is_allowed(tmp_path, capsys):
    # the multi-head attention stub's own way: lesson 01's attention inside, everything else written
    stub = (REPO_ROOT / "exercises" / "multi_head_attention.py").read_text()
    body = stub[:stub.index("    def split_heads")] + '''\
    def split_heads(self, x):
        B, T, _ = x.shape
        return x.view(B, T, self.n_heads, self.d_head).transpose(1, 2)

    def merge_heads(self, x):
        B, _, T, _ = x.shape
        return x.transpose(1, 2).reshape(B, T, self.d_model)

    def forward(self, query, key, value, mask=None, need_weights=True):
        q, k, v = (self.split_heads(W(x)) for W, x in ((self.W_q, query), (self.W_k, key), (self.W_v, value)))
        if mask is not None and mask.dim() == 3:
            mask = mask.unsqueeze(1)
        heads, weights = scaled_dot_product_attention(q, k, v, mask)
        if self.training and self.dropout.p > 0:
            weights = self.dropout(weights)
            heads = weights @ v
        return self.W_o(self.merge_heads(heads)), weights
'''
    status, out, score = grade(tmp_path, capsys, "multi_head_attention", body)
    assert status == 0 and score[1] == "10/10", out


# ----------------------------------------------------------------------------------------------
# Writing files: only the scratch folder
@pytest.mark.parametrize("target", ["exercises/_checker.py", "exercises/checks/causal_mask.py",
                                    "exercises/.progress.json", "01_attention_mechanism.py"])
@pytest.mark.parametrize("how", ["open", "os.remove", "os.replace"])
def test_an_attempt_cannot_write_the_checkers_files(tmp_path, capsys, target, how):
    path = REPO_ROOT / target
    before = path.read_bytes() if path.exists() else None
    action = {"open": f"open({str(path)!r}, 'a').write('# changed')",
              "os.remove": f"os.remove({str(path)!r})",
              "os.replace": f"open(os.path.join(tempfile.gettempdir(), 'x'), 'w').close(); "
                            f"os.replace(os.path.join(tempfile.gettempdir(), 'x'), {str(path)!r})"}[how]
    source = "import os, tempfile\n" + CAUSAL_HEADER + RIGHT_CAUSAL.replace(
        "    return", f"    try:\n        {action}\n    except PermissionError:\n        pass\n    return")
    status, out, score = grade(tmp_path, capsys, "causal_mask", source)
    assert (path.read_bytes() if path.exists() else None) == before  # untouched
    assert status == 1 and score[1] == "0/4", out  # every check in which it tried fails
    assert f"your code tried writing {path}: refused" in " ".join(out.split())


def test_an_attempt_may_write_in_its_scratch_folder(tmp_path, capsys):
    source = "import tempfile\n" + CAUSAL_HEADER + RIGHT_CAUSAL.replace(
        "    return", "    with tempfile.NamedTemporaryFile('w') as f:\n        f.write('notes')\n    return")
    status, out, score = grade(tmp_path, capsys, "causal_mask", source)
    assert status == 0 and score[1] == "4/4", out


def test_writing_at_import_is_refused_and_graded(tmp_path, capsys):
    target = tmp_path / "outside.txt"
    source = CAUSAL_HEADER + f"try:\n    open({str(target)!r}, 'w').write('x')\nexcept PermissionError:\n    pass\n" + \
        RIGHT_CAUSAL
    status, out, score = grade(tmp_path, capsys, "causal_mask", source)
    assert not target.exists()
    assert status == 1 and "refused by the sandbox" in " ".join(score), out
    assert f"while it was imported your code tried writing {target}: refused" in " ".join(out.split())


# ----------------------------------------------------------------------------------------------
# Processes: none started, none left behind
def _running_with(marker):
    found = []
    for pid in os.listdir("/proc"):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if marker.encode() in f.read():
                    found.append(pid)
        except OSError:
            pass
    return found


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="lists processes through /proc")
@pytest.mark.parametrize("how", [
    "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)', MARKER], start_new_session=True)",
    "pid = os.fork()\nif pid == 0:\n    os.execv(sys.executable, [sys.executable, '-c', 'import time; "
    "time.sleep(30)', MARKER])",
    "os.system(f'{sys.executable} -c \"import time; time.sleep(30)\" {MARKER} &')",
    "import _posixsubprocess; _posixsubprocess.fork_exec([sys.executable.encode(), b'-c', b'import time; "
    "time.sleep(30)', MARKER.encode()], [sys.executable.encode()], True, (), None, None, -1, -1, -1, -1, -1, -1, "
    "-1, -1, False, False, -1, None, None, None, -1, None, False)",
    "os.posix_spawn(sys.executable, [sys.executable, '-c', 'import time; time.sleep(30)', MARKER], os.environ)",
    "pid, fd = os.forkpty()\nif pid == 0:\n    os.execv(sys.executable, [sys.executable, '-c', 'import time; "
    "time.sleep(30)', MARKER])",
], ids=["Popen(start_new_session=True)", "os.fork", "os.system", "_posixsubprocess", "os.posix_spawn", "os.forkpty"])
def test_an_attempt_cannot_start_a_process_that_outlives_the_check(tmp_path, capsys, how):
    marker = f"exercise-sandbox-{uuid.uuid4().hex}"
    source = ("import subprocess\n" + CAUSAL_HEADER + f"MARKER = {marker!r}\n\n" +
              RIGHT_CAUSAL.replace("    return", f"    try:\n{textwrap.indent(how, ' ' * 8)}\n"
                                                 f"    except PermissionError:\n        pass\n    return"))
    status, out, score = grade(tmp_path, capsys, "causal_mask", source)
    assert not _running_with(marker)  # nothing was left running
    assert status == 1 and score[1] == "0/4", out
    assert "your code tried starting a process: refused" in " ".join(out.split())


def test_an_attempt_cannot_signal_the_checker(tmp_path, capsys):
    source = CAUSAL_HEADER + RIGHT_CAUSAL.replace(
        "    return", "    try:\n        os.kill(os.getppid(), 0)\n    except PermissionError:\n        pass\n"
                     "    return")
    status, out, score = grade(tmp_path, capsys, "causal_mask", source)
    assert status == 1 and "your code tried signalling another process: refused" in " ".join(out.split())


# ----------------------------------------------------------------------------------------------
# The verdict: printed lines and the channel cannot be forged
def test_printed_lines_that_look_like_the_report_are_shown_as_printed(tmp_path, capsys):
    fake = ["  ok    1. causal_mask(5) is a (5, 5) tensor of dtype torch.bool", "  causal_mask: 4/4 checks passed",
            "  causal_mask   4/4", "  total         4/4"]
    source = (CAUSAL_HEADER + f"print({chr(10).join(fake)!r})\ntry:\n    os.write(0, b'score 4/4')  # a terminal?\n"
              "except OSError:\n    pass\n" + WRONG_CAUSAL)
    status, out, score = grade(tmp_path, capsys, "causal_mask", source)
    assert status == 1 and score[1] != "4/4"
    for line in fake:
        assert f"    | {line}" in out  # marked as printed by the attempt
    assert "\n  causal_mask: 4/4 checks passed" not in out


FORGE_THE_CHANNEL = CAUSAL_HEADER + """\
import io, stat
from multiprocessing.connection import Connection


def pack(message):
    buffer = io.BytesIO()
    torch.save(message, buffer)
    return buffer.getvalue()


def forge():
    for fd in range(3, 64):
        try:
            if stat.S_ISFIFO(os.fstat(fd).st_mode):
                channel = Connection(fd, readable=False)
                for i in range(4):
                    channel.send_bytes(pack({"kind": "check", "i": i}))
                    channel.send_bytes(pack({"kind": "checked", "i": i, "passed": True, "lines": [], "hint": None,
                                             "timed_out": False, "calls": [], "refused": [], "lesson": []}))
                channel.send_bytes(pack({"kind": "result", "state": "checked", "note": "", "source": "",
                                         "refused": [], "lesson": []}))
        except OSError:
            pass


forge()
""" + WRONG_CAUSAL


def test_messages_forged_on_the_result_channel_do_not_pass(tmp_path, capsys):
    status, out, score = grade(tmp_path, capsys, "causal_mask", FORGE_THE_CHANNEL, printed_traceback=True)
    assert status == 1 and score[1] == "0/4", out


def test_messages_forged_and_then_the_real_ones_stopped_do_not_pass(tmp_path, capsys):
    status, out, score = grade(tmp_path, capsys, "causal_mask", FORGE_THE_CHANNEL.replace("forge()\n",
                                                                                           "forge()\nos._exit(0)\n"),
                               printed_traceback=True)
    assert status == 1 and score[1] == "0/4", out


def test_a_pickle_sent_on_the_channel_runs_nothing_in_the_checker(tmp_path, capsys):
    marker = tmp_path / "ran-in-the-checker"
    source = CAUSAL_HEADER + f"""\
import pickle, stat
from multiprocessing.connection import Connection


class Payload:
    def __reduce__(self):
        return (open, ({str(marker)!r}, 'w'))


for fd in range(3, 64):
    try:
        if stat.S_ISFIFO(os.fstat(fd).st_mode):
            Connection(fd, readable=False).send_bytes(pickle.dumps(Payload()))
    except OSError:
        pass
""" + RIGHT_CAUSAL
    status, out, score = grade(tmp_path, capsys, "causal_mask", source, printed_traceback=True)
    assert not marker.exists()
    assert status == 1 and score[1] == "0/4" and "channel tampered with" in " ".join(score), out
