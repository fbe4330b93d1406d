"""Tokens/s of the Lightning training loop against a plain PyTorch loop, side by side.

Both loops train the same model (same init) on the same prepared batches with the same optimizer,
schedule and gradient clipping; they alternate in rounds so machine noise hits both alike. What is
compared is the loop itself: the Lightning side is LitLM in a Trainer logging every
``log_every_n_steps`` (as ``elab-train`` does), without checkpoints, monitors or progress bar.

    python scripts/bench_train.py                       # the default model and data
    python scripts/bench_train.py model=gpt_small --steps 200 --rounds 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings

os.environ.setdefault("WANDB_MODE", "disabled")


def build(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    from trainer.build import build_data
    from trainer.errors import CONF_DIR

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=["paths.output_dir=unused", *overrides])
    sampler = build_data(cfg)  # as elab-train builds it
    sampler.prepare()
    return cfg, sampler


def make_model(cfg, sampler):
    import torch

    from trainer.build import build_model

    torch.manual_seed(cfg.seed)
    return build_model(cfg, sampler)


def warmup(cfg, steps: int) -> int:
    """elab-train's warmup rule, for a run of ``--steps`` steps."""
    from trainer.config import ConfigError, warmup_steps_for

    try:
        return warmup_steps_for(cfg.optim.warmup_steps, steps, f"--steps {steps}")
    except ConfigError as exc:
        sys.exit(str(exc))


def loader(batches):
    """Both loops read the prepared batches through the same kind of DataLoader."""
    from torch.utils.data import DataLoader

    return DataLoader(batches, batch_size=None, shuffle=False)


def plain_loop(cfg, sampler, batches, steps: int) -> float:
    import torch

    from trainer.module import LitLM, masked_cross_entropy

    model = make_model(cfg, sampler)
    lit = LitLM(model, total_steps=steps, tokens_per_step=1, lr=cfg.optim.lr,
                weight_decay=cfg.optim.weight_decay, warmup_steps=warmup(cfg, steps),
                min_lr_ratio=cfg.optim.min_lr_ratio)
    opt_cfg = lit.configure_optimizers()
    optimizer, schedule = opt_cfg["optimizer"], opt_cfg["lr_scheduler"]["scheduler"]
    model.train()
    t0 = None
    for i, batch in enumerate(loader(batches)):
        if i == 1:
            t0 = time.perf_counter()  # the first step (allocation, warm-up) is excluded, as in Lightning's
        logits = model(batch["input_ids"], batch.get("item_vectors"), batch.get("item_mask"))
        loss = masked_cross_entropy(logits, batch["targets"], batch["loss_mask"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        optimizer.step()
        schedule.step()
        if i % cfg.log_every_n_steps == 0:
            loss.item()  # Lightning's logging syncs the loss to the host at this rate
    return time.perf_counter() - t0


def lightning_loop(cfg, sampler, batches, steps: int) -> float:
    import lightning as L

    from trainer.module import LitLM
    from trainer.monitors.backbone import Throughput

    model = make_model(cfg, sampler)
    lit = LitLM(model, total_steps=steps, tokens_per_step=1, lr=cfg.optim.lr,
                weight_decay=cfg.optim.weight_decay, warmup_steps=warmup(cfg, steps),
                min_lr_ratio=cfg.optim.min_lr_ratio)
    clock = Throughput(tokens_per_step=1, log_every_n_steps=10**9)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=steps, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, gradient_clip_val=cfg.optim.grad_clip,
                        log_every_n_steps=cfg.log_every_n_steps, callbacks=[clock])
    trainer.fit(lit, train_dataloaders=loader(batches))
    return (steps - 1) / clock.tokens_per_s  # seconds for the steps after the first


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for elab-train")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    import logging

    import torch

    from trainer.allocator import configure_malloc
    from trainer.data import to_tensors

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    cfg, sampler = build(args.overrides)
    torch.set_num_threads(cfg.threads or torch.get_num_threads())
    malloc = configure_malloc(cfg.malloc)  # as elab-train does (malloc=system to compare)
    batches = [to_tensors(sampler.batch(s, cfg.batch.global_size)) for s in range(args.steps)]
    tokens = (args.steps - 1) * cfg.batch.global_size * sampler.seq_len
    model = make_model(cfg, sampler)
    print(f"model={type(model).__name__} params={model.num_params():,} data={type(sampler).__name__} "
          f"batch={cfg.batch.global_size}x{sampler.seq_len} steps={args.steps} threads={torch.get_num_threads()} malloc={malloc}")
    plain, lit = [], []
    for r in range(args.rounds):
        # Alternate which loop goes first, so warm-up effects favour neither.
        order = [(plain, plain_loop), (lit, lightning_loop)]
        for speeds, loop in order if r % 2 == 0 else order[::-1]:
            speeds.append(tokens / loop(cfg, sampler, batches, args.steps))
        print(f"round {r}: plain {plain[-1]:,.0f} tok/s   lightning {lit[-1]:,.0f} tok/s   "
              f"ratio {lit[-1] / plain[-1]:.3f}")
    ratio = statistics.median(lit) / statistics.median(plain)
    print(f"median: plain {statistics.median(plain):,.0f} tok/s, lightning {statistics.median(lit):,.0f} tok/s, "
          f"lightning/plain = {ratio:.3f} (target >= 0.9)")


if __name__ == "__main__":
    main()
