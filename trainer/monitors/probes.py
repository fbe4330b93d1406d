"""``probe/<set>/<metric>``: the data source's fixed probe sets, scored every N steps."""

from __future__ import annotations

import contextlib
import logging

import lightning as L
import torch
import torch.nn.functional as F

from data_mixers.base import ProbeSet
from trainer.monitors.bus import Attached
from trainer.monitors.common import (
    Measurement,
    due,
    forward,
    gather_logits,
    readout_at,
    sampler_of,
    timed,
    to_device,
)

log = logging.getLogger("emergence_lab")


def probe_rows(probe: ProbeSet, max_rows: int) -> dict:
    return {k: v[:max_rows] for k, v in probe.batch.items()}


def answer_index(probe: ProbeSet, max_rows: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    pos = torch.as_tensor(probe.answer_positions[:max_rows], device=device)
    return torch.arange(len(pos), device=device), pos


def _readout(model, probe: ProbeSet, max_rows: int, device):
    """Answer probes read one position per row: the output head runs there only."""
    if probe.kind != "answer":
        return contextlib.nullcontext()
    return readout_at(model, *answer_index(probe, max_rows, device))


def score_logits(logits: torch.Tensor, batch: dict[str, torch.Tensor], probe: ProbeSet,
                 max_rows: int) -> dict[str, torch.Tensor]:
    """Metrics of one probe set from the model's logits on its rows, as 0-d tensors (no host
    sync here: the caller copies all of them at once)."""
    logits = logits.float()
    if probe.kind == "answer":  # only the answer positions: a softmax over every position costs more
        idx, pos = answer_index(probe, max_rows, logits.device)
        answer_logits, answers = gather_logits(logits, idx, pos), batch["targets"][idx, pos]
        logprob = F.log_softmax(answer_logits, dim=-1).gather(-1, answers[:, None]).squeeze(-1)
        correct = answer_logits.argmax(-1) == answers
        return {"acc": correct.float().mean(), "logprob": logprob.mean()}
    logp = F.log_softmax(logits, dim=-1)
    target_logp = logp.gather(-1, batch["targets"].unsqueeze(-1)).squeeze(-1)
    mask = batch["loss_mask"].float()
    out = {"loss": -(target_logp * mask).sum() / mask.sum().clamp_min(1.0)}
    # In-context score (Olsson et al. 2022): loss late in the context minus loss early in it, over
    # the counted positions (held-out documents may end before the window does).
    T = mask.shape[1]
    early, late = mask[:, : T // 8 + 1], mask[:, T // 2 :]
    if T >= 8:
        late_loss = -(target_logp[:, T // 2 :] * late).sum() / late.sum()
        early_loss = -(target_logp[:, : T // 8 + 1] * early).sum() / early.sum()
        # NaN when either part has no counted position (the score is then not defined for this
        # set, and _to_host leaves it out)
        out["icl_score"] = late_loss - early_loss
    return out


def _to_host(metrics: dict[str, torch.Tensor]) -> dict[str, float]:
    """One copy to the host for all values; an undefined in-context score is left out."""
    values = dict(zip(metrics, torch.stack(list(metrics.values())).tolist()))
    return {k: v for k, v in values.items() if not (k.endswith("icl_score") and v != v)}


def score_probe(model, probe: ProbeSet, device: torch.device, max_rows: int) -> tuple[dict[str, float], int]:
    """Metrics of one probe set: (``{name: value}`` without prefix, rows used)."""
    rows = probe_rows(probe, max_rows)
    batch = to_device(rows, device)
    with _readout(model, probe, max_rows, device):
        logits = forward(model, batch)
    metrics = score_logits(logits, batch, probe, max_rows)
    return _to_host(metrics), len(rows["input_ids"])


class CapabilityProbes(Attached, L.Callback):
    """Scores the data source's probe sets every ``every_n_steps`` steps (``probe/<set>/<metric>``).

    When the topology monitor is due at the same step and reads its points from the first rows of
    a probe set scored here, that set's forward pass also returns hidden states and attention and
    is handed over: one forward serves both monitors.
    """

    seconds = 0.0  # wall time spent in this monitor (see common.timed)

    def __init__(self, *, every_n_steps: int, max_rows: int, dense_every_n_steps: int | None = None,
                 dense_until_step: int = 0) -> None:
        """``dense_every_n_steps`` / ``dense_until_step``: also every so many steps up to that
        step. The jump detector needs ``min_history`` evaluations of the old level before a
        change, so a capability that rises early needs denser probes than one that rises late."""
        self.every_n_steps, self.max_rows = every_n_steps, max_rows
        self.dense_every_n_steps, self.dense_until_step = dense_every_n_steps, dense_until_step
        self.probes: list[ProbeSet] = []

    def due(self, trainer) -> bool:
        step = trainer.global_step
        return due(trainer, self.every_n_steps) or bool(
            self.dense_every_n_steps and step <= self.dense_until_step
            and step % self.dense_every_n_steps == 0)

    def on_train_start(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero:
            return
        probes = sampler_of(trainer).probe_sets()
        # A set the source marks as not meaningful for this data (e.g. in-weights accuracy when
        # every sequence draws a fresh label map: chance by construction) costs time and says
        # nothing.
        self.probes = [p for p in probes if p.meta.get("meaningful", True)]
        for probe in probes:
            if probe not in self.probes:
                log.info("probe set %r skipped: not meaningful for this data", probe.name)

    @timed
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not (trainer.is_global_zero and self.probes and self.due(trainer)):
            return
        topo = self.bus.forward_sharer
        metrics, n_eval = {}, {}
        model = pl_module.model
        with Measurement(model):
            for probe in self.probes:
                rows = to_device(probe_rows(probe, self.max_rows), pl_module.device)
                n = len(rows["input_ids"])
                with _readout(model, probe, self.max_rows, pl_module.device):
                    if topo is not None and topo.shares(trainer, probe.name, n):
                        out = forward(model, rows, return_hidden=True, return_attn=topo.attention)
                        topo.receive(trainer.global_step, probe.name, out)
                        logits = out["logits"]
                    else:
                        logits = forward(model, rows)
                for name, value in score_logits(logits, rows, probe, self.max_rows).items():
                    metrics[f"probe/{probe.name}/{name}"] = value
                n_eval[f"probe/{probe.name}/acc"] = n
        self.bus.publish(trainer, _to_host(metrics), n_eval)
