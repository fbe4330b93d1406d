"""The diversity meter reports what the batches held: entropy, n-gram diversity, repetition,
fragmentation and the source's own statistics, over a sliding window."""

import numpy as np
import pytest

from data_mixers.diversity import DiversityMeter


def batch(input_ids, domain=None, **extra_keys) -> dict[str, np.ndarray]:
    input_ids = np.asarray(input_ids, dtype=np.int64)
    domain = np.zeros_like(input_ids) if domain is None else np.asarray(domain, dtype=np.int64)
    return {"input_ids": input_ids, "targets": np.roll(input_ids, -1, axis=1), "domain": domain,
            "loss_mask": np.ones(input_ids.shape, np.float32), **extra_keys}  # fmt: skip


def random_batch(rng, rows=32, length=16, vocab=1000, n_domains=8) -> dict[str, np.ndarray]:
    domain = np.repeat(rng.integers(n_domains, size=(rows, 1)), length, axis=1)
    return batch(rng.integers(vocab, size=(rows, length)), domain)


@pytest.mark.parametrize("n_domains", [1, 8, 100])
def test_uniform_domains_give_log2_k_bits(n_domains):
    meter, rng = DiversityMeter(window=20), np.random.default_rng(0)
    for _ in range(20):
        meter.update(random_batch(rng, rows=128, n_domains=n_domains))
    out = meter.compute()
    # 2560 draws (one domain per row): the plug-in estimate's bias is ~(K-1)/(2N ln 2) bits.
    assert out["domain_entropy_bits"] == pytest.approx(np.log2(n_domains), abs=0.05)
    assert out["effective_domains"] == pytest.approx(n_domains, rel=0.04)
    assert out["domains_in_window"] == n_domains


def test_skewed_domains_count_as_fewer_effective_domains():
    meter = DiversityMeter()
    domain = np.array([[0] * 7 + [1]] * 4)  # p = (7/8, 1/8)
    meter.update(batch(np.arange(32).reshape(4, 8), domain))
    expected = -(7 / 8 * np.log2(7 / 8) + 1 / 8 * np.log2(1 / 8))
    assert meter.compute()["domain_entropy_bits"] == pytest.approx(expected)
    assert 1.0 < meter.compute()["effective_domains"] < 2.0


def test_positions_without_a_domain_are_ignored():
    meter = DiversityMeter()
    meter.update(batch(np.arange(8).reshape(2, 4), [[3, 3, -1, -1], [-1, 3, 3, -1]]))
    out = meter.compute()
    assert out["domain_entropy_bits"] == 0.0 and out["domains_in_window"] == 1


def test_window_slides_but_domains_seen_accumulate():
    meter = DiversityMeter(window=2)
    for d in range(5):
        meter.update(batch(np.full((2, 4), d), np.full((2, 4), d)))
    out = meter.compute()
    assert out["domains_in_window"] == 2, "only the last two batches are in the window"
    assert out["domains_seen"] == 5


def test_distinct_ngram_ratio_separates_repetitive_from_varied_text():
    repetitive, varied = DiversityMeter(), DiversityMeter()
    repetitive.update(batch(np.tile([1, 2], (8, 8))))
    varied.update(batch(np.arange(128).reshape(8, 16)))
    assert varied.compute()["distinct_2gram_ratio"] == 1.0
    assert varied.compute()["distinct_3gram_ratio"] == 1.0
    # Rows of 1 2 1 2 ...: two distinct bigrams among 8 * 15.
    assert repetitive.compute()["distinct_2gram_ratio"] == pytest.approx(2 / 120)
    assert repetitive.compute()["distinct_3gram_ratio"] == pytest.approx(2 / 112)


def test_ngrams_do_not_span_rows():
    meter = DiversityMeter()
    meter.update(batch([[1, 2], [3, 4]]))
    assert meter.compute()["distinct_2gram_ratio"] == 1.0
    assert "distinct_3gram_ratio" not in meter.compute(), "rows of 2 tokens hold no 3-gram"


def test_repetition_factor_counts_how_often_sequences_recur():
    meter, rng = DiversityMeter(window=6), np.random.default_rng(1)
    fresh, repeated = random_batch(rng), random_batch(rng)
    meter.update(fresh)
    assert meter.compute()["repetition_factor"] == 1.0
    for _ in range(5):
        meter.update(repeated)
    assert meter.compute()["repetition_factor"] == pytest.approx(6 * 32 / (32 + 32))


def test_item_vectors_distinguish_sequences_with_equal_tokens():
    ids = np.zeros((4, 3), dtype=np.int64)
    vectors = np.random.default_rng(2).standard_normal((4, 3, 5)).astype(np.float32)
    meter = DiversityMeter()
    meter.update(batch(ids, item_vectors=vectors))
    assert meter.compute()["repetition_factor"] == 1.0


def test_documents_and_fragment_length_from_doc_ids():
    doc_id = np.array([[0, 0, 0, 1, 1, 1, -1, -1],
                       [2, 2, 2, 2, 3, 3, 3, 3]])  # fmt: skip
    meter = DiversityMeter()
    meter.update(batch(np.arange(16).reshape(2, 8), doc_id=doc_id))
    out = meter.compute()
    assert out["docs_per_sequence"] == 2.0
    assert out["fragment_length"] == pytest.approx(14 / 4)
    # A document cut into two pieces of one sequence is one document but two fragments.
    meter = DiversityMeter()
    meter.update(batch(np.arange(8).reshape(1, 8), doc_id=np.array([[5, 5, 6, 6, 5, 5, 6, 6]])))
    assert meter.compute()["docs_per_sequence"] == 2.0
    assert meter.compute()["fragment_length"] == 2.0
    assert "docs_per_sequence" not in DiversityMeter().compute()


