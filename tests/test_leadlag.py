"""Lead-lag: one definition (onset windows at each series' resolution), used by the summary, the
analysis and elab-retro; over seeds, the median and spread of the lead."""

from __future__ import annotations

import numpy as np

from trainer.measures.jumps import JumpDetector, JumpEvent
from trainer.measures.leadlag import first_lead, lead_lag, lead_lag_over_runs, onset_window


def _event(series, onset_step, resolution=100, size=0.3):
    return {"series": series, "step": onset_step + 200, "onset_step": onset_step, "size": size,
            "score": 8.0, "before": 0.1, "after": 0.4, "resolution": resolution}


def test_lead_lag_orders_every_series_around_each_capability_jump():
    events = [
        _event("topo/layer1/twonn", 2000),
        _event("probe/induction/acc", 3000),
        _event("topo/layer0/erank", 3000),
        _event("topo/layer1/h0_total", 4000),
        _event("llc/mean", 1000),
    ]
    (report,) = lead_lag(events)
    assert report["series"] == "probe/induction/acc" and report["resolution"] == 100
    assert [(i["series"], i["lead_steps"], i["resolution"]) for i in report["before"]] == [
        ("topo/layer1/twonn", 1000, 100), ("llc/mean", 2000, 100)]
    assert [item["series"] for item in report["same"]] == ["topo/layer0/erank"]
    assert report["after"][0]["lead_steps"] == -1000
    assert lead_lag(events, max_lag=500)[0]["before"] == []
    assert [i["series"] for i in lead_lag(events, series_prefixes=("topo/",))[0]["before"]] == [
        "topo/layer1/twonn"]
    assert first_lead(report)["series"] == "llc/mean"


def test_a_lead_shorter_than_the_resolution_is_a_coincidence():
    # The capability is evaluated every 50 steps: it changed somewhere in (500, 550]. A series
    # evaluated every 25 steps with onset 525 changed in (500, 525]: inside that window.
    capability = _event("probe/icl/acc", 550, resolution=50)
    inside = _event("topo/attn1/head0/prefix_match", 525, resolution=25)
    earlier = _event("topo/attn1/head0/entropy", 500, resolution=25)
    later = _event("topo/weights/total/norm", 575, resolution=25)
    (report,) = lead_lag([capability, inside, earlier, later])
    assert [i["series"] for i in report["same"]] == ["topo/attn1/head0/prefix_match"]
    assert [i["series"] for i in report["before"]] == ["topo/attn1/head0/entropy"]
    assert [i["series"] for i in report["after"]] == ["topo/weights/total/norm"]
    assert onset_window(capability) == (500, 550)
    # Old events without a resolution are points: equal onsets coincide, others are ordered.
    old = [{k: v for k, v in e.items() if k != "resolution"} for e in (capability, inside)]
    (report,) = lead_lag(old)
    assert report["before"][0]["lead_steps"] == 25


def test_the_detector_feeds_lead_lag_with_its_own_events():
    rng = np.random.default_rng(0)
    detector = JumpDetector()
    topo = 5.0 + rng.normal(0, 0.05, 50) + np.where(np.arange(50) >= 20, 1.0, 0.0)
    probe = np.where(np.arange(50) >= 26, 0.6, 0.1) + rng.normal(0, 0.01, 50)
    for index in range(50):
        detector.update("topo/layer0/twonn", index * 100, topo[index])
        detector.update("probe/copy/acc", index * 100, probe[index])
    assert all(isinstance(e, JumpEvent) for e in detector.events)
    (report,) = lead_lag(detector.events)
    assert report["before"][0]["lead_steps"] == 600 and report["before"][0]["resolution"] == 100


def test_lead_lag_over_seeds_gives_median_and_spread():
    runs = [
        lead_lag([_event("probe/icl/acc", 600, 50), _event("topo/attn1/head0/prefix_match", 500, 25)]),
        lead_lag([_event("probe/icl/acc", 800, 50), _event("topo/attn1/head0/prefix_match", 600, 25)]),
        lead_lag([_event("probe/icl/acc", 700, 50), _event("topo/attn1/head0/prefix_match", 700, 25)]),
        lead_lag([_event("topo/attn1/head0/prefix_match", 700, 25)]),  # no capability jump
    ]
    (row,) = lead_lag_over_runs(runs)
    assert row["capability"] == "probe/icl/acc" and row["series"] == "topo/attn1/head0/prefix_match"
    assert row["runs"] == 3 and row["runs_with_capability_jump"] == 3
    assert (row["led"], row["same"], row["lagged"]) == (2, 1, 0)
    assert row["lead_steps_median"] == 100 and row["lead_steps_min"] == 0 and row["lead_steps_max"] == 200
    assert row["resolution_median"] == 25
