"""The jump detector on synthetic curves: silent on noise and smooth rises, quick on real jumps."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from trainer.measures.jumps import JumpDetector

EVAL_EVERY = 100
REPO = Path(__file__).resolve().parent.parent


def _feed(values, n_eval=None, detector=None, series="probe/acc"):
    detector = detector or JumpDetector()
    for index, value in enumerate(values):
        detector.update(series, index * EVAL_EVERY, value, n_eval)
    return detector


def _accuracy(p, n, seed):
    return np.random.default_rng(seed).binomial(n, p) / n


@pytest.mark.parametrize("seed", range(5))
def test_no_event_on_noise_smooth_rises_and_binomial_accuracy(seed):
    rng = np.random.default_rng(seed)
    t = np.linspace(0, 1, 60)
    curves = {
        "constant": (0.5 + rng.normal(0, 0.02, 60), None),
        "linear": (0.1 + 0.5 * t + rng.normal(0, 0.01, 60), None),
        "log": (0.1 + 0.5 * np.log1p(60 * t) / np.log1p(60) + rng.normal(0, 0.01, 60), None),
        "accuracy": (_accuracy(0.3 + 0.1 * t, 256, seed), 256),
    }
    for name, (values, n_eval) in curves.items():
        assert _feed(values, n_eval).events == [], name


def test_single_outlier_is_not_a_jump():
    values = 0.4 + np.random.default_rng(0).normal(0, 0.01, 40)
    values[25] = 0.9
    assert _feed(values).events == []


@pytest.mark.parametrize("size", [0.2, 0.4, -0.3])
def test_sharp_jumps_are_detected_with_onset_and_size(size):
    at = 30
    p = np.where(np.arange(60) >= at, 0.5 + size, 0.5) - 0.2 * (size > 0)
    events = _feed(_accuracy(p, 512, seed=1), n_eval=512).events
    assert len(events) == 1
    event = events[0]
    assert event.onset_step == at * EVAL_EVERY
    assert at * EVAL_EVERY < event.step <= (at + 4) * EVAL_EVERY
    assert event.size == pytest.approx(size, abs=0.06)
    assert np.sign(event.score) == np.sign(size)
    assert event.after - event.before == pytest.approx(event.size)


def test_jump_on_a_rising_trend_and_a_drop_of_a_topology_series():
    rng = np.random.default_rng(3)
    t = np.arange(50)
    rising = 0.2 + 0.005 * t + np.where(t >= 25, 0.15, 0.0) + rng.normal(0, 0.01, 50)
    falling = 12.0 + rng.normal(0, 0.1, 50) - np.where(t >= 20, 3.0, 0.0)
    detector = _feed(rising)
    _feed(falling, detector=detector, series="topo/erank")
    by_series = {event.series: event for event in detector.events}
    assert by_series["probe/acc"].onset_step == 2500
    assert by_series["probe/acc"].size == pytest.approx(0.15, abs=0.03)
    assert by_series["topo/erank"].onset_step == 2000
    assert by_series["topo/erank"].size == pytest.approx(-3.0, abs=0.2)


def test_binomial_floor_keeps_a_few_right_answers_at_zero_accuracy_from_being_a_jump():
    values = np.r_[np.zeros(20), np.full(10, 3 / 256)]
    assert _feed(values, n_eval=256).events == []
    assert len(_feed(values).events) == 1  # without n_eval, nothing says this is noise


def test_no_event_before_minimal_history():
    values = np.r_[np.full(4, 0.1), np.full(10, 0.9)]
    assert _feed(values, detector=JumpDetector(min_history=8)).events == []


def test_invalid_updates_raise():
    detector = JumpDetector()
    detector.update("s", 100, 0.5)
    with pytest.raises(ValueError, match="not after"):
        detector.update("s", 100, 0.5)
    with pytest.raises(ValueError, match="non-finite"):
        detector.update("s", 200, float("nan"))


def test_state_dict_replay_gives_the_same_events():
    values = np.r_[np.full(15, 0.2), np.full(10, 0.6)] + np.random.default_rng(0).normal(
        0, 0.01, 25
    )
    detector = _feed(values)
    _feed(values[::-1], detector=detector, series="topo/twonn")
    restored = JumpDetector()
    restored.load_state_dict(detector.state_dict())
    assert restored.events == sorted(detector.events, key=lambda event: event.step)
    assert len(restored.events) == 2


def test_a_count_that_moves_from_1_to_5_is_not_scored_in_thousands():
    # knn_components on the default run: 1.0 for dozens of evaluations, then 5 or 6 (a handful
    # of points splitting off). A Poisson count of that size moves by that much by chance.
    detector = JumpDetector()
    values = [1.0] * 30 + [5.0, 6.0, 5.0, 5.0, 6.0]
    events = [e for i, v in enumerate(values) for e in detector.update("topo/layer2/knn_components", i * 25, v)]
    assert all(abs(e.score) < 20 for e in events), events
    assert not events
    # A real-valued series with the same history and move is still flagged, and a count that
    # moves far beyond its Poisson noise too.
    for series, after in (("topo/layer2/knn_fiedler", 5.1), ("topo/layer2/knn_components", 40.0)):
        detector = JumpDetector()
        values = [1.0] * 30 + [after] * 5
        assert [e for i, v in enumerate(values) for e in detector.update(series, i * 25, v)], series


def test_events_carry_their_resolution_and_the_pre_alarm_is_visible():
    detector = JumpDetector()
    rng = np.random.default_rng(0)
    values = 5.0 + rng.normal(0, 0.05, 40) + np.where(np.arange(40) >= 20, 1.0, 0.0)
    steps = [i * 25 for i in range(20)] + [500 + i * 50 for i in range(20)]
    pending_at = None
    for step, value in zip(steps, values):
        if detector.update("topo/x", step, value):
            break
        if detector.pending() and pending_at is None:
            pending_at = step
    (event,) = detector.events
    assert event.onset_step == 500 and event.resolution == 25
    assert pending_at is not None and pending_at < event.step


def test_eval_script_prints_its_table():
    script = REPO / "scripts" / "eval_jump_detector.py"
    result = subprocess.run(
        [sys.executable, str(script), "--curves", "3", "--evals", "40"],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
        timeout=60,
    )
    assert "jump +0.20, accuracy n=256" in result.stdout
    assert "false alarms" in result.stdout


def test_the_evaluation_at_step_0_does_not_hide_the_next_rise():
    """A real in-context run (attn_only, 16 label maps, probes every 25 steps): accuracy 0 at
    step 0 (the untrained model has not learned the answer format), the ~0.25 plateau, then a
    rise to 0.63 by step 374. With step 0 in the noise history the rise was never flagged."""
    from trainer.monitors import JumpWatch
    from trainer.schema import callback_defaults

    values = [0.0, 0.094, 0.152, 0.254, 0.25, 0.289, 0.23, 0.285, 0.273, 0.301, 0.289, 0.293,
              0.34, 0.438, 0.512, 0.625, 0.668, 0.711, 0.762, 0.773]
    steps = [0] + [25 * i - 1 for i in range(1, len(values))]
    watch = JumpWatch(**callback_defaults("jumps"))
    for step, value in zip(steps, values):
        watch.observe(step, {"probe/icl/acc": value}, {"probe/icl/acc": 256})
    events = watch.detector.events
    assert [e.series for e in events] == ["probe/icl/acc"]
    # The onset is dated inside the rise (0.34 at 299 to 0.76 at 449): its first value past
    # half the shift.
    assert 299 <= events[0].onset_step <= 424 and events[0].size > 0.15


def test_a_ramp_over_several_evaluations_after_a_step_0_transient_is_one_event_inside_it():
    # The default run's in-context rise (seed 1): 0 at step 0, chance, then 0.38 -> 0.77 over
    # four evaluations and on to 0.99; the old step detector missed it.
    t = np.arange(40)
    p = 0.3 + 0.5 * np.clip((t - 15) / 4, 0, 1) + 0.15 * np.clip((t - 19) / 10, 0, 1)
    p[0] = 0.0
    events = _feed(_accuracy(p, 256, seed=2), n_eval=256).events
    assert len(events) == 1 and events[0].size > 0.3
    assert 15 * EVAL_EVERY <= events[0].onset_step <= 19 * EVAL_EVERY


def test_topology_events_are_reported_only_with_a_capability_change_near_them():
    from trainer.monitors import JumpWatch
    from trainer.schema import callback_defaults

    rng = np.random.default_rng(0)
    topology = 5.0 + rng.normal(0, 0.05, 40) + np.where(np.arange(40) >= 20, 1.0, 0.0)
    capability = _accuracy(np.where(np.arange(40) >= 21, 0.8, 0.3), 256, seed=0)
    settings = {**callback_defaults("jumps"), "companion_window": 300}
    alone, paired = JumpWatch(**settings), JumpWatch(**settings)
    for i in range(40):
        alone.detector.update("topo/layer1/erank", i * 25, topology[i])
        paired.detector.update("topo/layer1/erank", i * 25, topology[i])
        paired.detector.update("probe/icl/acc", i * 25, capability[i], 256)
    assert len(alone.detector.events) == 1 and alone.reported(alone.detector.events) == []
    assert {e.series for e in paired.reported(paired.detector.events)} == {
        "topo/layer1/erank", "probe/icl/acc"}


def _answering_one_label(seed: int, evals: int = 700, n: int = 128) -> np.ndarray:
    """A model at chance on an 8-label task that answers one label for every row, the label it
    prefers changing now and then: the accuracy is the share of rows whose answer that label is
    (the real no-burstiness run moved between 8/128 and 26/128 this way for 18k steps)."""
    rng = np.random.default_rng(seed)
    shares = rng.multinomial(n, np.full(8, 1 / 8)) / n  # the probe rows' answers over the labels
    values, label = [], 0
    for _ in range(evals):
        if rng.random() < 0.08:
            label = int(rng.integers(8))
        values.append(rng.binomial(n, shares[label]) / n if rng.random() < 0.2 else round(shares[label] * n) / n)
    return np.asarray(values)


def test_an_accuracy_at_chance_whose_preferred_label_moves_is_no_jump_when_chance_is_known():
    chance = {"probe/acc": 0.125}
    flagged_without = 0
    for seed in range(10):
        values = _answering_one_label(seed)
        flagged_without += len(_feed(values, n_eval=128).events)
        detector = JumpDetector()
        detector.set_chance(chance)
        assert _feed(values, n_eval=128, detector=detector).events == [], seed
    assert flagged_without >= 3, "the simulated series must be one the chance-blind detector trips on"


def test_a_rise_from_chance_and_a_fade_back_to_it_are_still_jumps_and_chance_survives_a_resume():
    rng = np.random.default_rng(1)
    values = np.r_[np.full(20, 0.125), np.full(20, 0.8), np.full(20, 0.125)]
    values = np.asarray([rng.binomial(128, p) / 128 for p in values])
    detector = JumpDetector()
    detector.set_chance({"probe/acc": 0.125})
    events = _feed(values, n_eval=128, detector=detector).events
    assert [round(e.size, 1) for e in events] == [0.7, -0.7]
    restored = JumpDetector()
    restored.load_state_dict(detector.state_dict())
    assert restored.events == events
    blind = JumpDetector()
    blind.load_state_dict({"observations": detector.state_dict()["observations"]})  # an older checkpoint
    assert len(blind.events) == 2
