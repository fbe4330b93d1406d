"""Token store and tokenizers: built once, reused, rebuilt when changed or damaged, never half-made."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from data_mixers import token_store
from data_mixers.base import DataConfigError
from data_mixers.sources.world import WorldSource
from data_mixers.token_store import open_or_build
from data_mixers.tokenizer import ByteTokenizer, build_tokenizer, token_index_at
from tests.conftest import REPO

SMALL = dict(n_domains=2, entities_per_domain=8, seed=0)


class Counting:
    """Wraps a source and counts how often its documents are read (= tokenized)."""

    def __init__(self, source, fail_after=None):
        self.source, self.reads, self.fail_after = source, 0, fail_after
        self.kind = source.kind

    def __getattr__(self, name):
        return getattr(self.source, name)

    def documents(self):
        self.reads += 1
        for i, doc in enumerate(self.source.documents()):
            if self.fail_after is not None and i == self.fail_after:
                raise RuntimeError("interrupted build")
            yield doc


def test_store_round_trips_documents_and_fact_spans(tmp_path):
    world = WorldSource(**SMALL)
    store = open_or_build(world, ByteTokenizer(), tmp_path)
    docs = list(world.documents())
    assert store.n_documents == len(docs) and store.domain_names == world.domain_names()
    tok = ByteTokenizer()
    for i in (0, 7, len(docs) - 1):
        text = tok.decode(store.tokens[store.doc_offsets[i]:store.doc_offsets[i + 1]])
        assert text == docs[i].text
        assert store.domain_names[store.doc_domain[i]] == docs[i].domain
        assert store.doc_bridge[i] == docs[i].bridge
        spans = store.fact_spans[store.fact_offsets[i]:store.fact_offsets[i + 1]]
        for (start, end), (_, c0, c1) in zip(spans, docs[i].facts):
            begin = store.doc_offsets[i]
            assert tok.decode(store.tokens[begin + start:begin + end]) == docs[i].text[c0:c1]


def test_second_open_reuses_the_store_without_tokenizing(tmp_path):
    source = Counting(WorldSource(**SMALL))
    first = open_or_build(source, ByteTokenizer(), tmp_path)
    second = open_or_build(source, ByteTokenizer(), tmp_path)
    assert source.reads == 1
    assert second.path == first.path
    assert second.manifest["built_at"] == first.manifest["built_at"]


def test_changed_config_builds_a_new_store(tmp_path):
    a = open_or_build(WorldSource(**SMALL), ByteTokenizer(), tmp_path)
    b = open_or_build(WorldSource(**{**SMALL, "bridge_density": 0.5}), ByteTokenizer(), tmp_path)
    assert a.path != b.path and a.path.exists()


@pytest.mark.parametrize("damage", ["truncate_tokens", "flip_byte", "garbage_manifest",
                                    "delete_offsets"])
def test_damaged_store_is_detected_and_rebuilt(tmp_path, damage):
    source = Counting(WorldSource(**SMALL))
    original = np.array(open_or_build(source, ByteTokenizer(), tmp_path).tokens)
    path = next((tmp_path / "token_store").iterdir())
    if damage == "truncate_tokens":
        with open(path / "tokens.bin", "r+b") as f:
            f.truncate(100)
    elif damage == "flip_byte":
        data = bytearray((path / "tokens.bin").read_bytes())
        data[10] ^= 0xFF
        (path / "tokens.bin").write_bytes(bytes(data))
    elif damage == "garbage_manifest":
        (path / "manifest.json").write_text("{not json")
    else:
        (path / "doc_offsets.npy").unlink()
    rebuilt = open_or_build(source, ByteTokenizer(), tmp_path)
    assert source.reads == 2
    np.testing.assert_array_equal(np.array(rebuilt.tokens), original)


def test_interrupted_build_leaves_nothing_behind(tmp_path):
    broken = Counting(WorldSource(**SMALL), fail_after=5)
    with pytest.raises(RuntimeError, match="interrupted"):
        open_or_build(broken, ByteTokenizer(), tmp_path)
    assert list((tmp_path / "token_store").iterdir()) == []
    store = open_or_build(WorldSource(**SMALL), ByteTokenizer(), tmp_path)
    assert json.loads((store.path / "manifest.json").read_text())["n_documents"] > 0


# A build that hangs once its temporary dir exists: the test kills it there, as a user would.
HANGING_BUILD = r"""
import sys, time
from data_mixers.sources.world import WorldSource
from data_mixers.token_store import open_or_build
from data_mixers.tokenizer import ByteTokenizer
class Hangs:
    def __init__(self, source):
        self.source, self.kind = source, source.kind
    def __getattr__(self, name):
        return getattr(self.source, name)
    def documents(self):
        print("building", flush=True)
        time.sleep(600)
        yield from ()
