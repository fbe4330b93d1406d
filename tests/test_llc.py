"""The LLC estimator against models whose answer is known, and its diagnostics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trainer.measures.llc import calibrate_llc, estimate_llc, sample_llc, split_rhat


def _regression_at_optimum(d: int = 4, n: int = 512):
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(n, d, generator=generator)
    targets = inputs @ torch.linspace(-2.0, 3.0, d) + 0.1 * torch.randn(n, generator=generator)
    model = torch.nn.Linear(d, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.linalg.lstsq(inputs, targets[:, None]).solution.T)
    batches = [(inputs[i : i + 64], targets[i : i + 64]) for i in range(0, n, 64)]
    return model, batches


def _mse(model, batch):
    inputs, targets = batch
    return ((model(inputs).squeeze(-1) - targets) ** 2).mean()


class _Quadratic(torch.nn.Module):
    """L(w) = 1/2 sum_i h_i w_i^2: regular, minimum at 0, with an exact tempered expectation."""

    def __init__(self, curvatures: torch.Tensor) -> None:
        super().__init__()
        self.h = curvatures
        self.w = torch.nn.Parameter(torch.zeros(len(curvatures)))


def _quadratic_loss(model, _batch):
    return 0.5 * (model.h * model.w**2).sum()


def test_llc_of_a_regular_model_is_half_its_dimension_and_training_state_is_untouched():
    model, batches = _regression_at_optimum()
    weight, rng_state = model.weight.detach().clone(), torch.get_rng_state()
    llc = estimate_llc(
        model, _mse, batches, dataset_size=512, steps=400, burn_in=100, lr=1e-3, localization=1.0
    )
    assert 1.6 < llc["llc/mean"] < 2.4  # d / 2 = 2 for 4 regular parameters
    assert llc["llc/rhat"] < 1.1 and {"llc/chain0", "llc/chain3"} <= set(llc)
    assert torch.equal(model.weight, weight)
    assert torch.equal(torch.get_rng_state(), rng_state)


def test_llc_of_a_quadratic_matches_its_exact_value_and_scales_with_dimension():
    # Under exp(-n beta L - gamma/2 |w|^2) each coordinate is Gaussian with variance
    # 1 / (n beta h + gamma), so n beta E[L] = sum_i n beta h_i / (2 (n beta h_i + gamma)).
    n, gamma = 1000, 10.0
    n_beta = n / np.log(n)
    estimates = {}
    for d in (4, 16):
        h = torch.linspace(0.5, 2.0, d)
        exact = float((n_beta * h / (2 * (n_beta * h + gamma))).sum())
        estimate = sample_llc(_Quadratic(h), _quadratic_loss, [None], dataset_size=n, steps=1000,
                              burn_in=200, lr=1e-3, localization=gamma, chains=4)
        assert estimate.mean == pytest.approx(exact, rel=0.1), d
        assert not estimate.problems
        estimates[d] = estimate.mean
    assert 3.5 < estimates[16] / estimates[4] < 4.5  # proportional to d, as d/2 says


def test_a_degenerate_model_has_a_lower_llc_than_its_parameter_count_suggests():
    # y = (a * b) x: two parameters, one direction of the loss (a product), LLC 1/2 not 1.
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(512, generator=generator)
    y = 1.5 * x + 0.1 * torch.randn(512, generator=generator)

    slope = float((x * y).sum() / (x * x).sum())  # a * b at the least-squares slope

    class Product(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = torch.nn.Parameter(torch.tensor(slope))
            self.b = torch.nn.Parameter(torch.tensor(1.0))

    def loss(model, batch):
        return ((model.a * model.b * batch[0] - batch[1]) ** 2).mean()

    model = Product()
    estimate = sample_llc(model, loss, [(x, y)], dataset_size=512, steps=1000, burn_in=200,
                          lr=1e-3, localization=1.0)
    assert 0.3 < estimate.mean < 0.8


def test_a_divergent_chain_is_reported_and_estimate_llc_raises():
    model, batches = _regression_at_optimum()
    estimate = sample_llc(model, _mse, batches, dataset_size=512, steps=50, burn_in=10, lr=1.0)
    assert estimate.diverged and "diverged" in estimate.problems[0]
    assert "llc/mean" not in estimate.metrics()  # never a NaN logged as a number
    with pytest.raises(ValueError, match="diverged"):
        estimate_llc(model, _mse, batches, dataset_size=512, steps=50, burn_in=10, lr=1.0)


def test_chains_that_have_not_mixed_are_flagged():
    model, batches = _regression_at_optimum()
    # A small step for so few draws: the chains are still climbing away from w* when they stop.
    estimate = sample_llc(model, _mse, batches, dataset_size=512, steps=60, burn_in=5, lr=1e-5,
                          localization=1.0)
    assert any(p.startswith("not mixed") for p in estimate.problems)
    assert split_rhat(np.random.default_rng(0).normal(size=(4, 400))) < 1.05
    drifting = np.linspace(0, 5, 400)[None] + np.random.default_rng(0).normal(size=(4, 400))
    assert split_rhat(drifting) > 1.1


def test_calibration_marks_a_blown_up_step_size_unstable_and_a_sane_one_stable():
    model, batches = _regression_at_optimum()
    rows = calibrate_llc(model, _mse, batches, dataset_size=512, lrs=(3e-4, 1e-3, 1.0),
                         n_betas=[82.0], steps=300, burn_in=60, localization=1.0)
    by_lr = {row["lr"]: row for row in rows}
    assert by_lr[1e-3]["stable"] and by_lr[3e-4]["stable"] and 1.5 < by_lr[1e-3]["llc_mean"] < 2.5
    assert not by_lr[1.0]["stable"] and by_lr[1.0]["problems"]
    # A lone setting that mixes, with no neighbour to agree with, is not called stable.
    (alone,) = calibrate_llc(model, _mse, batches, dataset_size=512, lrs=(1e-3,), n_betas=[82.0],
                             steps=300, burn_in=60, localization=1.0)
    assert not alone["problems"] and not alone["stable"]


@pytest.mark.slow
def test_llc_monitor_logs_the_llc_on_its_schedule_and_leaves_training_alone(tmp_path, tiny_overrides):
    import csv
    import json

    from tests.conftest import compose_cfg
    from trainer.train import train

    def series(run, key):
        with (run / "csv" / "metrics.csv").open() as f:
            return {int(r["step"]): float(r[key]) for r in csv.DictReader(f) if r.get(key)}

    llc = ["+callbacks.llc._target_=trainer.monitors.llc.LLCMonitor", "+callbacks.llc.first_step=4",
           "+callbacks.llc.log_per_octave=1", "+callbacks.llc.batch_size=16",
           "+callbacks.llc.n_batches=2", "+callbacks.llc.chains=2", "+callbacks.llc.steps=24",
           "+callbacks.llc.burn_in=4", "+callbacks.llc.lr=1e-4"]
    base = [*tiny_overrides, "budget.tokens=2560"]
    summary = train(compose_cfg([*base, *llc], tmp_path / "llc"))
    train(compose_cfg(base, tmp_path / "plain"))
    assert series(tmp_path / "llc", "train/loss") == series(tmp_path / "plain", "train/loss")
    values = series(tmp_path / "llc", "llc/mean")
    assert sorted(values) == [3, 7, 15, 31, 39]  # global steps 4, 8, 16, 32 and the last, 40
    assert all(np.isfinite(v) for v in values.values()) and series(tmp_path / "llc", "llc/chain1")
    lines = (tmp_path / "llc" / "llc" / "traces.jsonl").read_text().splitlines()
    traces = [json.loads(line) for line in lines]
    assert [t["step"] for t in traces] == [3, 7, 15, 31, 39]
    assert np.asarray(traces[0]["traces"]).shape == (2, 24)
    # Early on w* is no minimum yet: a negative estimate is logged, and named in its problems.
    assert all(any("negative" in p for p in t["problems"]) == (t["mean"] < 0) for t in traces)
    assert summary["monitor_seconds"]["LLCMonitor"] > 0


def test_llc_series_reach_the_jump_detector_through_the_bus(tmp_path):
    """The LLC monitor publishes like every monitor: llc/mean is a series the jump watch watches
    (its diagnostics are logged only), so a jump in the LLC is flagged."""
    from types import SimpleNamespace

    from trainer.monitors import JumpWatch, MonitorBus
    from trainer.monitors.llc import LLCMonitor
    from trainer.schema import callback_defaults

    class Estimate:
        problems, diverged = [], False

        def __init__(self, mean: float) -> None:
            self.mean = mean

        def metrics(self) -> dict[str, float]:
            return {"llc/mean": self.mean, "llc/std": 0.5 * self.mean}

        def trace_dict(self) -> dict:
            return {}

    watch = JumpWatch(**callback_defaults("jumps"))
    monitor = LLCMonitor(log_per_octave=0, every_n_steps=1, first_step=1)
    MonitorBus().attach([watch, monitor])
    monitor.schedule, monitor.traces_path = set(range(1, 41)), tmp_path / "traces.jsonl"
    trainer = SimpleNamespace(is_global_zero=True, global_step=0, loggers=[], callback_metrics={})
    for step in range(1, 41):
        trainer.global_step = step
        mean = (1.0 if step < 25 else 3.0) + 0.01 * (-1) ** step
        monitor.estimate = lambda model, batches, mean=mean: Estimate(mean)
        monitor.on_train_batch_end(trainer, SimpleNamespace(model=None), None, None, 0)
    assert [e.series for e in watch.detector.events] == ["llc/mean"]
    assert float(trainer.callback_metrics["llc/std"]) == pytest.approx(1.5, abs=0.01)
