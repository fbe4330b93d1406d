"""The training entry point: ``elab-train`` or ``python -m trainer.train`` (Hydra overrides).

``train(cfg)`` builds everything from the composed config -- data, model, callbacks, loggers, the
Lightning Trainer -- after validating it, fits, and returns the run summary (also written to
``summary.json``).
"""

from __future__ import annotations

import logging
import os
import sys
import uuid
import warnings
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from trainer import console
from trainer.config import (
    check_metric_logged,
    check_probes_fit,
    resolve_checkpoint,
    run_identity,
    steps_from_budget,
    to_plain,
    validate,
    warmup_steps_for,
)
from trainer.errors import CONF_DIR, ConfigError
from trainer.failures import bad_input_message, record_failure
from trainer.memory import allocation_refused, check_fits_memory
from trainer.resume import (
    check_budget,
    check_same_run,
    check_weights_fit,
    finished_summary,
    resume_check,
)
from trainer.run_config import write_hydra_files
from trainer.run_dir import RunDir
from trainer.runlock import RunLock, is_launcher_process
from trainer.watchdog import die_with_parent

log = logging.getLogger("emergence_lab")


def _hydra_context() -> dict[str, Any]:
    """Overrides, sweep group and job name when running under Hydra; empty under the compose API."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return {"overrides": [], "group": None, "job_name": None}
    hc = HydraConfig.get()
    overrides = list(hc.overrides.task)
    multirun = hc.mode == RunMode.MULTIRUN
    return {
        "overrides": overrides,
        "group": Path(hc.sweep.dir).name if multirun else None,
        "job_name": ",".join(o for o in overrides if not o.startswith("hydra")) or "default",
    }


def _build_loggers(
    cfg: DictConfig, resume_step: int | None, context: dict, tokens_per_step: int
) -> list:
    from hydra.utils import get_method, instantiate

    loggers = []
    for name, node in (cfg.get("logger") or {}).items():
        if node is None or "_target_" not in node:
            continue
        target = node._target_
        if target.endswith("ResumableCSVLogger"):
            loggers.append(instantiate(node, keep_before_step=resume_step))
        elif target.endswith("make_wandb_logger"):
            # Called directly: instantiate would try to build the _target_s inside the run config.
            kwargs = {k: v for k, v in to_plain(node).items() if k != "_target_"}
            kwargs["group"] = kwargs.get("group") or context["group"]
            kwargs["name"] = kwargs.get("name") or context["job_name"]
            # The overrides and tokens per step let elab-analyze --wandb-group read a sweep back.
            run_config = {**to_plain(cfg), "overrides": context["overrides"],
                          "tokens_per_step": tokens_per_step}
            loggers.append(get_method(target)(**kwargs, run_config=run_config))
        else:
            loggers.append(instantiate(node))
        log.debug("logger %s: %s", name, target)
    return loggers


def _build_pl_trainer(pl_kwargs: dict, **kwargs: Any) -> Any:
    """The Lightning Trainer; its refusals (``pl.precision=bogus``, ``pl.accelerator=gpu`` with
    no GPU, an unknown ``pl.`` key) become a one-line ConfigError naming ``pl``."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    try:
        return instantiate(pl_kwargs, **kwargs)
    except (InstantiationException, MisconfigurationException, ValueError, TypeError) as exc:
        cause = exc.__cause__ if isinstance(exc, InstantiationException) and exc.__cause__ else exc
        if isinstance(cause, ConfigError):
            raise cause from None
        message = " ".join(str(cause).split())
        settings = {**{k: v for k, v in pl_kwargs.items() if k != "_target_"},
                    "precision": kwargs.get("precision")}
        named = ", ".join(f"pl.{k}={v}" for k, v in settings.items())
        raise ConfigError(f"the Lightning Trainer refused {named}: {message}") from None


def _precision(cfg: DictConfig) -> str:
    import torch

    if cfg.pl.get("precision", "auto") != "auto":
        return cfg.pl.precision
    return (
        "bf16-mixed" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "32-true"
    )


def train(cfg: DictConfig, callbacks: list | None = None) -> dict[str, Any]:
    """Run one training job from a composed config; ``callbacks`` are added to the configured ones.

    The run dir is locked for the whole job (:mod:`trainer.runlock`); a resume is checked against
    its checkpoint, and a finished run left as it is, before anything is written."""
    validate(cfg)
    run_dir = Path(cfg.paths.output_dir)
    lock = RunLock(run_dir) if is_launcher_process() else None
    if lock is not None:
        lock.acquire()
    try:
        return _train(cfg, run_dir, list(callbacks or []))
    finally:
        if lock is not None:
            lock.release()


