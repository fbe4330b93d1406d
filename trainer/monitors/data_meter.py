"""``data/...`` and ``curriculum/...``: what the mixer really emitted, and the knobs in effect."""

from __future__ import annotations

from typing import Any

import lightning as L

from data_mixers.diversity import DiversityMeter
from trainer.monitors.bus import Attached
from trainer.monitors.common import due, log_step, sampler_of, timed


class DataMeter(Attached, L.Callback):
    """``data/...``: measured diversity of what the mixer emitted over the last ``window`` global
    batches; ``curriculum/...``: the knobs in effect.

    The sampler is stateless, so the batches are regenerated here from their step numbers at
    logging time: nothing is copied off the device on the training path, and the measurement
    covers the whole global batch, every rank's share included. What the meter accumulates beyond
    its window (the domains seen so far) is checkpointed, so a resumed run logs the same values.
    """

    seconds = 0.0  # wall time spent in this monitor (see common.timed)

    def __init__(self, *, every_n_steps: int, window: int) -> None:
        self.every_n_steps, self.window = every_n_steps, window
        self.meter: DiversityMeter | None = None
        self._restored_domains: list[int] = []

    @timed
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not (trainer.is_global_zero and due(trainer, self.every_n_steps)):
            return
        sampler = sampler_of(trainer)
        global_batch = trainer.datamodule.global_batch
        if self.meter is None:
            self.meter = DiversityMeter(window=self.window)
            self.meter._domains_seen.update(self._restored_domains)
        last = log_step(trainer)
        for step in range(max(0, last - self.window + 1), last + 1):
            emitted = sampler.batch(step, global_batch)
            self.meter.update(emitted, sampler.batch_stats(emitted))
        values = {f"data/{k}": float(v) for k, v in self.meter.compute().items()}
        values.update({f"curriculum/{k}": float(v) for k, v in sampler.knobs_at(last).items()})
        self.bus.publish(trainer, values)

    def state_dict(self) -> dict[str, Any]:
        seen = sorted(self.meter._domains_seen) if self.meter is not None else self._restored_domains
        return {"domains_seen": [int(d) for d in seen]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._restored_domains = list(state_dict.get("domains_seen", []))
        self.meter = None
