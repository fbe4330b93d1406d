"""``elab-show`` and the end-of-run report: what a user reads about a run or a sweep, fast and
without the training stack."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time

from tests.conftest import REPO
from tests.run_dir_factory import ICL_JUMP, write_run_summary
from trainer.show import main as show


def _show(path, capsys) -> tuple[int, str]:
    rc = show([str(path)])
    out = capsys.readouterr()
    return rc, out.out + out.err


def test_a_finished_run_reads_at_a_glance(tmp_path, capsys):
    transitions = {"probe/icl/acc": [{"midpoint_step": 590.0, "width_steps": 42.0, "height": 0.71,
                                      "ci95": [575.0, 604.0]}]}
    run = write_run_summary(tmp_path / "run", transitions=transitions)
    rc, text = _show(run, capsys)
    prose = [line for line in text.splitlines() if str(run) not in line]  # commands stay whole
    assert rc == 0 and max(map(len, prose)) <= 100
    out = text.replace("\n      ", " ").replace("\n  ", " ")  # long lines are folded
    assert "status: completed; 1838 of 1838 steps, 1,999,744 tokens" in out
    assert "37,145 tokens/s" in out and "422,400 FLOPs/token" in out
    capability = next(line for line in out.splitlines() if "probe/icl/acc" in line)
    assert "1.000" in capability and "chance 0.125" in capability and "copy plateau 0.250" in capability
    assert "onset 549 (the change lies in steps 499-549), confirmed at step 649, size +0.341" in out
    assert "topo/attn1/head0/prefix_match (onset 524, lead 25)" in out  # what came with it
    assert "midpoint 590 (95% 575-604), width 42 steps" in out
    # Topology-only jumps: one line, with where the README explains them.
    topo = [line for line in out.splitlines() if "topo/" in line and "lead" not in line]
    assert len(topo) == 1 and "2 jumps" in topo[0] and "README" in topo[0]
    assert f"elab-plot {run}" in out and f"elab-retro {run}" in out
    assert f"elab-sample {run} --probe icl" in out


def test_a_run_without_a_capability_jump_says_so(tmp_path, capsys):
    run = write_run_summary(tmp_path / "run", events=[], final_acc=0.26)
    rc, out = _show(run, capsys)
    assert rc == 0 and "capability jumps: none detected" in out and "0.260" in out


def test_a_training_run_shows_its_lock_holder(tmp_path, capsys):
    run = tmp_path / "run"
    (run / "csv").mkdir(parents=True)
    (run / "events.jsonl").write_text("")
    (run / ".lock").write_text(f"host={os.uname().nodename} pid={os.getpid()} started=2026-12-03T17:00\n")
    rc, out = _show(run, capsys)
    assert rc == 0 and f"status: running (held by pid {os.getpid()}" in out
    # A lock file a killed process left (its pid is gone) is nobody's.
    (run / ".lock").write_text(f"host={os.uname().nodename} pid=999999999 started=x\n")
    assert "no summary.json" in _show(run, capsys)[1]


def test_a_sweep_is_one_line_per_job_with_the_failures_and_why(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    write_run_summary(sweep / "0", overrides=("data.p_bursty=0", "budget.tokens=100000"),
                      events=[], final_acc=0.27)
    write_run_summary(sweep / "1", overrides=("data.p_bursty=1", "budget.tokens=100000"),
                      transitions={"probe/icl/acc": [{"midpoint_step": 590, "width_steps": 40}]})
    write_run_summary(sweep / "2", overrides=("data.p_bursty=0.5", "budget.tokens=100000"),
                      status="failed", error="RuntimeError: CUDA out of memory\nTried to allocate")
    (sweep / "multirun.yaml").write_text("{}\n")
    rc, out = _show(sweep, capsys)
    assert rc == 0
    lines = out.splitlines()
    assert "swept: data.p_bursty" in lines[0] and "budget.tokens" not in lines[0]
    header = lines[1].split()
    assert header[:3] == ["job", "status", "data.p_bursty"] and "onset" in header
    rows = {line.split()[0]: line.split() for line in lines[2:5]}
    assert rows["0"][1:3] == ["completed", "0"] and "0.270" in rows["0"] and "none" in rows["0"]
    assert rows["1"][1:3] == ["completed", "1"] and str(ICL_JUMP["onset_step"]) in rows["1"]
    assert "midpoint" in lines[3] and "590" in lines[3]
    assert rows["2"][1] == "failed"
    assert "1 job(s) did not complete:" in out
    assert "2: failed: RuntimeError: CUDA out of memory Tried to allocate" in out


def test_a_failed_run_says_why(tmp_path, capsys):
    run = write_run_summary(tmp_path / "run", status="failed", events=[],
                            error="RuntimeError: CUDA out of memory.\nTried to allocate 2 GiB")
    rc, out = _show(run, capsys)
    assert rc == 0 and "status: failed" in out
    assert "error: RuntimeError: CUDA out of memory. Tried to allocate 2 GiB" in out


def test_a_path_that_is_no_run_is_refused_with_exit_2(tmp_path, capsys):
    rc, out = _show(tmp_path, capsys)
    assert rc == 2 and "neither a run" in out
    rc, out = _show(tmp_path / "missing", capsys)
    assert rc == 2 and "not a directory" in out


def test_elab_show_is_fast_and_imports_neither_torch_nor_lightning(tmp_path):
    run = write_run_summary(tmp_path / "run")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "trainer.show", str(run)],
                          cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                          capture_output=True, text=True, timeout=60)
    took = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    assert proc.returncode == 0 and "probe/icl/acc" in proc.stdout
    imported = {line.split("|")[-1].strip().split(".")[0] for line in proc.stderr.splitlines()
                if line.startswith("import time:")}
    assert not imported & {"torch", "lightning", "numpy", "matplotlib"}, sorted(imported)
    # CPU seconds (what the tool costs; ~0.2 s) and a wall-clock bound loose enough for a loaded box.
    assert cpu < 1.0 and took < 5.0, f"{cpu:.2f} s CPU, {took:.2f} s wall"
