"""Bursty classes: few-shot classification sequences for in-context learning studies.

After Chan et al. 2022 (data distributional properties drive emergent in-context learning) and
Reddy 2024 (the mechanistic basis of data dependence and abrupt learning in an in-context
classification task). Items belong to classes, each class has a label, and a sequence shows
``N = pairs_per_seq`` (item, label) pairs followed by a query item whose label is the answer:

    position  0    1    2    3    ...  2N-2  2N-1  2N
    input     x_1  y_1  x_2  y_2  ...  x_N   y_N   x_q
    target    y_1  x_2  y_2  x_3  ...  y_N   x_q   y_q

The answer can come from the weights (the class's usual label) or from the context (the label the
query's class carries there). Which strategy the model learns is set by the data knobs:

* ``p_bursty``: probability that a context is *bursty*: ``pairs_per_seq / copies_per_class``
  classes, one of them the query's, ``copies_per_class`` times each; otherwise the context items
  are drawn independently from the class distribution (the query's class then rarely appears).
* ``n_classes`` and ``zipf_exponent``: how many classes training draws from and how skewed their
  frequencies are (class ``k`` has weight ``(k + 1) ** -zipf_exponent``).
* ``label_mapping_diversity``: 1 = one fixed class -> label map (in-weights learning possible);
  ``M > 1`` = each sequence uses one of ``M`` random maps; 0 or -1 = a fresh random map per
  sequence, so only the context can tell the answer.

Items are tokens (``item_mode='token'``: ``exemplars_per_class`` tokens per class) or, as in
Reddy 2024, vectors (``item_mode='vector'``): a class is a Gaussian mean ``mu`` in ``item_dim``
dimensions and an exemplar is ``(mu + eps * eta) / sqrt(1 + eps**2)`` with
``mu, eta ~ N(0, I / item_dim)`` and ``eps = within_class_noise``; the vectors go in
``item_vectors`` and the token at item positions is a placeholder.

Token ids: labels are ``0 .. n_labels - 1``; then the item tokens (class ``c``, exemplar ``e`` is
``n_labels + c * exemplars_per_class + e``) or the one placeholder. ``domain`` is the class id at
an item and at its label. Held-out classes (``n_heldout_classes``) are extra classes, after the
training ones, that training never shows; they make the ``icl_heldout`` probe.

Class -> label maps are a hash of (seed, map id, class), so any number of maps costs no memory and
a fresh map per sequence is just a fresh map id.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from data_mixers.base import DataConfigError, ProbeSet, StepSampler
from data_mixers.curriculum import check_curriculum, effective_knobs
from data_mixers.samplers.row_streams import row_draws

ITEM_MODES = ("token", "vector")
LOSS_ON = ("query", "all_labels")
TRAIN_STREAM = 0
PROBE_STREAMS = {"icl": 1, "iwl": 2, "icl_heldout": 3}
FIXED_MAP = 0
# Fresh per-sequence maps draw their id from 2**53 values: a repeat within a run is negligible.
FRESH_MAP_IDS = 2.0**53


def _mix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser: a bijective scramble of uint64 values (wrap-around arithmetic)."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _zipf_cdf(n: int, exponent: float) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper cumulative edges of classes ``0 .. n-1``, weighted ``(k+1)**-exponent``."""
    weights = np.arange(1, n + 1, dtype=np.float64) ** -exponent
    hi = np.cumsum(weights) / weights.sum()
    hi[-1] = 1.0
    lo = np.concatenate([[0.0], hi[:-1]])
    return lo, hi