open_or_build(Hangs(WorldSource(n_domains=2, entities_per_domain=8, seed=0)), ByteTokenizer(),
              sys.argv[1])
"""


def test_a_killed_builds_temporary_dir_is_removed_by_the_next_build(tmp_path):
    builder = subprocess.Popen([sys.executable, "-c", HANGING_BUILD, str(tmp_path)],
                               env={**os.environ, "PYTHONPATH": str(REPO)},
                               stdout=subprocess.PIPE, text=True)
    assert builder.stdout.readline().strip() == "building"
    builder.kill()
    builder.wait()
    stores = tmp_path / "token_store"
    (left,) = stores.glob(".world-*.tmp")
    live = stores / f".world-x.0.{os.getpid()}@{socket.gethostname()}.tmp"  # a build under way
    live.mkdir()
    store = open_or_build(WorldSource(**SMALL), ByteTokenizer(), tmp_path)
    assert not left.exists(), "the killed build's dir is removed"
    assert live.is_dir(), "a live builder's dir is left alone"
    assert sorted(p.name for p in stores.iterdir()) == sorted([store.path.name, live.name])


def test_bpe_is_trained_once_cached_and_locates_the_answer_token(tmp_path):
    source = Counting(WorldSource(**SMALL))
    tok = build_tokenizer("bpe", 512, sources=[source], cache_dir=tmp_path)
    again = build_tokenizer("bpe", 512, sources=[source], cache_dir=tmp_path)
    assert source.reads == 1
    assert again.config() == tok.config()
    q = source.probe_questions()["world_facts"][0]
    ids, starts = tok.encode_with_offsets([q.text])[0]
    first = token_index_at(starts, q.answer_start)
    assert tok.decode(ids[first:]).strip() == q.text[q.answer_start:]
    assert q.text[q.answer_start:].startswith(tok.decode(ids[first:first + 1]).strip())
    assert tok.decode(ids[:first]).strip() == q.text[:q.answer_start].strip()
    store = open_or_build(source, tok, tmp_path)
    assert store.tokens.max() < tok.vocab_size
    assert len(store.tokens) < 0.6 * sum(len(d.text) for d in source.documents())


def test_corrupt_bpe_cache_is_retrained(tmp_path):
    source = Counting(WorldSource(**SMALL))
    build_tokenizer("bpe", 512, sources=[source], cache_dir=tmp_path)
    cached = next((tmp_path / "tokenizers").iterdir())
    cached.write_text(cached.read_text()[:100])
    build_tokenizer("bpe", 512, sources=[source], cache_dir=tmp_path)
    assert source.reads == 2


@pytest.mark.parametrize("kind, vocab, key", [("bpe", 100, "data.tokenizer.vocab_size"),
                                              ("wordpiece", None, "data.tokenizer.kind"),
                                              ("byte", 1000, "data.tokenizer.vocab_size")])
def test_bad_tokenizer_settings_name_their_key(tmp_path, kind, vocab, key):
    with pytest.raises(DataConfigError, match=key):
        build_tokenizer(kind, vocab, sources=[], cache_dir=tmp_path)


def test_answer_token_is_found_behind_multibyte_characters():
    text = "Q: Où vit Zoë? A: Ålesund"
    answer_start = text.index("Å")
    ids, starts = ByteTokenizer().encode_with_offsets([text])[0]
    first = token_index_at(starts, answer_start)
    assert ByteTokenizer().decode(ids[first:]) == "Ålesund"
    assert ByteTokenizer().decode(ids[:first]) == text[:answer_start]


STORE_FILES = ["tokens.bin", "doc_offsets.npy", "doc_domain.npy", "doc_bridge.npy",
               "fact_offsets.npy", "fact_ids.npy", "fact_spans.npy"]


@pytest.fixture
def hashed(monkeypatch):
    """Names of the store files hashed (= read whole) since the fixture was set up."""
    names = []
    real = token_store._sha256

    def counting(path):
        names.append(path.name)
        return real(path)

    monkeypatch.setattr(token_store, "_sha256", counting)
    return names


def test_reopening_an_unchanged_store_reads_no_file(tmp_path, hashed):
    source = Counting(WorldSource(**SMALL))
    store = open_or_build(source, ByteTokenizer(), tmp_path)
    assert sorted(hashed) == sorted(STORE_FILES), "a build hashes each file once"
    hashed.clear()
    for _ in range(3):
        open_or_build(source, ByteTokenizer(), tmp_path)
    assert hashed == [] and source.reads == 1
    open_or_build(source, ByteTokenizer(), tmp_path, verify=True)
    assert sorted(hashed) == sorted(STORE_FILES) and source.reads == 1
    hashed.clear()
    # Same bytes, new time (a copy, a restore): that file alone is hashed, then its time is kept.
    tokens = store.path / "tokens.bin"
    os.utime(tokens, ns=(tokens.stat().st_atime_ns, tokens.stat().st_mtime_ns + 10**9))
    open_or_build(source, ByteTokenizer(), tmp_path)
    assert hashed == ["tokens.bin"] and source.reads == 1
    open_or_build(source, ByteTokenizer(), tmp_path)
    assert hashed == ["tokens.bin"], "the new time was recorded: no second hash"


def test_verify_catches_damage_that_kept_size_and_time(tmp_path, hashed):
    source = Counting(WorldSource(**SMALL))
    original = np.array(open_or_build(source, ByteTokenizer(), tmp_path).tokens)
    tokens = next((tmp_path / "token_store").iterdir()) / "tokens.bin"
    before = tokens.stat()
    data = bytearray(tokens.read_bytes())
    data[10] ^= 0xFF
    tokens.write_bytes(bytes(data))
    os.utime(tokens, ns=(before.st_atime_ns, before.st_mtime_ns))
    open_or_build(source, ByteTokenizer(), tmp_path)
    assert source.reads == 1, "size and time unchanged: trusted without reading"
    rebuilt = open_or_build(source, ByteTokenizer(), tmp_path, verify=True)
    assert source.reads == 2
    np.testing.assert_array_equal(np.array(rebuilt.tokens), original)


class SomeFactsDropped(Counting):
    """Every third document loses its facts: encode batches mix both kinds of document."""

    def documents(self):
        for i, doc in enumerate(self.source.documents()):
            yield doc if i % 3 else token_store.Document(doc.text, doc.domain, [], doc.bridge)


def test_small_encode_batches_build_the_same_store(tmp_path, monkeypatch):
    whole = open_or_build(SomeFactsDropped(WorldSource(**SMALL)), ByteTokenizer(), tmp_path / "a")
    monkeypatch.setattr(token_store, "ENCODE_CHUNK_CHARS", 300)
    batched = open_or_build(SomeFactsDropped(WorldSource(**SMALL)), ByteTokenizer(), tmp_path / "b")
    assert whole.n_documents > 20 and whole.fact_offsets[-1] > 0
    for name in ("tokens", "doc_offsets", "doc_domain", "fact_offsets", "fact_ids", "fact_spans"):
        np.testing.assert_array_equal(np.array(getattr(whole, name)), getattr(batched, name), name)


@pytest.mark.parametrize("progress, shown", [(True, True), (False, False), (None, False)])
def test_progress_bar_only_when_asked_or_on_a_terminal(tmp_path, capsys, progress, shown):
    open_or_build(WorldSource(**SMALL), ByteTokenizer(), tmp_path, progress=progress)
    err = capsys.readouterr().err
    assert ("token store (world)" in err) == shown, err