def _train(cfg: DictConfig, run_dir: Path, callbacks: list) -> dict[str, Any]:
    context = _hydra_context()
    ckpt = resolve_checkpoint(cfg.ckpt_path, run_dir, multirun=context["group"] is not None)

    import lightning as L
    import torch

    from trainer.allocator import configure_malloc, release_free_memory
    from trainer.build import build_data, build_model, build_monitors
    from trainer.data import StepDataModule
    from trainer.module import LitLM
    from trainer.monitors.backbone import RunSummary, Throughput
    from trainer.monitors.bus import MonitorBus
    from trainer.report import chance_levels, write_report
    from trainer.run_files import write_run_files

    _route_lightning_logs()
    console.drop_adverts()
    warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\)")
    # LitLM moves its flat batch dicts itself (faster than Lightning's generic walk), on purpose.
    warnings.filterwarnings("ignore", message="You have overridden `transfer_batch_to_device`")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
        # numpy's BLAS (the monitors' eigenvalues and distances) keeps its own pool: left at one
        # thread per core it spin-waits against torch on a busy CPU (a 256x256 eigvalsh measured
        # 2 ms at 1 thread, 1.5 s at 2 on a loaded 2-core box).
        from threadpoolctl import threadpool_limits

        threadpool_limits(cfg.threads, user_api="blas")
    malloc = configure_malloc(cfg.get("malloc", "reuse"))
    L.seed_everything(cfg.seed, workers=True, verbose=False)

    # Constructing the sampler is cheap and fixes seq_len; prepare() below builds the token store,
    # so every check that needs only the config comes first.
    sampler = build_data(cfg)
    tokens_per_step = cfg.batch.global_size * sampler.seq_len
    total_steps = steps_from_budget(cfg.budget.tokens, cfg.batch.global_size, sampler.seq_len)
    warmup_steps = warmup_steps_for(cfg.optim.warmup_steps, total_steps,
                                    f"budget.tokens={cfg.budget.tokens}")
    check_fits_memory(cfg, lambda: build_model(cfg, sampler), sampler.seq_len)
    identity = run_identity(cfg)
    saved = resume_check(ckpt, cfg.ckpt_path, identity) if ckpt is not None else None
    if saved is not None:
        check_same_run(run_dir, ckpt, cfg.ckpt_path, saved["run_id"])
        finished = finished_summary(run_dir, saved["global_step"], total_steps)
        if finished is not None:
            log.info(
                "run dir %s holds a completed run (%d steps, budget.tokens=%s): nothing to do, "
                "nothing changed; raise budget.tokens to extend it",
                run_dir.resolve(), finished["steps"], finished.get("budget_tokens"),
            )
            return finished
        check_budget(ckpt, saved["global_step"], total_steps, cfg.budget.tokens)
    sampler.prepare()  # caches built (or found) and data-dependent settings checked, before training
    release_free_memory()  # what building the store freed goes back; training keeps its own
    if str(cfg.get("optimized_metric") or "").startswith("probe/"):
        check_metric_logged(cfg.optimized_metric, [p.name for p in sampler.probe_sets()])
    check_probes_fit(cfg, sampler)
    with allocation_refused(cfg, "the model"):
        model = build_model(cfg, sampler)
    optim = cfg.optim
    module = LitLM(
        model,
        total_steps=total_steps,
        tokens_per_step=tokens_per_step,
        lr=optim.lr,
        weight_decay=optim.weight_decay,
        betas=tuple(optim.betas),
        warmup_steps=warmup_steps,
        min_lr_ratio=optim.min_lr_ratio,
        compile=cfg.compile,
    )
    datamodule = StepDataModule(sampler, cfg.batch.global_size, total_steps, cfg.num_workers)
    resume_step = None
    if saved is not None:
        check_weights_fit(saved, module.state_dict(), cfg.ckpt_path)
        resume_step = saved["global_step"]

    summary_cb = RunSummary(
        str(run_dir),
        static={
            "overrides": context["overrides"],
            "tokens_per_step": tokens_per_step,
            "budget_tokens": cfg.budget.tokens,
            "total_steps": total_steps,
            "n_params": model.num_params(),
            "flops_per_token": model.flops_per_token(sampler.seq_len),
            "malloc": malloc,
            "data": sampler.describe(),
            "chance": chance_levels(sampler.probe_sets()),
            **_pool_epochs(sampler, cfg.budget.tokens),
            "resumed_from_step": resume_step,
            "config": to_plain(cfg),
        },
        identity=identity,
        # A resumed run keeps its id (one written before ids were recorded gets one now).
        run_id=(saved or {}).get("run_id") or uuid.uuid4().hex,
    )
    all_callbacks = build_monitors(cfg)
    all_callbacks += [Throughput(tokens_per_step, cfg.log_every_n_steps), summary_cb]
    all_callbacks += callbacks
    # One bus per run: the monitors publish and subscribe there, never among the callbacks.
    MonitorBus().attach(all_callbacks)
    loggers = _build_loggers(cfg, resume_step, context, tokens_per_step)

    pl_kwargs = {k: v for k, v in to_plain(cfg.pl).items() if k not in ("precision",)}
    # Lightning's model summary counts FLOPs only with an example input (it prints 0): the
    # "model:" line below says parameters and FLOPs/token instead.
    pl_kwargs.setdefault("enable_model_summary", False)
    pl_trainer = _build_pl_trainer(
        pl_kwargs,
        precision=_precision(cfg),
        max_steps=total_steps,
        max_epochs=-1,
        callbacks=all_callbacks,
        logger=loggers or False,
        log_every_n_steps=cfg.log_every_n_steps,
        gradient_clip_val=cfg.optim.grad_clip,
        enable_progress_bar=bool(cfg.get("progress")),
        default_root_dir=str(run_dir),
        num_sanity_val_steps=0,
    )
    _check_parallel_setup(cfg, pl_trainer, all_callbacks, context)
    # Every check passed: only now is the run dir written (a refused command leaves a run as it was).
    run_dir.mkdir(parents=True, exist_ok=True)
    write_hydra_files(cfg, run_dir)
    # model.json, the tokenizer or vocabulary, probe rows: the run dir alone rebuilds the model.
    write_run_files(run_dir, sampler, model)
    if pl_trainer.is_global_zero:
        log.info("run dir: %s", run_dir.resolve())
        log.info(
            "model: %s, %.3fM parameters, %s FLOPs/token; %d steps of %d tokens (budget.tokens=%d)",
            type(model).__name__,
            model.num_params() / 1e6,
            f"{model.flops_per_token(sampler.seq_len):,}",
            total_steps,
            tokens_per_step,
            cfg.budget.tokens,
        )
    interrupted = False
    try:
        with console.log_above_progress_bar():
            pl_trainer.fit(
                module,
                datamodule=datamodule,
                ckpt_path=str(ckpt) if ckpt else None,
                weights_only=True,
            )
    except SystemExit:
        interrupted = pl_trainer.interrupted  # Lightning ends a graceful Ctrl-C with sys.exit(1)
        if not interrupted:
            raise
        console.close_progress_bars()
    finally:
        if "wandb" in sys.modules:  # close the wandb run whatever happened, completed from the run dir
            from trainer.wandb_report import finish_run

            finish_run(run_dir, failed=pl_trainer.state.status.value != "finished")
    if not pl_trainer.is_global_zero:
        return {}
    # Written by rank 0 inside the training process (see RunSummary): right under spawn strategies too.
    summary = RunDir(run_dir).read_summary()
    log.info("%s", write_report(run_dir))
    if interrupted:
        raise console.interrupted(run_dir, context["overrides"], pl_trainer.global_step)
    return summary


