"""Tokens, digits and counts as text, for lesson 05's printed reports."""
import textwrap

import common
from lesson05_plumbing import lesson

TASK_TEXT = {
    "reverse": "reverse the digits: 3 1 4 -> 4 1 3",
    "copy": "copy the digits: 3 1 4 -> 3 1 4",
    "sort": "sort the digits: 3 1 4 -> 1 3 4",
    "sum": "write the sum of the digits: 3 1 4 -> 8 (9 9 9 -> 2 7)",
}


def show_tokens(row, keep_pad=False):
    """Tokens as text: digits as digits, PAD as '.', BOS/EOS by name; trailing PAD dropped."""
    L = lesson()
    names = {L.PAD: ".", L.BOS: "BOS", L.EOS: "EOS"}
    items = row.tolist()
    while items and items[-1] == L.PAD and not keep_pad:
        items.pop()
    return " ".join(names.get(t, str(t - L.FIRST_DIGIT)) for t in items)


def say(text: str):
    """Print a long line wrapped to the console width, indented by two spaces."""
    print(textwrap.fill(" ".join(text.split()), common.console.WIDTH, initial_indent="  ", subsequent_indent="    "))


def digits_text(digits):
    return " ".join(str(d) for d in digits) if digits else "(nothing)"


def count_text(n: int) -> str:
    """A possibly huge integer for reading: 1,000 or about 10^17."""
    return f"{n:,}" if n < 10 ** 12 else f"about 10^{len(str(n)) - 1}"
