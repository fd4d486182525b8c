"""Dask clusters a run can use: a local cluster (default), dask-cuda, SLURM.

Every wait has a timeout: a worker that cannot start (or cannot reach the scheduler) makes a
Dask client wait forever otherwise. ``RunCannotStart`` says what to check.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

import dask
from distributed import Client, LocalCluster

from cohort.config import AUTO, ExecutionConfig
from cohort.errors import RunCannotStart
from cohort.flows.resources import Resources, warn_if_short_of_memory
from cohort.segmentation.passes import PassPolicy
from cohort.signals import WORKER_PRELOAD

CLUSTERS = ("local", "cuda", "slurm")
LOCAL_START_TIMEOUT_S = 120.0
log = logging.getLogger(__name__)


SCHEDULER_SETTINGS = {"distributed.scheduler.allowed-failures": 0,
                      "distributed.scheduler.worker-saturation": 1.0}
"""Scheduler settings of every cohort cluster.

``allowed-failures`` 0: the driver hears of every worker death at once (KilledWorker) and decides
itself whom it counts against (``flows/dispatch.py``, ``execution.retries``).
``worker-saturation`` 1.0: a worker holds only the series it is running, so a worker that dies
(or is restarted after a timeout) takes no innocent queued series with it.
"""


def series_slots(execution: ExecutionConfig, gpu: bool = False) -> int:
    """Dask threads per worker, on every cluster: the series on the network plus
    ``execution.prefetch`` (GPU workers, SLURM GPU jobs included: ``gpu_prefetch``) prepared ahead
    (read, resampled, preprocessed) or finishing (restored, measured, stored) beside it. A GPU runs
    one forward pass at a time per worker; a CPU worker up to ``execution.network_passes``, each on
    its share of the threads (cohort.segmentation.gate). ``prefetch: auto`` gives a CPU worker one
    slot more, which it uses only while it runs two passes at once (:func:`pass_policy`).

    >>> series_slots(ExecutionConfig(prefetch="auto")), series_slots(ExecutionConfig(prefetch=0))
    (2, 1)
    >>> series_slots(ExecutionConfig(gpu_prefetch=3), gpu=True)
    4
    """
    if gpu:
        return 1 + execution.gpu_prefetch
    return 1 + (1 if execution.prefetch == AUTO else execution.prefetch)


def pass_policy(execution: ExecutionConfig) -> PassPolicy:
    """What a CPU worker is told about its forward passes (cohort.segmentation.passes): at most
    ``execution.network_passes``, one per series slot (``auto``: one per slot, and the worker keeps
    them only where timing its network says they pay); under ``prefetch: auto`` its series run side
    by side only while its passes do. The worker's threads and memory may allow fewer
    (``Resources.network_passes``).

    >>> pass_policy(ExecutionConfig())
    PassPolicy(most=2, choose=True, series_follow_passes=True)
    >>> pass_policy(ExecutionConfig(prefetch=1, network_passes=1))
    PassPolicy(most=1, choose=False, series_follow_passes=False)
    """
    slots = series_slots(execution)
    choose = execution.network_passes == AUTO
    return PassPolicy(slots if choose else min(slots, execution.network_passes), choose,
                      execution.prefetch == AUTO)


def with_model_threads(execution: ExecutionConfig, model_threads: int | None) -> ExecutionConfig:
    """``execution`` with ``threads_per_worker`` decided: as configured, else the run's model's
    ``worker_threads`` (None: nothing is segmented), else 1. A forward pass of TotalSegmentator's
    networks runs 1.94x faster on two threads than on one, and two one-thread passes side by side
    slow each other down, so one-thread workers were the slowest way to segment (docs/performance.md).
    A run that segments nothing turns ``prefetch: auto`` into 0: with no network to time, its
    workers would run one series at a time anyway, and a second slot would hold a series back
    from an idle worker.

    >>> with_model_threads(ExecutionConfig(), 2).threads_per_worker
    2
    >>> with_model_threads(ExecutionConfig(threads_per_worker=1), 2).threads_per_worker
    1
    >>> labels_only = with_model_threads(ExecutionConfig(), None)
    >>> labels_only.threads_per_worker, labels_only.prefetch
    (1, 0)
    """
    prefetch = 0 if model_threads is None and execution.prefetch == AUTO else execution.prefetch
    return dataclasses.replace(execution, threads_per_worker=execution.threads_per_worker or model_threads or 1,
                               prefetch=prefetch)


def local_worker_settings(resources: Resources, reuse_freed_memory: bool, passes: PassPolicy = PassPolicy()
                          ) -> dict[str, object]:
    """Dask settings of the worker processes a cluster starts on this machine (local and GPU
    clusters): each one's share of CPUs and memory, its forward passes on a CPU, and the preload
    that leaves Ctrl-C to the driver."""
    return {**resources.dask_config(reuse_freed_memory, passes),
            "distributed.worker.preload": [WORKER_PRELOAD]}


@contextmanager
def open_client(kind: str, workers: int | None, execution: ExecutionConfig,
                model_memory_gb: float | None = None, series: int | None = None) -> Iterator[Client]:
    """A Dask client on a fresh cluster of ``kind`` with at least one worker; closed on exit.
    ``model_memory_gb``: what one worker needs for the run's model (none when nothing is segmented);
    ``series``: how many the run processes (a local cluster starts no more workers)."""
    with preserved_environment(), dask.config.set(SCHEDULER_SETTINGS), _deaths_judged_by_the_driver(), \
            _cluster(kind, workers, execution, model_memory_gb, series) as (cluster, start):
        with Client(cluster) as client:
            wait_for_start(client, start)
            yield client


class _NotKilledWorkerErrors(logging.Filter):
    """Drops the scheduler's "Task ... marked as failed because N workers died" errors: with
    ``allowed-failures`` 0 every death reads so, although the driver retries the series
    (``flows/dispatch.py`` logs what it does instead)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Task %s marked as failed because %d workers died")


