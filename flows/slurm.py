"""``--cluster slurm``: Dask workers as SLURM jobs (dask-jobqueue), configured from YAML.

The settings live in ``configs/slurm.yaml`` (or the file named by ``execution.slurm_config``
in the run config), are validated on load like every other config file (unknown keys and
wrong types name the file and key), and map one to one onto ``dask_jobqueue.SLURMCluster``.
:func:`cluster_kwargs` is a pure function, so the generated job script can be tested
without a controller.
"""

from __future__ import annotations

import logging
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from cohort.config import config_file, from_mapping, load_yaml
from cohort.errors import ConfigError, RunCannotStart

log = logging.getLogger(__name__)
DEFAULT_SLURM_CONFIG = "slurm.yaml"


@dataclass(frozen=True)
class AdaptConfig:
    """How many SLURM jobs to keep: dask's adaptive scaling between these bounds."""

    minimum_jobs: int = 1
    maximum_jobs: int = 4


@dataclass(frozen=True)
class SlurmConfig:
    """One SLURM job = ``processes`` Dask workers sharing ``cores`` cores and ``memory``."""

    queue: str | None = None
    account: str | None = None
    cores: int = 4
    processes: int = 4
    memory: str = "16GB"
    gpus_per_job: int = 0
    walltime: str = "04:00:00"
    job_name: str = "cohort-worker"
    job_script_prologue: list[str] = field(default_factory=list)
    job_extra_directives: list[str] = field(default_factory=list)
    interface: str | None = None
    dashboard_address: str = ":8787"
    local_directory: str | None = None
    log_directory: str | None = "slurm-logs"
    python: str | None = None
    death_timeout_s: float = 120.0
    worker_start_timeout_s: float = 900.0
    adapt: AdaptConfig = field(default_factory=AdaptConfig)
    source: str = ""


def load_slurm_config(name: str = DEFAULT_SLURM_CONFIG) -> SlurmConfig:
    """Load and validate the SLURM settings (a path, or a file of the shipped ``configs/``)."""
    path = config_file(name)
    config = from_mapping(SlurmConfig, load_yaml(path), path)
    for key in ("cores", "processes"):
        if getattr(config, key) < 1:
            raise ConfigError(f"{path}: key '{key}' must be at least 1, got {getattr(config, key)}")
    if config.cores % config.processes:
        raise ConfigError(f"{path}: key 'processes' ({config.processes}) must divide 'cores' ({config.cores}): "
                          "each Dask worker gets cores / processes threads")
    if config.gpus_per_job < 0:
        raise ConfigError(f"{path}: key 'gpus_per_job' must be 0 or more, got {config.gpus_per_job}")
    if not 0 <= config.adapt.minimum_jobs <= config.adapt.maximum_jobs or config.adapt.maximum_jobs < 1:
        raise ConfigError(f"{path}: keys 'adapt.minimum_jobs' and 'adapt.maximum_jobs' need "
                          f"0 <= minimum_jobs <= maximum_jobs and maximum_jobs >= 1, got "
                          f"{config.adapt.minimum_jobs} and {config.adapt.maximum_jobs}")
    return SlurmConfig(**{**config.__dict__, "source": str(path)})


def cluster_kwargs(config: SlurmConfig) -> dict[str, Any]:
    """Keyword arguments of ``dask_jobqueue.SLURMCluster`` for ``config``."""
    directives = [f"--job-name={config.job_name}", *config.job_extra_directives]
    if config.gpus_per_job:
        directives.append(f"--gres=gpu:{config.gpus_per_job}")
    kwargs: dict[str, Any] = {
        "queue": config.queue,
        "account": config.account,
        "cores": config.cores,
        "processes": config.processes,
        "memory": config.memory,
        "walltime": config.walltime,
        "job_script_prologue": list(config.job_script_prologue),
        "job_extra_directives": directives,
        "interface": config.interface,
        "scheduler_options": {"dashboard_address": config.dashboard_address},
        "local_directory": config.local_directory,
        "log_directory": config.log_directory,
        "python": config.python or sys.executable,
        "death_timeout": config.death_timeout_s,
    }
    return {key: value for key, value in kwargs.items() if value is not None}


def job_counts(config: SlurmConfig, workers: int | None) -> tuple[int, int]:
    """(minimum, maximum) jobs: ``--workers N`` asks for N workers, so ceil(N / processes) jobs."""
    if workers:
        jobs = -(-workers // config.processes)
        return jobs, jobs
    return config.adapt.minimum_jobs, config.adapt.maximum_jobs


@contextmanager
def slurm_cluster(config: SlurmConfig, workers: int | None) -> Iterator[object]:
    """A ``SLURMCluster`` scaled adaptively between the configured (or ``--workers``) bounds.

    Adaptive scaling also replaces jobs that end early (``scancel``, walltime, node failure).
    """
    try:
        from dask_jobqueue import SLURMCluster
    except ImportError:
        raise RunCannotStart("--cluster slurm needs dask-jobqueue: pip install 'cohort[slurm]'") from None
    if config.log_directory:
        Path(config.log_directory).mkdir(parents=True, exist_ok=True)
    try:
        cluster = SLURMCluster(**cluster_kwargs(config))
    except (ValueError, OSError) as error:
        raise RunCannotStart(f"{config.source}: cannot set up the SLURM cluster: {error}") from None
    try:
        minimum, maximum = job_counts(config, workers)
        log.info("SLURM job script:\n%s", cluster.job_script())
        cluster.adapt(minimum_jobs=minimum, maximum_jobs=maximum)
        yield cluster
    finally:
        cluster.close()


def first_workers_needed(config: SlurmConfig, workers: int | None) -> int:
    """Workers to wait for before dispatching: one job's worth (the rest join as they start)."""
    minimum, _ = job_counts(config, workers)
    return max(1, min(minimum, 1) * config.processes)


def no_workers_message(config: SlurmConfig) -> str:
    logs = Path(config.log_directory).resolve() if config.log_directory else "the job's working directory"
    return (f"no SLURM job started a Dask worker within {config.worker_start_timeout_s:g} s "
            f"(worker_start_timeout_s in {config.source}). Check `squeue --me` (pending on partition, account, "
            f"walltime or memory?) and the job logs in {logs}; workers must reach the scheduler on this host "
            "(set 'interface' to the cluster network, e.g. ib0)")
