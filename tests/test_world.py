"""The synthetic knowledge world: deterministic, true to its facts, knobs that do what they say."""

import re

import numpy as np
import pytest

from data_mixers.base import DataConfigError
from data_mixers.sources.world import ATTRIBUTES, WorldSource

SMALL = dict(n_domains=3, entities_per_domain=12, relations_per_entity=2, seed=1)


def test_same_seed_same_documents_other_seed_other_world():
    first = [(d.text, d.domain, d.facts, d.bridge) for d in WorldSource(**SMALL).documents()]
    again = [(d.text, d.domain, d.facts, d.bridge) for d in WorldSource(**SMALL).documents()]
    other = [d.text for d in WorldSource(**{**SMALL, "seed": 2}).documents()]
    assert first == again
    assert [t for t, *_ in first] != other


def test_every_stated_fact_is_true_to_the_world():
    world = WorldSource(**SMALL)
    n_attr = len(ATTRIBUTES)
    checked = 0
    for doc in world.documents():
        for fact_id, start, end in doc.facts:
            sentence = doc.text[start:end]
            assert sentence.endswith(".")
            if fact_id < world.n_entities * n_attr:
                e, a = divmod(fact_id, n_attr)
                assert world.names[e] in sentence
                assert re.search(rf"\b{world.values[e, a]}\b", sentence)
            else:
                e, j = divmod(fact_id - world.n_entities * n_attr, SMALL["relations_per_entity"])
                rel = world.relations[e][j]
                assert world.names[e] in sentence and world.names[rel.target] in sentence
                assert rel.kind in sentence
            checked += 1
    assert checked > 0 and max(f for d in world.documents() for f, _, _ in d.facts) < world.n_facts


@pytest.mark.parametrize("density", [0.0, 0.5, 1.0])
def test_bridge_density_sets_the_share_of_cross_domain_relations(density):
    world = WorldSource(**{**SMALL, "entities_per_domain": 40, "bridge_density": density})
    rels = [(e, r) for e in range(world.n_entities) for r in world.relations[e]]
    crosses = [world.entity_domain[e] != world.entity_domain[r.target] for e, r in rels]
    assert [r.bridge for _, r in rels] == crosses
    assert np.mean(crosses) == pytest.approx(density, abs=0.1)
    bridge_docs = np.mean([d.bridge for d in world.documents()])
    assert (bridge_docs == 0) == (density == 0)


def test_template_pool_size_sets_phrasing_diversity():
    def skeletons(pool):
        world = WorldSource(**{**SMALL, "template_pool_size": pool})
        out = set()
        for doc in world.documents():
            for fact_id, start, end in doc.facts:
                if fact_id < world.n_entities * len(ATTRIBUTES):
                    e, a = divmod(fact_id, len(ATTRIBUTES))
                    s = doc.text[start:end].replace(world.names[e], "E")
                    out.add(re.sub(rf"\b{world.values[e, a]}\b", "V", s)
                            .replace(list(ATTRIBUTES)[a], "K"))
        return out

    assert len(skeletons(1)) == 1
    assert len(skeletons(4)) == 4
    assert len(skeletons(40)) > 20


def test_probes_ask_held_out_entities_with_the_right_answers():
    world = WorldSource(**{**SMALL, "bridge_density": 0.5})
    corpus = " ".join(d.text for d in world.documents())
    probes = world.probe_questions()
    assert {"world_facts", "world_two_hop", "world_two_hop_local"} <= set(probes)
    for q in probes["world_facts"]:
        prompt, answer = q.text[:q.answer_start], q.text[q.answer_start:]
        assert prompt.startswith("Q: ") and prompt.endswith("A: ")
        name, attr = re.match(r"Q: What is the (\w+) of (\w+)\?", prompt).group(2, 1)
        e = world.names.index(name)
        assert world.heldout[e] and answer == world.values[e, list(ATTRIBUTES).index(attr)]
        assert prompt not in corpus, "a probe question leaked into the training text"
        assert name in corpus, "the held-out entity's facts must still be in the training text"
    for q in probes["world_two_hop"]:
        attr, kind, name = re.match(r"Q: What is the (\w+) of the (\w+) of (\w+)\?", q.text).groups()
        e = world.names.index(name)
        rel = next(r for r in world.relations[e] if r.kind == kind)
        assert rel.bridge, "two-hop probes must cross a bridge"
        assert q.text[q.answer_start:] == world.values[rel.target, list(ATTRIBUTES).index(attr)]


