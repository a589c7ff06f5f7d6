"""Run an exercise's checks on an attempt in this process, and explain every failure in words.

A check is a function that calls the learner's code and either returns (passed) or raises
CheckFailed with lines that say what is wrong: which values, the largest difference and where,
and a hint about the likely mistake. The checks themselves are in checks/<exercise>.py.

    result = check("attention", my_function)      # an ExerciseResult
    result.passed, result.total, result.state      # e.g. 8, 8, "checked"

This runs the learner's code in the calling process: the command line (_isolation.py) calls it in
a sandboxed child process and confirms every pass in its own.
"""
import contextlib
import importlib.util
import inspect
import linecache
import signal
import sys
import threading
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import torch

from exercises import EXERCISES
from exercises.checks import checks_of
from exercises.checks.helpers import CheckFailed, Hint, reseed, routed

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent
INTERNAL_FILES = {str(p) for p in [*PACKAGE_DIR.glob("_*.py"), *PACKAGE_DIR.glob("checks/*.py")]}
TORCH_DIR = str(Path(torch.__file__).resolve().parent)
SECONDS_PER_CHECK = 10  # a check that runs longer is stopped (an endless loop, most likely)


class CannotLoad(Exception):
    """The attempt could not be imported or does not define the expected name (one line)."""


@dataclass
class CheckResult:
    title: str
    passed: bool
    lines: list = field(default_factory=list)  # why it failed (empty when it passed)
    hint: Hint = None                          # the likely mistake, in three levels
    timed_out: bool = False                    # stopped by the time limit: later checks are not run


@dataclass
class ExerciseResult:
    name: str
    total: int                                  # checks this exercise has
    checks: list = field(default_factory=list)  # CheckResult of each check that ran
    state: str = "checked"                      # "checked", "not attempted", "cannot load", "lesson's code"
    note: str = ""                              # the one line for a state other than "checked"
    source: str = ""                            # the file that was checked
    ended: str = ""                             # why grading did not finish: "stopped after 12 s", ...
    output: list = field(default_factory=list)  # the first lines the learner's code printed
    output_lines: int = 0                       # how many lines it printed in all
    refused: list = field(default_factory=list) # what the sandbox refused while it ran (_sandbox.py)

    @property
    def passed(self) -> int:
        return sum(c.passed for c in self.checks)

    @property
    def ok(self) -> bool:
        return self.state == "checked" and self.passed == self.total and not self.ended


def relative(path) -> str:
    """A path relative to the repository when it is inside it (shorter to read)."""
    try:
        return str(Path(path).resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


# In the sandbox (_sandbox.py) a read of the graded lesson's file counts as using the lesson's code,
# except the checker's own reads of a line to show; the sandbox replaces this to mark them.
reading_source = contextlib.nullcontext


# ----------------------------------------------------------------------------------------------
# Exceptions raised by the learner's code: one or two lines, not a traceback
def _frames(exc):
    return list(traceback.walk_tb(exc.__traceback__))


def _is_library(filename: str) -> bool:
    path = str(Path(filename).resolve()) if filename and not filename.startswith("<") else filename
    return (not path or path.startswith("<") or path.startswith(TORCH_DIR) or path in INTERNAL_FILES
            or "site-packages" in path or path.startswith(str(Path(inspect.getfile(inspect)).parent)))


def _pick_frame(exc, source_file):
    """The frame to show: the last one in the learner's file, else the last one in user code."""
    frames = _frames(exc)
    if source_file:
        target = str(Path(source_file).resolve())
        mine = [(f, n) for f, n in frames if str(Path(f.f_code.co_filename).resolve()) == target]
        if mine:
            return mine[-1]
    user = [(f, n) for f, n in frames if not _is_library(f.f_code.co_filename)]
    return user[-1] if user else None


def _qualname(frame) -> str:
    return getattr(frame.f_code, "co_qualname", frame.f_code.co_name)


def describe_exception(exc, source_file=None) -> list:
    """'ValueError at exercises/attention.py:27 in f: message' and the line of code, or one line."""
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if len(message) > 200:
        message = message[:197] + "..."
    name = type(exc).__name__
    picked = _pick_frame(exc, source_file)
    if picked is None:
        frames = _frames(exc)
        inside = [(f, n) for f, n in frames if str(Path(f.f_code.co_filename).resolve()) in INTERNAL_FILES]
        if inside and inside[-1] == frames[-1]:  # raised by the checker itself, looking at an odd result
            frame, lineno = inside[-1]
            return [f"{name} in the checker ({relative(frame.f_code.co_filename)}:{lineno}) while looking at "
                    f"your result: {message}"]
        return [f"{name}: {message}" if message else name]
    frame, lineno = picked
    with reading_source():
        code = linecache.getline(frame.f_code.co_filename, lineno).strip()
    lines = [f"{name}: {message}" if message else name,
             f"at {relative(frame.f_code.co_filename)}:{lineno}, in {_qualname(frame)}:"]
    if code:
        lines.append(f"    {code}")
    return lines


def _about_shapes(exc) -> bool:
    """Whether an exception complains about tensor shapes, or a tuple where a tensor was due (then a
    check's on_error hint applies)."""
    text = str(exc).lower()
    return (isinstance(exc, (RuntimeError, ValueError, IndexError)) and any(
        word in text for word in ("size", "shape", "dimension", "broadcast"))) or (
        isinstance(exc, TypeError) and "tuple" in text)


def _not_implemented_note(exc, entry: str) -> str:
    frames = _frames(exc)
    if not frames:
        return f"not attempted yet: {entry} raises NotImplementedError"
    frame, lineno = frames[-1]
    return (f"not attempted yet: {_qualname(frame)} still raises NotImplementedError "
            f"({relative(frame.f_code.co_filename)}:{lineno})")


# ----------------------------------------------------------------------------------------------
# Running the checks
class CheckTimedOut(TimeoutError):
    """Raised into the learner's code when a check runs past SECONDS_PER_CHECK."""


class _TimeLimit:
    """Stop a check after `seconds` (POSIX main thread only; elsewhere no limit)."""

    def __init__(self, seconds):
        self.seconds = seconds
        self.active = (hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread())

    def _raise(self, signum, frame):
        raise CheckTimedOut(f"still running after {self.seconds:g} s: an endless loop?")

    def __enter__(self):
        if self.active:
            self.previous = signal.signal(signal.SIGALRM, self._raise)
            signal.setitimer(signal.ITIMER_REAL, self.seconds)
        return self

    def __exit__(self, *exc_info):
        if self.active:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self.previous)
        return False


