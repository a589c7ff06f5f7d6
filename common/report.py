"""How the lessons report what they measured: a share with its 95% interval, whether two shares differ,
and a mean over seeds with its range.

Built on common.stats.wilson_interval. Two shares are called different only when their 95% intervals
do not overlap: a cautious rule, so that a difference of a few answers is never reported as a finding.
A mean over seeds comes with the seeds' range, so that a reader sees how much the seed alone moves it.
"""
import torch

from common.console import fmt
from common.stats import wilson_interval


def percent(k: int, n: int) -> str:
    """'13.58% (12.95-14.17)': k of n as a percentage, with its 95% Wilson interval."""
    low, high = wilson_interval(k, n)
    return f"{100 * k / n:.2f}% ({100 * low:.2f}-{100 * high:.2f})" if n else "no answers"


def differ(k1: int, n1: int, k2: int, n2: int) -> bool:
    """Whether k1 of n1 and k2 of n2 differ by more than the noise: their 95% intervals do not overlap."""
    (low1, high1), (low2, high2) = wilson_interval(k1, n1), wilson_interval(k2, n2)
    return high1 < low2 or high2 < low1


def seed_range(values) -> str:
    """'0.515 (0.47-0.56)': the mean of one number measured with several seeds (a tensor or a list),
    and the range over the seeds; just the number when there is one seed."""
    values = torch.as_tensor(values, dtype=torch.float64).flatten()  # torch's min and max keep a NaN
    mean = fmt(values.mean().item(), 3)
    return mean if len(values) == 1 else f"{mean} ({fmt(values.min().item(), 2)}-{fmt(values.max().item(), 2)})"
