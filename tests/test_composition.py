"""The two-hop composition source (data=composition) and its presets."""

from __future__ import annotations

import json

import numpy as np
import pytest

from data_mixers.base import DataConfigError
from data_mixers.samplers.composition import Composition
from tests.conftest import compose_cfg
from trainer.train import train


def facts_of(sampler: Composition, batch: dict) -> set[tuple[int, ...]]:
    """The facts a batch holds, as (h, r1, r2 or -1, answer) with relation ids un-offset."""
    e, out = sampler.entities, set()
    for ids, tgt, mask in zip(batch["input_ids"], batch["targets"], batch["loss_mask"]):
        pos = int(np.flatnonzero(mask)[0])
        r2 = int(ids[2]) - e if pos == 2 else -1
        out.add((int(ids[0]), int(ids[1]) - e, r2, int(tgt[pos])))
    return out


def as_set(facts: np.ndarray) -> set[tuple[int, ...]]:
    return {tuple(int(x) for x in f) for f in facts}


def test_graph_split_and_phi_hold_their_promises():
    s = Composition(entities=60, relations=8, out_degree=4, phi=3.0, heldout_inferred=50, seed=3)
    tail = {(int(h), int(r)): int(t) for h, r, t in s.atomic}
    ood = {(int(h), int(r)) for (h, r, _), o in zip(s.atomic, s.is_ood) if o}
    assert len(s.atomic) == 240 and len(ood) == 12
    # phi is what was asked; every inferred fact is the composition of two atomic facts
    assert len(s.train_inferred) == 720
    for h, r1, r2, t2 in np.concatenate([s.train_inferred, s.heldout, s.ood_inferred]):
        assert tail[(tail[(h, r1)], r2)] == t2
    # training compositions use ID hops only; the OOD probe has an OOD hop in every fact
    for h, r1, r2, _ in s.train_inferred:
        assert (h, r1) not in ood and (tail[(h, r1)], r2) not in ood
    for h, r1, r2, _ in s.ood_inferred:
        assert (h, r1) in ood or (tail[(h, r1)], r2) in ood
    # the held-out ID facts are never trained
    assert not as_set(s.heldout) & as_set(s.train_inferred)


def test_training_rows_are_the_training_facts_and_a_pure_function_of_seed_step_row():
    s = Composition(entities=40, relations=6, out_degree=3, phi=2.0, heldout_inferred=20, seed=1)
    batch = s.rows(7, 0, 256)
    trained = as_set(s.train_inferred) | {(h, r, -1, t) for h, r, t in s.atomic.tolist()}
    assert facts_of(s, batch) <= trained
    assert not facts_of(s, batch) & as_set(s.heldout)
    part = s.rows(7, 100, 110)
    for key in batch:
        np.testing.assert_array_equal(part[key], batch[key][100:110])
    again = Composition(entities=40, relations=6, out_degree=3, phi=2.0, heldout_inferred=20, seed=1)
    np.testing.assert_array_equal(again.rows(7, 0, 256)["input_ids"], batch["input_ids"])
    other = Composition(entities=40, relations=6, out_degree=3, phi=2.0, heldout_inferred=20, seed=2)
    assert not np.array_equal(other.atomic, s.atomic)
    # about phi / (1 + phi) of the rows are compositions
    share = s.batch_stats(s.rows(8, 0, 4096))["inferred_share"]
    assert abs(share - 2 / 3) < 0.03


def test_probe_sets_answer_where_the_loss_counts():
    s = Composition(entities=40, relations=6, out_degree=3, phi=2.0, heldout_inferred=20, seed=0)
    probes = {p.name: p for p in s.probe_sets()}
    assert set(probes) == {"composition_id", "composition_ood", "atomic", "inferred_train"}
    for p in probes.values():
        rows = np.arange(len(p.answer_positions))
        assert (p.batch["loss_mask"][rows, p.answer_positions] == 1).all()
    assert (probes["atomic"].answer_positions == 1).all()
    assert (probes["composition_id"].answer_positions == 2).all()


@pytest.mark.parametrize(("knobs", "key"), [
    ({"phi": 50.0}, "data.phi"),
    ({"out_degree": 9, "relations": 4}, "data.out_degree"),
    ({"ood_fraction": 1.0}, "data.ood_fraction"),
    ({"entities": 1}, "data.entities"),
])
def test_bad_knobs_are_refused_naming_the_key(knobs, key):
    with pytest.raises(DataConfigError, match=key.replace(".", r"\.")):
        Composition(**{"entities": 40, "relations": 6, "out_degree": 3, **knobs})


def test_the_composition_preset_runs_and_logs_every_probe(tmp_path):
    cfg = compose_cfg([
        "experiment=composition_phi", "pl=cpu", "progress=none", "data.entities=40",
        "data.relations=6", "data.out_degree=3", "data.phi=2.0", "data.heldout_inferred=20",
        "data.probe_size=20", "batch.global_size=32", "budget.tokens=1920",
        "callbacks.probes.every_n_steps=5", "callbacks.topology.every_n_steps=5",
        "log_every_n_steps=5", "optim.warmup_steps=2", f"paths.cache_dir={tmp_path / 'cache'}",
    ], tmp_path / "run")
    summary = train(cfg)
    assert summary["status"] == "completed" and summary["steps"] == 20
    for name in ("composition_id", "composition_ood", "atomic", "inferred_train"):
        assert 0.0 <= summary["metrics"][f"probe/{name}/acc"] <= 1.0
    assert summary["data"]["phi_measured"] == pytest.approx(2.0)
    vocabulary = json.loads((tmp_path / "run" / "vocabulary.json").read_text())
    assert vocabulary["task"] == "composition" and vocabulary["names"][:2] == ["e0", "e1"]
