"""Small statistics for honest claims: how uncertain a share is, whether two counts differ.

A share measured on n examples is only known to within its binomial noise: 996 of 1000 right is
compatible with a true rate from about 0.990 to 0.998. So a difference of 2 or 3 answers in 1000
is not a finding. These helpers put numbers on that.
"""
import math


def wilson_interval(k: int, n: int, z: float = 1.96):
    """The 95% (z = 1.96) Wilson score interval of a share k / n: (low, high)."""
    if n <= 0:
        return (0.0, 1.0)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def sign_test(wins: int, losses: int) -> float:
    """Two-sided p-value that `wins` vs `losses` paired changes (ties dropped) differ only by chance:
    an exact binomial test with p = 1/2 (McNemar's exact test for two decoders on one test set)."""
    n = wins + losses
    if n == 0:
        return 1.0
    k = min(wins, losses)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def share_text(k: int, n: int) -> str:
    """'996 of 1000 = 0.996 (0.990-0.998)': a count, its share and its 95% interval."""
    low, high = wilson_interval(k, n)
    return f"{k} of {n} = {k / n:.3f} ({low:.3f}-{high:.3f})" if n else "0 of 0"
