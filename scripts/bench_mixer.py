"""Sampling + packing throughput of the mixers, in tokens per second of one process, beside the
rate at which the training loop consumes tokens.

Builds (or reuses) the token store of the default world -- and of a local file given with
``--hf-file`` -- then times ``sampler.batch`` under a few knob settings; then the embedded default
(bursty classes) sampler, and a training loop of the default model on it. The training loop must
consume fewer tokens per second than the sampler emits, or the data path is the bottleneck.

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


def measure_mixer_throughput(
    sampler: StepSampler, global_batch: int, steps: int, repeats: int = 5
) -> tuple[float, float]:
    """Tokens per second that ``sampler`` emits in one process (after one warm-up step): the best
    of ``repeats`` timings of ``steps`` batches, as timeit advises, since on a shared machine
    other processes only ever slow a timing down; and tokens per CPU-second over all of them
    (the load moves it much less than wall time)."""
    sampler.batch(0, global_batch)
    best, cpu = float("inf"), time.process_time()
    for _ in range(repeats):
        start = time.perf_counter()
        for step in range(1, steps + 1):
            sampler.batch(step, global_batch)
        best = min(best, time.perf_counter() - start)
    tokens = steps * global_batch * sampler.seq_len
    return tokens / best, repeats * tokens / (time.process_time() - cpu)


def default_run_rates(steps: int) -> tuple[tuple[float, float], tuple[float, float], float]:
    """(sampler rates, the same sampler's in vector item mode, training-loop tokens/s) of the
    embedded default config, one process. A default batch takes ~0.1 ms: the sampler is timed
    in windows of 20 batches, short enough that one often runs undisturbed on a busy machine."""
    import torch
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from trainer.data import to_tensors
    from trainer.errors import CONF_DIR
    from trainer.module import masked_cross_entropy

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=["paths.output_dir=unused"])
    torch.set_num_threads(cfg.threads)
    sampler = instantiate(cfg.data, curriculum=None, _convert_="all")
    windows = max(5, steps // 20 * 5)
    sampling = measure_mixer_throughput(sampler, cfg.batch.global_size, 20, windows)
    vector = instantiate(cfg.data, item_mode="vector", curriculum=None, _convert_="all")
    vector_sampling = measure_mixer_throughput(vector, cfg.batch.global_size, 20, windows)
    model = instantiate(
        cfg.model,
        vocab_size=sampler.vocab_size,
        max_seq_len=sampler.seq_len,
        item_dim=sampler.item_dim,
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr)
    batches = [to_tensors(sampler.batch(s, cfg.batch.global_size)) for s in range(steps + 1)]
    start = None
    for i, batch in enumerate(batches):
        if i == 1:
            start = time.perf_counter()
        logits = model(batch["input_ids"], batch.get("item_vectors"), batch.get("item_mask"))
        loss = masked_cross_entropy(logits, batch["targets"], batch["loss_mask"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    training = steps * cfg.batch.global_size * sampler.seq_len / (time.perf_counter() - start)
    return sampling, vector_sampling, training


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
            rate, _ = measure_mixer_throughput(sampler, args.global_batch, args.steps)
            print(
                f"[{source_name}] {label:38s} {rate / 1e6:8.1f} M tokens/s per process "
                f"(seq_len {args.seq_len}, global batch {args.global_batch})"
            )
    sampling, vector_sampling, training = default_run_rates(args.steps * 4)
    print(
        f"[default] bursty_classes sampler {sampling[0] / 1e6:.2f} M tokens/s per process "
        f"({sampling[1] / 1e6:.2f} M per CPU-second); the default model trains on "
        f"{training / 1e6:.3f} M tokens/s: the data path is {sampling[0] / training:.0f}x faster "
        "than the loop that consumes it"
    )
    print(
        f"[default] the same sampler with item_mode=vector (Reddy 2024): "
        f"{vector_sampling[0] / 1e6:.2f} M tokens per second per process "
        f"({vector_sampling[1] / 1e6:.2f} M per CPU-second)"
    )


if __name__ == "__main__":
    main()
