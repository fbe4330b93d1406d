"""Launcher and sweeper presets compose (no cluster here: composing is the test), and multirun
directories are unique per job."""

import hydra_plugins.hydra_joblib_launcher  # noqa: F401 - the dev extra installs the plugins
import hydra_plugins.hydra_optuna_sweeper  # noqa: F401
import hydra_plugins.hydra_submitit_launcher  # noqa: F401
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from trainer.train import CONF_DIR


def compose_with_hydra(overrides):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("train", overrides=overrides, return_hydra_config=True)


def test_slurm_launcher_preset_composes():
    cfg = compose_with_hydra(["hydra/launcher=slurm", "hydra.launcher.partition=gpu"])
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.partition == "gpu" and launcher.gpus_per_node == 1 and launcher.timeout_min == 120


def test_local_parallel_launcher_preset_composes():
    cfg = compose_with_hydra(["hydra/launcher=local_parallel"])
    assert cfg.hydra.launcher._target_.endswith("JoblibLauncher") and cfg.hydra.launcher.n_jobs == 2


def test_optuna_preset_composes_with_in_memory_storage():
    cfg = compose_with_hydra(["hydra/sweeper=optuna_tpe", "optimized_metric=probe/icl/acc"])
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper") and sweeper.storage is None
    assert sweeper.direction == "maximize" and sweeper.sampler.seed == cfg.seed


def test_runs_started_in_the_same_second_get_their_own_dirs():
    runs = {compose_with_hydra([]).hydra.run.dir for _ in range(3)}
    sweeps = {compose_with_hydra([]).hydra.sweep.dir for _ in range(3)}
    assert len(runs) == 3 and len(sweeps) == 3


@pytest.mark.slow
def test_optuna_preset_runs_and_reports_the_best_point(tmp_path):
    import subprocess
    import sys

    import yaml

    from tests.conftest import REPO

    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "OMP_NUM_THREADS": "1",
           "WANDB_MODE": "offline", "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-m", "trainer.train", "-m", "experiment=icl_optuna",
         "hydra.sweeper.n_trials=2", "budget.tokens=30000", "optim.warmup_steps=2",
         "progress=none", f"hydra.sweep.dir={tmp_path / 'sweep'}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr[-3000:]
    best = yaml.safe_load((tmp_path / "sweep" / "optimization_results.yaml").read_text())
    assert set(best["best_params"]) == {"data.p_bursty", "data.n_classes"}
    assert 0.0 <= best["best_value"] <= 1.0


def test_diversity_vs_scale_preset_puts_model_size_against_diversity_with_seeds():
    cfg = compose_with_hydra(["experiment=diversity_vs_scale"])
    params = cfg.hydra.sweeper.params
    sizes = [int(v) for v in str(params["model.d_model"]).split(",")]
    levels = str(params["data.label_mapping_diversity"]).split(",")
    assert len(sizes) >= 3 and max(sizes) >= 8 * min(sizes)  # width^2 attention, width embeddings
    assert len(levels) >= 2 and len(str(params.seed).split(",")) >= 2
    assert cfg.data._target_.endswith("BurstyClasses") and cfg.model._target_.endswith("AttnOnly")
    assert cfg.budget.tokens == 1_000_000  # one fixed budget for every size
    # Size means size: every width at the recipe of the base width, transferred by muP.
    assert cfg.model.parametrization == "mup" and cfg.model.base_width in sizes
    assert len(str(params.seed).split(",")) >= 3  # intervals need >= 3 seeds


