"""Transitions as measured quantities: a capability curve fitted as plateau -> rise -> plateau.

The jump detector (:mod:`trainer.measures.jumps`) answers *whether* a series moved; this module
answers *where* and *how abruptly*, with intervals. Each series ``y(step)`` is fitted by least
squares with four models and the simplest one the data support is kept (BIC, Schwarz 1978):

- ``flat``       ``y = b``                                                   (1 parameter)
- ``linear``     ``y = b + a * step``                                        (2)
- ``one rise``   ``y = b + h * sigma((step - m) / s)``, a 4-parameter logistic (4)
- ``two rises``  the same with a second term ``h2 * sigma((step - m2) / s2)``  (7): an early
                 transient before the main rise, or a capability that rises and then falls

``h`` is signed (a fall has ``h < 0``). A model with more terms is kept only when it lowers the
BIC by at least ``MIN_DELTA_BIC`` (10: "very strong" evidence in Kass & Raftery's scale) below
the simpler model kept so far; ``flat`` and ``linear`` are the "no rise" answer.

Per rise: ``onset_step`` and ``end_step`` are where 10% and 90% of the change is done
(``m -/+ s ln 9``), ``width_steps`` the 10-90% width (``2 s ln 9``), ``before``/``after`` the
plateaus either side. Intervals (95%, percentile) come from a wild bootstrap over the residuals:
each resample keeps the fitted curve and flips the sign of every residual at random (Rademacher
weights, Wu 1986), which keeps each point's own noise level (binomial noise is smaller on a
plateau near 1 than mid-rise) and needs no raw probe rows; residuals are leverage-scaled (HC3,
at most doubled) and the chosen model is refitted from its own parameters, each term keeping its
identity. Seeded: the same series gives the same intervals.

``breakthroughness`` is BIG-bench's (Srivastava et al. 2022, App. B): ``I(y) / sqrt(median(
(y[i+1] - y[i])^2))`` with ``I(y) = sign(argmax y - argmin y) * (max y - min y)``, over the
points in increasing step order. It is large when one step carries the change and the other steps
are small; BIG-bench computes it over model sizes, here over evaluations, so it depends on the
evaluation schedule (denser sampling of the same curve lowers it). Null when more than half the
steps are exactly zero (the median is 0).

Pure functions over arrays and rows, no Lightning and no files: :func:`fit_report` builds the
report that ``RunDir.write_transitions`` writes as ``transitions.json``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.special import expit

FORMAT = 1
MIN_DELTA_BIC = 10.0
N_BOOT = 200
SEED = 0
MIN_POINTS = 6  # fewer evaluations cannot tell a plateau, a rise and a plateau apart
LN9 = math.log(9.0)
CAPABILITY_SUFFIXES = ("/acc", "/logprob")
INTERVAL_METHOD = (f"wild bootstrap over the residuals (Rademacher signs, HC3 leverage-scaled), "
                   f"{N_BOOT} resamples, seed {SEED}: 95% percentile intervals")

Series = tuple[np.ndarray, np.ndarray]


def capability_series(columns: Iterable[str], extra: Sequence[str] = ()) -> list[str]:
    """Every ``probe/*/acc`` and ``probe/*/logprob`` among ``columns``, then ``extra`` (config's
    ``transitions.series``), without repeats."""
    found = sorted(c for c in columns if c.startswith("probe/") and c.endswith(CAPABILITY_SUFFIXES))
    return list(dict.fromkeys([*found, *extra]))


def series_from_rows(rows: Iterable[Mapping[str, Any]], names: Sequence[str]) -> dict[str, Series]:
    """(steps, values) per name from metrics rows (``csv/metrics.csv``'s strings or retro's
    floats), sorted by step; blank and non-finite cells are skipped, a repeated step keeps its last
    value. A name no row holds is left out."""
    points: dict[str, dict[int, float]] = {name: {} for name in names}
    for row in rows:
        for name in names:
            cell = row.get(name)
            if cell in (None, ""):
                continue
            value = float(cell)
            if math.isfinite(value):
                points[name][int(row["step"])] = value
    return {name: (np.array(sorted(p), dtype=float), np.array([p[s] for s in sorted(p)]))
            for name, p in points.items() if p}


def breakthroughness(values: Sequence[float]) -> float | None:
    """BIG-bench's breakthroughness of a curve (module docstring); None below 3 points or when
    the root median square step is 0."""
    y = np.asarray(values, dtype=float)
    if len(y) < 3:
        return None
    spread = float(np.sqrt(np.median(np.diff(y) ** 2)))
    if spread == 0.0:
        return None
    sign = 1.0 if int(np.argmax(y)) > int(np.argmin(y)) else -1.0
    return sign * float(y.max() - y.min()) / spread


@dataclass
class _Fit:
    """A fitted model: its shapes ``[(m, s), ...]`` (one per logistic term), the linear
    coefficients ``[b, h1, h2, ...]`` (or ``[b, a]`` for ``linear``), the residual sum of squares
    and the number of parameters."""

    name: str
    shapes: list[tuple[float, float]]
    coef: np.ndarray
    rss: float
    k: int

    def bic(self, n: int, floor: float) -> float:
        return n * math.log(max(self.rss, floor) / n) + self.k * math.log(n)


class _Grid:
    """Where the nonlinear search starts and what it may reach, from the evaluation steps."""

    def __init__(self, t: np.ndarray) -> None:
        span = float(t[-1] - t[0])
        self.resolution = float(np.median(np.diff(t)))
        # A rise between two evaluations has no measurable width: the scale stops at 1/20 of
        # the spacing (a 10-90% width of ~0.22 evaluations), where such a step is fitted to
        # within 1e-4 at the evaluations either side; width_steps_ci then reaches down to it.
        self.s_min, self.s_max = self.resolution / 20.0, max(span, self.resolution)
        self.lo = np.array([t[0], self.s_min])
        self.hi = np.array([t[-1], self.s_max])
        self.midpoints = np.linspace(t[0], t[-1], min(len(t) * 2, 80))
        self.scales = np.geomspace(self.s_min, self.s_max, 12)


def _curve(t: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """Rows of ``theta = [b, h1, m1, s1, h2, m2, s2, ...]`` (one per curve): the plateau plus
    each logistic term, at the steps ``t``."""
    y = np.repeat(theta[:, :1], len(t), axis=1)
    for j in range(1, theta.shape[1], 3):
        h, m, s = theta[:, j, None], theta[:, j + 1, None], theta[:, j + 2, None]
        y += h * expit((t - m) / s)
    return y


def _jacobian(t: np.ndarray, theta: np.ndarray) -> np.ndarray:
    jac = np.empty((len(theta), len(t), theta.shape[1]))
    jac[:, :, 0] = 1.0
    for j in range(1, theta.shape[1], 3):
        h, m, s = theta[:, j, None], theta[:, j + 1, None], theta[:, j + 2, None]
        sig = expit((t - m) / s)
        slope = h * sig * (1.0 - sig) / s
        jac[:, :, j], jac[:, :, j + 1], jac[:, :, j + 2] = sig, -slope, -slope * (t - m) / s
    return jac


def _levenberg_marquardt(t: np.ndarray, y: np.ndarray, theta: np.ndarray, lo: np.ndarray,
                         hi: np.ndarray, max_iter: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """Least squares of every row of ``y`` (curves) from the matching row of ``theta``, all rows
    at once (the bootstrap's resamples are one batch), midpoints and scales kept inside
    [lo, hi] by projection. Returns the fitted parameters and residual sums of squares."""
    theta = theta.copy()
    residual = y - _curve(t, theta)
    cost = (residual ** 2).sum(axis=1)
    damping = np.full(len(theta), 1e-3)
    active = np.arange(len(theta))  # rows still improving: only these are computed
    eye = np.eye(theta.shape[1])
    for _ in range(max_iter):
        th, res, damp = theta[active], residual[active], damping[active]
        jac = _jacobian(t, th)
        jac_t = jac.transpose(0, 2, 1)
        normal = jac_t @ jac
        gradient = (jac_t @ res[..., None])[..., 0]
        scale = np.diagonal(normal, axis1=1, axis2=2) + 1e-12
        lhs = normal + damp[:, None, None] * eye * scale[:, None, :]
        candidate = np.clip(th + np.linalg.solve(lhs, gradient[..., None])[..., 0], lo, hi)
        trial = y[active] - _curve(t, candidate)
        trial_cost = (trial ** 2).sum(axis=1)
        better = trial_cost < cost[active]
        converged = better & (cost[active] - trial_cost <= 1e-8 * cost[active])
        rows = active[better]
        theta[rows], residual[rows], cost[rows] = candidate[better], trial[better], trial_cost[better]
        damping[active] = np.where(better, np.maximum(damp / 10.0, 1e-9), damp * 10.0)
        active = active[~converged & (damping[active] < 1e10)]
        if not len(active):
            break
    return theta, cost


def _best_added_shape(t: np.ndarray, y: np.ndarray, fixed: list[tuple[float, float]], grid: _Grid) -> tuple[float, float]:
    """The grid shape that, added to ``fixed``, leaves the least residual (all shapes at once;
    for fixed shapes the plateau and heights are linear, so each is solved in closed form)."""
    ms, ss = np.meshgrid(grid.midpoints, grid.scales, indexing="ij")
    ms, ss = ms.ravel(), ss.ravel()
    base = np.column_stack([np.ones_like(t), *(expit((t - m) / s) for m, s in fixed)])
    new = expit((t[None, :] - ms[:, None]) / ss[:, None])
    x = np.concatenate([np.broadcast_to(base, (len(ms), *base.shape)), new[:, :, None]], axis=2)
    coef = np.linalg.pinv(x) @ y[:, None]
    rss = ((y[None, :] - (x @ coef)[:, :, 0]) ** 2).sum(axis=1)
    best = int(np.argmin(rss))
    return float(ms[best]), float(ss[best])


def _refine(t: np.ndarray, y: np.ndarray, shapes: list[tuple[float, float]], grid: _Grid) -> _Fit:
    """Least squares over every parameter, from ``shapes`` and their closed-form heights."""
    x = np.column_stack([np.ones_like(t), *(expit((t - m) / s) for m, s in shapes)])
    coef = np.linalg.lstsq(x, y, rcond=None)[0]
    theta = np.concatenate([[coef[0]], *([h, m, s] for h, (m, s) in zip(coef[1:], shapes))])
    lo, hi = _bounds(grid, len(shapes))
    theta, rss = _levenberg_marquardt(t, y[None, :], np.clip(theta, lo, hi)[None, :], lo, hi)
    return _fit_of(theta[0], float(rss[0]))


def _bounds(grid: _Grid, n_terms: int) -> tuple[np.ndarray, np.ndarray]:
    """Heights and the plateau are free; midpoints and scales stay in the grid's range."""
    lo = np.concatenate([[-np.inf], *([-np.inf, grid.lo[0], grid.lo[1]] for _ in range(n_terms))])
    hi = np.concatenate([[np.inf], *([np.inf, grid.hi[0], grid.hi[1]] for _ in range(n_terms))])
    return lo, hi


def _theta(fit: _Fit) -> np.ndarray:
    return np.concatenate([[fit.coef[0]], *([h, m, s] for h, (m, s) in zip(fit.coef[1:], fit.shapes))])


def _fit_of(theta: np.ndarray, rss: float) -> _Fit:
    terms = theta[1:].reshape(-1, 3)
    shapes = [(float(m), float(s)) for _, m, s in terms]
    name = "one rise" if len(shapes) == 1 else "two rises"
    return _Fit(name, shapes, np.concatenate([[theta[0]], terms[:, 0]]), rss, 1 + 3 * len(shapes))


def _fit_models(t: np.ndarray, y: np.ndarray, grid: _Grid) -> dict[str, _Fit]:
    """Every model fitted to (t, y). The second logistic term is searched on the grid with the
    first held, then both are refined together, from both orders."""
    flat = _Fit("flat", [], np.array([y.mean()]), float(((y - y.mean()) ** 2).sum()), 1)
    slope, intercept = np.polyfit(t, y, 1)
    linear_res = y - (intercept + slope * t)
    linear = _Fit("linear", [], np.array([intercept, slope]), float(linear_res @ linear_res), 2)
    one = _refine(t, y, [_best_added_shape(t, y, [], grid)], grid)
    second = _best_added_shape(t, y, one.shapes, grid)
    two = _refine(t, y, [*one.shapes, second], grid)
    first_again = _best_added_shape(t, y, [second], grid)
    other = _refine(t, y, [second, first_again], grid)
    return {"flat": flat, "linear": linear, "one rise": one,
            "two rises": min(two, other, key=lambda f: f.rss)}


def _choose(fits: dict[str, _Fit], n: int, floor: float) -> _Fit:
    null = min(fits["flat"], fits["linear"], key=lambda f: f.bic(n, floor))
    chosen = null
    for name in ("one rise", "two rises"):
        if fits[name].bic(n, floor) <= chosen.bic(n, floor) - MIN_DELTA_BIC:
            chosen = fits[name]
    return chosen


def _rises(fit: _Fit) -> list[dict[str, float]]:
    """The fitted terms in step order, each with its plateaus (``before`` counts every earlier
    term as done and every later one as not started)."""
    terms = sorted(zip(fit.shapes, fit.coef[1:]), key=lambda term: term[0][0])
    level, rises = float(fit.coef[0]), []
    for (m, s), h in terms:
        rises.append({"midpoint_step": m, "scale": s, "height": float(h),
                      "before": level, "after": level + float(h)})
        level += float(h)
    return rises


def _bootstrap(t: np.ndarray, y: np.ndarray, fit: _Fit, grid: _Grid) -> np.ndarray:
    """(N_BOOT, rises, 2): midpoint and width of each rise (in step order), refitted on
    wild-bootstrap resamples (all resamples in one batch)."""
    theta = _theta(fit)
    fitted = _curve(t, theta[None, :])[0]
    # Fitted residuals are smaller than the noise, most at the points that pin the fit (the
    # rise's own): each is divided by 1 - its leverage (HC3, as Davidson & Flachaire 2008 use
    # with Rademacher weights). Unscaled, a 41-point logistic's nominal 95% intervals covered
    # the true midpoint 82% of the time; scaled, 92% (60 noisy curves, tests/test_transitions).
    # At most doubled: a term fitted to one or two points (a step-0 transient) has leverage ~1
    # there, and dividing by ~0 would turn its residual into noise the curve never had.
    jac = _jacobian(t, theta[None, :])[0]
    leverage = np.einsum("ij,ji->i", jac, np.linalg.pinv(jac))
    residual = (y - fitted) / np.clip(1.0 - leverage, 0.5, 1.0)
    signs = np.random.default_rng(SEED).choice((-1.0, 1.0), size=(N_BOOT, len(y)))
    lo, hi = _bounds(grid, len(fit.shapes))
    refits, _ = _levenberg_marquardt(t, fitted + residual * signs, np.tile(theta, (N_BOOT, 1)), lo, hi)
    # Each refit starts from the fit's own terms, so term j of a refit is term j of the fit
    # (sorting each refit by midpoint would swap two terms whenever their midpoints cross).
    terms = refits[:, 1:].reshape(N_BOOT, -1, 3)[:, np.argsort([m for m, _ in fit.shapes])]
    return np.stack([terms[:, :, 1], 2 * LN9 * terms[:, :, 2]], axis=2)


def fit_transition(steps: Sequence[float], values: Sequence[float], tokens_per_step: int | None = None) -> dict[str, Any]:
    """The transitions of one series (module docstring): the chosen model, its quality against
    the no-rise models, and each rise with its 95% intervals. ``verdict`` is ``"no rise"`` when
    flat or linear is kept, and when there are fewer than ``MIN_POINTS`` points."""
    t, y = np.asarray(steps, dtype=float), np.asarray(values, dtype=float)
    order = np.argsort(t, kind="stable")
    t, y = t[order], y[order]
    n = len(t)
    out: dict[str, Any] = {"n_points": n, "first_step": _step(t[0]) if n else None,
                           "last_step": _step(t[-1]) if n else None,
                           "breakthroughness": _num(breakthroughness(y)), "rises": []}
    tss = float(((y - y.mean()) ** 2).sum()) if n else 0.0
    if n < MIN_POINTS or tss == 0.0:
        out.update(model="flat", verdict="no rise",
                   why=f"fewer than {MIN_POINTS} points" if n < MIN_POINTS else "constant")
        return out
    grid = _Grid(t)
    fits = _fit_models(t, y, grid)
    floor = tss * 1e-12  # a perfect fit must not make the BIC minus infinity
    chosen = _choose(fits, n, floor)
    raw_bic = {name: fit.bic(n, floor) for name, fit in fits.items()}
    bic = {name: _num(value) for name, value in raw_bic.items()}
    null_bic = min(raw_bic["flat"], raw_bic["linear"])
    out.update(model=chosen.name, resolution_steps=_step(grid.resolution), fit={
        "r2": _num(1.0 - chosen.rss / tss), "rmse": _num(math.sqrt(chosen.rss / n)), "bic": bic,
        "delta_bic_vs_no_rise": _num(null_bic - raw_bic[chosen.name]) if chosen.shapes else 0.0})
    if not chosen.shapes:
        out["verdict"] = "no rise"
        return out
    out["verdict"] = chosen.name
    rises = _rises(chosen)
    draws = _bootstrap(t, y, chosen, grid)
    bounds = [t[0], *[(a["midpoint_step"] + b["midpoint_step"]) / 2 for a, b in zip(rises, rises[1:])], t[-1]]
    for i, rise in enumerate(rises):
        m, s = rise.pop("midpoint_step"), rise.pop("scale")
        width = 2 * LN9 * s
        mid_ci = np.percentile(draws[:, i, 0], [2.5, 97.5])
        width_ci = np.percentile(draws[:, i, 1], [2.5, 97.5])
        # BIG-bench's measure over this rise's own stretch of the curve (between the midpoints
        # of neighbouring rises), so an early transient does not count as part of the main rise.
        inside = (t >= bounds[i]) & (t <= bounds[i + 1])
        out["rises"].append({
            "direction": "rise" if rise["height"] > 0 else "fall",
            "onset_step": _step(m - width / 2), "midpoint_step": _step(m),
            "end_step": _step(m + width / 2), "width_steps": _step(width), "height": _num(rise["height"]),
            "before": _num(rise["before"]), "after": _num(rise["after"]),
            "midpoint_ci": [_step(v) for v in mid_ci], "width_steps_ci": [_step(v) for v in width_ci],
            # Observed plateaus on both sides: the 10-90% change lies inside the evaluated steps.
            "complete": bool(m - width / 2 >= t[0] and m + width / 2 <= t[-1]),
            "breakthroughness": _num(breakthroughness(y[inside])),
            **_tokens(m, width, width_ci, tokens_per_step),
        })
    return out


def _tokens(midpoint: float, width: float, width_ci: np.ndarray, tokens_per_step: int | None) -> dict[str, Any]:
    """Token counts beside the steps: the midpoint as tokens seen (step + 1 batches, as the
    jump events count them) and the width as tokens trained over."""
    if not tokens_per_step:
        return {"midpoint_tokens": None, "width_tokens": None, "width_tokens_ci": None}
    return {"midpoint_tokens": round((midpoint + 1) * tokens_per_step),
            "width_tokens": round(width * tokens_per_step),
            "width_tokens_ci": [round(v * tokens_per_step) for v in width_ci]}


def _num(value: float | None) -> float | None:
    """Four significant figures: what the fit can support."""
    if value is None or not math.isfinite(value):
        return None
    return float(f"{value:.4g}")


def _step(value: float) -> float:
    """A step count to a tenth of a step."""
    return round(float(value), 1)


def transitions(series: Mapping[str, Series], tokens_per_step: int | None, source: str) -> dict[str, Any]:
    """The content of ``transitions.json`` for ``series`` (name -> (steps, values))."""
    return {
        "format": FORMAT, "source": source, "x": "step", "tokens_per_step": tokens_per_step,
        "models": "flat, linear, one rise (4-parameter logistic), two rises; kept by BIC, a "
                  f"rise only when it lowers the BIC by >= {MIN_DELTA_BIC:g} below the no-rise models",
        "onset_end": "onset_step/end_step: 10%/90% of the change; width_steps = end - onset",
        "interval_method": INTERVAL_METHOD,
        "breakthroughness": "BIG-bench (Srivastava et al. 2022, App. B): I(y) / root median square "
                            "of the steps between evaluations, per series and per rise",
        "series": {name: fit_transition(t, y, tokens_per_step) for name, (t, y) in series.items()},
    }


def summarize(report: Mapping[str, Any]) -> dict[str, Any]:
    """The part summary.json keeps: per series its rises' midpoint and width with intervals,
    height and direction (``[]``: no rise)."""
    keys = ("direction", "midpoint_step", "midpoint_ci", "midpoint_tokens", "width_steps",
            "width_steps_ci", "width_tokens", "height", "complete", "breakthroughness")
    return {name: [{k: rise[k] for k in keys} for rise in fit["rises"]]
            for name, fit in report["series"].items()}


def fit_report(rows: Iterable[Mapping[str, Any]], tokens_per_step: int | None,
               extra_series: Sequence[str] = (), source: str = "csv/metrics.csv") -> dict[str, Any]:
    """The transitions report of ``rows`` (CSV rows): every capability series and
    ``extra_series`` fitted. The caller writes it (``RunDir.write_transitions``)."""
    rows = list(rows)
    columns = {key for row in rows for key in row}
    names = capability_series(columns, extra_series)
    report = transitions(series_from_rows(rows, names), tokens_per_step, source)
    missing = [name for name in extra_series if name not in report["series"]]
    if missing:
        report["missing_series"] = missing  # named in transitions.series but never logged
    return report
