"""The Lightning side of the data: a DataModule that serves a StepSampler's batches by step.

The sampler is stateless (a batch is a pure function of seed, step and rows), so the loader only
needs to know where to start: the restored global step on resume. Ranks take disjoint row ranges
of each global batch; DataLoader workers take interleaved steps, which the loader yields back in
order.
"""

from __future__ import annotations

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from data_mixers.base import StepSampler


def to_tensors(batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {key: torch.from_numpy(np.ascontiguousarray(value)) for key, value in batch.items()}


class StepBatches(IterableDataset):
    """Yields this rank's batch for steps ``start_step, start_step + 1, ...`` up to ``stop_step``."""

    def __init__(
        self,
        sampler: StepSampler,
        global_batch: int,
        start_step: int,
        stop_step: int,
        rank: int,
        world_size: int,
    ) -> None:
        self.sampler, self.global_batch = sampler, global_batch
        self.start_step, self.stop_step = start_step, stop_step
        self.rank, self.world_size = rank, world_size

    def __iter__(self):
        worker = get_worker_info()
        offset, stride = (worker.id, worker.num_workers) if worker else (0, 1)
        for step in range(self.start_step + offset, self.stop_step, stride):
            yield to_tensors(
                self.sampler.batch(step, self.global_batch, self.rank, self.world_size)
            )


class StepDataModule(L.LightningDataModule):
    def __init__(
        self, sampler: StepSampler, global_batch: int, total_steps: int, num_workers: int = 0
    ) -> None:
        super().__init__()
        self.sampler, self.global_batch = sampler, global_batch
        self.total_steps, self.num_workers = total_steps, num_workers

    def setup(self, stage: str) -> None:
        self.sampler.bind(self.total_steps)

    def train_dataloader(self) -> DataLoader:
        # The fit loop restores global_step before it asks for the loader, so a resumed run starts
        # exactly at the step after its checkpoint.
        start = self.trainer.global_step if self.trainer is not None else 0
        rank = self.trainer.global_rank if self.trainer is not None else 0
        world = self.trainer.world_size if self.trainer is not None else 1
        dataset = StepBatches(self.sampler, self.global_batch, start, self.total_steps, rank, world)
        return DataLoader(
            dataset,
            batch_size=None,
            num_workers=self.num_workers,
            persistent_workers=False,
            pin_memory=torch.cuda.is_available(),
        )
