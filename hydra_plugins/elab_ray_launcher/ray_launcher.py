"""Run each job of a Hydra multirun as a Ray task: ``elab-train -m hydra/launcher=ray ...``.

Why the lab's own launcher rather than ``hydra-ray-launcher`` 1.2.2: that plugin pins
cloudpickle 2.2.1, which breaks joblib 1.6 (cloudpickle >= 3, the ``local_parallel`` launcher),
downgrades python-dateutil and brings boto3 and the AWS autoscaler. This one needs only ``ray``.

What it does, job by job, mirrors Hydra's basic and joblib launchers:

* the driver (the ``elab-train -m`` process) composes every job's config, so a bad override fails
  before anything is shipped;
* each job is one Ray task in a fresh worker process (``max_calls=1``): wandb, seeds and module
  globals never leak from one job into the next; ``num_cpus_per_job`` / ``num_gpus_per_job`` are
  what Ray reserves for it, so a cluster runs as many jobs at once as it has room for;
* the worker changes into the driver's working directory when it exists there (a local cluster),
  so relative paths (``paths.cache_dir``...) mean what they mean in a plain run;
* results come back as Hydra ``JobReturn`` objects; a job that raises, or whose worker dies, is
  recorded as FAILED and the other jobs keep running; Hydra's sweeper reports the first failure
  after the batch, as it does with the basic launcher.

Where the jobs run (``address``): ``null`` follows ``ray.init``: ``$RAY_ADDRESS`` if set, else the
cluster ``ray start`` runs on this machine, else a local cluster started for the sweep (and
stopped when the process ends); ``auto``: the cluster on this machine, which must exist;
``ray://<head>:10001``: a remote cluster through Ray Client. A remote cluster needs this project
installed on its nodes, or shipped with ``init.runtime_env`` (``working_dir``, ``pip``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.singleton import Singleton
from hydra.core.utils import (
    JobReturn,
    JobStatus,
    configure_log,
    filter_overrides,
    run_job,
    setup_globals,
)
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

log = logging.getLogger(__name__)


def execute_job(
    sweep_config: DictConfig,
    hydra_context: HydraContext,
    task_function: TaskFunction,
    singleton_state: dict[Any, Any],
) -> JobReturn:
    """One job, inside a Ray worker: what the basic launcher does in its own process."""
    setup_globals()
    Singleton.set_state(singleton_state)
    cwd = sweep_config.hydra.runtime.cwd
    if cwd and os.path.isdir(cwd):
        os.chdir(cwd)
    HydraConfig.instance().set_config(sweep_config)
    return run_job(
        hydra_context=hydra_context,
        config=sweep_config,
        task_function=task_function,
        job_dir_key="hydra.sweep.dir",
        job_subdir_key="hydra.sweep.subdir",
    )


def failed_job(
    sweep_config: DictConfig, overrides: Sequence[str], error: BaseException
) -> JobReturn:
    """The record of a job whose Ray task died before ``run_job`` could return one."""
    ret = JobReturn()
    ret.overrides = list(overrides)
    ret.hydra_cfg = sweep_config
    task_cfg = OmegaConf.masked_copy(sweep_config, [k for k in sweep_config if k != "hydra"])
    ret.cfg = task_cfg
    ret.working_dir = str(sweep_config.hydra.runtime.cwd)
    ret.task_name = str(sweep_config.hydra.job.name)
    ret.status = JobStatus.FAILED
    ret.return_value = error
    return ret


class RayLauncher(Launcher):
    """Hydra launcher: one Ray task (one fresh process) per job; see the module docstring."""

    def __init__(
        self,
        address: str | None = None,
        num_cpus_per_job: float = 1,
        num_gpus_per_job: float = 0,
        init: dict[str, Any] | None = None,
    ) -> None:
        self.address = address
        self.num_cpus_per_job = num_cpus_per_job
        self.num_gpus_per_job = num_gpus_per_job
        # Plain containers: ray.init validates runtime_env as a dict, not an OmegaConf node.
        if isinstance(init, DictConfig):
            init = OmegaConf.to_container(init, resolve=True)
        self.init = dict(init or {})
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.task_function: TaskFunction | None = None

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.task_function = task_function

    def _connect(self) -> None:
        """Join (or start) the Ray cluster once per process; a cluster the caller already
        joined (a test, a notebook) is used as it is."""
        import ray

        if ray.is_initialized():
            return
        kwargs = {k: v for k, v in self.init.items() if v is not None}
        ray.init(address=self.address, log_to_driver=True, **kwargs)
        log.info("Ray cluster: %s", ray.cluster_resources())

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        import ray

        assert self.config is not None and self.hydra_context is not None
        assert self.task_function is not None
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        sweep_dir = Path(str(self.config.hydra.sweep.dir)).absolute()
        sweep_dir.mkdir(parents=True, exist_ok=True)
        self._connect()
        log.info(
            "Ray is launching %d jobs (%s CPU, %s GPU each), sweep output dir: %s",
            len(job_overrides), self.num_cpus_per_job, self.num_gpus_per_job, sweep_dir,
        )  # fmt: skip
        remote = ray.remote(max_calls=1)(execute_job).options(
            num_cpus=self.num_cpus_per_job, num_gpus=self.num_gpus_per_job
        )
        singleton_state = Singleton.get_state()
        jobs = []
        for offset, overrides in enumerate(job_overrides):
            idx = initial_job_idx + offset
            log.info("\t#%d : %s", idx, " ".join(filter_overrides(overrides)))
            sweep_config = self.hydra_context.config_loader.load_sweep_config(
                self.config, list(overrides)
            )
            with open_dict(sweep_config):
                sweep_config.hydra.job.id = f"{sweep_config.hydra.job.name}_{idx}"
                sweep_config.hydra.job.num = idx
                # Resolved here: a worker elsewhere would read a relative dir against its own cwd.
                sweep_config.hydra.sweep.dir = str(sweep_dir)
            ref = remote.remote(
                sweep_config, self.hydra_context, self.task_function, singleton_state
            )
            jobs.append((ref, sweep_config, overrides))
        results = []
        for ref, sweep_config, overrides in jobs:
            try:
                results.append(ray.get(ref))
            except Exception as err:  # the task died (worker crash, lost node, unpicklable result)
                log.error("job %s failed in Ray: %s", " ".join(overrides), err)
                results.append(failed_job(sweep_config, overrides, err))
        return results
