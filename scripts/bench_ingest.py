"""Corpus ingest: the token store's build rate beside the raw ``tokenizers`` batch encode of the same
text, and the time to reopen the cached store.

Generates a seeded synthetic corpus in a temporary directory (default 100 MB of text over 8
domains, one jsonl file per domain, each domain with its own Zipf-distributed vocabulary), trains
a byte-level BPE on a 4 MB sample (timed apart: the store reuses a cached tokenizer), then times

1. raw: ``tokenizers``' ``encode_batch`` over every text, already in memory, in batches of the
   size the store uses, reading each encoding's ids;
2. ingest: ``open_or_build`` on ``HFSource(data_files=...)``: load the files with ``datasets``,
   tokenise, write ``tokens.bin`` and the index arrays, hash them;
3. reopen: ``open_or_build`` again (sizes and modification times checked) and with
   ``verify=True`` (every file re-hashed).

    .venv/bin/python scripts/bench_ingest.py [--megabytes 100] [--domains 8] [--streaming]

Target: the store costs <= 20% on top of the raw encode (ingest / raw >= 0.83).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

SYLLABLES = ["ka", "to", "ri", "mu", "se", "la", "po", "ne", "di", "vu", "an", "el", "or", "is",
             "qu", "th", "ch", "st", "pr", "gl", "ba", "fe", "zo", "wi"]  # fmt: skip


def domain_vocabulary(rng: np.random.Generator, size: int) -> list[str]:
    """``size`` distinct pseudo-words of 1-4 syllables, drawn from a domain-specific syllable
    subset, so domains differ in what their text looks like."""
    syllables = rng.choice(SYLLABLES, size=12, replace=False)
    words: set[str] = set()
    while len(words) < size:
        n = rng.integers(1, 5)
        words.add("".join(rng.choice(syllables, size=n)))
    return sorted(words)


def write_corpus(root: Path, megabytes: float, n_domains: int, seed: int) -> tuple[list[str], int]:
    """One ``<domain>.jsonl`` per domain under ``root`` totalling ``megabytes`` MB of text;
    returns the files and the number of documents."""
    rng = np.random.default_rng(seed)
    per_domain = int(megabytes * 1e6 / n_domains)
    files, n_docs = [], 0
    for d in range(n_domains):
        vocab = domain_vocabulary(rng, 4000)
        # Sentence ends: every word also exists with a full stop, chosen 1 time in 12.
        table = np.array(vocab + [w.capitalize() + "." for w in vocab], dtype=object)
        weights = 1.0 / np.arange(1, len(vocab) + 1) ** 1.1
        cdf = np.cumsum(weights) / weights.sum()
        path = root / f"domain_{d}.jsonl"
        written = 0
        with open(path, "w") as out:
            while written < per_domain:
                words = np.searchsorted(cdf, rng.random(200_000), side="right")
                words += len(vocab) * (rng.random(len(words)) < 1 / 12)
                lengths = np.maximum(20, rng.lognormal(np.log(350), 0.6, size=2000).astype(int))
                bounds = np.cumsum(lengths)
                bounds = bounds[bounds < len(words)]
                for start, stop in zip(np.r_[0, bounds[:-1]], bounds):
                    text = " ".join(table[words[start:stop]])
                    out.write(json.dumps({"text": text, "domain": f"domain_{d}"}) + "\n")
                    written += len(text)
                    n_docs += 1
                    if written >= per_domain:
                        break
        files.append(str(path))
    return files, n_docs


class Timer:
    """Wall seconds and CPU seconds of this process (all threads: the tokenizer's too). On a
    shared machine the wall time moves with the load; the CPU time is the work done."""

    def __enter__(self) -> Timer:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu


def in_batches(texts: list[str], batch_chars: int) -> list[list[str]]:
    """``texts`` grouped as the token store groups documents for one encode call."""
    batches, batch, size = [], [], 0
    for text in texts:
        batch.append(text)
        size += len(text)
        if size >= batch_chars:
            batches.append(batch)
            batch, size = [], 0
    return batches + [batch]


def raw_encode(method, batches: list[list[str]]) -> tuple[Timer, int]:
    """Timer and token count of ``method`` (a ``tokenizers`` batch encode) over in-memory
    batches, reading every encoding's ids as any consumer of them must."""
    n_tokens = 0
    with Timer() as timer:
        for batch in batches:
            n_tokens += sum(len(e.ids) for e in method(batch))
    return timer, n_tokens


def report(label: str, timer: Timer, n_tokens: int, note: str = "") -> None:
    print(
        f"{label:34s} {n_tokens / timer.wall / 1e6:6.2f} M tokens/s wall, "
        f"{n_tokens / timer.cpu / 1e6:6.2f} M tokens per CPU-second{note}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=float, default=100.0)
    parser.add_argument("--domains", type=int, default=8)
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--streaming", action="store_true", help="stream the files (datasets)")
    parser.add_argument("--rounds", type=int, default=2, help="timings kept: the best round's")
    parser.add_argument("--keep", default=None, help="work in this directory and keep it")
    args = parser.parse_args()

    from data_mixers import token_store
    from data_mixers.sources.hf import HFSource
    from data_mixers.tokenizer import BPETokenizer, _train_bpe

    root = Path(args.keep or tempfile.mkdtemp(prefix="bench_ingest_"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        start = time.perf_counter()
        files, n_docs = write_corpus(root, args.megabytes, args.domains, args.seed)
        size = sum(os.path.getsize(f) for f in files)
        print(
            f"corpus: {n_docs} documents in {len(files)} domains, {size / 1e6:.1f} MB of jsonl "
            f"(generated in {time.perf_counter() - start:.1f} s)"
        )
        texts = [json.loads(line)["text"] for f in files for line in open(f)]
        sample = texts[:: max(1, int(sum(map(len, texts)) / 4e6))]
        start = time.perf_counter()
        hf_tok = _train_bpe(sample, args.vocab_size)
        print(
            f"BPE (vocab {args.vocab_size}) trained on {sum(map(len, sample)) / 1e6:.1f} MB "
            f"in {time.perf_counter() - start:.1f} s"
        )
        tokenizer = BPETokenizer(hf_tok, args.vocab_size, "bench_ingest")
        batches = in_batches(texts, token_store.ENCODE_CHUNK_CHARS)
        del texts, sample
        start = time.perf_counter()
        import datasets  # noqa: F401 - a fixed cost, timed apart from the ingest rate

        print(f"import datasets: {time.perf_counter() - start:.1f} s (once per process)")

        # Rounds alternate raw encodes and ingests, and the best of each is kept: on a shared
        # machine other processes only ever slow a timing down. Each ingest starts cold (no
        # datasets cache, no store).
        best: dict[str, Timer] = {}
        for _ in range(args.rounds):
            timer, n_raw = raw_encode(hf_tok.encode_batch, batches)
            best["raw"] = min(best.get("raw", timer), timer, key=lambda t: t.wall)
            shutil.rmtree(root / "hf_cache", ignore_errors=True)
            shutil.rmtree(root / "cache", ignore_errors=True)
            source = HFSource(
                data_files=files,
                text_column="text",
                streaming=args.streaming,
                load_kwargs={"cache_dir": str(root / "hf_cache")},
            )
            with Timer() as timer:
                store = token_store.open_or_build(source, tokenizer, root / "cache")
            best["ingest"] = min(best.get("ingest", timer), timer, key=lambda t: t.wall)
            assert store.n_tokens == n_raw, (store.n_tokens, n_raw)
        mb = sum(p.stat().st_size for p in store.path.iterdir()) / 1e6
        print(f"best of {args.rounds} rounds, {n_raw} tokens:")
        report("raw tokenizers encode_batch", best["raw"], n_raw)
        report(
            "ingest (datasets -> token store)",
            best["ingest"],
            n_raw,
            f" ({store.n_documents} documents -> {mb:.1f} MB store, "
            f"{'streaming' if args.streaming else 'via the arrow cache'})",
        )
        print(
            f"ingest rate / raw encode_batch rate = {best['raw'].wall / best['ingest'].wall:.2f} "
            f"(CPU-time ratio {best['raw'].cpu / best['ingest'].cpu:.2f}; target >= 0.83: the "
            "store costs <= 20% on top)"
        )
        for label, verify in (("reopen (size + mtime)", False), ("reopen, data.verify=true", True)):
            start = time.perf_counter()
            token_store.open_or_build(source, tokenizer, root / "cache", verify=verify)
            print(f"{label:33s} {time.perf_counter() - start:6.3f} s")
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
