"""`python -m exercises`: list the exercises, check your attempts and print a score, compare with the lesson.

    python -m exercises list                   # the exercises, and your progress in each
    python -m exercises list --exam            # the same, with your scores in exam mode
    python -m exercises check                  # every exercise
    python -m exercises check attention        # one (or several: check attention causal_mask)
    python -m exercises check attention --hint 2  # hints explain the idea (3: show the line of code)
    python -m exercises check --exam           # from memory: pass or fail per property, no hints
    python -m exercises compare attention      # your version, then the lesson's, with file and line
    python -m exercises check --reference      # the lessons' own code, through the same checks
    python -m exercises check --dir my_attempts  # attempts kept in another folder (same file names)
    python -m exercises check --time-limit 30  # seconds each check may run (default 10)

Each exercise is graded in a sandboxed child process (_isolation.py): an attempt that exits, crashes
or never returns fails with one line that says so, and the score is still printed. Every graded
try is recorded in .progress.json in the attempts' folder (_progress.py).
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
HINT_LEVELS = (1, 2, 3)
HINT_LABELS = ("hint: ", "why:  ", "code: ")
REPO_ROOT = Path(__file__).resolve().parent.parent
PACKAGE_DIR = Path(__file__).resolve().parent


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage block
        raise _UsageError(f"{message} (see: python -m exercises --help)")


def _parser():
    parser = _Parser(prog="python -m exercises", description="Write the course's components from memory; "
                     "the checker grades them against the checks the lessons are held to.")
    sub = parser.add_subparsers(dest="command", metavar="{list,check,compare}")
    listing = sub.add_parser("list", help="the exercises, their files and your progress")
    listing.add_argument("--exam", action="store_true", help="show your scores in exam mode")
    listing.add_argument("--dir", default=None, metavar="FOLDER", help="the progress of the attempts in FOLDER")
    check = sub.add_parser("check", help="check one, several or all exercises and print a score")
    check.add_argument("names", nargs="*", metavar="NAME", help=f"exercises to check (default: all): "
                       f"{', '.join(EXERCISES)}")
    where = check.add_mutually_exclusive_group()
    where.add_argument("--reference", action="store_true",
                       help="check the lessons' own code instead of your attempts (it should score full marks)")
    where.add_argument("--dir", default=None, metavar="FOLDER",
                       help="check the attempts in FOLDER (files named as in exercises/) instead")
    help_mode = check.add_mutually_exclusive_group()
    help_mode.add_argument("--hint", type=_hint_level, default=1, metavar="LEVEL",
                           help="how much a hint says: 1 the symptom and where to look (default), 2 also the "
                                "idea, 3 also the line of code")
    help_mode.add_argument("--exam", action="store_true",
                           help="from memory: only pass or fail per property, no differences, no hints")
    check.add_argument("--time-limit", type=_seconds, default=SECONDS_PER_CHECK, metavar="SECONDS",
                       help=f"stop a check that runs longer (default {SECONDS_PER_CHECK}; an endless loop, "
                            "most likely)")
    compare = sub.add_parser("compare", help="your version of one exercise, then the lesson's, with file and line")
    compare.add_argument("name", metavar="NAME", help=f"the exercise: {', '.join(EXERCISES)}")
    compare.add_argument("--dir", default=None, metavar="FOLDER", help="your attempt is in FOLDER")
    return parser


def _hint_level(text):
    if text.strip() not in {str(level) for level in HINT_LEVELS}:
        raise _UsageError(f"--hint {text!r}: give a level 1, 2 or 3 (1 the symptom and where to look, 2 the idea, "
                          "3 the line of code)")
    return int(text)


def _seconds(text):
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not MIN_SECONDS <= value <= MAX_SECONDS:  # also rejects nan
        raise _UsageError(f"--time-limit {text!r}: give the seconds a check may run, from {MIN_SECONDS} to "
                          f"{MAX_SECONDS} (e.g. --time-limit 30)")
    return value


def _folder(text):
    """The attempts' folder from --dir (default exercises/); a usage error if it is not a folder."""
    if text is None:
        return PACKAGE_DIR
    if not text.strip() or not Path(text).is_dir():
        raise _UsageError(f"--dir {text!r} is not a folder; pass the folder that holds your attempts "
                          "(e.g. --dir exercises)")
    return Path(text)


