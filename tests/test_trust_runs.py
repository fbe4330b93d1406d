"""A run dir someone sent you, and a refused command, must do no harm: nothing in a run dir runs
code or reads a file outside it, and a command refused with exit 2 leaves the run as it was
(summary.json, csv/metrics.csv, .hydra/ hashed before and after). Two tiny runs (A, B) are
trained once through the real entry point; every case works on a copy."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from tests.conftest import REPO, compose_cfg
from trainer.config import ConfigError
from trainer.run_config import check_targets

TINY = ["pl=cpu", "progress=none", "data=modular_arithmetic", "data.p=13", "model=gpt_tiny",
        "model.n_layer=1", "model.d_model=32", "batch.global_size=16", "budget.tokens=1280",
        "log_every_n_steps=1", "checkpoint_every_n_steps=5", "optim.warmup_steps=5"]
KEPT = ("summary.json", "csv/metrics.csv", ".hydra/config.yaml", ".hydra/hydra.yaml",
        ".hydra/overrides.yaml", "checkpoints/last.ckpt")


def _elab(module: str, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {"PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin", "HOME": str(cwd),
           "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "PYTHONPATH": str(REPO),
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    for name, seed in (("A", 0), ("B", 1)):
        out = _elab("trainer.train", [*TINY, f"paths.cache_dir={root / 'cache'}", f"seed={seed}",
                                      f"hydra.run.dir={root / name}"], root)
        assert out.returncode == 0, out.stdout[-3000:]
    return {"A": root / "A", "B": root / "B", "cache": root / "cache"}


@pytest.fixture
def run_copy(runs, tmp_path):
    def copy(name: str) -> Path:
        return Path(shutil.copytree(runs[name], tmp_path / f"{name}_copy", symlinks=True))
    return copy


def _hashes(run_dir: Path) -> dict[str, str]:
    return {name: hashlib.sha1((run_dir / name).read_bytes()).hexdigest() for name in KEPT}


def _train(runs, run_dir: Path, *args: str) -> subprocess.CompletedProcess:
    return _elab("trainer.train", [*TINY, f"paths.cache_dir={runs['cache']}",
                                   f"hydra.run.dir={run_dir}", *args], run_dir.parent)


class Evil:
    """A pickle that, once loaded with pickling allowed, touches ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _crafted_targets(tmp_path: Path) -> dict[str, object]:
    marker = tmp_path / "pwned"
    torch.save(Evil(marker), tmp_path / "evil.ckpt")
    array = np.empty(1, dtype=object)
    array[0] = Evil(marker)
    np.save(tmp_path / "evil.npy", array, allow_pickle=True)
    touch = ["touch", str(marker)]
    return {
        "torch.load": {"_target_": "torch.load", "f": str(tmp_path / "evil.ckpt"), "weights_only": False},
        "numpy.load": {"_target_": "numpy.load", "file": str(tmp_path / "evil.npy"), "allow_pickle": True},
        "nested": {"_target_": "data_mixers.curriculum.Constant",
                   "stage": {"deep": [{"_target_": "subprocess.call", "_args_": [touch]}]}},
        "partial": {"_target_": "os.system", "_partial_": True, "command": f"touch {marker}"},
        "through-an-import": {"_target_": "trainer.train.os.system", "_args_": [f"touch {marker}"]},
        "interpolated": "${oc.create:'{_target_: os.system, _args_: [touch " + str(marker) + "]}'}",
        # the lab's own writer functions are not components either: this one writes any path
        "own-writer": {"_target_": "trainer.run_dir.write_metrics_csv", "path": str(marker), "header": [], "rows": []},
    }


@pytest.mark.parametrize("kind", ["torch.load", "numpy.load", "nested", "partial",
                                  "through-an-import", "interpolated", "own-writer"])