@pytest.mark.slow
def test_diversity_vs_scale_preset_runs_tiny_and_is_analysed_over_measured_size(tmp_path):
    """The preset at a tiny budget, two sizes x two diversity levels: elab-analyze reads the size
    axis as the parameters the runs measured and writes the diversity-vs-scale figure and table."""
    import csv
    import json
    import subprocess
    import sys

    from tests.conftest import REPO
    from trainer.analysis import analyze_sweep_main

    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "OMP_NUM_THREADS": "1",
           "WANDB_MODE": "offline", "PYTHONPATH": str(REPO)}
    sweep = tmp_path / "sweep"
    result = subprocess.run(
        [sys.executable, "-m", "trainer.train", "-m", "experiment=diversity_vs_scale",
         "model.d_model=16,128", "data.label_mapping_diversity=1,16", "seed=0",
         "budget.tokens=30000", "optim.warmup_steps=2", "progress=none",
         f"hydra.sweep.dir={sweep}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr[-3000:]
    n_params = {json.loads(p.read_text())["n_params"] for p in sweep.glob("*/summary.json")}
    assert len(n_params) == 2 and max(n_params) >= 10 * min(n_params)
    assert analyze_sweep_main([str(sweep), "-o", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "diversity_vs_scale.png").stat().st_size > 10_000
    with (tmp_path / "out" / "axis_effects.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert {r["axis"] for r in rows} == {"model.d_model", "data.label_mapping_diversity"}
    assert "n_params" in (tmp_path / "out" / "axis_effects.md").read_text()


def _tiny_world_run(tmp_path, preset, extra):
    """One job of a world preset at a tiny size, through the real entry point."""
    from tests.conftest import compose_cfg
    from trainer.train import train

    overrides = [f"experiment={preset}", "pl=cpu", "progress=none", "model.d_model=32",
                 "batch.global_size=8", "budget.tokens=10240", "optim.warmup_steps=2",
                 "log_every_n_steps=1", "callbacks.probes.every_n_steps=4",
                 "callbacks.data_meter.every_n_steps=4", "callbacks.topology.every_n_steps=10",
                 f"paths.cache_dir={tmp_path / 'cache'}", *extra]
    return train(compose_cfg(overrides, tmp_path / "run"))


def _logged(run_dir, key):
    import csv

    rows = csv.DictReader((run_dir / "csv" / "metrics.csv").open(newline=""))
    return [float(r[key]) for r in rows if r.get(key)]


@pytest.mark.slow
@pytest.mark.parametrize("protocol, shares", [("qa_two_stage", {0.0, 1.0}), ("qa_mixed", {0.8})])
def test_knowledge_extraction_preset_runs_each_protocol(tmp_path, protocol, shares):
    summary = _tiny_world_run(tmp_path, "knowledge_extraction", [
        f"curriculum={protocol}", "data.source.entities_per_domain=8",
        "data.source.descriptions_per_entity=2"])
    assert summary["status"] == "completed"
    metrics = summary["metrics"]
    for probe in ("world_facts", "world_facts_seen", "world_recall"):
        assert 0.0 <= metrics[f"probe/{probe}/acc"] <= 1.0
    assert set(_logged(tmp_path / "run", "curriculum/focus_share")) == shares


@pytest.mark.slow
def test_bridges_two_hop_preset_runs_and_probes_both_kinds_of_two_hop(tmp_path):
    summary = _tiny_world_run(tmp_path, "bridges_two_hop", ["data.source.entities_per_domain=6"])
    assert summary["status"] == "completed"
    assert {"probe/world_two_hop/acc", "probe/world_two_hop_local/acc"} <= set(summary["metrics"])


@pytest.mark.slow
def test_fragmentation_preset_runs_and_emits_the_fragments_it_asks_for(tmp_path):
    summary = _tiny_world_run(tmp_path, "fragmentation", [
        "data.fragment_length=12", "data.docs_per_window=4", "data.source.entities_per_domain=8"])
    assert summary["status"] == "completed"
    assert 0 < summary["metrics"]["data/mean_fragment_length"] <= 12
    assert summary["metrics"]["data/docs_per_window"] >= 3.5


@pytest.mark.parametrize("preset", ["diversity_vs_scale", "knowledge_extraction",
                                    "icl_classes_vector", "fragmentation", "bridges_two_hop"])
def test_science_presets_sweep_three_seeds_so_every_cell_has_an_interval(preset):
    params = compose_with_hydra([f"experiment={preset}"]).hydra.sweeper.params
    assert len(str(params.seed).split(",")) >= 3
