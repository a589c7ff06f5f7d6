"""The console around a run, in real processes: output piped into `head`, a closed or full stdout, an
ASCII terminal, an $OMP_NUM_THREADS torch's OpenMP cannot use, SIGTERM while Python imports torch
(the import order that makes the $OMP_NUM_THREADS check possible is checked in every entry point).
Each ends quietly or with the course's one line, never a traceback or another program's warning.

Every process starts at once (module fixture), so the whole file costs about one lesson run.
"""
import ast
import os
import signal
import subprocess
import sys
import threading

import pytest

from common import process
from conftest import REPO_ROOT

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX pipes, /dev/full and signals")
LESSON_01 = next(REPO_ROOT.glob("01_*.py")).name
LESSON_05 = next(REPO_ROOT.glob("05_*.py")).name
ENV = dict(os.environ, MPLBACKEND="Agg", OMP_NUM_THREADS="1")


def start(args, env=None, **kwargs):
    return subprocess.Popen([sys.executable, *args], cwd=REPO_ROOT, env={**ENV, **(env or {})}, text=True,
                            stderr=subprocess.PIPE, **kwargs)


def head(process_, lines=3):
    """Read `lines` lines of stdout, then stop reading, as `| head -3` does."""
    shown = [process_.stdout.readline() for _ in range(lines)]
    process_.stdout.close()
    return shown


def sigterm_after_common_is_imported(process_):
    """-X importtime reports each module as its import ends: SIGTERM right after common.process's,
    while torch is still loading."""
    for line in process_.stderr:
        if line.split("|")[-1].strip() == "common.process":
            process_.send_signal(signal.SIGTERM)
            return


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """{case: (returncode, stdout, stderr)} for every case, all processes started together."""
    out = tmp_path_factory.mktemp("consoles")
    unicode_dir = out / "résultats"
    full = open(os.devnull if not os.path.exists("/dev/full") else "/dev/full", "w")
    quick = ["--quick", "--out-dir", str(out)]
    ascii_console = {"PYTHONIOENCODING": "ascii", "LC_ALL": "C", "PYTHONUNBUFFERED": "1"}
    started = {
        "sigterm_importing": (start(["-X", "importtime", LESSON_01, *quick], stdout=subprocess.DEVNULL),
                              sigterm_after_common_is_imported),
        # lesson 05 in an ASCII console, piped into head -5
        "head_05": (start([LESSON_05, "--quick", "--out-dir", str(unicode_dir)], ascii_console,
                          stdout=subprocess.PIPE), lambda running: head(running, 5)),
        "head_01": (start([LESSON_01, *quick], stdout=subprocess.PIPE), head),   # buffered: breaks later
        "closed": (start([LESSON_01, *quick], stdout=subprocess.DEVNULL,
                         preexec_fn=lambda: os.close(1)), None),
        "full": (start([LESSON_01, *quick], stdout=full), None),
        "omp_lesson": (start([LESSON_01, *quick], {"OMP_NUM_THREADS": "1.5"}, stdout=subprocess.PIPE), None),
    }
    shown = {}

    def act_on(name, running, act):                   # each at its own moment: a thread each
        shown[name] = act(running)

    acting = [threading.Thread(target=act_on, args=(name, *started[name])) for name in started if started[name][1]]
    for thread in acting:
        thread.start()
    for thread in acting:
        thread.join(timeout=300)
    found = {}
    for name, (running, _) in started.items():          # read on through the buffers the actions read into
        stdout = running.stdout.read() if running.stdout and not running.stdout.closed else ""
        stderr = running.stderr.read()
        running.wait(timeout=300)
        lines = [line for line in stderr.splitlines() if line.strip() and not line.startswith("import time:")]
        found[name] = running.returncode, "".join(shown.get(name) or []) + (stdout or ""), lines
    full.close()
    return found


def quiet(result):
    status, _, lines = result
    assert lines == [] and status in (0, process.BROKEN_PIPE_STATUS), result


def one_line(result, status, starts, contains):
    code, _, lines = result
    assert code == status and len(lines) == 1, result
    assert lines[0].startswith(starts) and contains in lines[0], result
    return lines[0]