def test_retro_runs_no_code_named_in_the_run_config(kind, runs, run_copy, tmp_path, capsys):
    from trainer.retro import main as retro

    run_dir = run_copy("A")
    config = run_dir / ".hydra" / "config.yaml"
    cfg = yaml.safe_load(config.read_text())
    cfg["curriculum"] = _crafted_targets(tmp_path)[kind]
    config.write_text(yaml.safe_dump(cfg))
    before = _hashes(run_dir)
    assert retro([str(run_dir), "--monitors", "probes", "--steps", "20", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert not (tmp_path / "pwned").exists()
    assert str(config) in err and "curriculum" in err and "nothing was built" in err
    assert _hashes(run_dir) == before and not (run_dir / "retro").exists()


def test_the_shipped_configs_pass_the_target_check(tmp_path):
    for overrides in ([], ["experiment=icl_phase_diagram"], ["data=world", "curriculum=stages"],
                      ["data=hf", "logger=[csv,wandb]", "model=looped"]):
        check_targets(compose_cfg(overrides, tmp_path), tmp_path / "config.yaml")
    with pytest.raises(ConfigError, match="model.blocks.0._target_='builtins.eval'"):
        check_targets(compose_cfg(["+model.blocks=[{_target_: builtins.eval}]"], tmp_path), tmp_path)


def _vocabulary_to(run_dir: Path, tokenizer_file: str) -> None:
    path = run_dir / "vocabulary.json"
    vocab = json.loads(path.read_text())
    vocab.update(kind="byte", eos_text="<|eos|>", eos_id=256, tokenizer_file=tokenizer_file)
    path.write_text(json.dumps(vocab))


@pytest.mark.parametrize("how", ["relative", "absolute", "symlink"])
def test_no_file_outside_the_run_dir_is_read(how, run_copy, tmp_path, capsys):
    from trainer.export.cli import main as export
    from trainer.sample import main as sample

    pytest.importorskip("transformers")
    secret = tmp_path / "secret.txt"
    secret.write_text("SECRET-CONTENT-42")
    run_dir = run_copy("A")
    if how == "symlink":
        _vocabulary_to(run_dir, "tokenizer.json")
        (run_dir / "tokenizer.json").symlink_to(secret)
    else:
        _vocabulary_to(run_dir, os.path.relpath(secret, run_dir) if how == "relative" else str(secret))
    out = tmp_path / "out"
    assert export([str(run_dir), "--to", "hf", str(out)]) == 2
    err = capsys.readouterr().err
    assert "tokenizer_file" in err and "outside the run dir" in err
    assert not any("SECRET" in p.read_text(errors="ignore") for p in out.rglob("*") if p.is_file())
    assert sample([str(run_dir), "hello", "--max-new-tokens", "2"]) == 2
    assert "outside the run dir" in capsys.readouterr().err
    (run_dir / "model.json").unlink()
    (run_dir / "model.json").symlink_to(secret)
    assert sample([str(run_dir), "hello"]) == 2
    assert "model.json" in capsys.readouterr().err


def test_a_refused_resume_from_a_trail_checkpoint_changes_nothing(runs, run_copy):
    run_dir = run_copy("A")
    before = _hashes(run_dir)
    out = _train(runs, run_dir, f"ckpt_path={run_dir / 'checkpoints' / 'step-8.ckpt'}")
    assert out.returncode == 2, out.stdout[-2000:]
    assert "step-8.ckpt holds weights only" in out.stdout and "ckpt_path=last" in out.stdout
    assert "Traceback" not in out.stdout
    assert _hashes(run_dir) == before
    # A last.ckpt that holds weights only (as the trail writes them) is refused the same way.
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    torch.save({"global_step": state["global_step"], "state_dict": state["state_dict"]},
               run_dir / "checkpoints" / "last.ckpt")
    before = _hashes(run_dir)
    out = _train(runs, run_dir, "ckpt_path=last", "budget.tokens=2560")
    assert out.returncode == 2 and "holds weights only" in out.stdout, out.stdout[-2000:]
    assert _hashes(run_dir) == before


def test_another_runs_checkpoint_is_refused(runs, run_copy):
    run_dir = run_copy("B")
    before = _hashes(run_dir)
    out = _train(runs, run_dir, f"ckpt_path={runs['A'] / 'checkpoints' / 'last.ckpt'}",
                 "budget.tokens=2560")
    assert out.returncode == 2, out.stdout[-2000:]
    assert "checkpoint of another run" in out.stdout and "ckpt_path=last" in out.stdout
    assert _hashes(run_dir) == before


def test_a_resume_with_another_seed_or_config_leaves_the_config_as_it_was(runs, run_copy):
    run_dir = run_copy("A")
    before = _hashes(run_dir)
    out = _train(runs, run_dir, "ckpt_path=last", "seed=7", "budget.tokens=2560")
    assert out.returncode == 2 and "seed: checkpoint 0, now 7" in out.stdout, out.stdout[-2000:]
    out = _train(runs, run_dir, "seed=3")  # a fresh start into a dir that holds a run
    assert out.returncode == 2 and "ckpt_path=last" in out.stdout, out.stdout[-2000:]
    assert _hashes(run_dir) == before


def test_a_checkpoint_past_the_budget(runs, run_copy):
    run_dir = run_copy("A")
    before = _hashes(run_dir)
    # Completed: a lowered budget is a no-op, the run as it was.
    out = _train(runs, run_dir, "ckpt_path=last", "budget.tokens=640")
    assert out.returncode == 0 and "nothing to do" in out.stdout, out.stdout[-2000:]
    assert _hashes(run_dir) == before
    # Not completed (killed after its last checkpoint): nothing left to train, said so.
    summary = json.loads((run_dir / "summary.json").read_text())
    (run_dir / "summary.json").write_text(json.dumps({**summary, "status": "interrupted"}))
    before = _hashes(run_dir)
    out = _train(runs, run_dir, "ckpt_path=last", "budget.tokens=640")
    assert out.returncode == 2 and "nothing left to train" in out.stdout, out.stdout[-2000:]
    assert "budget.tokens" in out.stdout and _hashes(run_dir) == before


def test_a_sweep_rerun_with_changed_values_is_refused_job_by_job(runs, tmp_path):
    sweep = tmp_path / "sweep"
    args = ["-m", *TINY, f"paths.cache_dir={runs['cache']}", "seed=0,1", f"hydra.sweep.dir={sweep}"]
    out = _elab("trainer.train", args, tmp_path)
    assert out.returncode == 0, out.stdout[-3000:]
    jobs = [sweep / "0", sweep / "1"]
    for job in jobs:  # the trainer, not Hydra, wrote each job's .hydra/
        assert yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())[-1].startswith("seed=")
    before = [_hashes(job) for job in jobs]
    out = _elab("trainer.train", [*args, "ckpt_path=last", "optim.lr=0.01"], tmp_path)
    assert out.returncode == 2, out.stdout[-3000:]
    assert "Traceback" not in out.stdout and "optim.lr: checkpoint" in out.stdout
    assert [_hashes(job) for job in jobs] == before


def test_export_writes_only_into_a_new_or_empty_directory(runs, tmp_path, capsys):
    from trainer.export.cli import main as export

    pytest.importorskip("transformers")
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "config.json").write_text('{"keep": true}')
    assert export([str(runs["A"]), "--to", "hf", str(victim)]) == 2
    err = capsys.readouterr().err
    assert "not empty" in err and "config.json" in err and "--force" in err
    assert json.loads((victim / "config.json").read_text()) == {"keep": True}
    other = Path(shutil.copytree(runs["B"], tmp_path / "B_copy"))
    before = _hashes(other)
    for where in (other, other / "checkpoints"):
        assert export([str(runs["A"]), "--to", "hf", str(where), "--force"]) == 2
        assert "never writes into a run dir" in capsys.readouterr().err
    assert _hashes(other) == before and not (other / "config.json").exists()
    assert export([str(runs["A"]), "--to", "hf", str(victim), "--force"]) == 0
    assert "keep" not in (victim / "config.json").read_text()
