"""Messages a user can act on: a run dir that cannot be written is named, exit 2, before Hydra's
"Unable to configure handler 'file'" (Hydra opens the job's log file before our code runs)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO


def _unwritable_dir(tmp_path: Path) -> Path:
    if os.geteuid() != 0:
        tmp_path.chmod(0o555)
        return tmp_path
    try:  # root writes through permissions: sysfs refuses new files even to root
        Path("/sys/elab-probe").touch()
    except OSError:
        return Path("/sys")
    pytest.skip("no directory this user cannot write")


def test_a_run_dir_that_cannot_be_written_is_named_with_exit_2(tmp_path):
    run = _unwritable_dir(tmp_path)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "trainer.train", f"hydra.run.dir={run}", "progress=none"],
            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True,
            text=True, timeout=300)
    finally:
        if run == tmp_path:
            tmp_path.chmod(0o755)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out[-2000:]
    assert f"run dir {run} cannot be written" in out and "hydra.run.dir" in out, out[-2000:]
    assert "Unable to configure handler" not in out and "Traceback" not in out