def _pool_epochs(sampler: Any, budget_tokens: int) -> dict[str, float]:
    """Repetition as passes over the pool, budget / pool tokens, for sources with a finite token
    pool (``data/repetition_factor`` is another measure: exact repeats inside a window)."""
    if hasattr(sampler, "pool_epochs"):
        return {"pool_epochs": float(sampler.pool_epochs(budget_tokens))}
    return {}


def _check_parallel_setup(cfg: DictConfig, pl_trainer: Any, callbacks: list, context: dict) -> None:
    """What only the Trainer knows (the world size, the strategy), checked before fit."""
    from trainer.monitors import CapabilityProbes, TopologyProbe

    world = pl_trainer.world_size
    if cfg.batch.global_size % world:
        raise ConfigError(
            f"batch.global_size={cfg.batch.global_size} is not divisible by the {world} processes "
            f"(pl.devices x pl.num_nodes)"
        )
    strategy = str(cfg.pl.get("strategy", "auto"))
    probes = [c for c in callbacks if isinstance(c, (CapabilityProbes, TopologyProbe))]
    if strategy.startswith("fsdp") and probes:
        raise ConfigError(
            "pl.strategy=fsdp shards the weights, and the probe and topology callbacks run a "
            "forward pass on rank 0 alone: use pl=ddp, or callbacks=minimal"
        )
    relaunched = strategy == "ddp" and world > 1 and not (
        "SLURM_JOB_ID" in os.environ or "LOCAL_RANK" in os.environ
    )
    if relaunched and context["group"] is not None:
        raise ConfigError(
            "pl.strategy=ddp relaunches the command line, which in a multirun (-m) would rerun "
            "the whole sweep in every process: use hydra/launcher=slurm (one job per point), "
            "or pl.strategy=ddp_spawn"
        )


