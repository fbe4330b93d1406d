"""The fault suite: the real CLI killed with SIGKILL at a random step and resumed, a second run into
a busy run dir, a finished run resumed, a resume with another config, wandb with no server, a
sweep killed halfway and re-run. Each compares what a user would look at: every series of
``csv/metrics.csv`` and ``summary.json``."""

from __future__ import annotations

import csv
import json
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest

from tests.conftest import REPO, compose_cfg
from trainer.config import ConfigError
from trainer.runlock import RunDirBusy
from trainer.train import train

pytestmark = pytest.mark.slow


class SlowSteps(L.Callback):
    """Makes each step last ``seconds`` and writes the step reached to ``step_file``: the test can
    then kill the process at a chosen step. Logs nothing, so the series are untouched."""

    def __init__(self, step_file: str, seconds: float = 0.05) -> None:
        self.step_file, self.seconds = Path(step_file), seconds

    def on_train_batch_end(self, trainer, *args) -> None:
        time.sleep(self.seconds)
        self.step_file.write_text(str(trainer.global_step))


def _overrides(tmp_path: Path, steps: int = 60) -> list[str]:
    """Modular arithmetic mod 13 (seq_len 4), 16 sequences a step: 64 tokens a step. Every monitor
    runs often, so the comparison covers each kind of series."""
    return [
        "pl=cpu", "progress=none", "data=modular_arithmetic", "data.p=13", "model=gpt_tiny",
        "model.n_layer=1", "model.d_model=32", "batch.global_size=16", f"budget.tokens={64 * steps}",
        "log_every_n_steps=1", "checkpoint_every_n_steps=7", "optim.warmup_steps=5",
        "callbacks.probes.every_n_steps=3", "callbacks.topology.every_n_steps=5",
        "callbacks.topology.h1_every_n_steps=10", "callbacks.data_meter.every_n_steps=4",
        f"paths.cache_dir={tmp_path / 'cache'}",
    ]


def _slow(step_file: Path, seconds: float = 0.05) -> list[str]:
    return ["+callbacks.slow._target_=tests.test_faults.SlowSteps", f"+callbacks.slow.step_file={step_file}",
            f"+callbacks.slow.seconds={seconds}"]


def _cli(args: list[str], cwd: Path, env: dict | None = None) -> subprocess.Popen:
    base = {"PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin", "HOME": str(cwd),
            "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "PYTHONPATH": str(REPO),
            "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.Popen([sys.executable, "-m", "trainer.train", *args], cwd=cwd,
                            env={**base, **(env or {})}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL)


def _wait_for_step(step_file: Path, step: int, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before step {step}: {proc.stdout.read()[-3000:]}")
        try:
            if int(step_file.read_text() or -1) >= step:
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.01)
    raise AssertionError(f"step {step} not reached in {timeout} s")


