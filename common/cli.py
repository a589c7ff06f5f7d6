"""Command-line flags shared by all lessons, and one-line errors for user mistakes.

A mistake by the user (a bad flag value, an impossible size, an unwritable folder) is reported
as one line on stderr, naming the value and what would work, with exit status 2. No traceback:
tracebacks are for bugs in our code.
"""
import argparse
import functools
import os
import sys
import tempfile
from pathlib import Path

from common import files, process
from common.errors import UserError

DEVICES = ("auto", "cpu", "cuda", "mps")
# --seed: a signed 64-bit number. torch.manual_seed accepts -2**63 .. 2**64 - 1; the signed range
# leaves room for the small offsets some lessons add to the seed (seed + 1, ...).
SEED_RANGE = (-2**63, 2**63 - 1)


def fail(message: str, status: int = 2):
    """Print `error: <message>` on stderr and exit with `status` (2: a usage error)."""
    process.say(f"error: {message}")
    sys.exit(status)


class _OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad flag gives one line (no usage block) and exit status 2."""

    def error(self, message):
        prog = Path(self.prog).name
        fail(f"{message} (see: python {prog} --help)")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each flag's default, except None and False (a flag whose help already says it)."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def _int_arg(text):
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


def plain_parser(doc: str) -> argparse.ArgumentParser:
    """An argparse parser whose mistakes give one `error:` line and exit 2 (no usage block)."""
    first_line = (doc or "").strip().splitlines()[0] if doc else None
    return _OneLineParser(description=first_line, formatter_class=_HelpFormatter)


def lesson_parser(doc: str, quick_help: str = "tiny sizes, for a smoke test") -> argparse.ArgumentParser:
    """A parser with the flags every lesson accepts. Lessons add their own flags to it."""
    first_line = (doc or "").strip().splitlines()[0] if doc else None
    parser = _OneLineParser(
        description=first_line,
        formatter_class=_HelpFormatter,
    )
    common = parser.add_argument_group("flags every lesson accepts")
    common.add_argument("--device", default="auto", choices=DEVICES,
                        help="where tensors live; auto = CUDA if it works, else MPS, else CPU")
    common.add_argument("--threads", type=_int_arg, default=None,
                        help="CPU threads for torch (default: $OMP_NUM_THREADS if set, else 1, "
                             "which is fastest for these small models on a busy laptop)")
    common.add_argument("--seed", type=_int_arg, default=0, help="random seed (random, numpy, torch)")
    common.add_argument("--out-dir", default=".", help="folder for the PNGs (and other outputs)")
    common.add_argument("--quick", action="store_true", help=quick_help)
    common.add_argument("--show", action="store_true", help="also open each figure in a window")
    return parser


def check_positive(name: str, value, allow_zero: bool = False):
    """Raise UserError unless value > 0 (or >= 0)."""
    if value is None:
        return
    if value < 0 or (value == 0 and not allow_zero):
        need = "0 or more" if allow_zero else "a positive number"
        raise UserError(f"{name} must be {need}, got {value}")


def check_out_dir(out_dir: str) -> Path:
    """Create the output folder if needed and prove it is writable; UserError if not."""
    if not str(out_dir).strip():                 # '' would quietly mean the current folder
        raise UserError(f"--out-dir {out_dir!r} names no folder; pass one, e.g. --out-dir . (this folder) or "
                        "--out-dir ./outputs")
    try:
        path = Path(out_dir).expanduser()
    except RuntimeError:                       # '~someone/x' for a user that does not exist
        raise UserError(f"--out-dir {out_dir!r}: cannot find that home folder; pass a folder that exists, "
                        "e.g. --out-dir ./outputs") from None
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write_test_"):
            pass
    except OSError as exc:
        reason = exc.strerror or exc.__class__.__name__
        raise UserError(f"--out-dir {out_dir!r} is not a writable folder ({reason}); "
                        "pass a folder you can write to, e.g. --out-dir ./outputs") from None
    return path


def check_threads(threads: int, source: str) -> int:
    """`threads` if it is from 1 to the number of cores; UserError naming `source` otherwise.

    More threads than cores only makes the threads wait for each other (and tens of thousands
    crash torch while it creates them), so the limit is the core count.
    """
    cores = os.cpu_count() or 1
    if threads < 1 or threads > cores:
        raise UserError(f"{source} asks for {threads} CPU threads; this machine has {cores} core"
                        f"{'s' if cores != 1 else ''}: use 1 to {cores} (1 is fastest for these small models)")
    return threads


def threads_from_environment():
    """$OMP_NUM_THREADS as a checked whole number, or None when it is not set. A value OpenMP cannot
    use was taken out of the environment before torch was imported (common.process); it is named here."""
    text = os.environ.get("OMP_NUM_THREADS", process.unusable_thread_setting)
    if text is None:
        return None
    if not process.usable_thread_count(text):
        raise UserError(f"OMP_NUM_THREADS={text!r} is not a positive whole number; unset it or set it to e.g. 1")
    return check_threads(int(text), f"OMP_NUM_THREADS={text.strip()}")


def parse_args(parser: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    """Parse flags and check the common ones. Bad values exit with one line and status 2."""
    args = parser.parse_args(argv)
    try:
        if args.threads is not None:
            check_threads(args.threads, f"--threads {args.threads}")
        else:
            args.threads = threads_from_environment()
        if args.seed is not None and not SEED_RANGE[0] <= args.seed <= SEED_RANGE[1]:
            raise UserError(f"--seed {args.seed} is out of range for torch's random generator; use a whole "
                            f"number from {SEED_RANGE[0]} to {SEED_RANGE[1]}, e.g. --seed 0")
        args.out_dir = check_out_dir(args.out_dir)
    except UserError as exc:
        fail(str(exc))
    return args


def flag_or_knob(args, dest: str, knob: str, knob_value):
    """(value, label) of a setting that a flag can override: the flag's value and '--flag VALUE' when
    the flag was given (its default is None), else the knob's value and 'KNOB = VALUE'. Errors name
    the label, so a learner who edited a knob is told about the knob, not a flag never passed."""
    value = getattr(args, dest, None)
    if value is not None:
        return value, f"--{dest.replace('_', '-')} {value}"
    return knob_value, f"{knob} = {knob_value!r}"


def interruption_name(exc=None) -> str:
    """What stopped the run, for one line: 'Ctrl-C' or 'SIGTERM' (both raise KeyboardInterrupt;
    common.process records which signal it was)."""
    return process.interruption()


def entry_point(main):
    """Decorate a main(argv=None): a UserError becomes one `error:` line and exit 2; Ctrl-C or SIGTERM
    ends with one line naming what this run kept (all of it complete, or marked partial) and exit
    130 or 143; output piped into `head` ends quietly when `head` stops reading (common.process)."""

    @functools.wraps(main)
    def run(argv=None):
        for_good = getattr(sys.modules.get("__main__"), "main", None) is run    # python lesson.py, python -m ...
        process.begin_run()
        files.start_run()
        try:
            with process.console():
                try:
                    try:
                        if sys.stdout is None:
                            raise UserError("standard output is closed (>&-); leave it open, or send it to a "
                                            "file (> run.log) or to /dev/null")
                        result = main(argv)
                        sys.stdout.flush()             # a closed pipe shows now, not as Python exits
                        return result
                    except UserError as exc:
                        fail(str(exc))
                    except KeyboardInterrupt:
                        interrupted(for_good)
                except KeyboardInterrupt:              # a second Ctrl-C while the first one was handled
                    interrupted(for_good)
                except SystemExit:                     # e.g. a grade's status: what stdout holds goes out first
                    process.flush_quietly()
                    raise
                except process.ConsoleGone as exc:
                    sys.exit(process.console_gone(exc))
        finally:
            if not for_good:
                process.end_run()

    return run


def interrupted(for_good: bool):
    """Ctrl-C or SIGTERM: one line naming what was kept, exit 130 or 143; further signals are ignored."""
    process.stopping(for_good)
    name = process.interruption()
    process.say(f"\ninterrupted ({name}); {files.kept_text()}")
    sys.exit(process.EXIT_STATUS[name])
