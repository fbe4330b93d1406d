"""What a user sees on the console: the end-of-run report, no adverts or meaningless figures, log
lines on their own lines beside the progress bar, Ctrl-C that says how to resume, --help texts
that name the tool."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys

import pytest

from tests.conftest import REPO

TINY = ["pl=cpu", "data=modular_arithmetic", "data.p=13", "model=gpt_tiny", "model.n_layer=1",
        "model.d_model=32", "batch.global_size=16", "budget.tokens=1280", "log_every_n_steps=1",
        "checkpoint_every_n_steps=5", "optim.warmup_steps=5", "progress=tqdm"]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}


def _train(args: list[str]) -> subprocess.CompletedProcess:
    """``elab-train`` with output to a pipe, as when a run's output goes to a file."""
    return subprocess.run([sys.executable, "-m", "trainer.train", *args], cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=600)


def test_ctrl_c_says_how_to_resume_and_the_resumed_run_ends_with_its_report(tmp_path):
    run = tmp_path / "run"
    stop = ["+callbacks.stop._target_=tests.interrupt_at.InterruptAt", "+callbacks.stop.step=4"]
    proc = _train([*TINY, f"paths.cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={run}", *stop])
    out = proc.stdout + proc.stderr
    assert proc.returncode == 130, out[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["steps"] == 4
    last = out.rstrip().splitlines()[-1]
    assert "interrupted at step 4; resume with: elab-train" in last and "ckpt_path=last" in last
    # Quiet: no Lightning advert, no model summary claiming 0 FLOPs; the real count instead.
    assert "Tip" not in out and "litlogger" not in out and "Total FLOPs" not in out
    assert f"{summary['flops_per_token']:,} FLOPs/token" in out
    # A line logged while the bar is drawn starts a line of its own (the bar ends in a \r).
    for line in out.splitlines():
        assert not ("it/s]" in line and "[emergence_lab]" in line), line

    command = shlex.split(last.split("resume with: ", 1)[1])
    assert command[0] == "elab-train" and f"hydra.run.dir={run}" in command
    proc = _train(command[1:])
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["resumed_from_step"] == 4
    assert summary["chance"]["probe/heldout/acc"] == pytest.approx(1 / 13)
    tail = "\n".join(out.rstrip().splitlines()[-15:])
    assert "status: completed; 20 of 20 steps" in tail
    assert "probe/heldout/acc" in tail and "chance 0.077" in tail
    assert f"elab-plot {run}" in tail and f"elab-sample {run} --probe heldout" in tail
    assert "status: completed" in (run / "report.md").read_text()
    assert "status: completed" in (run / "train.log").read_text()


def test_elab_train_help_says_what_the_lab_is_its_tools_and_groups():
    proc = _train(["--help"])
    assert proc.returncode == 0
    head = proc.stdout.splitlines()[0]
    assert head.startswith("elab-train: train a small language model")
    for tool in ("elab-show", "elab-plot", "elab-retro", "elab-analyze", "elab-sample", "elab-export"):
        assert tool in proc.stdout
    assert "data: bursty_classes" in proc.stdout and "hydra/launcher:" in proc.stdout
    assert "hydra/sweeper:" in proc.stdout and "powered by Hydra" not in proc.stdout


@pytest.mark.parametrize("module, tool", [
    ("trainer.show", "elab-show"), ("trainer.retro", "elab-retro"), ("trainer.sample", "elab-sample"),
    ("trainer.export.cli", "elab-export"),
])
def test_every_tool_names_itself_in_its_help(module, tool):
    proc = subprocess.run([sys.executable, "-m", module, "--help"], cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.startswith(f"usage: {tool} "), proc.stdout[:200]


@pytest.mark.parametrize("main, tool", [("analyze_sweep_main", "elab-analyze"),
                                        ("plot_run_main", "elab-plot")])
def test_the_analysis_tools_name_themselves_in_their_help(main, tool, capsys):
    import trainer.analysis as analysis

    with pytest.raises(SystemExit):
        getattr(analysis, main)(["--help"])
    assert capsys.readouterr().out.startswith(f"usage: {tool} ")
