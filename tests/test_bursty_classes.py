"""The bursty-classes source: stateless sampling, layout, knobs that move what they claim, probes
that separate in-context from in-weights answers, curricula, and errors that name the key."""

import inspect
import itertools
from pathlib import Path

import numpy as np
import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf
from scipy import stats as stats_module

from data_mixers.base import DataConfigError
from data_mixers.curriculum import Ramp, Stages
from data_mixers.diversity import DiversityMeter
from data_mixers.samplers.bursty_classes import BurstyClasses

CONF = Path(__file__).resolve().parent.parent / "conf"


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def stats(source: BurstyClasses, steps=range(4), batch=64) -> dict[str, float]:
    """batch_stats averaged over a few batches."""
    per_batch = [source.batch_stats(source.batch(s, batch)) for s in steps]
    return {k: float(np.mean([b[k] for b in per_batch])) for k in per_batch[0]}


@pytest.mark.parametrize("item_mode", ["token", "vector"])
def test_same_seed_same_batches_other_seed_other_batches(item_mode):
    a = BurstyClasses(item_mode=item_mode, n_classes=64, seed=1).batch(7, 16)
    b = BurstyClasses(item_mode=item_mode, n_classes=64, seed=1).batch(7, 16)
    c = BurstyClasses(item_mode=item_mode, n_classes=64, seed=2).batch(7, 16)
    assert same(a, b)
    assert not np.array_equal(a["domain"], c["domain"])


def test_resume_gives_the_batch_an_uninterrupted_run_sees():
    run = BurstyClasses(n_classes=64, p_bursty=0.5, seed=3)
    uninterrupted = [run.batch(step, 8) for step in range(6)]
    resumed = BurstyClasses(n_classes=64, p_bursty=0.5, seed=3)
    assert same(resumed.batch(5, 8), uninterrupted[5])
    assert not same(uninterrupted[4], uninterrupted[5])


@pytest.mark.parametrize("item_mode", ["token", "vector"])
def test_ranks_take_disjoint_halves_of_the_global_batch(item_mode):
    source = BurstyClasses(item_mode=item_mode, n_classes=64, seed=4)
    whole = source.batch(3, 8)
    halves = [source.batch(3, 8, rank=r, world_size=2) for r in (0, 1)]
    assert same(whole, {k: np.concatenate([h[k] for h in halves]) for k in whole})
    with pytest.raises(DataConfigError, match="batch.global_size=9"):
        source.batch(3, 9, rank=0, world_size=2)


@pytest.mark.parametrize("item_mode", ["token", "vector"])
def test_any_row_range_draws_the_rows_the_whole_batch_holds(item_mode):
    # All rows of a step come from one vectorised draw: a row must not depend on where the
    # requested range starts or how long it is (4 ranks, odd splits, a single row).
    source = BurstyClasses(item_mode=item_mode, n_classes=64, p_bursty=0.5, seed=4)
    whole = source.batch(3, 16)
    quarters = [source.batch(3, 16, rank=r, world_size=4) for r in range(4)]
    assert same(whole, {k: np.concatenate([q[k] for q in quarters]) for k in whole})
    for start, stop in [(0, 1), (5, 6), (3, 10), (15, 16)]:
        assert same(source.rows(3, start, stop), {k: v[start:stop] for k, v in whole.items()})
    assert not same(source.rows(4, 0, 16), whole), "another step, other rows"


def test_query_and_iid_classes_follow_the_zipf_weights():
    source = BurstyClasses(n_classes=12, zipf_exponent=1.0, p_bursty=0.0, seed=7)
    domain = np.concatenate([source.batch(step, 256)["domain"] for step in range(30)])
    weights = np.arange(1, 13) ** -1.0
    for name, classes in (("query", domain[:, -1]), ("iid context", domain[:, 0:-1:2].ravel())):
        counts = np.bincount(classes, minlength=12)
        expected = weights / weights.sum() * counts.sum()
        assert stats_module.chisquare(counts, expected).pvalue > 1e-3, name