def _shown_path(path) -> str:
    """A path relative to the repository when it is inside it."""
    try:
        return str(Path(path).resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def _exercise(name):
    if name not in EXERCISES:
        raise _UsageError(f"unknown exercise {name!r}; valid names: {', '.join(EXERCISES)}")
    return EXERCISES[name]


def _print_wrapped(text, first, rest=None):
    """Print text wrapped to WIDTH: the first line starts with `first`, later lines with `rest`."""
    rest = " " * len(first) if rest is None else rest
    print(textwrap.fill(text, WIDTH, initial_indent=first, subsequent_indent=rest, break_long_words=False,
                        break_on_hyphens=False))


# ----------------------------------------------------------------------------------------------
# list
def _list(args):
    from exercises import _progress

    folder = _folder(args.dir)
    record = _progress.load(folder)["exercises"]
    if args.exam:
        print("Exercises, exam mode: from memory, graded pass or fail per property without hints.\n"
              "Run: python -m exercises check --exam (or check NAME --exam)\n")
    else:
        print("Exercises: write each from memory in its file, then run: python -m exercises check NAME\n")
    width = max(len(n) for n in EXERCISES)
    files = {e.name: _shown_path(folder / e.file) for e in EXERCISES.values()}
    file_width = max(len(f) for f in files.values())
    for exercise in EXERCISES.values():
        print(f"  {exercise.name:<{width}}  {files[exercise.name]:<{file_width}}  {exercise.entry} "
              f"(lesson {exercise.lesson:02d})")
        if not args.exam:
            _print_wrapped(exercise.covers, " " * (width + 4))
        _print_wrapped(_progress.summary(record.get(exercise.name), exam=args.exam), " " * (width + 4))
    return 0


# ----------------------------------------------------------------------------------------------
# check
class _Report:
    """Prints one exercise's result: every check, and for a failure its lines and hint (not in --exam)."""

    def __init__(self, exercise, reference, hint_level, exam):
        self.exercise, self.reference, self.level, self.exam = exercise, reference, hint_level, exam
        self.errors, self.hints, self.more_shown = {}, {}, False

    def print(self, result):
        exercise = self.exercise
        score = f"{result.passed}/{result.total}"
        if result.state != "checked":
            print(f"{exercise.name}: {result.note}  [{score}]")
            _report_output(result)
            return
        where = result.source or (f"lesson {exercise.lesson:02d}" if self.reference else f"exercises/{exercise.file}")
        print(f"{exercise.name}: {exercise.entry} in {where}" + (" (exam: pass or fail only)" if self.exam else ""))
        for i, check in enumerate(result.checks, 1):
            if check.lines and check.lines[0].startswith("not run: ") and check.lines == result.checks[-1].lines:
                print(f"  FAIL {i:>2}-{len(result.checks)}. {check.lines[0]}" if i < len(result.checks) else
                      f"  FAIL {i:>2}. {check.lines[0]}")  # the rest were not run: one line for them all
                break
            _print_wrapped(check.title, f"  {'ok  ' if check.passed else 'FAIL'} {i:>2}. ", " " * 11)
            if not self.exam:
                self._details(i, check)
        _report_output(result)
        print(f"  {exercise.name}: {score} checks passed")
        if result.ok and not self.reference:
            print(f"  All checks pass. Compare yours with the lesson's: python -m exercises compare {exercise.name}")

    def _details(self, i, check):
        is_error = len(check.lines) >= 2 and check.lines[1].startswith("at ")
        key = tuple(check.lines)
        if is_error and key in self.errors:
            _print_wrapped(f"{check.lines[0]} (the same error as in check {self.errors[key]})", " " * 11)
            return
        if is_error:
            self.errors[key] = i
        for line in check.lines:
            if line.startswith("    "):  # a line of the learner's code: as it is
                print(" " * 13 + line.strip())
            elif line.startswith("at "):  # file:line, unwrapped so editors can follow it
                print(" " * 11 + line)
            else:
                _print_wrapped(line, " " * 11)
        if check.hint is None:
            return
        if check.hint.key in self.hints:
            print(" " * 11 + f"hint: the same as in check {self.hints[check.hint.key]}")
            return
        self.hints[check.hint.key] = i
        for label, text in zip(HINT_LABELS, check.hint.levels(self.level)):
            _print_wrapped(text, " " * 11 + label)
        if self.level < 3 and not self.more_shown:
            self.more_shown = True
            what = "the idea behind the hint" if self.level == 1 else "the line of code"
            print(" " * 11 + f"more ({what}): python -m exercises check {self.exercise.name} --hint {self.level + 1}")


def _report_output(result):
    """What the learner's code printed while it was checked: the first lines, and how many there were."""
    if result.refused:
        _print_wrapped(f"refused while checking: {'; '.join(result.refused)}", "  ")
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
            "cannot load": "cannot load", "lesson's code": "uses the lesson's code",
            "refused": "refused by the sandbox"}[r.state]


