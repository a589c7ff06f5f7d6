"""Plain console output: a header, section banners, wrapped text, tensors, tables, insights.

No colours or special characters, so the output reads the same in any terminal or log file.
Numbers are rounded for reading: 4 significant digits.
"""
import platform
import sys
import textwrap

WIDTH = 88


def fmt(x, digits: int = 4) -> str:
    """A number rounded for reading: fmt(0.123456) -> '0.1235', fmt(12345.6) -> '1.235e+04'."""
    if hasattr(x, "item"):
        x = x.item()
    if isinstance(x, (bool, str, tuple, list)):
        return str(x)
    if isinstance(x, int):
        return f"{x:,}" if abs(x) >= 10_000 else str(x)
    return f"{x:.{digits}g}"


def header(title: str, device=None, reason: str = "", seed=None, threads=None, out_dir=None, quick=False):
    """The first lines of every lesson: title, versions, device (and why), seed, threads."""
    import torch

    print("=" * WIDTH)
    print(title + ("   [--quick: tiny sizes]" if quick else ""))
    print("=" * WIDTH)
    print(f"python {platform.python_version()} | torch {torch.__version__} | "
          f"device: {device} ({reason})")
    parts = []
    if seed is not None:
        parts.append(f"seed {seed}")
    if threads is not None:
        parts.append(f"{threads} CPU thread{'s' if threads != 1 else ''}")
    if out_dir is not None:
        parts.append(f"figures go to {out_dir}")
    if parts:
        print(" | ".join(parts))
    sys.stdout.flush()


def section(number, title: str):
    """A banner for section `number`."""
    print()
    print("-" * WIDTH)
    print(f"{number}. {title}")
    print("-" * WIDTH)


def explain(text: str, indent: int = 0):
    """Print a paragraph wrapped to the console width. Blank lines separate paragraphs."""
    prefix = " " * indent
    for paragraph in textwrap.dedent(text).strip().split("\n\n"):
        print(textwrap.fill(" ".join(paragraph.split()), WIDTH, initial_indent=prefix,
                            subsequent_indent=prefix))
        print()


def show_tensor(name: str, tensor, decimals: int = 3, max_rows: int = 8):
    """Print a tensor with its name and shape, rounded; large tensors are cut to `max_rows`."""
    import numpy as np
    import torch

    t = tensor.detach().cpu()
    print(f"{name}  shape={tuple(t.shape)}  dtype={str(t.dtype).replace('torch.', '')}")
    if t.dtype.is_floating_point:
        t = t.float()  # numpy has no bfloat16
    array = t.numpy()
    shown = array[:max_rows] if array.ndim >= 1 else array
    body = np.array2string(shown, precision=decimals, suppress_small=True, max_line_width=WIDTH,
                           floatmode="maxprec")
    print(textwrap.indent(body, "  "))
    if array.ndim >= 1 and array.shape[0] > max_rows:
        print(f"  ... ({array.shape[0] - max_rows} more rows)")


def table(rows, headers):
    """Print rows (lists of values) under headers, columns right-aligned, numbers via fmt()."""
    cells = [[h for h in headers]] + [[v if isinstance(v, str) else fmt(v) for v in row] for row in rows]
    widths = [max(len(str(r[i])) for r in cells) for i in range(len(headers))]
    for i, row in enumerate(cells):
        print("  " + "  ".join(str(v).rjust(w) for v, w in zip(row, widths)))
        if i == 0:
            print("  " + "  ".join("-" * w for w in widths))


def key_insights(insights):
    """The closing numbered list. Each insight should carry a number measured in this run; an insight
    that states a measured property is a common.claims.Claim, printed as DOES NOT HOLD when it broke."""
    from common import claims

    claims.insights[:] = list(insights)           # the tests check which insights held
    section("*", "Key insights")
    for i, text in enumerate(insights, 1):
        lines = textwrap.wrap(" ".join(str(text).split()), WIDTH - 4)
        print(f"{i:>2}. " + lines[0])
        for line in lines[1:]:
            print("    " + line)
    print()
