"""`python -m exercises`: list the exercises, or check your attempts and print a score.

    python -m exercises list
    python -m exercises check                  # every exercise
    python -m exercises check attention        # one (or several: check attention causal_mask)
    python -m exercises check --reference      # the lessons' own code, through the same checks
    python -m exercises check --dir my_attempts  # attempts kept in another folder (same file names)
    python -m exercises check --time-limit 30  # seconds each check may run (default 10)

Each exercise is graded in a child process (_isolation.py): an attempt that exits, crashes or
never returns fails with one line that says so, and the score is still printed.
Exit status: 0 when every selected check passes; 1 when a check fails or an exercise is not
attempted yet (or cannot be imported, or did not finish); 2 for a usage mistake, e.g. an exercise
name that does not exist; 130 after Ctrl-C. This module imports torch only for `check`, so `list`
answers at once.
"""
import argparse
import sys
import textwrap
import time
from pathlib import Path

from exercises import EXERCISES

WIDTH = 88
SECONDS_PER_CHECK = 10   # the default of --time-limit (as _checker.SECONDS_PER_CHECK, without importing torch)
MIN_SECONDS, MAX_SECONDS = 0.1, 3600  # for --time-limit
REPO_ROOT = Path(__file__).resolve().parent.parent


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage block
        raise _UsageError(f"{message} (see: python -m exercises --help)")


def _parser():
    parser = _Parser(prog="python -m exercises", description="Check your exercise attempts against the "
                     "checks the lessons are held to.")
    sub = parser.add_subparsers(dest="command", metavar="{list,check}")
    sub.add_parser("list", help="the exercises, their files and what each covers")
    check = sub.add_parser("check", help="check one, several or all exercises and print a score")
    check.add_argument("names", nargs="*", metavar="NAME", help=f"exercises to check (default: all): "
                       f"{', '.join(EXERCISES)}")
    where = check.add_mutually_exclusive_group()
    where.add_argument("--reference", action="store_true",
                       help="check the lessons' own code instead of your attempts (it should score full marks)")
    where.add_argument("--dir", default=None, metavar="FOLDER",
                       help="check the attempts in FOLDER (files named as in exercises/) instead")
    check.add_argument("--time-limit", type=_seconds, default=SECONDS_PER_CHECK, metavar="SECONDS",
                       help=f"stop a check that runs longer (default {SECONDS_PER_CHECK}; an endless loop, "
                            "most likely)")
    return parser


def _seconds(text):
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not MIN_SECONDS <= value <= MAX_SECONDS:  # also rejects nan
        raise _UsageError(f"--time-limit {text!r}: give the seconds a check may run, from {MIN_SECONDS} to "
                          f"{MAX_SECONDS} (e.g. --time-limit 30)")
    return value


def _print_wrapped(text, first, rest=None):
    """Print text wrapped to WIDTH: the first line starts with `first`, later lines with `rest`."""
    rest = " " * len(first) if rest is None else rest
    print(textwrap.fill(text, WIDTH, initial_indent=first, subsequent_indent=rest, break_long_words=False,
                        break_on_hyphens=False))


def _list():
    print("Exercises: write each from memory in its file, then run: python -m exercises check NAME\n")
    width = max(len(n) for n in EXERCISES)
    for exercise in EXERCISES.values():
        print(f"  {exercise.name:<{width}}  exercises/{exercise.file:<24} {exercise.entry} "
              f"(lesson {exercise.lesson:02d})")
        _print_wrapped(exercise.covers, " " * (width + 4))
    return 0


