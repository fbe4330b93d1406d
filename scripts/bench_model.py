"""Tokens/s and achieved FLOP/s of the lab's model against a minimal plain-PyTorch GPT of the same
shape, side by side.

Both models train on the same random tokens in the same plain AdamW loop (the Lightning loop is
``scripts/bench_train.py``'s subject), one step each in turn, many rounds, so machine noise hits
both alike; the figures are medians. The reference has the lab model's n_layer (times n_loops),
n_head, d_model, vocabulary, context and head tying, and the plainest parts: learned positions,
LayerNorm with bias, one qkv Linear split into heads, SDPA, and a GELU MLP 4 x d_model wide
where the lab's model has an MLP (the width the lab's SwiGLU matches in parameters). FLOPs per
token are counted the same way for both (``GPT.flops_per_token``: 6 x applied weights + 12 x
layers x d_model x seq_len), so the FLOP/s ratio is the one to hold at the target (>= 0.95).

Shapes: ``default`` is the default run (attn_only on the bursty in-context data, batch 64),
``gpt_small`` the 4-layer SwiGLU GPT at a text-like context (vocabulary 1024, 256 tokens, batch
64), ``looped`` the looped model on the default data.

    python scripts/bench_model.py                               # default and gpt_small
    python scripts/bench_model.py --shapes looped --rounds 9
    python scripts/bench_model.py --device cuda --dtype bf16    # on a GPU
    python scripts/bench_model.py --malloc system               # glibc's allocator defaults

Both models run in one process under the allocator setting ``elab-train`` applies (``malloc=reuse``
by default: freed memory is kept for the next step; see ``trainer/allocator.py``).

On the CPU the clock is this thread's CPU time (with one thread that is the step's wall time on
an idle machine, and a busy machine does not inflate it); ``--clock wall`` to use wall time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("WANDB_MODE", "disabled")

SHAPES = {
    # name: (Hydra overrides, (vocab, seq_len, batch) or None for the data's own)
    "default": ([], None),
    "gpt_small": (["model=gpt_small"], (1024, 256, 64)),
    "looped": (["model=looped"], None),
}


def build_lab(name: str):
    """The lab's model as ``elab-train`` would build it for this shape, and (vocab, T, batch)."""
    import torch
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from trainer.errors import CONF_DIR

    overrides, fixed = SHAPES[name]
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=["paths.output_dir=unused", *overrides])
    if fixed is None:
        sampler = instantiate(cfg.data, curriculum=None, _convert_="all")
        fixed = (sampler.vocab_size, sampler.seq_len, cfg.batch.global_size)
    vocab, seq_len, _ = fixed
    torch.manual_seed(0)
    model = instantiate(cfg.model, vocab_size=vocab, max_seq_len=seq_len, _convert_="all")
    return model, fixed


