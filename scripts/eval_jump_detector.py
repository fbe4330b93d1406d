"""Measure the jump detector on simulated training curves: false alarms and detection rates.

Each family is a kind of curve a run logs at every evaluation. The no-jump families must not be
flagged (false-alarm rate = fraction of curves with any event). The jump families carry one sharp
step of a known size at a random evaluation; a detection is an event in the right direction whose
onset lies within 2 evaluations of the true one, and its delay is the number of evaluations from
the first post-jump evaluation to confirmation. The ``ramp:`` families spread their rise linearly
over 2, 4 or 8 evaluations (as real transitions do), with and without an accuracy of 0 at step 0
before it; their onset must lie within the rise or one evaluation before it. Any other event on
a jump curve is a false alarm.

    .venv/bin/python scripts/eval_jump_detector.py [--curves 300] [--evals 60] [--seed 0]

Deterministic for a given seed.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from trainer.measures.jumps import JumpDetector

EVAL_EVERY = 100


@dataclass(frozen=True)
class Family:
    name: str
    make: Callable[[np.random.Generator, int], tuple[np.ndarray, int | None, int | None, int]]
    # Where (evals, relative to the true change) an event's onset may lie and still count as
    # found: a sigmoid rise has no single onset, so its window spans the rise.
    window: tuple[int, int] = (-2, 2)


def _binomial(rng: np.random.Generator, p: np.ndarray, n: int) -> np.ndarray:
    return rng.binomial(n, np.clip(p, 0.0, 1.0)) / n


def constant(rng, evals):
    values = rng.uniform(0.2, 0.8) + rng.normal(0, 0.02, evals)
    return values, None, None, 0


def linear_rise(rng, evals):
    t = np.linspace(0, 1, evals)
    values = rng.uniform(0.0, 0.3) + rng.uniform(0.2, 0.6) * t + rng.normal(0, 0.01, evals)
    return values, None, None, 0


def log_rise(rng, evals, noise=0.01):
    t = np.arange(evals)
    tau = rng.uniform(1.0, 10.0)
    shape = np.log1p(t / tau) / np.log1p((evals - 1) / tau)
    values = rng.uniform(0.0, 0.3) + rng.uniform(0.2, 0.6) * shape + rng.normal(0, noise, evals)
    return values, None, None, 0


def accuracy(n: int, low: float, high: float):
    def make(rng, evals):
        drift = rng.uniform(0.0, 0.15) * np.linspace(0, 1, evals)
        return _binomial(rng, rng.uniform(low, high) + drift, n), n, None, 0

    return make


def jump(size: float, n: int | None = 256):
    """A sharp step of ``size`` on a drifting accuracy (binomial noise) or a noisy trend."""

    def make(rng, evals):
        at = int(rng.integers(12, evals - 12))
        t = np.linspace(0, 1, evals)
        step = np.where(np.arange(evals) >= at, size, 0.0)
        if n is None:
            base = rng.uniform(0.0, 0.3) + rng.uniform(0.1, 0.4) * t
            return base + step + rng.normal(0, 0.02, evals), None, at, int(np.sign(size))
        low = rng.uniform(0.05, 0.45) if size > 0 else rng.uniform(0.55, 0.9)
        p = low + rng.uniform(0.0, 0.1) * t + step
        return _binomial(rng, p, n), n, at, int(np.sign(size))

    return make


def emergence(width: float | None, n: int = 512):
    """What the embedded default logs: accuracy 0 at step 0 (the answer format is not learned
    yet), chance within an eval, then -- with ``width`` -- a sigmoid rise of +0.6 over about
    4 x width evals (None: no rise)."""

    def make(rng, evals):
        t = np.arange(evals)
        at = int(rng.integers(12, evals - 12)) if width else None
        p = 0.25 + rng.uniform(0.0, 0.05) * t / evals
        if width:
            p = p + 0.6 / (1 + np.exp(-(t - at) / width))
        p[0] = 0.0
        return _binomial(rng, p, n), n, at, 1 if width else 0

    return make


def ramp(size: float, evals_over: int, transient: bool, n: int = 256):
    """A rise of ``size`` spread linearly over ``evals_over`` evaluations on a drifting accuracy
    (binomial noise), as real transitions are; with ``transient``, an accuracy of 0 at step 0
    before it (the answer format not learned yet)."""

    def make(rng, evals):
        at = int(rng.integers(12, evals - 12 - evals_over))
        t = np.arange(evals)
        low = rng.uniform(0.05, 0.45)
        p = low + rng.uniform(0.0, 0.1) * t / evals + size * np.clip((t - at + 1) / evals_over, 0, 1)
        if transient:
            p[0] = 0.0
        return _binomial(rng, p, n), n, at, 1

    return make


def count(mean_low: float, mean_high: float, level_after: float | None = None):
    """A count-valued series (graph components, H1 bars): Poisson around a level, and with
    ``level_after`` a step to that level at a random evaluation (a real change of structure)."""

    def make(rng, evals):
        level = np.full(evals, rng.uniform(mean_low, mean_high))
        at = None
        if level_after is not None:
            at = int(rng.integers(12, evals - 12))
            level[at:] = level_after
        return rng.poisson(level).astype(float), None, at, 0 if at is None else 1

    return make


def count_split(rng, evals):
    """What the default run's knn_components did: exactly 1 for a long time, then 5 or 6 (a few
    points splitting off the graph): within a Poisson count's chance moves, not a jump."""
    at = int(rng.integers(20, evals - 8))
    values = np.ones(evals)
    values[at:] = rng.integers(4, 7, evals - at)
    return values, None, None, 0