def _report(result, exercise, reference):
    where = result.source or (f"lesson {exercise.lesson:02d}" if reference else f"exercises/{exercise.file}")
    score = f"{result.passed}/{result.total}"
    if result.state != "checked":
        print(f"{exercise.name}: {result.note}  [{score}]")
        _report_output(result)
        return
    print(f"{exercise.name}: {exercise.entry} in {where}")
    errors, hints = {}, {}  # what was already shown, and in which check: said once, then referred to
    for i, check in enumerate(result.checks, 1):
        if check.lines and check.lines[0].startswith("not run: ") and check.lines == result.checks[-1].lines:
            print(f"  FAIL {i:>2}-{len(result.checks)}. {check.lines[0]}" if i < len(result.checks) else
                  f"  FAIL {i:>2}. {check.lines[0]}")  # the rest were not run: one line for them all
            break
        _print_wrapped(check.title, f"  {'ok  ' if check.passed else 'FAIL'} {i:>2}. ", " " * 11)
        is_error = len(check.lines) >= 2 and check.lines[1].startswith("at ")
        key = tuple(line for line in check.lines if not line.startswith("hint: "))
        if is_error and key in errors:
            _print_wrapped(f"{check.lines[0]} (the same error as in check {errors[key]})", " " * 11)
            continue
        if is_error:
            errors[key] = i
        for line in check.lines:
            if line.startswith("    "):  # a line of the learner's code: as it is
                print(" " * 13 + line.strip())
            elif line.startswith("at "):  # file:line, unwrapped so editors can follow it
                print(" " * 11 + line)
            elif line.startswith("hint: ") and line in hints:
                print(" " * 11 + f"hint: the same as in check {hints[line]}")
            elif line.startswith("hint: "):
                hints[line] = i
                _print_wrapped(line[len("hint: "):], " " * 11 + "hint: ")
            else:
                _print_wrapped(line, " " * 11)
    _report_output(result)
    print(f"  {exercise.name}: {score} checks passed")


def _report_output(result):
    """What the learner's code printed while it was checked: the first lines, and how many there were."""
    if not result.output_lines:
        return
    shown = len(result.output)
    more = f" (the first {shown} of {result.output_lines})" if result.output_lines > shown else ""
    print(f"  printed while checking{more}:")
    for line in result.output:
        print(f"    | {line}" if len(line) <= 300 else f"    | {line[:297]}...")


def _score_line(r):
    if r.ended:
        return r.ended
    return {"checked": "" if r.ok else f"{r.total - r.passed} failed", "not attempted": "not attempted",
            "cannot load": "cannot load"}[r.state]


def _check(args):
    unknown = [n for n in args.names if n not in EXERCISES]
    if unknown:
        raise _UsageError(f"unknown exercise {unknown[0]!r}; valid names: {', '.join(EXERCISES)}")
    if args.dir is not None and (not args.dir.strip() or not Path(args.dir).is_dir()):
        raise _UsageError(f"--dir {args.dir!r} is not a folder; pass the folder that holds your attempts "
                          "(e.g. --dir exercises)")
    names = list(dict.fromkeys(args.names)) or list(EXERCISES)

    start = time.perf_counter()
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))  # the stubs import `common`, wherever this runs from
    import common
    from exercises._isolation import grade

    common.set_threads(None)  # 1 thread unless OMP_NUM_THREADS says otherwise: fastest on a busy laptop
    what = ("the lessons' own code (--reference)" if args.reference else
            f"your attempts in {args.dir}" if args.dir else "your attempts in exercises/")
    print(f"Checking {what}. Masks: True = may attend.\n", flush=True)
    results = []
    for result in grade(names, folder=args.dir, reference=args.reference, seconds=args.time_limit):
        results.append(result)
        _report(result, EXERCISES[result.name], args.reference)
        if result.state == "checked":
            print()
        sys.stdout.flush()
    if results[-1].state != "checked":
        print()

    print("Score")
    width = max(len(r.name) for r in results)
    for r in results:
        print(f"  {r.name:<{width}}  {r.passed:>2}/{r.total:<2}  {_score_line(r)}".rstrip())
    passed, total = sum(r.passed for r in results), sum(r.total for r in results)
    print(f"  {'total':<{width}}  {passed:>2}/{total:<2}  "
          f"({time.perf_counter() - start:.1f} s, importing torch included)")
    todo = [r.name for r in results if r.state == "not attempted"]
    failing = [r.name for r in results if r.state != "not attempted" and not r.ok]
    if failing or todo:
        print()
    if failing:
        _print_wrapped(f"To fix: {', '.join(failing)}. Re-run one with:", "")
        print(f"  python -m exercises check {failing[0]}")
    if todo:
        _print_wrapped(f"Not attempted yet: {', '.join(todo)}. Write one (e.g. exercises/{EXERCISES[todo[0]].file}), "
                       "then run:", "")
        print(f"  python -m exercises check {todo[0]}")
    return 0 if all(r.ok for r in results) else 1


def main(argv=None) -> int:
    """Run the command in argv (default: sys.argv[1:]); returns the exit status (0, 1 or 2)."""
    try:
        args = _parser().parse_args(argv)
        if args.command == "list":
            return _list()
        if args.command == "check":
            return _check(args)
        raise _UsageError("say what to do: python -m exercises list | check [NAME ...]")
    except _UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        sys.stdout.flush()
        print("\ninterrupted (Ctrl-C): checking stopped, no score", file=sys.stderr)
        return 130
