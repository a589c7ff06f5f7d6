"""`python -m exercises compare NAME`: your version of a component, then the lesson's own, with files and lines.

Your file is read, not run (the checker runs attempts only in its sandbox): the function or class
the stub names is found in it with `ast`. The lesson's version is found with `inspect` on the
object that common.load_lesson(n) gives, so it is the code that runs, wherever it sits in the lesson.
"""
import ast
import inspect
import textwrap
from pathlib import Path

from exercises import EXERCISES

RULE = "-" * 88


class CannotCompare(Exception):
    """The attempt's file is missing or cannot be read: one line, exit status 2."""


def attempt_source(name, folder):
    """(first line number, source lines) of the learner's version, and whether it is still the stub."""
    from exercises._checker import relative

    exercise = EXERCISES[name]
    path = Path(folder) / exercise.file
    where = relative(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CannotCompare(f"{where} not found; restore the stub (git checkout -- {where}) and write "
                            f"{exercise.entry} in it") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CannotCompare(f"cannot read {where} ({type(exc).__name__}); it must be a UTF-8 Python file") from None
    try:
        tree = ast.parse(text, filename=str(path))
    except (SyntaxError, ValueError) as exc:
        line = f" at line {exc.lineno}" if getattr(exc, "lineno", None) else ""
        raise CannotCompare(f"cannot read {where}: SyntaxError{line}: {getattr(exc, 'msg', exc)}; fix it (python "
                            f"-m exercises check {name} shows where) and compare again") from None
    node = next((n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and n.name == exercise.entry),
                None)
    if node is None:
        raise CannotCompare(f"{where} defines no {exercise.entry} (as a def or class at the top of the file); "
                            f"keep the stub's name")
    first = min([node.lineno] + [d.lineno for d in node.decorator_list])
    lines = text.splitlines()[first - 1:node.end_lineno]
    return where, first, lines, _is_stub(node)


def _is_stub(node) -> bool:
    """Whether every function the learner writes (all but __init__) still only raises NotImplementedError."""
    functions = [node] if isinstance(node, ast.FunctionDef) else [
        n for n in node.body if isinstance(n, ast.FunctionDef) and n.name != "__init__"]
    for function in functions:
        body = [s for s in function.body if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))]
        raised = body[0].exc if len(body) == 1 and isinstance(body[0], ast.Raise) else None
        target = raised.func if isinstance(raised, ast.Call) else raised
        if not (isinstance(target, ast.Name) and target.id == "NotImplementedError"):
            return False
    return True


def lesson_source(name):
    """(file, first line number, source lines) of the lesson's own version, found with inspect."""
    from common import load_lesson
    from exercises._checker import relative

    exercise = EXERCISES[name]
    obj = inspect.unwrap(getattr(load_lesson(exercise.lesson), exercise.entry))
    lines, first = inspect.getsourcelines(obj)
    return relative(inspect.getsourcefile(obj)), first, [line.rstrip("\n") for line in lines]


def _show(title, first, lines):
    print(title)
    print(RULE)
    width = len(str(first + len(lines) - 1))
    for n, line in enumerate(lines, first):
        print(f"{n:>{width}} | {line}".rstrip())
    print(RULE)


def compare(name, folder) -> int:
    """Print the learner's version, then the lesson's; returns the exit status (1: not attempted yet)."""
    exercise = EXERCISES[name]
    where, first, lines, untouched = attempt_source(name, folder)
    if untouched:  # one line: nothing to compare yet, and the lesson's version stays closed
        print(f"{name}: {where} is not attempted yet (its {exercise.entry} still raises NotImplementedError). "
              f"Write it, run python -m exercises check {name}, then compare.")
        return 1
    lesson_file, lesson_first, lesson_lines = lesson_source(name)
    print(textwrap.fill(f"{name}: your {exercise.entry}, then the lesson's. Line by line, what differs? Where "
                        f"both are right in different words, python -m exercises check {name} tells you whether "
                        f"yours behaves the same.", len(RULE), break_on_hyphens=False) + "\n")
    _show(f"Yours: {where}, lines {first}-{first + len(lines) - 1}", first, lines)
    print()
    _show(f"The lesson's: {lesson_file}, lines {lesson_first}-{lesson_first + len(lesson_lines) - 1}", lesson_first,
          lesson_lines)
    return 0
