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

* descriptions: every fact of one entity, one sentence each, ``descriptions_per_entity`` of them,
  each with freshly drawn templates; in a fresh random order per description
  (``permute_sentences``) or in the fixed attribute order; naming the entity in every sentence
  (``fullname``) or only in the first, with "it" after (the two are Allen-Zhu & Li's (2023)
  *permute* and *fullname* knowledge augmentations, ``descriptions_per_entity`` their *multiM*);
* stories: an entity meets one of its relations; a bridge relation makes a *bridge document*;
* question-answer documents for the *training* entities, one question each (the paper's "QA
  entries"): single facts ("Q: What is the color of Zorbel? A: red"), and per relation two-hop
  questions ("Q: What is the color of the friend of Zorbel? A: blue"; a bridge document when the
  friend lives in another domain).

With ``qa_domain`` the Q/A documents form a domain of their own, ``qa``, which the mixer can
weigh or schedule apart from the descriptions (``data.focus_domain``/``data.focus_share``): that
is how the knowledge-extraction preset trains in two stages (descriptions, then Q/A) or mixed.

Probes are the same questions about the held-out entities (``holdout_fraction``), whose facts the
training text states only in declarative form: answering needs the knowledge stored, not the Q/A
pairs memorized (``world_facts``). ``world_facts_seen`` asks the training entities' questions
(those the Q/A documents hold: learning the format), and ``world_recall`` completes a held-out
entity's own first description up to an attribute value (memorization of the text, without a
question).
``world_two_hop`` asks only across bridges (the answer lives in another domain),
``world_two_hop_local`` only within a domain (the baseline a bridge-free world still has).
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
                 holdout_fraction: float = 0.2, probe_size: int = 256, seed: int = 0,
                 n_attributes: int = len(ATTRIBUTES), permute_sentences: bool = True,
                 fullname: bool = True, qa_domain: bool = False) -> None:
        self.params = p = dict(
            n_domains=n_domains, entities_per_domain=entities_per_domain,
            relations_per_entity=relations_per_entity, bridge_density=float(bridge_density),
            template_pool_size=template_pool_size, values_per_domain=values_per_domain,
            descriptions_per_entity=descriptions_per_entity,
            stories_per_entity=stories_per_entity, holdout_fraction=float(holdout_fraction),
            probe_size=probe_size, seed=int(seed), n_attributes=n_attributes,
            permute_sentences=bool(permute_sentences), fullname=bool(fullname),
            qa_domain=bool(qa_domain),
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
            "n_attributes": (1 <= p["n_attributes"] <= len(ATTRIBUTES),
                             f"in [1, {len(ATTRIBUTES)}]"),
        }
        for key, (ok, rule) in rules.items():
            if not ok:
                raise DataConfigError(f"data.source.{key}={p[key]!r} must be {rule}")
        if bridge_density > 0 and n_domains < 2:
            raise DataConfigError(f"data.source.bridge_density={bridge_density} needs "
                                  f"n_domains >= 2 (got {n_domains})")
        self.seed = int(seed)
        self.attr_names = list(ATTRIBUTES)[:n_attributes]
        self._build_world()

    def config(self) -> dict[str, Any]:
        return {"kind": self.kind, **self.params}

    def domain_names(self) -> list[str]:
        names = [f"domain_{d}" for d in range(self.params["n_domains"])]
        return names + ["qa"] if self.params["qa_domain"] else names

    @property
    def n_facts(self) -> int:
        return self.n_entities * (len(self.attr_names) + self.params["relations_per_entity"])

    # -- the world ---------------------------------------------------------------------------

    def _build_world(self) -> None:
        p = self.params
        rng = np.random.default_rng([self.seed, 1])
        n_dom, per_dom = p["n_domains"], p["entities_per_domain"]
        self.n_entities = n_dom * per_dom
        self.entity_domain = np.repeat(np.arange(n_dom), per_dom)
        self.names = self._make_names(rng)
        attr_names = self.attr_names
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
        return e * len(self.attr_names) + a

    def fact_entity(self, fact_id: int) -> int:
        """The entity a fact (attribute value or relation) belongs to."""
        n_attr_facts = self.n_entities * len(self.attr_names)
        if fact_id < n_attr_facts:
            return fact_id // len(self.attr_names)
        return (fact_id - n_attr_facts) // self.params["relations_per_entity"]

    # -- rendering ---------------------------------------------------------------------------

    def _sentences(self, e: int, facts: list[tuple[str, int]], rng: np.random.Generator,
                   named: bool = True) -> list[tuple[str, int]]:
        """One templated sentence per fact; ``facts`` holds ("attr", a) or ("rel", j). With
        ``named=False`` the entity is "it" after the first sentence (no *fullname* augmentation)."""
        out = []
        for k, (what, i) in enumerate(facts):
            if what == "attr":
                template = self.attribute_templates[rng.integers(len(self.attribute_templates))]
                key, value, fact = self.attr_names[i], self.values[e, i], self._attribute_fact(e, i)
            else:
                rel = self.relations[e][i]
                template = self.relation_templates[rng.integers(len(self.relation_templates))]
                key, value, fact = rel.kind, self.names[rel.target], rel.fact_id
            if not named and k > 0:
                template = _pronoun(template)
            text = template.format(e=self.names[e], key=key, v=value)
            out.append((text[0].upper() + text[1:], fact))
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
        docs = [doc for doc, _ in self._documents_by_entity()]
        order = np.random.default_rng([self.seed, 4]).permutation(len(docs))
        for i in order:
            yield docs[i]

    def _documents_by_entity(self) -> list[tuple[Document, tuple[str, int]]]:
        """Every document with what it is: ("description" | "story" | "qa", entity)."""
        p = self.params
        rng = np.random.default_rng([self.seed, 2])
        domains = self.domain_names()
        docs: list[tuple[Document, tuple[str, int]]] = []
        n_attr, n_rel = len(self.attr_names), p["relations_per_entity"]
        all_facts = [("attr", a) for a in range(n_attr)] + [("rel", j) for j in range(n_rel)]
        for e in range(self.n_entities):
            dom = domains[self.entity_domain[e]]
            qa_dom = "qa" if p["qa_domain"] else dom
            has_bridge = any(r.bridge for r in self.relations[e])
            for _ in range(p["descriptions_per_entity"]):
                docs.append((self._description(e, all_facts, rng, dom, has_bridge),
                             ("description", e)))
            for _ in range(p["stories_per_entity"] if n_rel else 0):
                docs.append((self._story(e, int(rng.integers(n_rel)), rng, dom), ("story", e)))
            if not self.heldout[e]:
                docs += [(Document(q.text, qa_dom), ("qa", e)) for q in self._single_questions(e)]
                docs += [(Document(q.text, qa_dom, bridge=rel.bridge), ("qa", e))
                         for rel in self.relations[e] for q in self._two_hop_questions(e, rel)]
        return docs

    def _description(self, e: int, all_facts: list[tuple[str, int]], rng: np.random.Generator,
                     domain: str, bridge: bool) -> Document:
        order = rng.permutation(len(all_facts)) if self.params["permute_sentences"] \
            else np.arange(len(all_facts))
        sentences = self._sentences(e, [all_facts[i] for i in order], rng,
                                    named=self.params["fullname"])
        return self._join(sentences, domain, bridge)

    def _story(self, e: int, j: int, rng: np.random.Generator, domain: str) -> Document:
        rel = self.relations[e][j]
        t = rel.target
        names = {"e": self.names[e], "v": self.names[t]}
        opening = STORY_OPENINGS[rng.integers(len(STORY_OPENINGS))].format(**names)
        ending = STORY_ENDINGS[rng.integers(len(STORY_ENDINGS))]
        a_e, a_t = rng.integers(len(self.attr_names), size=2)
        facts = self._sentences(e, [("rel", j), ("attr", int(a_e))], rng)
        facts += self._sentences(t, [("attr", int(a_t))], rng)
        return self._join([(opening, None), *facts, (ending, None)], domain, rel.bridge)

    # -- questions ---------------------------------------------------------------------------

    def _single_questions(self, e: int) -> list[ProbeQuestion]:
        dom = self.domain_names()[self.entity_domain[e]]
        return [_question(f"What is the {attr} of {self.names[e]}?", self.values[e, a], dom)
                for a, attr in enumerate(self.attr_names)]

    def _two_hop_questions(self, e: int, rel: _Relation) -> list[ProbeQuestion]:
        """The attributes of the entity ``e`` is related to by ``rel``."""
        dom = self.domain_names()[self.entity_domain[e]]
        return [_question(f"What is the {attr} of the {rel.kind} of {self.names[e]}?",
                          self.values[rel.target, a], dom)
                for a, attr in enumerate(self.attr_names)]

    def probe_questions(self) -> dict[str, list[ProbeQuestion]]:
        """Questions about the held-out entities (single facts, two-hop across bridges), the
        training entities' own questions, and completions of held-out entities' descriptions."""
        held = [int(e) for e in np.flatnonzero(self.heldout)]
        seen = [int(e) for e in np.flatnonzero(~self.heldout)]
        sets = {"world_facts": [q for e in held for q in self._single_questions(e)],
                "world_facts_seen": [q for e in seen for q in self._single_questions(e)],
                "world_recall": self._recall_prompts(held),
                "world_two_hop": [q for e in held for rel in self.relations[e] if rel.bridge
                                  for q in self._two_hop_questions(e, rel)],
                "world_two_hop_local": [q for e in held for rel in self.relations[e]
                                        if not rel.bridge for q in self._two_hop_questions(e, rel)]}
        rng = np.random.default_rng([self.seed, 3])
        out = {}
        for name, questions in sets.items():
            if questions:
                keep = np.sort(rng.permutation(len(questions))[:self.params["probe_size"]])
                out[name] = [questions[i] for i in keep]
        return out

    def _recall_prompts(self, entities: list[int]) -> list[ProbeQuestion]:
        """Each entity's first description as training saw it, cut before each attribute value:
        next-token recall of the memorized text (the paper's "BIO first-token accuracy")."""
        first: dict[int, Document] = {}
        for doc, (kind, e) in self._documents_by_entity():
            if kind == "description":
                first.setdefault(e, doc)
        n_attr = len(self.attr_names)
        out = []
        for e in entities:
            doc = first.get(e)
            for fact_id, start, end in doc.facts if doc else ():
                if fact_id < self.n_entities * n_attr:
                    value = str(self.values[e, fact_id % n_attr])
                    at = doc.text.rfind(" " + value, start, end) + 1
                    out.append(ProbeQuestion(doc.text[:at] + value, at, doc.domain, whole=False))
        return out


def _pronoun(template: str) -> str:
    """The template with the entity as "it" instead of its name."""
    return template.replace("{e}'s", "its").replace("{e}", "it")


def _question(question: str, answer: str, domain: str) -> ProbeQuestion:
    prompt = f"Q: {question} A: "
    return ProbeQuestion(prompt + answer, len(prompt), domain)
