"""Topology on any corpus: on a local multi-domain text corpus (data=hf with a domain column) the
topology points come from every domain's held-out documents, every metric is defined, and the
representation-side bridge density (kNN edges joining two domains) is logged beside the data-side
one."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from tests.conftest import compose_cfg
from trainer.train import train

DOMAINS = ("cooking", "sailing", "algebra", "botany", "opera")
WORDS = {d: [f"{d[:3]}{i}" for i in range(12)] for d in DOMAINS}


def corpus(path, docs_per_domain=12):
    rng = np.random.default_rng(0)
    rows = []
    for d in DOMAINS:
        for i in range(docs_per_domain):
            words = rng.choice(WORDS[d], size=int(rng.integers(20, 60)))
            rows.append({"body": f"Note {i} on {d}: " + " ".join(words) + ".", "topic": d})
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


@pytest.mark.slow
def test_a_multi_domain_text_corpus_logs_defined_topology(tmp_path):
    data = corpus(tmp_path / "notes.jsonl")
    run = tmp_path / "run"
    summary = train(compose_cfg([
        "pl=cpu", "progress=none", "data=hf", f"data.source.data_files={data}",
        "data.source.text_column=body", "data.source.domain_column=topic", "data.seq_len=32",
        "data.tokenizer.vocab_size=320", "model=gpt_tiny", "model.n_layer=1", "model.d_model=32",
        "batch.global_size=8", "budget.tokens=2560", "optim.warmup_steps=2",
        "callbacks.topology.every_n_steps=2", "callbacks.topology.n_points=64",
        "callbacks.topology.expensive_per_decade=4", "callbacks.probes.every_n_steps=5",
        f"paths.cache_dir={tmp_path / 'cache'}",
    ], run))
    assert summary["status"] == "completed"
    assert not [e for e in summary["invalid_metrics"] if e["series"].startswith("topo/layer")], \
        summary["invalid_metrics"]
    with (run / "csv" / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    logged = {k for r in rows for k, v in r.items() if v not in ("", None)}
    for key in ("topo/layer1/erank", "topo/layer1/pr", "topo/layer1/knn_components",
                "topo/layer1/twonn", "topo/layer1/h0_total", "topo/layer1/knn_cross_domain",
                "topo/attn0/head0/entropy", "data/bridge_density"):
        assert key in logged, key
    cross = [float(r["topo/layer1/knn_cross_domain"]) for r in rows if r.get("topo/layer1/knn_cross_domain")]
    assert all(0.0 <= c <= 1.0 for c in cross) and len(cross) >= 2
