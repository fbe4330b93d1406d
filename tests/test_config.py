"""Every config group option and every experiment composes and instantiates; bad input is named."""

import csv
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
DEFAULTS = {next(iter(d)) for d in OmegaConf.load(CONF / "train.yaml").defaults if not isinstance(d, str)}


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def add_on_host(group: str) -> str:
    """An add-on group (not in train.yaml's defaults, appended with ``+group=``) composes on top of
    the experiment whose sweep names it."""
    hosts = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml") if f"+{group}:" in p.read_text())
    assert hosts, f"conf/{group}/ is in no defaults list and no experiment sweeps +{group}"
    return hosts[0]


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_group_option_composes_and_validates(group, option, tmp_path):
    if group in DEFAULTS:
        cfg = compose_cfg([f"{group}={option}"], tmp_path)
    else:
        cfg = compose_cfg([f"experiment={add_on_host(group)}", f"+{group}={option}"], tmp_path)
    OmegaConf.resolve(cfg)
    validate(cfg)


@pytest.mark.parametrize("option", options("data"))
def test_every_data_config_instantiates(option, tmp_path):
    extra = []
    if option == "hf":  # a local file stands in for a corpus (nothing is downloaded)
        corpus = tmp_path / "corpus.jsonl"
        corpus.write_text("".join(f'{{"text": "document number {i} about topic {i % 3}"}}\n' for i in range(50)))
        extra = [f"data.source.data_files=[{corpus}]", "data.tokenizer.vocab_size=300"]
    cfg = compose_cfg([f"data={option}", f"paths.cache_dir={tmp_path}", *extra], tmp_path)
    curriculum = instantiate(cfg.curriculum) if cfg.curriculum else None
    sampler = instantiate(cfg.data, curriculum=curriculum, _convert_="all")
    sampler.prepare()
    sampler.bind(10)
    batch = sampler.batch(0, 4)
    assert batch["input_ids"].shape == (4, sampler.seq_len)
    assert batch["input_ids"].max() < sampler.vocab_size


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
    cfg = compose_cfg(["debug=fast", f"paths.cache_dir={tmp_path}"], tmp_path)
    assert cfg.pl.accelerator == "cpu"
    sampler = instantiate(cfg.data, curriculum=None, _convert_="all")
    assert 1 <= cfg.budget.tokens // (cfg.batch.global_size * sampler.seq_len) <= 20


def test_unknown_keys_are_named(tmp_path):
    cfg = compose_cfg(["+learning_rate=0.1", "+optim.lrr=0.1"], tmp_path)
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    assert "unknown config key 'learning_rate'" in str(err.value)
    assert "unknown config key 'optim.lrr'" in str(err.value)


def test_warmup_longer_than_the_run_is_named(tmp_path, tiny_overrides):
    cfg = compose_cfg([*tiny_overrides, "optim.warmup_steps=50"], tmp_path / "run")
    with pytest.raises(ConfigError, match="optim.warmup_steps=50 is not shorter than the run"):
        train(cfg)


def test_the_default_warmup_fits_a_short_run(tmp_path, tiny_overrides):
    # A 20-step run with the default warmup (null: 50 steps, or 10% of a shorter run) trains.
    overrides = [o for o in tiny_overrides if not o.startswith("optim.warmup_steps")]
    summary = train(compose_cfg([*overrides, "optim.warmup_steps=null"], tmp_path / "run"))
    assert summary["status"] == "completed" and summary["steps"] == 20
    lr = [float(r["train/lr"]) for r in csv.DictReader(open(tmp_path / "run/csv/metrics.csv"))
          if r.get("train/lr")]
    # Two warmup steps (10% of 20): half the peak, then the peak.
    assert lr[0] == pytest.approx(max(lr) / 2) and lr[1] == max(lr)


def test_global_batch_must_split_over_processes(tmp_path, tiny_overrides):
    cfg = compose_cfg([*tiny_overrides, "pl=ddp_cpu", "batch.global_size=15"], tmp_path / "run")
    with pytest.raises(ConfigError, match="batch.global_size=15 is not divisible by the 2 processes"):
        train(cfg)


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


@pytest.mark.parametrize("override,named", [("model.parametrization=mu", "model.parametrization='mu'"),
                                            ("model.base_width=0", "model.base_width=0")])
def test_bad_parametrization_is_a_config_error_naming_the_key(tmp_path, override, named):
    cfg = compose_cfg([override], tmp_path)
    with pytest.raises(ConfigError, match=named):
        validate(cfg)