FAMILIES = [
    Family("no jump: constant + noise", constant),
    Family("no jump: linear rise", linear_rise),
    Family("no jump: log rise", log_rise),
    Family("no jump: log rise, noise 0.002", lambda rng, evals: log_rise(rng, evals, 0.002)),
    Family("no jump: accuracy n=256", accuracy(256, 0.05, 0.8)),
    Family("no jump: accuracy n=512", accuracy(512, 0.05, 0.8)),
    Family("no jump: accuracy ~0, n=256", accuracy(256, 0.0, 0.01)),
    Family("no jump: step-0 transient, n=512", emergence(None)),
    Family("no jump: count, Poisson mean 1-20", count(1.0, 20.0)),
    Family("no jump: count 1, then 4-6", count_split),
    *(Family(f"jump {size:+.2f}, accuracy n=256", jump(size)) for size in (0.05, 0.1, 0.2, 0.4)),
    *(Family(f"jump {size:+.2f}, accuracy n=512", jump(size, 512)) for size in (0.05, 0.1, 0.2)),
    *(Family(f"drop {size:+.2f}, accuracy n=256", jump(size)) for size in (-0.1, -0.2)),
    Family("jump +0.20 on rise, noise 0.02", jump(0.2, None)),
    Family("drop -0.20 on rise, noise 0.02", jump(-0.2, None)),
    Family("count: Poisson 2 -> 20", count(2.0, 2.0, 20.0)),
    *(Family(f"emergence: sigmoid +0.6, width {w}", emergence(w),
             window=(-int(2 + 2 * w), int(2 + 2 * w)))
      for w in (0.5, 1.0, 2.0)),
    # A ramp is found when the event's onset lies within its rise, or an evaluation before it.
    *(Family(f"ramp: {size:+.2f} over {over} evals{', step-0 transient' if transient else ''}",
             ramp(size, over, transient), window=(-1, over - 1))
      for transient in (False, True) for size in (0.2, 0.4) for over in (2, 4, 8)),
]


def run_family(family: Family, curves: int, evals: int, rng: np.random.Generator) -> dict:
    false_alarms = detected = jump_curves = 0
    delays, onset_errors = [], []
    for _ in range(curves):
        values, n_eval, at, direction = family.make(rng, evals)
        detector = JumpDetector()
        jump_curves += at is not None
        hit = False
        for index, value in enumerate(values):
            for event in detector.update("s", index * EVAL_EVERY, value, n_eval):
                onset = event.onset_step // EVAL_EVERY
                if at is not None and not hit and np.sign(event.size) == direction:
                    if family.window[0] <= onset - at <= family.window[1]:
                        hit = True
                        delays.append(event.step // EVAL_EVERY - at)
                        onset_errors.append(onset - at)
                        continue
                false_alarms += 1
                break
        detected += hit
    return {
        "false_alarms": false_alarms / curves,
        "detected": detected / jump_curves if jump_curves else None,
        "delay": float(np.median(delays)) if delays else None,
        "onset_error": float(np.median(np.abs(onset_errors))) if onset_errors else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--curves", type=int, default=300, help="curves per family")
    parser.add_argument("--evals", type=int, default=60, help="evaluations per curve")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    start = time.perf_counter()
    print(f"JumpDetector defaults, {args.curves} curves x {args.evals} evals per family")
    header = f"{'family':<44} {'false alarms':>12} {'detected':>9} {'delay':>6} {'onset err':>9}"
    print(header)
    print("-" * len(header))
    for family in FAMILIES:
        result = run_family(family, args.curves, args.evals, rng)

        def cell(value, fmt, width):
            return f"{'-':>{width}}" if value is None else f"{value:>{width}{fmt}}"

        print(
            f"{family.name:<44} {result['false_alarms']:>12.1%} "
            f"{cell(result['detected'], '.1%', 9)} {cell(result['delay'], '.1f', 6)} "
            f"{cell(result['onset_error'], '.1f', 9)}"
        )
    print(f"({time.perf_counter() - start:.1f} s; delay and onset error: median, in evaluations)")


if __name__ == "__main__":
    main()
