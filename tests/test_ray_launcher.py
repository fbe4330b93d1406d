"""The Ray launcher (``hydra/launcher=ray``): a sweep on a local Ray cluster the test starts, one
fresh worker process per job, a failing job recorded while the others complete."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

ROOT = Path(__file__).resolve().parent.parent
ELAB_TRAIN = Path(sys.executable).with_name("elab-train")


@pytest.fixture(scope="module")
def cluster():
    """A 2-CPU local cluster; the sweep joins it by address, as it would an existing cluster."""
    context = ray.init(num_cpus=2, include_dashboard=False, object_store_memory=80 * 2**20)
    yield context.address_info["gcs_address"]
    ray.shutdown()


@pytest.mark.slow
def test_sweep_runs_each_job_in_its_own_ray_worker_and_records_a_failure(cluster, tmp_path):
    sweep = tmp_path / "sweep"
    command = [str(ELAB_TRAIN), "-m", "hydra/launcher=ray", f"hydra.launcher.address={cluster}",
               "debug=fast", "progress=none", "data.p_bursty=1.5,0,1",
               f"hydra.sweep.dir={sweep}", f"paths.cache_dir={tmp_path / 'cache'}"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "RAY_DEDUP_LOGS": "0"}
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    output = proc.stdout + proc.stderr
    status = {
        p.parent.name: json.loads(p.read_text())["status"] for p in sweep.glob("*/summary.json")
    }
    assert status == {"0": "failed", "1": "completed", "2": "completed"}, output[-3000:]
    # As with the basic launcher: the sweep finishes, then the failure is reported with its key.
    assert proc.returncode != 0 and "data.p_bursty=1.5" in output
    assert f"sweep output dir: {sweep}" in output
    # The two trainings log from their own worker processes (the failing job may print nothing).
    workers = set(re.findall(r"\(execute_job pid=(\d+)", output))
    assert len(workers) >= 2, "each job in its own Ray worker process"


def test_launcher_config_and_the_record_of_a_job_whose_worker_died():
    from hydra import compose, initialize_config_dir
    from hydra.core.utils import JobStatus
    from hydra.utils import instantiate

    from hydra_plugins.elab_ray_launcher.ray_launcher import failed_job
    from trainer.train import CONF_DIR

    overrides = ["hydra/launcher=ray", "hydra.launcher.init.runtime_env={working_dir:.}"]
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    launcher = instantiate(cfg.hydra.launcher)
    assert launcher.init == {"num_cpus": None, "runtime_env": {"working_dir": "."}}
    assert type(launcher.init["runtime_env"]) is dict, "ray.init validates a plain dict"
    record = failed_job(cfg, ["seed=3"], RuntimeError("worker died"))
    assert record.status == JobStatus.FAILED and record.overrides == ["seed=3"]
    assert "hydra" not in record.cfg and record.cfg.seed == cfg.seed
    with pytest.raises(RuntimeError, match="worker died"):
        _ = record.return_value  # what the sweeper reads after the batch
