"""A progress bar with the course's defaults, for anything that makes a learner wait.

    for run in common.progress(runs, desc="ablations", unit="run"):
        ...
    bar.write(text) prints a line above the bar without breaking it.

The bar shows in a terminal only (not in a log file or a captured test) and disappears when done,
so a finished run's output reads the same with or without it.
"""


def progress(iterable=None, total=None, desc="", unit="step", initial=0, quiet=False):
    """tqdm(...) with disable=None (terminal only; quiet=True: never) and leave=False."""
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial, disable=True if quiet else None,
                leave=False, dynamic_ncols=True)
