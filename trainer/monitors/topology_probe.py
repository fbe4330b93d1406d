"""``topo/...``: representation topology, attention per head and weights, on two schedules.

* **Cheap metrics, fine schedule** (every ``every_n_steps``): effective rank and participation
  ratio of every layer's point cloud, attention entropy and prefix-matching per head, weight norms
  and update ratios. A few milliseconds each on the default model: fine enough to date a change
  to within ``every_n_steps`` steps.
* **Expensive metrics, sparse schedule** (the layers' outputs; the embeddings get the cheap ones
  only): TwoNN, the kNN graph (components, clustering, Fiedler value, cross-domain edges), H0 and
  H1 persistence, at the cheap evaluations that reach the next
  point of a log-spaced schedule (``expensive_per_decade`` per decade of steps) and at every
  cheap evaluation of a *burst*: while the jump detector holds a candidate jump of a capability
  series (its pre-alarm) and for ``burst_steps`` after, so they are dense around a jump.

Everything that decides what is measured at a step is either a function of the step or
checkpointed (the burst's end, the last H1, the previous weights), so a resumed run logs the
same series as an uninterrupted one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import lightning as L
import numpy as np
import torch

from data_mixers.base import ProbeSet
from trainer.measures import topology
from trainer.monitors.bus import Attached, MonitorBus
from trainer.monitors.common import (
    Measurement,
    due,
    forward,
    log_step,
    previous_due,
    readout_at,
    sampler_of,
    timed,
    to_device,
)
from trainer.schema import check_settings

#: The step the fallback topology batch is drawn at: no run reaches it, so it is never a
#: training batch.
FALLBACK_STEP = 2**62


@dataclass
class PointGroup:
    """Rows that one forward pass reads, and the (row, position) of each point in them.
    ``probe`` names the probe set when the rows are its first rows (so the probes' forward pass
    can be shared), else None."""

    batch: dict[str, np.ndarray]
    rows: np.ndarray
    positions: np.ndarray
    probe: str | None = None


def _spread(batch: dict[str, np.ndarray], quota: int) -> tuple[np.ndarray, np.ndarray]:
    """``quota`` counted token positions (loss mask set) spread evenly over the rows, in order:
    points from every document and from early and late in each."""
    rows, positions = np.nonzero(batch["loss_mask"] > 0)
    if len(rows) > quota:
        pick = np.linspace(0, len(rows) - 1, quota).round().astype(int)
        rows, positions = rows[pick], positions[pick]
    return rows, positions


def _document_groups(sets: list[ProbeSet], n_points: int) -> list[PointGroup]:
    """Token positions within documents, ``n_points`` in all, shared evenly among the sets (one
    per domain for text); a set with fewer counted tokens than its share passes the rest on."""
    quotas = [0] * len(sets)
    capacity = [int((s.batch["loss_mask"] > 0).sum()) for s in sets]
    left = n_points
    while left > 0 and any(q < c for q, c in zip(quotas, capacity)):
        open_sets = [i for i, (q, c) in enumerate(zip(quotas, capacity)) if q < c]
        share = max(1, left // len(open_sets))
        for i in open_sets:
            take = min(share, capacity[i] - quotas[i], left)
            quotas[i] += take
            left -= take
    groups, by_width = [], {}
    for probe, quota in zip(sets, quotas):
        if quota:
            rows, positions = _spread(probe.batch, quota)
            by_width.setdefault(probe.batch["input_ids"].shape[1], []).append((probe, rows, positions))
    for members in by_width.values():
        # Sets of one width go through one forward pass: only the rows that hold points.
        keys = set.intersection(*(set(p.batch) for p, _, _ in members))
        parts, all_rows, all_positions, offset = {k: [] for k in keys}, [], [], 0
        for probe, rows, positions in members:
            used, local = np.unique(rows, return_inverse=True)
            for k in keys:
                parts[k].append(probe.batch[k][used])
            all_rows.append(local + offset)
            all_positions.append(positions)
            offset += len(used)
        batch = {k: np.concatenate(v) for k, v in parts.items()}
        groups.append(PointGroup(batch, np.concatenate(all_rows), np.concatenate(all_positions)))
    return groups


def _answer_groups(sets: list[ProbeSet], n_points: int) -> list[PointGroup]:
    """One point per row at the answer position, from the first rows of each answer set."""
    per_set = [n_points // len(sets) + (i < n_points % len(sets)) for i in range(len(sets))]
    groups = []
    for probe, quota in zip(sets, per_set):
        n = min(quota, len(probe.batch["input_ids"]))
        if n:
            batch = {k: v[:n] for k, v in probe.batch.items()}
            positions = np.asarray(probe.answer_positions)[:n]
            groups.append(PointGroup(batch, np.arange(n), positions, probe.name))
    return groups


def topology_points(probes: list[ProbeSet], n_points: int, fallback) -> list[PointGroup]:
    """The fixed points the topology monitor measures, ``n_points`` in all whatever the probes:

    - held-out documents (``loss`` probe sets, one per domain on text): token positions spread
      over every domain's documents, so domain labels and cross-domain kNN edges are defined;
    - else the answer probe sets: the answer position of their first rows (the capability's own
      inputs, and the rows the probes score: their forward pass is shared);
    - and, when those hold fewer than ``n_points`` points, counted positions of a fixed batch
      ``fallback(rows)`` (the sampler at a step no run reaches) make up the rest.
    """
    documents = [p for p in probes if p.kind == "loss"]
    answers = [p for p in probes if p.kind == "answer" and p.answer_positions is not None]
    groups = _document_groups(documents, n_points) if documents else (
        _answer_groups(answers, n_points) if answers else [])
    missing = n_points - sum(len(g.rows) for g in groups)
    if missing > 0:
        batch = fallback(max(1, math.ceil(missing / 4)))
        rows, positions = _spread(batch, missing)
        used, local = np.unique(rows, return_inverse=True)
        groups.append(PointGroup({k: v[used] for k, v in batch.items()}, local, positions))
    return groups


def log_spaced_steps(max_step: int, per_decade: int) -> list[int]:
    """1, then ``per_decade`` points per decade of steps up to ``max_step`` (rounded, unique)."""
    if per_decade <= 0 or max_step < 1:
        return []
    count = int(math.floor(per_decade * math.log10(max_step))) + 1
    return sorted({round(10 ** (i / per_decade)) for i in range(count)})


class TopologyProbe(Attached, L.Callback):
    """Representation topology of fixed points (``topo/<layer>/<metric>``), attention per head
    (``topo/attn<layer>/head<h>/...``) and weights (``topo/weights/...``): cheap metrics every
    ``every_n_steps``, expensive ones on a log-spaced schedule plus bursts around candidate jumps
    (module docstring).

    - ``n_points``: points per layer; ``k``: kNN graph degree.
    - ``expensive_per_decade``: log-spaced expensive evaluations per decade of steps (0: none).
    - ``burst_steps``: after a pre-alarm on a series starting with one of ``burst_prefixes``, the
      expensive metrics run at every cheap evaluation for this many steps (0: no bursts).
    - ``h1_every_n_steps``: H1 (ripser, on ``h1_points`` points) at an expensive evaluation at
      least this many steps after the previous H1; null turns H1 off.
    """

    seconds = 0.0  # wall time spent in this monitor (see common.timed)

    def __init__(self, *, every_n_steps: int, n_points: int, k: int, expensive_per_decade: int,
                 burst_steps: int, burst_prefixes: list[str], h1_every_n_steps: int | None,
                 h1_points: int, attention: bool, weights: bool) -> None:
        # The defaults live in conf/callbacks/default.yaml (trainer.schema.callback_defaults).
        check_settings("callbacks.TopologyProbe", "callbacks.topology", {
            "expensive_per_decade": expensive_per_decade, "burst_steps": burst_steps})
        self.every_n_steps, self.n_points, self.k = every_n_steps, n_points, k
        self.expensive_per_decade, self.burst_steps = expensive_per_decade, burst_steps
        self.burst_prefixes = tuple(burst_prefixes)
        self.h1_every_n_steps, self.h1_points = h1_every_n_steps, h1_points
        self.attention, self.weights = attention, weights
        self.groups: list[PointGroup] = []
        self.schedule: list[int] = []
        self.previous_weights: dict[str, torch.Tensor] | None = None
        self.last_h1: int | None = None
        self.burst_until = -1
        self.burst_alarms: set[tuple[str, int]] = set()  # the candidates a burst was started for
        self._shared: tuple[int, str, dict] | None = None

    def subscribe(self, bus: MonitorBus) -> None:
        bus.forward_sharer = self  # the probes hand over their forward pass when it serves here

    def on_train_start(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero:
            return
        sampler = sampler_of(trainer)
        probes = [p for p in sampler.probe_sets() if p.meta.get("meaningful", True)]
        self.groups = topology_points(probes, self.n_points, lambda rows: sampler.batch(FALLBACK_STEP, rows))
        self.schedule = log_spaced_steps(trainer.max_steps, self.expensive_per_decade)

    # -- the shared forward pass -------------------------------------------------------------

    def shares(self, trainer: L.Trainer, probe: str, rows: int) -> bool:
        """Whether a forward pass of ``probe``'s first ``rows`` rows at this step serves this
        monitor too (it is due, and its single point group is those rows or fewer)."""
        if not (trainer.is_global_zero and due(trainer, self.every_n_steps)) or len(self.groups) != 1:
            return False
        group = self.groups[0]
        return group.probe == probe and len(group.batch["input_ids"]) <= rows

    def receive(self, step: int, probe: str, out: dict) -> None:
        """The probes' forward pass (hidden states and attention of the probe rows) at ``step``."""
        self._shared = (step, probe, out)

    def _outputs(self, model, group: PointGroup, device, step: int) -> dict:
        n = len(group.batch["input_ids"])
        if self._shared is not None and self._shared[:2] == (step, group.probe):
            out = self._shared[2]
            self._shared = None
            return {"hidden": [h[:n] for h in out["hidden"]],
                    "attn": [a[:n] for a in out["attn"]] if out["attn"] is not None else None}
        # The logits are not needed: the output head reads one position only.
        one = torch.zeros(1, dtype=torch.long, device=device)
        with readout_at(model, one, one):
            return forward(model, to_device(group.batch, device), return_hidden=True, return_attn=self.attention)

    # -- the schedules -----------------------------------------------------------------------

    def _expensive(self, trainer: L.Trainer, step: int) -> bool:
        """At the cheap evaluations that reach the next log-spaced step, and during a burst."""
        if self.burst_steps:
            # A new candidate starts a burst of burst_steps; one that stays pending does not
            # stretch it (a capability that keeps climbing after its jump kept one burst going
            # for 700 steps, 27 expensive evaluations), and none starts while one runs.
            alarms = set(self.bus.alarms(self.burst_prefixes).items())
            if alarms - self.burst_alarms and step > self.burst_until:
                self.burst_until = step + self.burst_steps
            self.burst_alarms = alarms
        previous = previous_due(step, self.every_n_steps)
        on_schedule = any(previous < s <= step for s in self.schedule)
        return on_schedule or step <= self.burst_until or step == trainer.max_steps

    def _h1_due(self, step: int) -> bool:
        if not self.h1_every_n_steps:
            return False
        if self.last_h1 is None or step - self.last_h1 >= self.h1_every_n_steps:
            self.last_h1 = step
            return True
        return False

    # -- the measurement ---------------------------------------------------------------------

    @timed
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not (trainer.is_global_zero and self.groups and due(trainer, self.every_n_steps)):
            return
        step = trainer.global_step
        expensive = self._expensive(trainer, step)
        model = pl_module.model
        values, unwatched = measure_topology(
            model, self.groups, lambda group: self._outputs(model, group, pl_module.device, step),
            k=self.k, expensive=expensive, h1=expensive and self._h1_due(step),
            h1_points=self.h1_points,
            report=lambda series, error: self.bus.report_invalid(log_step(trainer), series, error))
        if self.weights:
            params = dict(model.named_parameters())
            try:
                values.update(weight_values(params, self.previous_weights))
            except ValueError as exc:
                self.bus.report_invalid(log_step(trainer), "topo/weights", str(exc))
            self.previous_weights = topology.snapshot(params)
        self.bus.publish(trainer, values, unwatched=unwatched)

    def state_dict(self) -> dict[str, Any]:
        # The previous weights go into the checkpoint, so the update ratio at the first evaluation
        # after a resume is the same as in an uninterrupted run.
        previous = None if self.previous_weights is None else {
            k: v.detach().cpu() for k, v in self.previous_weights.items()}
        return {"previous_weights": previous, "last_h1": self.last_h1, "burst_until": self.burst_until,
                "burst_alarms": sorted(self.burst_alarms)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.previous_weights = state_dict.get("previous_weights")
        self.last_h1 = state_dict.get("last_h1")
        self.burst_until = state_dict.get("burst_until", -1)
        self.burst_alarms = {tuple(a) for a in state_dict.get("burst_alarms", [])}


def measure_topology(model, groups: list[PointGroup], outputs_of, *, k: int, expensive: bool,
                     h1: bool, h1_points: int, report) -> tuple[dict[str, float], set[str]]:
    """The topology of ``groups``' points at every layer, and their attention per head: what the
    online monitor logs at an evaluation, and what ``elab-retro`` measures at a checkpoint (there
    with ``expensive`` at every one). ``outputs_of(group)`` is the model's forward pass over the
    group's rows (hidden states, attention); ``report(series, error)`` hears of a metric that is
    undefined on these points (a degenerate cloud), which is then left out. Returns the values
    and the series the online jump detector does not watch (the expensive ones)."""
    values: dict[str, float] = {}
    unwatched: set[str] = set()

    def measure(series: str, compute, detect: bool = True) -> None:
        """Add ``series/<metric>`` values; an undefined metric is reported, not raised."""
        try:
            new = {f"{series}/{k}": v for k, v in compute().items()}
            values.update(new)
            if not detect:
                unwatched.update(new)
        except ValueError as exc:
            report(series, str(exc))

    with Measurement(model):
        clouds, attention = None, None
        for group in groups:
            out = outputs_of(group)
            device = out["hidden"][0].device
            rows = torch.as_tensor(group.rows, device=device)
            positions = torch.as_tensor(group.positions, device=device)
            points = [h[rows, positions].float() for h in out["hidden"]]
            clouds = points if clouds is None else [torch.cat(p) for p in zip(clouds, points)]
            if out["attn"] is not None and (attention is None or len(group.batch["input_ids"]) > len(attention[1])):
                # Attention over the largest group's rows (one group but for mixed widths).
                attention = (out["attn"], group.batch["input_ids"])
        # One copy of every layer's points to the host.
        host = torch.stack(clouds).to("cpu", torch.float64).numpy()
        labels = np.concatenate([g.batch["domain"][g.rows, g.positions] for g in groups])
        labels = labels if (labels >= 0).all() and len(np.unique(labels)) > 1 else None
        for i, X in enumerate(host):
            name = "topo/emb" if i == 0 else f"topo/layer{i}"
            measure(name, lambda X=X: topology.spectrum_metrics(X))
            if expensive and i > 0:
                # Logged, not fed to the online detector: on a log-spaced schedule with bursts
                # the spacing jumps from hundreds of steps to 25, and a trend fitted to a few
                # sparse points calls the first dense ones a jump (it did, on the converged tail
                # of a long run). elab-retro dates them on a regular grid.
                measure(name, lambda X=X: topology.neighbourhood_metrics(
                    X, labels, k=k, h1=h1, h1_points=h1_points, rng=np.random.default_rng(0)),
                    detect=False)
        if attention:
            for i, layer in enumerate(_attention_by_layer(attention[0], attention[1])):
                measure(f"topo/attn{i}", layer)
    return values, unwatched


def weight_values(params: dict[str, torch.Tensor], previous: dict[str, torch.Tensor] | None) -> dict[str, float]:
    """``topo/weights/...``: norms per parameter group, and the update since ``previous``."""
    return {f"topo/weights/{k}": v for k, v in topology.weight_metrics(params, previous, _param_group).items()}


def _attention_by_layer(attn: list[torch.Tensor], input_ids) -> list:
    """One ``compute`` per layer for ``measure``: the layers' heads are scored in one call of
    ``attention_metrics`` (its masks and host copy once, not once per layer), then split; if that
    call fails, each layer is scored alone so one bad layer does not hide the others."""
    heads = [a.shape[1] for a in attn]
    try:
        joint = topology.attention_metrics(torch.cat(attn, dim=1), input_ids)
    except ValueError:
        return [lambda a=a: topology.attention_metrics(a, input_ids) for a in attn]
    layers, first = [], 0
    for n in heads:
        layer = {}
        for h in range(n):
            for metric in ("entropy", "prefix_match"):
                key = f"head{first + h}/{metric}"
                if key in joint:
                    layer[f"head{h}/{metric}"] = joint[key]
        layers.append(lambda layer=layer: layer)
        first += n
    return layers


def _param_group(name: str) -> str:
    """Weights grouped by block and kind: blocks.0.attn, blocks.0.mlp, tok_emb..."""
    parts = name.split(".")
    return ".".join(parts[:3]) if parts[0] == "blocks" else parts[0]
