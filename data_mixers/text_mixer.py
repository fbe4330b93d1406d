"""The text mixer: turns token stores into training windows, one data axis per knob.

A row is a window of ``seq_len + 1`` tokens (inputs and shifted targets) filled with *pieces*: a
domain is drawn from the mixture weights, a document uniformly from that domain's pool, and a
fragment of it; each piece is followed by ``eos``. Everything a row contains is a function of
``row_rng(seed, step, row)``, so resume is exact and ranks are disjoint by construction.

Knobs (constructor arguments = ``data.*`` config keys, each with its type, range and help in
``python -m trainer.schema``; a curriculum may override any of them per step, see
:meth:`TextMixer.knobs_at`):

diversity
    ``domains`` or ``n_domains_active``; mixture weights over them: ``domain_weights``,
    ``zipf_exponent`` or, by default, each domain's size in tokens, reshaped by ``temperature``.
    ``focus_domain`` gets exactly ``focus_share`` of the draws, the others split the rest as
    above. A curriculum moving ``focus_share`` switches what the mixer emits: the
    knowledge-extraction preset pretrains on descriptions (share 0 for the ``qa`` domain), then
    fine-tunes on Q/A (share 1), or mixes both throughout.
fragmentation
    ``fragment_length`` (random spans instead of whole documents); ``docs_per_window`` (k equal
    slots per window, one piece each, the rest of a slot padded with loss mask 0, instead of
    pieces packed back to back); ``weights_count``: ``"documents"`` draws the domain of every piece
    (mix, then pack: rows join domains), ``"rows"`` one per row (pack, then mix).
repetition
    ``unique_tokens``: a pool of that many tokens (a prefix of each active domain's documents, in
    proportion to its size): passes over it = budget / pool (:meth:`TextMixer.pool_epochs`).

Besides the contract keys a batch carries ``doc_id`` (global document index per position, -1 on
separators and padding) and ``doc_pos`` (the position inside that document), from which
:meth:`TextMixer.batch_stats` measures what was really emitted.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from data_mixers import text_stats
from data_mixers.base import DataConfigError, ProbeSet, StepSampler, row_rng
from data_mixers.curriculum import check_curriculum, effective_knobs
from data_mixers.diversity import term_bridge_documents
from data_mixers.sources.hf import HFSource
from data_mixers.sources.world import WorldSource
from data_mixers.text_plan import Plan
from data_mixers.text_probes import answer_probe, heldout_probe
from data_mixers.token_store import TextSource, TokenStore, open_or_build
from data_mixers.tokenizer import build_tokenizer, tokenizer_vocab_size

SOURCES = {"world": WorldSource, "hf": HFSource}
INTEGER_KNOBS = ("n_domains_active", "fragment_length", "docs_per_window", "unique_tokens")
WEIGHTS_COUNT = ("documents", "rows")
PLAN_CACHE_SIZE = 32


def make_source(spec: Any, seed: int, key: str = "data.source") -> TextSource:
    """A text source from ``{kind: world|hf, **settings}`` (or an already built source object).

    A world without its own ``seed`` takes the mixer's, so one seed fixes the whole run.
    """
    if not isinstance(spec, Mapping):
        return spec
    settings = dict(spec)
    kind = settings.pop("kind", None)
    if kind not in SOURCES:
        raise DataConfigError(f"{key}.kind={kind!r} is not one of {sorted(SOURCES)}")
    cls = SOURCES[kind]
    accepted = set(inspect.signature(cls).parameters)
    unknown = sorted(set(settings) - accepted)
    if unknown:
        raise DataConfigError(f"{key}.{unknown[0]} is not a setting of the {kind} source "
                              f"(settings: {sorted(accepted)})")
    if "seed" in accepted:
        settings.setdefault("seed", seed)
    return cls(**settings)


class TextMixer(StepSampler):
    """A :class:`StepSampler` over the token stores of one or several text sources."""

    def __init__(self, source: Any, seq_len: int = 256, tokenizer: Mapping[str, Any] | None = None,
                 cache_dir: str | os.PathLike | None = None, domains: Sequence[Any] | None = None,
                 n_domains_active: int | None = None,
                 domain_weights: Sequence[float] | None = None, temperature: float = 1.0,
                 zipf_exponent: float | None = None, fragment_length: int | None = None,
                 docs_per_window: int | None = None, weights_count: str = "documents",
                 unique_tokens: int | None = None, heldout_docs_per_domain: int = 4,
                 focus_domain: Any = None, focus_share: float | None = None,
                 verify: bool = False, progress: Any = True,
                 seed: int = 0, curriculum: Any = None) -> None:
        super().__init__(seed, curriculum)
        if int(seq_len) < 2:
            raise DataConfigError(f"data.seq_len={seq_len} must be >= 2")
        if int(heldout_docs_per_domain) < 0:
            raise DataConfigError(
                f"data.heldout_docs_per_domain={heldout_docs_per_domain} must be >= 0")
        self.heldout_docs_per_domain = int(heldout_docs_per_domain)
        if cache_dir is None:
            raise DataConfigError("data.cache_dir must be set: the token store is cached there")
        self.seq_len = int(seq_len)
        self.cache_dir = os.fspath(cache_dir)
        # verify: re-hash an existing token store's files (otherwise size + mtime decide).
        # progress: truthy = a bar on a terminal while a store or a BPE builds; falsy = none.
        self.verify, self.progress = bool(verify), None if progress else False
        specs = source if isinstance(source, Sequence) and not isinstance(source, str) else [source]
        if not specs:
            raise DataConfigError("data.source is empty")
        self.sources = [make_source(s, self.seed, "data.source" if len(specs) == 1
                                    else f"data.source[{i}]") for i, s in enumerate(specs)]
        self.tokenizer_spec = dict(tokenizer or {"kind": "byte"})
        unknown = sorted(set(self.tokenizer_spec) - {"kind", "vocab_size"})
        if unknown:
            raise DataConfigError(f"data.tokenizer.{unknown[0]} is not a tokenizer setting "
                                  "(settings: kind, vocab_size)")
        self.vocab_size = tokenizer_vocab_size(**self.tokenizer_spec)
        self.base_knobs = {
            "domains": None if domains is None else list(domains),
            "n_domains_active": n_domains_active,
            "domain_weights": None if domain_weights is None else [float(w) for w in domain_weights],
            "temperature": temperature, "zipf_exponent": zipf_exponent,
            "fragment_length": fragment_length, "docs_per_window": docs_per_window,
            "weights_count": weights_count, "unique_tokens": unique_tokens,
            "focus_domain": focus_domain, "focus_share": focus_share,
        }
        self._check_scalar_knobs(self.base_knobs, "data")
        self._scheduled = check_curriculum(curriculum, self.base_knobs, "the text mixer")
        for knob, ends in self._scheduled.items():
            for value in ends:
                self._check_scalar_knobs({**self.base_knobs, knob: value}, "curriculum")
        self._opened = False
        self._plans: dict[Any, Plan] = {}

    # -- building and opening the stores -----------------------------------------------------

    def prepare(self) -> None:
        """Train/load the tokenizer and build/verify every token store (once, before training);
        domain-dependent settings are checked here, once the domains are known."""
        self._open()

    def __getstate__(self) -> dict[str, Any]:
        """Pickle (DataLoader workers) without the memmaps; a worker reopens the stores."""
        state = {k: v for k, v in self.__dict__.items() if k != "_stores"}
        return {**state, "_opened": False, "_plans": {}}

    def _open(self) -> None:
        if self._opened:
            return
        self.tokenizer = build_tokenizer(**self.tokenizer_spec, sources=self.sources,
                                         cache_dir=self.cache_dir, progress=self.progress)
        self._stores = [open_or_build(s, self.tokenizer, self.cache_dir, verify=self.verify,
                                      progress=self.progress) for s in self.sources]
        self._index_documents(self._stores)
        self._opened = True
        self._plan(self.base_knobs, "data")

    def _index_documents(self, stores: list[TokenStore]) -> None:
        """Global document arrays over all stores: domain ids and fact ids are offset per store."""
        prefix = len(stores) > 1
        self.domain_names, self._domain_offset = [], []
        starts, lengths, store_of, domains, bridges, term_bridges = [], [], [], [], [], []
        fact_offsets, fact_ids, fact_spans = [np.zeros(1, dtype=np.int64)], [], []
        n_facts = 0
        for i, store in enumerate(stores):
            self._domain_offset.append(len(self.domain_names))
            self.domain_names += [f"{self.sources[i].kind}:{n}" if prefix else n
                                  for n in store.domain_names]
            starts.append(store.doc_offsets[:-1])
            lengths.append(store.doc_lengths)
            store_of.append(np.full(store.n_documents, i, dtype=np.int32))
            domains.append(store.doc_domain + self._domain_offset[i])
            bridges.append(store.doc_bridge)
            term_bridges.append(term_bridge_documents(store.tokens, store.doc_offsets,
                                                      store.doc_domain))
            fact_offsets.append(store.fact_offsets[1:] + fact_offsets[-1][-1])
            fact_ids.append(store.fact_ids.astype(np.int64) + n_facts)
            fact_spans.append(store.fact_spans)
            n_facts += store.n_facts
        self.doc_start = np.concatenate(starts)
        self.doc_len = np.concatenate(lengths)
        self.doc_store = np.concatenate(store_of)
        self.doc_domain = np.concatenate(domains).astype(np.int64)
        self.doc_bridge = np.concatenate(bridges)
        self.doc_term_bridge = np.concatenate(term_bridges)
        self.facts = text_stats.DocumentFacts(
            self.doc_bridge, self.doc_term_bridge, np.concatenate(fact_offsets),
            np.concatenate(fact_ids), np.concatenate(fact_spans), n_facts)
        n_dom = len(self.domain_names)
        order = np.argsort(self.doc_domain, kind="stable")
        counts = np.bincount(self.doc_domain, minlength=n_dom)
        bounds = np.concatenate([[0], np.cumsum(counts)])
        self._domain_docs = [order[bounds[d]:bounds[d + 1]] for d in range(n_dom)]
        # The last documents of each domain (stores are shuffled) are never trained on: they are
        # the held-out loss probes; a domain too small to spare them is refused (it would lose
        # its probe/heldout/<domain> series without a word).
        h = self.heldout_docs_per_domain
        small = [f"{self.domain_names[d]} ({len(docs)} documents)"
                 for d, docs in enumerate(self._domain_docs) if h and len(docs) <= h]
        if small:
            raise DataConfigError(f"data.heldout_docs_per_domain={h} leaves no document to train "
                                  f"on in {', '.join(small[:4])}: hold out at most "
                                  f"{min(map(len, self._domain_docs)) - 1}, or 0 for none")
        self._heldout_docs = [docs[-h:] if h else docs[:0] for docs in self._domain_docs]
        self._domain_docs = [docs[:len(docs) - len(held)]
                             for docs, held in zip(self._domain_docs, self._heldout_docs)]
        self._domain_tokens = np.array([self.doc_len[d].sum() for d in self._domain_docs],
                                       dtype=np.float64)

    # -- knobs -------------------------------------------------------------------------------

    def knobs_at(self, step: int) -> dict[str, float]:
        """The numeric knobs in effect at ``step``: the configured ones, overridden by the
        curriculum's settings when a curriculum is set (unset knobs, lists and names are left
        out: this is what gets logged as ``curriculum/<knob>``)."""
        knobs = self.effective_knobs(step)
        return {k: float(v) for k, v in knobs.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool)}

    def effective_knobs(self, step: int) -> dict[str, Any]:
        """All knobs in effect at ``step`` (what :meth:`rows` uses); scheduled integer knobs
        are rounded."""
        if not self._scheduled:
            return self.base_knobs
        knobs = effective_knobs(self.base_knobs, self.curriculum, step, self.total_steps)
        for knob in INTEGER_KNOBS:
            if knob in self._scheduled and knobs[knob] is not None:
                knobs[knob] = int(round(knobs[knob]))
        return knobs

    def bind(self, total_steps: int) -> None:
        """Check the domain-dependent settings the curriculum reaches (its extremes) now, not at
        the step they apply."""
        super().bind(total_steps)
        if self._opened:
            for knob, ends in self._scheduled.items():
                for value in ends:
                    self._plan({**self.base_knobs, knob: value}, "curriculum")

    def _check_scalar_knobs(self, knobs: Mapping[str, Any], where: str) -> None:
        """Checks that need no store; ``where`` prefixes the key in messages."""
        fl, k = knobs["fragment_length"], knobs["docs_per_window"]
        if fl is not None and not 0 <= int(fl) <= self.seq_len:
            raise DataConfigError(f"{where}.fragment_length={fl} must lie in [0, seq_len="
                                  f"{self.seq_len}] (0 or null: whole documents)")
        if k is not None and not 1 <= int(k) <= (self.seq_len + 1) // 2:
            raise DataConfigError(f"{where}.docs_per_window={k} must lie in [1, "
                                  f"{(self.seq_len + 1) // 2}] (each slot holds a token and eos)")
        if knobs["weights_count"] not in WEIGHTS_COUNT:
            raise DataConfigError(f"{where}.weights_count={knobs['weights_count']!r} is not one "
                                  f"of {list(WEIGHTS_COUNT)}")
        if knobs["unique_tokens"] is not None and int(knobs["unique_tokens"]) < 1:
            raise DataConfigError(f"{where}.unique_tokens={knobs['unique_tokens']} must be >= 1")
        if not float(knobs["temperature"]) > 0:
            raise DataConfigError(f"{where}.temperature={knobs['temperature']} must be > 0")
        if knobs["domain_weights"] is not None and knobs["zipf_exponent"] is not None:
            raise DataConfigError(f"{where}.domain_weights and {where}.zipf_exponent are both "
                                  "set: choose one")
        if knobs["domains"] is not None and knobs["n_domains_active"] is not None:
            raise DataConfigError(f"{where}.domains and {where}.n_domains_active are both set: "
                                  "choose one")
        share = knobs["focus_share"]
        if share is not None and not 0.0 <= float(share) <= 1.0:
            raise DataConfigError(f"{where}.focus_share={share} must lie in [0, 1]")
        if share is not None and knobs["focus_domain"] is None:
            raise DataConfigError(f"{where}.focus_share={share} needs data.focus_domain (the "
                                  "domain that gets this share)")

    def _active_domains(self, knobs: Mapping[str, Any], where: str) -> np.ndarray:
        n_dom = len(self.domain_names)
        active = np.ones(n_dom, dtype=bool)
        if knobs["n_domains_active"] is not None:
            n = int(knobs["n_domains_active"])
            if not 1 <= n <= n_dom:
                raise DataConfigError(f"{where}.n_domains_active={n} must lie in [1, {n_dom}]")
            active[n:] = False
        if knobs["domains"] is not None:
            active[:] = False
            for d in knobs["domains"]:
                if isinstance(d, str) and d in self.domain_names:
                    active[self.domain_names.index(d)] = True
                elif isinstance(d, int) and 0 <= d < n_dom:
                    active[d] = True
                else:
                    raise DataConfigError(f"{where}.domains: {d!r} is not a domain "
                                          f"(domains: {self.domain_names})")
        return active

    def _domain_probabilities(self, knobs: Mapping[str, Any], where: str) -> np.ndarray:
        n_dom = len(self.domain_names)
        active = self._active_domains(knobs, where)
        if knobs["domain_weights"] is not None:
            base = np.asarray(knobs["domain_weights"], dtype=np.float64)
            if base.shape != (n_dom,):
                raise DataConfigError(f"{where}.domain_weights has {base.size} entries; there are "
                                      f"{n_dom} domains {self.domain_names}")
            if (base < 0).any() or not np.isfinite(base).all():
                raise DataConfigError(f"{where}.domain_weights={base.tolist()} must be finite "
                                      "and >= 0")
        elif knobs["zipf_exponent"] is not None:
            ranks = np.cumsum(active)
            base = np.where(active, 1.0 / np.maximum(ranks, 1) ** float(knobs["zipf_exponent"]), 0)
        else:
            base = self._domain_tokens.copy()
        weights = np.where(active, base, 0.0) ** (1.0 / float(knobs["temperature"]))
        if knobs["focus_share"] is not None:
            return self._focused(weights, knobs, where)
        if not weights.sum() > 0:
            raise DataConfigError(f"{where}.domain_weights: the active domains' weights sum to "
                                  "zero")
        return weights / weights.sum()

    def _focused(self, weights: np.ndarray, knobs: Mapping[str, Any], where: str) -> np.ndarray:
        """``focus_share`` of the draws to ``focus_domain``, the rest to the others by weight."""
        name, share = knobs["focus_domain"], float(knobs["focus_share"])
        if isinstance(name, str) and name in self.domain_names:
            focus = self.domain_names.index(name)
        elif isinstance(name, int) and 0 <= name < len(self.domain_names):
            focus = name
        else:
            raise DataConfigError(f"data.focus_domain={name!r} is not a domain "
                                  f"(domains: {self.domain_names})")
        others = weights.copy()
        others[focus] = 0.0
        if share < 1.0 and not others.sum() > 0:
            raise DataConfigError(f"{where}.focus_share={share}: no other active domain has "
                                  "weight to take the rest")
        probs = others / others.sum() * (1.0 - share) if others.sum() > 0 else others
        probs[focus] = share
        return probs

    def _plan(self, knobs: Mapping[str, Any], where: str = "data") -> Plan:
        """Everything :meth:`rows` derives from the knobs, cached per distinct knob setting (a
        bounded cache: a continuous ramp makes a new setting every step)."""
        key = tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in sorted(knobs.items()))
        plan = self._plans.get(key)
        if plan is None:
            self._open()
            self._check_scalar_knobs(knobs, where)
            plan = Plan(knobs, self._domain_probabilities(knobs, where), self.seq_len, self.doc_len,
                        self._domain_docs, self._domain_tokens)
            if len(self._plans) >= PLAN_CACHE_SIZE:
                self._plans.pop(next(iter(self._plans)))
            self._plans[key] = plan
        return plan

    # -- sampling ----------------------------------------------------------------------------

    def rows(self, step: int, start: int, stop: int) -> dict[str, np.ndarray]:
        plan = self._plan(self.effective_knobs(step), "curriculum" if self._scheduled else "data")
        n_rows, width, n_pieces = stop - start, self.seq_len + 1, plan.n_pieces
        draws = np.stack([row_rng(self.seed, step, r).random((3, n_pieces))
                          for r in range(start, stop)])
        domain_draw = draws[:, 0, :1] if plan.rows_mode else draws[:, 0]
        domain = np.searchsorted(plan.cdf, domain_draw, side="right")
        domain = np.broadcast_to(np.minimum(domain, len(plan.cdf) - 1), (n_rows, n_pieces))
        pick = plan.pool_offset[domain] + (draws[:, 1] * plan.pool_count[domain]).astype(np.int64)
        doc = plan.pool_docs[pick]
        length = self.doc_len[doc]
        frag = length if plan.fragment_length is None else np.minimum(length, plan.fragment_length)
        if plan.slot is not None:
            frag = np.minimum(frag, plan.slot - 1)
            offset = np.broadcast_to(np.arange(n_pieces) * plan.slot, (n_rows, n_pieces))
        else:
            offset = np.cumsum(frag + 1, axis=1) - (frag + 1)
        begin = (draws[:, 2] * (length - frag + 1)).astype(np.int64)

        kept = offset < width
        row = np.broadcast_to(np.arange(n_rows)[:, None], (n_rows, n_pieces))[kept]
        doc, frag, offset, begin = doc[kept], frag[kept], offset[kept], begin[kept]
        n_content = np.minimum(frag, width - offset)
        piece = np.repeat(np.arange(len(doc)), n_content)
        within = np.arange(piece.size) - np.repeat(np.cumsum(n_content) - n_content, n_content)
        flat = (row * width + offset)[piece] + within
        source_pos = (self.doc_start[doc] + begin)[piece] + within

        tokens = np.full(n_rows * width, self.tokenizer.eos_id, dtype=np.int64)
        tokens[flat] = self._gather(self.doc_store[doc][piece], source_pos)
        doc_id = np.full(n_rows * width, -1, dtype=np.int64)
        doc_id[flat] = doc[piece]
        doc_pos = np.full(n_rows * width, -1, dtype=np.int64)
        doc_pos[flat] = begin[piece] + within
        real = np.zeros(n_rows * width, dtype=bool)
        real[flat] = True
        ends = offset + frag < width
        real[(row * width + offset + frag)[ends]] = True

        tokens, doc_id = tokens.reshape(n_rows, width), doc_id.reshape(n_rows, width)[:, :-1]
        real = real.reshape(n_rows, width)
        return {
            "input_ids": tokens[:, :-1], "targets": tokens[:, 1:],
            "loss_mask": (real[:, :-1] & real[:, 1:]).astype(np.float32),
            "domain": np.where(doc_id >= 0, self.doc_domain[doc_id], -1),
            "doc_id": doc_id, "doc_pos": doc_pos.reshape(n_rows, width)[:, :-1],
        }

    def _gather(self, store: np.ndarray, pos: np.ndarray) -> np.ndarray:
        if len(self._stores) == 1:
            return self._stores[0].tokens[pos]
        out = np.empty(pos.size, dtype=np.int64)
        for i, s in enumerate(self._stores):
            mask = store == i
            out[mask] = s.tokens[pos[mask]]
        return out

    # -- measurement -------------------------------------------------------------------------

    def batch_stats(self, batch: Mapping[str, np.ndarray]) -> dict[str, float]:
        """What the batch really contains: see :func:`data_mixers.text_stats.batch_stats`."""
        self._open()
        return text_stats.batch_stats(self.facts, batch)

    def pool_epochs(self, token_budget: int, step: int = 0) -> float:
        """How many times, on average, training sees each token of the pool at ``step`` (before
        :meth:`bind`, a schedule is read at its start)."""
        knobs = (self.effective_knobs(step) if self.total_steps is not None
                 else effective_knobs(self.base_knobs, self.curriculum, 0, 1))
        return float(token_budget) / self._plan(knobs).pool_tokens

    def describe(self) -> dict[str, Any]:
        self._open()
        plan = self._plan(self.base_knobs)
        return {"documents": int(len(self.doc_len)), "tokens": int(self.doc_len.sum()),
                "domains": list(self.domain_names), "facts": int(self.facts.n_facts),
                "pool_tokens": int(plan.pool_tokens), "pool_documents": int(plan.pool_docs.size),
                "term_bridge_documents": float(self.doc_term_bridge.mean()),
                "vocab_size": int(self.vocab_size), "tokenizer": self.tokenizer.config()}

    # -- probes ------------------------------------------------------------------------------

    def build_probe_sets(self) -> list[ProbeSet]:
        """The sources' held-out questions as ``answer`` probes (``answer_positions`` is the
        position whose target is the first token of the answer; only it has loss mask 1), and
        per domain a ``loss`` probe ``heldout/<domain>`` on documents training never sees."""
        self._open()
        out = []
        for i, source in enumerate(self.sources):
            names = self._stores[i].domain_names
            for name, questions in source.probe_questions().items():
                out.append(answer_probe(name, questions, names, self._domain_offset[i],
                                        self.tokenizer, self.seq_len))
        for d, docs in enumerate(self._heldout_docs):
            if len(docs):
                lengths = np.minimum(self.doc_len[docs], self.seq_len + 1)  # each document's head
                heads = [self._gather(self.doc_store[[doc] * int(n)], self.doc_start[doc] + np.arange(n))
                         for doc, n in zip(docs, lengths)]
                out.append(heldout_probe(self.domain_names[d], d, docs, heads, self.seq_len,
                                         self.tokenizer.eos_id))
        return out
