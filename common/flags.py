"""Command-line flags made from a dataclass's fields, for configs with many hyperparameters.

    add_dataclass_flags(group, TrainConfig(), {"--lr": ("lr", "peak learning rate"), ...})
    given = typed_values(args, table)       # {"lr": 0.01} for the flags the user typed

Each flag takes its type and default from the dataclass field. Flags that were not typed are absent
from the parsed args (argparse.SUPPRESS), so code can tell a typed value from a default: that is
what lets a checkpoint's settings win over defaults but lose to what the user typed.
"""
import argparse


def whole_number(text):
    """argparse type: an int, with a one-line message for anything else."""
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


def number(text):
    """argparse type: a float, with a one-line message for anything else."""
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


TYPES = {int: whole_number, float: number, str: str}


def add_dataclass_flags(group, defaults, table, choices=None, default_notes=None):
    """One flag per entry of `table` {flag: (field, help)}. choices: {field: allowed values};
    default_notes: {field: text shown in --help instead of the plain default (e.g. per task)}."""
    choices, default_notes = choices or {}, default_notes or {}
    for flag, (name, text) in table.items():
        default = getattr(defaults, name)
        shown = f"{default}; {default_notes[name]}" if default_notes.get(name) else default
        extra = {"choices": choices[name], "metavar": None} if choices.get(name) else {"metavar": flag[2:].upper()}
        group.add_argument(flag, dest=name, type=TYPES[type(default)], default=argparse.SUPPRESS,
                           help=f"{text} (default: {shown})", **extra)


def typed_values(args, table) -> dict:
    """{field: value} for the flags of `table` that were typed."""
    return {name: getattr(args, name) for name, _ in table.values() if hasattr(args, name)}


def int_list(flag: str, text: str, low: int = 1, high: int | None = None, why: str = "") -> list:
    """'4,1,2' -> [1, 2, 4] (sorted, each once). common.UserError naming the flag and the range
    that works for anything else; `why` explains the upper limit."""
    from common.errors import UserError

    allowed = f"from {low} to {high}" if high is not None else f"of {low} or more"
    values = set()
    for item in str(text).split(","):
        try:
            value = int(item.strip())
        except ValueError:
            raise UserError(f"{flag} {text!r}: {item.strip()!r} is not a whole number; give whole numbers "
                            f"{allowed} separated by commas, e.g. {flag} {low},{low + 1}") from None
        if value < low or (high is not None and value > high):
            raise UserError(f"{flag}: {value} is out of range; use whole numbers {allowed}{why}")
        values.add(value)
    return sorted(values)
