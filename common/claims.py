"""Claims: every sentence a lesson prints about what it measured is checked in the same run.

A claim is a sentence, the numbers it rests on, and the condition under which it holds. When the
condition holds the lesson prints the sentence; when it does not (a learner's edit broke the
property), it prints a line starting with DOES NOT HOLD, the measured value and what the value
would be if the claim held, so the learner sees at once which property the edit broke.

    ok = common.claims.below("matches-pytorch", "our attention equals F.scaled_dot_product_attention",
                             worst, 1e-5, measured=f"largest difference {fmt(worst)}")
    ok.say()                                   # prints the sentence, or the DOES NOT HOLD line
    title = ok.title()                         # for a figure: the sentence, or DOES NOT HOLD ...
    common.key_insights([ok, ...])             # an insight built from a claim says when it broke

A comparison that NaN makes meaningless is False (NaN < 1e-5 is False), so a NaN never passes.
Every claim made in a run is kept in `made` (the tests read it to see which claims an edit broke).
"""
import math
import textwrap

BROKEN = "DOES NOT HOLD"
WIDTH = 88

made = []        # every Claim made since the last reset(), in order
insights = []    # the items of the last key_insights() list (Claims and plain sentences)


class Claim:
    """One checked statement. `holds` is the verdict of this run; str(claim) is what is printed."""

    def __init__(self, name: str, text: str, holds, measured: str = "", expected: str = "", hint: str = ""):
        self.name = name            # a short id ("matches-pytorch"): the tests name claims by it
        self.text = text            # the property, stated as it holds, with the numbers of this run
        self.holds = bool(holds)    # the condition, evaluated now
        self.measured = measured    # the value measured, in words ("largest difference 0.61")
        self.expected = expected    # what it would be if the claim held ("below 1e-05")
        self.hint = hint            # when broken: where to look
        made.append(self)

    def __bool__(self):
        return self.holds

    def __str__(self):
        if self.holds:
            return self.text
        parts = [f"{BROKEN}: {self.text.rstrip('.')}."]
        if self.measured or self.expected:
            parts.append(f"Measured: {self.measured or '?'}; if it held: {self.expected or '?'}.")
        if self.hint:                  # a sentence; a code name stays as it is written
            first = self.hint.split()[0]
            hint = self.hint[0].upper() + self.hint[1:] if first.isalpha() else self.hint
            parts.append(hint.rstrip(".") + ".")
        return " ".join(parts)

    def __repr__(self):
        return f"Claim({self.name!r}, holds={self.holds})"

    def restate(self, text: str) -> "Claim":
        """The same claim (name, verdict, numbers) in other words, e.g. for a key insight."""
        return Claim(self.name, text, self.holds, self.measured, self.expected, self.hint)

    def title(self) -> str:
        """A figure title built from the claim: the sentence, or DOES NOT HOLD with the numbers."""
        if self.holds:
            return self.text
        shown = "" if not self.measured or self.measured in self.text else f" ({self.measured})"
        return f"{BROKEN}: {self.text}{shown}"

    def say(self, indent: int = 2):
        """Print the claim wrapped to the console width (what a lesson's `say` does)."""
        print(textwrap.fill(" ".join(str(self).split()), WIDTH, initial_indent=" " * indent,
                            subsequent_indent=" " * (indent + 2)))
        return self


def reset():
    """Forget the claims made so far (a test runs several lessons in one process)."""
    made.clear()
    insights.clear()


def broken(claims=None):
    """The names of the claims that do not hold, in order."""
    return [c.name for c in (made if claims is None else claims) if not c.holds]


def _number(value) -> float:
    """A plain float (tensors and NumPy numbers too); anything else is NaN, which never passes."""
    try:
        return float(value.item() if hasattr(value, "item") else value)
    except (TypeError, ValueError):
        return math.nan


def _g(x) -> str:
    return f"{x:.4g}"


def check(name: str, holds, text: str, measured: str = "", expected: str = "", hint: str = "") -> Claim:
    """A claim whose condition the caller computed: check("rows-sum-to-1", err < 1e-6, "...", ...)."""
    return Claim(name, text, holds, measured, expected, hint)


def below(name: str, text: str, value, limit, measured: str = "", hint: str = "") -> Claim:
    """Holds when value < limit (a NaN never holds)."""
    v = _number(value)
    return Claim(name, text, v < limit, measured or _g(v), f"below {_g(limit)}", hint)


def at_most(name: str, text: str, value, limit, measured: str = "", hint: str = "") -> Claim:
    """Holds when value <= limit (a NaN never holds)."""
    v = _number(value)
    return Claim(name, text, v <= limit, measured or _g(v), f"{_g(limit)} or less", hint)


def above(name: str, text: str, value, limit, measured: str = "", hint: str = "") -> Claim:
    """Holds when value > limit (a NaN never holds)."""
    v = _number(value)
    return Claim(name, text, v > limit, measured or _g(v), f"above {_g(limit)}", hint)


def at_least(name: str, text: str, value, limit, measured: str = "", hint: str = "") -> Claim:
    """Holds when value >= limit (a NaN never holds)."""
    v = _number(value)
    return Claim(name, text, v >= limit, measured or _g(v), f"{_g(limit)} or more", hint)


def equal(name: str, text: str, value, wanted, measured: str = "", hint: str = "") -> Claim:
    """Holds when value == wanted (counts, tokens, answers)."""
    return Claim(name, text, value == wanted, measured or f"{value}", f"{wanted}", hint)


