"""Curricula: stage lookup, ramp shapes, integer rounding, and knobs a source cannot schedule."""

import math
from pathlib import Path

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from data_mixers.base import DataConfigError
from data_mixers.curriculum import (
    Constant,
    Curriculum,
    Ramp,
    Stages,
    check_curriculum,
    effective_knobs,
)

CONF = Path(__file__).resolve().parent.parent / "conf" / "curriculum"
BASE = {"p_bursty": 0.9, "n_classes": 512}


def test_constant_overrides_nothing():
    assert Constant().at(10, 100) == {}
    assert effective_knobs(BASE, Constant(), 10, None) == BASE
    assert effective_knobs(BASE, None, 10, None) == BASE


def test_stages_are_looked_up_by_fraction_of_the_budget():
    stages = Stages([{"until": 0.25, "p_bursty": 1.0}, {"until": 0.5, "p_bursty": 0.5},
                     {"until": 1.0, "n_classes": 64}])  # fmt: skip
    assert stages.at(0, 1000) == {"p_bursty": 1.0}
    assert stages.at(249, 1000) == {"p_bursty": 1.0}
    assert stages.at(250, 1000) == {"p_bursty": 0.5}
    assert stages.at(999, 1000) == {"n_classes": 64.0}
    assert stages.at(5000, 1000) == {"n_classes": 64.0}, "past the budget the last stage holds"
    # A knob a stage leaves out falls back to its configured value.
    assert effective_knobs(BASE, stages, 999, 1000) == {"p_bursty": 0.9, "n_classes": 64}
    assert stages.ranges() == {"p_bursty": (0.5, 1.0), "n_classes": (64.0, 64.0)}


@pytest.mark.parametrize(
    "stages,fragment",
    [
        ([], "curriculum.stages is empty"),
        ([{"p_bursty": 1.0}], "curriculum.stages[0] has no 'until'"),
        ([{"until": 0.5}, {"until": 0.4}, {"until": 1.0}], "curriculum.stages[1].until=0.4"),
        ([{"until": 0.5}], "curriculum.stages[0].until=0.5: the last stage must run until 1.0"),
    ],
)
def test_bad_stages_are_named(stages, fragment):
    with pytest.raises(DataConfigError) as err:
        Stages(stages)
    assert fragment in str(err.value)


def test_linear_ramp_endpoints_midpoint_and_holds():
    ramp = Ramp({"p_bursty": {"start": 1.0, "end": 0.0}}, start_frac=0.2, end_frac=0.6)
    assert ramp.at(0, 100) == {"p_bursty": 1.0}, "before start_frac the start value holds"
    assert ramp.at(20, 100) == {"p_bursty": 1.0}
    assert ramp.at(40, 100)["p_bursty"] == pytest.approx(0.5)
    assert ramp.at(30, 100)["p_bursty"] == pytest.approx(0.75)
    assert ramp.at(60, 100) == {"p_bursty": 0.0}
    assert ramp.at(99, 100) == {"p_bursty": 0.0}, "after end_frac the end value holds"


def test_cosine_ramp_eases_in_and_out_and_meets_linear_at_the_midpoint():
    knobs = {"p_bursty": {"start": 0.0, "end": 1.0}}
    cosine, linear = Ramp(knobs, shape="cosine"), Ramp(knobs, shape="linear")
    assert cosine.at(0, 100) == {"p_bursty": 0.0}
    assert cosine.at(100, 100) == {"p_bursty": 1.0}
    assert cosine.at(50, 100)["p_bursty"] == pytest.approx(0.5)
    quarter = cosine.at(25, 100)["p_bursty"]
    assert quarter == pytest.approx((1 - math.cos(math.pi / 4)) / 2)
    assert quarter < linear.at(25, 100)["p_bursty"], "cosine starts slower than linear"


def test_integer_knobs_are_rounded():
    ramp = Ramp({"n_classes": {"start": 64, "end": 2048}})
    knobs = [effective_knobs(BASE, ramp, step, 7) for step in range(8)]
    assert all(isinstance(k["n_classes"], int) for k in knobs)
    assert [k["n_classes"] for k in knobs] == [round(64 + 1984 * s / 7) for s in range(8)]
    assert isinstance(knobs[3]["p_bursty"], float)


def test_unknown_knob_is_named():
    ramp = Ramp({"n_clases": {"start": 64, "end": 128}})
    with pytest.raises(DataConfigError) as err:
        check_curriculum(ramp, BASE, "BurstyClasses")
    assert "data.n_clases" in str(err.value) and "n_classes" in str(err.value)


def test_check_returns_typed_ranges_and_rejects_non_curricula():
    ramp = Ramp({"n_classes": {"start": 64.4, "end": 2047.6}, "p_bursty": {"start": 1, "end": 0}})
    assert check_curriculum(ramp, BASE, "src") == {"n_classes": (64, 2048), "p_bursty": (0.0, 1.0)}
    with pytest.raises(DataConfigError, match="must be a data_mixers.curriculum.Curriculum"):
        check_curriculum({"p_bursty": 1.0}, BASE, "src")


@pytest.mark.parametrize(
    "kwargs,fragment",
    [
        ({"shape": "step"}, "curriculum.shape='step'"),
        ({"start_frac": 0.6, "end_frac": 0.5}, "curriculum.start_frac=0.6"),
        ({"knobs": {}}, "curriculum.knobs is empty"),
        ({"knobs": {"p_bursty": [0, 1]}}, "curriculum.knobs.p_bursty must be a mapping"),
    ],
)
def test_bad_ramps_are_named(kwargs, fragment):
    kwargs = {"knobs": {"p_bursty": {"start": 0, "end": 1}}} | kwargs
    with pytest.raises(DataConfigError) as err:
        Ramp(**kwargs)
    assert fragment in str(err.value)


def test_a_scheduled_curriculum_needs_the_run_length():
    with pytest.raises(RuntimeError, match="bind"):
        effective_knobs(BASE, Ramp({"p_bursty": {"start": 0, "end": 1}}), 0, None)


@pytest.mark.parametrize("path", sorted(CONF.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_curriculum_config_instantiates(path):
    curriculum = instantiate(OmegaConf.load(path))
    assert isinstance(curriculum, Curriculum)
    for step in (0, 50, 99):
        for knob, value in curriculum.at(step, 100).items():
            low, high = curriculum.ranges()[knob]
            assert low <= value <= high


def test_a_non_numeric_stage_value_is_named():
    with pytest.raises(DataConfigError, match=r"curriculum.stages\[1\].weights_count='rows'"):
        Stages([{"until": 0.5, "p_bursty": 1.0}, {"until": 1.0, "weights_count": "rows"}])


def test_the_knowledge_protocols_hold_qa_back_then_switch_or_mix_throughout():
    two_stage = instantiate(OmegaConf.load(CONF / "qa_two_stage.yaml"))
    mixed = instantiate(OmegaConf.load(CONF / "qa_mixed.yaml"))
    assert [two_stage.at(s, 100)["focus_share"] for s in (0, 79, 80, 99)] == [0.0, 0.0, 1.0, 1.0]
    assert {mixed.at(s, 100)["focus_share"] for s in (0, 50, 99)} == {0.8}
