"""The coordinate check of muP (Yang et al. 2022, "Tensor Programs V", Fig. 5; the ``mup``
package's ``get_coord_data``): train the default task's model for a few steps at a large learning
rate at several widths, and record the mean |activation| of every layer's output and of the logits
at each step. Under a parametrization in which width transfers these do not move with width; under
the standard one (SP) the updates grow them with width (Adam's update of an n-wide matrix moves
its output by ~lr x n).

    python scripts/coord_check.py                       # the default attention-only model
    python scripts/coord_check.py model=gpt_tiny        # Hydra overrides of the composed config

Writes the figure (``--out``, default docs/coord_check.png) and prints, last,
``coord check: sp max |slope| A, mup max |slope| B``: the slope of log(mean |x|) against
log(width) at the last step, fitted over the widths on the mean over seeds, its maximum |.| over
the layers.
"""

from __future__ import annotations

import argparse
import math
import sys
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def compose_config(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    from trainer.train import CONF_DIR

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("train", overrides=["paths.output_dir=unused", *overrides])


def record(model) -> tuple[dict[str, float], list]:
    """Forward hooks that store each layer output's mean |x| under a readable name."""
    seen: dict[str, float] = {}

    def keep(name):
        def hook(module, args, out):
            out = out[0] if isinstance(out, tuple) else out
            seen[name] = float(out.detach().abs().mean())
        return hook

    def keep_input(name):
        def hook(module, args):
            seen[name] = float(args[0].detach().abs().mean())
        return hook

    handles = [model.blocks[0].register_forward_pre_hook(keep_input("embedding"))]
    for i, block in enumerate(model.block_schedule()):
        handles.append(block.attn.register_forward_hook(keep(f"{i}.attn")))
        if block.mlp is not None:
            handles.append(block.mlp.register_forward_hook(keep(f"{i}.mlp")))
        handles.append(block.register_forward_hook(keep(f"{i}.out")))
    return seen, handles


def coord_data(cfg, width: int, parametrization: str, base_width: int, seed: int, steps: int,
               lr: float, batch_size: int) -> list[dict[str, float]]:
    """Per step, each layer's mean |output| on that step's batch (before its update)."""
    import torch
    from hydra.utils import instantiate

    from trainer.module import masked_cross_entropy

    sampler = instantiate(cfg.data, curriculum=None, seed=seed, _convert_="all")
    sampler.bind(steps)
    torch.manual_seed(seed)
    model = instantiate(cfg.model, d_model=width, parametrization=parametrization,
                        base_width=base_width, vocab_size=sampler.vocab_size,
                        max_seq_len=sampler.seq_len, item_dim=sampler.item_dim)
    groups = model.optimizer_groups(cfg.optim.weight_decay)
    for group in groups:  # as LitLM.configure_optimizers: muP's hidden lr / width ratio
        group["lr"] = lr * group.pop("lr_scale", 1.0)
    optimizer = torch.optim.AdamW(groups, lr=lr, betas=tuple(cfg.optim.betas))
    seen, _ = record(model)
    history = []
    for step in range(steps):
        batch = {k: torch.from_numpy(v) for k, v in sampler.batch(step, batch_size).items()}
        logits = model(batch["input_ids"], batch.get("item_vectors"), batch.get("item_mask"))
        seen["logits"] = float(logits.detach().abs().mean())
        history.append(dict(seen))
        loss = masked_cross_entropy(logits, batch["targets"], batch["loss_mask"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return history


def slopes(widths: list[int], means: dict[int, dict[str, float]]) -> dict[str, float]:
    """Least-squares slope of log(mean |x|) over log(width), per layer."""
    xs = [math.log(w) for w in widths]
    x_bar = sum(xs) / len(xs)
    out = {}
    for name in means[widths[0]]:
        ys = [math.log(means[w][name]) for w in widths]
        y_bar = sum(ys) / len(ys)
        out[name] = (sum((x - x_bar) * (y - y_bar) for x, y in zip(xs, ys))
                     / sum((x - x_bar) ** 2 for x in xs))
    return out


def plot(path: Path, widths: list[int], curves: dict[str, list[dict[int, dict[str, float]]]],
         shown: list[int]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(curves), len(shown), figsize=(3.6 * len(shown), 3.2 * len(curves)),
                             sharey="row", squeeze=False)
    for row, (param, per_step) in enumerate(curves.items()):
        for col, step in enumerate(shown):
            ax = axes[row][col]
            for name in per_step[step][widths[0]]:
                ax.plot(widths, [per_step[step][w][name] for w in widths], marker="o", label=name)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_title(f"{param}, step {step}")
            ax.set_xlabel("width (d_model)")
        axes[row][0].set_ylabel("mean |activation|")
    axes[0][-1].legend(fontsize=7, loc="best")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[64, 128, 256, 512])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10, help="training steps recorded")
    parser.add_argument("--batch", type=int, default=32,
                        help="sequences per step (mean |x| averages over all their positions)")
    parser.add_argument("--lr", type=float, default=1e-2, help="a large lr: the updates dominate")
    parser.add_argument("--base-width", type=int, help="muP's base width (default: the smallest)")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "coord_check.png")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. model=gpt_tiny")
    args = parser.parse_args(argv)
    import torch

    warnings.filterwarnings("ignore", category=UserWarning)
    torch.set_num_threads(1)
    cfg = compose_config(args.overrides)
    widths = sorted(args.widths)
    base = args.base_width or widths[0]
    curves, result = {}, {}
    for param in ("sp", "mup"):
        runs = {w: [coord_data(cfg, w, param, base, seed, args.steps, args.lr, args.batch)
                    for seed in range(args.seeds)] for w in widths}
        per_step = [{w: {name: sum(r[step][name] for r in runs[w]) / len(runs[w])
                         for name in runs[w][0][step]} for w in widths}
                    for step in range(args.steps)]
        curves[param] = per_step
        last = slopes(widths, per_step[-1])
        result[param] = max(abs(s) for s in last.values())
        print(f"{param}: slope at step {args.steps - 1} per layer: "
              + ", ".join(f"{name} {s:+.2f}" for name, s in last.items()))
    shown = sorted({0, args.steps // 2, args.steps - 1})
    plot(args.out, widths, curves, shown)
    print(args.out)
    print(f"coord check: sp max |slope| {result['sp']:.2f}, mup max |slope| {result['mup']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
