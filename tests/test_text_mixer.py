"""The text mixer: exact resume, disjoint ranks, and every knob moves what it says it moves."""

import pickle
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from data_mixers.base import DataConfigError
from data_mixers.curriculum import Curriculum, Ramp, Stages
from data_mixers.text_mixer import TextMixer

WORLD = {"kind": "world", "n_domains": 4, "entities_per_domain": 16, "bridge_density": 0.2}
CONF = Path(__file__).resolve().parents[1] / "conf" / "data"


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def mixer(cache, source=None, **knobs):
    m = TextMixer(source=source or WORLD, seq_len=64, cache_dir=cache, seed=3, **knobs)
    m.prepare()
    return m


def stats(m, steps=4, batch=32, **kw):
    per_step = [m.batch_stats(m.batch(s, batch, **kw)) for s in range(steps)]
    return {k: float(np.mean([p[k] for p in per_step])) for k in per_step[0]}


def domain_entropy(m, steps=4):
    domains = np.concatenate([m.batch(s, 32)["domain"].ravel() for s in range(steps)])
    p = np.bincount(domains[domains >= 0]) / (domains >= 0).sum()
    return float(-(p[p > 0] * np.log(p[p > 0])).sum())


def test_batch_contract_and_shifted_targets(cache):
    m = mixer(cache)
    b = m.batch(0, 8)
    assert b["input_ids"].shape == (8, 64) and b["input_ids"].dtype == np.int64
    assert {"doc_id", "doc_pos", "domain"} <= set(b) and b["doc_id"].dtype == np.int64
    np.testing.assert_array_equal(b["input_ids"][:, 1:], b["targets"][:, :-1])
    assert b["input_ids"].max() < m.vocab_size
    separators = b["doc_id"] == -1
    assert (b["input_ids"][separators] == m.tokenizer.eos_id).all()
    assert (b["domain"][separators] == -1).all() and (b["domain"][~separators] >= 0).all()
    doc, pos = b["doc_id"][0, 0], b["doc_pos"][0, 0]
    assert b["input_ids"][0, 0] == m._stores[0].tokens[m.doc_start[doc] + pos]


def test_same_step_same_batch_whatever_came_before(cache):
    fresh = mixer(cache).batch(5, 16)
    busy = mixer(cache)
    for step in range(5):
        busy.batch(step, 16)
    again = busy.batch(5, 16)
    for key in fresh:
        np.testing.assert_array_equal(fresh[key], again[key])
    assert not np.array_equal(fresh["input_ids"], busy.batch(6, 16)["input_ids"])


def test_ranks_are_disjoint_halves_of_the_global_batch(cache):
    m = mixer(cache, fragment_length=16)
    whole = m.batch(2, 16)
    halves = [m.batch(2, 16, rank=r, world_size=2) for r in (0, 1)]
    for key in whole:
        np.testing.assert_array_equal(np.concatenate([h[key] for h in halves]), whole[key])


def test_pickled_mixer_emits_the_same_batches(cache):
    m = mixer(cache)
    clone = pickle.loads(pickle.dumps(m))
    np.testing.assert_array_equal(clone.batch(1, 4)["input_ids"], m.batch(1, 4)["input_ids"])


def test_more_domains_more_domain_entropy(cache):
    entropies = [domain_entropy(mixer(cache, n_domains_active=n)) for n in (1, 2, 4)]
    assert entropies[0] == 0.0 and entropies[0] < entropies[1] < entropies[2]


