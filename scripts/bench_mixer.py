"""Sampling + packing throughput of the text mixer, in tokens per second of one process.

Builds (or reuses) the token store of the default world -- and of a local file given with
``--hf-file`` -- then times ``sampler.batch`` under a few knob settings. The training loop must
consume fewer tokens per second than this, or the data path is the bottleneck.

    .venv/bin/python scripts/bench_mixer.py [--seq-len 1024] [--global-batch 64] [--hf-file x.jsonl]
"""

from __future__ import annotations

import argparse
import tempfile
import time

from data_mixers.base import StepSampler
from data_mixers.text_mixer import TextMixer

SETTINGS = {
    "whole documents, packed": {},
    "fragments of 32 tokens": {"fragment_length": 32},
    "4 documents per window": {"docs_per_window": 4},
    "one domain per row, fragments of 64": {"weights_count": "rows", "fragment_length": 64},
}


def measure_mixer_throughput(sampler: StepSampler, global_batch: int, steps: int) -> float:
    """Tokens per second that ``sampler`` emits in one process (after one warm-up step)."""
    sampler.batch(0, global_batch)
    start = time.perf_counter()
    for step in range(1, steps + 1):
        sampler.batch(step, global_batch)
    elapsed = time.perf_counter() - start
    return steps * global_batch * sampler.seq_len / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--global-batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--tokenizer", choices=["byte", "bpe"], default="byte")
    parser.add_argument("--cache-dir", default=None, help="token store cache (default: a temp dir)")
    parser.add_argument("--hf-file", default=None, help="also bench a local json/parquet/text file")
    parser.add_argument("--text-column", default="text")
    args = parser.parse_args()

    tokenizer = (
        {"kind": "byte"} if args.tokenizer == "byte" else {"kind": "bpe", "vocab_size": 1024}
    )
    cache_dir = args.cache_dir or tempfile.mkdtemp(prefix="bench_mixer_")
    sources = {"world": {"kind": "world"}}
    if args.hf_file:
        sources["hf"] = {"kind": "hf", "data_files": args.hf_file, "text_column": args.text_column}
    for source_name, source in sources.items():
        start = time.perf_counter()
        base = TextMixer(
            source=source, seq_len=args.seq_len, tokenizer=tokenizer, cache_dir=cache_dir
        )
        base.prepare()
        facts = base.describe()
        print(
            f"[{source_name}] token store: {facts['documents']} documents, {facts['tokens']} "
            f"tokens, ready in {time.perf_counter() - start:.2f} s"
        )
        for label, knobs in SETTINGS.items():
            sampler = TextMixer(
                source=source,
                seq_len=args.seq_len,
                tokenizer=tokenizer,
                cache_dir=cache_dir,
                **knobs,
            )
            rate = measure_mixer_throughput(sampler, args.global_batch, args.steps)
            print(
                f"[{source_name}] {label:38s} {rate / 1e6:8.1f} M tokens/s per process "
                f"(seq_len {args.seq_len}, global batch {args.global_batch})"
            )


if __name__ == "__main__":
    main()
