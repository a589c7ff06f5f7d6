"""The checker's machinery: load an attempt, run its checks, explain every failure in words.

A check is a function that calls the learner's code and either returns (passed) or raises
CheckFailed with lines that say what is wrong: which values, the largest difference and where,
and a hint about the likely mistake. The checks themselves are in _checks.py.

    result = check("attention", my_function)      # an ExerciseResult
    result.passed, result.total, result.state      # e.g. 8, 8, "checked"
"""
import importlib.util
import inspect
import linecache
import math
import signal
import sys
import threading
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import torch

from exercises import EXERCISES

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent
INTERNAL_FILES = {str(p) for p in PACKAGE_DIR.glob("_*.py")}
TORCH_DIR = str(Path(torch.__file__).resolve().parent)

# float32 tolerances: the lessons' code and PyTorch's agree to ~1e-7 at these sizes.
ATOL = 1e-5
RTOL = 1e-4
SECONDS_PER_CHECK = 10  # a check that runs longer is stopped (an endless loop, most likely)


class CheckFailed(Exception):
    """A check's verdict: lines that say what is wrong, the last one usually a hint."""

    def __init__(self, *lines):
        super().__init__(lines[0] if lines else "")
        self.lines = [line for line in lines if line]


class CannotLoad(Exception):
    """The attempt could not be imported or does not define the expected name (one line)."""


@dataclass
class CheckResult:
    title: str
    passed: bool
    lines: list = field(default_factory=list)  # why it failed (empty when it passed)


@dataclass
class ExerciseResult:
    name: str
    total: int                                  # checks this exercise has
    checks: list = field(default_factory=list)  # CheckResult of each check that ran
    state: str = "checked"                      # "checked", "not attempted" or "cannot load"
    note: str = ""                              # the one line for "not attempted" / "cannot load"
    source: str = ""                            # the file that was checked

    @property
    def passed(self) -> int:
        return sum(c.passed for c in self.checks)

    @property
    def ok(self) -> bool:
        return self.state == "checked" and self.passed == self.total


# ----------------------------------------------------------------------------------------------
# Registering checks
CHECKS = {name: [] for name in EXERCISES}


def case(exercise: str, title: str, on_error: str = ""):
    """Decorator: register fn(implementation) as the next check of `exercise`.

    on_error: a hint shown when the learner's code raises an exception in this check.
    """

    def register(fn):
        CHECKS[exercise].append((title, fn, on_error))
        return fn

    return register


# ----------------------------------------------------------------------------------------------
# Words for shapes and numbers
def shape_str(shape) -> str:
    return "(" + ", ".join(str(int(s)) for s in shape) + ")"


def num(x) -> str:
    """A number for reading: 4 significant digits."""
    x = float(x)
    if math.isnan(x) or math.isinf(x):
        return str(x)
    return f"{x:.4g}"


def unravel(flat: int, shape) -> tuple:
    """The index (i, j, ...) of entry number `flat` in a tensor of `shape` (row-major)."""
    index = []
    for size in reversed(tuple(shape)):
        index.append(int(flat) % int(size))
        flat = int(flat) // int(size)
    return tuple(reversed(index))


def describe(obj) -> str:
    """What a returned object is, in a few words: 'a tensor of shape (2, 3)', 'a tuple of 3'."""
    if torch.is_tensor(obj):
        return f"a tensor of shape {shape_str(obj.shape)}"
    if isinstance(obj, (tuple, list)):
        return f"a {type(obj).__name__} of {len(obj)}"
    return f"a {type(obj).__name__}"