def _route_lightning_logs() -> None:
    """Lightning adds its own console handler when it is imported before logging is set up; under
    Hydra (which logs to the console and train.log) that prints every message twice."""
    if logging.getLogger().handlers:
        for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
            lightning_logger = logging.getLogger(name)
            lightning_logger.handlers.clear()
            lightning_logger.propagate = True


_task_started = False
_launcher_pid: int | None = None  # the process `elab-train` started in: set by main()


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def _hydra_main(cfg: DictConfig) -> float | None:
    global _task_started
    _task_started = True
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if os.getpid() != _launcher_pid:  # a job process a sweep launcher started (joblib, Ray)
        die_with_parent()
    try:
        summary = train(cfg)
    except Exception as exc:
        record_failure(cfg, exc, _hydra_context()["overrides"])
        message = bad_input_message(exc)
        if message is not None:
            log.error("%s", message)
            # Bad input: the message, not a traceback. In a multirun the exception goes to
            # Hydra, which records the job as failed and runs the others.
            if _hydra_context()["group"] is None:
                raise SystemExit(2) from None
        raise
    metric = cfg.get("optimized_metric")
    if metric:
        if metric not in summary.get("metrics", {}):
            raise ConfigError(
                f"optimized_metric={metric!r} was not logged; logged: "
                f"{sorted(summary.get('metrics', {}))}"
            )
        return summary["metrics"][metric]
    return None


def main() -> None:
    """``elab-train``. Exit codes: 0 done (or nothing to do), 2 bad input -- a config Hydra cannot
    compose, a value the checks refuse, a busy or unwritable run dir, a checkpoint that does not
    fit -- always before training, with one message and no traceback; 130 interrupted (Ctrl-C:
    the run's summary says 'interrupted', and the last line how to resume it); 1 anything else."""
    import traceback

    global _launcher_pid
    _launcher_pid = os.getpid()
    if os.environ.get("HYDRA_FULL_ERROR") == "1":  # the user asked for Hydra's own reporting
        _hydra_main()
        return
    # Hydra re-raises instead of printing its own (partial) traceback: we report instead.
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        _hydra_main()
    except KeyboardInterrupt as exc:
        # Ctrl-C: an interrupted run has logged how to resume it (RunInterrupted); one before
        # training began has nothing to resume.
        if not isinstance(exc, console.RunInterrupted):
            print("interrupted before training began", file=sys.stderr)
        raise SystemExit(130) from None
    except Exception as exc:
        message = bad_input_message(exc)
        if _task_started and message is not None:
            # Only a multirun gets here (a single job exits 2 itself): Hydra ran the other jobs
            # and re-raises the first refusal, e.g. a job dir another sweep is training in.
            print(f"error: a job of the sweep refused its input (the other jobs ran): {message}",
                  file=sys.stderr)
            raise SystemExit(2) from None
        if _task_started:  # a failure inside training: a bug or a crash, with its traceback
            traceback.print_exc()
            raise SystemExit(1) from None
        # Hydra refused the command line or the config, or could not create the run dir.
        text = str(exc).split("Config search path")[0]  # Hydra's search path: noise here
        message = message or " ".join(text.split()) or repr(exc)
        cause = exc.__cause__
        if text.startswith("Unable to configure handler") and isinstance(cause, OSError):
            # Hydra opens the job's log file in the run dir before any of our code runs.
            message = (f"run dir {Path(cause.filename or '.').parent} cannot be written "
                       f"({cause.strerror}: {cause.filename}): choose a writable hydra.run.dir "
                       f"(hydra.sweep.dir for -m), or set ELAB_LOG_DIR")
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
