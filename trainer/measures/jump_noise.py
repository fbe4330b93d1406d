"""The noise models of the jump detector (:mod:`trainer.measures.jumps`): binomial for
accuracies, Poisson for counts, and for series without a model (topology, weights) the
autocorrelation and random-walk drift of their own record. Plain Python on the few values each
test looks at: they run for every series at every evaluation, where numpy's per-call overhead on
16 numbers would dominate."""

from __future__ import annotations

import math
import statistics
from functools import lru_cache

from scipy import stats

#: 1 / Phi^-1(3/4): turns a median absolute deviation into a Gaussian standard deviation.
MAD_TO_SD = 1.4826
#: Largest lag-1 autocorrelation believed from a short old level: beyond it, the estimate is the
#: trend's curvature, not noise, and the inflation would hide every change.
MAX_AUTOCORRELATION = 0.8


def binomial_variance(p: float, n: int | None) -> float:
    """Variance of an accuracy measured on n items, with the Agresti-Coull adjustment.

    The adjustment (two successes and two failures added) keeps the variance above zero at an
    accuracy of exactly 0 or 1, where a single right answer would otherwise look infinitely
    significant.
    """
    if n is None:
        return 0.0
    adjusted = (min(max(p, 0.0), 1.0) * n + 2.0) / (n + 4.0)
    return adjusted * (1.0 - adjusted) / n


def count_variance(value: float) -> float:
    """Variance of a count (graph components, H1 bars) as a Poisson's: its mean, at least 1.

    A count that sat at 1 has no spread of its own, so without this floor a move to 5 would be
    scored in thousands of standard errors; a Poisson count of 1 moves by 1 or 2 by chance.
    """
    return max(abs(value), 1.0)


def is_count(values: list[float], n_evals: list[int | None]) -> bool:
    """A series is count-valued when it has no binomial model and every value is an integer."""
    return all(n is None for n in n_evals) and all(float(v).is_integer() for v in values)


def noise_variance(value: float, n_eval: int | None, count: bool) -> float:
    """The noise model's variance of one value: binomial for an accuracy on ``n_eval`` items,
    Poisson for a count, none otherwise (the history's own spread is used)."""
    if count:
        return count_variance(value)
    return binomial_variance(value, n_eval)


def mad(x: list[float]) -> float:
    centre = statistics.median(x)
    return statistics.median([abs(v - centre) for v in x])


def autocorrelation(residual: list[float]) -> float:
    """Lag-1 autocorrelation of a residual series, clipped to [0, ``MAX_AUTOCORRELATION``]."""
    if len(residual) < 4:
        return 0.0
    centre = sum(residual) / len(residual)
    r = [v - centre for v in residual]
    denominator = sum(v * v for v in r)
    if denominator <= 0:
        return 0.0
    rho = sum(a * b for a, b in zip(r, r[1:])) / denominator
    return min(max(rho, 0.0), MAX_AUTOCORRELATION)


def drift_variance(values: list[float]) -> float:
    """Per-evaluation variance of a random-walk level under white noise, from a series' record:
    the k-evaluation changes of a random walk plus noise have variance k q + 2 s^2, so
    q = (Var(4-changes) - Var(1-changes)) / 3 (robust variances, about their median change so
    that a steady trend is not mistaken for a wander)."""
    if len(values) < 8:
        return 0.0

    def variance(k: int) -> float:
        changes = [b - a for a, b in zip(values, values[k:])]
        return (MAD_TO_SD * mad(changes)) ** 2

    return max(0.0, (variance(4) - variance(1)) / 3)


@lru_cache(maxsize=256)
def t_threshold(z: float, dof: int) -> float:
    """The Student-t quantile with ``dof`` degrees of freedom of the normal tail beyond ``z``."""
    return float(stats.t.isf(stats.norm.sf(z), max(dof, 1)))


def residual_sd(x: list[float], y: list[float]) -> float:
    """The residual sd of a least-squares line, in plain Python (see ``_trigger_z``)."""
    n = len(x)
    x_mean, y_mean = sum(x) / n, sum(y) / n
    sxx = sum((xi - x_mean) ** 2 for xi in x)
    slope = sum((xi - x_mean) * (yi - y_mean) for xi, yi in zip(x, y)) / sxx if sxx > 0 else 0.0
    intercept = y_mean - slope * x_mean
    residual = sum((yi - intercept - slope * xi) ** 2 for xi, yi in zip(x, y))
    return math.sqrt(residual / max(n - 2, 1))


def within_chance(old: float, new: float, chance: float | None, n_eval: int | None, z: float) -> bool:
    """Whether both levels of an accuracy (the old level's mean, the new one's) lie within ``z``
    binomial deviations above its chance level (False when chance or ``n_eval`` is unknown)."""
    if chance is None or n_eval is None:
        return False
    return max(old, new) < chance + z * math.sqrt(binomial_variance(chance, n_eval))
