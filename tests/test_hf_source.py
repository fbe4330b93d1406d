"""The Hugging Face source on local files: domains from a column or from files, clear errors."""

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import pytest  # noqa: E402

from data_mixers.base import DataConfigError  # noqa: E402
from data_mixers.sources.hf import HFSource  # noqa: E402
from data_mixers.text_mixer import TextMixer  # noqa: E402

TOPICS = ("cooking", "sailing", "algebra")


def rows(n=30):
    return [{"body": f"Note {i} on {TOPICS[i % 3]}: " + "word " * (5 + i % 7), "topic": TOPICS[i % 3]}
            for i in range(n)]


@pytest.fixture
def files(tmp_path):
    data = rows()
    jsonl = tmp_path / "notes.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in data))
    parquet = tmp_path / "notes.parquet"
    pq.write_table(pa.Table.from_pylist(data), parquet)
    per_topic = []
    for topic in TOPICS:
        path = tmp_path / f"{topic}.parquet"
        pq.write_table(pa.Table.from_pylist([r for r in data if r["topic"] == topic]), path)
        per_topic.append(str(path))
    return {"jsonl": str(jsonl), "parquet": str(parquet), "per_topic": per_topic,
            "cache": {"cache_dir": str(tmp_path / "hf_cache")}}


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_domain_column_becomes_the_domain(files, fmt):
    source = HFSource(data_files=files[fmt], text_column="body", domain_column="topic",
                      load_kwargs=files["cache"])
    docs = list(source.documents())
    assert len(docs) == 30
    assert all(d.domain in d.text for d in docs)
    assert [d.text for d in docs] == [r["body"] for r in rows()]


def test_one_domain_per_file_without_a_domain_column(files, tmp_path):
    m = TextMixer(source={"kind": "hf", "data_files": files["per_topic"], "text_column": "body",
                          "load_kwargs": files["cache"]}, seq_len=32, cache_dir=tmp_path, seed=1)
    m.prepare()
    assert m.domain_names == [f"{t}.parquet" for t in TOPICS]
    b = m.batch(0, 16)
    for d, topic in enumerate(TOPICS):
        text = m.tokenizer.decode(b["input_ids"][b["domain"] == d])
        assert topic in text and not set(TOPICS) - {topic} & set(text.split())


def test_text_files_and_streaming_with_a_cap(tmp_path):
    path = tmp_path / "lines.txt"
    path.write_text("\n".join(f"line number {i}" for i in range(50)))
    source = HFSource(data_files=str(path), streaming=True, max_documents=7)
    docs = list(source.documents())
    assert [d.text for d in docs] == [f"line number {i}" for i in range(7)]
    assert {d.domain for d in docs} == {"lines.txt"}


def test_mixer_over_world_and_hf_together(files, tmp_path):
    world = {"kind": "world", "n_domains": 2, "entities_per_domain": 4}
    hf = {"kind": "hf", "data_files": files["parquet"], "text_column": "body",
          "domain_column": "topic", "load_kwargs": files["cache"]}
    m = TextMixer(source=[world, hf], seq_len=64, cache_dir=tmp_path, fragment_length=8)
    m.prepare()
    assert m.domain_names == ["world:domain_0", "world:domain_1",
                              *(f"hf:{t}" for t in TOPICS)]
    seen = np.unique(np.concatenate([m.batch(s, 32)["domain"].ravel() for s in range(3)]))
    assert set(seen) - {-1} == set(range(5))
    assert {p.name for p in m.probe_sets()} >= {"world_facts"}


def test_edited_file_rebuilds_the_store(files, tmp_path):
    def build():
        m = TextMixer(source={"kind": "hf", "data_files": files["jsonl"], "text_column": "body",
                              "load_kwargs": files["cache"]}, seq_len=32, cache_dir=tmp_path)
        m.prepare()
        return m.describe()["documents"]

    assert build() == 30
    with open(files["jsonl"], "a") as f:
        f.write("\n" + json.dumps({"body": "one more", "topic": "x"}))
    assert build() == 31


def test_config_errors_name_key_file_and_column(files, tmp_path):
    with pytest.raises(DataConfigError, match=r"data\.source\.data_files.*missing\.jsonl"):
        HFSource(data_files=[files["jsonl"], str(tmp_path / "missing.jsonl")])
    with pytest.raises(DataConfigError, match=r"data\.source\.text_column='text'.*notes\.jsonl"):
        list(HFSource(data_files=files["jsonl"], load_kwargs=files["cache"]).documents())
    with pytest.raises(DataConfigError, match=r"data\.source\.domain_column='genre'.*body"):
        list(HFSource(data_files=files["parquet"], text_column="body", domain_column="genre",
                      load_kwargs=files["cache"]).documents())
    odd = tmp_path / "notes.xml"
    odd.write_text("<a/>")
    with pytest.raises(DataConfigError, match=r"data\.source\.data_files.*builder"):
        HFSource(data_files=str(odd))
    with pytest.raises(DataConfigError, match=r"data\.source"):
        HFSource()
    with pytest.raises(DataConfigError, match=r"data\.source\.path='no/such-dataset'"):
        list(HFSource(path="no/such-dataset").documents())


def test_store_builds_quietly_off_a_terminal_and_verify_rehashes(files, tmp_path, capsys,
                                                                 monkeypatch):
    from data_mixers import token_store

    def mixer(**kwargs):
        spec = {"kind": "hf", "data_files": files["per_topic"], "text_column": "body",
                "load_kwargs": files["cache"]}
        m = TextMixer(source=spec, seq_len=32, cache_dir=tmp_path, **kwargs)
        m.prepare()
        return m

    mixer()
    err = capsys.readouterr().err
    assert "Generating" not in err and "token store" not in err, err
    hashed = []
    real = token_store._sha256
    monkeypatch.setattr(token_store, "_sha256", lambda path: hashed.append(path.name) or real(path))
    assert mixer().describe()["documents"] == 30 and hashed == []
    mixer(verify=True)
    assert "tokens.bin" in hashed
