"""The online jump detector as a callback: every series the other monitors publish goes through it."""

from __future__ import annotations

import logging
from typing import Any

import lightning as L

from trainer.measures.jumps import JumpDetector, JumpEvent
from trainer.measures.leadlag import lead_lag
from trainer.monitors.bus import Attached, MonitorBus
from trainer.report import accuracy_chance, chance_levels
from trainer.run_dir import RunDir
from trainer.steps import tokens_seen

log = logging.getLogger("emergence_lab")

#: The series a change of which is a capability change (the probes'); see JumpWatch.reported.
CAPABILITY = "probe/"


class JumpWatch(Attached, L.Callback):
    """Owns the jump detector: it subscribes to every series the monitors publish on the bus,
    offers its pre-alarms, and publishes the jumps it confirms (to the trail, among others)."""

    def __init__(self, *, topology_min_rel_size: float, companion_window: int | None,
                 watch_prefixes: tuple[str, ...] = ("probe/", "topo/", "llc/"),
                 **detector: Any) -> None:
        """``detector``: the :class:`JumpDetector` knobs (``callbacks.jumps`` in the config; their
        defaults live in conf/callbacks/default.yaml, trainer.schema.callback_defaults).
        ``companion_window``: see :meth:`reported` (None: every event is reported)."""
        self.detector = JumpDetector(**detector,
                                     min_rel_size_by_prefix={"topo/": topology_min_rel_size})
        self.watch_prefixes = tuple(watch_prefixes)
        self.companion_window = companion_window
        self.invalid: list[dict[str, Any]] = []
        self.trainer: L.Trainer | None = None

    def subscribe(self, bus: MonitorBus) -> None:
        bus.subscribe_series(self.observe)
        bus.subscribe_invalid(self.report_invalid)
        bus.offer_alarms(self.pending)
        bus.add_to_summary(self.summary)

    def summary(self) -> dict[str, Any]:
        return {"jumps": self.events(), "lead_lag": self.lead_lag(), "invalid_metrics": self.invalid}

    def setup(self, trainer, pl_module, stage: str) -> None:
        self.trainer = trainer
        self.run_dir = RunDir(trainer.default_root_dir)
        datamodule = getattr(trainer, "datamodule", None)
        if datamodule is not None and getattr(datamodule, "sampler", None) is not None:
            self.detector.set_chance(accuracy_chance(chance_levels(datamodule.sampler.probe_sets())))

    def observe(self, step: int, values: dict[str, float], n_eval: dict[str, int] | None = None) -> None:
        """Feed one evaluation of some series to the detector; log and record what it confirms."""
        trainer = self.trainer
        if step == 0:
            # The evaluation after the first batch measures the initialisation, not learning: its
            # jump to the early plateau (an accuracy of 0 before the answer format is learned)
            # would sit in the noise history for 16 evaluations and hide the next real rise.
            # It is logged like any other; the detector starts with the second evaluation.
            return
        new = []
        for series, value in values.items():
            if watched(series, self.watch_prefixes):
                new += self.detector.update(series, step, value, (n_eval or {}).get(series))
        if not new or trainer is None:
            return
        everything = self.detector.events
        earlier = set(self.reported(everything[: len(everything) - len(new)]))
        events = [self._event_dict(e) for e in self.reported(everything) if e not in earlier]
        if not events:
            return
        for event in events:
            log.info("jump in %s at step %d (onset %d): %+.3f (score %.1f)", event["series"],
                     event["step"], event["onset_step"], event["size"], event["score"])
        self._append(events)
        self.bus.publish_jumps(events)
        for logger in trainer.loggers:
            logger.log_metrics({f"jump/{e['series']}": e["size"] for e in events}, step=step)
            _wandb_alert(logger, events)

    def pending(self, prefixes: tuple[str, ...] = ("probe/",)) -> dict[str, int]:
        """Series (among ``prefixes``) with a candidate jump the detector has not yet confirmed or
        dropped, mapped to the candidate's first trigger step: the pre-alarm the topology monitor
        densifies its expensive metrics on."""
        return {name: step for name, step in self.detector.pending().items() if name.startswith(prefixes)}

    def _event_dict(self, event) -> dict[str, Any]:
        # Tokens seen at the confirmation step (a log step, see trainer.steps).
        tokens_per_step = self.trainer.lightning_module.tokens_per_step
        return {**event.to_dict(), "tokens": tokens_seen(event.step, tokens_per_step)}

    def reported(self, events: list[JumpEvent]) -> list[JumpEvent]:
        """The events a run reports: every capability (``probe/``) event, and the others (topology,
        weights) when a capability event's onset lies within ``companion_window`` steps of
        theirs -- the moves that come with a capability change. A model that learns in weights
        keeps reorganising its representations (a run without burstiness flagged 11-33 of them,
        real and irrelevant to emergence); such an event waits, unreported, for a capability
        event near it, and is written when one is confirmed."""
        if self.companion_window is None:
            return list(events)
        onsets = [e.onset_step for e in events if e.series.startswith(CAPABILITY)]
        return [e for e in events if e.series.startswith(CAPABILITY)
                or any(abs(e.onset_step - onset) <= self.companion_window for onset in onsets)]

    def events(self) -> list[dict[str, Any]]:
        return [self._event_dict(e) for e in self.reported(self.detector.events)]

    def _append(self, events: list[dict[str, Any]]) -> None:
        if self.trainer.is_global_zero:
            self.run_dir.append_events(events)

    def on_train_start(self, trainer, pl_module) -> None:
        # After a resume the detector holds exactly the events up to the checkpoint: the file is
        # rewritten from it, so events confirmed after the checkpoint are not listed twice.
        if trainer.is_global_zero:
            self.run_dir.start_events(self.events())
            self.bus.publish_jumps(self.events())

    def report_invalid(self, step: int, series: str, error: str) -> None:
        """A metric that came out undefined (NaN, a degenerate point cloud): recorded, not logged.
        Warned about once per series; summary.json counts every occurrence."""
        entry = next((e for e in self.invalid if e["series"] == series), None)
        if entry is None:
            log.warning("step %d: %s is undefined and is not logged (%s)", step, series, error)
            self.invalid.append({"series": series, "first_step": step, "count": 1, "error": error})
        else:
            entry["count"] += 1

    def lead_lag(self) -> list[dict[str, Any]]:
        """summary.json's ``lead_lag``: :func:`trainer.measures.leadlag.lead_lag` of the events."""
        return lead_lag(self.events())

    def state_dict(self) -> dict[str, Any]:
        return {**self.detector.state_dict(), "invalid": self.invalid}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.detector.load_state_dict(state_dict)
        self.invalid = list(state_dict.get("invalid", []))


def watched(series: str, prefixes: tuple[str, ...]) -> bool:
    """Whether JumpWatch feeds ``series`` to the detector: those under ``prefixes`` but update
    ratios, which follow the learning-rate schedule (the cosine decay made every one of them fall
    by a "jump" or two on runs where nothing emerges) and, read against it, are heavy-tailed noise
    around a constant."""
    return series.startswith(prefixes) and not series.endswith("/update_ratio")


def _wandb_alert(logger, events: list[dict[str, Any]]) -> None:
    from lightning.pytorch.loggers import WandbLogger

    if not isinstance(logger, WandbLogger):
        return
    run = logger.experiment
    for e in events:
        run.alert(title=f"jump in {e['series']}",
                  text=f"step {e['step']} (onset {e['onset_step']}): {e['size']:+.3f}, score {e['score']:.1f}")
