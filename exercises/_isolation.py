"""Grade each attempt in a child process, so that nothing it does can end, hang or fool the report.

The learner's code runs in a child process, never in the one that prints the score:
- with the fork start method (Linux, macOS) the child starts as a copy of this process, torch and
  the checks already imported: about 15 ms per child, one child per exercise;
- with spawn (Windows) a child is a fresh Python that imports torch again (about 2 s), so one child
  grades the exercises in turn, and a new one takes over from an exercise that did not finish.

The child first closes what it inherited (terminals, files), sends its own output to a file, and
installs the sandbox (_sandbox.py: no writing outside a scratch folder, no processes, the graded
lesson's own code noted). Then it says what it is doing over a pipe, one message at a time
(_channel.py): "start" before it loads an attempt, "check" i before check i, "checked" i with the
verdict and the record of the learner's results, "result" at the end. The parent reads them in
that order only, re-checks every pass itself from the record (_channel.verify), and fails the
exercise if a message is malformed or out of order. Each step may take `seconds` (the child's own
time limit, _checker._TimeLimit) plus GRACE; a child silent for longer is stopped. A child that ends
without its result (os._exit, a crash) or is stopped gives that exercise one line that says what
happened, and a failing score. What the learner's code prints goes to a file and is shown under
its exercise, each line marked as printed (it cannot pass for the checker's own lines).
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
from exercises._channel import MAX_MESSAGE_BYTES, BadMessage, pack, read_message, verify
from exercises._checker import (PACKAGE_DIR, SECONDS_PER_CHECK, CheckResult, ExerciseResult, not_run, relative)
from exercises._sandbox import open_files
from exercises.checks import checks_of
from exercises.checks.helpers import Hint

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
    _preload()
    context = multiprocessing.get_context(method)
    pending = list(names)
    with tempfile.TemporaryDirectory(prefix="exercises-") as scratch:
        for n in range(len(names)):  # each child grades at least one exercise
            if not pending:
                return
            batch = pending[:1] if method == "fork" else list(pending)
            output_file = os.path.join(scratch, f"output-{n}.txt")
            open(output_file, "wb").close()
            writable = os.path.join(scratch, f"scratch-{n}")  # the only folder the attempt may write in
            os.mkdir(writable)
            for result in _run_child(context, batch, output_file, writable, folder, reference, seconds):
                pending.remove(result.name)
                yield result


def _preload():
    """Import the lessons and checks: once here for every forked child, and in a spawned child before
    its sandbox (there, reading the graded lesson's file would count as using the lesson's code)."""
    from common import load_lesson
    from exercises.checks.stand_in_model import special_tokens

    for name in EXERCISES:
        checks_of(name)
        try:
            load_lesson(EXERCISES[name].lesson)
        except Exception:  # a broken lesson: the child that needs it says so
            pass
    try:
        special_tokens()
    except Exception:
        pass


# ----------------------------------------------------------------------------------------------
# The child
def _worker(conn, output_file, scratch, names, folder, reference, seconds, inherited):
    """Grade `names` in turn, saying what happens over `conn` (runs in the child process).

    inherited: the parent's open files just before a fork, closed here (None with spawn: nothing is).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the parent, which stops this process
    if hasattr(os, "setpgrp"):
        os.setpgrp()  # a group of its own: the parent ends it, and anything left in it, at the end
    _send_output_to(output_file)
    from exercises import _checker
    from exercises._sandbox import Sandbox, close_inherited_files

    close_inherited_files(inherited, keep={conn.fileno()})
    import common

    common.set_threads(None)
    _preload()
    sandbox = Sandbox(scratch)
    tempfile.tempdir = os.environ["TMPDIR"] = os.environ["TEMP"] = os.environ["TMP"] = scratch
    sandbox.install()
    _checker.reading_source = sandbox.checker_reads
    for name in names:
        conn.send_bytes(pack({"kind": "start", "name": name, "offset": os.path.getsize(output_file)}))
        sandbox.begin(name, reference)
        result, refused, lesson = _grade_in_child(conn, sandbox, name, folder, reference, seconds)
        more_refused, more_lesson = sandbox.take_events()
        conn.send_bytes(pack({"kind": "result", "state": result.state, "note": result.note, "source": result.source,
                              "refused": refused + more_refused, "lesson": lesson + more_lesson}))
    conn.close()