def test_bursty_contexts_draw_their_other_classes_without_replacement():
    # 5 skewed classes and 4 per context: the draw of the others collides often, so the redraw
    # path runs. Given the query q, the context leaves out one class x; its exact probability
    # under successive sampling without replacement sums over the orders of the other three.
    n = 5
    source = BurstyClasses(
        n_classes=n, zipf_exponent=1.5, pairs_per_seq=8, copies_per_class=2, seed=3
    )
    p = np.arange(1, n + 1) ** -1.5
    p /= p.sum()
    expected = np.zeros((n, n))
    for q in range(n):
        for order in itertools.permutations([c for c in range(n) if c != q], 3):
            prob, left = p[q], 1.0 - p[q]
            for c in order:
                prob, left = prob * p[c] / left, left - p[c]
            expected[q, ({*range(n)} - {q, *order}).pop()] += prob
    domain = np.concatenate([source.batch(step, 512)["domain"] for step in range(40)])
    context, query = domain[:, 0:-1:2], domain[:, -1]
    present = np.zeros((len(domain), n), dtype=bool)
    present[np.arange(len(domain))[:, None], context] = True
    assert np.all(present.sum(1) == 4) and np.all(present[np.arange(len(domain)), query])
    left_out = np.argmin(present, axis=1)
    counts = np.bincount(query * n + left_out, minlength=n * n).reshape(n, n)
    cells = ~np.eye(n, dtype=bool)
    result = stats_module.chisquare(counts[cells], expected[cells] * len(domain))
    assert result.pvalue > 1e-3, (counts, np.round(expected * len(domain)))


def test_vector_noise_is_standard_normal_and_independent_across_rows():
    eps, dim = 1.0, 16
    source = BurstyClasses(item_mode="vector", n_classes=16, item_dim=dim, within_class_noise=eps)
    b = source.batch(0, 512)
    exemplars = b["item_vectors"][:, 0::2].astype(np.float64)
    means = source.class_means[b["domain"][:, 0::2]]
    eta = (exemplars * np.sqrt(1 + eps**2) - means) * np.sqrt(dim) / eps
    assert stats_module.kstest(eta.ravel(), "norm").pvalue > 1e-3
    neighbours = np.corrcoef(eta[:-1].reshape(511, -1).ravel(), eta[1:].reshape(511, -1).ravel())
    assert abs(neighbours[0, 1]) < 0.02, "consecutive rows draw independent noise"


