"""Grade each attempt in a child process, so that nothing it does can end, hang or fool the report.

The learner's code runs in a child process, never in the one that prints the score:
- with the fork start method (Linux, macOS) the child starts as a copy of this process, torch and
  the checks already imported: about 15 ms per child, one child per exercise;
- with spawn (Windows) a child is a fresh Python that imports torch again (about 2 s), so one child
  grades the exercises in turn, and a new one takes over from an exercise that did not finish.

The child says what it is doing over a pipe: ("start", name, offset) before it loads an attempt,
("check", i) before check i, ("checked", i, CheckResult) after it, ("result", ExerciseResult) at
the end. Each step may take `seconds` (the child's own time limit, _checker._TimeLimit) plus
GRACE; a child silent for longer is stopped. A child that ends without its result (os._exit, a
crash) or is stopped gives that exercise one line that says what happened, and a failing score.
What the learner's code prints goes to a file and is shown under its exercise.
"""
import contextlib
import faulthandler
import multiprocessing
import os
import signal
import sys
import tempfile
import time
from multiprocessing.connection import wait

from exercises import EXERCISES
from exercises._checker import (PACKAGE_DIR, SECONDS_PER_CHECK, CheckResult, ExerciseResult, check_file, not_run,
                                relative)
from exercises.checks import checks_of

START_SECONDS = 120           # a spawned child imports torch before its first message: allow a slow laptop
MAX_OUTPUT_BYTES = 1_000_000  # a child that prints more is stopped (a print in an endless loop)
OUTPUT_LINES_SHOWN = 10       # lines of the learner's output shown under an exercise


def grace(seconds: float) -> float:
    """How long past its own time limit a child may stay silent before it is stopped."""
    return max(1.0, 0.2 * seconds)


def start_method() -> str:
    return "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"


def grade(names, folder=None, reference=False, seconds=SECONDS_PER_CHECK, method=None):
    """Grade exercises `names` in child processes; yields each one's ExerciseResult, in order."""
    method = method or start_method()
    if method == "fork":
        _preload(names)
    context = multiprocessing.get_context(method)
    pending = list(names)
    with tempfile.TemporaryDirectory(prefix="exercises-") as scratch:
        for n in range(len(names)):  # each child grades at least one exercise
            if not pending:
                return
            batch = pending[:1] if method == "fork" else list(pending)
            output_file = os.path.join(scratch, f"output-{n}.txt")
            open(output_file, "wb").close()
            for result in _run_child(context, batch, output_file, folder, reference, seconds):
                pending.remove(result.name)
                yield result


def _preload(names):
    """Import, once here, what every forked child would otherwise import again: the lessons."""
    from common import load_lesson

    for name in names:
        checks_of(name)
        try:
            load_lesson(EXERCISES[name].lesson)
        except Exception:  # a broken lesson: the child that needs it says so
            pass


