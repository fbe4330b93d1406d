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