def all_series(run_dir: Path) -> dict[str, dict[int, str]]:
    with (run_dir / "csv" / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    series: dict[str, dict[int, str]] = {}
    for row in rows:
        for key, value in row.items():
            if key != "step" and value not in ("", None):
                assert int(row["step"]) not in series.setdefault(key, {}), f"{key} twice at {row['step']}"
                series[key][int(row["step"])] = value
    return series


def differing_series(a: Path, b: Path, rel: float = 1e-5) -> list[str]:
    """The series (and summary metrics) whose steps or values differ between two run dirs;
    train/tokens_per_s is a wall-clock figure and is left out."""
    sa, sb = all_series(a), all_series(b)
    out = sorted(set(sa) ^ set(sb))
    for key in sorted(set(sa) & set(sb) - {"train/tokens_per_s"}):
        if sorted(sa[key]) != sorted(sb[key]) or any(
            float(sb[key][s]) != pytest.approx(float(v), rel=rel, abs=1e-7, nan_ok=True)
            for s, v in sa[key].items()
        ):
            out.append(key)
    ma, mb = (json.loads((d / "summary.json").read_text())["metrics"] for d in (a, b))
    for key in sorted((set(ma) | set(mb)) - {"train/tokens_per_s"}):
        if key not in ma or key not in mb or mb[key] != pytest.approx(ma[key], rel=rel, abs=1e-7, nan_ok=True):
            out.append(f"summary:{key}")
    return sorted(set(out))


def test_sigkill_at_a_random_step_then_resume_matches_an_uninterrupted_run(tmp_path):
    steps = 60
    straight, killed, step_file = tmp_path / "straight", tmp_path / "killed", tmp_path / "step"
    train(compose_cfg(_overrides(tmp_path, steps), straight))
    kill_at = random.Random().randint(8, steps - 8)
    proc = _cli([*_overrides(tmp_path, steps), *_slow(step_file), f"hydra.run.dir={killed}"], tmp_path)
    _wait_for_step(step_file, kill_at, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (killed / ".lock").is_file(), "the dead process's lock is left behind"
    # What a kill in the middle of a write leaves: a torn CSV row, half a checkpoint file.
    with (killed / "csv" / "metrics.csv").open("a") as f:
        f.write("999,0.12")
    (killed / "checkpoints" / "last.ckpt.tmp").write_bytes(b"PK\x03\x04 torn")
    summary = train(compose_cfg([*_overrides(tmp_path, steps), "ckpt_path=last"], killed))
    assert summary["status"] == "completed" and summary["steps"] == steps
    assert 7 <= summary["resumed_from_step"] <= kill_at
    assert not (killed / ".lock").exists()
    assert differing_series(straight, killed) == [], f"killed at step {kill_at}"


def test_a_second_run_into_a_busy_run_dir_is_refused(tmp_path):
    run, step_file = tmp_path / "run", tmp_path / "step"
    proc = _cli([*_overrides(tmp_path, 40), *_slow(step_file), f"hydra.run.dir={run}"], tmp_path)
    _wait_for_step(step_file, 3, proc)
    with pytest.raises(RunDirBusy, match=f"pid {proc.pid}"):
        train(compose_cfg([*_overrides(tmp_path, 40), "seed=1"], run))
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["config"]["seed"] == 0
    assert sorted(all_series(run)["train/loss"]) == list(range(40)), "each step once"


def test_resuming_a_finished_run_changes_nothing_and_a_mismatch_is_refused(tmp_path):
    run = tmp_path / "run"
    first = train(compose_cfg(_overrides(tmp_path, 20), run))
    files = [run / "summary.json", run / "csv" / "metrics.csv", run / "events.jsonl",
             run / "checkpoints" / "last.ckpt"]
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in files}
    again = train(compose_cfg([*_overrides(tmp_path, 20), "ckpt_path=last"], run))
    assert again["metrics"] == first["metrics"]
    with pytest.raises(ConfigError, match="model.d_model: checkpoint 32, now 16"):
        train(compose_cfg([*_overrides(tmp_path, 20), "ckpt_path=last", "model.d_model=16"], run))
    # A checkpoint of another run, into a fresh dir: refused, and that dir gets no summary.
    other = tmp_path / "other"
    with pytest.raises(ConfigError, match="data.p"):
        train(compose_cfg([*_overrides(tmp_path, 20), "data.p=11",
                           f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}"], other))
    assert not (other / "summary.json").exists()
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in files} == before
    # A raised budget extends the run: the first 20 steps are kept, 10 more are added.
    longer = train(compose_cfg([*_overrides(tmp_path, 30), "ckpt_path=last"], run))
    assert longer["steps"] == 30 and longer["resumed_from_step"] == 20
    assert sorted(all_series(run)["train/loss"]) == list(range(30))


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_wandb_with_a_key_and_no_server_falls_back_to_offline(tmp_path, monkeypatch, caplog):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_API_KEY", "0123456789abcdef0123456789abcdef01234567")
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{_closed_port()}")
    run = tmp_path / "run"
    start = time.time()
    with caplog.at_level("WARNING", logger="emergence_lab"):
        summary = train(compose_cfg([*_overrides(tmp_path, 10), "logger=wandb"], run))
    assert summary["status"] == "completed" and time.time() - start < 60
    assert [r.message for r in caplog.records if "wandb" in r.message and "offline" in r.message]
    assert list((run / "wandb").glob("offline-run-*/*.wandb"))
    import wandb

    wandb.teardown()


def test_a_sweep_killed_halfway_finishes_like_one_never_killed(tmp_path):
    sweep, step_file = tmp_path / "sweep", tmp_path / "step"
    args = ["-m", *_overrides(tmp_path, 40), "seed=0,1", f"hydra.sweep.dir={sweep}"]
    proc = _cli([*args, *_slow(step_file, 0.1)], tmp_path)
    deadline = time.time() + 300
    while not (sweep / "1" / "checkpoints" / "last.ckpt").exists() and time.time() < deadline:
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    job0 = sweep / "0" / "summary.json"
    stamp = (job0.read_bytes(), job0.stat().st_mtime_ns)
    assert not (sweep / "1" / "summary.json").exists()
    rerun = _cli([*args, "ckpt_path=last"], tmp_path)
    out, _ = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, out[-3000:]
    assert (job0.read_bytes(), job0.stat().st_mtime_ns) == stamp, "the finished job is untouched"
    assert "nothing to do" in out
    straight = tmp_path / "straight"
    train(compose_cfg([*_overrides(tmp_path, 40), "seed=1"], straight))
    assert json.loads((sweep / "1" / "summary.json").read_text())["status"] == "completed"
    assert differing_series(straight, sweep / "1") == []


def test_bad_input_on_the_command_line_exits_2_with_one_message(tmp_path):
    for args, word in ((["model=no_such_model"], "model"), (["pl.precision=bogus"], "precision")):
        proc = _cli(["debug=fast", f"hydra.run.dir={tmp_path / 'run'}", *args], tmp_path)
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 2 and word in out and "Traceback" not in out, (args, out[-2000:])
