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
from statistics import NormalDist

INTERVAL = "95% t-interval over seeds"

# Student's t 0.975 quantiles for 1-30 degrees of freedom, then the Cornish-Fisher expansion
# (within 2e-6 beyond 30): scipy.special gives the same, but importing it costs a second of
# every elab-analyze call.
_T975 = (12.706205, 4.302653, 3.182446, 2.776445, 2.570582, 2.446912, 2.364624, 2.306004,
         2.262157, 2.228139, 2.200985, 2.178813, 2.160369, 2.144787, 2.131450, 2.119905,
         2.109816, 2.100922, 2.093024, 2.085963, 2.079614, 2.073873, 2.068658, 2.063899,
         2.059539, 2.055529, 2.051831, 2.048407, 2.045230, 2.042272)


def t_quantile(dof: int) -> float:
    """The two-sided 95% quantile of Student's t with ``dof`` degrees of freedom."""
    if dof <= len(_T975):
        return _T975[dof - 1]
    z = NormalDist().inv_cdf(0.975)
    return (z + (z**3 + z) / (4 * dof) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * dof**2)
            + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * dof**3))


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
    half = t_quantile(n - 1) * statistics.stdev(values) / math.sqrt(n)
    return Estimate(mean, mean - half, mean + half, n)


def repeats_phrase(counts: Iterable[int], unit: str = "seeds") -> str:
    """What a legend says a mean is over: "3 seeds", "2-3 seeds", "1 seed" -- the real count."""
    counts = sorted({int(c) for c in counts if c > 0})
    if not counts:
        return f"0 {unit}"
    span = str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
    return f"{span} {unit.removesuffix('s') if counts == [1] else unit}"