def _check(args):
    for name in args.names:
        _exercise(name)
    folder = None if args.dir is None else _folder(args.dir)
    names = list(dict.fromkeys(args.names)) or list(EXERCISES)

    start = time.perf_counter()
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))  # the stubs import `common`, wherever this runs from
    import common
    from exercises import _progress
    from exercises._isolation import grade

    common.set_threads(None)  # 1 thread unless OMP_NUM_THREADS says otherwise: fastest on a busy laptop
    what = ("the lessons' own code (--reference)" if args.reference else
            f"your attempts in {args.dir}" if args.dir else "your attempts in exercises/")
    mode = " Exam mode: pass or fail per property, no hints." if args.exam else " Masks: True = may attend."
    print(f"Checking {what}.{mode}\n", flush=True)
    results = []
    for result in grade(names, folder=folder, reference=args.reference, seconds=args.time_limit):
        results.append(result)
        _Report(EXERCISES[result.name], args.reference, args.hint, args.exam).print(result)
        if not args.reference:
            _progress.record(folder or PACKAGE_DIR, result, exam=args.exam)
        if result.state == "checked":
            print()
        sys.stdout.flush()
    if results[-1].state != "checked":
        print()
    _score_table(results, start, " --exam" if args.exam else "")
    return 0 if all(r.ok for r in results) else 1


def _score_table(results, start, exam=""):
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
        print(f"  python -m exercises check {failing[0]}{exam}" + ("   (without --exam: what failed, and hints)"
                                                                  if exam else ""))
    if todo:
        _print_wrapped(f"Not attempted yet: {', '.join(todo)}. Write one (e.g. exercises/{EXERCISES[todo[0]].file}), "
                       "then run:", "")
        print(f"  python -m exercises check {todo[0]}")


# ----------------------------------------------------------------------------------------------
# compare
def _compare(args):
    _exercise(args.name)
    folder = _folder(args.dir)
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))  # the lessons import `common`
    from exercises._compare import CannotCompare, compare

    try:
        return compare(args.name, folder)
    except CannotCompare as problem:
        raise _UsageError(str(problem)) from None


def main(argv=None) -> int:
    """Run the command in argv (default: sys.argv[1:]); returns the exit status (0, 1 or 2)."""
    try:
        args = _parser().parse_args(argv)
        if args.command == "list":
            return _list(args)
        if args.command == "check":
            return _check(args)
        if args.command == "compare":
            return _compare(args)
        raise _UsageError("say what to do: python -m exercises list | check [NAME ...] | compare NAME")
    except _UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        sys.stdout.flush()
        print("\ninterrupted (Ctrl-C): checking stopped, no score", file=sys.stderr)
        return 130
