"""Curricula: schedules of a source's data knobs, written as data.

A curriculum maps progress through the run's budget, ``step / total_steps`` in ``[0, 1]``, to
overrides of knobs the source was configured with (``p_bursty``, ``n_classes``, ...). Expressing
the schedule in fractions of the budget rather than in steps keeps one curriculum file valid for
every budget of a sweep.

The source owns its knobs: it merges the overrides into its configured values with
:func:`effective_knobs` (which rounds integer knobs) and rejects knobs it cannot schedule with
:func:`check_curriculum` before training. Because sampling is a pure function of the step, a
curriculum needs no state and resumes exactly.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from data_mixers.base import DataConfigError

RAMP_SHAPES = ("linear", "cosine")


def _progress(step: int, total_steps: int) -> float:
    if total_steps <= 0:
        raise DataConfigError(f"a curriculum needs a positive number of steps, got {total_steps}")
    return min(max(step / total_steps, 0.0), 1.0)


class Curriculum:
    """No overrides: the source's configured knobs hold for the whole run (the default)."""

    def at(self, step: int, total_steps: int) -> dict[str, float]:
        """The knob overrides in force at ``step`` of a run of ``total_steps``."""
        return {}

    def ranges(self) -> dict[str, tuple[float, float]]:
        """The lowest and highest value each scheduled knob takes, so that a source can validate
        every value the schedule will reach before training starts."""
        return {}


class Constant(Curriculum):
    """Named alias of the empty curriculum, for ``conf/curriculum/constant.yaml``."""


class Stages(Curriculum):
    """Piecewise-constant stages, looked up by progress.

    ``stages`` is a list of mappings ``{until: fraction, <knob>: value, ...}`` with increasing
    ``until``; the stage in force is the first whose ``until`` exceeds the progress, and the last
    stage (whose ``until`` must be 1.0) holds to the end. A knob a stage does not name takes the
    source's configured value during that stage.
    """

    def __init__(self, stages: Sequence[Mapping[str, float]]) -> None:
        if not stages:
            raise DataConfigError("curriculum.stages is empty: give at least one stage")
        self.stages: list[tuple[float, dict[str, float]]] = []
        previous = 0.0
        for i, stage in enumerate(stages):
            if "until" not in stage:
                raise DataConfigError(f"curriculum.stages[{i}] has no 'until' (fraction of budget)")
            until = float(stage["until"])
            if not previous < until <= 1.0:
                raise DataConfigError(
                    f"curriculum.stages[{i}].until={until} must lie in ({previous}, 1.0]: stages "
                    "are ordered by the fraction of the budget at which they end"
                )
            knobs = {}
            for knob, value in stage.items():
                if knob == "until":
                    continue
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise DataConfigError(
                        f"curriculum.stages[{i}].{knob}={value!r}: a curriculum moves numeric "
                        "knobs only"
                    )
                knobs[knob] = float(value)
            self.stages.append((until, knobs))
            previous = until
        if previous != 1.0:
            raise DataConfigError(
                f"curriculum.stages[{len(stages) - 1}].until={previous}: the last stage must run "
                "until 1.0"
            )

    def at(self, step: int, total_steps: int) -> dict[str, float]:
        progress = _progress(step, total_steps)
        for until, knobs in self.stages:
            if progress < until:
                return dict(knobs)
        return dict(self.stages[-1][1])

    def ranges(self) -> dict[str, tuple[float, float]]:
        values: dict[str, list[float]] = {}
        for _, knobs in self.stages:
            for knob, value in knobs.items():
                values.setdefault(knob, []).append(value)
        return {knob: (min(v), max(v)) for knob, v in values.items()}