def test_explicit_weights_zipf_and_temperature(cache):
    only_two = mixer(cache, domain_weights=[0, 1, 0, 0]).batch(0, 16)["domain"]
    assert set(np.unique(only_two)) - {-1} == {1}
    by_name = mixer(cache, domains=["domain_3"]).batch(0, 16)["domain"]
    assert set(np.unique(by_name)) - {-1} == {3}
    steep, flat = mixer(cache, zipf_exponent=3.0), mixer(cache, zipf_exponent=0.5)
    assert domain_entropy(steep) < domain_entropy(flat)
    skewed = [8, 4, 2, 1]
    assert (domain_entropy(mixer(cache, domain_weights=skewed, temperature=0.5))
            < domain_entropy(mixer(cache, domain_weights=skewed))
            < domain_entropy(mixer(cache, domain_weights=skewed, temperature=8.0)))


def test_fragment_length_sets_mean_fragment_length(cache):
    whole = stats(mixer(cache))["mean_fragment_length"]
    short = stats(mixer(cache, fragment_length=8))["mean_fragment_length"]
    longer = stats(mixer(cache, fragment_length=24))["mean_fragment_length"]
    assert short == pytest.approx(8, abs=1) and short < longer < whole


def test_docs_per_window_sets_documents_per_row(cache):
    for k in (1, 4):
        b = mixer(cache, docs_per_window=k).batch(0, 16)
        assert mixer(cache).batch_stats(b)["docs_per_window"] == k
        padding = (b["doc_id"] == -1) & (b["input_ids"] == b["targets"])
        assert (b["loss_mask"][padding] == 0).all()
    packed = stats(mixer(cache, fragment_length=8))["docs_per_window"]
    assert packed > 5


def test_weights_count_rows_keeps_each_row_in_one_domain(cache):
    rows = stats(mixer(cache, fragment_length=8, weights_count="rows"))
    docs = stats(mixer(cache, fragment_length=8, weights_count="documents"))
    assert rows["cross_domain_rows"] == 0.0 and docs["cross_domain_rows"] > 0.5


def test_fewer_unique_tokens_fewer_distinct_documents_more_repetition(cache):
    def seen(m):
        return len({d for s in range(8) for d in np.unique(m.batch(s, 32)["doc_id"])} - {-1})

    small, full = mixer(cache, unique_tokens=3000), mixer(cache)
    assert seen(small) < seen(full)
    assert small.describe()["pool_tokens"] < full.describe()["pool_tokens"]
    assert small.describe()["pool_tokens"] == pytest.approx(3000, rel=0.5)
    assert small.pool_epochs(10**6) > full.pool_epochs(10**6)
    assert set(np.unique(small.batch(0, 64)["domain"])) - {-1} == {0, 1, 2, 3}


def test_bridge_density_knob_moves_measured_bridge_density(cache):
    measured = [stats(mixer(cache, {**WORLD, "bridge_density": d}, docs_per_window=1))
                for d in (0.0, 0.5)]
    assert measured[0]["bridge_doc_rows"] == 0.0 and measured[1]["bridge_doc_rows"] > 0.2
    assert measured[1]["bridge_density"] > measured[0]["bridge_density"]
    assert measured[0]["cross_domain_rows"] == measured[1]["cross_domain_rows"] == 0.0


def test_short_fragments_cover_fewer_whole_facts(cache):
    whole = stats(mixer(cache, docs_per_window=1))["unique_facts"]
    shredded = stats(mixer(cache, fragment_length=8))["unique_facts"]
    assert 0 <= shredded < whole


class Halfway(Curriculum):
    """A curriculum that switches knobs at half the run."""

    def __init__(self, late):
        self.late = late

    def at(self, step, total_steps):
        return dict(self.late) if step >= total_steps // 2 else {}

    def ranges(self):
        return {k: (v, v) for k, v in self.late.items()}


def test_curriculum_overrides_knobs_from_its_step(cache):
    m = TextMixer(source=WORLD, seq_len=64, cache_dir=cache, curriculum=Halfway(
        {"fragment_length": 8}))
    m.bind(10)
    assert "fragment_length" not in m.knobs_at(0) and m.knobs_at(5)["fragment_length"] == 8.0
    early = m.batch_stats(m.batch(0, 16))["mean_fragment_length"]
    late = m.batch_stats(m.batch(5, 16))["mean_fragment_length"]
    assert late == pytest.approx(8, abs=1) and early > 16


