"""The run's own knobs (top level, budget, batch, optim), the model's and the Lightning Trainer's.

Defaults live in ``conf/`` (``train.yaml`` and the group options) and are read from the composed
config: nothing here repeats them.
"""

from __future__ import annotations

from typing import Any

from trainer.schema.knob import (
    NULL,
    Knob,
    any_of,
    choice,
    documented,
    flag,
    integer,
    knob,
    number,
    text,
)


def _num(v: Any) -> bool:
    return number()[2](v)


def _pos(v: Any) -> bool:
    return _num(v) and v > 0


def _nonneg(v: Any) -> bool:
    return _num(v) and v >= 0


def _betas(v: Any) -> bool:
    return isinstance(v, list) and len(v) == 2 and all(_num(b) and 0 <= b < 1 for b in v)


def _at_least(n: int):
    return lambda v: v is None or v >= n


RUN_KNOBS: tuple[Knob, ...] = (
    Knob("task_name", (str,), "a name", None, "names the run in logs"),
    Knob("seed", (int,), "an integer", None, "seeds the data, the initialisation and Lightning"),
    knob("tags", any_of((list,), "a list of names"), "labels of the run (wandb tags)"),
    Knob("budget.tokens", (int,), "an integer > 0", _pos,
         "run length in tokens: steps = budget.tokens // (batch.global_size x data seq_len)"),
    Knob("batch.global_size", (int,), "an integer > 0", _pos,
         "sequences per optimizer step, over all devices"),
    Knob("optim.lr", (float, int), "a finite number > 0", _pos, "peak learning rate (AdamW)"),
    Knob("optim.weight_decay", (float, int), "a finite number >= 0", _nonneg, "AdamW weight decay"),
    Knob("optim.betas", (list,), "two numbers in [0, 1), e.g. [0.9, 0.95]", _betas, "AdamW betas"),
    Knob("optim.warmup_steps", (int, NULL), "null, or an integer >= 0 shorter than the run",
         lambda v: v is None or _nonneg(v),
         "linear warmup steps before the cosine decay (null: 50, or 10% of a shorter run)"),
    Knob("optim.min_lr_ratio", (float, int), "a number in [0, 1]", lambda v: _num(v) and 0 <= v <= 1,
         "the cosine decays to lr x min_lr_ratio at the end of the budget"),
    Knob("optim.grad_clip", (float, int, NULL), "a finite number > 0, or null",
         lambda v: v is None or _pos(v), "gradient norm clipping (null: off)"),
    Knob("compile", (bool,), "true or false", None, "torch.compile the model (worth it on GPU)"),
    Knob("threads", (int, NULL), "an integer > 0, or null", lambda v: v is None or v > 0,
         "intra-op threads per process (null: torch's default)"),
    Knob("malloc", (str,), "'reuse' or 'system'", lambda v: v in ("reuse", "system"),
         "reuse: the process keeps freed memory (glibc; the default model ~20% faster on CPU); system: libc defaults"),
    Knob("num_workers", (int,), "an integer >= 0", _nonneg, "DataLoader workers"),
    Knob("log_every_n_steps", (int,), "an integer > 0", _pos, "train/ series logging period"),
    Knob("checkpoint_every_n_steps", (int,), "an integer > 0", _pos,
         "checkpoints/last.ckpt period (the last step is always saved)"),
    Knob("ckpt_path", (str, NULL), "null, 'last' or a checkpoint path", None,
         "null: fresh run; last: resume this run dir (in a multirun: or start fresh); a path"),
    Knob("optimized_metric", (str, NULL), "null or a series this run logs", None,
         "the summary metric returned to sweepers (Optuna)"),
    Knob("transitions.series", (list,), "a list of series names",
         lambda v: all(isinstance(x, str) for x in v),
         "fitted into transitions.json besides every probe/*/acc and probe/*/logprob"),
)

# Sizes the model needs before the data exists are checked here; GPTConfig checks the rest.
MODEL_KNOBS: tuple[Knob, ...] = (
    *(Knob(f"model.{k}", (int,), "an integer >= 1", _at_least(1), help_)
      for k, help_ in (("n_layer", "transformer blocks"), ("n_head", "attention heads per block"),
                       ("d_model", "residual width"), ("n_loops", "passes through the blocks"))),
    knob("model.head_dim", documented(integer(1, null=True)),
         "fixes the head width: n_head = d_model / head_dim (a d_model sweep keeps heads the same "
         "size); null: n_head stays fixed"),
    knob("model.mlp", documented(choice("swiglu", "gelu", "none")), "the MLP of a block"),
    knob("model.mlp_ratio", documented(number(above=0)), "MLP width / d_model"),
    knob("model.mlp_multiple_of", documented(integer(1)),
         "the SwiGLU width (2/3 x mlp_ratio x d_model) is rounded to a multiple of this"),
    knob("model.dropout", documented(number(0, 1)), "dropout probability"),
    knob("model.norm", documented(choice("layernorm", "rmsnorm")), "the normalisation layers"),
    knob("model.init", documented(choice("gpt2", "torch")), "weight initialisation scheme"),
    knob("model.init_scale", documented(number(above=0)),
         "multiplies the initial weights and embeddings (not norms): whether in-context learning "
         "arrives after a plateau or smoothly"),
    knob("model.tie_embeddings", flag(), "the output head shares the token embedding"),
    knob("model.parametrization", choice("sp", "mup"),
         "mup: the best lr holds over d_model, multipliers from base_width (trainer/models/mup.py)"),
    knob("model.base_width", integer(1, null=True), "the d_model at which mup equals sp"),
    knob("model.mup_input_mult", documented(number(above=0)), "mup only: embedding output x this"),
    knob("model.mup_output_mult", documented(number(above=0)),
         "mup only: logits x this / (d_model / base_width)"),
)

# Passed to lightning.Trainer as they are; Lightning checks them (a refusal names pl.<key>).
PL_KNOBS: tuple[Knob, ...] = (
    knob("pl.accelerator", text("cpu, gpu, auto, ..."), "where the run trains"),
    knob("pl.devices", any_of((int, str, list), "a count, 'auto' or a list of ids"),
         "devices per node"),
    knob("pl.num_nodes", integer(1), "nodes of a multi-node run"),
    knob("pl.precision", any_of((str, int), "auto, 32-true, bf16-mixed, ..."),
         "auto: bf16-mixed on a GPU that supports it, else 32-true"),
    knob("pl.strategy", text("auto, ddp, ddp_spawn, ddp_fork, fsdp, ..."),
         "how devices share the work"),
    knob("pl.deterministic", flag(), "deterministic kernels (slower)"),
    knob("pl.profiler", text("simple, advanced, ...", null=True), "Lightning's profiler"),
    knob("progress.TQDMProgressBar.refresh_rate", integer(1), "steps between progress bar updates"),
    knob("logger.ResumableCSVLogger.name", text(), "csv/ under the run dir: csv/metrics.csv"),
    knob("logger.make_wandb_logger.project", text(), "the wandb project"),
    knob("logger.make_wandb_logger.group", text(null=True),
         "null: the sweep directory's name in a multirun"),
    knob("logger.make_wandb_logger.name", text(null=True), "null: the job's overrides"),
    knob("logger.make_wandb_logger.mode", text("online, offline or disabled", null=True),
         "null: decided at start (online when a key and a server are there, else offline)"),
)
