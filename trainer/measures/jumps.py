"""Online detection of abrupt changes -- steps and ramps -- in many logged series (capabilities,
topology, weights).

Why not CUSUM or BOCPD: on simulated training curves both flagged about half of the curves that
had no jump at all, because learning curves are neither stationary nor Gaussian: they drift, they
rise smoothly, and accuracies carry binomial noise that depends on their level. The detector here
asks instead "did the series leave the trend of its own recent history, within at most
``ramp_evals`` evaluations, for a new level that holds, by far more than its noise allows?":

1. **Segments.** A series is read in segments. It starts afresh after each confirmed change, so
   one change is reported once and the old level does not bias the next detection; and an early
   transient (any of the first ``transient_evals`` values that lie far outside the values after
   them, such as an accuracy of 0 before the model has learned the answer format) is a segment of
   its own, not history whose gains and trend would hide the next rise. No flag is possible before
   ``min_history`` values of a segment precede a change.
2. **Confirmation: a scan over rise widths.** At every evaluation the last ``confirm_evals``
   values are a candidate new level. For each rise width L = 0 (a step) ... ``ramp_evals``, the L
   values before them are the rise (left out of both levels) and the values before the rise the old
   level: a robust line (Theil-Sen) through them is extrapolated over the new level's steps. The
   shift (mean of the new level minus that extrapolation) must exceed ``z_confirm`` standard errors
   (the extrapolation's error plus the new level's noise), ``min_size`` and ``min_rel_size`` times
   the level; every new-level value must lie beyond half the shift (the new level holds), and the
   new level must differ from the last old value by half the shift. The width with the largest
   score wins: a real sigmoid spread over several evaluations is caught whole, and a steady,
   accelerating or slowing rise is not, because its new level is where its own trend goes.
3. **Pre-alarm.** A cheap trigger -- the gain over the last ``gain_evals`` evaluations as a robust
   z-score against the segment's earlier gains, persisting for ``persistence`` evaluations --
   names the series with a candidate change before it can be confirmed (:meth:`pending`): what a
   monitor that measures densely around a change acts on.

The noise behind a standard error is the largest of the old level's residual spread around its
line, the spread of its one-evaluation changes, and a model: for accuracies evaluated on
``n_eval`` items the binomial standard deviation, for count-valued series (every value an integer,
no binomial model: graph components, H1 bars) a Poisson one, so a count that sat at 1 and moved to 5
is not scored in thousands of standard errors. Other series (topology, weights) have no model:
their residuals are autocorrelated (a representation drifts; it does not jitter independently), so
the variance is inflated by the AR(1) factor (1 + r) / (1 - r) of their lag-1 autocorrelation r,
and a noise estimated from a few values is judged by the Student-t quantile of the same tail
probability. ``scripts/eval_jump_detector.py`` measures false-alarm and detection rates of the
defaults on simulated curves; ``scripts/calibrate_detector.py`` counts false alarms on real runs
where nothing emerges.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
from scipy import stats

#: 1 / Phi^-1(3/4): turns a median absolute deviation into a Gaussian standard deviation.
MAD_TO_SD = 1.4826
#: How many of a series' values (across segments) its drift is estimated from.
DRIFT_RECORD = 64
#: Distance (in noise standard deviations) beyond which an early value is a transient.
TRANSIENT_Z = 4.0
#: Largest lag-1 autocorrelation the noise model believes from a short old level: beyond it, the
#: estimate is the trend's curvature, not noise, and the inflation would hide every change.
MAX_AUTOCORRELATION = 0.8


@dataclass(frozen=True)
class JumpEvent:
    """A confirmed change.

    ``step`` is the step at which it was confirmed (what an online observer could know),
    ``onset_step`` the first evaluation that left the old level (for a ramp, the first of the
    rise from which every value lies beyond a third of the shift; for a step, the first at the new
    level). ``resolution`` is the number of steps since the series' previous evaluation: the change
    began somewhere in (``onset_step`` - ``resolution``, ``onset_step``], and lead-lag is known no
    finer (:mod:`trainer.measures.leadlag`). ``size`` = ``after`` - ``before``, where ``before`` is
    the old level's trend extrapolated over the new level's steps and ``after`` the mean of the
    new level's values. ``score`` is the size in standard errors (signed).
    """

    series: str
    step: int
    onset_step: int
    size: float
    score: float
    before: float
    after: float
    resolution: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Pending:
    direction: int
    first_trigger: int
    onset: int
    triggers: int = 1


@dataclass
class _Series:
    steps: list[int] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    n_evals: list[int | None] = field(default_factory=list)
    start: int = 0
    settled: bool = False  # whether the early transient has been decided
    pending: _Pending | None = None


def _binomial_variance(p: float, n: int | None) -> float:
    """Variance of an accuracy measured on n items, with the Agresti-Coull adjustment.

    The adjustment (two successes and two failures added) keeps the variance above zero at an
    accuracy of exactly 0 or 1, where a single right answer would otherwise look infinitely
    significant.
    """
    if n is None:
        return 0.0
    adjusted = (min(max(p, 0.0), 1.0) * n + 2.0) / (n + 4.0)
    return adjusted * (1.0 - adjusted) / n


def _count_variance(value: float) -> float:
    """Variance of a count (graph components, H1 bars) as a Poisson's: its mean, at least 1.

    A count that sat at 1 has no spread of its own, so without this floor a move to 5 would be
    scored in thousands of standard errors; a Poisson count of 1 moves by 1 or 2 by chance.
    """
    return max(abs(value), 1.0)


def _is_count(values: list[float], n_evals: list[int | None]) -> bool:
    """A series is count-valued when it has no binomial model and every value is an integer."""
    return all(n is None for n in n_evals) and all(float(v).is_integer() for v in values)


def _noise_variance(value: float, n_eval: int | None, count: bool) -> float:
    """The noise model's variance of one value: binomial for an accuracy on ``n_eval`` items,
    Poisson for a count, none otherwise (the history's own spread is used)."""
    if count:
        return _count_variance(value)
    return _binomial_variance(value, n_eval)


def _mad(x: list[float]) -> float:
    centre = statistics.median(x)
    return statistics.median([abs(v - centre) for v in x])


def _theil_sen(x: list[float], y: list[float]) -> tuple[float, float]:
    """Median of pairwise slopes and the median intercept, in plain Python (at most ``history``
    points; numpy's per-call overhead would dominate). Robust: one early outlier of the old level
    does not tilt the extrapolated trend."""
    slopes = [(y[j] - y[i]) / (x[j] - x[i]) for i in range(len(x)) for j in range(i + 1, len(x))]
    slope = statistics.median(slopes) if slopes else 0.0
    return slope, statistics.median([yi - slope * xi for xi, yi in zip(x, y)])


def _autocorrelation(residual: list[float]) -> float:
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


def _drift_variance(values: list[float]) -> float:
    """Per-evaluation variance of a random-walk level under white noise, from a series' record:
    the k-evaluation changes of a random walk plus noise have variance k q + 2 s^2, so
    q = (Var(4-changes) - Var(1-changes)) / 3 (robust variances, about their median change so
    that a steady trend is not mistaken for a wander)."""
    if len(values) < 8:
        return 0.0

    def variance(k: int) -> float:
        changes = [b - a for a, b in zip(values, values[k:])]
        return (MAD_TO_SD * _mad(changes)) ** 2

    return max(0.0, (variance(4) - variance(1)) / 3)


@lru_cache(maxsize=256)
def _t_threshold(z: float, dof: int) -> float:
    """The Student-t quantile with ``dof`` degrees of freedom of the normal tail beyond ``z``."""
    return float(stats.t.isf(stats.norm.sf(z), max(dof, 1)))


def _residual_sd(x: list[float], y: list[float]) -> float:
    """The residual sd of a least-squares line, in plain Python (see ``_trigger_z``)."""
    n = len(x)
    x_mean, y_mean = sum(x) / n, sum(y) / n
    sxx = sum((xi - x_mean) ** 2 for xi in x)
    slope = sum((xi - x_mean) * (yi - y_mean) for xi, yi in zip(x, y)) / sxx if sxx > 0 else 0.0
    intercept = y_mean - slope * x_mean
    residual = sum((yi - intercept - slope * xi) ** 2 for xi, yi in zip(x, y))
    return math.sqrt(residual / max(n - 2, 1))


class JumpDetector:
    """Watches any number of named series and reports confirmed changes, in both directions.

    Parameters (defaults measured by ``scripts/eval_jump_detector.py``):

    - ``gain_evals`` (m): evaluations the pre-alarm's gain spans.
    - ``min_history``: values of a segment before the first value of a change.
    - ``history``: how many old-level values the trend and noise estimates look at; finite so that
      a slowing curve is judged against its recent behaviour, not its early one.
    - ``z_trigger`` / ``persistence``: robust z of the gain that raises the pre-alarm, and on how
      many consecutive evaluations.
    - ``confirm_evals``: values of the new level that the confirmation averages (and that must
      all hold).
    - ``ramp_evals``: the widest rise, in evaluations, that counts as one change.
    - ``transient_evals``: how many of a series' first values may form an early transient.
    - ``z_confirm``: size of the level shift in standard errors required to confirm.
    - ``min_size`` / ``min_rel_size``: absolute / relative (to the old level) floors on the
      shift, for series whose noise is tiny compared with the changes that matter.
    - ``min_rel_size_by_prefix``: ``{prefix: floor}`` replacing ``min_rel_size`` for the series
      whose name starts with that prefix.
    """

    def __init__(
        self,
        gain_evals: int = 2,
        min_history: int = 6,
        history: int = 16,
        z_trigger: float = 2.0,
        persistence: int = 2,
        confirm_evals: int = 4,
        ramp_evals: int = 8,
        transient_evals: int = 2,
        z_confirm: float = 4.0,
        min_size: float = 0.0,
        min_rel_size: float = 0.02,
        min_rel_size_by_prefix: dict[str, float] | None = None,
    ) -> None:
        if gain_evals < 1 or persistence < 1 or confirm_evals < 1:
            raise ValueError("gain_evals, persistence and confirm_evals must be >= 1")
        if ramp_evals < 0 or transient_evals < 0:
            raise ValueError("ramp_evals and transient_evals must be >= 0")
        if min_history < 2 * gain_evals + 2:
            raise ValueError(f"min_history must be >= 2 * gain_evals + 2 = {2 * gain_evals + 2}")
        self.gain_evals = gain_evals
        self.min_history = min_history
        self.history = history
        self.z_trigger = z_trigger
        self.persistence = persistence
        self.confirm_evals = confirm_evals
        self.ramp_evals = ramp_evals
        self.transient_evals = transient_evals
        self.z_confirm = z_confirm
        self.min_size = min_size
        self.min_rel_size = min_rel_size
        self.min_rel_size_by_prefix = dict(min_rel_size_by_prefix or {})
        self._series: dict[str, _Series] = {}
        self._events: list[JumpEvent] = []

    @property
    def events(self) -> list[JumpEvent]:
        """All confirmed events so far, in order of confirmation step."""
        return list(self._events)

    def pending(self) -> dict[str, int]:
        """Series with a candidate change not yet confirmed or dropped (the pre-alarm), mapped to
        the step of its first trigger: what a monitor that wants to measure densely around a
        change can act on, evaluations before the change is confirmed."""
        return {
            name: state.steps[state.pending.first_trigger]
            for name, state in self._series.items()
            if state.pending is not None
        }

    def state_dict(self) -> dict[str, Any]:
        """Every observation so far, for a checkpoint; the detector state is a function of them."""
        return {
            "observations": {
                name: {"steps": list(s.steps), "values": list(s.values), "n_evals": list(s.n_evals)}
                for name, s in self._series.items()
            }
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Rebuild the detector by replaying the observations of :meth:`state_dict`.

        Replaying rather than storing internals keeps a checkpoint valid across changes of the
        detector's internals, and yields exactly the events of an uninterrupted run.
        """
        self._series, self._events = {}, []
        for name, observed in state["observations"].items():
            for step, value, n_eval in zip(
                observed["steps"], observed["values"], observed["n_evals"]
            ):
                self.update(name, step, value, n_eval)
        self._events.sort(key=lambda event: event.step)

    def update(
        self, series: str, step: int, value: float, n_eval: int | None = None
    ) -> list[JumpEvent]:
        """Add one evaluation of ``series`` at ``step``; return the changes it confirms (0 or 1).

        ``n_eval``: number of items behind the value when it is an accuracy in [0, 1], which
        turns on the binomial noise model. Steps of a series must increase; a NaN or inf value
        raises ``ValueError`` (a broken metric is reported by its producer, not read as a jump).
        """
        value = float(value)
        if not np.isfinite(value):
            raise ValueError(f"series {series!r} got a non-finite value {value} at step {step}")
        state = self._series.setdefault(series, _Series())
        if state.steps and step <= state.steps[-1]:
            raise ValueError(
                f"series {series!r}: step {step} is not after the last step {state.steps[-1]}"
            )
        state.steps.append(int(step))
        state.values.append(value)
        state.n_evals.append(n_eval)
        t = len(state.values) - 1
        if not state.settled:
            if t + 1 < self.transient_evals + self.min_history:
                return []
            self._settle(state)
        self._pre_alarm(state, t)
        event = self._scan(series, state, t)
        if event is None:
            return []
        state.pending = None
        state.start = t + 1
        self._events.append(event)
        return [event]

    def _settle(self, state: _Series) -> None:
        """Start the series after its early transient: the last of its first ``transient_evals``
        values that lies more than ``TRANSIENT_Z`` noise deviations from the median of the
        ``min_history`` values after them (none: the series starts at its first value)."""
        state.settled = True
        k = self.transient_evals
        later = state.values[k : k + self.min_history]
        centre = statistics.median(later)
        count = _is_count(state.values, state.n_evals)
        noise = max(
            MAD_TO_SD * _mad([b - a for a, b in zip(later, later[1:])]) / math.sqrt(2.0),
            math.sqrt(_noise_variance(centre, state.n_evals[k], count)),
            1e-9 * (1 + abs(centre)),
        )
        outlying = [i + 1 for i in range(k) if abs(state.values[i] - centre) > TRANSIENT_Z * noise]
        state.start = max(outlying, default=0)

    def _pre_alarm(self, state: _Series, t: int) -> None:
        """Raise, keep or drop the series' candidate change (see :meth:`pending`)."""
        gain = state.values[t] - state.values[t - self.gain_evals] if t >= self.gain_evals else 0.0
        z = self._trigger_z(state, t)
        fires = z is not None and abs(z) >= self.z_trigger and np.sign(gain) == np.sign(z)
        pending = state.pending
        if pending is not None:
            same_way = fires and np.sign(z) == pending.direction
            if pending.triggers < self.persistence and same_way:
                pending.triggers += 1
            elif pending.triggers < self.persistence or (fires and not same_way):
                # Not persistent, or overtaken by a move the other way: drop the candidate, and
                # let this evaluation raise its own.
                state.pending = pending = None
            elif t - pending.first_trigger >= self.confirm_evals + self.ramp_evals:
                # Long enough for any change it announced to be confirmed: resolved.
                state.pending = pending = None
        if pending is None and fires:
            state.pending = _Pending(int(np.sign(z)), t, t)

    def _trigger_z(self, state: _Series, t: int) -> float | None:
        """Robust z of the gain ending at t, against gains that end no later than t - m.

        Plain Python on the (at most ``history``) values it looks at: it runs for every series
        at every evaluation, where numpy's per-call overhead on 16 numbers would dominate.
        """
        m = self.gain_evals
        if t - state.start < self.min_history:
            return None
        values, n_evals = state.values, state.n_evals
        reference_end = t - m
        first_gain = max(state.start + m, reference_end - self.history + 1)
        gains = [values[i] - values[i - m] for i in range(first_gain, reference_end + 1)]
        centre = statistics.median(gains)
        mad = MAD_TO_SD * statistics.median([abs(g - centre) for g in gains])
        deviation = values[t] - values[t - m] - centre
        floor = max(mad, 1e-12 * (1 + abs(values[t])))
        if abs(deviation) < self.z_trigger * floor:
            # The other floors below only make the scale larger: this evaluation cannot fire.
            return deviation / floor
        first_value = max(state.start, reference_end - self.history + 1)
        residual_sd = _residual_sd(state.steps[first_value : reference_end + 1],
                                   values[first_value : reference_end + 1])
        count = _is_count(values[first_value : t + 1], n_evals[first_value : t + 1])
        model_sd = math.sqrt(
            _noise_variance(values[t - m], n_evals[t - m], count)
            + _noise_variance(values[t], n_evals[t], count)
        )
        return deviation / max(floor, math.sqrt(2.0) * residual_sd, model_sd)

    def _scan(self, name: str, state: _Series, t: int) -> JumpEvent | None:
        """The best-scoring rise width whose new level (the last ``confirm_evals`` values) is
        confirmed against the old level before it; None if no width is."""
        new = t - self.confirm_evals + 1
        if new - state.start < self.min_history:
            return None
        steps, values = state.steps, state.values
        post_x, post_y = steps[new : t + 1], values[new : t + 1]
        after = sum(post_y) / len(post_y)
        count = _is_count(values[state.start : t + 1], state.n_evals[state.start : t + 1])
        rel_size = next((v for k, v in self.min_rel_size_by_prefix.items() if name.startswith(k)),
                        self.min_rel_size)
        best = None
        for width in range(self.ramp_evals + 1):
            rise = new - width
            if rise - state.start < self.min_history:
                break
            found = self._level_test(state, rise, new, t, post_x, post_y, after, count, rel_size)
            if found is not None and (best is None or abs(found[0]) > abs(best[0])):
                best = found + (rise,)
        if best is None:
            return None
        score, shift, before, predicted, rise = best
        # The onset: the first value of the rise from which every value lies beyond half the
        # shift, as the new level's do (a step's onset is the first new-level value).
        onset = new
        for i in range(new - 1, rise - 1, -1):
            if math.copysign(1.0, shift) * (values[i] - predicted(steps[i])) < abs(shift) / 2:
                break
            onset = i
        return JumpEvent(
            series=name,
            step=steps[t],
            onset_step=steps[onset],
            size=shift,
            score=score,
            before=before,
            after=after,
            resolution=steps[onset] - steps[onset - 1],
        )

    def _level_test(self, state: _Series, rise: int, new: int, t: int, post_x: list[int],
                    post_y: list[float], after: float, count: bool, rel_size: float):
        """(score, shift, before, trend) when the new level ``[new, t]`` is confirmed against the
        old level that ends at ``rise``, else None.

        The old and the new level share one slope (least squares within each level) and differ
        by the shift: a short old level alone pins its trend down too loosely to extrapolate
        (the default run's in-context rise comes after 5-6 evaluations), and the new level's own
        trend tells a steady rise from a step as well.
        """
        first = max(state.start, rise - self.history)
        pre_x, pre_y = state.steps[first:rise], state.values[first:rise]
        n, m = len(pre_x), len(post_x)
        pre_xm, pre_ym = sum(pre_x) / n, sum(pre_y) / n
        post_xm = sum(post_x) / m
        sxx = sum((x - pre_xm) ** 2 for x in pre_x) + sum((x - post_xm) ** 2 for x in post_x)
        sxy = (sum((x - pre_xm) * (y - pre_ym) for x, y in zip(pre_x, pre_y))
               + sum((x - post_xm) * (y - after) for x, y in zip(post_x, post_y)))
        slope = sxy / sxx if sxx > 0 else 0.0
        before = pre_ym + slope * (post_xm - pre_xm)
        shift = after - before
        direction = 1.0 if shift > 0 else -1.0
        predicted = [pre_ym + slope * (x - pre_xm) for x in post_x]
        # The cheap conditions first: most evaluations of most series end here.
        if any(direction * (y - p) < abs(shift) / 2 for y, p in zip(post_y, predicted)):
            return None  # the new level does not hold
        if max(post_y) - min(post_y) > abs(shift) / 2:
            return None  # still rising (or falling): not a new level yet
        if direction * (after - statistics.median(pre_y[-3:])) < abs(shift) / 2:
            # Not a move away from where the old level ended: a rise that slows down ends below
            # its own extrapolated trend, and that is not a drop.
            return None
        if abs(shift) < max(self.min_size, rel_size * abs(before)) or shift == 0:
            return None
        residual = ([y - pre_ym - slope * (x - pre_xm) for x, y in zip(pre_x, pre_y)]
                    + [y - after - slope * (x - post_xm) for x, y in zip(post_x, post_y)])
        dof = n + m - 3
        # Root mean square, not a MAD: on the 6-16 values of an old level the MAD is often half
        # the true spread, and every one of those underestimates is a false alarm.
        residual_sd = math.sqrt(sum(r * r for r in residual) / max(dof, 1))
        n_eval = state.n_evals[rise - 1]
        model = count or n_eval is not None
        model_sd = math.sqrt(max(_noise_variance(pre_ym, n_eval, count),
                                 _noise_variance(after, state.n_evals[t], count)))
        spread = residual_sd
        # Without a model the residuals are the noise, and they are autocorrelated: the variance
        # of a mean (and of a trend) of n of them is (1 + r) / (1 - r) times the independent one.
        rho = 0.0 if model else _autocorrelation(residual[:n])
        inflation = (1 + rho) / (1 - rho)
        leverage = 1.0 / n + 1.0 / m + ((post_xm - pre_xm) ** 2 / sxx if sxx > 0 else 0.0)
        variance = max(spread, model_sd) ** 2 * inflation * leverage
        if not model:
            # And their level wanders: a random walk's variance grows with the evaluations
            # between the two levels' centres.
            variance += _drift_variance(state.values[max(0, rise - DRIFT_RECORD) : rise]) * (
                (new + t) / 2 - (first + rise - 1) / 2)
        standard_error = math.sqrt(variance)
        # A real-valued series that did not move at all before has no noise estimate; a floor of
        # 0.1% of its level keeps its score a finite, comparable number.
        score = shift / max(standard_error, 1e-3 * (1 + abs(before)))
        threshold = self.z_confirm
        if not model:
            # The noise is estimated from these few values alone: judged by the Student-t quantile
            # of the same tail probability, so that a stretch that happens to look quiet does not
            # confirm noise. (A model's noise is a floor the estimate never goes below.)
            threshold = _t_threshold(self.z_confirm, dof)
        if abs(score) < threshold:
            return None
        return score, shift, before, lambda x: pre_ym + slope * (x - pre_xm)
