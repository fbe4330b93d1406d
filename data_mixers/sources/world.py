"""A synthetic knowledge world: entities with attributes and relations, spread over domains.

Each of ``n_domains`` domains holds ``entities_per_domain`` entities with made-up names (each
domain draws them from its own syllables, and its attribute values from its own subset of each
value list, so domains differ in surface statistics). Every entity has one value per attribute
and ``relations_per_entity`` relations (friend, rival, ...) to other entities: to one of its own
domain, or -- with probability ``bridge_density`` -- to one of another domain (a *bridge*).

Every attribute value and every relation is a countable *fact* with a fixed id, so the mixer can
report which facts an emitted batch actually contains.

Documents, each rendered through a pool of ``template_pool_size`` paraphrase templates per fact
kind (a diversity knob: few templates = rote phrasing, many = paraphrase):

* descriptions: every fact of one entity, in shuffled order;
* stories: an entity meets one of its relations; a bridge relation makes a *bridge document*;
* question-answer pages for the *training* entities: one of single facts ("Q: What is the color
  of Zorbel? A: red"), and one per relation of two-hop questions ("Q: What is the color of the
  friend of Zorbel? A: blue"; a bridge document when the friend lives in another domain).

Probes are the same questions about the held-out entities (``holdout_fraction``), whose facts the
training text states only in declarative form: answering needs the knowledge stored, not the Q/A
pairs memorized. ``world_two_hop`` asks only across bridges (the answer lives in another domain).
Every answer is one word and the probe scores its first token. With a BPE tokenizer that is
the whole word (" red"); with bytes it is the first letter, which several values share, so
answer accuracy is only meaningful with ``tokenizer.kind: bpe``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from data_mixers.base import DataConfigError
from data_mixers.token_store import Document, ProbeQuestion

ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "color": ("red", "blue", "green", "yellow", "black", "white", "purple", "orange", "gray",
              "brown", "pink", "gold"),
    "size": ("tiny", "small", "large", "huge", "tall", "short", "wide", "narrow", "round", "thin"),
    "home": ("Paris", "Cairo", "Lima", "Oslo", "Tokyo", "Rome", "Delhi", "Quito", "Accra",
             "Hanoi", "Perth", "Riga"),
    "food": ("bread", "rice", "fish", "apples", "cheese", "soup", "beans", "honey", "plums",
             "corn"),
    "job": ("baker", "farmer", "sailor", "painter", "doctor", "miner", "singer", "tailor",
            "hunter", "judge"),
    "pet": ("cat", "dog", "owl", "horse", "goat", "crow", "frog", "fox", "bee", "crab"),
}
RELATIONS = ("friend", "rival", "mentor", "neighbor", "partner", "cousin")

ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "gl",
          "kr", "pl", "st", "th", "sh", "ch", "tr")
VOWELS = ("a", "e", "i", "o", "u", "ai", "ou", "ei")
CODAS = ("", "n", "l", "r", "s", "x", "th", "m")

OPENERS = ("", "Indeed, ", "As it happens, ", "Everyone knows that ", "In the old records, ",
           "Some say that ", "Notably, ", "Of course, ", "By all accounts, ", "It is said that ")
ATTRIBUTE_FRAMES = (
    "the {key} of {e} is {v}.", "{e}'s {key} is {v}.", "{e} has {v} as its {key}.",
    "for {e}, the {key} is {v}.", "the {key} that belongs to {e} is {v}.",
    "{e} is known for the {key} {v}.", "when it comes to {key}, {e} has {v}.",
    "{e} goes with the {key} {v}.",
)
RELATION_FRAMES = (
    "the {key} of {e} is {v}.", "{e}'s {key} is {v}.", "{e} has {v} as a {key}.",
    "for {e}, the {key} is {v}.", "{v} is the {key} of {e}.", "{e} calls {v} a {key}.",
    "{e} and {v} are linked: {v} is the {key} of {e}.", "{e} counts on {v}, its {key}.",
)
STORY_OPENINGS = ("One day {e} went to see {v}.", "{e} met {v} at the market.",
                  "Long ago, {e} wrote a letter to {v}.", "{e} and {v} travelled together.")
STORY_ENDINGS = ("They talked until night.", "Then both went home.", "Nobody forgot that day.",
                 "It was a good year.")


def _template_pool(frames: tuple[str, ...], size: int, rng: np.random.Generator) -> list[str]:
    """``size`` distinct templates: every (opener, frame) pair, in a per-seed random order."""
    combos = []
    for opener in OPENERS:
        for frame in frames:
            combos.append(opener + frame if opener else frame[0].upper() + frame[1:])
    order = rng.permutation(len(combos))
    return [combos[i] for i in order[:size]]


@dataclass
class _Relation:
    kind: str
    target: int
    fact_id: int
    bridge: bool


class WorldSource:
    """The knowledge world as a text source (see the module docstring); pure function of config."""

    kind = "world"
    max_template_pool = len(OPENERS) * len(ATTRIBUTE_FRAMES)

    def __init__(self, n_domains: int = 8, entities_per_domain: int = 64,
                 relations_per_entity: int = 2, bridge_density: float = 0.1,
                 template_pool_size: int = 16, values_per_domain: int = 5,
                 descriptions_per_entity: int = 2, stories_per_entity: int = 1,
                 holdout_fraction: float = 0.2, probe_size: int = 256, seed: int = 0) -> None:
        self.params = p = dict(
            n_domains=n_domains, entities_per_domain=entities_per_domain,
            relations_per_entity=relations_per_entity, bridge_density=float(bridge_density),
            template_pool_size=template_pool_size, values_per_domain=values_per_domain,
            descriptions_per_entity=descriptions_per_entity,
            stories_per_entity=stories_per_entity, holdout_fraction=float(holdout_fraction),
            probe_size=probe_size, seed=int(seed),
        )
        fewest_values = min(map(len, ATTRIBUTES.values()))
        rules = {
            "n_domains": (p["n_domains"] >= 1, ">= 1"),
            "entities_per_domain": (p["entities_per_domain"] >= 2, ">= 2"),
            "relations_per_entity": (0 <= p["relations_per_entity"] <= len(RELATIONS),
                                     f"in [0, {len(RELATIONS)}]"),
            "bridge_density": (0.0 <= p["bridge_density"] <= 1.0, "in [0, 1]"),
            "template_pool_size": (1 <= p["template_pool_size"] <= self.max_template_pool,
                                   f"in [1, {self.max_template_pool}]"),
            "values_per_domain": (1 <= p["values_per_domain"] <= fewest_values,
                                  f"in [1, {fewest_values}]"),
            "descriptions_per_entity": (p["descriptions_per_entity"] >= 0, ">= 0"),
            "stories_per_entity": (p["stories_per_entity"] >= 0, ">= 0"),
            "holdout_fraction": (0.0 <= p["holdout_fraction"] < 1.0, "in [0, 1)"),
            "probe_size": (p["probe_size"] >= 1, ">= 1"),
        }
        for key, (ok, rule) in rules.items():
            if not ok:
                raise DataConfigError(f"data.source.{key}={p[key]!r} must be {rule}")
        if bridge_density > 0 and n_domains < 2:
            raise DataConfigError(f"data.source.bridge_density={bridge_density} needs "
                                  f"n_domains >= 2 (got {n_domains})")
        self.seed = int(seed)
        self._build_world()

    def config(self) -> dict[str, Any]:
        return {"kind": self.kind, **self.params}

    def domain_names(self) -> list[str]:
        return [f"domain_{d}" for d in range(self.params["n_domains"])]

    @property
    def n_facts(self) -> int:
        return self.n_entities * (len(ATTRIBUTES) + self.params["relations_per_entity"])

    # -- the world ---------------------------------------------------------------------------

    def _build_world(self) -> None:
        p = self.params
        rng = np.random.default_rng([self.seed, 1])
        n_dom, per_dom = p["n_domains"], p["entities_per_domain"]
        self.n_entities = n_dom * per_dom
        self.entity_domain = np.repeat(np.arange(n_dom), per_dom)
        self.names = self._make_names(rng)
        attr_names = list(ATTRIBUTES)
        self.values = np.empty((self.n_entities, len(attr_names)), dtype=object)
        for d in range(n_dom):
            for a, attr in enumerate(attr_names):
                allowed = rng.choice(ATTRIBUTES[attr], size=p["values_per_domain"], replace=False)
                ents = np.flatnonzero(self.entity_domain == d)
                self.values[ents, a] = rng.choice(allowed, size=len(ents))
        n_attr = len(attr_names)
        self.relations: list[list[_Relation]] = []
        for e in range(self.n_entities):
            d = self.entity_domain[e]
            kinds = rng.choice(RELATIONS, size=p["relations_per_entity"], replace=False)
            rels = []
            for j, kind in enumerate(kinds):
                bridge = bool(rng.random() < p["bridge_density"])
                if bridge:
                    pool = np.flatnonzero(self.entity_domain != d)
                else:
                    pool = np.flatnonzero((self.entity_domain == d) & (np.arange(self.n_entities) != e))
                fact_id = self.n_entities * n_attr + e * p["relations_per_entity"] + j
                rels.append(_Relation(str(kind), int(rng.choice(pool)), fact_id, bridge))
            self.relations.append(rels)
        n_held = int(round(p["holdout_fraction"] * self.n_entities))
        self.heldout = np.zeros(self.n_entities, dtype=bool)
        self.heldout[rng.permutation(self.n_entities)[:n_held]] = True
        self.attribute_templates = _template_pool(ATTRIBUTE_FRAMES, p["template_pool_size"], rng)
        self.relation_templates = _template_pool(RELATION_FRAMES, p["template_pool_size"], rng)

    def _make_names(self, rng: np.random.Generator) -> list[str]:
        names: list[str] = []
        seen: set[str] = set()
        for _domain in range(self.params["n_domains"]):
            onsets = rng.choice(ONSETS, size=8, replace=False)
            for _ in range(self.params["entities_per_domain"]):
                while True:
                    n_syl = int(rng.integers(2, 4))
                    name = "".join(str(rng.choice(onsets)) + str(rng.choice(VOWELS))
                                   for _ in range(n_syl)) + str(rng.choice(CODAS))
                    name = name.capitalize()
                    if name not in seen:
                        break
                seen.add(name)
                names.append(name)
        return names

    def _attribute_fact(self, e: int, a: int) -> int:
        return e * len(ATTRIBUTES) + a

    # -- rendering ---------------------------------------------------------------------------

    def _sentences(self, e: int, facts: list[tuple[str, int]], rng: np.random.Generator
                   ) -> list[tuple[str, int]]:
        """One templated sentence per fact; ``facts`` holds ("attr", a) or ("rel", j)."""
        out = []
        attr_names = list(ATTRIBUTES)
        for what, i in facts:
            if what == "attr":
                template = self.attribute_templates[rng.integers(len(self.attribute_templates))]
                text = template.format(e=self.names[e], key=attr_names[i], v=self.values[e, i])
                out.append((text, self._attribute_fact(e, i)))
            else:
                rel = self.relations[e][i]
                template = self.relation_templates[rng.integers(len(self.relation_templates))]
                text = template.format(e=self.names[e], key=rel.kind, v=self.names[rel.target])
                out.append((text, rel.fact_id))
        return out

    @staticmethod
    def _join(pieces: list[tuple[str, int | None]], domain: str, bridge: bool) -> Document:
        text, facts = "", []
        for sentence, fact_id in pieces:
            start = len(text) + (1 if text else 0)
            text = f"{text} {sentence}" if text else sentence
            if fact_id is not None:
                facts.append((fact_id, start, start + len(sentence)))
        return Document(text, domain, facts, bridge)

    def documents(self) -> Iterator[Document]:
        """All documents, in a per-seed shuffled order (so any prefix mixes every domain)."""
        p = self.params
        rng = np.random.default_rng([self.seed, 2])
        domains = self.domain_names()
        docs: list[Document] = []
        n_attr, n_rel = len(ATTRIBUTES), p["relations_per_entity"]
        for e in range(self.n_entities):
            dom = domains[self.entity_domain[e]]
            all_facts = [("attr", a) for a in range(n_attr)] + [("rel", j) for j in range(n_rel)]
            has_bridge = any(r.bridge for r in self.relations[e])
            for _ in range(p["descriptions_per_entity"]):
                order = rng.permutation(len(all_facts))
                sentences = self._sentences(e, [all_facts[i] for i in order], rng)
                docs.append(self._join(sentences, dom, has_bridge))
            for _ in range(p["stories_per_entity"] if n_rel else 0):
                docs.append(self._story(e, int(rng.integers(n_rel)), rng, dom))
            if not self.heldout[e]:
                docs.append(self._join([(q.text, None) for q in self._single_questions(e)],
                                       dom, False))
                for rel in self.relations[e]:
                    questions = self._two_hop_questions(e, rel)
                    docs.append(self._join([(q.text, None) for q in questions], dom, rel.bridge))
        for i in rng.permutation(len(docs)):
            yield docs[i]

    def _story(self, e: int, j: int, rng: np.random.Generator, domain: str) -> Document:
        rel = self.relations[e][j]
        t = rel.target
        names = {"e": self.names[e], "v": self.names[t]}
        opening = STORY_OPENINGS[rng.integers(len(STORY_OPENINGS))].format(**names)
        ending = STORY_ENDINGS[rng.integers(len(STORY_ENDINGS))]
        a_e, a_t = rng.integers(len(ATTRIBUTES), size=2)
        facts = self._sentences(e, [("rel", j), ("attr", int(a_e))], rng)
        facts += self._sentences(t, [("attr", int(a_t))], rng)
        return self._join([(opening, None), *facts, (ending, None)], domain, rel.bridge)

    # -- questions ---------------------------------------------------------------------------

    def _single_questions(self, e: int) -> list[ProbeQuestion]:
        dom = self.domain_names()[self.entity_domain[e]]
        return [_question(f"What is the {attr} of {self.names[e]}?", self.values[e, a], dom)
                for a, attr in enumerate(ATTRIBUTES)]

    def _two_hop_questions(self, e: int, rel: _Relation) -> list[ProbeQuestion]:
        """The attributes of the entity ``e`` is related to by ``rel``."""
        dom = self.domain_names()[self.entity_domain[e]]
        return [_question(f"What is the {attr} of the {rel.kind} of {self.names[e]}?",
                          self.values[rel.target, a], dom) for a, attr in enumerate(ATTRIBUTES)]

    def probe_questions(self) -> dict[str, list[ProbeQuestion]]:
        """Questions about the held-out entities: single facts, and two-hop across bridges."""
        held = [int(e) for e in np.flatnonzero(self.heldout)]
        sets = {"world_facts": [q for e in held for q in self._single_questions(e)],
                "world_two_hop": [q for e in held for rel in self.relations[e] if rel.bridge
                                  for q in self._two_hop_questions(e, rel)]}
        rng = np.random.default_rng([self.seed, 3])
        out = {}
        for name, questions in sets.items():
            if questions:
                keep = np.sort(rng.permutation(len(questions))[:self.params["probe_size"]])
                out[name] = [questions[i] for i in keep]
        return out


def _question(question: str, answer: str, domain: str) -> ProbeQuestion:
    prompt = f"Q: {question} A: "
    return ProbeQuestion(prompt + answer, len(prompt), domain)
