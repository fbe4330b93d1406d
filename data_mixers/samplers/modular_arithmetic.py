"""Modular arithmetic (grokking; Power et al. 2022): ``a op b = c (mod p)``.

A sequence is ``[a, op, b, =]`` and only the last position counts: it must predict ``c``. The
``(a, b)`` pairs are split once per seed into a training fraction and a held-out set; the held-out
set is the probe.
"""

from __future__ import annotations

import numpy as np

from data_mixers.base import DataConfigError, ProbeSet, StepSampler, row_rng

OPERATIONS = ("add", "sub", "mul", "div")


class ModularArithmetic(StepSampler):
    seq_len = 4

    def __init__(self, p: int = 97, operation: str = "add", train_fraction: float = 0.5,
                 probe_size: int = 512, seed: int = 0, curriculum=None) -> None:
        super().__init__(seed, curriculum)
        if operation not in OPERATIONS:
            raise DataConfigError(f"data.operation={operation!r} is not one of {list(OPERATIONS)}")
        if p < 3 or any(p % d == 0 for d in range(2, int(p**0.5) + 1)):
            raise DataConfigError(f"data.p={p} must be a prime >= 3")
        if not 0.0 < train_fraction < 1.0:
            raise DataConfigError(f"data.train_fraction={train_fraction} must lie in (0, 1)")
        self.p, self.operation, self.train_fraction = p, operation, train_fraction
        self.op_token, self.eq_token = p, p + 1
        self.vocab_size = p + 2
        b_min = 1 if operation == "div" else 0
        a, b = np.meshgrid(np.arange(p), np.arange(b_min, p), indexing="ij")
        pairs = np.stack([a.ravel(), b.ravel()], axis=1)
        order = np.random.default_rng([seed, 7919]).permutation(len(pairs))
        n_train = max(1, int(round(train_fraction * len(pairs))))
        self.train_pairs = pairs[order[:n_train]]
        held_out = pairs[order[n_train:]]
        self.probe_pairs = held_out[:probe_size]

    def answer(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        p = self.p
        if self.operation == "add":
            return (a + b) % p
        if self.operation == "sub":
            return (a - b) % p
        if self.operation == "mul":
            return (a * b) % p
        return (a * np.array([pow(int(x), p - 2, p) for x in b])) % p

    def _encode(self, pairs: np.ndarray) -> dict[str, np.ndarray]:
        a, b = pairs[:, 0], pairs[:, 1]
        n = len(pairs)
        input_ids = np.stack([a, np.full(n, self.op_token), b, np.full(n, self.eq_token)], axis=1)
        targets = np.zeros_like(input_ids)
        targets[:, :3] = input_ids[:, 1:]
        targets[:, 3] = self.answer(a, b)
        loss_mask = np.zeros(input_ids.shape, dtype=np.float32)
        loss_mask[:, 3] = 1.0
        domain = np.zeros_like(input_ids)
        return {"input_ids": input_ids.astype(np.int64), "targets": targets.astype(np.int64),
                "loss_mask": loss_mask, "domain": domain.astype(np.int64)}

    def rows(self, step: int, start: int, stop: int) -> dict[str, np.ndarray]:
        idx = np.array([row_rng(self.seed, step, r).integers(len(self.train_pairs)) for r in range(start, stop)])
        return self._encode(self.train_pairs[idx])

    def build_probe_sets(self) -> list[ProbeSet]:
        batch = self._encode(self.probe_pairs)
        # Chance: a uniform guess among the p residues.
        chance = {"acc": 1 / self.p, "logprob": -float(np.log(self.p))}
        return [ProbeSet("heldout", batch, kind="answer", answer_positions=np.full(len(self.probe_pairs), 3),
                         meta={"chance": chance})]

    def describe(self) -> dict[str, int]:
        return {"train_pairs": len(self.train_pairs), "heldout_pairs": len(self.probe_pairs)}