EXIT_HINT = Hint("sys.exit", "Your code ends the program: look for sys.exit() or exit() in it.",
                 "A function reports a problem by raising an exception; sys.exit would end the checker (or a "
                 "training run) too.", "raise ValueError('...') instead, or return the result")
BASE_EXCEPTION_HINT = Hint(
    "BaseException", "Your code raised an exception that is not an Exception: look at the raise statement.",
    "KeyboardInterrupt is what Ctrl-C raises, and BaseException subclasses are meant to end a program; code "
    "that reports a problem raises a subclass of Exception, which callers can catch.",
    "raise ValueError('...')  # or RuntimeError, TypeError, ...")


def _exit_lines(exc: SystemExit, source_file) -> list:
    """What to say when the learner's code calls sys.exit (or exit()): the call ends the program."""
    lines = describe_exception(exc, source_file)
    lines[0] = f"your code called sys.exit({exc.code!r}) (or exit()), which would end the checker too"
    return lines


def _base_exception_lines(exc: BaseException, source_file) -> list:
    """What to say when the learner's code raises KeyboardInterrupt or another non-Exception."""
    lines = describe_exception(exc, source_file)
    lines[0] = (f"your code raised {type(exc).__name__}, which is not an Exception: it would end the checker "
                f"(or any program) instead of reporting a problem" + (f": {exc}" if str(exc) else ""))
    return lines


def _error_hint(check_, lines, exc, line_hints):
    """The hint for an exception the learner's code raised: first from its line, then from the check."""
    code = lines[2].strip() if len(lines) > 2 else ""
    return line_hints(code) or (check_.on_error if check_.on_error and _about_shapes(exc) else None)


def _run_check(check_, i, implementation, source_file, seconds, line_hints=lambda code: None) -> CheckResult:
    """Run check number i (0-based) once; NotImplementedError is left to the caller."""
    try:
        # no_grad: the learner's results are compared, never differentiated. The check's inputs come from
        # its own generator (reseed); torch's global one, which the learner's code uses, is seeded too.
        with torch.random.fork_rng(devices=[]), torch.no_grad(), _TimeLimit(seconds):
            torch.manual_seed(1234 + i)
            reseed(1234 + i)
            check_.run(implementation)
        return CheckResult(check_.title, True)
    except CheckFailed as failure:
        return CheckResult(check_.title, False, failure.lines, failure.hint)
    except NotImplementedError:
        raise
    except SystemExit as exc:
        return CheckResult(check_.title, False, _exit_lines(exc, source_file), EXIT_HINT)
    except Exception as exc:  # the learner's code raised: say where
        lines = describe_exception(exc, source_file)
        return CheckResult(check_.title, False, lines, _error_hint(check_, lines, exc, line_hints),
                           timed_out=isinstance(exc, CheckTimedOut))
    except BaseException as exc:  # KeyboardInterrupt, GeneratorExit, a class of its own
        return CheckResult(check_.title, False, _base_exception_lines(exc, source_file), BASE_EXCEPTION_HINT)


