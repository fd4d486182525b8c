"""``--cluster slurm``: Dask workers as SLURM jobs (dask-jobqueue), configured from YAML.

The settings live in ``configs/slurm.yaml`` (or the file named by ``execution.slurm_config``
in the run config), are validated on load like every other config file (unknown keys and
wrong types name the file and key), and map one to one onto ``dask_jobqueue.SLURMCluster``.
:func:`cluster_kwargs` is a pure function, so the generated job script can be tested
without a controller.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from cohort.config import config_file, from_mapping, load_yaml
from cohort.errors import ConfigError, RunCannotStart
from cohort.flows.job_gpus import PROCESSES_ENV
from cohort.flows.resources import Resources, warn_if_short_of_memory
from cohort.segmentation.passes import PassPolicy

log = logging.getLogger(__name__)
DEFAULT_SLURM_CONFIG = "slurm.yaml"
GPU_PRELOAD = "cohort.flows.job_gpus"


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
    processes: int = 2  # as configs/slurm.yaml: 2 threads and 8 GB each, what the fast model needs
    memory: str = "16GiB"
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
    _check_memory(config.memory, path)
    if config.cores % config.processes:
        raise ConfigError(f"{path}: key 'processes' ({config.processes}) must divide 'cores' ({config.cores}): "
                          "each Dask worker gets cores / processes threads")
    if config.gpus_per_job < 0:
        raise ConfigError(f"{path}: key 'gpus_per_job' must be 0 or more, got {config.gpus_per_job}")
    if config.gpus_per_job > config.processes:
        raise ConfigError(f"{path}: key 'gpus_per_job' ({config.gpus_per_job}) is more than 'processes' "
                          f"({config.processes}): each worker process computes on one GPU, so "
                          f"{config.gpus_per_job - config.processes} GPU(s) of every job would sit idle")
    if not 1 <= config.adapt.minimum_jobs <= config.adapt.maximum_jobs:
        # 0 would submit no job at all: the run waits for a first worker before it submits any
        # series, and adaptive scaling asks for jobs only once series wait
        raise ConfigError(f"{path}: keys 'adapt.minimum_jobs' and 'adapt.maximum_jobs' need "
                          f"1 <= minimum_jobs <= maximum_jobs (with 0 jobs no worker ever starts), got "
                          f"{config.adapt.minimum_jobs} and {config.adapt.maximum_jobs}")
    return SlurmConfig(**{**config.__dict__, "source": str(path)})


def _check_memory(memory: str, path: Path) -> None:
    """Stop on a ``memory`` that dask-jobqueue cannot read (``16GiB``, ``64GB`` and ``500MB`` are
    fine): it is only parsed when the cluster starts, where ``ValueError`` gave a traceback."""
    from dask.utils import parse_bytes

    try:
        size = parse_bytes(memory)
    except (ValueError, TypeError):
        size = 0
    if size <= 0:
        raise ConfigError(f"{path}: key 'memory' must be a size such as 16GiB or 64GB, got {memory!r}")


def job_share(config: SlurmConfig) -> Resources:
    """What each of a job's ``processes`` workers gets: ``cores / processes`` threads and
    ``memory / processes``."""
    from dask.utils import parse_bytes

    return Resources(config.cores, config.processes, config.cores // config.processes,
                     parse_bytes(config.memory) // config.processes)


@dataclass(frozen=True)
class WorkerNeeds:
    """What a run asks of each SLURM worker: ``series_slots`` series at once (``1 +
    execution.prefetch``, GPU jobs ``gpu_prefetch``), its forward passes on a CPU (``passes``:
    up to ``execution.network_passes`` at once, cohort.segmentation.passes), ``model_memory_gb`` for one copy of the run's model (None: nothing is
    segmented), and whether its heap hands freed memory back (``reuse_freed_memory``)."""

    series_slots: int = 1
    passes: PassPolicy = PassPolicy()
    model_memory_gb: float | None = None
    reuse_freed_memory: bool = True


def worker_exports(config: SlurmConfig, needs: WorkerNeeds = WorkerNeeds()) -> list[str]:
    """Job-script lines that give each of a job's ``processes`` workers its share of the job:
    ``cores / processes`` threads for torch, OpenMP and BLAS (the job's affinity would give each
    worker all of the job's cores), the forward passes it may run at once on a CPU (up to
    ``needs.passes.most``, as its threads and the model's memory allow;
    cohort.segmentation.gate), and, with ``needs.reuse_freed_memory``, the heap settings of
    cohort.heap for ``memory / processes``."""
    share = job_share(config)
    passes = PassPolicy() if config.gpus_per_job else share.pass_policy(needs.passes, needs.model_memory_gb)
    environment = share.worker_environment(needs.reuse_freed_memory, passes)
    if config.gpus_per_job:
        environment[PROCESSES_ENV] = str(config.processes)
    return [f"export {name}={value}" for name, value in environment.items()]


def cluster_kwargs(config: SlurmConfig, needs: WorkerNeeds = WorkerNeeds()) -> dict[str, Any]:
    """Keyword arguments of ``dask_jobqueue.SLURMCluster`` for ``config``: each worker runs
    ``needs.series_slots`` series at once, not dask-jobqueue's one per thread, so a worker's
    memory holds what it does on a local cluster; its environment as :func:`worker_exports` says."""
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
        "job_script_prologue": [*worker_exports(config, needs),
                                *config.job_script_prologue],
        "job_extra_directives": directives,
        "interface": config.interface,
        "scheduler_options": {"dashboard_address": config.dashboard_address},
        "local_directory": config.local_directory,
        "log_directory": config.log_directory,
        "python": config.python or sys.executable,
        "death_timeout": config.death_timeout_s,
        # the last --nthreads wins over dask-jobqueue's own (cores / processes); each worker process
        # of a GPU job on its own GPU of the job (cohort.flows.job_gpus)
        "worker_extra_args": ["--nthreads", str(needs.series_slots),
                              *(["--preload", GPU_PRELOAD] if config.gpus_per_job else [])],
    }
    return {key: value for key, value in kwargs.items() if value is not None}


def job_counts(config: SlurmConfig, workers: int | None) -> tuple[int, int]:
    """(minimum, maximum) jobs: ``--workers N`` asks for N workers, so ceil(N / processes) jobs."""
    if workers:
        jobs = -(-workers // config.processes)
        return jobs, jobs
    return config.adapt.minimum_jobs, config.adapt.maximum_jobs


@contextmanager
def slurm_cluster(config: SlurmConfig, workers: int | None, needs: WorkerNeeds = WorkerNeeds()) -> Iterator[object]:
    """A ``SLURMCluster`` scaled adaptively between the configured (or ``--workers``) bounds, its
    workers sized as :func:`cluster_kwargs` says.

    Adaptive scaling also replaces jobs that end early (``scancel``, walltime, node failure).
    """
    try:
        from dask_jobqueue import SLURMCluster
    except ImportError:
        raise RunCannotStart("--cluster slurm needs dask-jobqueue: pip install 'cohort[slurm]'") from None
    if config.log_directory:
        Path(config.log_directory).mkdir(parents=True, exist_ok=True)
    warn_if_short_of_memory(job_share(config), needs.model_memory_gb,
                            f"raise 'memory' or lower 'processes' in {config.source}")
    try:
        cluster = SLURMCluster(**cluster_kwargs(config, needs))
    except (ValueError, OSError) as error:
        raise RunCannotStart(f"{config.source}: cannot set up the SLURM cluster: {error}") from None
    try:
        minimum, maximum = job_counts(config, workers)
        log.info("SLURM job script:\n%s", cluster.job_script())
        check_job_can_run(cluster.job_script(), config)
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


NEVER_STARTS: dict[str, tuple[str, ...]] = {
    "PartitionConfig": ("cores", "memory", "gpus_per_job", "queue"),
    "PartitionNodeLimit": ("cores", "memory", "queue"),
    "PartitionTimeLimit": ("walltime",),
    "PartitionDown": ("queue",),
    "PartitionInactive": ("queue",),
    "BadConstraints": ("job_extra_directives",),
    "ReqNodeNotAvail": ("queue", "job_extra_directives"),
    "InvalidAccount": ("account",),
    "InvalidQOS": ("job_extra_directives",),
    "QOSNotAllowed": ("job_extra_directives",),
    "AccountNotAllowed": ("account", "queue"),
    "MaxMemPerLimit": ("memory",),
    "QOSMaxMemoryPerJob": ("memory",),
    "QOSMaxCpuPerJobLimit": ("cores",),
    "AssocMaxCpuPerJobLimit": ("cores",),
    "QOSMaxGRESPerJob": ("gpus_per_job",),
    "QOSMaxWallDurationPerJobLimit": ("walltime",),
    "AssocMaxWallDurationPerJobLimit": ("walltime",),
}
"""Pending reasons (``squeue %r``) of a job that waits for a change of its request, not for its
turn, mapped to the keys of the SLURM config that make the request; from the JOB REASON CODES
of ``man squeue``. ``Resources``, ``Priority`` and the like are a normal wait and are absent."""

SUBMIT_ERRORS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("memory specification", ("memory",)),
    ("time limit", ("walltime",)),
    ("cpu count", ("cores",)),
    ("more processors requested", ("cores",)),
    ("invalid account", ("account",)),
    ("invalid partition", ("queue",)),
    ("generic resource", ("gpus_per_job",)),
    ("invalid feature", ("job_extra_directives",)),
    ("invalid qos", ("job_extra_directives",)),
    ("requested node configuration is not available", ("cores", "memory", "gpus_per_job", "queue")),
)
"""What ``sbatch`` says when it refuses a job (lower case), mapped to the SLURM config keys."""
SQUEUE_TIMEOUT_S = 30.0


def pending_reasons(squeue_output: str) -> dict[str, str]:
    """Job id -> pending reason from ``squeue -h -o "%i %r"`` (``ReqNodeNotAvail, UnavailableNodes:n1``
    keeps only ``ReqNodeNotAvail``)."""
    reasons = {}
    for line in squeue_output.splitlines():
        job_id, _, reason = line.strip().partition(" ")
        if job_id:
            reasons[job_id] = reason.strip().split(",")[0].strip().strip("()")
    return reasons


def keys_for_reason(reason: str) -> tuple[str, ...]:
    """The SLURM config keys to change for a job pending with ``reason``; () when it just waits."""
    return NEVER_STARTS.get(reason, ())


def keys_for_submit_error(message: str) -> tuple[str, ...]:
    """The SLURM config keys behind an ``sbatch`` refusal (() when the message is not recognised)."""
    text = message.lower()
    return next((keys for fragment, keys in SUBMIT_ERRORS if fragment in text), ())


def _change_hint(keys: tuple[str, ...], config: SlurmConfig) -> str:
    named = " or ".join(f"'{key}' (now {_current(key, config)})" for key in keys)
    return (f"change {named} in {config.source} to fit the partition "
            "(`sinfo -o '%P %l %c %m %G %f'` lists time limit, CPUs, memory (MB), GPUs and features per node)")


def _current(key: str, config: SlurmConfig) -> object:
    value = getattr(config, key)
    return value if value not in (None, [], "") else "unset"


def check_job_can_run(job_script: str, config: SlurmConfig) -> None:
    """Ask the controller whether a worker job could ever run (``sbatch --test-only``, which
    submits nothing); a refusal stops the run at once with sbatch's reason and the key to change."""
    if not shutil.which("sbatch"):
        raise RunCannotStart("--cluster slurm: `sbatch` is not on PATH; run cohort on a SLURM login node or "
                             "inside a job")
    with tempfile.NamedTemporaryFile("w", suffix=".sh", prefix="cohort-worker-") as script:
        script.write(job_script)
        script.flush()
        try:
            answer = subprocess.run(["sbatch", "--test-only", script.name], capture_output=True, text=True,
                                    timeout=SQUEUE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            log.warning("sbatch --test-only did not answer within %g s; not checked", SQUEUE_TIMEOUT_S)
            return
    if answer.returncode != 0:
        reason = " ".join(line.removeprefix("sbatch: error: ").removeprefix("allocation failure: ")
                          for line in answer.stderr.strip().splitlines())
        keys = keys_for_submit_error(reason)
        hint = _change_hint(keys, config) if keys else f"check the settings in {config.source}"
        raise RunCannotStart(f"SLURM refuses the worker job: {reason or 'sbatch --test-only failed'}; {hint}")


def unstartable_jobs_check(cluster: object, config: SlurmConfig) -> Callable[[], None]:
    """A check, called while waiting for the first workers, that stops the run when one of
    ``cluster``'s jobs is pending for a reason that no wait resolves (:data:`NEVER_STARTS`)."""

    def check() -> None:
        jobs = {job.job_id for job in cluster.workers.values() if getattr(job, "job_id", None)}
        if not jobs:
            return
        try:
            listing = subprocess.run(["squeue", "--me", "-h", "-t", "PENDING", "-o", "%i %r"], capture_output=True,
                                     text=True, timeout=SQUEUE_TIMEOUT_S)
        except (OSError, subprocess.TimeoutExpired) as error:
            log.warning("squeue did not answer (%s); pending reasons not checked", error)
            return
        for job_id, reason in pending_reasons(listing.stdout).items():
            keys = keys_for_reason(reason)
            if job_id in jobs and keys:
                raise RunCannotStart(f"SLURM job {job_id} can never start: pending reason {reason}; "
                                     f"{_change_hint(keys, config)}")

    return check
