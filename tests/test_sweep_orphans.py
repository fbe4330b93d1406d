"""A killed parallel sweep leaves no orphans: after ``kill -9`` of ``elab-train -m ...
hydra/launcher=local_parallel`` while both jobs train, the loky workers end within seconds,
dropping their run locks, and the rerun with ``ckpt_path=last`` into the same sweep dir
completes both jobs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")  # a zombie has ended: only its exit status is left


def _holder_pid(run: Path) -> int | None:
    try:
        fields = dict(f.split("=", 1) for f in (run / ".lock").read_text().split() if "=" in f)
        return int(fields["pid"])
    except (OSError, KeyError, ValueError):
        return None


def test_kill_9_of_a_local_parallel_sweep_leaves_no_worker_and_the_rerun_completes(
        tmp_path, tiny_overrides):
    sweep = tmp_path / "sweep"
    args = ["-m", *tiny_overrides, "callbacks=minimal", "budget.tokens=6400", "seed=0,1",
            "hydra/launcher=local_parallel", f"hydra.sweep.dir={sweep}"]
    slow = ["+callbacks.slow._target_=tests.test_faults.SlowSteps",
            "+callbacks.slow.step_file=${paths.output_dir}/step", "+callbacks.slow.seconds=0.2"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1",
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}

    def elab_train(extra: list[str]) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "trainer.train", *args, *extra], cwd=tmp_path,
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)

    proc = elab_train(slow)
    try:
        deadline = time.time() + 240
        while not all((sweep / j / "step").is_file() for j in "01"):
            assert proc.poll() is None and time.time() < deadline, proc.stdout.read()[-3000:]
            time.sleep(0.1)
        workers = [_holder_pid(sweep / j) for j in "01"]
        assert None not in workers and proc.pid not in workers, workers
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        deadline = time.time() + 10
        while any(_alive(w) for w in workers) and time.time() < deadline:
            time.sleep(0.1)
        assert not [w for w in workers if _alive(w)], "a worker outlived the killed launcher"
        assert not any((sweep / j / "summary.json").exists() for j in "01"), "killed mid-run"
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # whatever the sweep left, should the test fail
        except ProcessLookupError:
            pass
    rerun = elab_train(["ckpt_path=last"])
    out, _ = rerun.communicate(timeout=300)
    assert rerun.returncode == 0 and "in use by another run" not in out, out[-3000:]
    for j in "01":
        assert json.loads((sweep / j / "summary.json").read_text())["status"] == "completed"