def not_run(title: str, stopped_at: int) -> CheckResult:
    return CheckResult(title, False, [f"not run: check {stopped_at} did not finish"])


def check(name: str, implementation, source_file=None, seconds=SECONDS_PER_CHECK,
          progress=None, route=None) -> ExerciseResult:
    """Run every check of exercise `name` on `implementation` (a function or class).

    source_file: where the implementation lives, to name the line of an exception
    (default: the file that defines it). seconds: each check's time limit (POSIX; see _TimeLimit).
    progress(i, result=None): called before check i (0-based) starts and with its CheckResult after.
    route: a function that returns, before each check, how that check reaches the learner's code
    (helpers.routed; the sandbox records each result); None calls it directly.
    """
    checks = checks_of(name)
    if source_file is None:
        try:
            source_file = inspect.getsourcefile(implementation)
        except TypeError:
            source_file = None
    result = ExerciseResult(name, len(checks), source=relative(source_file) if source_file else "")
    progress = progress or (lambda i, outcome=None: None)
    stopped = 0  # the check that ran out of time, counted from 1
    for i, check_ in enumerate(checks):
        if stopped:  # don't wait for an endless loop once per check
            result.checks.append(not_run(check_.title, stopped))
            continue
        progress(i)
        try:
            with routed(route()) if route else contextlib.nullcontext():
                outcome = _run_check(check_, i, implementation, source_file, seconds, checks.hint_for_line)
        except NotImplementedError as exc:
            if i == 0:  # the very first call: nothing written yet
                return ExerciseResult(name, len(checks), state="not attempted", source=result.source,
                                      note=_not_implemented_note(exc, EXERCISES[name].entry))
            outcome = CheckResult(check_.title, False, describe_exception(exc, source_file))
        result.checks.append(outcome)
        stopped = i + 1 if outcome.timed_out else 0
        progress(i, outcome)
    return result


def load_attempt(name: str, folder=PACKAGE_DIR, seconds=SECONDS_PER_CHECK):
    """Import folder/<exercise file> afresh; returns (implementation, path). CannotLoad if impossible."""
    exercise = EXERCISES[name]
    path = Path(folder) / exercise.file
    if not path.is_file():
        raise CannotLoad(f"{relative(path)} not found (the stub defines {exercise.entry}; "
                         f"restore it from the repository to start again)")
    module_name = f"_exercise_attempt_{name}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # so classes defined there behave like any module's
    try:
        with _TimeLimit(seconds):
            spec.loader.exec_module(module)
    except SyntaxError as exc:
        where = f" at line {exc.lineno}" if exc.lineno else ""           # some errors have no line
        raise CannotLoad(f"cannot import {relative(path)}: SyntaxError{where}: {exc.msg}") from None
    except BaseException as exc:  # Exception, SystemExit, KeyboardInterrupt, ...: one line
        problem, *where = (_exit_lines(exc, path) if isinstance(exc, SystemExit) else describe_exception(exc, path)
                           if isinstance(exc, Exception) else _base_exception_lines(exc, path))
        place = f" ({where[0][3:].rstrip(':')})" if where else ""
        raise CannotLoad(f"cannot import {relative(path)}: {problem}{place}") from None
    implementation = getattr(module, exercise.entry, None)
    if implementation is None:
        raise CannotLoad(f"{relative(path)} defines no {exercise.entry}: keep the stub's name")
    return implementation, path


def load_reference(name: str):
    """The lesson's own version of exercise `name`; returns (implementation, path)."""
    from common.lessons import lesson_path, load_lesson

    exercise = EXERCISES[name]
    try:
        path = lesson_path(exercise.lesson)
    except FileNotFoundError:
        raise CannotLoad(f"lesson {exercise.lesson:02d} is not in the repository yet") from None
    implementation = getattr(load_lesson(exercise.lesson), exercise.entry, None)
    if implementation is None:
        raise CannotLoad(f"{relative(path)} defines no {exercise.entry} yet")
    return implementation, path


def check_file(name: str, folder=None, reference: bool = False, seconds=SECONDS_PER_CHECK,
               progress=None) -> ExerciseResult:
    """Load the attempt (or the lesson's version) and check it; a load problem scores 0."""
    try:
        implementation, path = (load_reference(name) if reference else
                                load_attempt(name, folder or PACKAGE_DIR, seconds))
    except CannotLoad as problem:
        return ExerciseResult(name, len(checks_of(name)), state="cannot load", note=str(problem))
    return check(name, implementation, source_file=path, seconds=seconds, progress=progress)