@pytest.mark.parametrize("loss_on", ["query", "all_labels"])
def test_layout_pairs_items_with_their_labels(loss_on):
    source = BurstyClasses(
        n_classes=32, n_labels=4, pairs_per_seq=4, copies_per_class=2, exemplars_per_class=3,
        label_mapping_diversity=1, loss_on=loss_on,
    )  # fmt: skip
    b = source.batch(0, 32)
    assert source.seq_len == 9 and b["input_ids"].shape == (32, 9)
    items, labels = b["input_ids"][:, 0::2], b["input_ids"][:, 1::2]
    assert np.all(items >= 4) and np.all(labels < 4), "labels are 0..n_labels-1, items after them"
    assert np.array_equal((items - 4) // 3, b["domain"][:, 0::2]), "item token -> its class"
    assert np.array_equal(b["domain"][:, 1::2], b["domain"][:, 0:-1:2]), "label has item's class"
    assert np.array_equal(b["targets"][:, 0:-1:2], labels), "each item predicts its label"
    # Under a fixed map the query's answer is its class's label wherever that class appears.
    fixed = dict(zip(b["domain"][:, 0::2].ravel(), b["targets"][:, 0::2].ravel()))
    assert all(fixed[c] == y for c, y in zip(b["domain"][:, -1], b["targets"][:, -1]))
    expected = np.zeros(9)
    expected[-1 if loss_on == "query" else slice(0, None, 2)] = 1.0
    assert np.array_equal(b["loss_mask"], np.tile(expected, (32, 1)))


def test_fresh_maps_leave_the_answer_readable_from_the_context():
    source = BurstyClasses(n_classes=512, label_mapping_diversity=0, p_bursty=1.0)
    b = source.batch(2, 64)
    n = source.pairs_per_seq
    context, query = b["domain"][:, 0 : 2 * n : 2], b["domain"][:, -1]
    shown = b["input_ids"][:, 1 : 2 * n : 2]
    match = context == query[:, None]
    assert np.all(match.sum(1) == source.copies_per_class)
    assert np.array_equal(shown[match], np.repeat(b["targets"][:, -1], source.copies_per_class))


def test_vector_items_are_noisy_copies_of_their_class_mean():
    source = BurstyClasses(item_mode="vector", n_classes=16, item_dim=63, within_class_noise=0.1)
    b = source.batch(0, 16)
    assert source.item_dim == 63 and b["item_vectors"].shape == (16, 17, 63)
    assert np.array_equal(b["item_mask"], np.tile(np.arange(17) % 2 == 0, (16, 1)))
    assert not b["item_vectors"][:, 1::2].any(), "label positions carry no vector"
    vectors = b["item_vectors"][:, 0::2].reshape(-1, 63)
    means = source.class_means[b["domain"][:, 0::2].ravel()]
    norms = np.linalg.norm(vectors, axis=1) * np.linalg.norm(means, axis=1)
    cosine = np.sum(vectors * means, axis=1) / norms
    assert cosine.min() > 0.9, "eps=0.1: an exemplar stays close to its class mean"


def test_p_bursty_moves_measured_burstiness():
    sources = [BurstyClasses(n_classes=512, p_bursty=p) for p in (0.0, 0.5, 1.0)]
    measured = [stats(source)["burstiness"] for source in sources]
    assert measured[0] < 0.05, "iid contexts over 512 classes rarely hold the query's class"
    assert measured[1] == pytest.approx(0.5, abs=0.1)
    assert measured[2] == 1.0
    bursty = stats(BurstyClasses(n_classes=512, p_bursty=1.0, pairs_per_seq=8, copies_per_class=4))
    assert bursty["classes_per_context"] == 2.0


@pytest.mark.parametrize("n_classes", [16, 128])
def test_n_classes_sets_the_measured_class_entropy(n_classes):
    source = BurstyClasses(n_classes=n_classes, p_bursty=0.0)
    meter = DiversityMeter(window=16)
    for step in range(16):
        meter.update(source.batch(step, 64))
    measured = meter.compute()
    assert measured["domains_in_window"] == n_classes
    assert measured["domain_entropy_bits"] == pytest.approx(np.log2(n_classes), abs=0.05)


def test_zipf_exponent_skews_the_classes():
    meter = {}
    for exponent in (0.0, 1.0):
        meter[exponent] = DiversityMeter(window=8)
        source = BurstyClasses(n_classes=256, p_bursty=0.0, zipf_exponent=exponent)
        for step in range(8):
            meter[exponent].update(source.batch(step, 64))
    uniform, skewed = (meter[e].compute()["effective_domains"] for e in (0.0, 1.0))
    assert skewed < 0.6 * uniform


def test_label_mapping_diversity_moves_measured_label_conflicts():
    def conflict(m):
        source = BurstyClasses(n_classes=16, n_labels=4, label_mapping_diversity=m)
        return stats(source)["label_conflict_rate"]

    fixed, few, fresh = conflict(1), conflict(2), conflict(0)
    assert fixed == 0.0, "one fixed map: a class always carries the same label"
    assert few == pytest.approx(0.5 * 0.75, abs=0.08), "2 maps: disagree half the time, x (1 - 1/4)"
    assert fresh == pytest.approx(0.75, abs=0.08), "fresh maps: labels agree only by chance"
    assert conflict(-1) == pytest.approx(fresh, abs=0.08)


def test_icl_probe_needs_the_context_and_iwl_probe_needs_the_weights():
    source = BurstyClasses(n_classes=64, n_labels=8, label_mapping_diversity=1, probe_size=128)
    probes = {p.name: p for p in source.probe_sets()}
    assert set(probes) == {"icl", "iwl"}
    trained = source.batch(0, 256)
    items, answers = trained["domain"][:, 0::2].ravel(), trained["targets"][:, 0::2].ravel()
    trained_label = dict(zip(items, answers))
    n = source.pairs_per_seq
    for name, in_context in (("icl", True), ("iwl", False)):
        p = probes[name]
        rows = np.arange(len(p.answer_positions))
        assert np.all(p.answer_positions == source.seq_len - 1)
        context, query = p.batch["domain"][:, 0 : 2 * n : 2], p.batch["domain"][:, -1]
        assert np.all(np.any(context == query[:, None], 1) == in_context)
        answer = p.batch["targets"][rows, p.answer_positions]
        recalled = np.array([trained_label.get(c, -1) for c in query])
        known = recalled >= 0
        assert known.mean() > 0.5
        if in_context:
            # The query's class shows its new label in the context, never the trained one.
            shown = p.batch["input_ids"][:, 1 : 2 * n : 2][context == query[:, None]]
            copies = (context == query[:, None]).sum(1)
            assert np.array_equal(shown, np.repeat(answer, copies))
            assert not np.any(answer[known] == recalled[known])
        else:
            assert np.array_equal(answer[known], recalled[known])


def test_heldout_classes_never_appear_in_training():
    source = BurstyClasses(n_classes=32, n_heldout_classes=8, probe_size=64)
    probe = {p.name: p for p in source.probe_sets()}["icl_heldout"]
    assert np.all((probe.batch["domain"] >= 32) & (probe.batch["domain"] < 40))
    assert all(source.batch(s, 64)["domain"].max() < 32 for s in range(4))


def test_probes_are_fixed_per_seed():
    first, again = BurstyClasses(seed=5).probe_sets(), BurstyClasses(seed=5).probe_sets()
    other = BurstyClasses(seed=6).probe_sets()
    assert all(same(a.batch, b.batch) for a, b in zip(first, again))
    assert not same(first[0].batch, other[0].batch)


@pytest.mark.parametrize(
    "kwargs,fragment",
    [
        ({"n_classes": 3}, "data.n_classes=3 is smaller than the classes a context needs (4"),
        ({"p_bursty": 1.5}, "data.p_bursty=1.5 must lie in [0, 1]"),
        ({"item_mode": "image"}, "data.item_mode='image'"),
        ({"loss_on": "everything"}, "data.loss_on='everything'"),
        ({"copies_per_class": 3}, "data.copies_per_class=3 must divide data.pairs_per_seq=8"),
        ({"n_heldout_classes": 2}, "data.n_heldout_classes=2 is smaller"),
        ({"label_mapping_diversity": -2}, "data.label_mapping_diversity=-2"),
        ({"n_labels": 1}, "data.n_labels=1"),
        ({"curriculum": Ramp({"p_bursty": {"start": 1.0, "end": 1.2}})},
         "data.p_bursty reaches 1.2 under the curriculum"),
        ({"curriculum": Ramp({"n_classes": {"start": 2, "end": 64}})},
         "data.n_classes reaches 2 under the curriculum"),
        ({"curriculum": Ramp({"pairs_per_seq": {"start": 2, "end": 8}})},
         "data.pairs_per_seq, which"),
    ],
)  # fmt: skip
def test_bad_configuration_names_the_key(kwargs, fragment):
    with pytest.raises(DataConfigError) as err:
        BurstyClasses(**kwargs)
    assert fragment in str(err.value)


def test_all_problems_are_reported_together():
    with pytest.raises(DataConfigError) as err:
        BurstyClasses(p_bursty=-0.1, zipf_exponent=-1.0)
    assert "data.p_bursty" in str(err.value) and "data.zipf_exponent" in str(err.value)


def test_curriculum_stages_switch_burstiness_and_mapping_diversity():
    stages = Stages([{"until": 0.5, "p_bursty": 0.0, "label_mapping_diversity": 1},
                     {"until": 1.0, "p_bursty": 1.0, "label_mapping_diversity": 0}])  # fmt: skip
    source = BurstyClasses(n_classes=16, p_bursty=0.5, curriculum=stages)
    with pytest.raises(RuntimeError, match="bind"):
        source.batch(0, 8)
    source.bind(total_steps=100)
    assert source.knobs_at(10)["p_bursty"] == 0.0 and source.knobs_at(60)["p_bursty"] == 1.0
    early, late = stats(source, range(0, 4)), stats(source, range(60, 64))
    assert early["burstiness"] < 0.7 and late["burstiness"] == 1.0
    assert early["label_conflict_rate"] == 0.0 and late["label_conflict_rate"] > 0.5


def test_curriculum_ramps_the_class_count_within_one_vocabulary():
    ramp = Ramp({"n_classes": {"start": 8, "end": 256}}, shape="cosine")
    source = BurstyClasses(n_classes=64, curriculum=ramp)
    source.bind(total_steps=1000)
    assert source.vocab_size == source.n_labels + 256, "vocabulary covers the most classes reached"
    assert source.knobs_at(0)["n_classes"] == 8 and source.knobs_at(1000)["n_classes"] == 256
    assert source.batch(0, 64)["domain"].max() < 8
    assert source.batch(999, 64)["domain"].max() >= 64


@pytest.mark.parametrize("item_mode", ["token", "vector"])
def test_data_config_instantiates_with_every_knob_documented(item_mode):
    text = (CONF / "data" / "bursty_classes.yaml").read_text()
    cfg = OmegaConf.load(CONF / "data" / "bursty_classes.yaml")
    cfg.seed, cfg.item_mode = 0, item_mode
    source = instantiate(cfg, curriculum=None)
    knobs = set(inspect.signature(BurstyClasses).parameters) - {"seed", "curriculum"}
    assert set(cfg) - {"_target_", "seed"} == knobs
    for knob in knobs:
        line = next(line for line in text.splitlines() if line.startswith(f"{knob}:"))
        assert "#" in line, f"data.{knob} has no comment"
    assert source.batch(0, 4)["input_ids"].shape == (4, source.seq_len)


def test_probe_sets_carry_their_chance_level_and_the_copy_plateau():
    """What the end-of-run report and elab-plot draw beside a capability: a uniform guess among
    the labels, and (in-context probe) copying some label of the context."""
    sampler = BurstyClasses(n_classes=32, pairs_per_seq=8, copies_per_class=2, n_labels=8,
                            label_mapping_diversity=1, probe_size=16)
    chance = {p.name: p.meta["chance"] for p in sampler.probe_sets()}
    assert chance["icl"]["acc"] == {"value": 1 / 8, "plateau": 1 / 4}
    assert chance["icl"]["logprob"]["value"] == pytest.approx(-np.log(8))
    assert chance["iwl"]["acc"] == {"value": 1 / 8}