# ----------------------------------------------------------------------------------------------
# The child
def _worker(conn, output_file, names, folder, reference, seconds):
    """Grade `names` in turn, saying what happens over `conn` (runs in the child process)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the parent, which stops this process
    _send_output_to(output_file)
    import common

    common.set_threads(None)
    for name in names:
        conn.send(("start", name, os.path.getsize(output_file)))

        def progress(i, outcome=None):
            conn.send(("check", i) if outcome is None else ("checked", i, outcome))

        conn.send(("result", check_file(name, folder, reference, seconds, progress)))
    conn.close()


def _send_output_to(path):
    """Send everything this process prints (Python's and C's stdout and stderr) to `path`, line by line."""
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    # line-buffered, so what was printed before an os._exit or a kill is in the file
    sys.stdout = open(1, "w", buffering=1, encoding="utf-8", errors="replace", closefd=False)
    sys.stderr = open(2, "w", buffering=1, encoding="utf-8", errors="replace", closefd=False)
    faulthandler.enable(sys.stderr)  # a crash adds the line it happened at


# ----------------------------------------------------------------------------------------------
# The parent
@contextlib.contextmanager
def _sigint_ignored():
    """Start children with Ctrl-C ignored (fork and POSIX spawn inherit it): the parent handles it."""
    try:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not the main thread: signals are not ours to change
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


class _Step:
    """What the child is doing now: loading exercise `name` (check None) or running check `check`."""

    def __init__(self, name, seconds, offset=0, limit=None):
        self.name, self.check, self.done, self.offset = name, None, [], offset
        self.started = time.monotonic()
        self.deadline = self.started + (seconds + grace(seconds) if limit is None else limit)


def _run_child(context, batch, output_file, folder, reference, seconds):
    """Start a child on `batch`; yield each result it sends, then one for an exercise it did not finish."""
    receive, send = context.Pipe(duplex=False)
    process = context.Process(target=_worker, args=(send, output_file, batch, folder, reference, seconds),
                              daemon=True)
    with _sigint_ignored():
        process.start()
    send.close()  # the child holds the other copy: when it ends, recv() raises EOFError
    step = _Step(batch[0], seconds, limit=START_SECONDS)
    finished = 0
    try:
        while finished < len(batch):
            message = _next_message(receive, process, step.deadline, output_file)
            if isinstance(message, str):  # the child is gone, or must go: say why, and stop it
                if message == "ended":
                    process.join(timeout=1)  # it closed the pipe: let it finish, to read its exit status
                process.kill()
                process.join()
                yield _unfinished(step, message, process.exitcode, seconds, folder, reference, output_file)
                return
            kind, *args = message
            if kind == "start":
                step = _Step(args[0], seconds, offset=args[1])
            elif kind == "check":
                step.check, step.started = args[0], time.monotonic()
                step.deadline = step.started + seconds + grace(seconds)
            elif kind == "checked":
                step.done.append(args[1])
            elif kind == "result":
                finished += 1
                yield _with_output(args[0], output_file, step.offset)
                step = _Step(batch[finished] if finished < len(batch) else "", seconds, os.path.getsize(output_file))
    finally:
        if process.is_alive():  # Ctrl-C, or the caller stopped reading: don't leave it running
            process.kill()
        process.join()
        receive.close()


def _next_message(receive, process, deadline, output_file):
    """The child's next message, or why there is none: "ended", "stopped" or "printed too much"."""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return "stopped"
        ready = wait([receive, process.sentinel], timeout=min(remaining, 0.25))
        if receive in ready:
            try:
                return receive.recv()
            except (EOFError, OSError):
                return "ended"
        if process.sentinel in ready and not receive.poll():
            return "ended"
        if os.path.getsize(output_file) > MAX_OUTPUT_BYTES:
            return "printed too much"


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _what_happened(why, exitcode, elapsed, seconds, importing):
    """(what the process did, a hint, a few words for the score table) for a child that did not finish."""
    if why == "printed too much":
        return (f"was stopped: it printed more than {MAX_OUTPUT_BYTES // 1_000_000} MB",
                "a print inside an endless loop?", "stopped: printed too much")
    if why == "stopped":
        took = f"{elapsed:.1f}" if elapsed < 10 else f"{elapsed:.0f}"
        return (f"was stopped after {took} s, still running (the limit is {seconds:g} s)",
                f"an endless loop{' at the top level of the file' if importing else ''}? A loop that catches "
                "Exception (or has a bare except:) also catches the checker's time limit, so the checker cannot "
                "stop it sooner", f"stopped after {took} s")
    if exitcode is not None and exitcode >= 0:
        return (f"exited with status {exitcode}", "os._exit and sys.exit end the whole program" +
                ("" if importing else "; return the result instead"), f"exited with status {exitcode}")
    name = _signal_name(-exitcode) if exitcode is not None else "an unknown signal"
    more = ", out of memory?" if name == "SIGKILL" else ""
    return f"crashed (killed by {name}{more})", "", f"crashed ({name})"


def _unfinished(step, why, exitcode, seconds, folder, reference, output_file) -> ExerciseResult:
    """The result of the exercise that `step` was on when its child ended or was stopped."""
    importing = step.check is None  # while importing the attempt (or starting the child)
    what, hint, ended = _what_happened(why, exitcode, time.monotonic() - step.started, seconds, importing)
    checks = checks_of(step.name)
    exercise = EXERCISES[step.name]
    where = f"lesson {exercise.lesson:02d}" if reference else relative(os.path.join(folder or PACKAGE_DIR,
                                                                                   exercise.file))
    if importing:
        note = f"cannot import {where}: the process importing it {what}" + (f" ({hint})" if hint else "")
        result = ExerciseResult(step.name, len(checks), state="cannot load", note=note)
    else:
        i = step.check
        failed = CheckResult(checks[i].title, False, [f"the process running your code {what}"] +
                             ([f"hint: {hint}"] if hint else []))
        later = [not_run(c.title, i + 1) for c in checks[i + 1:]]
        result = ExerciseResult(step.name, len(checks), checks=step.done + [failed] + later, source=where)
    result.ended = ended
    return _with_output(result, output_file, step.offset)


def _with_output(result, output_file, offset):
    """Attach what the learner's code printed while this exercise was graded (the first lines)."""
    with open(output_file, "rb") as f:
        f.seek(offset)
        text = f.read(MAX_OUTPUT_BYTES).decode("utf-8", errors="replace")
    lines = text.splitlines()
    result.output, result.output_lines = lines[:OUTPUT_LINES_SHOWN], len(lines)
    return result
