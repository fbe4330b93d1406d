"""Bad input is stopped before anything is built, naming the key; checkpoints
are checked against the config; metrics files survive a torn write. Fast: no training here (the
end-to-end faults are in test_faults.py)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from data_mixers.base import DataConfigError
from data_mixers.sources.hf import HFSource
from tests.conftest import compose_cfg
from trainer.config import ConfigError, validate
from trainer.loggers import _KeepEarlierRowsWriter
from trainer.resume import identity_diff
from trainer.run_dir import read_metrics_csv
from trainer.schema import KNOBS, places
from trainer.schema.reference import compose_every_option, reference_markdown

# (overrides, a word the message must contain): every case of the Trust issue that validation
# alone catches, before the data or the model exists.
BAD_INPUT = [
    (["optim.lr=inf"], "optim.lr"),
    (["optim.weight_decay=inf"], "optim.weight_decay"),
    (["optim.grad_clip=nan"], "optim.grad_clip"),
    (["optim.betas=abc"], "optim.betas"),
    (["optim.betas=[2,3]"], "optim.betas"),
    (["optim.betas=[0.9]"], "optim.betas"),
    (["+data.bogus=1"], "data.bogus"),
    (["+callbacks.probes.bogus=1"], "callbacks.probes.bogus"),
    (["model.n_head=0"], "model.n_head"),
    (["callbacks.probes.every_n_steps=0"], "callbacks.probes.every_n_steps"),
    (["callbacks.topology.every_n_steps=0"], "callbacks.topology.every_n_steps"),
    (["callbacks.probes.max_rows=0"], "callbacks.probes.max_rows"),
    (["callbacks.topology.k=0"], "callbacks.topology.k"),
    (["callbacks.topology.n_points=1"], "callbacks.topology.n_points"),
    (["callbacks.topology.k=200"], "callbacks.topology.k"),
    (["callbacks.data_meter.every_n_steps=-1"], "callbacks.data_meter.every_n_steps"),
    (["optimized_metric=bogus"], "optimized_metric"),
    (["callbacks=minimal", "optimized_metric=probe/icl/acc"], "CapabilityProbes"),
]


@pytest.mark.parametrize("overrides,word", BAD_INPUT, ids=[" ".join(o) for o, _ in BAD_INPUT])
def test_bad_input_is_refused_naming_the_key(overrides, word, tmp_path):
    with pytest.raises(ConfigError) as info:
        validate(compose_cfg(overrides, tmp_path))
    assert word in str(info.value)
    if "weight_decay" in word:  # the message blames the right key, not its neighbour
        assert "optim.lr" not in str(info.value)


@pytest.mark.parametrize("overrides", [
    [], ["optimized_metric=probe/icl/acc"], ["optimized_metric=train/loss"],
    ["optimized_metric=topo/layer1/erank"], ["callbacks.topology.h1_every_n_steps=null"],
])
def test_good_input_passes(overrides, tmp_path):
    validate(compose_cfg(overrides, tmp_path))


def test_all_problems_are_reported_at_once(tmp_path):
    with pytest.raises(ConfigError) as info:
        validate(compose_cfg(["optim.lr=inf", "optim.betas=abc", "callbacks.topology.k=0"], tmp_path))
    assert all(k in str(info.value) for k in ("optim.lr", "optim.betas", "callbacks.topology.k"))


def test_identity_diff_names_nested_keys_and_leaves_knobs_newer_than_the_checkpoint():
    saved = {"model": {"d_model": 64, "n_head": 1, "gone": 2}, "data": {"p": 13}}
    now = {"model": {"d_model": 32, "n_head": 1, "parametrization": "sp"}, "data": {"p": 13}}
    # model.parametrization came after this checkpoint: the run trained under its default
    assert identity_diff(saved, now) == [
        "model.d_model: checkpoint 64, now 32", "model.gone: checkpoint 2, now '<absent>'"]


def _write_csv(path, rows, torn: str = "") -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["step", "train/loss"])
        writer.writeheader()
        writer.writerows(rows)
    with path.open("a") as f:
        f.write(torn)


def test_a_torn_last_csv_row_is_dropped_on_resume(tmp_path):
    path = tmp_path / "metrics.csv"
    _write_csv(path, [{"step": s, "train/loss": 1.0 / (s + 1)} for s in range(8)], torn="8,0.1")
    header, rows = read_metrics_csv(path)
    assert header == ["step", "train/loss"] and [r["step"] for r in rows] == [str(s) for s in range(8)]
    _KeepEarlierRowsWriter(str(tmp_path), keep_before_step=5)
    assert [r["step"] for r in read_metrics_csv(path)[1]] == ["0", "1", "2", "3", "4"]
    assert path.read_text().endswith("\n")


def test_the_knob_reference_covers_every_key_of_every_config_group_and_is_the_readme_table():
    configs = compose_every_option()
    cfg = configs[0][1]
    reference = reference_markdown(configs)
    assert f"| `optim.lr` | float | `{cfg.optim.lr}` |" in reference
    assert (f"| `callbacks.jumps.topology_min_rel_size` (JumpWatch) | float | "
            f"`{cfg.callbacks.jumps.topology_min_rel_size}` |") in reference
    assert len(reference.splitlines()) == len(KNOBS) + 2
    # Every key conf/ sets (not taken from another with ${...}) has its row: one home per knob.
    documented = {key for _, c in configs for knob in KNOBS for key, _ in places(c, knob)}
    for label, c in configs:
        missing = sorted(set(_leaves(c)) - documented)
        assert not missing, f"{label or 'the default config'}: keys without a knob in trainer/schema: {missing}"
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    start = readme.index("| key | type | default | allowed | what it sets |")
    assert readme[start:readme.index("\n\n", start)] == reference, (
        "README's knob reference differs from `python -m trainer.schema`: paste its output")


def _leaves(cfg, path=()):
    """Dotted keys of the values conf/ sets, but Hydra's and the ones taken from another key."""
    for key in cfg:
        if not path and key in ("hydra", "paths"):
            continue
        node = cfg._get_node(key)
        if path in (("callbacks",), ("logger",)) and node._is_none():
            continue  # callbacks.<name>=null drops a component: not a knob
        if OmegaConf.is_dict(node) and key != "knobs":
            yield from _leaves(node, (*path, key))
        elif not str(key).startswith("_") and "${" not in str(node._value()):
            yield ".".join((*path, str(key)))


@pytest.mark.parametrize("rows,word", [([{"text": "a b"}, {"text": 7}], "int"),
                                       ([{"text": ["a", "b"]}], "list")])
def test_hf_text_that_is_not_text_names_column_and_file(rows, word, tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataConfigError, match=f"text_column='text' holds a {word}.*docs.jsonl"):
        list(HFSource(data_files=str(path)).documents())


def test_hf_bytes_that_are_not_utf8_name_the_file(tmp_path):
    path = tmp_path / "latin.txt"
    path.write_bytes(b"hello\n" * 5 + b"caf\xe9\n")
    with pytest.raises(DataConfigError, match="latin.txt.*UnicodeDecodeError"):
        list(HFSource(data_files=str(path)).documents())