def relative(path) -> str:
    """A path relative to the repository when it is inside it (shorter to read)."""
    try:
        return str(Path(path).resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


# ----------------------------------------------------------------------------------------------
# Comparing a result with the reference
def _close(a, b, atol, rtol) -> bool:
    return a.shape == b.shape and bool(torch.allclose(a, b, atol=atol, rtol=rtol, equal_nan=True))


def _as_float64(t):
    return t.detach().to("cpu").to(torch.float64)


def _shape_hint(actual_shape, expected_shape) -> str:
    a, e = tuple(actual_shape), tuple(expected_shape)
    if len(a) == len(e) and sorted(a) == sorted(e):
        return "the same sizes in another order: a transpose missing, extra, or on the wrong dims?"
    if math.prod(a) == math.prod(e):
        return "the same number of values: a view/reshape to the wrong shape?"
    if len(a) == len(e) - 1:
        return "one dimension fewer than expected: something was summed, averaged or squeezed away?"
    return ""


def _generic_hint(a, e) -> str:
    """Patterns that fit many mistakes: transposed, off by a constant factor."""
    if a.dim() >= 2 and a.shape[-1] == a.shape[-2] and _close(a, e.transpose(-2, -1), 1e-4, 1e-3):
        return "your values are the expected ones transposed (rows and columns swapped)"
    usable = torch.isfinite(a) & torch.isfinite(e) & (e.abs() > 1e-3)
    if int(usable.sum()) >= 3:
        ratio = a[usable] / e[usable]
        spread = float(ratio.max() - ratio.min())
        factor = float(ratio.mean())
        if spread < 1e-3 * max(abs(factor), 1e-6) and abs(factor - 1) > 1e-3:
            return f"every value is {num(factor)} times the expected one: a scale factor too many or missing?"
    return ""


def compare(what: str, actual, expected, variants=(), hint: str = "", atol: float = ATOL, rtol: float = RTOL):
    """Pass if `actual` equals `expected` within tolerance; else raise CheckFailed explaining how.

    variants: (hint, tensor or zero-argument function) pairs, each a known mistake computed on the
    same inputs; the first one the learner's result matches gives the hint. They are computed
    only when the comparison fails. Without a matching variant, a transposed result or one off by
    a constant factor is recognised; else `hint` is shown.
    """
    if not torch.is_tensor(actual):
        raise CheckFailed(f"{what}: expected a tensor of shape {shape_str(expected.shape)}, "
                          f"got {describe(actual)}")
    if tuple(actual.shape) != tuple(expected.shape):
        found = _match_variant(actual, variants) or _shape_hint(actual.shape, expected.shape) or hint
        raise CheckFailed(f"{what}: expected shape {shape_str(expected.shape)}, got {shape_str(actual.shape)}",
                          found and "hint: " + found)
    if expected.dtype == torch.bool or actual.dtype == torch.bool:
        if actual.dtype != expected.dtype:
            raise CheckFailed(f"{what}: expected dtype {expected.dtype}, got {actual.dtype}", hint and "hint: " + hint)
    a, e = _as_float64(actual), _as_float64(expected)
    new_nan = torch.isnan(a) & ~torch.isnan(e)
    if new_nan.any():
        where = tuple(int(i) for i in new_nan.nonzero()[0])
        found = _match_variant(actual, variants)
        raise CheckFailed(
            f"{what}: NaN at index {where} ({int(new_nan.sum())} NaN values in all); expected {num(e[where])}",
            "hint: " + (found or hint or "a NaN usually comes from softmax over a row where every score is -inf "
                        "(0/0), or from dividing by zero"))
    if _close(a, e, atol, rtol):
        return
    diff = (a - e).abs().nan_to_num(nan=float("inf"))
    flat = int(diff.argmax())
    where = unravel(flat, a.shape)
    n_wrong = int((diff > atol + rtol * e.abs()).sum())
    lines = [f"{what}: largest difference {num(diff.max())} at index {where}: expected {num(e[where])}, "
             f"got {num(a[where])} ({n_wrong} of {a.numel()} values differ)"]
    found = _match_variant(actual, variants) or _generic_hint(a, e)
    if found or hint:
        lines.append("hint: " + (found or hint))
    raise CheckFailed(*lines)


def _match_variant(actual, variants) -> str:
    a = _as_float64(actual)
    for hint, variant in variants:
        try:
            v = variant() if callable(variant) else variant
        except Exception:  # a variant that does not apply to these inputs
            continue
        if v is not None and tuple(v.shape) == tuple(a.shape) and _close(a, _as_float64(v), 1e-4, 1e-3):
            return hint
    return ""


def expect(condition: bool, *lines):
    """Raise CheckFailed(*lines) unless condition holds."""
    if not condition:
        raise CheckFailed(*lines)


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
    code = linecache.getline(frame.f_code.co_filename, lineno).strip()
    lines = [f"{name}: {message}" if message else name,
             f"at {relative(frame.f_code.co_filename)}:{lineno}, in {_qualname(frame)}:"]
    if code:
        lines.append(f"    {code}")
    return lines


def _about_shapes(exc) -> bool:
    """Whether an exception complains about tensor shapes (then a check's shape hint applies)."""
    text = str(exc).lower()
    return isinstance(exc, (RuntimeError, ValueError, IndexError)) and any(
        word in text for word in ("size", "shape", "dimension", "broadcast"))


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
        raise CheckTimedOut(f"still running after {self.seconds} s: an endless loop?")

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


def check(name: str, implementation, source_file=None) -> ExerciseResult:
    """Run every check of exercise `name` on `implementation` (a function or class).

    source_file: where the implementation lives, to name the line of an exception
    (default: the file that defines it).
    """
    import exercises._checks  # noqa: F401  (registers the checks)

    if name not in CHECKS:
        raise KeyError(f"unknown exercise {name!r}; valid: {', '.join(EXERCISES)}")
    if source_file is None:
        try:
            source_file = inspect.getsourcefile(implementation)
        except TypeError:
            source_file = None
    checks = CHECKS[name]
    result = ExerciseResult(name, len(checks), source=relative(source_file) if source_file else "")
    timed_out = 0
    for i, (title, fn, on_error) in enumerate(checks):
        if timed_out:  # don't wait for an endless loop once per check
            result.checks.append(CheckResult(title, False, [f"not run: check {timed_out} did not finish"]))
            continue
        try:
            # no_grad: the learner's results are compared, never differentiated
            with torch.random.fork_rng(devices=[]), torch.no_grad(), _TimeLimit(SECONDS_PER_CHECK):
                torch.manual_seed(1234 + i)
                fn(implementation)
            result.checks.append(CheckResult(title, True))
        except CheckFailed as failure:
            result.checks.append(CheckResult(title, False, failure.lines))
        except NotImplementedError as exc:
            if i == 0:  # the very first call: nothing written yet
                result.state = "not attempted"
                result.note = _not_implemented_note(exc, EXERCISES[name].entry)
                result.checks = []
                return result
            result.checks.append(CheckResult(title, False, describe_exception(exc, source_file)))
        except Exception as exc:  # the learner's code raised: say where, then go on
            if isinstance(exc, CheckTimedOut):
                timed_out = i + 1
            lines = describe_exception(exc, source_file)
            if on_error and _about_shapes(exc):
                lines.append("hint: " + on_error)
            result.checks.append(CheckResult(title, False, lines))
    return result


def load_attempt(name: str, folder=PACKAGE_DIR):
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
        spec.loader.exec_module(module)
    except SyntaxError as exc:
        raise CannotLoad(f"cannot import {relative(path)}: SyntaxError at line {exc.lineno}: {exc.msg}") from None
    except Exception as exc:
        problem, *where = describe_exception(exc, path)
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


def check_file(name: str, folder=None, reference: bool = False) -> ExerciseResult:
    """Load the attempt (or the lesson's version) and check it; a load problem scores 0."""
    try:
        implementation, path = load_reference(name) if reference else load_attempt(name, folder or PACKAGE_DIR)
    except CannotLoad as problem:
        import exercises._checks  # noqa: F401

        return ExerciseResult(name, len(CHECKS[name]), state="cannot load", note=str(problem))
    return check(name, implementation, source_file=path)