def test_piping_lesson_05_into_head_ends_quietly(runs):
    quiet(runs["head_05"])


def test_an_ascii_console_prints_a_non_ascii_folder_with_replacement_characters(runs):
    assert "figures go to " in runs["head_05"][1] and "r?sultats" in runs["head_05"][1], runs["head_05"]


def test_piping_lesson_01_into_head_ends_quietly_when_its_buffer_is_flushed(runs):
    quiet(runs["head_01"])


def test_a_closed_stdout_is_one_line(runs):
    one_line(runs["closed"], 2, "error: ", "standard output is closed")


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full")
def test_a_full_stdout_is_one_line(runs):
    one_line(runs["full"], 2, "error: ", "No space left")


def test_an_unusable_omp_num_threads_is_the_courses_line_without_openmps_warning(runs):
    one_line(runs["omp_lesson"], 2, "error: ", "OMP_NUM_THREADS='1.5'")       # and no libgomp line before it


def test_sigterm_while_torch_is_imported_is_one_line_and_exit_143(runs):
    one_line(runs["sigterm_importing"], 143, "interrupted (SIGTERM)", "nothing was written")


@pytest.mark.parametrize("value", ["0", "-1", "abc", "1.5", "", " "])
def test_every_unusable_omp_value_is_taken_out_before_torch_and_named(monkeypatch, value):
    import common

    monkeypatch.setenv("OMP_NUM_THREADS", value)
    monkeypatch.setattr(process, "unusable_thread_setting", None)
    process.take_unusable_thread_setting()
    assert "OMP_NUM_THREADS" not in os.environ and process.unusable_thread_setting == value
    with pytest.raises(common.UserError, match=f"OMP_NUM_THREADS={value!r}"):
        common.cli.threads_from_environment()


def test_a_usable_omp_value_stays_for_torch(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setattr(process, "unusable_thread_setting", None)
    process.take_unusable_thread_setting()
    assert os.environ["OMP_NUM_THREADS"] == "1" and process.unusable_thread_setting is None


ENTRY_POINTS = sorted(REPO_ROOT.glob("[0-9][0-9]_*.py")) + [
    REPO_ROOT / "challenges" / f"{name}.py" for name in ("ablations", "diagnose", "length_generalization", "sweep")]


@pytest.mark.parametrize("path", ENTRY_POINTS, ids=lambda p: p.name)
def test_every_lesson_and_challenge_imports_common_before_torch(path):
    """torch's OpenMP reads $OMP_NUM_THREADS as torch loads: common must see it first."""
    imports = [node for node in ast.parse(path.read_text()).body if isinstance(node, (ast.Import, ast.ImportFrom))]
    names = [alias.name if isinstance(node, ast.Import) else node.module or ""
             for node in imports for alias in node.names]
    first_torch = next((i for i, name in enumerate(names) if name.split(".")[0] in ("torch", "lesson05_support")),
                       len(names))
    assert any(name.split(".")[0] == "common" for name in names[:first_torch]), names


SIGNAL_IN_A_CALLBACK = """
import os, signal, sys, weakref
sys.path.insert(0, {root!r})
import common                                   # installs the course's handlers

class Thing:
    pass

def callback(ref):                              # Python cannot raise out of a weakref callback
    os.kill(os.getpid(), signal.SIGTERM)
    for _ in range(100_000):                    # the handler runs here, inside the callback
        pass

thing = Thing()
ref = weakref.ref(thing, callback)
del thing
for _ in range(1000):
    sum(range(1000))
print("NOT INTERRUPTED")
"""


def test_a_signal_that_lands_inside_a_callback_still_ends_the_run(tmp_path):
    """A KeyboardInterrupt raised inside a weakref callback (as during an import) is 'ignored' by
    Python; the course delivers the signal again, so the run still ends with one line and 143."""
    script = tmp_path / "callback.py"
    script.write_text(SIGNAL_IN_A_CALLBACK.format(root=str(REPO_ROOT)))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 143 and "NOT INTERRUPTED" not in done.stdout, (done.returncode, done.stderr)
    assert "Exception ignored" not in done.stderr and "interrupted (SIGTERM)" in done.stderr, done.stderr