def _grade_in_child(conn, sandbox, name, folder, reference, seconds):
    """Load and check one exercise, sending each check's verdict and record. Returns (result, events at import)."""
    from common import load_lesson
    from exercises._channel import Recorder
    from exercises._checker import CannotLoad, check, load_attempt, load_reference

    exercise = EXERCISES[name]
    try:
        implementation, path = (load_reference(name) if reference else
                                load_attempt(name, folder or PACKAGE_DIR, seconds))
    except CannotLoad as problem:
        result = ExerciseResult(name, len(checks_of(name)), state="cannot load", note=str(problem))
        return result, *sandbox.take_events()
    refused, lesson = sandbox.take_events()
    if not reference and implementation is getattr(load_lesson(exercise.lesson), exercise.entry, None):
        lesson.append(f"{exercise.entry} is the lesson's own")
    recorders = []

    def route():
        recorders.append(Recorder())
        return recorders[-1]

    def progress(i, outcome=None):
        if outcome is None:
            sandbox.take_events()
            conn.send_bytes(pack({"kind": "check", "i": i}))
            return
        check_refused, check_lesson = sandbox.take_events()
        conn.send_bytes(pack({"kind": "checked", "i": i, "passed": outcome.passed, "lines": list(outcome.lines),
                              "hint": None if outcome.hint is None else list(outcome.hint),
                              "timed_out": outcome.timed_out, "calls": recorders[-1].entries,
                              "refused": check_refused, "lesson": check_lesson}))

    return check(name, implementation, path, seconds, progress, route), refused, lesson


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


class _Exercise:
    """What the parent knows of the exercise the child is on: the step it is at, the checks done."""

    def __init__(self, name, seconds, offset=0, limit=None):
        self.name, self.check, self.done, self.offset = name, None, [], offset
        self.n_checks = len(checks_of(name)) if name else 0
        self.refused, self.lesson = [], []
        self.started = time.monotonic()
        self.deadline = self.started + (seconds + grace(seconds) if limit is None else limit)
        # however the child paces its messages, one exercise never takes longer than this
        self.last_call = self.started + (limit or 0) + (self.n_checks + 1) * (seconds + grace(seconds))


def _run_child(context, batch, output_file, scratch, folder, reference, seconds):
    """Start a child on `batch`; yield each result it sends, then one for an exercise it did not finish."""
    receive, send = context.Pipe(duplex=False)
    inherited = open_files() if context.get_start_method() == "fork" else None
    process = context.Process(target=_worker, daemon=True,
                              args=(send, output_file, scratch, batch, folder, reference, seconds, inherited))
    with _sigint_ignored():
        process.start()
    send.close()  # the child holds the other copy: when it ends, recv() raises EOFError
    step = _Exercise(batch[0], seconds, limit=START_SECONDS)
    finished, started = 0, False
    try:
        while finished < len(batch):
            data = _next_message(receive, process, min(step.deadline, step.last_call), output_file)
            if isinstance(data, str):  # the child is gone, or must go: say why, and stop it
                if data == "ended":
                    process.join(timeout=1)  # it closed the pipe: let it finish, to read its exit status
                _stop(process)
                yield _unfinished(step, data, process.exitcode, seconds, folder, reference, output_file)
                return
            try:
                message = read_message(data)
                kind = message["kind"]
                if kind == "start":
                    expect_order(not started and message["name"] == batch[finished], "start")
                    step, started = _Exercise(message["name"], seconds, offset=message["offset"]), True
                elif kind == "check":
                    expect_order(started and step.check is None and message["i"] == len(step.done), "check")
                    step.check, step.started = message["i"], time.monotonic()
                    step.deadline = step.started + seconds + grace(seconds)
                elif kind == "checked":
                    expect_order(started and step.check == message["i"], "checked")
                    step.done.append(_verified(step, message, seconds))
                    step.check = None
                elif kind == "result":
                    expect_order(started and step.check in (None, 0), "result")
                    finished, started = finished + 1, False
                    yield _with_output(_final(step, message), output_file, step.offset)
                    step = _Exercise(batch[finished] if finished < len(batch) else "", seconds,
                                     os.path.getsize(output_file))
            except BadMessage as problem:
                _stop(process)
                yield _tampered(step, str(problem), output_file)
                return
    finally:
        _stop(process)
        receive.close()


