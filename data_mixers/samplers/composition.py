"""Two-hop composition over a random knowledge graph (after Wang et al. 2024, "Grokked
Transformers are Implicit Reasoners", arXiv 2405.15071).

A seeded random graph of ``entities`` and ``relations``: every entity has ``out_degree`` distinct
outgoing relations, each to a random tail. An *atomic* fact is ``(h, r) -> t``; a two-hop
*inferred* fact is ``(h, r1, r2) -> t2`` where ``(h, r1) -> b`` (the bridge) and ``(b, r2) -> t2``.
Rows are token sequences, one fact per row, with the loss on the answer only:

    atomic    [h, r, <pad>]   the answer t is predicted after r   (position 1)
    inferred  [h, r1, r2]     the answer t2 is predicted after r2 (position 2)

so the first hop of an inferred fact sits where the model answers atomic facts. The atomic facts
are split into in-distribution (ID) and out-of-distribution (OOD, ``ood_fraction``); every atomic
fact is trained, but a training inferred fact uses ID atomic facts only. ``phi`` -- inferred /
atomic facts in training -- is the paper's knob: the density of the bridges the model is shown.

Probe sets (``probe/<set>/acc`` and ``/logprob``):

``composition_id``   held-out inferred facts over ID atomic facts (never trained): does the model
                     compose what it knows?
``composition_ood``  inferred facts with at least one OOD hop (both hops known as atomic facts,
                     never seen inside a composition)
``atomic``           trained atomic facts (memorisation)
``inferred_train``   trained inferred facts (fitting the training set)
"""

from __future__ import annotations

import math

import numpy as np

from data_mixers.base import DataConfigError, ProbeSet, StepSampler
from data_mixers.samplers.row_streams import row_draws

PROBES = ("composition_id", "composition_ood", "atomic", "inferred_train")