def near(name: str, text: str, value, wanted, tolerance, measured: str = "", hint: str = "") -> Claim:
    """Holds when |value - wanted| <= tolerance (a NaN never holds)."""
    v = _number(value)
    return Claim(name, text, abs(v - wanted) <= tolerance, measured or _g(v),
                 f"{_g(wanted)} (within {_g(tolerance)})", hint)


def every(name: str, text: str, parts, hint: str = "") -> Claim:
    """all_of() with the parts given as one list."""
    return all_of(name, text, *parts, hint=hint)


def _apart(k1: int, n1: int, k2: int, n2: int) -> bool:
    """Whether k1 of n1 and k2 of n2 differ beyond the noise: their 95% Wilson intervals do not overlap
    (the rule of common.report.differ)."""
    from common.stats import wilson_interval

    (low1, high1), (low2, high2) = wilson_interval(k1, n1), wilson_interval(k2, n2)
    return high1 < low2 or high2 < low1


def _share(k: int, n: int) -> str:
    from common.stats import wilson_interval

    low, high = wilson_interval(k, n)
    return f"{100 * k / n:.2f}% ({100 * low:.2f}-{100 * high:.2f})" if n else "no answers"


def noise(k1: int, n1: int, k2: int, n2: int) -> str:
    """Whether two shares differ beyond their noise, in words: 'a difference beyond the noise' when their
    95% Wilson intervals do not overlap, else 'a difference inside the noise (the 95% intervals overlap)'
    ('no difference' for equal counts). A difference inside the noise is said to be one, never a finding."""
    if (k1, n1) == (k2, n2):
        return "no difference"
    return ("a difference beyond the noise" if _apart(k1, n1, k2, n2)
            else "a difference inside the noise (the 95% intervals overlap)")


def share_above(name: str, text: str, k1: int, n1: int, k2: int, n2: int, hint: str = "") -> Claim:
    """Holds when the share k1 of n1 is above k2 of n2 beyond the noise (95% Wilson intervals apart)."""
    holds = n1 > 0 and n2 > 0 and k1 / n1 > k2 / n2 and _apart(k1, n1, k2, n2)
    return Claim(name, text, holds, f"{_share(k1, n1)} against {_share(k2, n2)}",
                 "the first above the second, their 95% intervals apart", hint)


def same(name: str, text: str, value, wanted, tolerance: float = 1e-5, hint: str = "") -> Claim:
    """Holds when two tensors (or numbers) agree: their largest absolute difference is below `tolerance`
    (a NaN never holds). The text gets the difference: same("rows-sum-to-1", "Each row sums to 1",
    weights.sum(-1), 1.0) prints 'Each row sums to 1 (largest difference 1.2e-07).'"""
    import torch

    worst = (torch.as_tensor(value) - torch.as_tensor(wanted)).abs().max().item()  # torch's max keeps a NaN
    return below(name, f"{text.rstrip('.')} (largest difference {_g(worst)}).", worst, tolerance, hint=hint)


def all_of(name: str, text: str, *parts: Claim, hint: str = "") -> Claim:
    """A claim that rests on claims made earlier in the run (a key insight, a figure title that sums
    them up): it holds when every part holds; when one does not, it shows what each broken part
    measured and what it would be if it held."""
    broken = [part for part in parts if not part.holds]
    return Claim(name, text, not broken, "; ".join(f"{p.name}: {p.measured}" for p in broken),
                 "; ".join(f"{p.name}: {p.expected}" for p in broken), hint)


def apart(high, low) -> bool:
    """Whether every value of `high` (one per seed) is above every value of `low`: a difference
    larger than what the seed alone moves. A NaN never is."""
    high, low = [_number(v) for v in high], [_number(v) for v in low]
    return bool(high and low) and all(h > l for h in high for l in low)


def raises(name: str, text: str, action, error=Exception, hint: str = "") -> Claim:
    """Holds when action() raises `error` (a refusal the lesson promises); `{error}` in the text is
    replaced by the error's type and message."""
    try:
        action()
        message = ""
    except error as exc:
        message = f"{type(exc).__name__}: {exc}"
    return Claim(name, text.replace("{error}", message or error.__name__), bool(message), "no error",
                 f"a {error.__name__}", hint)


def versus(a, b, b_name: str) -> str:
    """Words for how one measurement over seeds (a) compares with another (b): above or below b_name's
    in every seed, or within the seed spread, with both ranges. A difference inside the noise is never
    stated as a finding."""
    if apart(b, a):
        return f"below {b_name} in every seed"
    if apart(a, b):
        return f"above {b_name} in every seed"
    return f"within the seed spread ({_seed_range(a)} against {_seed_range(b)})"


def _seed_range(values) -> str:
    """'0.515 (0.47-0.56)': the mean over the seeds and their range, as common.report.seed_range prints it."""
    v = [_number(x) for x in values]
    if any(math.isnan(x) for x in v):
        return "nan"
    mean = f"{sum(v) / len(v):.3g}"
    return mean if len(v) == 1 else f"{mean} ({min(v):.2g}-{max(v):.2g})"


def figure_title(name: str, text: str, *parts: Claim, width: int = 60) -> str:
    """A figure title that states a property resting on claims made in the run (all_of): the text when
    they hold, else DOES NOT HOLD with the text and what was measured, each line wrapped to `width`
    characters so that it stays above its own panel."""
    lines = all_of(name, text, *parts).title().split("\n")
    return "\n".join(wrapped for line in lines for wrapped in textwrap.wrap(line, width) or [""])