def expect_order(condition, kind):
    if not condition:
        raise BadMessage(f"a {kind} message out of order")


def _stop(process):
    """End the child and anything left in its process group (a process it managed to start)."""
    if process.is_alive():  # Ctrl-C, or the caller stopped reading: don't leave it running
        process.kill()
    if process.pid and hasattr(os, "killpg"):
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    process.join()


def _next_message(receive, process, deadline, output_file):
    """The child's next message (bytes), or why there is none: "ended", "stopped" or "printed too much"."""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return "stopped"
        ready = wait([receive, process.sentinel], timeout=min(remaining, 0.25))
        if receive in ready:
            try:
                return receive.recv_bytes(MAX_MESSAGE_BYTES)
            except (EOFError, OSError):
                return "ended"
        if process.sentinel in ready and not receive.poll():
            return "ended"
        if os.path.getsize(output_file) > MAX_OUTPUT_BYTES:
            return "printed too much"


# ----------------------------------------------------------------------------------------------
# Verdicts: each pass re-checked here; what was refused or taken from the lesson decides too
RECHECK_FAILED = Hint(
    "re-check failed", "The check passed where your code ran but not when the checker checked your results "
    "again in its own process: look for code that changes the checker, its inputs or the model it is given.",
    "The checker confirms every pass in its own process from the results your code returned; changing the "
    "checker (or the objects it hands you) from inside the attempt cannot turn a wrong result into a pass.",
    "compute the result from the arguments; leave the checker and the model alone")
REFUSED = Hint(
    "sandbox", "Your code tried something the checker does not allow while grading (named above): look for "
    "the line that does it.",
    "An attempt runs in a sandbox: it may write files only in a scratch folder (tempfile gives you one), and "
    "may not start processes or change the checker.", "compute the result in the function itself")


def _verified(step, message, seconds) -> CheckResult:
    """The CheckResult of a 'checked' message: its pass confirmed here, its refusals made failures."""
    i = message["i"]
    title = checks_of(step.name)[i].title
    step.refused += message["refused"]
    step.lesson += message["lesson"]
    hint = Hint(*message["hint"]) if message["hint"] else None
    if message["refused"]:
        return CheckResult(title, False, [f"your code tried {what}: refused" for what in message["refused"]] +
                           message["lines"], hint or REFUSED)
    if not message["passed"]:
        return CheckResult(title, False, message["lines"], hint, message["timed_out"])
    again = verify(step.name, i, message["calls"], seconds)
    if again.passed:
        return CheckResult(title, True)
    return CheckResult(title, False, ["passed in the process that ran your code, but not when the checker "
                                      "checked your results again in its own process:"] + again.lines,
                       RECHECK_FAILED)


def _lesson_note(step, lesson) -> str:
    exercise = EXERCISES[step.name]
    return (f"uses the lesson's code: your {exercise.entry} hands in lesson {exercise.lesson:02d}'s own "
            f"({'; '.join(sorted(set(lesson)))}); write it yourself (building on other components is fine)")