def build_reference(lab, vocab: int, seq_len: int):
    import torch
    import torch.nn.functional as F
    from torch import nn

    cfg = lab.config

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            d = cfg.d_model
            self.n1 = nn.LayerNorm(d)
            self.qkv = nn.Linear(d, 3 * d, bias=False)
            self.proj = nn.Linear(d, d, bias=False)
            self.mlp = None
            if cfg.mlp != "none":
                self.n2 = nn.LayerNorm(d)
                self.mlp = nn.Sequential(nn.Linear(d, 4 * d, bias=False), nn.GELU(),
                                         nn.Linear(4 * d, d, bias=False))

        def forward(self, x):
            B, T, C = x.shape
            q, k, v = self.qkv(self.n1(x)).split(C, dim=2)
            q, k, v = (t.view(B, T, cfg.n_head, C // cfg.n_head).transpose(1, 2) for t in (q, k, v))
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + self.proj(y.transpose(1, 2).reshape(B, T, C))
            return x if self.mlp is None else x + self.mlp(self.n2(x))

    class Reference(nn.Module):
        def __init__(self):
            super().__init__()
            self.tok = nn.Embedding(vocab, cfg.d_model)
            self.pos = nn.Embedding(seq_len, cfg.d_model)
            self.blocks = nn.ModuleList(Block() for _ in lab.block_schedule())
            self.norm = nn.LayerNorm(cfg.d_model)
            self.head = nn.Linear(cfg.d_model, vocab, bias=False)
            if cfg.tie_embeddings:
                self.head.weight = self.tok.weight

        def forward(self, idx):
            x = self.tok(idx) + self.pos(torch.arange(idx.shape[1], device=idx.device))
            for block in self.blocks:
                x = block(x)
            return self.head(self.norm(x))

        def flops_per_token(self, T: int) -> int:
            weights = sum(m.weight.numel() for m in self.blocks.modules() if isinstance(m, nn.Linear))
            return 6 * (weights + vocab * cfg.d_model) + 12 * len(self.blocks) * cfg.d_model * T

    torch.manual_seed(0)
    return Reference()


class Trainer:
    """One model, its AdamW, and a timed training step on fixed random tokens."""

    def __init__(self, model, tokens, device, dtype, clock):
        import torch

        self.model = model.to(device).train()
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=3e-4)
        self.tokens, self.device, self.dtype, self.clock = tokens.to(device), device, dtype, clock
        self.seconds: list[float] = []

    def step(self, timed: bool = True) -> None:
        import torch
        import torch.nn.functional as F

        x, y = self.tokens[:, :-1], self.tokens[:, 1:]
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        t0 = self.clock()
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
            logits = self.model(x)
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        if timed:
            self.seconds.append(self.clock() - t0)


def bench(name: str, args, device, dtype, clock) -> float:
    import torch

    lab, (vocab, seq_len, batch) = build_lab(name)
    ref = build_reference(lab, vocab, seq_len)
    cfg = lab.config
    flops = {"lab": lab.flops_per_token(seq_len), "ref": ref.flops_per_token(seq_len)}
    params = {"lab": lab.num_params(), "ref": sum(p.numel() for p in ref.parameters())}
    mlp = "none" if cfg.mlp == "none" else f"{cfg.mlp} {cfg.mlp_hidden}"
    print(f"== {name}: {type(lab).__name__} n_layer={cfg.n_layer} n_loops={cfg.n_loops} "
          f"n_head={cfg.n_head} d_model={cfg.d_model} mlp={mlp} | vocab={vocab} seq_len={seq_len} "
          f"batch={batch}")
    for k in ("lab", "ref"):
        print(f"   {k}: {params[k] / 1e6:.3f}M params, {flops[k] / 1e6:.3f} MFLOP/token")
    tokens = torch.randint(0, vocab, (batch, seq_len + 1), generator=torch.Generator().manual_seed(0))
    runs = {"lab": Trainer(lab, tokens, device, dtype, clock),
            "ref": Trainer(ref, tokens, device, dtype, clock)}
    for run in runs.values():  # warm-up: allocator, kernels, optimizer state
        run.step(timed=False)
    # Steps per round so that a round takes ~args.seconds per model.
    t0 = clock()
    runs["lab"].step(timed=False)
    per_round = max(1, round(args.seconds / max(clock() - t0, 1e-6)))
    ratios = []
    for r in range(args.rounds):
        order = ("lab", "ref") if r % 2 == 0 else ("ref", "lab")
        for _ in range(per_round):
            for k in order:  # step by step in turn: noise hits both alike
                runs[k].step()
        tps = {k: per_round * batch * seq_len / sum(run.seconds[-per_round:])
               for k, run in runs.items()}
        ratios.append(tps["lab"] * flops["lab"] / (tps["ref"] * flops["ref"]))
        print(f"   round {r}: lab {tps['lab']:,.0f} tok/s  ref {tps['ref']:,.0f} tok/s  "
              f"tokens/s ratio {tps['lab'] / tps['ref']:.3f}  FLOP/s ratio {ratios[-1]:.3f}")
    med = {k: batch * seq_len / statistics.median(run.seconds) for k, run in runs.items()}
    flop_ratio = med["lab"] * flops["lab"] / (med["ref"] * flops["ref"])
    for k in ("lab", "ref"):
        print(f"   median step: {k} {med[k]:,.0f} tok/s, {med[k] * flops[k] / 1e9:.2f} GFLOP/s")
    print(f"   lab/ref: tokens/s {med['lab'] / med['ref']:.3f}, FLOP/s {flop_ratio:.3f} "
          f"(target >= 0.95; median of rounds {statistics.median(ratios):.3f})")
    return flop_ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", choices=sorted(SHAPES), default=["default", "gpt_small"])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=2.0, help="time per model per round")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads (CPU)")
    parser.add_argument("--clock", choices=("auto", "cpu", "wall"), default="auto")
    parser.add_argument("--malloc", choices=("reuse", "system"), default="reuse",
                        help="the process's allocator setting, as elab-train's malloc= (both models "
                             "run under it; scripts/bench_malloc.py compares the two)")
    args = parser.parse_args()
    import torch

    from trainer.allocator import configure_malloc

    malloc = configure_malloc(args.malloc)

    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    use_cpu_clock = args.clock == "cpu" or (
        args.clock == "auto" and device.type == "cpu" and args.threads == 1)
    clock = time.thread_time if use_cpu_clock else time.perf_counter
    print(f"torch {torch.__version__}, device {device}, {args.dtype}, threads {args.threads}, "
          f"clock {'thread CPU time' if use_cpu_clock else 'wall'}, malloc {malloc}")
    for name in args.shapes:
        bench(name, args, device, dtype, clock)


if __name__ == "__main__":
    main()
