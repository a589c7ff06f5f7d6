"""Small figure helpers the lessons share (matplotlib's tick machinery, kept out of the lessons)."""
from matplotlib.ticker import LogLocator, NullFormatter


def log_axis(ax, axis: str = "y", subs=(1, 2, 5)):
    """Make one axis of `ax` logarithmic, with ticks at subs x powers of 10 (0.1, 0.2, 0.5, 1, ...)
    labelled as plain numbers, and unlabelled minor ticks."""
    side = ax.yaxis if axis == "y" else ax.xaxis
    (ax.set_yscale if axis == "y" else ax.set_xscale)("log")
    side.set_major_locator(LogLocator(subs=subs))
    side.set_major_formatter("{x:g}")
    side.set_minor_formatter(NullFormatter())
