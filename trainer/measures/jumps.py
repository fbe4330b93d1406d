"""Online detection of abrupt jumps in many logged series (capabilities, topology, weights).

Why not CUSUM or BOCPD: on simulated training curves both flagged about half of the curves that
had no jump at all, because learning curves are neither stationary nor Gaussian: they drift, they
rise smoothly, and accuracies carry binomial noise that depends on their level. The detector here
asks instead "is the recent gain far outside what this series' own history of gains and its noise
floor allow, does it persist, and does the new level hold?", in two stages:

1. **Trigger.** The gain over the last ``gain_evals`` evaluations, g_t = v_t - v_{t-m}, is turned
   into a robust z-score against the history of earlier gains (median and MAD), so a steady rise
   has a typical gain and is not a jump. The scale is floored by two noise models that the history
   alone can miss: the residual of a local linear trend (sqrt(2) times, for a difference of two
   values) and, for accuracies evaluated on ``n_eval`` items, the binomial standard deviation of a
   difference of two proportions. The trigger must fire in the same direction on ``persistence``
   consecutive evaluations, which rejects single-eval outliers, and the raw gain must go the same
   way: a rise that slows down has gains below its median, but it is not a drop.
2. **Confirmation.** Once ``confirm_evals`` values exist from the estimated onset on, the mean of
   those values is compared with the linear trend of the values before the onset, extrapolated
   over the same steps. The shift must exceed ``z_confirm`` standard errors (the extrapolation
   error plus the post-onset noise), ``min_size`` and ``min_rel_size`` times the level; every
   post-onset value must lie beyond half the shift (the new level holds), and the mean after the
   onset must differ from the level just before it by at least half the shift in that direction.

After a confirmed jump a series starts afresh from the onset, so one jump is reported once and the
pre-jump level does not bias the next detection. No flag is possible before ``min_history``
evaluations of a series (or of its current segment after a jump).

Count-valued series (every value an integer, no binomial model: graph components, H1 bars) use a
Poisson noise floor, so a count that sat at 1 and moved to 5 is not scored in thousands of
standard errors. ``scripts/eval_jump_detector.py`` measures false-alarm and detection rates of the
defaults on simulated curves; ``scripts/calibrate_detector.py`` counts false alarms on real runs
where nothing emerges.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy import stats

#: 1 / Phi^-1(3/4): turns a median absolute deviation into a Gaussian standard deviation.
MAD_TO_SD = 1.4826


@dataclass(frozen=True)
class JumpEvent:
    """A confirmed jump.

    ``step`` is the step at which it was confirmed (what an online observer could know),
    ``onset_step`` the first evaluation at the new level. ``resolution`` is the number of steps
    since the series' previous evaluation: the change happened somewhere in
    (``onset_step`` - ``resolution``, ``onset_step``], and lead-lag is known no finer
    (:mod:`trainer.measures.leadlag`). ``size`` = ``after`` - ``before``, where ``before`` is the
    pre-onset trend extrapolated over the post-onset steps and ``after`` the mean of the post-onset
    values. ``score`` is the size in standard errors (signed).
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


def _mad(x: np.ndarray) -> float:
    return float(np.median(np.abs(x - np.median(x))))


def _robust_linear_fit(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float, float, float]:
    """Theil-Sen line (median of pairwise slopes) with a MAD residual scale, in the shape of
    :func:`_linear_fit`. The pre-onset trend must not be dragged by one early outlier, such as an
    accuracy of 0 at step 0 before the model has learned the answer format."""
    x_mean = float(x.mean())
    sxx = float(((x - x_mean) ** 2).sum())
    if x.size < 3 or sxx == 0:
        return _linear_fit(x, y)
    slope = float(stats.theilslopes(y, x).slope)
    intercept = float(np.median(y - slope * x))
    residual = y - (intercept + slope * x)
    return slope, intercept, MAD_TO_SD * _mad(residual), x_mean, sxx


def _residual_sd(x: list[float], y: list[float]) -> float:
    """The residual sd of :func:`_linear_fit`, in plain Python (see ``_trigger_z``)."""
    n = len(x)
    x_mean, y_mean = sum(x) / n, sum(y) / n
    sxx = sum((xi - x_mean) ** 2 for xi in x)
    slope = sum((xi - x_mean) * (yi - y_mean) for xi, yi in zip(x, y)) / sxx if sxx > 0 else 0.0
    intercept = y_mean - slope * x_mean
    residual = sum((yi - intercept - slope * xi) ** 2 for xi, yi in zip(x, y))
    return math.sqrt(residual / max(n - 2, 1))


