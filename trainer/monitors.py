"""Callbacks that watch emergence without disturbing training.

* :class:`CapabilityProbes`  every N steps, the source's fixed probe sets: accuracy *and* the
  log-probability of the right answer (a jump in the first with a smooth second is a metric
  artefact, after Schaeffer et al. 2023), or held-out loss; plus an in-context score.
* :class:`TopologyProbe`     every N steps, hidden states of a fixed probe batch at every layer:
  effective rank, participation ratio, TwoNN, kNN graph, H0 (and H1 less often); attention entropy
  and prefix-matching per head; weight norms and update ratios.
* :class:`DataMeter`         what the mixer really emitted (``data/...``) and the curriculum's knobs
  (``curriculum/...``).
* :class:`JumpWatch`         an online jump detector over every series the others report; events
  go to ``events.jsonl``, the loggers and ``summary.json``.

They run on rank 0 only, on a fixed probe set (never the training loader), in eval mode under
``torch.no_grad`` and a forked RNG, and restore train mode afterwards. A metric that comes out NaN
is reported in the log and ``summary.json`` (``invalid_metrics``), never logged as a number.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F

from data_mixers.base import ProbeSet, StepSampler
from data_mixers.diversity import DiversityMeter
from trainer.measures import topology
from trainer.measures.jumps import JumpDetector, lead_lag

log = logging.getLogger("emergence_lab")


def _sampler(trainer: L.Trainer) -> StepSampler:
    return trainer.datamodule.sampler


def _due(trainer: L.Trainer, every: int) -> bool:
    """After the first step, after every ``every`` steps, and after the last step."""
    step = trainer.global_step
    return step == 1 or step % every == 0 or step == trainer.max_steps


def _log_step(trainer: L.Trainer) -> int:
    """The step a measurement after a training step is logged at: the index of the batch just
    trained on, which is the step Lightning logs that batch's ``train/*`` values at. One row of
    the CSV then holds the loss of batch i and what the model looked like right after it, and a
    resume from a checkpoint taken after batch i keeps exactly the rows up to i."""
    return trainer.global_step - 1


def _timed(hook):
    """Adds the hook's wall time to ``self.seconds``: what the monitor costs, measured where it is
    spent (summary.json's ``monitor_seconds``)."""

    @functools.wraps(hook)
    def wrapper(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return hook(self, *args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - start

    return wrapper


class _Measurement:
    """Eval mode, no grad and a forked RNG for the duration; train mode is restored after."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.module = module

    def __enter__(self):
        self.was_training = self.module.training
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        self.rng = torch.random.fork_rng(devices=devices)
        self.rng.__enter__()
        self.no_grad = torch.no_grad()
        self.no_grad.__enter__()
        self.module.eval()
        return self

    def __exit__(self, *exc):
        self.module.train(self.was_training)
        self.no_grad.__exit__(*exc)
        self.rng.__exit__(*exc)
        return False


def _to_device(batch: dict[str, np.ndarray], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.ascontiguousarray(v)).to(device) for k, v in batch.items()}


def _forward(model, batch: dict[str, torch.Tensor], **kwargs):
    return model(batch["input_ids"], batch.get("item_vectors"), batch.get("item_mask"), **kwargs)


class JumpWatch(L.Callback):
    """Owns the jump detector; the other monitors report their series to it via :meth:`observe`."""

    def __init__(self, min_history: int = 6, z_confirm: float = 3.5, min_rel_size: float = 0.02,
                 watch_prefixes: tuple[str, ...] = ("probe/", "topo/")) -> None:
        self.detector = JumpDetector(min_history=min_history, z_confirm=z_confirm,
                                     min_rel_size=min_rel_size)
        self.watch_prefixes = tuple(watch_prefixes)
        self.invalid: list[dict[str, Any]] = []
        self.trainer: L.Trainer | None = None

    def setup(self, trainer, pl_module, stage: str) -> None:
        self.trainer = trainer
        self.events_path = Path(trainer.default_root_dir) / "events.jsonl"

    def observe(self, step: int, values: dict[str, float], n_eval: dict[str, int] | None = None) -> None:
        trainer = self.trainer
        new = []
        for series, value in values.items():
            if series.startswith(self.watch_prefixes):
                new += self.detector.update(series, step, value, (n_eval or {}).get(series))
        if not new or trainer is None:
            return
        events = [self._event_dict(e) for e in new]
        for event in events:
            log.info("jump in %s at step %d (onset %d): %+.3f (score %.1f)", event["series"],
                     event["step"], event["onset_step"], event["size"], event["score"])
        self._append(events)
        for logger in trainer.loggers:
            logger.log_metrics({f"jump/{e['series']}": e["size"] for e in events}, step=step)
            _wandb_alert(logger, events)

    def _event_dict(self, event) -> dict[str, Any]:
        tokens_per_step = self.trainer.lightning_module.tokens_per_step
        return {**event.to_dict(), "tokens": (event.step + 1) * tokens_per_step}

    def events(self) -> list[dict[str, Any]]:
        return [self._event_dict(e) for e in self.detector.events]

    def _append(self, events: list[dict[str, Any]]) -> None:
        if self.trainer.is_global_zero:
            with (self.events_path).open("a") as f:
                f.writelines(json.dumps(e) + "\n" for e in events)

    def on_train_start(self, trainer, pl_module) -> None:
        # After a resume the detector holds exactly the events up to the checkpoint: the file is
        # rewritten from it, so events confirmed after the checkpoint are not listed twice.
        if trainer.is_global_zero:
            self.events_path.write_text("")
            self._append(self.events())

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
        return lead_lag(self.detector.events)

    def state_dict(self) -> dict[str, Any]:
        return {**self.detector.state_dict(), "invalid": self.invalid}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.detector.load_state_dict(state_dict)
        self.invalid = list(state_dict.get("invalid", []))


def _wandb_alert(logger, events: list[dict[str, Any]]) -> None:
    from lightning.pytorch.loggers import WandbLogger

    if not isinstance(logger, WandbLogger):
        return
    run = logger.experiment
    for e in events:
        run.alert(title=f"jump in {e['series']}",
                  text=f"step {e['step']} (onset {e['onset_step']}): {e['size']:+.3f}, score {e['score']:.1f}")


def _watch(trainer: L.Trainer) -> JumpWatch | None:
    return next((cb for cb in trainer.callbacks if isinstance(cb, JumpWatch)), None)


def _publish(pl_module: L.LightningModule, trainer: L.Trainer, values: dict[str, float],
             n_eval: dict[str, int] | None = None) -> None:
    """Log at the current step and hand the series to the jump detector; a value that is not a
    finite number is reported instead (never logged, never fed to the detector)."""
    step = _log_step(trainer)
    watch = _watch(trainer)
    for key in [k for k, v in values.items() if not np.isfinite(v)]:
        if watch is not None:
            watch.report_invalid(step, key, f"value {values[key]}")
        values = {k: v for k, v in values.items() if k != key}
    if not values:
        return
    for logger in trainer.loggers:
        logger.log_metrics(values, step=step)
    for key, value in values.items():
        trainer.callback_metrics[key] = torch.tensor(value)
    if watch is not None:
        watch.observe(step, values, n_eval)


def score_probe(model, probe: ProbeSet, device: torch.device, max_rows: int) -> tuple[dict[str, float], int]:
    """Metrics of one probe set: (``{name: value}`` without prefix, rows used)."""
    rows = {k: v[:max_rows] for k, v in probe.batch.items()}
    batch = _to_device(rows, device)
    logits = _forward(model, batch).float()
    n = len(rows["input_ids"])
    if probe.kind == "answer":  # only the answer positions: a softmax over every position costs more
        idx = torch.arange(n, device=device)
        pos = torch.as_tensor(probe.answer_positions[:max_rows], device=device)
        answer_logits, answers = logits[idx, pos], batch["targets"][idx, pos]
        logprob = F.log_softmax(answer_logits, dim=-1).gather(-1, answers[:, None]).squeeze(-1)
        correct = answer_logits.argmax(-1) == answers
        return {"acc": correct.float().mean().item(), "logprob": logprob.mean().item()}, n
    logp = F.log_softmax(logits, dim=-1)
    target_logp = logp.gather(-1, batch["targets"].unsqueeze(-1)).squeeze(-1)
    mask = batch["loss_mask"].float()
    out = {"loss": -(target_logp * mask).sum().item() / max(mask.sum().item(), 1.0)}
    # In-context score (Olsson et al. 2022): loss late in the context minus loss early in it, over
    # the counted positions (held-out documents may end before the window does).
    T = mask.shape[1]
    early, late = mask[:, : T // 8 + 1], mask[:, T // 2 :]
    if T >= 8 and early.sum() > 0 and late.sum() > 0:
        late_loss = -(target_logp[:, T // 2 :] * late).sum() / late.sum()
        early_loss = -(target_logp[:, : T // 8 + 1] * early).sum() / early.sum()
        out["icl_score"] = (late_loss - early_loss).item()
    return out, n


class CapabilityProbes(L.Callback):
    """Scores the data source's probe sets every ``every_n_steps`` steps (``probe/<set>/<metric>``)."""

    seconds = 0.0  # wall time spent in this monitor (see _timed)

    def __init__(self, every_n_steps: int = 50, max_rows: int = 512) -> None:
        self.every_n_steps, self.max_rows = every_n_steps, max_rows
        self.probes: list[ProbeSet] = []

    def on_train_start(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero:
            return
        probes = _sampler(trainer).probe_sets()
        # A set the source marks as not meaningful for this data (e.g. in-weights accuracy when
        # every sequence draws a fresh label map: chance by construction) costs time and says
        # nothing.
        self.probes = [p for p in probes if p.meta.get("meaningful", True)]
        for probe in probes:
            if probe not in self.probes:
                log.info("probe set %r skipped: not meaningful for this data", probe.name)

    @_timed
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not (trainer.is_global_zero and self.probes and _due(trainer, self.every_n_steps)):
            return
        values, n_eval = {}, {}
        with _Measurement(pl_module.model):
            for probe in self.probes:
                metrics, n = score_probe(pl_module.model, probe, pl_module.device, self.max_rows)
                for name, value in metrics.items():
                    values[f"probe/{probe.name}/{name}"] = value
                    if name == "acc":
                        n_eval[f"probe/{probe.name}/{name}"] = n
        _publish(pl_module, trainer, values, n_eval)


def _probe_points(batch: dict[str, np.ndarray], probe: ProbeSet | None) -> tuple[np.ndarray, np.ndarray]:
    """(row, position) of one point per row: the answer position, else the last loss position."""
    rows = np.arange(len(batch["input_ids"]))
    if probe is not None and probe.answer_positions is not None:
        return rows, np.asarray(probe.answer_positions)[: len(rows)]
    mask = batch["loss_mask"] > 0
    last = np.where(mask.any(1), mask.shape[1] - 1 - np.argmax(mask[:, ::-1], axis=1), mask.shape[1] - 1)
    return rows, last


class TopologyProbe(L.Callback):
    """Representation topology of a fixed probe batch (``topo/<layer>/<metric>``), attention
    (``topo/attn<layer>/head<h>/...``) and weights (``topo/weights/...``)."""

    seconds = 0.0  # wall time spent in this monitor (see _timed)

    def __init__(self, every_n_steps: int = 100, n_points: int = 256, k: int = 10,
                 h1_every_n_steps: int | None = 1000, h1_points: int = 128,
                 attention: bool = True, weights: bool = True) -> None:
        self.every_n_steps, self.n_points, self.k = every_n_steps, n_points, k
        self.h1_every_n_steps, self.h1_points = h1_every_n_steps, h1_points
        self.attention, self.weights = attention, weights
        self.batch: dict[str, np.ndarray] | None = None
        self.points: tuple[np.ndarray, np.ndarray] | None = None
        self.previous_weights: dict[str, torch.Tensor] | None = None
        self.last_h1: int | None = None

    def on_train_start(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero:
            return
        sampler = _sampler(trainer)
        probes = sampler.probe_sets()
        probe = probes[0] if probes else None
        if probe is not None:
            batch = {k: v[: self.n_points] for k, v in probe.batch.items()}
        else:  # a fixed batch from a step no training run reaches: never a training batch
            batch = sampler.batch(2**62, self.n_points)
        self.batch, self.points = batch, _probe_points(batch, probe)

    @_timed
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not (trainer.is_global_zero and _due(trainer, self.every_n_steps)):
            return
        step = trainer.global_step
        # H1 at the first topology evaluation of each h1_every_n_steps period, whether or not the
        # two periods divide each other.
        want_h1 = bool(self.h1_every_n_steps) and (
            self.last_h1 is None or step // self.h1_every_n_steps > self.last_h1 // self.h1_every_n_steps
        )
        if want_h1:
            self.last_h1 = step
        values: dict[str, float] = {}
        watch = _watch(trainer)

        def measure(series: str, compute) -> None:
            """Add ``series/<metric>`` values; an undefined metric is reported, not raised."""
            try:
                values.update({f"{series}/{k}": v for k, v in compute().items()})
            except ValueError as exc:
                if watch is not None:
                    watch.report_invalid(_log_step(trainer), series, str(exc))

        model = pl_module.model
        with _Measurement(model):
            out = _forward(model, _to_device(self.batch, pl_module.device), return_hidden=True,
                           return_attn=self.attention)
            rows, pos = self.points
            labels = self.batch["domain"][rows, pos]
            labels = labels if (labels >= 0).all() and len(np.unique(labels)) > 1 else None
            for i, hidden in enumerate(out["hidden"]):
                X = hidden[torch.as_tensor(rows), torch.as_tensor(pos)].float().cpu().numpy()
                measure("topo/emb" if i == 0 else f"topo/layer{i}", lambda X=X: topology.point_cloud_metrics(
                    X, labels, k=self.k, h1=want_h1, h1_points=self.h1_points,
                    rng=np.random.default_rng(0)))
            for i, attn in enumerate(out["attn"] or []):
                measure(f"topo/attn{i}", lambda attn=attn: topology.attention_metrics(
                    attn.float().cpu(), self.batch["input_ids"]))
        if self.weights:
            params = dict(model.named_parameters())
            measure("topo/weights", lambda: topology.weight_metrics(params, self.previous_weights, _param_group))
            self.previous_weights = topology.snapshot(params)
        _publish(pl_module, trainer, values)


def _param_group(name: str) -> str:
    """Weights grouped by block and kind: blocks.0.attn, blocks.0.mlp, tok_emb..."""
    parts = name.split(".")
    return ".".join(parts[:3]) if parts[0] == "blocks" else parts[0]


class DataMeter(L.Callback):
    """``data/...``: measured diversity of what the mixer emitted over the last ``window`` global
    batches; ``curriculum/...``: the knobs in effect.

    The sampler is stateless, so the batches are regenerated here from their step numbers at
    logging time: nothing is copied off the device on the training path, and the measurement
    covers the whole global batch, every rank's share included.
    """

    seconds = 0.0  # wall time spent in this monitor (see _timed)

    def __init__(self, every_n_steps: int = 50, window: int = 8) -> None:
        self.every_n_steps, self.window = every_n_steps, window
        self.meter: DiversityMeter | None = None

    @_timed
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not (trainer.is_global_zero and _due(trainer, self.every_n_steps)):
            return
        sampler = _sampler(trainer)
        global_batch = trainer.datamodule.global_batch
        if self.meter is None:
            self.meter = DiversityMeter(window=self.window)
        last = trainer.global_step - 1
        for step in range(max(0, last - self.window + 1), last + 1):
            emitted = sampler.batch(step, global_batch)
            self.meter.update(emitted, sampler.batch_stats(emitted))
        values = {f"data/{k}": float(v) for k, v in self.meter.compute().items()}
        values.update({f"curriculum/{k}": float(v) for k, v in sampler.knobs_at(last).items()})
        _publish(pl_module, trainer, values)
