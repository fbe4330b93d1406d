"""Every config group option and every experiment composes and instantiates; bad input is named."""

from pathlib import Path

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from data_mixers.base import DataConfigError
from tests.conftest import compose_cfg
from trainer.config import ConfigError, validate
from trainer.train import CONF_DIR, train

CONF = Path(CONF_DIR)
GROUPS = sorted(p.name for p in CONF.iterdir() if p.is_dir() and p.name not in ("hydra",))


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_group_option_composes_and_validates(group, option, tmp_path):
    cfg = compose_cfg([f"{group}={option}"], tmp_path)
    OmegaConf.resolve(cfg)
    validate(cfg)


@pytest.mark.parametrize("option", options("data"))
def test_every_data_config_instantiates(option, tmp_path):
    cfg = compose_cfg([f"data={option}", f"paths.cache_dir={tmp_path}"], tmp_path)
    if option == "hf":
        pytest.skip("needs data files; covered by tests/test_hf_source.py")
    curriculum = instantiate(cfg.curriculum) if cfg.curriculum else None
    sampler = instantiate(cfg.data, curriculum=curriculum, _convert_="all")
    assert sampler.vocab_size > 0 and sampler.seq_len > 0


@pytest.mark.parametrize("option", [o for g in ("model",) for o in options(g)])
def test_every_model_config_instantiates(option, tmp_path):
    cfg = compose_cfg([f"model={option}"], tmp_path)
    if option == "gpt_125m":
        cfg.model.n_layer = 1  # the shape is what is checked; one layer keeps the test fast
    model = instantiate(cfg.model, vocab_size=128, max_seq_len=64, item_dim=None)
    assert model.num_params() > 0


def test_experiments_override_the_defaults(tmp_path):
    for option in options("experiment"):
        cfg = compose_cfg([f"experiment={option}"], tmp_path)
        validate(cfg)
        assert cfg.tags, f"experiment/{option}.yaml should tag its runs"


def test_debug_fast_is_a_few_steps_on_cpu(tmp_path):
    cfg = compose_cfg(["debug=fast"], tmp_path)
    assert cfg.pl.accelerator == "cpu"
    assert cfg.budget.tokens // (cfg.batch.global_size * 4) <= 100


def test_unknown_key_is_named(tmp_path):
    cfg = compose_cfg(["+learning_rate=0.1"], tmp_path)
    with pytest.raises(ConfigError, match="unknown config key 'learning_rate'"):
        validate(cfg)


def test_wrong_types_are_all_named_at_once(tmp_path):
    cfg = compose_cfg(["budget.tokens=lots", "optim.lr=fast"], tmp_path)
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    assert "budget.tokens='lots'" in str(err.value) and "optim.lr='fast'" in str(err.value)


def test_wrong_model_type_stops_before_training(tmp_path, tiny_overrides):
    cfg = compose_cfg([*tiny_overrides, "model.d_model=wide"], tmp_path / "run")
    with pytest.raises(ValueError, match="model.d_model='wide'"):
        train(cfg)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_budget_smaller_than_one_step(tmp_path, tiny_overrides):
    cfg = compose_cfg([*tiny_overrides, "budget.tokens=10"], tmp_path / "run")
    with pytest.raises(ConfigError, match="budget.tokens=10 is smaller than one step"):
        train(cfg)


def test_missing_checkpoint_for_resume_names_the_path(tmp_path, tiny_overrides):
    cfg = compose_cfg([*tiny_overrides, "ckpt_path=last"], tmp_path / "run")
    with pytest.raises(ConfigError, match="no checkpoint at .*checkpoints/last.ckpt"):
        train(cfg)
    cfg = compose_cfg([*tiny_overrides, f"ckpt_path={tmp_path}/nope.ckpt"], tmp_path / "run")
    with pytest.raises(ConfigError, match="nope.ckpt"):
        train(cfg)


def test_bad_data_value_names_the_key(tmp_path, tiny_overrides):
    cfg = compose_cfg([*tiny_overrides, "data.p=12"], tmp_path / "run")
    with pytest.raises(DataConfigError, match="data.p=12"):
        train(cfg)
