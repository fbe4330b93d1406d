"""The LightningModule: masked next-token loss, AdamW (decay on matrices only), warmup + cosine."""

from __future__ import annotations

import math

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from trainer.steps import tokens_seen


def masked_cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, loss_mask: torch.Tensor,
    count: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean cross-entropy over the positions where ``loss_mask`` is set (the data decides which
    positions count: every token for text, only the query's label for in-context tasks).
    ``count`` replaces the local number of counted positions (data parallelism passes the global
    count per rank, so ranks with more padding do not weigh more)."""
    losses = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction="none")
    mask = loss_mask.flatten().to(losses.dtype)
    return (losses * mask).sum() / (mask.sum() if count is None else count).clamp_min(1.0)


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> float:
    """LR multiplier: linear warmup to 1, then cosine decay to ``min_lr_ratio`` at ``total_steps``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


class LitLM(L.LightningModule):
    def __init__(
        self,
        model: nn.Module,
        total_steps: int,
        tokens_per_step: int,
        lr: float = 3e-3,
        weight_decay: float = 0.1,
        betas: tuple[float, float] = (0.9, 0.95),
        warmup_steps: int = 50,
        min_lr_ratio: float = 0.1,
        compile: bool = False,
    ) -> None:
        super().__init__()
        self.model = model
        self.total_steps, self.tokens_per_step = total_steps, tokens_per_step
        self.lr, self.weight_decay, self.betas = lr, weight_decay, tuple(betas)
        self.warmup_steps = warmup_steps
        self.min_lr_ratio = min_lr_ratio
        self.compile = compile

    def configure_model(self) -> None:
        if self.compile:
            # In place: the state dict keeps its keys, so checkpoints load with or without compile.
            self.model.compile()

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.model(
            batch["input_ids"], batch.get("item_vectors"), batch.get("item_mask")
        )

    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        # The batches are flat dicts of tensors: move them directly (Lightning's generic
        # collection walk costs ~0.2 ms a step, which shows on tiny CPU models).
        if all(t.device == device for t in batch.values()):
            return batch
        return {k: t.to(device, non_blocking=True) for k, t in batch.items()}

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        logits = self(batch)
        loss = masked_cross_entropy(logits, batch["targets"], batch["loss_mask"], self._per_rank_count(batch))
        if self._logging_step():
            # Checked (a host sync) and logged only at logging steps: the logger would drop the
            # values of the others anyway, and per-step host syncs cost GPU throughput.
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"training loss is {loss.item()} at step {self.global_step}; "
                    f"lower optim.lr (now {self.lr}) or check the data"
                )
            # sync_dist: under data parallelism the logged loss is the global batch's, not rank 0's.
            self.log("train/loss", loss, prog_bar=True, sync_dist=True)
            # Inside training_step the global step is this batch's index: its log step.
            self.log("train/tokens_seen", float(tokens_seen(self.global_step, self.tokens_per_step)))
            self.log("train/lr", self.lr_schedulers().get_last_lr()[0])
        return loss

    def _per_rank_count(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """Under data parallelism: the global batch's counted positions / world size, so that the
        gradient DDP averages is the global batch's mean, whatever each rank's share of padding."""
        world = self.trainer.world_size if self._trainer is not None else 1
        if world == 1:
            return None
        count = batch["loss_mask"].sum().float()
        return self.trainer.strategy.reduce(count, reduce_op="sum") / world

    def _logging_step(self) -> bool:
        """The steps at which Lightning hands logged values to the loggers (its own rule)."""
        every = self.trainer.log_every_n_steps if self._trainer is not None else 1
        return (self.global_step + 1) % every == 0 or self.global_step + 1 == self.total_steps

    def configure_optimizers(self):
        groups = self.model.optimizer_groups(self.weight_decay)
        for group in groups:  # muP: the hidden matrices' lr / width ratio
            group["lr"] = self.lr * group.pop("lr_scale", 1.0)
        optimizer = torch.optim.AdamW(groups, lr=self.lr, betas=self.betas, fused=False)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lambda s: warmup_cosine(s, self.warmup_steps, self.total_steps, self.min_lr_ratio),
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
