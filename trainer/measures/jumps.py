"""Online detection of abrupt changes -- steps and ramps -- in many logged series (capabilities,
topology, weights).

Why not CUSUM or BOCPD: on simulated training curves both flagged about half of the curves that
had no jump at all, because learning curves drift, rise smoothly, and accuracies carry binomial
noise that depends on their level. The detector asks instead "did the series leave the trend of
its recent history, within at most ``ramp_evals`` evaluations, for a new level that holds, by far
more than its noise allows?":

1. **Segments.** A series starts afresh after each confirmed change (from the next evaluation),
   so one change is reported once; and an early transient (any of the first ``transient_evals``
   values far outside the values after them, such as an accuracy of 0 before the answer format is
   learned) is a segment of its own, not history whose trend would hide the next rise. No flag is
   possible before ``min_history`` values of a segment precede a change.
2. **Confirmation: a scan over rise widths.** At every evaluation the last ``confirm_evals``
   values are a candidate new level. For each rise width L = 0 (a step) ... ``ramp_evals``, the L
   values before them are the rise (left out) and the values before the rise the old level. Old
   and new level share one slope and differ by a shift (least squares); the shift must exceed
   ``z_confirm`` standard errors, ``min_size`` and ``min_rel_size`` times the level; every
   new-level value must lie beyond half the shift from the old trend (the level holds) and within
   half of it of each other (it is a level, not the middle of a rise), and the new level must lie
   half the shift beyond the last old values. The width with the largest score wins: a sigmoid
   spread over several evaluations is caught whole, while a steady, accelerating or slowing rise
   is not, its new level being where its own trend goes. The onset is the first value of the rise
   from which every value lies beyond half the shift.
3. **Pre-alarm.** A cheap trigger -- the gain over the last ``gain_evals`` evaluations as a robust
   z-score against the segment's earlier gains, on ``persistence`` consecutive evaluations -- names
   the series with a candidate change before it can be confirmed (:meth:`pending`), for monitors
   that measure densely around a change.

**Chance.** An accuracy with a known chance level (:meth:`JumpDetector.set_chance`) changes only
if its old or new level lies ``z_confirm`` binomial deviations above chance (a model at chance
answers one label for every row, and which label wanders); a fade back to chance is a change.

The noise is the larger of the residual spread around the two levels' line and a model: for
accuracies evaluated on ``n_eval`` items the binomial standard deviation, for count-valued series
(integers, no binomial model: graph components, H1 bars) a Poisson one. Other series (topology,
weights) have no model, and real ones are not white noise: their residuals are autocorrelated
(the variance is inflated by the AR(1) factor (1 + r) / (1 - r)) and their level wanders like a
random walk (a drift variance per evaluation, estimated from the series' own record, is added for
the evaluations between the two levels); a noise estimated from a few values is judged by the
Student-t quantile of the same tail probability. ``scripts/eval_jump_detector.py`` measures
false-alarm and detection rates on simulated curves; ``scripts/calibrate_detector.py`` counts
false alarms on real runs where nothing emerges.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from trainer.measures.jump_noise import (
    MAD_TO_SD,
    autocorrelation,
    drift_variance,
    is_count,
    mad,
    noise_variance,
    residual_sd,
    t_threshold,
    within_chance,
)

#: How many of a series' values (across segments) its drift is estimated from.
DRIFT_RECORD = 64
#: Distance (in noise standard deviations) beyond which an early value is a transient.
TRANSIENT_Z = 4.0


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
    triggers: int = 1


@dataclass
class _Series:
    steps: list[int] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    n_evals: list[int | None] = field(default_factory=list)
    start: int = 0
    settled: bool = False  # whether the early transient has been decided
    pending: _Pending | None = None
    chance: float | None = None  # an accuracy's chance level, when its source knows it


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
        self._chance: dict[str, float] = {}

    def set_chance(self, levels: dict[str, float]) -> None:
        """The chance levels of accuracy series (``{series: level}``); see the module text."""
        self._chance.update({k: float(v) for k, v in levels.items()})
        for name, state in self._series.items():
            state.chance = self._chance.get(name)

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
            },
            "chance": dict(self._chance),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Rebuild the detector by replaying the observations of :meth:`state_dict`.

        Replaying rather than storing internals keeps a checkpoint valid across changes of the
        detector's internals, and yields exactly the events of an uninterrupted run.
        """
        self._series, self._events = {}, []
        self.set_chance(state.get("chance") or {})
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
        state = self._series.get(series)
        if state is None:
            state = self._series[series] = _Series(chance=self._chance.get(series))
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
        count = is_count(state.values, state.n_evals)
        noise = max(
            MAD_TO_SD * mad([b - a for a, b in zip(later, later[1:])]) / math.sqrt(2.0),
            math.sqrt(noise_variance(centre, state.n_evals[k], count)),
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
            state.pending = _Pending(int(np.sign(z)), t)

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
        gain_sd = MAD_TO_SD * statistics.median([abs(g - centre) for g in gains])
        deviation = values[t] - values[t - m] - centre
        floor = max(gain_sd, 1e-12 * (1 + abs(values[t])))
        if abs(deviation) < self.z_trigger * floor:
            # The other floors below only make the scale larger: this evaluation cannot fire.
            return deviation / floor
        first_value = max(state.start, reference_end - self.history + 1)
        line_sd = residual_sd(state.steps[first_value : reference_end + 1],
                              values[first_value : reference_end + 1])
        count = is_count(values[first_value : t + 1], n_evals[first_value : t + 1])
        model_sd = math.sqrt(
            noise_variance(values[t - m], n_evals[t - m], count)
            + noise_variance(values[t], n_evals[t], count)
        )
        return deviation / max(floor, math.sqrt(2.0) * line_sd, model_sd)

    def _scan(self, name: str, state: _Series, t: int) -> JumpEvent | None:
        """The best-scoring rise width whose new level (the last ``confirm_evals`` values) is
        confirmed against the old level before it; None if no width is."""
        new = t - self.confirm_evals + 1
        if new - state.start < self.min_history:
            return None
        steps, values = state.steps, state.values
        post_x, post_y = steps[new : t + 1], values[new : t + 1]
        after = sum(post_y) / len(post_y)
        count = is_count(values[state.start : t + 1], state.n_evals[state.start : t + 1])
        rel_size = next((v for k, v in self.min_rel_size_by_prefix.items() if name.startswith(k)),
                        self.min_rel_size)
        # Necessary for "the new level moved half the shift beyond the last old values", "lies
        # within half the shift" and "is large" (|after| <= |before| + |shift|), before any fit:
        # the new level must lie that far from the median of the last three old values. Its
        # width-independent part is computed once; it ends most tests of most series.
        needed = max(max(post_y) - min(post_y),
                     max(self.min_size, rel_size * abs(after) / (1 + rel_size)) / 2)
        best = None
        for width in range(self.ramp_evals + 1):
            rise = new - width
            if rise - state.start < self.min_history:
                break
            a, b, c = values[rise - 3], values[rise - 2], values[rise - 1]
            if abs(after - (a + b + c - max(a, b, c) - min(a, b, c))) < needed:
                continue
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
        if within_chance(pre_ym, after, state.chance, state.n_evals[t], self.z_confirm):
            return None  # both levels at chance: the preferred wrong label moved, no capability
        residual = ([y - pre_ym - slope * (x - pre_xm) for x, y in zip(pre_x, pre_y)]
                    + [y - after - slope * (x - post_xm) for x, y in zip(post_x, post_y)])
        dof = n + m - 3
        # Root mean square, not a MAD: on the 6-16 values of an old level the MAD is often half
        # the true spread, and every one of those underestimates is a false alarm.
        spread = math.sqrt(sum(r * r for r in residual) / max(dof, 1))
        n_eval = state.n_evals[rise - 1]
        model = count or n_eval is not None
        model_sd = math.sqrt(max(noise_variance(pre_ym, n_eval, count),
                                 noise_variance(after, state.n_evals[t], count)))
        # Without a model the residuals are the noise, and they are autocorrelated: the variance
        # of a mean (and of a trend) of n of them is (1 + r) / (1 - r) times the independent one.
        rho = 0.0 if model else autocorrelation(residual[:n])
        inflation = (1 + rho) / (1 - rho)
        leverage = 1.0 / n + 1.0 / m + ((post_xm - pre_xm) ** 2 / sxx if sxx > 0 else 0.0)
        variance = max(spread, model_sd) ** 2 * inflation * leverage
        if not model:
            # And their level wanders: a random walk's variance grows with the evaluations
            # between the two levels' centres.
            variance += drift_variance(state.values[max(0, rise - DRIFT_RECORD) : rise]) * (
                (new + t) / 2 - (first + rise - 1) / 2)
        standard_error = math.sqrt(variance)
        # A series that never moved has no noise estimate: 0.1% of its level keeps the score finite.
        score = shift / max(standard_error, 1e-3 * (1 + abs(before)))
        threshold = self.z_confirm
        if not model:
            # The noise is estimated from these few values alone: judged by the Student-t quantile
            # of the same tail probability, so that a stretch that happens to look quiet does not
            # confirm noise. (A model's noise is a floor the estimate never goes below.)
            threshold = t_threshold(self.z_confirm, dof)
        if abs(score) < threshold:
            return None
        return score, shift, before, lambda x: pre_ym + slope * (x - pre_xm)
