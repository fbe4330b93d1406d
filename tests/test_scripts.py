"""Every benchmark script runs, at a tiny size, and prints the figure its README section quotes.

They are timed by hand, never here (this machine's speed drifts by +-10%): what is checked is
that a user who runs one gets its comparison line instead of a traceback (``bench_train.py``
once broke on ``optim.warmup_steps=null`` without a test noticing).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.conftest import REPO

SCRIPTS = {
    "bench_train": (["--steps", "12", "--rounds", "1"], "lightning/plain = "),
    "bench_model": (["--shapes", "default", "--rounds", "1", "--seconds", "0.05"], "lab/ref: tokens/s "),
    "bench_malloc": (["budget.tokens=21760", "--rounds", "1"], "reuse/system: tokens/s "),
    "bench_callbacks": (["budget.tokens=21760", "--rounds", "1"], "measured inside the monitors: "),
    "bench_mixer": (["--steps", "2", "--seq-len", "64", "--global-batch", "4"], "bursty_classes sampler "),
    "bench_ingest": (["--megabytes", "0.3", "--rounds", "1", "--vocab-size", "300"],
                     "ingest rate / raw encode_batch rate = "),
    "bench_gpu": (["--device", "cpu", "--model", "gpt_tiny", "--vocab", "256", "--seq-len", "32",
                   "--batch", "2", "--steps", "2", "--warmup", "1", "--no-compile"], '"tokens_per_s": '),
}


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_benchmark_script_prints_its_figure(name, tmp_path):
    args, expected = SCRIPTS[name]
    env = dict(os.environ, WANDB_MODE="disabled", ELAB_LOG_DIR=str(tmp_path))
    proc = subprocess.run([sys.executable, f"scripts/{name}.py", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert expected in proc.stdout, proc.stdout[-3000:]


def test_coord_check_prints_both_slopes_and_draws_them(tmp_path):
    out = tmp_path / "coord.png"
    proc = subprocess.run([sys.executable, "scripts/coord_check.py", "--widths", "16", "32",
                           "--seeds", "1", "--steps", "3", "--batch", "4", "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"coord check: sp max \|slope\| \d+\.\d\d, mup max \|slope\| \d+\.\d\d", last)
    assert out.stat().st_size > 10_000
