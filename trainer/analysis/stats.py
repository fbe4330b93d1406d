"""Mean, 95% interval and n over repeats: the one place the analysis turns seeds into an answer.

The interval is Student's t over the repeats (seeds, or seed-paired differences): with 3 seeds a
bootstrap has only 10 distinct resamples and understates the spread, the t-interval does not. One
repeat has no interval, and says so rather than showing a zero-width one.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass

from scipy.special import stdtrit

CONFIDENCE = 0.95
INTERVAL = "95% t-interval over seeds"


@dataclass(frozen=True)
class Estimate:
    """``mean`` of ``n`` repeats with its 95% interval ``[lo, hi]`` (nan when ``n`` < 2)."""

    mean: float
    lo: float
    hi: float
    n: int

    @property
    def has_interval(self) -> bool:
        return self.n >= 2 and math.isfinite(self.lo)

    @property
    def excludes_zero(self) -> bool | None:
        """Whether the interval lies wholly on one side of 0; None without an interval."""
        return (self.lo > 0 or self.hi < 0) if self.has_interval else None

    def text(self, fmt=lambda v: f"{v:.3g}", sep: str = " ") -> str:
        """``0.53 [0.41, 0.65] n=3``; ``0.53 n=1 (no interval)``; blank without a value."""
        if self.n == 0:
            return ""
        if not self.has_interval:
            return f"{fmt(self.mean)}{sep}n={self.n} (no interval)"
        return f"{fmt(self.mean)}{sep}[{fmt(self.lo)}, {fmt(self.hi)}]{sep}n={self.n}"


def estimate(values: Iterable[float]) -> Estimate:
    """The mean of the finite values with its two-sided 95% t-interval."""
    values = [float(v) for v in values if v is not None and math.isfinite(v)]
    n = len(values)
    if n == 0:
        return Estimate(math.nan, math.nan, math.nan, 0)
    mean = statistics.fmean(values)
    if n == 1:
        return Estimate(mean, math.nan, math.nan, 1)
    half = float(stdtrit(n - 1, 0.5 + CONFIDENCE / 2)) * statistics.stdev(values) / math.sqrt(n)
    return Estimate(mean, mean - half, mean + half, n)


def repeats_phrase(counts: Iterable[int], unit: str = "seeds") -> str:
    """What a legend says a mean is over: "3 seeds", "2-3 seeds", "1 seed" -- the real count."""
    counts = sorted({int(c) for c in counts if c > 0})
    if not counts:
        return f"0 {unit}"
    span = str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
    return f"{span} {unit.removesuffix('s') if counts == [1] else unit}"
