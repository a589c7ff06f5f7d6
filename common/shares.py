"""Shares of answers as the lessons print them: a percentage with its 95% interval, and whether two differ.

Built on common.stats.wilson_interval. Two shares are called different only when their 95% intervals
do not overlap: a cautious rule, so that a difference of a few answers is never reported as a finding.
"""
from common.stats import wilson_interval


def percent(k: int, n: int) -> str:
    """'13.58% (12.95-14.17)': k of n as a percentage, with its 95% Wilson interval."""
    low, high = wilson_interval(k, n)
    return f"{100 * k / n:.2f}% ({100 * low:.2f}-{100 * high:.2f})" if n else "no answers"


def differ(k1: int, n1: int, k2: int, n2: int) -> bool:
    """Whether k1 of n1 and k2 of n2 differ by more than the noise: their 95% intervals do not overlap."""
    (low1, high1), (low2, high2) = wilson_interval(k1, n1), wilson_interval(k2, n2)
    return high1 < low2 or high2 < low1
