"""The local learning coefficient (LLC) by SGLD (Lau et al. 2023), with the diagnostics that make a
number from it worth reading.

lambda_hat(w*) = n beta (E[L_n(w)] - L_n(w*)), the expectation over the localized tempered posterior
exp(-n beta L_n(w) - localization/2 |w - w*|^2), sampled with SGLD steps
dw = -lr/2 (n beta grad L_batch(w) + localization (w - w*)) + N(0, lr). For a regular model with d
parameters at a minimum it is d/2; degenerate (simpler) solutions score lower, and drops often
accompany phase changes (grokking, the in-context transition).

An SGLD estimate is only as good as its chains, so every estimate comes with them:

- per-chain traces of the sampled loss (``LLCEstimate.traces``) and per-chain estimates;
- divergence: a chain whose loss turns NaN/inf, or whose estimate exceeds the number of
  parameters (an LLC is at most d/2; beyond d the step size has blown the chain up);
- mixing: the split R-hat of the post-burn-in loss across chains (Gelman et al. 2013: each chain is
  cut in two halves, so a chain still drifting fails it as well as chains that disagree); above
  ``RHAT_LIMIT`` the chains have not mixed;
- a negative estimate: w* is not a minimum of the sampled loss (training has not converged there,
  or the batches differ from the training loss) or the step size is too large.

``calibrate_llc`` runs a small grid over step size and n beta and says which settings are stable;
pick a stable one and keep it fixed across checkpoints, since the estimate depends on it.
Nothing here imports Lightning: the online callback (``trainer.monitors.llc``) and ``elab-retro``
share it.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

#: Split R-hat above this means the chains have not mixed (Vehtari et al. 2021 use 1.01 for long
#: MCMC runs; a few hundred SGLD draws of a noisy minibatch loss rarely get below ~1.05).
RHAT_LIMIT = 1.1


@dataclass
class LLCEstimate:
    """One SGLD estimate of the LLC and its chains. ``traces`` [chains, steps] holds the LLC draw
    n beta (L_b(w_t) - L_b(w*)) of every SGLD step t on its batch b, burn-in included (the mean of
    a chain's draws after burn-in is its estimate, ``chain_llc``)."""

    mean: float
    std: float
    init_loss: float
    n_beta: float
    lr: float
    burn_in: int
    chain_llc: list[float]
    traces: np.ndarray
    rhat: float
    n_params: int
    problems: list[str] = field(default_factory=list)

    @property
    def diverged(self) -> bool:
        return any(p.startswith("diverged") for p in self.problems)

    def metrics(self, prefix: str = "llc") -> dict[str, float]:
        """``llc/mean``, ``llc/std`` (across chains), ``llc/init_loss``, ``llc/rhat`` and
        ``llc/chain<i>``; only finite values (a diverged estimate has no ``mean``)."""
        values = {
            f"{prefix}/mean": self.mean,
            f"{prefix}/std": self.std,
            f"{prefix}/init_loss": self.init_loss,
            f"{prefix}/rhat": self.rhat,
            **{f"{prefix}/chain{i}": v for i, v in enumerate(self.chain_llc)},
        }
        return {k: float(v) for k, v in values.items() if np.isfinite(v)}

    def trace_dict(self) -> dict[str, Any]:
        """Plain containers (JSON-ready): the settings, estimates, problems and the traces."""
        return {
            "mean": self.mean, "std": self.std, "init_loss": self.init_loss, "rhat": self.rhat,
            "n_beta": self.n_beta, "lr": self.lr, "burn_in": self.burn_in,
            "chain_llc": list(self.chain_llc), "problems": list(self.problems),
            "traces": np.round(self.traces, 4).tolist(),
        }


def split_rhat(draws: np.ndarray) -> float:
    """Split R-hat of ``draws`` [chains, n] (Gelman et al. 2013, BDA3 11.4): each chain is cut
    into halves, and the between-half variance is compared with the within-half variance; ~1 when
    the chains are stationary and agree. NaN when it cannot be computed (fewer than 4 draws)."""
    draws = np.asarray(draws, dtype=np.float64)
    n = draws.shape[1] // 2
    if n < 2 or not np.isfinite(draws).all():
        return float("nan")
    halves = np.concatenate([draws[:, :n], draws[:, -n:]], axis=0)
    within = halves.var(axis=1, ddof=1).mean()
    between = n * halves.mean(axis=1).var(ddof=1)
    if within <= 0:
        return 1.0 if between <= 0 else float("inf")
    pooled = (n - 1) / n * within + between / n
    return float(np.sqrt(pooled / within))


def sample_llc(
    model: torch.nn.Module,
    loss_fn: Callable[[torch.nn.Module, Any], torch.Tensor],
    batches: Sequence[Any],
    dataset_size: int,
    steps: int = 200,
    burn_in: int = 50,
    lr: float = 1e-4,
    localization: float = 100.0,
    beta: float | None = None,
    chains: int = 4,
    seed: int = 0,
) -> LLCEstimate:
    """SGLD chains from the model's current weights w*; the estimate with its diagnostics.

    ``loss_fn(model, batch)`` returns the mean loss of a batch; ``batches`` are cycled through and
    also define L_n(w*); ``dataset_size`` is n; ``beta`` defaults to 1 / log n. The chains run on a
    deep copy in eval mode (no dropout) with their own generators: the model's parameters and the
    global RNGs are left exactly as they were. (The localization term biases the estimate of a
    regular model down by a factor of about n beta / (n beta + localization / 2).)
    """
    if not batches:
        raise ValueError("estimate_llc needs at least one batch")
    if not 0 <= burn_in < steps - 3:
        raise ValueError(f"burn_in must be in [0, steps - 3) = [0, {steps - 3}), got {burn_in}")
    if chains < 1 or lr <= 0 or dataset_size < 2:
        raise ValueError(f"need chains >= 1, lr > 0, dataset_size >= 2; got {chains}, {lr}, {dataset_size}")
    beta = 1.0 / np.log(dataset_size) if beta is None else beta
    n_beta = dataset_size * beta
    sampler = copy.deepcopy(model).eval()
    params = [p for p in sampler.parameters() if p.requires_grad]
    n_params = sum(p.numel() for p in params)
    anchor = [p.detach().clone() for p in params]
    generators: dict[torch.device, torch.Generator] = {}
    for offset, device in enumerate(dict.fromkeys(p.device for p in params)):
        generators[device] = torch.Generator(device=device).manual_seed(seed + offset)

    with torch.no_grad():
        batch_loss = [float(loss_fn(sampler, batch)) for batch in batches]
    # Each draw is measured against the loss of its own batch at w*: the batch-to-batch spread of
    # the loss cancels, which shrinks the estimate's variance and leaves the diagnostics to see
    # the chain's own movement.
    traces = np.full((chains, steps), np.nan)
    with torch.enable_grad():
        for chain in range(chains):
            with torch.no_grad():
                for p, a in zip(params, anchor):
                    p.copy_(a)
            for step in range(steps):
                loss = loss_fn(sampler, batches[step % len(batches)])
                traces[chain, step] = n_beta * (float(loss.detach()) - batch_loss[step % len(batches)])
                if not np.isfinite(traces[chain, step]):
                    break
                grads = torch.autograd.grad(loss, params)
                with torch.no_grad():
                    for p, grad, a in zip(params, grads, anchor):
                        noise = torch.randn(
                            p.shape, generator=generators[p.device], device=p.device, dtype=p.dtype
                        )
                        p.add_(-0.5 * lr * (n_beta * grad + localization * (p - a)))
                        p.add_(noise, alpha=float(np.sqrt(lr)))
    kept = traces[:, burn_in:]
    chain_llc = [float(np.mean(chain)) for chain in kept]
    problems = _problems(chain_llc, n_params, lr)
    finite = np.isfinite(kept).all()
    rhat = split_rhat(kept) if finite else float("nan")
    if finite and chains > 1 and rhat > RHAT_LIMIT:
        problems.append(f"not mixed: split R-hat {rhat:.2f} > {RHAT_LIMIT} (run more steps, or "
                        f"calibrate lr, now {lr:g})")
    estimates = np.asarray(chain_llc)
    return LLCEstimate(
        mean=float(estimates.mean()), std=float(estimates.std()), init_loss=float(np.mean(batch_loss)),
        n_beta=float(n_beta), lr=lr, burn_in=burn_in, chain_llc=chain_llc, traces=traces,
        rhat=rhat, n_params=n_params, problems=problems,
    )


def _problems(chain_llc: list[float], n_params: int, lr: float) -> list[str]:
    blown = [i for i, v in enumerate(chain_llc) if not np.isfinite(v) or v > n_params]
    if blown:
        return [f"diverged: chains {blown} went NaN/inf or past the parameter count {n_params} "
                f"(lower lr, now {lr:g}, or raise localization)"]
    if np.mean(chain_llc) < 0:
        return [f"negative estimate {np.mean(chain_llc):.3g}: w* is not a minimum of the sampled "
                f"loss (training not converged there?) or lr {lr:g} is too large"]
    return []


def estimate_llc(
    model: torch.nn.Module,
    loss_fn: Callable[[torch.nn.Module, Any], torch.Tensor],
    batches: Sequence[Any],
    dataset_size: int,
    steps: int = 200,
    burn_in: int = 50,
    lr: float = 1e-4,
    localization: float = 100.0,
    beta: float | None = None,
    chains: int = 4,
    seed: int = 0,
) -> dict[str, float]:
    """:func:`sample_llc` as metrics (``llc/mean``, ``llc/std``, ``llc/init_loss``, ``llc/rhat``,
    ``llc/chain<i>``). A diverged chain raises ``ValueError`` rather than returning a meaningless
    number; the other problems are the caller's to report (see :class:`LLCEstimate`)."""
    estimate = sample_llc(model, loss_fn, batches, dataset_size, steps, burn_in, lr,
                          localization, beta, chains, seed)
    if estimate.diverged:
        raise ValueError(f"SGLD chain {estimate.problems[0]}")
    return estimate.metrics()


def calibrate_llc(
    model: torch.nn.Module,
    loss_fn: Callable[[torch.nn.Module, Any], torch.Tensor],
    batches: Sequence[Any],
    dataset_size: int,
    lrs: Sequence[float] = (1e-5, 1e-4, 1e-3),
    n_betas: Sequence[float] | None = None,
    steps: int = 200,
    burn_in: int = 50,
    localization: float = 100.0,
    chains: int = 4,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """The LLC over a grid of step sizes ``lrs`` and ``n_betas`` (default: n / log n and a tenth and
    ten times that), one row per setting: ``lr``, ``n_beta``, ``llc_mean``, ``llc_std``, ``rhat``,
    ``problems`` and ``stable``.

    A setting is stable when its chains neither diverged nor failed to mix, its estimate is
    positive, and it agrees (within 20%, or two chain standard deviations) with the estimate at a
    neighbouring step size (same n beta) that passes the same checks: an estimate that still moves
    with the step size is the sampler's, not the model's. No stable setting at all means the chains
    are too short for this model. Choose a stable setting and keep it for every checkpoint compared.
    """
    default = dataset_size / np.log(dataset_size)
    n_betas = list(n_betas) if n_betas is not None else [default / 10, default, default * 10]
    rows = []
    for n_beta in n_betas:
        estimates = [sample_llc(model, loss_fn, batches, dataset_size, steps, burn_in, lr,
                                localization, n_beta / dataset_size, chains, seed)
                     for lr in sorted(lrs)]
        for i, estimate in enumerate(estimates):
            neighbours = [e for e in estimates[max(i - 1, 0) : i + 2] if e is not estimate]
            agrees = any(
                not other.problems and abs(estimate.mean - other.mean)
                <= max(0.2 * abs(other.mean), 2 * max(estimate.std, other.std))
                for other in neighbours
            )
            rows.append({
                "lr": estimate.lr, "n_beta": float(n_beta), "llc_mean": estimate.mean,
                "llc_std": estimate.std, "rhat": estimate.rhat, "problems": estimate.problems,
                "stable": not estimate.problems and agrees,
            })
    return rows