def test_no_two_hop_probes_without_bridges():
    assert "world_two_hop" not in WorldSource(**{**SMALL, "bridge_density": 0.0}).probe_questions()


@pytest.mark.parametrize("key, value", [("bridge_density", 1.5), ("template_pool_size", 0),
                                        ("n_domains", 0), ("holdout_fraction", 1.0)])
def test_bad_settings_name_their_key(key, value):
    with pytest.raises(DataConfigError, match=f"data.source.{key}"):
        WorldSource(**{**SMALL, key: value})


KE = dict(n_domains=1, entities_per_domain=8, relations_per_entity=0, stories_per_entity=0,
          bridge_density=0.0, n_attributes=4, values_per_domain=10, qa_domain=True,
          holdout_fraction=0.5, seed=2)


def descriptions(world):
    return [d for d in world.documents() if d.domain != "qa"]


def attribute_order(world, doc):
    return tuple(f % len(world.attr_names) for f, _, _ in doc.facts)


def test_permute_sentences_varies_the_order_and_off_keeps_it_fixed():
    fixed = WorldSource(**KE, descriptions_per_entity=3, permute_sentences=False)
    shuffled = WorldSource(**KE, descriptions_per_entity=3, permute_sentences=True)
    assert {attribute_order(fixed, d) for d in descriptions(fixed)} == {(0, 1, 2, 3)}
    assert len({attribute_order(shuffled, d) for d in descriptions(shuffled)}) > 5


def test_without_fullname_the_entity_is_named_once_per_description():
    for fullname, times in ((True, 4), (False, 1)):
        world = WorldSource(**KE, fullname=fullname)
        for doc in descriptions(world):
            e = world.fact_entity(doc.facts[0][0])
            assert doc.text.count(world.names[e]) == times, doc.text


def test_descriptions_per_entity_are_differently_worded_texts_of_the_same_facts():
    world = WorldSource(**KE, descriptions_per_entity=4)
    by_entity = {}
    for doc in descriptions(world):
        by_entity.setdefault(world.fact_entity(doc.facts[0][0]), []).append(doc)
    assert len(by_entity) == world.n_entities
    for docs in by_entity.values():
        assert len(docs) == 4 and len({d.text for d in docs}) == 4
        assert len({frozenset(f for f, _, _ in d.facts) for d in docs}) == 1


def test_qa_domain_holds_one_question_per_document_for_training_entities_only():
    world = WorldSource(**KE)
    assert world.domain_names() == ["domain_0", "qa"]
    qa = [d for d in world.documents() if d.domain == "qa"]
    assert len(qa) == int((~world.heldout).sum()) * 4
    asked = {re.match(r"Q: What is the \w+ of (\w+)\? A: \w+$", d.text).group(1) for d in qa}
    assert asked == {world.names[e] for e in np.flatnonzero(~world.heldout)}
    assert all(d.domain == "domain_0" for d in descriptions(world))


def test_recall_and_seen_probes():
    world = WorldSource(**KE, descriptions_per_entity=2)
    probes = world.probe_questions()
    assert {"world_facts", "world_facts_seen", "world_recall"} <= set(probes)
    seen = {re.match(r"Q: What is the \w+ of (\w+)", q.text).group(1)
            for q in probes["world_facts_seen"]}
    assert seen == {world.names[e] for e in np.flatnonzero(~world.heldout)}
    texts = [d.text for d in descriptions(world)]
    for q in probes["world_recall"]:
        prompt, answer = q.text[:q.answer_start], q.text[q.answer_start:]
        assert any(t.startswith(q.text) for t in texts), "recall prompts are training text"
        e = next(e for e in range(world.n_entities) if world.names[e] in prompt)
        assert world.heldout[e] and answer in world.values[e]


def test_n_attributes_sets_the_facts_per_entity():
    world = WorldSource(**{**KE, "n_attributes": 2})
    assert world.n_facts == world.n_entities * 2
    assert {q.text.split()[4] for q in world.probe_questions()["world_facts"]} == {"color", "size"}


def test_two_hop_local_probes_stay_inside_a_domain():
    world = WorldSource(**{**SMALL, "bridge_density": 0.5})
    for q in world.probe_questions()["world_two_hop_local"]:
        kind, name = re.match(r"Q: What is the \w+ of the (\w+) of (\w+)\?", q.text).groups()
        e = world.names.index(name)
        assert not next(r for r in world.relations[e] if r.kind == kind).bridge
