"""Figures: always saved as PNG in the output folder; opened in a window only with --show.

matplotlib is imported on first use (it costs about a second), with the non-interactive "Agg"
backend unless a window was asked for and a display exists. So a lesson never blocks or warns on
a server without a screen.
"""
import os
import sys
from pathlib import Path

DPI = 120
_state = {"plt": None, "interactive": False}


def _display_available() -> bool:
    if sys.platform.startswith("linux"):
        return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    return True  # Windows and macOS have a screen unless told otherwise


def pyplot(show: bool = False):
    """matplotlib.pyplot, imported once; interactive only when `show` and a display exists."""
    if _state["plt"] is None:
        import matplotlib

        interactive = bool(show and _display_available())
        if not interactive:
            matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        _state["plt"], _state["interactive"] = plt, interactive
        if show and not interactive:
            print("note: --show ignored: no display found (figures are still saved as PNG)")
    return _state["plt"]


def new_figure(nrows: int = 1, ncols: int = 1, figsize=(6, 4.5), show: bool = False, **kwargs):
    """plt.subplots with our defaults. Returns (fig, axes)."""
    plt = pyplot(show)
    return plt.subplots(nrows, ncols, figsize=figsize, **kwargs)


def save_figure(fig, out_dir, name: str, show: bool = False) -> Path:
    """Save `fig` as out_dir/name (PNG), print where, show it if asked, close it. Returns the path."""
    plt = pyplot(show)
    path = Path(out_dir) / name
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    print(f"  saved figure: {path}")
    if show and _state["interactive"]:
        plt.show()
    plt.close(fig)
    return path