@contextmanager
def _deaths_judged_by_the_driver() -> Iterator[None]:
    scheduler_log, quiet = logging.getLogger("distributed.scheduler"), _NotKilledWorkerErrors()
    scheduler_log.addFilter(quiet)
    try:
        yield
    finally:
        scheduler_log.removeFilter(quiet)


@contextmanager
def preserved_environment() -> Iterator[None]:
    """Put back this process's environment on exit: Dask's nannies write their workers'
    variables (threads, heap settings) into it before each spawn, and a later run with other
    settings, or a program this process starts afterwards, must not inherit them."""
    saved = dict(os.environ)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


@dataclass(frozen=True)
class StartCheck:
    """How to wait for a cluster's first workers: how many, how long, and ``check``, called every
    ``poll_s`` while waiting, which raises :class:`RunCannotStart` when they can never come
    (a SLURM job the partition cannot fit) instead of waiting out ``timeout_s``; ``after``
    checks the started workers (each GPU worker on its own GPU)."""

    needed: int
    timeout_s: float
    message: str
    check: Callable[[], None] = lambda: None
    poll_s: float = 3.0
    after: Callable[[Client], None] = lambda client: None


def wait_for_start(client: Client, start: StartCheck) -> None:
    deadline = time.monotonic() + start.timeout_s
    while True:
        start.check()
        left = deadline - time.monotonic()
        if left <= 0:
            raise RunCannotStart(start.message)
        try:
            client.wait_for_workers(start.needed, timeout=min(start.poll_s, left))
        except TimeoutError:
            continue
        start.after(client)
        return


def local_resources(workers: int | None, execution: ExecutionConfig, model_memory_gb: float | None,
                     series: int | None) -> Resources:
    """The local cluster's shape (:meth:`Resources.plan`), with no more workers than the CPUs this
    process may use (more would only take turns on them: ``--workers 64`` on 2 CPUs started 64
    processes for 2 series, 8x slower) nor than the ``series`` to process (an idle worker costs
    only its start-up)."""
    def plan(count: int | None) -> Resources:
        return Resources.for_this_process(count, execution.threads_per_worker or 1, execution.worker_memory_gb,
                                          model_memory_gb)

    resources = plan(workers)
    useful = min(resources.workers, resources.cpus, series or resources.workers)
    if workers is not None and workers > resources.cpus:
        log.warning("--workers %d: this process may use %d CPU(s); starting %d local worker(s)", workers,
                    resources.cpus, useful)
    return resources if useful == resources.workers else plan(useful)


@contextmanager
def _cluster(kind: str, workers: int | None, execution: ExecutionConfig,
             model_memory_gb: float | None, series: int | None = None) -> Iterator[tuple[object, StartCheck]]:
    if kind == "local":
        resources = local_resources(workers, execution, model_memory_gb, series)
        passes = resources.pass_policy(pass_policy(execution), model_memory_gb)
        log.info("local cluster: %s; forward passes at once per worker: %s", resources.describe(), passes.describe())
        warn_if_short_of_memory(resources, model_memory_gb, "fewer --workers, or execution.worker_memory_gb")
        with dask.config.set(local_worker_settings(resources, execution.reuse_freed_memory, passes)):
            cluster = LocalCluster(n_workers=resources.workers, threads_per_worker=series_slots(execution),
                                   processes=True,
                                   memory_limit=resources.memory_limit_bytes, dashboard_address="127.0.0.1:0",
                                   silence_logs=logging.ERROR)
        n = resources.workers
        start = StartCheck(n, LOCAL_START_TIMEOUT_S, f"the local Dask cluster did not start {n} worker(s) within "
                           f"{LOCAL_START_TIMEOUT_S:g} s; try fewer --workers")
    elif kind == "cuda":
        from cohort.flows.cuda import check_pinning, cuda_cluster

        per_gpu = execution.workers_per_gpu
        cluster, devices = cuda_cluster(workers, per_gpu, series_slots(execution, gpu=True),
                                        execution.reuse_freed_memory, model_memory_gb)
        n = len(devices) * per_gpu
        start = StartCheck(n, LOCAL_START_TIMEOUT_S, f"--cluster cuda did not start {n} GPU worker(s) within "
                           f"{LOCAL_START_TIMEOUT_S:g} s",
                           after=lambda client: check_pinning(client, devices, per_gpu))
    elif kind == "slurm":
        from cohort.flows.slurm import (WorkerNeeds, first_workers_needed, load_slurm_config, no_workers_message,
                                        slurm_cluster, unstartable_jobs_check)

        config = load_slurm_config(execution.slurm_config)
        needs = WorkerNeeds(series_slots(execution, gpu=config.gpus_per_job > 0), pass_policy(execution),
                            model_memory_gb, execution.reuse_freed_memory)
        with slurm_cluster(config, workers, needs) as cluster:
            yield cluster, StartCheck(first_workers_needed(config, workers), config.worker_start_timeout_s,
                                      no_workers_message(config), unstartable_jobs_check(cluster, config))
        return
    else:
        raise RunCannotStart(f"--cluster {kind!r}: choose one of {', '.join(CLUSTERS)}")
    try:
        yield cluster, start
    finally:
        cluster.close()

