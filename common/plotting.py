"""Figures: always saved as PNG in the output folder; opened in a window only with --show.

matplotlib is imported on first use (it costs about a second), with the non-interactive "Agg"
backend unless a window was asked for and a display exists. So a lesson never blocks or warns on
a server without a screen. A broken MPLBACKEND setting gives a one-line warning and Agg.
"""
import io
import os
import sys
from pathlib import Path

from common.files import write_bytes

DPI = 120
_state = {"plt": None, "interactive": False}


def _display_available() -> bool:
    if sys.platform.startswith("linux"):
        return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    return True  # Windows and macOS have a screen unless told otherwise


def _forget_matplotlib():
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        del sys.modules[name]


def _import_pyplot(interactive: bool):
    """matplotlib.pyplot with Agg (or the user's backend when `interactive`); falls back to Agg,
    with a warning, when MPLBACKEND names no backend or the interactive one cannot start."""
    try:
        import matplotlib                  # raises ValueError for e.g. MPLBACKEND=nonsense
        if not interactive:
            matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        return plt, interactive
    except (ValueError, ImportError) as exc:
        bad = os.environ.pop("MPLBACKEND", None)
        _forget_matplotlib()
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        what = f"MPLBACKEND={bad!r} is not a usable matplotlib backend" if bad else \
            f"the window backend could not start ({exc.__class__.__name__})"
        print(f"warning: {what}; figures are saved as PNG without windows", file=sys.stderr)
        return plt, False


def pyplot(show: bool = False):
    """matplotlib.pyplot, imported once; interactive only when `show` and a display exists."""
    if _state["plt"] is None:
        interactive = bool(show and _display_available())
        plt, interactive = _import_pyplot(interactive)
        _state["plt"], _state["interactive"] = plt, interactive
        if show and not interactive:
            print("note: --show ignored: no display found (figures are still saved as PNG)")
    return _state["plt"]


def new_figure(nrows: int = 1, ncols: int = 1, figsize=(6, 4.5), show: bool = False, **kwargs):
    """plt.subplots with our defaults. Returns (fig, axes)."""
    plt = pyplot(show)
    return plt.subplots(nrows, ncols, figsize=figsize, **kwargs)


def save_figure(fig, out_dir, name: str, show: bool = False) -> Path:
    """Save `fig` as out_dir/name (PNG, written atomically), print where, show it if asked, close it.

    A file that cannot be written (full disk, a folder of that name) raises common.UserError with
    one clear line; the figure is closed either way. Returns the path.
    """
    plt = pyplot(show)
    path = Path(out_dir) / name
    try:
        if fig.get_layout_engine() is None:     # figures made with layout="constrained" lay out themselves
            fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=DPI)
        write_bytes(path, buffer.getvalue())
        print(f"  saved figure: {path}")
        if show and _state["interactive"]:
            plt.show()
    finally:
        plt.close(fig)
    return path