def test_a_ramp_moves_the_measured_statistic_step_by_step(cache):
    ramp = Ramp({"n_domains_active": {"start": 1, "end": 4}}, end_frac=1.0)
    m = TextMixer(source=WORLD, seq_len=64, cache_dir=cache, n_domains_active=1, curriculum=ramp)
    m.bind(100)
    assert m.knobs_at(0)["n_domains_active"] == 1 and m.knobs_at(99)["n_domains_active"] == 4
    domains = [len(set(np.unique(m.batch(s, 32)["domain"])) - {-1}) for s in (0, 99)]
    assert domains == [1, 4]


def test_curriculum_with_unknown_or_bad_knob_is_refused_up_front(cache):
    with pytest.raises(DataConfigError, match="fragmnt"):
        TextMixer(source=WORLD, seq_len=64, cache_dir=cache, curriculum=Halfway({"fragmnt": 8}))
    with pytest.raises(DataConfigError, match="curriculum.fragment_length"):
        TextMixer(source=WORLD, seq_len=64, cache_dir=cache,
                  curriculum=Halfway({"fragment_length": 500}))
    m = TextMixer(source=WORLD, seq_len=64, cache_dir=cache,
                  curriculum=Halfway({"n_domains_active": 9}))
    m.prepare()
    with pytest.raises(DataConfigError, match="curriculum.n_domains_active"):
        m.bind(10)


def test_probes_point_at_the_first_answer_token(cache):
    m = mixer(cache)
    probes = {p.name: p for p in m.probe_sets() if p.kind == "answer"}
    assert set(probes) == {"world_facts", "world_facts_seen", "world_recall", "world_two_hop",
                           "world_two_hop_local"}
    p = probes["world_facts"]
    assert p.batch["input_ids"].shape[1] == p.answer_positions.max() + 1 < m.seq_len, \
        "answer probes are as wide as their longest prompt, not seq_len"
    rows = np.arange(len(p.answer_positions))
    answers = p.batch["targets"][rows, p.answer_positions]
    assert [chr(a) for a in answers] == [a[0] for a in p.meta["answers"]]
    assert (p.batch["loss_mask"].sum(axis=1) == 1).all()
    prompt = m.tokenizer.decode(p.batch["input_ids"][0, :p.answer_positions[0] + 1])
    assert prompt == p.meta["questions"][0]


@pytest.mark.parametrize("kwargs, key", [
    ({"source": {"kind": "wiki"}}, "data.source.kind"),
    ({"source": {**WORLD, "bridges": 0.1}}, "data.source.bridges"),
    ({"domain_weights": [1, -1, 1, 1]}, "data.domain_weights"),
    ({"domain_weights": [0, 0, 0, 0]}, "data.domain_weights"),
    ({"domain_weights": [1, 1]}, "data.domain_weights"),
    ({"fragment_length": 65}, "data.fragment_length"),
    ({"docs_per_window": 40}, "data.docs_per_window"),
    ({"weights_count": "tokens"}, "data.weights_count"),
    ({"unique_tokens": 0}, "data.unique_tokens"),
    ({"temperature": 0}, "data.temperature"),
    ({"n_domains_active": 9}, "data.n_domains_active"),
    ({"domains": ["domain_9"]}, "data.domains"),
    ({"cache_dir": None}, "data.cache_dir"),
    ({"tokenizer": {"kind": "byte", "lowercase": True}}, "data.tokenizer.lowercase"),
    ({"focus_share": 0.5}, "data.focus_share"),
    ({"focus_domain": "domain_0", "focus_share": 1.5}, "data.focus_share"),
    ({"focus_domain": "nope", "focus_share": 0.5}, "data.focus_domain"),
])
def test_every_config_error_names_its_key(cache, kwargs, key):
    settings = {"source": WORLD, "seq_len": 64, "cache_dir": cache, **kwargs}
    with pytest.raises(DataConfigError, match=key.replace(".", r"\.")):
        TextMixer(**settings).prepare()


