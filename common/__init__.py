"""Helpers shared by every lesson: flags, device choice, seeding, console output, plots.

Each lesson does, in `main()`:

    parser = common.lesson_parser(__doc__)          # the flags every lesson accepts
    args = common.parse_args(parser, argv)           # bad values -> one line, exit 2
    device = common.setup(args, "Lesson title")      # threads, seed, device, header

and then calls its sections; `@common.entry_point` on main() turns a UserError into one line and
exit 2, and Ctrl-C (or SIGTERM) into one line and exit 130 (143). Outputs are written atomically
(common.files). Components of earlier lessons come from `load_lesson(n)`.

Import `common` before torch: common.process takes an $OMP_NUM_THREADS that torch's OpenMP would
warn about out of the environment first (parse_args then reports it in one line).
"""
from common import process  # noqa: I001  (first: before anything imports torch)
from common.cli import (UserError, check_positive, entry_point, fail, flag_or_knob, interruption_name, lesson_parser,
                        parse_args, plain_parser)
from common.console import (
    explain,
    fmt,
    header,
    key_insights,
    section,
    show_tensor,
    table,
)
from common.device import choose_device
from common.files import atomic_write, write_bytes, write_json
from common.lessons import load_lesson
from common.plotting import new_figure, pyplot, save_figure
from common.progress import progress
from common.setup import quick_note, seed_everything, set_threads, setup
from common.knobs import number, require, whole, whole_fields, whole_numbers
from common.timing import best_time
from common import checkpoints, claims, flags, knobs, report, stats, timing  # noqa: E402  (modules: common.flags.add_dataclass_flags, ...)

__all__ = [
    "UserError",
    "atomic_write",
    "best_time",
    "check_positive",
    "choose_device",
    "entry_point",
    "explain",
    "fail",
    "flag_or_knob",
    "fmt",
    "header",
    "interruption_name",
    "key_insights",
    "lesson_parser",
    "load_lesson",
    "new_figure",
    "number",
    "parse_args",
    "plain_parser",
    "progress",
    "require",
    "pyplot",
    "quick_note",
    "save_figure",
    "section",
    "seed_everything",
    "set_threads",
    "setup",
    "show_tensor",
    "table",
    "write_bytes",
    "whole",
    "whole_fields",
    "whole_numbers",
    "write_json",
]
