"""The monitors: probes score right and wrong models, callbacks never change the training curve,
undefined metrics are reported (not logged), and the embedded default shows a detected in-context
jump that burstiness 0 does not."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from data_mixers.base import ProbeSet
from tests.conftest import compose_cfg
from trainer.monitors import score_probe
from trainer.train import train


class Oracle(torch.nn.Module):
    """Puts all its mass on ``answers`` (right, or wrong when shifted)."""

    def __init__(self, vocab: int, shift: int) -> None:
        super().__init__()
        self.vocab, self.shift = vocab, shift

    def forward(self, input_ids, item_vectors=None, item_mask=None):
        logits = torch.full((*input_ids.shape, self.vocab), -30.0)
        nxt = (input_ids.roll(-1, dims=1) + self.shift) % self.vocab
        logits.scatter_(-1, nxt.unsqueeze(-1), 30.0)
        return logits


def copy_probe() -> ProbeSet:
    ids = np.random.default_rng(0).integers(0, 10, size=(32, 6))
    batch = {"input_ids": ids, "targets": np.roll(ids, -1, axis=1),
             "loss_mask": np.ones(ids.shape, np.float32), "domain": np.zeros_like(ids)}
    return ProbeSet("copy", batch, kind="answer", answer_positions=np.full(32, 3))


def test_probe_scores_a_right_and_a_wrong_model():
    right, n = score_probe(Oracle(10, 0), copy_probe(), torch.device("cpu"), max_rows=512)
    wrong, _ = score_probe(Oracle(10, 1), copy_probe(), torch.device("cpu"), max_rows=512)
    assert n == 32
    assert right["acc"] == 1.0 and right["logprob"] > -1e-6
    assert wrong["acc"] == 0.0 and wrong["logprob"] < -50


def read_csv(run) -> list[dict[str, str]]:
    with (run / "csv" / "metrics.csv").open() as f:
        return list(csv.DictReader(f))


def test_monitors_do_not_change_the_training_curve(tmp_path, tiny_overrides):
    not_data = [o for o in tiny_overrides if not o.startswith(("data", "model"))]
    # Dropout on: a monitor that left the model in eval mode or drew from the training RNG would
    # change the curve.
    common = [*not_data, "data=bursty_classes", "data.n_classes=32", "model=attn_only", "model.dropout=0.1",
              "budget.tokens=5440"]
    often = ["callbacks.probes.every_n_steps=2", "callbacks.topology.every_n_steps=2",
             "callbacks.topology.n_points=32", "callbacks.topology.h1_every_n_steps=4",
             "callbacks.data_meter.every_n_steps=2"]
    train(compose_cfg([*common, "callbacks=minimal"], tmp_path / "plain"))
    summary = train(compose_cfg([*common, "callbacks=default", *often], tmp_path / "watched"))
    plain = [r["train/loss"] for r in read_csv(tmp_path / "plain") if r.get("train/loss")]
    watched_rows = read_csv(tmp_path / "watched")
    watched = [r["train/loss"] for r in watched_rows if r.get("train/loss")]
    assert plain == watched and len(plain) == 20
    logged = set(watched_rows[0])
    for key in ("probe/icl/acc", "probe/icl/logprob", "topo/layer2/erank", "topo/layer1/h1_total",
                "topo/attn0/head0/prefix_match", "topo/weights/total/update_ratio",
                "data/domain_entropy_bits", "data/burstiness"):
        assert key in logged, key
        assert key in summary["metrics"], key


def test_an_undefined_metric_is_reported_not_logged(tmp_path, tiny_overrides):
    # Modular arithmetic's probe point is the '=' position: its embedding is the same point for
    # every row, a degenerate cloud whose topology is undefined.
    run = tmp_path / "run"
    summary = train(compose_cfg([*tiny_overrides, "callbacks.topology.every_n_steps=5"], run))
    invalid = {e["series"]: e for e in summary["invalid_metrics"]}
    assert "topo/emb" in invalid and invalid["topo/emb"]["count"] >= 2
    header = set(read_csv(run)[0])
    assert not any(k.startswith("topo/emb/") for k in header)
    assert "topo/layer1/erank" in header


@pytest.mark.slow
@pytest.mark.parametrize("p_bursty,expect_jump", [(1.0, True), (0.0, False)])
def test_default_run_shows_the_in_context_jump_only_with_burstiness(tmp_path, p_bursty, expect_jump):
    run = tmp_path / "run"
    summary = train(compose_cfg(["progress=none", f"data.p_bursty={p_bursty}",
                                 "budget.tokens=1200000", f"paths.cache_dir={tmp_path}"], run))
    capability = [e for e in summary["jumps"] if e["series"] == "probe/icl/acc" and e["size"] > 0]
    events = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    assert events == summary["jumps"]
    if expect_jump:
        assert capability, summary["jumps"]
        assert capability[0]["after"] - capability[0]["before"] > 0.2
        assert summary["metrics"]["probe/icl/acc"] > 0.8
    else:
        assert not [e for e in summary["jumps"] if e["series"].startswith("probe/")]
        assert summary["metrics"]["probe/icl/acc"] < 0.3


def test_loss_probe_gives_held_out_loss_and_in_context_score():
    # Rows whose second half repeats the first: a copying oracle is right only late in the
    # context, so its late loss is far below its early loss.
    rng = np.random.default_rng(0)
    half = rng.integers(0, 10, size=(8, 8))
    ids = np.concatenate([half, half], axis=1)
    batch = {"input_ids": ids, "targets": np.roll(ids, -1, axis=1),
             "loss_mask": np.ones(ids.shape, np.float32), "domain": np.zeros_like(ids)}

    class LateCopier(torch.nn.Module):
        def forward(self, input_ids, item_vectors=None, item_mask=None):
            logits = torch.zeros((*input_ids.shape, 10))
            nxt = input_ids.roll(-1, dims=1)
            logits[:, 8:].scatter_(-1, nxt[:, 8:].unsqueeze(-1), 30.0)
            return logits

    metrics, n = score_probe(LateCopier(), ProbeSet("h", batch, kind="loss"), torch.device("cpu"), 64)
    assert n == 8 and metrics["loss"] > 0.5
    assert metrics["icl_score"] < -1.0


def _every_value(run) -> dict[tuple[int, str], float]:
    """Every logged (step, series) of csv/metrics.csv, but the wall-clock throughput."""
    return {(int(r["step"]), k): float(v) for r in read_csv(run) for k, v in r.items()
            if v not in ("", None) and k not in ("step", "train/tokens_per_s")}


def test_monitors_resume_exactly(tmp_path, tiny_overrides):
    from tests.test_train import CrashAt

    # Every monitor on a schedule that straddles the checkpoint at step 10: H1 every 3 steps at
    # most, expensive metrics log-spaced and in bursts, the data meter's cumulative counts.
    overrides = [*tiny_overrides, "budget.tokens=1920", "model.n_layer=2",
                 "callbacks.probes.every_n_steps=2", "callbacks.topology.every_n_steps=2",
                 "callbacks.topology.n_points=24", "callbacks.topology.k=4",
                 "callbacks.topology.expensive_per_decade=3", "callbacks.topology.burst_steps=4",
                 "callbacks.topology.h1_every_n_steps=3", "callbacks.topology.h1_points=16",
                 "callbacks.data_meter.every_n_steps=3", "callbacks.data_meter.window=2"]
    straight, crashed = tmp_path / "straight", tmp_path / "crashed"
    train(compose_cfg(overrides, straight))
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(compose_cfg(overrides, crashed), callbacks=[CrashAt(13)])
    summary = train(compose_cfg([*overrides, "ckpt_path=last"], crashed))
    assert summary["resumed_from_step"] == 10
    expected, resumed = _every_value(straight), _every_value(crashed)
    assert {k for k, _ in expected} == {k for k, _ in resumed}
    series = {k for _, k in expected}
    for needed in ("topo/weights/total/update_ratio", "topo/layer2/h1_total", "topo/layer2/knn_components",
                   "data/domains_seen", "probe/heldout/acc"):
        assert needed in series, needed
    # The first evaluation after the resume (step 11, logged at 11) has its update ratio.
    assert (11, "topo/weights/total/update_ratio") in resumed
    missing = sorted(set(expected) - set(resumed))
    extra = sorted(set(resumed) - set(expected))
    assert not missing and not extra, (missing[:5], extra[:5])
    different = [key for key in expected if resumed[key] != pytest.approx(expected[key], rel=1e-6, abs=1e-9)]
    assert not different, different[:10]


def _documents(name, domain, rows, counted):
    ids = np.arange(rows * 8).reshape(rows, 8)
    mask = np.zeros((rows, 8), np.float32)
    mask[:, :counted] = 1.0
    batch = {"input_ids": ids, "targets": ids, "loss_mask": mask, "domain": np.full((rows, 8), domain)}
    return ProbeSet(name, batch, kind="loss")


def test_topology_points_span_every_domain_and_are_topped_up():
    from trainer.monitors.topology_probe import log_spaced_steps, topology_points

    # Text: 3 domains of 4 held-out documents. Points come from every domain's documents, at
    # several positions per document, n_points in all.
    sets = [_documents(f"heldout/d{d}", d, rows=4, counted=6) for d in range(3)]
    (group,) = topology_points(sets, 30, fallback=None)
    labels = group.batch["domain"][group.rows, group.positions]
    assert len(labels) == 30 and sorted(np.bincount(labels)) == [10, 10, 10]
    assert len({(r, p) for r, p in zip(group.rows, group.positions)}) == 30
    assert (group.batch["loss_mask"][group.rows, group.positions] > 0).all()
    # Too few counted tokens: a fixed fallback batch makes up the rest.
    small = [_documents("heldout/a", 0, rows=1, counted=3)]
    groups = topology_points(small, 20, fallback=lambda rows: _documents("x", 1, rows * 4, 8).batch)
    assert sum(len(g.rows) for g in groups) == 20
    # Answer probes: the answer position of the first rows, shareable with the probes' forward.
    (answer,) = topology_points([copy_probe()], 16, fallback=None)
    assert answer.probe == "copy" and list(answer.rows) == list(range(16))
    assert (answer.positions == 3).all()
    assert log_spaced_steps(1838, 4) == [1, 2, 3, 6, 10, 18, 32, 56, 100, 178, 316, 562, 1000, 1778]


def test_the_readout_at_the_answer_positions_gives_the_same_logits():
    from trainer.models import AttnOnly
    from trainer.monitors.common import readout_at

    model = AttnOnly(vocab_size=30, max_seq_len=8, n_layer=1, n_head=1, d_model=16).eval()
    ids = torch.randint(0, 30, (4, 8), generator=torch.Generator().manual_seed(0))
    rows, positions = torch.arange(4), torch.tensor([1, 2, 3, 7])
    full = model(ids)
    with readout_at(model, rows, positions):
        only = model(ids)
    assert only.shape == (4, 30)
    torch.testing.assert_close(only, full[rows, positions])
    assert model(ids).shape == (4, 8, 30), "the hook is removed after the block"


def test_probes_are_dense_early_then_every_n_steps():
    from types import SimpleNamespace

    from trainer.monitors import CapabilityProbes

    probes = CapabilityProbes(every_n_steps=50, max_rows=8, dense_every_n_steps=25, dense_until_step=500)
    due = [s for s in range(1, 1001) if probes.due(SimpleNamespace(global_step=s, max_steps=1000))]
    assert due[:4] == [1, 25, 50, 75] and 475 in due and 525 not in due and 550 in due
    assert due[-1] == 1000 and len(due) == 1 + 20 + 10
    plain = CapabilityProbes(every_n_steps=50, max_rows=8)
    assert 25 not in [s for s in range(1, 101) if plain.due(SimpleNamespace(global_step=s, max_steps=1000))]


def test_a_candidate_jump_that_stays_pending_starts_one_burst_and_does_not_stretch_it():
    from types import SimpleNamespace

    from trainer.monitors import TopologyProbe

    topo = TopologyProbe(every_n_steps=25, n_points=8, k=3, expensive_per_decade=0, burst_steps=100,
                         burst_prefixes=["probe/"], h1_every_n_steps=None, h1_points=8,
                         attention=False, weights=False)
    pending = {"probe/icl/acc": 500}
    topo._bus = SimpleNamespace(alarms=lambda prefixes: dict(pending))
    trainer = SimpleNamespace(max_steps=5000)
    expensive = [s for s in range(525, 1500, 25) if topo._expensive(trainer, s)]
    assert expensive == [525, 550, 575, 600, 625], "one burst of 100 steps, however long it stays pending"
    pending["probe/icl/acc"] = 1500  # a new candidate (a new first trigger) starts a new burst
    assert topo._expensive(trainer, 1525) and topo._expensive(trainer, 1625)
    assert not topo._expensive(trainer, 1650)