def test_world_yaml_instantiates_a_working_mixer(tmp_path):
    from hydra.utils import instantiate

    cfg = OmegaConf.create({"seed": 0, "paths": {"cache_dir": str(tmp_path)},
                            "data": OmegaConf.load(CONF / "world.yaml")})
    cfg.data.source.n_domains, cfg.data.source.entities_per_domain = 2, 4
    cfg.data.tokenizer = {"kind": "byte"}
    m = instantiate(cfg.data)
    m.prepare()
    assert isinstance(m, TextMixer) and m.batch(0, 2)["input_ids"].shape == (2, 256)
    hf = OmegaConf.load(CONF / "hf.yaml")
    assert set(hf) - {"source"} == set(cfg.data) - {"source"}


def test_heldout_documents_are_never_trained_on_and_probe_each_domain(cache):
    m = mixer(cache, heldout_docs_per_domain=3)
    probes = {p.name: p for p in m.probe_sets() if p.kind == "loss"}
    assert sorted(probes) == sorted(f"heldout/{name}" for name in m.domain_names)
    heldout = {d for p in probes.values() for d in p.meta["documents"]}
    assert len(heldout) == 3 * len(m.domain_names)
    seen = set()
    for step in range(30):
        seen |= set(np.unique(m.batch(step, 32)["doc_id"]).tolist())
    assert not seen & heldout, "a held-out document reached training"
    probe = next(iter(probes.values()))
    assert probe.batch["loss_mask"].sum() > 0
    np.testing.assert_array_equal(probe.batch["targets"][:, :-1], probe.batch["input_ids"][:, 1:])


def test_negative_heldout_count_is_named(cache):
    with pytest.raises(DataConfigError, match="data.heldout_docs_per_domain=-1"):
        mixer(cache, heldout_docs_per_domain=-1)


QA_WORLD = {"kind": "world", "n_domains": 2, "entities_per_domain": 8, "relations_per_entity": 0,
            "stories_per_entity": 0, "bridge_density": 0.0, "n_attributes": 3, "qa_domain": True}


def qa_token_share(m, steps=range(3)):
    domains = np.concatenate([m.batch(s, 16)["domain"].ravel() for s in steps])
    domains = domains[domains >= 0]
    return float((domains == m.domain_names.index("qa")).mean())


def test_focus_share_sets_the_share_of_one_domain(cache):
    shares = [qa_token_share(mixer(cache, QA_WORLD, focus_domain="qa", focus_share=f))
              for f in (0.0, 0.2, 0.8, 1.0)]
    assert shares[0] == 0.0 and shares[-1] == 1.0
    assert 0.0 < shares[1] < shares[2] < 1.0
    assert 0.0 < qa_token_share(mixer(cache, QA_WORLD)) < 1.0


def test_two_stage_curriculum_switches_from_descriptions_to_qa(cache):
    two_stage = Stages([{"until": 0.5, "focus_share": 0.0}, {"until": 1.0, "focus_share": 1.0}])
    m = TextMixer(source=QA_WORLD, seq_len=64, cache_dir=cache, seed=3, focus_domain="qa",
                  curriculum=two_stage)
    m.prepare()
    pretrain_pool = m.pool_epochs(10_000)  # before bind: the schedule's start
    m.bind(10)
    assert qa_token_share(m, range(5)) == 0.0 and qa_token_share(m, range(5, 10)) == 1.0
    assert m.knobs_at(4)["focus_share"] == 0.0 and m.knobs_at(5)["focus_share"] == 1.0
    assert pretrain_pool == m.pool_epochs(10_000, step=0) < m.pool_epochs(10_000, 9)