class Composition(StepSampler):
    seq_len = 3

    def __init__(self, entities: int = 200, relations: int = 20, out_degree: int = 10,
                 phi: float = 7.2, ood_fraction: float = 0.05, heldout_inferred: int = 500,
                 probe_size: int = 500, seed: int = 0, curriculum=None) -> None:
        super().__init__(seed, curriculum)
        _check(entities >= 2, "entities", entities, "must be at least 2")
        _check(relations >= 1, "relations", relations, "must be at least 1")
        _check(1 <= out_degree <= relations, "out_degree", out_degree,
               f"must lie in 1..data.relations={relations}")
        _check(0.0 <= ood_fraction < 1.0, "ood_fraction", ood_fraction, "must lie in [0, 1)")
        _check(phi >= 0.0, "phi", phi, "must be >= 0")
        _check(heldout_inferred >= 1, "heldout_inferred", heldout_inferred, "must be at least 1")
        _check(probe_size >= 1, "probe_size", probe_size, "must be at least 1")
        self.entities, self.relations, self.out_degree = entities, relations, out_degree
        self.phi, self.ood_fraction = float(phi), float(ood_fraction)
        self.pad_token = entities + relations
        self.vocab_size = entities + relations + 1
        rng = np.random.default_rng([seed, 2405])

        # The graph: out_degree distinct relations per entity, a random tail for each.
        rel = np.argsort(rng.random((entities, relations)), axis=1)[:, :out_degree]
        heads = np.repeat(np.arange(entities), out_degree)
        rels = rel.ravel()
        tails = rng.integers(entities, size=heads.size)
        self.atomic = np.stack([heads, rels, tails], axis=1)  # [n_atomic, 3]: h, r, t
        n_atomic = len(self.atomic)
        n_ood = int(round(ood_fraction * n_atomic))
        self.is_ood = np.zeros(n_atomic, dtype=bool)
        self.is_ood[rng.permutation(n_atomic)[:n_ood]] = True

        # Every two-hop path (h, r1) -> b, (b, r2) -> t2, tagged ID when both hops are ID.
        first = np.arange(n_atomic)
        start = np.arange(entities) * out_degree  # the atomic facts of entity e: start[e] + k
        second = start[self.atomic[:, 2]][:, None] + np.arange(out_degree)[None, :]  # [n_atomic, d]
        first = np.repeat(first, out_degree)
        second = second.ravel()
        path_ood = self.is_ood[first] | self.is_ood[second]
        id_paths = rng.permutation(np.flatnonzero(~path_ood))
        ood_paths = rng.permutation(np.flatnonzero(path_ood))

        n_heldout = min(heldout_inferred, len(id_paths) // 2)
        n_train = int(round(phi * n_atomic))
        available = len(id_paths) - n_heldout
        if n_train > available:
            raise DataConfigError(
                f"data.phi={phi}: {n_train} training inferred facts asked for, but this graph has "
                f"{available} in-distribution two-hop facts besides the {n_heldout} held out "
                f"(phi <= {available / n_atomic:.2f} here): raise data.out_degree or lower data.phi")
        self.heldout = self._inferred(first, second, id_paths[:n_heldout])
        self.train_inferred = self._inferred(first, second, id_paths[n_heldout:n_heldout + n_train])
        self.ood_inferred = self._inferred(first, second, ood_paths[:probe_size])
        self.probe_size = probe_size
        self._atomic4 = np.stack([self.atomic[:, 0], self.atomic[:, 1],
                                  np.full(n_atomic, -1), self.atomic[:, 2]], axis=1)
        self._pool = np.concatenate([self._atomic4, self.train_inferred])  # what training draws

    def _inferred(self, first: np.ndarray, second: np.ndarray, paths: np.ndarray) -> np.ndarray:
        """``[n, 4]``: h, r1, r2, t2 of the given paths."""
        a, b = self.atomic[first[paths]], self.atomic[second[paths]]
        return np.stack([a[:, 0], a[:, 1], b[:, 1], b[:, 2]], axis=1)

    def _encode(self, facts: np.ndarray) -> dict[str, np.ndarray]:
        """Rows of ``[n, 4]`` facts ``h, r1, r2, answer`` (``r2 = -1``: an atomic fact), relation
        ids offset past the entities."""
        e, n = self.entities, len(facts)
        inferred = facts[:, 2] >= 0
        input_ids = np.full((n, 3), self.pad_token, dtype=np.int64)
        input_ids[:, 0], input_ids[:, 1] = facts[:, 0], facts[:, 1] + e
        input_ids[inferred, 2] = facts[inferred, 2] + e
        position = np.where(inferred, 2, 1)
        targets = np.full_like(input_ids, self.pad_token)
        loss_mask = np.zeros(input_ids.shape, dtype=np.float32)
        targets[np.arange(n), position] = facts[:, 3]
        loss_mask[np.arange(n), position] = 1.0
        domain = np.repeat(inferred.astype(np.int64)[:, None], 3, axis=1)  # 0 atomic, 1 inferred
        return {"input_ids": input_ids, "targets": targets, "loss_mask": loss_mask, "domain": domain}

    def rows(self, step: int, start: int, stop: int) -> dict[str, np.ndarray]:
        """Each row one training fact, drawn uniformly from atomic and training inferred facts."""
        u, _ = row_draws(self.seed, 0, step, start, stop, n_uniforms=1)
        idx = np.minimum((u[:, 0] * len(self._pool)).astype(np.int64), len(self._pool) - 1)
        return self._encode(self._pool[idx])

    def build_probe_sets(self) -> list[ProbeSet]:
        rng = np.random.default_rng([self.seed, 2406])
        k = self.probe_size

        def sample(facts: np.ndarray) -> np.ndarray:
            return facts[np.sort(rng.permutation(len(facts))[:k])]

        sets = {
            "composition_id": self.heldout[:k],
            "composition_ood": self.ood_inferred[:k],
            "atomic": sample(self._atomic4),
            "inferred_train": sample(self.train_inferred),
        }
        probes = []
        for name, facts in sets.items():
            if len(facts) == 0:
                continue  # no OOD paths (ood_fraction=0) or no training inferred facts (phi=0)
            probes.append(ProbeSet(name, self._encode(facts), kind="answer",
                                   answer_positions=np.where(facts[:, 2] >= 0, 2, 1),
                                   meta={"chance": {"acc": 1.0 / self.entities,
                                                    "logprob": -math.log(self.entities)}}))
        return probes

    def batch_stats(self, batch) -> dict[str, float]:
        """The share of inferred facts among the emitted rows (phi / (1 + phi) in expectation)."""
        return {"inferred_share": float(np.mean(batch["domain"][:, 0] == 1))}

    def describe(self) -> dict[str, float | int]:
        return {
            "entities": self.entities, "relations": self.relations, "out_degree": self.out_degree,
            "atomic_facts": len(self.atomic), "ood_atomic_facts": int(self.is_ood.sum()),
            "train_inferred_facts": len(self.train_inferred),
            "phi_measured": len(self.train_inferred) / len(self.atomic),
            "heldout_inferred_facts": len(self.heldout), "ood_inferred_facts": len(self.ood_inferred),
        }


def _check(ok: bool, key: str, value, rule: str) -> None:
    if not ok:
        raise DataConfigError(f"data.{key}={value!r} {rule}")
