"""The monitor bus: how the monitors reach the loggers, the jump detector and each other.

The training entry point builds one bus per run and attaches every callback that has an
``attach(bus)`` method (:class:`Attached`). Monitors publish series to it (logged at the log step,
fed to the series subscribers: the jump watch) and subscribe to what they need: the checkpoint
trail to confirmed jumps, the topology monitor's bursts to the jump watch's pre-alarms, the probes
to the topology monitor's offer to share a forward pass, the run summary to what each member adds
to ``summary.json``. No monitor looks another up among the trainer's callbacks, and nothing
re-reads its own run's files.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning as L
import numpy as np
import torch

from trainer.steps import log_step

SeriesSubscriber = Callable[[int, dict[str, float], dict[str, int] | None], None]


class MonitorBus:
    def __init__(self) -> None:
        self.members: list[Any] = []  # attached callbacks, in the order the run lists them
        self._series: list[SeriesSubscriber] = []
        self._invalid: list[Callable[[int, str, str], None]] = []
        self._jumps: list[Callable[[list[dict[str, Any]]], None]] = []
        self._alarms: Callable[[tuple[str, ...]], list[str]] | None = None
        self._summary: list[Callable[[], dict[str, Any]]] = []
        # The monitor that can use the probes' forward pass (hidden states, attention) when it is
        # due at the same step: it offers itself here (see CapabilityProbes).
        self.forward_sharer: Any = None

    def attach(self, callbacks: list[Any]) -> None:
        for callback in callbacks:
            if isinstance(callback, Attached):
                self.members.append(callback)
                callback.attach(self)

    # -- series ------------------------------------------------------------------------------

    def subscribe_series(self, subscriber: SeriesSubscriber) -> None:
        self._series.append(subscriber)

    def subscribe_invalid(self, subscriber: Callable[[int, str, str], None]) -> None:
        self._invalid.append(subscriber)

    def publish(self, trainer: L.Trainer, values: dict[str, float],
                n_eval: dict[str, int] | None = None, unwatched: set[str] = frozenset()) -> None:
        """Log at the current log step and hand the series to the subscribers, but those in
        ``unwatched``; a value that is not a finite number is reported instead (never logged,
        never fed to a subscriber)."""
        step = log_step(trainer.global_step)
        for key in [k for k, v in values.items() if not np.isfinite(v)]:
            self.report_invalid(step, key, f"value {values[key]}")
            values = {k: v for k, v in values.items() if k != key}
        if not values:
            return
        for logger in trainer.loggers:
            logger.log_metrics(values, step=step)
        # The property rebuilds Lightning's metrics on every access: fetched once.
        callback_metrics = trainer.callback_metrics
        for key, value in values.items():
            callback_metrics[key] = torch.tensor(value)
        watched = {k: v for k, v in values.items() if k not in unwatched}
        for subscriber in self._series:
            subscriber(step, watched, n_eval)

    def report_invalid(self, step: int, series: str, error: str) -> None:
        """A metric that came out undefined (NaN, a degenerate point cloud): not logged."""
        for subscriber in self._invalid:
            subscriber(step, series, error)

    # -- jumps and pre-alarms ----------------------------------------------------------------

    def subscribe_jumps(self, subscriber: Callable[[list[dict[str, Any]]], None]) -> None:
        self._jumps.append(subscriber)

    def publish_jumps(self, events: list[dict[str, Any]]) -> None:
        """Confirmed jumps (events.jsonl's records), as the detector confirms them."""
        for subscriber in self._jumps:
            subscriber(events)

    def offer_alarms(self, pending: Callable[[tuple[str, ...]], dict[str, int]]) -> None:
        self._alarms = pending

    def alarms(self, prefixes: tuple[str, ...]) -> dict[str, int]:
        """Series (among ``prefixes``) with a candidate jump not yet confirmed or dropped, mapped
        to the step of the candidate's first trigger (which names the candidate)."""
        return self._alarms(prefixes) if self._alarms is not None else {}

    # -- the run summary ---------------------------------------------------------------------

    def add_to_summary(self, part: Callable[[], dict[str, Any]]) -> None:
        self._summary.append(part)

    def summary(self) -> dict[str, Any]:
        """What the members add to summary.json, and the seconds each spent (as it timed
        itself: ``seconds`` for measuring, ``checkpoint_seconds`` for writing checkpoints)."""
        out: dict[str, Any] = {}
        for part in self._summary:
            out.update(part())
        out["monitor_seconds"] = self._seconds("seconds")
        out["checkpoint_seconds"] = self._seconds("checkpoint_seconds")
        return out

    def _seconds(self, attribute: str) -> dict[str, float]:
        return {type(m).__name__: round(getattr(m, attribute), 3)
                for m in self.members if hasattr(m, attribute)}


class Attached:
    """A callback the entry point attaches to the run's bus (:meth:`MonitorBus.attach`); until
    then (a monitor built by hand, in a test) it has a bus of its own."""

    _bus: MonitorBus | None = None

    @property
    def bus(self) -> MonitorBus:
        if self._bus is None:
            self._bus = MonitorBus()
        return self._bus

    def attach(self, bus: MonitorBus) -> None:
        self._bus = bus
        self.subscribe(bus)

    def subscribe(self, bus: MonitorBus) -> None:
        """Subscribe to what this monitor needs, offer what it gives (nothing by default)."""