def _linear_fit(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float, float, float]:
    """Least-squares line: (slope, intercept, residual sd, mean of x, Sxx)."""
    x_mean = float(x.mean())
    sxx = float(((x - x_mean) ** 2).sum())
    slope = float(((x - x_mean) * (y - y.mean())).sum() / sxx) if sxx > 0 else 0.0
    intercept = float(y.mean()) - slope * x_mean
    residual = y - (intercept + slope * x)
    dof = max(x.size - 2, 1)
    return slope, intercept, float(np.sqrt((residual**2).sum() / dof)), x_mean, sxx


class JumpDetector:
    """Watches any number of named series and reports confirmed jumps, in both directions.

    Parameters (defaults measured by ``scripts/eval_jump_detector.py``):

    - ``gain_evals`` (m): evaluations the trigger gain spans; 2 catches a jump that straddles two
      evaluations and makes a real step fire on two consecutive evals while an outlier fires once.
    - ``min_history``: evaluations of a series (segment) before any trigger.
    - ``history``: how many past gains and values the noise estimates look at; finite so that a
      slowing curve is judged against its recent behaviour, not its early one.
    - ``z_trigger``: robust z of the gain that starts a candidate. Deliberately low: the trigger
      only nominates candidates, and the confirmation rejects the noise it lets through.
    - ``persistence``: consecutive triggering evaluations required.
    - ``confirm_evals``: values from the onset on that the confirmation averages.
    - ``z_confirm``: size of the level shift in standard errors required to confirm. When the
      noise is estimated from the few pre-onset values (not given by the binomial floor), the
      threshold becomes the Student-t quantile of the same tail probability, so that a short
      history that happens to look quiet does not confirm noise.
    - ``min_rel_size_by_prefix``: ``{prefix: floor}`` replacing ``min_rel_size`` for the series
      whose name starts with that prefix (e.g. a larger effect size for representation metrics,
      which wander by a few percent long after a run has converged).
    - ``min_size`` / ``min_rel_size``: absolute / relative (to the pre-onset level) floors on the
      shift, for series whose noise is tiny compared with the changes that matter.
    """

    def __init__(
        self,
        gain_evals: int = 2,
        min_history: int = 6,
        history: int = 16,
        z_trigger: float = 2.0,
        persistence: int = 2,
        confirm_evals: int = 3,
        z_confirm: float = 3.5,
        min_size: float = 0.0,
        min_rel_size: float = 0.02,
        min_rel_size_by_prefix: dict[str, float] | None = None,
    ) -> None:
        if gain_evals < 1 or persistence < 1 or confirm_evals < 1:
            raise ValueError("gain_evals, persistence and confirm_evals must be >= 1")
        if min_history < 2 * gain_evals + 2:
            raise ValueError(f"min_history must be >= 2 * gain_evals + 2 = {2 * gain_evals + 2}")
        self.gain_evals = gain_evals
        self.min_history = min_history
        self.history = history
        self.z_trigger = z_trigger
        self.persistence = persistence
        self.confirm_evals = confirm_evals
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
        """Series with a candidate jump not yet confirmed or dropped (the pre-alarm), mapped to
        the step of its first trigger: what a monitor that wants to measure densely around a
        jump can act on, evaluations before the jump is confirmed."""
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
        """Add one evaluation of ``series`` at ``step``; return the jumps it confirms (0 or 1).

        ``n_eval``: number of items behind the value when it is an accuracy in [0, 1], which
        turns on the binomial noise floor. Steps of a series must increase; a NaN or inf value
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
        gain = state.values[t] - state.values[t - self.gain_evals] if t >= self.gain_evals else 0.0
        z = self._trigger_z(state, t)
        fires = z is not None and abs(z) >= self.z_trigger and np.sign(gain) == np.sign(z)
        pending = state.pending
        if pending is not None:
            same_way = fires and np.sign(z) == pending.direction
            if pending.triggers < self.persistence and same_way:
                pending.triggers += 1
                pending.onset = self._onset(state, pending.first_trigger, t, pending.direction)
            elif pending.triggers < self.persistence or (fires and not same_way):
                # Not persistent, or overtaken by a move the other way (a dip just before a
                # rise): drop the candidate, and let this evaluation start its own.
                state.pending = pending = None
        if pending is None and fires:
            direction = int(np.sign(z))
            onset = self._onset(state, t, t, direction)
            state.pending = pending = _Pending(direction, t, onset)
        if pending is None or pending.triggers < self.persistence:
            return []
        if t - pending.onset + 1 < self.confirm_evals:
            return []
        state.pending = None
        event = self._confirm(series, state, t, pending)
        if event is None:
            return []
        state.start = pending.onset
        self._events.append(event)
        return [event]

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
            # The other floors below only make the scale larger: this evaluation cannot fire, and
            # its exact z is never used. Most evaluations end here, which keeps the detector cheap
            # enough to watch every series at every evaluation.
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

    def _onset(self, state: _Series, first_trigger: int, t: int, direction: int) -> int:
        """The evaluation after the largest one-eval change since the first trigger's gain began.

        Re-estimated at every trigger: noise can make the evaluation just before a jump trigger
        first, and locking the onset there would make the new level look as if it did not hold.
        """
        first = max(state.start + 1, first_trigger - self.gain_evals + 1)
        values = np.asarray(state.values[first - 1 : t + 1])
        return first + int(np.argmax(direction * np.diff(values)))

    def _confirm(self, name: str, state: _Series, t: int, pending: _Pending) -> JumpEvent | None:
        """Test the level after the onset against the pre-onset trend; None if it does not hold."""
        onset = pending.onset
        first = max(state.start, onset - self.history)
        steps = np.asarray(state.steps, dtype=np.float64)
        values = np.asarray(state.values)
        pre_x, pre_y = steps[first:onset], values[first:onset]
        post_x, post_y = steps[onset : t + 1], values[onset : t + 1]
        slope, intercept, residual_sd, x_mean, sxx = _robust_linear_fit(pre_x, pre_y)
        predicted = intercept + slope * post_x
        before, after = float(predicted.mean()), float(post_y.mean())
        shift = after - before

        steps_sd = MAD_TO_SD * _mad(np.diff(pre_y)) / np.sqrt(2.0)
        count = _is_count(state.values[first : t + 1], state.n_evals[first : t + 1])
        model_sd = np.sqrt(_noise_variance(pre_y[-1], state.n_evals[onset - 1], count))
        pre_sd = max(residual_sd, steps_sd, model_sd)
        post_sd = max(pre_sd, np.sqrt(_noise_variance(after, state.n_evals[t], count)))
        leverage = 1.0 / pre_x.size + ((post_x.mean() - x_mean) ** 2 / sxx if sxx > 0 else 0.0)
        standard_error = np.sqrt(pre_sd**2 * leverage + post_sd**2 / post_y.size)
        # A real-valued series that did not move at all before has no noise estimate; a floor of
        # 0.1% of its level keeps its score a finite, comparable number. (Counts have their own
        # Poisson model above.)
        score = shift / max(standard_error, 1e-3 * (1 + abs(before)))
        threshold = self.z_confirm
        if model_sd < max(residual_sd, steps_sd):
            threshold = float(stats.t.isf(stats.norm.sf(self.z_confirm), max(pre_x.size - 2, 1)))

        # The new level must hold from the second post-onset value on: the first may still be
        # mid-rise when a jump spans more than one evaluation (a sigmoid, not a step).
        holds = bool(np.all(pending.direction * (post_y - predicted)[1:] >= abs(shift) / 2))
        moved = pending.direction * (after - (intercept + slope * pre_x[-1])) >= abs(shift) / 2
        rel_size = next((v for k, v in self.min_rel_size_by_prefix.items() if name.startswith(k)),
                        self.min_rel_size)
        large = abs(shift) >= max(self.min_size, rel_size * abs(before))
        if np.sign(shift) != pending.direction or abs(score) < threshold:
            return None
        if not (holds and moved and large):
            return None
        return JumpEvent(
            series=name,
            step=state.steps[t],
            onset_step=state.steps[onset],
            size=shift,
            score=float(score),
            before=before,
            after=after,
            resolution=state.steps[onset] - state.steps[onset - 1],
        )