class Ramp(Curriculum):
    """Knobs moving from a start to an end value over ``[start_frac, end_frac]`` of the budget.

    ``knobs`` maps each knob to ``{start: value, end: value}``; before ``start_frac`` a knob holds
    its start value, after ``end_frac`` its end value. ``shape='linear'`` moves at a constant rate;
    ``shape='cosine'`` starts and ends slowly (half a cosine period), lingering near both
    endpoints, and crosses the linear ramp at the midpoint.
    """

    def __init__(
        self,
        knobs: Mapping[str, Mapping[str, float]],
        start_frac: float = 0.0,
        end_frac: float = 1.0,
        shape: str = "linear",
    ) -> None:
        if shape not in RAMP_SHAPES:
            raise DataConfigError(f"curriculum.shape={shape!r} is not one of {list(RAMP_SHAPES)}")
        if not 0.0 <= start_frac < end_frac <= 1.0:
            raise DataConfigError(
                f"curriculum.start_frac={start_frac}, curriculum.end_frac={end_frac}: need "
                "0 <= start_frac < end_frac <= 1"
            )
        if not knobs:
            raise DataConfigError("curriculum.knobs is empty: name at least one knob to ramp")
        self.endpoints: dict[str, tuple[float, float]] = {}
        for knob, ends in knobs.items():
            if not isinstance(ends, Mapping) or set(ends) != {"start", "end"}:
                raise DataConfigError(
                    f"curriculum.knobs.{knob} must be a mapping {{start: value, end: value}}, "
                    f"got {ends!r}"
                )
            self.endpoints[knob] = (float(ends["start"]), float(ends["end"]))
        self.start_frac, self.end_frac, self.shape = float(start_frac), float(end_frac), shape

    def weight(self, progress: float) -> float:
        """How far along the ramp the knobs are at ``progress``: 0 at the start, 1 at the end."""
        t = (progress - self.start_frac) / (self.end_frac - self.start_frac)
        t = min(max(t, 0.0), 1.0)
        return t if self.shape == "linear" else (1.0 - math.cos(math.pi * t)) / 2.0

    def at(self, step: int, total_steps: int) -> dict[str, float]:
        w = self.weight(_progress(step, total_steps))
        return {knob: start + (end - start) * w for knob, (start, end) in self.endpoints.items()}

    def ranges(self) -> dict[str, tuple[float, float]]:
        return {knob: (min(ends), max(ends)) for knob, ends in self.endpoints.items()}


def _typed(base_value: float, value: float) -> float:
    """A scheduled value in the type of the configured one: integer knobs (class counts, pool
    sizes) are rounded, since a ramp between integers passes through fractions."""
    if isinstance(base_value, int) and not isinstance(base_value, bool):
        return int(round(value))
    return float(value)


def check_curriculum(
    curriculum: Curriculum | None, base: Mapping[str, float], source: str
) -> dict[str, tuple[float, float]]:
    """Reject knobs ``source`` cannot schedule (naming them) and return the range each scheduled
    knob spans, typed like its configured value, for the source to validate."""
    if curriculum is None:
        return {}
    if not isinstance(curriculum, Curriculum):
        raise DataConfigError(
            "curriculum must be a data_mixers.curriculum.Curriculum, "
            f"got {type(curriculum).__name__}"
        )
    ranges = curriculum.ranges()
    unknown = sorted(set(ranges) - set(base))
    if unknown:
        raise DataConfigError(
            f"the curriculum schedules {', '.join(f'data.{k}' for k in unknown)}, which {source} "
            f"cannot schedule (it can: {', '.join(sorted(base))})"
        )
    return {k: (_typed(base[k], lo), _typed(base[k], hi)) for k, (lo, hi) in ranges.items()}


def effective_knobs(
    base: Mapping[str, float],
    curriculum: Curriculum | None,
    step: int,
    total_steps: int | None,
) -> dict[str, float]:
    """The configured knobs ``base`` with the curriculum's overrides at ``step`` merged in."""
    knobs = dict(base)
    if curriculum is None:
        return knobs
    if total_steps is None:
        if curriculum.ranges():
            raise RuntimeError(
                "a scheduled curriculum needs the run's length: call sampler.bind(total_steps) "
                "before sampling"
            )
        return knobs
    for knob, value in curriculum.at(step, total_steps).items():
        knobs[knob] = _typed(base[knob], value)
    return knobs