def _sample_classes(
    u: np.ndarray, lo: np.ndarray, hi: np.ndarray, excluded: np.ndarray | None = None
) -> np.ndarray:
    """Inverse-CDF class draws for uniforms ``u`` [B, X], with each row's ``excluded`` classes
    [B, J] (distinct; None for none) removed and the rest renormalised.

    The uniform is scaled to the remaining mass and stepped over the excluded intervals in
    ascending order, which is exact sampling without those classes, with no rejection loop.
    """
    if excluded is None:
        # u < 1 = hi[-1]: the search always lands on a class.
        return np.searchsorted(hi, u, side="right")
    excluded = np.sort(excluded, axis=1)
    ex_lo, ex_hi = lo[excluded], hi[excluded]
    v = u * (1.0 - (ex_hi - ex_lo).sum(axis=1, keepdims=True))
    for j in range(excluded.shape[1]):
        v = np.where(v >= ex_lo[:, j : j + 1], v - ex_lo[:, j : j + 1] + ex_hi[:, j : j + 1], v)
    return np.minimum(np.searchsorted(hi, v, side="right"), len(hi) - 1)


class BurstyClasses(StepSampler):
    """Bursty few-shot classification sequences (see the module docstring for the knobs)."""

    def __init__(
        self,
        n_classes: int = 512,
        p_bursty: float = 1.0,
        item_mode: str = "token",
        n_labels: int = 8,
        pairs_per_seq: int = 8,
        copies_per_class: int = 2,
        label_mapping_diversity: int = 0,
        loss_on: str = "query",
        zipf_exponent: float = 0.0,
        n_heldout_classes: int = 0,
        exemplars_per_class: int = 1,
        within_class_noise: float = 0.1,
        item_dim: int = 63,
        probe_size: int = 512,
        seed: int = 0,
        curriculum=None,
    ) -> None:
        super().__init__(seed, curriculum)
        self.base_knobs = {
            "p_bursty": float(p_bursty),
            "n_classes": int(n_classes),
            "label_mapping_diversity": int(label_mapping_diversity),
            "zipf_exponent": float(zipf_exponent),
            "within_class_noise": float(within_class_noise),
        }
        self.item_mode, self.loss_on = item_mode, loss_on
        self.n_labels, self.pairs_per_seq = int(n_labels), int(pairs_per_seq)
        self.copies_per_class = int(copies_per_class)
        self.exemplars_per_class = int(exemplars_per_class)
        self.n_heldout_classes, self.probe_size = int(n_heldout_classes), int(probe_size)
        ranges = check_curriculum(curriculum, self.base_knobs, type(self).__name__)
        self._validate(ranges, int(item_dim))
        self.classes_per_context = self.pairs_per_seq // self.copies_per_class
        self.seq_len = 2 * self.pairs_per_seq + 1
        # The vocabulary and class means must cover every class count the curriculum reaches.
        self.max_train_classes = max((self.base_knobs["n_classes"], *ranges.get("n_classes", ())))
        n_universe = self.max_train_classes + self.n_heldout_classes
        if item_mode == "token":
            self.vocab_size = self.n_labels + n_universe * self.exemplars_per_class
        else:
            self.item_dim = int(item_dim)
            self.placeholder = self.n_labels
            self.vocab_size = self.n_labels + 1
            means_rng = np.random.default_rng([self.seed, 0x6D65616E])
            means = means_rng.standard_normal((n_universe, self.item_dim))
            # float32, the precision the item vectors are emitted in: gathers and sums stay half
            # the size.
            self.class_means = (means / np.sqrt(self.item_dim)).astype(np.float32)
        self._map_key = np.random.SeedSequence([self.seed, 0x6C6162]).generate_state(1, np.uint64)
        self._cdf_cache: dict[tuple[int, float], tuple[np.ndarray, np.ndarray]] = {}
        n, m = self.pairs_per_seq, self.classes_per_context
        widths = [("bursty", 1), ("query", 1), ("iid", n), ("others", m - 1), ("order", n),
                  ("exemplar", n + 1), ("map", 1), ("retry", max(m - 2, 0))]  # fmt: skip
        self._slices, offset = {}, 0
        for name, width in widths:
            self._slices[name] = slice(offset, offset + width)
            offset += width
        self._n_uniforms = offset

    def _validate(self, ranges: dict[str, tuple[float, float]], item_dim: int) -> None:
        """Gather every problem of the configuration and raise them together, each naming its key;
        scheduled knobs are checked at both ends of the curriculum's range."""
        problems = []

        def check_knob(knob: str, ok, requirement: str) -> None:
            if not ok(self.base_knobs[knob]):
                problems.append(f"data.{knob}={self.base_knobs[knob]} {requirement}")
            for value in ranges.get(knob, ()):
                if not ok(value):
                    problems.append(
                        f"data.{knob} reaches {value} under the curriculum; {requirement}"
                    )
                    break

        pairs, copies, heldout = self.pairs_per_seq, self.copies_per_class, self.n_heldout_classes
        if self.item_mode not in ITEM_MODES:
            problems.append(f"data.item_mode={self.item_mode!r} is not one of {list(ITEM_MODES)}")
        if self.loss_on not in LOSS_ON:
            problems.append(f"data.loss_on={self.loss_on!r} is not one of {list(LOSS_ON)}")
        if self.n_labels < 2:
            problems.append(f"data.n_labels={self.n_labels} must be at least 2")
        if pairs < 1:
            problems.append(f"data.pairs_per_seq={pairs} must be at least 1")
        if copies < 1 or pairs % copies:
            problems.append(
                f"data.copies_per_class={copies} must divide data.pairs_per_seq="
                f"{pairs}: a bursty context holds each of its classes that many times"
            )
        else:
            needed = max(2, pairs // copies)
            check_knob(
                "n_classes",
                lambda k: k >= needed,
                f"is smaller than the classes a context needs ({needed}: data.pairs_per_seq / "
                "data.copies_per_class distinct classes in a bursty context, and at least 2 so "
                "that an in-weights probe context can leave out the query's class)",
            )
            if heldout and heldout < pairs // copies:
                problems.append(
                    f"data.n_heldout_classes={heldout} is smaller than the classes a "
                    f"bursty context needs ({pairs // copies}); use 0 for none"
                )
        if heldout < 0:
            problems.append(f"data.n_heldout_classes={heldout} must be >= 0")
        check_knob("p_bursty", lambda p: 0.0 <= p <= 1.0, "must lie in [0, 1]")
        check_knob(
            "label_mapping_diversity",
            lambda m: m >= -1,
            "must be >= 1 (number of class -> label maps) or 0 / -1 (a fresh map per sequence)",
        )
        check_knob("zipf_exponent", lambda a: a >= 0.0, "must be >= 0 (0 = uniform classes)")
        check_knob("within_class_noise", lambda e: e >= 0.0, "must be >= 0")
        if self.exemplars_per_class < 1:
            problems.append(f"data.exemplars_per_class={self.exemplars_per_class} must be >= 1")
        if item_dim < 1:
            problems.append(f"data.item_dim={item_dim} must be at least 1")
        if self.probe_size < 1:
            problems.append(f"data.probe_size={self.probe_size} must be at least 1")
        if problems:
            raise DataConfigError("; ".join(problems))

    def knobs_at(self, step: int) -> dict[str, float]:
        """The configured knobs with the curriculum's overrides at ``step`` (integers rounded)."""
        return effective_knobs(self.base_knobs, self.curriculum, step, self.total_steps)

    def _cdf(self, n: int, exponent: float) -> tuple[np.ndarray, np.ndarray]:
        key = (n, exponent)
        if key not in self._cdf_cache:
            if len(self._cdf_cache) > 16:
                self._cdf_cache.clear()
            self._cdf_cache[key] = _zipf_cdf(n, exponent)
        return self._cdf_cache[key]

    def _draw(self, step: int, rows: range, stream: int, extra: int = 0):
        """Every random number rows ``rows`` of ``step`` need: uniforms [B, U + extra] (laid out
        by ``self._slices``) and, in vector mode, exemplar noise [B, N + 1, item_dim]; each row
        its own counter-based stream (``row_streams``), all rows drawn in one call."""
        n_noise = (self.pairs_per_seq + 1) * self.item_dim if self.item_mode == "vector" else 0
        u, noise = row_draws(
            self.seed, stream, step, rows.start, rows.stop, self._n_uniforms + extra, n_noise
        )
        if noise is not None:
            noise = noise.reshape(len(rows), self.pairs_per_seq + 1, self.item_dim)
        return u, noise

    def _bursty_context(self, u: np.ndarray, query: np.ndarray, lo: np.ndarray, hi: np.ndarray):
        """A bursty context: the query's class and ``classes_per_context - 1`` other distinct
        classes, ``copies_per_class`` times each, shuffled. Returns the chosen classes [B, m]
        (query's first) and, per context position, the index into them [B, N].

        The others are drawn all at once from the class distribution without the query's class;
        the rare row where one repeats an earlier pick (set A) redraws it, with a uniform of its
        own, without the query's class and A. That is exactly sampling without them:
        ``P(x) = p(x)/(1-p_q) + p_A/(1-p_q) * p(x)/(1-p_q-p_A) = p(x)/(1-p_q-p_A)`` for x outside
        A, and only the colliding rows pay for the exclusion loop."""
        m = self.classes_per_context
        chosen = np.empty((len(u), m), dtype=np.int64)
        chosen[:, 0] = query
        chosen[:, 1:] = _sample_classes(u[:, self._slices["others"]], lo, hi, query[:, None])
        retry = u[:, self._slices["retry"]]
        for j in range(2, m):
            hit = np.flatnonzero(np.any(chosen[:, 1:j] == chosen[:, j : j + 1], axis=1))
            if len(hit):
                redrawn = _sample_classes(retry[hit, j - 2 : j - 1], lo, hi, chosen[hit, :j])
                chosen[hit, j] = redrawn[:, 0]
        slot = np.repeat(np.arange(self.classes_per_context), self.copies_per_class)
        order = np.argsort(u[:, self._slices["order"]], axis=1)
        return chosen, slot[order]

    def _labels(self, map_ids: np.ndarray, classes: np.ndarray) -> np.ndarray:
        """The label of each class [B, X] under each row's class -> label map [B]."""
        row_key = _mix64(map_ids.astype(np.uint64) ^ self._map_key)
        h = _mix64(row_key[:, None] + classes.astype(np.uint64))
        return (h % np.uint64(self.n_labels)).astype(np.int64)

    def _encode(self, items, labels, u, noise, within_class_noise) -> dict[str, np.ndarray]:
        """Lay out items [B, N+1] (the query last) and their labels [B, N+1] as a batch."""
        n, b = self.pairs_per_seq, len(items)
        input_ids = np.empty((b, self.seq_len), dtype=np.int64)
        if self.item_mode == "token":
            exemplar = (u[:, self._slices["exemplar"]] * self.exemplars_per_class).astype(np.int64)
            input_ids[:, 0::2] = self.n_labels + items * self.exemplars_per_class + exemplar
        else:
            input_ids[:, 0::2] = self.placeholder
        input_ids[:, 1::2] = labels[:, :n]
        targets = np.empty_like(input_ids)
        targets[:, :-1] = input_ids[:, 1:]
        targets[:, -1] = labels[:, n]
        loss_mask = np.zeros(input_ids.shape, dtype=np.float32)
        loss_mask[:, -1 if self.loss_on == "query" else slice(0, None, 2)] = 1.0
        domain = np.empty_like(input_ids)
        domain[:, 0::2] = items
        domain[:, 1::2] = items[:, :n]
        batch = {
            "input_ids": input_ids,
            "targets": targets,
            "loss_mask": loss_mask,
            "domain": domain,
        }
        if self.item_mode == "vector":
            eps = within_class_noise
            vectors = np.zeros((b, self.seq_len, self.item_dim), dtype=np.float32)
            exemplars = vectors[:, 0::2]
            np.multiply(noise, eps / math.sqrt(self.item_dim), out=exemplars)
            exemplars += self.class_means[items]
            exemplars *= 1.0 / math.sqrt(1.0 + eps**2)
            item_mask = np.zeros(input_ids.shape, dtype=bool)
            item_mask[:, 0::2] = True
            batch |= {"item_vectors": vectors, "item_mask": item_mask}
        return batch

    def rows(self, step: int, start: int, stop: int) -> dict[str, np.ndarray]:
        knobs = self.knobs_at(step)
        u, noise = self._draw(step, range(start, stop), TRAIN_STREAM)
        lo, hi = self._cdf(knobs["n_classes"], knobs["zipf_exponent"])
        n = self.pairs_per_seq
        # The query's and the iid context's uniforms are adjacent: one search draws them all.
        start_q, stop_iid = self._slices["query"].start, self._slices["iid"].stop
        drawn = _sample_classes(u[:, start_q:stop_iid], lo, hi)
        query, items = drawn[:, 0], np.empty((len(u), n + 1), dtype=np.int64)
        items[:, n] = query
        is_bursty = u[:, self._slices["bursty"]] < knobs["p_bursty"]
        # Rows take the bursty or the iid context; a kind no row takes is not built.
        if is_bursty.any():
            chosen, slot = self._bursty_context(u, query, lo, hi)
            bursty_context = np.take_along_axis(chosen, slot, axis=1)
            items[:, :n] = np.where(is_bursty, bursty_context, drawn[:, 1:])
        else:
            items[:, :n] = drawn[:, 1:]
        n_maps = knobs["label_mapping_diversity"]
        map_u = u[:, self._slices["map"]][:, 0]
        map_ids = np.floor(map_u * (n_maps if n_maps >= 1 else FRESH_MAP_IDS))
        labels = self._labels(map_ids, items)
        return self._encode(items, labels, u, noise, knobs["within_class_noise"])

    def _icl_probe(self, name: str, n_classes: int, offset: int, exponent: float) -> ProbeSet:
        """Bursty contexts (query's class present) whose classes get labels drawn afresh per row,
        distinct while there are enough labels: only reading the context answers. Under a fixed
        map the query's new label also differs from its trained one, so in-weights recall scores
        zero rather than chance."""
        u, noise = self._draw(0, range(self.probe_size), PROBE_STREAMS[name], extra=self.n_labels)
        lo, hi = self._cdf(n_classes, exponent)
        query = _sample_classes(u[:, self._slices["query"]], lo, hi)[:, 0]
        chosen, slot = self._bursty_context(u, query, lo, hi)
        chosen += offset
        label_keys = u[:, self._n_uniforms :].copy()
        avoid_fixed = offset == 0 and self.base_knobs["label_mapping_diversity"] == 1
        if avoid_fixed:
            fixed = self._labels(np.full(len(u), FIXED_MAP), chosen[:, :1])
            np.put_along_axis(label_keys, fixed, 2.0, axis=1)
        permutation = np.argsort(label_keys, axis=1)
        class_labels = permutation[:, np.arange(self.classes_per_context) % self.n_labels]
        items = np.concatenate([np.take_along_axis(chosen, slot, 1), chosen[:, :1]], axis=1)
        labels = np.concatenate([np.take_along_axis(class_labels, slot, 1), class_labels[:, :1]], 1)
        batch = self._encode(items, labels, u, noise, self.base_knobs["within_class_noise"])
        meta = {
            "query_in_context": True,
            "labels": "reassigned per row",
            "differs_from_trained_label": avoid_fixed,
            # Guessing a label: 1 / n_labels; copying some label of the context already scores
            # 1 / (distinct labels in it), the plateau before in-context learning.
            "chance": self._chance(plateau=1 / min(self.classes_per_context, self.n_labels)),
        }
        return ProbeSet(name, batch, "answer", np.full(len(u), self.seq_len - 1), meta)

    def _iwl_probe(self) -> ProbeSet:
        """Contexts without the query's class, all labels from the fixed map: only the weights
        answer. Meaningful when ``label_mapping_diversity == 1``; with ``M`` maps the best
        achievable accuracy falls towards chance, and with a fresh map per sequence it is chance."""
        u, noise = self._draw(0, range(self.probe_size), PROBE_STREAMS["iwl"])
        lo, hi = self._cdf(self.base_knobs["n_classes"], self.base_knobs["zipf_exponent"])
        query = _sample_classes(u[:, self._slices["query"]], lo, hi)[:, 0]
        context = _sample_classes(u[:, self._slices["iid"]], lo, hi, query[:, None])
        items = np.concatenate([context, query[:, None]], axis=1)
        labels = self._labels(np.full(len(u), FIXED_MAP), items)
        batch = self._encode(items, labels, u, noise, self.base_knobs["within_class_noise"])
        meta = {
            "query_in_context": False,
            "meaningful": self.base_knobs["label_mapping_diversity"] == 1,
            "chance": self._chance(),
        }
        return ProbeSet("iwl", batch, "answer", np.full(len(u), self.seq_len - 1), meta)

    def _chance(self, **acc_extra: float) -> dict[str, dict[str, float]]:
        """ProbeSet.meta's ``chance``: the accuracy and answer log-probability of a uniform guess
        among the labels (summary.json records it beside the final values)."""
        return {"acc": {"value": 1 / self.n_labels, **acc_extra},
                "logprob": {"value": -math.log(self.n_labels)}}

    def build_probe_sets(self) -> list[ProbeSet]:
        """``icl`` (answer only in the context), ``iwl`` (answer only in the weights) and, with
        held-out classes, ``icl_heldout`` (in-context learning on classes training never showed).
        Built from the configured knobs, not the curriculum's, so they stay fixed over a run."""
        base = self.base_knobs
        probes = [
            self._icl_probe("icl", base["n_classes"], 0, base["zipf_exponent"]),
            self._iwl_probe(),
        ]
        if self.n_heldout_classes:
            probes.append(
                self._icl_probe("icl_heldout", self.n_heldout_classes, self.max_train_classes, 0.0)
            )
        return probes

    def batch_stats(self, batch: Mapping[str, np.ndarray]) -> dict[str, float]:
        """What a batch really holds, measured from ``domain`` and ``targets``:

        ``burstiness``           fraction of contexts holding the query's class
        ``classes_per_context``  mean distinct classes among a context's items
        ``distinct_classes``     distinct classes in the batch
        ``label_conflict_rate``  among pairs of rows sharing a class, the fraction giving it
                                 different labels: 0 under one fixed map, about
                                 ``1 - 1/n_labels`` with a fresh map per sequence (absent when
                                 no class occurs in two rows)
        """
        n = self.pairs_per_seq
        items = batch["domain"][:, 0::2]
        labels = batch["targets"][:, 0::2]
        context, query = items[:, :n], items[:, n]
        sorted_context = np.sort(context, axis=1)
        distinct_per_context = 1 + np.count_nonzero(np.diff(sorted_context, axis=1), axis=1)
        stats = {
            "burstiness": float(np.mean(np.any(context == query[:, None], axis=1))),
            "classes_per_context": float(np.mean(distinct_per_context)),
            "distinct_classes": float(len(np.unique(items))),
        }
        # One code per distinct (class, label, row): counting codes per class and per (class, label)
        # gives how many rows show a class, and how many show it with each label.
        n_rows = len(items)
        rows = np.arange(n_rows)[:, None]
        codes = np.unique((items * self.n_labels + labels) * n_rows + rows)
        _, rows_per_class = np.unique(codes // (self.n_labels * n_rows), return_counts=True)
        _, rows_per_pair = np.unique(codes // n_rows, return_counts=True)
        row_pairs = np.sum(rows_per_class * (rows_per_class - 1))
        if row_pairs:
            agreeing = np.sum(rows_per_pair * (rows_per_pair - 1))
            stats["label_conflict_rate"] = float(1.0 - agreeing / row_pairs)
        return stats

    def describe(self) -> dict[str, int | str]:
        return {
            "item_mode": self.item_mode,
            "classes": self.base_knobs["n_classes"],
            "heldout_classes": self.n_heldout_classes,
            "classes_per_context": self.classes_per_context,
            "vocab_size": self.vocab_size,
        }