def _final(step, message) -> ExerciseResult:
    """The exercise's result from its 'result' message and the verified checks."""
    checks = checks_of(step.name)
    state = message["state"]
    if state not in ("checked", "not attempted", "cannot load"):
        raise BadMessage("an unknown state")
    result = ExerciseResult(step.name, len(checks), state=state, note=message["note"], source=message["source"])
    lesson = step.lesson + message["lesson"]
    refused = step.refused + message["refused"]
    if state == "checked":
        done = step.done
        stopped = next((i + 1 for i, c in enumerate(done) if c.timed_out), 0)
        if len(done) < len(checks) and not stopped:
            raise BadMessage("a result before every check was done")
        result.checks = done + [not_run(c.title, stopped) for c in checks[len(done):]]
    if lesson:
        result.state, result.note, result.checks = "lesson's code", _lesson_note(step, lesson), []
    elif message["refused"] and state == "checked":
        result.state, result.checks = "refused", []
        result.note = (f"{result.source}: while it was imported your code tried "
                       f"{'; '.join(sorted(set(message['refused'])))}: refused (an attempt may write only in its "
                       f"scratch folder and may not start processes)")
    result.refused = sorted(set(refused))
    return result


def _tampered(step, problem, output_file) -> ExerciseResult:
    """The result of an exercise whose child sent a message the checker does not send."""
    checks = checks_of(step.name) if step.name else []
    result = ExerciseResult(step.name, len(checks), state="cannot load",
                            note=f"the checker's channel received a message it does not send ({problem}): did your "
                                 f"code write to the checker's pipe? Graded as failed")
    result.ended = "channel tampered with"
    return _with_output(result, output_file, step.offset)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


EXIT_HINT = Hint(
    "process ended", "The process running your code ended on its own: look for os._exit (or sys.exit) in your "
    "code.", "os._exit ends the whole process at once; a function reports a problem by raising an exception and "
    "otherwise returns its result.", "return the result; raise ValueError('...') to give up")
LOOP_HINT = Hint(
    "endless loop", "Your code was still running when the time was up: look for a loop whose condition never "
    "becomes false.", "A loop that catches Exception (or has a bare except:) also catches the checker's time "
    "limit, so the checker cannot stop it sooner.", "loop over a range, or make sure the condition changes")
PRINT_HINT = Hint(
    "printing without end", "Your code printed more than 1 MB: look for a print inside a loop.",
    "Printing in an endless loop fills the screen; the checker stops it.", "remove the print, or the loop")


def _what_happened(why, exitcode, elapsed, seconds):
    """(what the process did, a hint, a few words for the score table) for a child that did not finish."""
    if why == "printed too much":
        return (f"was stopped: it printed more than {MAX_OUTPUT_BYTES // 1_000_000} MB", PRINT_HINT,
                "stopped: printed too much")
    if why == "stopped":
        took = f"{elapsed:.1f}" if elapsed < 10 else f"{elapsed:.0f}"
        return (f"was stopped after {took} s, still running (the limit is {seconds:g} s)", LOOP_HINT,
                f"stopped after {took} s")
    if exitcode is not None and exitcode >= 0:
        return f"exited with status {exitcode}", EXIT_HINT, f"exited with status {exitcode}"
    name = _signal_name(-exitcode) if exitcode is not None else "an unknown signal"
    more = ", out of memory?" if name == "SIGKILL" else ""
    return f"crashed (killed by {name}{more})", None, f"crashed ({name})"


def _unfinished(step, why, exitcode, seconds, folder, reference, output_file) -> ExerciseResult:
    """The result of the exercise that `step` was on when its child ended or was stopped."""
    importing = step.check is None and not step.done  # while importing the attempt (or starting the child)
    what, hint, ended = _what_happened(why, exitcode, time.monotonic() - step.started, seconds)
    checks = checks_of(step.name)
    exercise = EXERCISES[step.name]
    where = f"lesson {exercise.lesson:02d}" if reference else relative(os.path.join(folder or PACKAGE_DIR,
                                                                                   exercise.file))
    if importing:
        note = f"cannot import {where}: the process importing it {what}" + (f" ({hint.look})" if hint else "")
        result = ExerciseResult(step.name, len(checks), state="cannot load", note=note)
    else:
        i = len(step.done)
        failed = CheckResult(checks[i].title, False, [f"the process running your code {what}"], hint)
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
