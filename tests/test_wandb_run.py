"""An offline wandb run read back as a user would, with ``wandb leet inspect --summary --json``
(wandb 0.31's reader of a local .wandb log): the summary holds what summary.json has that a
researcher filters on, and the jump events are a table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import compose_cfg
from tests.run_dir_factory import ICL_JUMP, write_run_summary
from trainer.train import train
from trainer.wandb_report import EVENT_COLUMNS, complete_run

wandb = pytest.importorskip("wandb")


def read_offline_run(run_dir: Path) -> dict:
    """``wandb leet inspect --summary --json`` of the run dir's offline run."""
    (offline,) = (run_dir / "wandb").glob("offline-run-*")
    tool = Path(sys.executable).parent / "wandb"
    proc = subprocess.run([str(tool), "leet", "inspect", "--summary", "--json", str(offline)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return {**json.loads(proc.stdout), "dir": offline}


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    yield
    wandb.teardown()


def test_the_wandb_summary_and_events_table_come_from_the_run_dir(tmp_path, offline):
    run_dir = write_run_summary(tmp_path / "run", transitions={
        "probe/icl/acc": [{"midpoint_step": 590, "width_steps": 40, "height": 0.7}]})
    run = wandb.init(project="emergence-lab", dir=str(run_dir), mode="offline")
    complete_run(run, run_dir)
    run.finish()
    read = read_offline_run(run_dir)
    summary = read["summary"]
    assert summary["status"] == "completed" and summary["n_params"] == 99520
    assert summary["flops_per_token"] == 422400 and summary["tokens"] == 1999744
    assert summary["tokens_per_s"] == pytest.approx(37145.2)
    assert summary["first_onset/probe/icl/acc"] == ICL_JUMP["onset_step"]
    assert summary["n_capability_jumps"] == 1 and summary["lead_lag"][0]["series"] == "probe/icl/acc"
    assert summary["transitions"]["probe/icl/acc"][0]["midpoint_step"] == 590
    assert summary["final/probe/icl/acc"] == 1.0
    table = json.loads((read["dir"] / "files" / summary["events"]["path"]).read_text())
    assert table["columns"] == list(EVENT_COLUMNS)
    rows = {row[0]: dict(zip(table["columns"], row)) for row in table["data"]}
    assert rows["probe/icl/acc"]["onset_step"] == 549 and len(rows) == 3


def test_a_trained_run_ends_with_its_status_size_and_figure_in_wandb(tmp_path, tiny_overrides, offline):
    run_dir = tmp_path / "run"
    summary = train(compose_cfg([*tiny_overrides, "callbacks=minimal", "logger=wandb"], run_dir))
    read = read_offline_run(run_dir)
    assert read["state"] == "finished"
    fields = read["summary"]
    for key in ("status", "n_params", "flops_per_token", "tokens", "tokens_per_s", "lead_lag",
                "jumps", "steps"):
        assert key in fields, key
    assert fields["status"] == "completed" and fields["n_params"] == summary["n_params"]
    assert fields["events"]["_type"] == "table-file"
    assert (read["dir"] / "files" / fields["figure"]["path"]).is_file()
