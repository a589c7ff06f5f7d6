"""Checks of the settings a learner edits: a knob (or flag) that cannot work stops the lesson with one line.

Each check returns the value when it is fine and raises common.UserError otherwise; `@common.entry_point`
turns that into one `error: ...` line and exit status 2. The message names the setting as the learner
wrote it: `name` is a knob's name ("D_MODEL", the message then shows `D_MODEL = 8.0`), or a label from
common.flag_or_knob ("--d-model 8" or "D_MODEL = 8"), used as it is.

    require(d_model % n_heads == 0, f"{h_label} must divide {d_label}")
    d_model = whole(D_MODEL, "D_MODEL", low=1, high=1024)      # an int, not 8.0 and not True
    p = number(DROPOUT, "DROPOUT", low=0, high=1, high_open=True)
    lengths = whole_numbers(COST_LENGTHS, "COST_LENGTHS", low=1, distinct=2)
    study = whole_fields(DEPTH_STUDY, "DEPTH_STUDY", d_model=1, T=2)  # a dict with those whole numbers
"""
import numbers

from common.errors import UserError


def require(ok, message: str):
    """Raise UserError(message) unless `ok`: a setting that cannot work, in one line."""
    if not ok:
        raise UserError(message)


def _label(value, name: str) -> str:
    return name if name.startswith("--") or " = " in name else f"{name} = {value!r}"


def _is_whole(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _range_text(low, high, low_open=False, high_open=False) -> str:
    if low is not None and high is not None:
        if not (low_open or high_open):
            return f"from {low:g} to {high:g}"
        return f"{'above' if low_open else 'at least'} {low:g} and {'below' if high_open else 'at most'} {high:g}"
    if low is not None:
        return f"above {low:g}" if low_open else f"of {low:g} or more"
    if high is not None:
        return f"below {high:g}" if high_open else f"of {high:g} or less"
    return ""


def whole(value, name: str, low=None, high=None, hint: str = ""):
    """`value` if it is a whole number (an int, not a bool or 8.0) from low to high; else UserError."""
    if not _is_whole(value) or (low is not None and value < low) or (high is not None and value > high):
        raise UserError(f"{_label(value, name)} must be a whole number {_range_text(low, high)}".rstrip()
                        + (f"; {hint}" if hint else ""))
    return value


def number(value, name: str, low=None, high=None, low_open=False, high_open=False, hint: str = ""):
    """`value` if it is a real number (int or float, not a bool, not NaN) in the range; else UserError.
    low_open / high_open leave the bound itself out (e.g. a probability below 1)."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and value == value
    ok = ok and (low is None or (value > low if low_open else value >= low))
    ok = ok and (high is None or (value < high if high_open else value <= high))
    if not ok:
        raise UserError(f"{_label(value, name)} must be a number {_range_text(low, high, low_open, high_open)}"
                        .rstrip() + (f"; {hint}" if hint else ""))
    return value


def whole_numbers(values, name: str, low=None, high=None, distinct: int = 1, hint: str = ""):
    """`values` as a list if it is a list or tuple holding at least `distinct` different whole numbers,
    each from low to high; else UserError."""
    ok = isinstance(values, (list, tuple)) and all(_is_whole(v) for v in values)
    ok = ok and all((low is None or v >= low) and (high is None or v <= high) for v in values)
    if not ok or len(set(values)) < distinct:
        need = f"{distinct} or more different" if distinct > 1 else "1 or more"
        raise UserError(f"{_label(values, name)} must hold {need} whole numbers {_range_text(low, high)}"
                        .rstrip() + (f"; {hint}" if hint else ""))
    return list(values)


def whole_fields(mapping, name: str, **lows):
    """`mapping` if it is a dict whose keys (the names in `lows`) hold whole numbers of at least their
    low, e.g. whole_fields(STUDY, "STUDY", d_model=1, T=2); else UserError naming STUDY['T']."""
    example = ", ".join(f"{key}={low}" for key, low in lows.items())
    require(isinstance(mapping, dict), f"{_label(mapping, name)} must be a dict, e.g. dict({example})")
    for key, low in lows.items():
        whole(mapping.get(key), f"{name}[{key!r}]", low=low)
    return mapping
