"""GPU throughput and MFU of the ~125M model: bf16, with and without torch.compile, and data
parallel over every visible GPU when there is more than one. One prepared script, a few minutes.

    python scripts/bench_gpu.py                       # on a GPU machine
    python scripts/bench_gpu.py --device cpu --model gpt_tiny --steps 4 --seq-len 64 --batch 4
                                                      # a smoke test of the script itself

Prints one line per configuration: tokens/s, model FLOPs utilization against the GPU's bf16 dense
peak, and peak memory. The multi-device figure comes from a real ``elab-train`` run (pl=ddp) on
synthetic tokens, so it includes Lightning and the data path.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# bf16 dense peak FLOP/s by device name (vendor datasheets, without sparsity).
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12,
             "L4": 121e12, "RTX 4090": 165e12}


def peak_flops(device_name: str) -> float | None:
    return next((v for k, v in PEAK_BF16.items() if k in device_name), None)


def build_model(name: str, vocab: int, seq_len: int):
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from trainer.errors import CONF_DIR

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[f"model={name}", "paths.output_dir=unused"])
    return instantiate(cfg.model, vocab_size=vocab, max_seq_len=seq_len, item_dim=None)


def measure(args, compile_model: bool) -> dict:
    import torch

    from trainer.module import masked_cross_entropy

    device = torch.device(args.device)
    torch.manual_seed(0)
    model = build_model(args.model, args.vocab, args.seq_len).to(device)
    optimizer = torch.optim.AdamW(model.optimizer_groups(0.1), lr=3e-4, fused=device.type == "cuda")
    step_fn = torch.compile(model) if compile_model else model
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    x = torch.randint(0, args.vocab, (args.batch, args.seq_len), device=device)
    mask = torch.ones(args.batch, args.seq_len, device=device)

    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=device.type == "cuda"):
            loss = masked_cross_entropy(step_fn(x), x, mask)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    t_compile = time.perf_counter()
    for _ in range(args.warmup):
        step()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    warmup_s = time.perf_counter() - t_compile
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync()
    seconds = time.perf_counter() - t0
    tokens_per_s = args.steps * args.batch * args.seq_len / seconds
    flops = model.flops_per_token(args.seq_len) * tokens_per_s
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak = peak_flops(name)
    return {
        "config": f"{args.model} {'bf16' if device.type == 'cuda' else 'fp32'}"
                  f"{' +compile' if compile_model else ''}",
        "device": name, "params_M": round(model.num_params() / 1e6, 1),
        "tokens_per_s": round(tokens_per_s), "tflops": round(flops / 1e12, 1),
        "mfu": round(flops / peak, 3) if peak else None,
        "peak_mem_GiB": round(torch.cuda.max_memory_allocated(device) / 2**30, 1) if device.type == "cuda" else None,
        "warmup_s": round(warmup_s, 1),
    }


def multi_device(args, n_gpus: int) -> dict:
    """A real elab-train run with pl=ddp over every GPU, at the same per-GPU batch."""
    from trainer.run_dir import RunDir

    with tempfile.TemporaryDirectory() as tmp:
        tokens = args.ddp_steps * n_gpus * args.batch * 64
        cmd = [sys.executable, "-m", "trainer.train", f"model={args.model}", "pl=ddp",
               f"pl.devices={n_gpus}", "data=modular_arithmetic", "data.p=97", "callbacks=minimal",
               "progress=none", f"batch.global_size={n_gpus * args.batch * 16}",
               f"budget.tokens={tokens}", f"hydra.run.dir={tmp}/run"]
        result = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "WANDB_MODE": "disabled"})
        summary = RunDir(Path(tmp) / "run").read_summary()
        if result.returncode or summary is None:
            return {"config": f"{args.model} ddp x{n_gpus}", "error": result.stderr[-2000:]}
        return {"config": f"{args.model} ddp x{n_gpus} (elab-train, modular arithmetic)",
                "tokens_per_s": round(summary["tokens_per_s"]), "steps": summary["steps"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--model", default="gpt_125m")
    parser.add_argument("--vocab", type=int, default=50304)
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--ddp-steps", type=int, default=50)
    parser.add_argument("--no-compile", action="store_true")
    args = parser.parse_args()
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("no GPU visible: run on a GPU machine, or pass --device cpu for a smoke test")
    torch.backends.cuda.matmul.allow_tf32 = True
    results = [measure(args, compile_model=False)]
    if not args.no_compile:
        results.append(measure(args, compile_model=True))
    n_gpus = torch.cuda.device_count() if args.device == "cuda" else 0
    if n_gpus > 1:
        results.append(multi_device(args, n_gpus))
    for r in results:
        print(json.dumps(r))


if __name__ == "__main__":
    main()
