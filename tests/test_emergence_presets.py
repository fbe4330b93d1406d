"""The presets that reproduce published emergence (issue "Published emergence"): transient
in-context learning and knowledge extraction by entity count compose to the sweep they promise
and run end to end at a tiny size through the real entry point."""

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO
from tests.test_sweep_presets import compose_with_hydra


def _values(params, key):
    return str(params[key]).split(",")


def _tiny_sweep(tmp_path, overrides):
    """A multirun of the real entry point; returns each job's summary and resolved config."""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "OMP_NUM_THREADS": "1",
           "WANDB_MODE": "offline", "PYTHONPATH": str(REPO)}
    sweep = tmp_path / "sweep"
    result = subprocess.run(
        [sys.executable, "-m", "trainer.train", "-m", *overrides, "progress=none",
         "optim.warmup_steps=2", f"paths.cache_dir={tmp_path / 'cache'}",
         f"hydra.sweep.dir={sweep}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr[-3000:]
    return [json.loads(p.read_text()) for p in sorted(sweep.glob("*/summary.json"))]


def test_icl_transient_preset_sweeps_weight_decay_over_three_seeds_on_the_bursty_task():
    cfg = compose_with_hydra(["experiment=icl_transient"])
    params = cfg.hydra.sweeper.params
    decays = sorted(float(v) for v in _values(params, "optim.weight_decay"))
    assert len(decays) >= 2 and decays[0] == 0.0 and decays[-1] > 0.0
    assert len(_values(params, "seed")) >= 3
    data = cfg.data
    assert data._target_.endswith("BurstyClasses") and cfg.model._target_.endswith("AttnOnly")
    # Singh et al.: fully bursty contexts and one fixed class -> label map (in-weights learning
    # is possible); held-out classes give their pure in-context evaluator.
    assert data.p_bursty == 1.0 and data.label_mapping_diversity == 1
    assert data.n_heldout_classes > 0


@pytest.mark.slow
def test_icl_transient_preset_runs_tiny_and_probes_both_strategies_at_each_decay(tmp_path):
    runs = _tiny_sweep(tmp_path, ["experiment=icl_transient", "seed=0", "budget.tokens=20000",
                                  "callbacks.probes.every_n_steps=4"])
    decays = sorted(run["config"]["optim"]["weight_decay"] for run in runs)
    assert len(runs) >= 2 and decays[0] == 0.0 and decays[-1] > 0.0
    for run in runs:
        assert run["status"] == "completed"
        for probe in ("icl", "iwl"):
            assert 0.0 <= run["metrics"][f"probe/{probe}/acc"] <= 1.0


def test_knowledge_extraction_entities_preset_grows_entities_at_a_fixed_budget_per_entity():
    cfg = compose_with_hydra(["experiment=knowledge_extraction_entities"])
    params = cfg.hydra.sweeper.params
    assert set(_values(params, "curriculum")) == {"qa_two_stage", "qa_mixed"}
    assert len(_values(params, "seed")) >= 2
    assert _values(params, "data.source.descriptions_per_entity") == ["1"]
    per_entity, entities = set(), []
    for scale in _values(params, "+entity_scale"):
        one = compose_with_hydra(["experiment=knowledge_extraction_entities", f"+entity_scale={scale}"])
        n = one.data.source.entities_per_domain * one.data.source.n_domains
        entities.append(n)
        per_entity.add(one.budget.tokens / n)
    assert sorted(entities) == [64, 256, 1024] and len(per_entity) == 1


@pytest.mark.slow
def test_knowledge_extraction_entities_preset_runs_tiny_at_two_sizes(tmp_path):
    runs = _tiny_sweep(tmp_path, [
        "experiment=knowledge_extraction_entities", "+entity_scale=e64,e256", "seed=0",
        "curriculum=qa_mixed", "model.d_model=32", "batch.global_size=8", "budget.tokens=10240",
        "callbacks.probes.every_n_steps=4", "callbacks.topology.every_n_steps=10"])
    assert sorted(run["config"]["data"]["source"]["entities_per_domain"] for run in runs) == [64, 256]
    for run in runs:
        assert run["status"] == "completed"
        assert 0.0 <= run["metrics"]["probe/world_facts/acc"] <= 1.0
