"""Shared fixtures: compose the real config with test overrides, run the real entry point."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from trainer.train import CONF_DIR

# Tests run on the CPU with one thread per process, offline, and never talk to wandb's servers.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ["WANDB_MODE"] = "offline"
os.environ["WANDB_SILENT"] = "true"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

REPO = Path(__file__).resolve().parent.parent


def compose_cfg(overrides: list[str], output_dir: Path | None = None):
    """The config a user would get from ``elab-train <overrides>``, with the run dir given."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        extra = [f"paths.output_dir={output_dir}"] if output_dir is not None else ["paths.output_dir=unused"]
        return compose(config_name="train", overrides=[*overrides, *extra])


@pytest.fixture
def tiny_overrides(tmp_path) -> list[str]:
    """A tiny CPU run: modular arithmetic mod 13 on a 1-layer attention-only model."""
    return [
        "pl=cpu", "progress=none", "data=modular_arithmetic", "data.p=13", "model=gpt_tiny",
        "model.n_layer=1", "model.d_model=32", "batch.global_size=16", "budget.tokens=1280",
        "log_every_n_steps=1", "checkpoint_every_n_steps=5", "optim.warmup_steps=5",
        f"paths.cache_dir={tmp_path / 'cache'}",
    ]