def test_source_stats_are_averaged_over_the_window_and_nan_is_refused():
    meter = DiversityMeter(window=2)
    ids = np.arange(8).reshape(2, 4)
    for value in (0.0, 0.5, 1.0):
        meter.update(batch(ids), extra={"burstiness": value})
    assert meter.compute()["burstiness"] == 0.75
    with pytest.raises(ValueError, match="burstiness"):
        meter.update(batch(ids), extra={"burstiness": float("nan")})
    with pytest.raises(ValueError, match="collides"):
        meter.update(batch(ids), extra={"repetition_factor": 1.0})


def test_empty_meter_reports_nothing():
    assert DiversityMeter().compute() == {}
    with pytest.raises(ValueError, match="window=0"):
        DiversityMeter(window=0)


def _window_of(rows_per_batch: list[np.ndarray]) -> dict[str, float]:
    meter = DiversityMeter(window=len(rows_per_batch))
    for ids in rows_per_batch:
        meter.update(batch(ids))
    return meter.compute()


def test_vendi_score_counts_distinct_sequences_and_sees_near_duplicates():
    rng = np.random.default_rng(0)
    one = np.tile(rng.integers(50_000, size=(1, 64)), (32, 1))
    assert _window_of([one])["vendi_score"] == pytest.approx(1.0, abs=1e-3)
    # k distinct sequences over disjoint vocabularies, repeated: an effective number of ~k.
    for k in (2, 8):
        rows = np.concatenate([np.arange(64) + 1000 * i for i in range(k)]).reshape(k, 64)
        assert _window_of([np.repeat(rows, 32 // k, axis=0)])["vendi_score"] == pytest.approx(k, rel=0.05)
    # One token changed per copy: exact-repeat counting sees 32 distinct rows, Vendi sees ~1.
    near = one.copy()
    near[np.arange(32), rng.integers(64, size=32)] = rng.integers(50_000, size=32)
    out = _window_of([near])
    assert out["repetition_factor"] == pytest.approx(1.0) and out["vendi_score"] < 1.5
    assert _window_of([rng.integers(50_000, size=(32, 64))])["vendi_score"] > 25


def test_compression_ratio_is_high_for_repetitive_text():
    rng = np.random.default_rng(1)
    varied = _window_of([rng.integers(30_000, size=(32, 64))])["compression_ratio"]
    repetitive = _window_of([np.tile(rng.integers(30_000, size=(1, 64)), (32, 1))])["compression_ratio"]
    assert varied < 1.5 < 10 < repetitive


def _corpus(docs: list[tuple[int, list[int]]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    tokens = np.concatenate([np.asarray(t) for _, t in docs])
    offsets = np.concatenate([[0], np.cumsum([len(t) for _, t in docs])])
    return tokens, offsets, np.array([d for d, _ in docs])


def test_term_bridges_are_documents_naming_another_domains_terms():
    from data_mixers.diversity import term_bridge_documents

    rng = np.random.default_rng(2)
    common = list(range(20))  # function words: in most documents, anchored nowhere
    docs = []
    for d in range(4):
        for n in range(10):
            name = [1000 + 100 * d + 2 * n, 1001 + 100 * d + 2 * n]  # a name that lives in d
            docs += [(d, [*rng.choice(common, 12), *name, *rng.choice(common, 12)])
                     for _ in range(8)]
    plain = len(docs)
    # Domain 0 documents that mention one of domain 2's names: the bridges.
    docs += [(0, [*rng.choice(common, 12), 1200, 1201, *rng.choice(common, 12)]) for _ in range(2)]
    bridge = term_bridge_documents(*_corpus(docs))
    assert not bridge[:plain].any() and bridge[plain:].all()
    # One domain only: nothing to bridge to.
    assert not term_bridge_documents(*_corpus([(0, t) for _, t in docs])).any()


@pytest.mark.slow
def test_world_bridge_density_rises_with_bridges_and_ignores_packing(tmp_path):
    from tests.conftest import compose_cfg

    def world(bridge_density: float):
        from hydra.utils import instantiate

        cfg = compose_cfg(["data=world", f"data.source.bridge_density={bridge_density}",
                           "data.source.entities_per_domain=32", f"paths.cache_dir={tmp_path}"])
        sampler = instantiate(cfg.data, _convert_="all")
        sampler.prepare()
        return sampler

    none, some = world(0.0), world(0.3)
    assert some.doc_term_bridge.mean() > 2 * none.doc_term_bridge.mean()
    labelled = some.doc_bridge
    assert some.doc_term_bridge[labelled].mean() > 4 * some.doc_term_bridge[~labelled].mean()
    stats = none.batch_stats(none.batch(0, 32))
    # Several documents share every window (cross-domain packing), yet no bridge is claimed.
    assert stats["cross_domain_rows"] > 0.5 and stats["bridge_density"] < 0.3
    assert stats["bridge_doc_rows"] == 0.0
