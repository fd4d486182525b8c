"""Dask clusters a run can use: a local cluster (default), dask-cuda, SLURM.

Every wait has a timeout: a worker that cannot start (or cannot reach the scheduler) makes a
Dask client wait forever otherwise. ``RunCannotStart`` says what to check.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from typing import Iterator

import dask
from distributed import Client, LocalCluster

from cohort.config import ExecutionConfig
from cohort.errors import RunCannotStart

CLUSTERS = ("local", "cuda", "slurm")
LOCAL_START_TIMEOUT_S = 120.0
log = logging.getLogger(__name__)


def dask_settings(execution: ExecutionConfig) -> dict[str, object]:
    """Scheduler settings of every cohort cluster.

    ``allowed-failures``: a series whose worker dies ``retries + 1`` times fails (KilledWorker).
    ``worker-saturation`` 1.0: a worker holds only the series it is running, so a worker that
    dies (or is restarted after a timeout) takes no innocent queued series with it.
    """
    return {"distributed.scheduler.allowed-failures": execution.retries,
            "distributed.scheduler.worker-saturation": 1.0}


@contextmanager
def open_client(kind: str, workers: int | None, execution: ExecutionConfig) -> Iterator[Client]:
    """A Dask client on a fresh cluster of ``kind`` with at least one worker; closed on exit."""
    with dask.config.set(dask_settings(execution)), _cluster(kind, workers, execution) as (cluster, wait):
        with Client(cluster) as client:
            needed, timeout, message = wait
            try:
                client.wait_for_workers(needed, timeout=timeout)
            except TimeoutError:
                raise RunCannotStart(message) from None
            yield client


@contextmanager
def _cluster(kind: str, workers: int | None, execution: ExecutionConfig) -> Iterator[tuple[object, tuple]]:
    if kind == "local":
        n = workers or os.cpu_count() or 1
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                               dashboard_address="127.0.0.1:0", silence_logs=logging.ERROR)
        wait = (n, LOCAL_START_TIMEOUT_S, f"the local Dask cluster did not start {n} worker(s) within "
                f"{LOCAL_START_TIMEOUT_S:g} s; try fewer --workers")
    elif kind == "cuda":
        from cohort.flows.cuda import cuda_cluster

        cluster = cuda_cluster(workers)
        n = len(cluster.workers)
        wait = (n, LOCAL_START_TIMEOUT_S, f"dask-cuda did not start {n} GPU worker(s) within "
                f"{LOCAL_START_TIMEOUT_S:g} s")
    elif kind == "slurm":
        from cohort.flows.slurm import first_workers_needed, load_slurm_config, no_workers_message, slurm_cluster

        config = load_slurm_config(execution.slurm_config)
        with slurm_cluster(config, workers) as cluster:
            yield cluster, (first_workers_needed(config, workers), config.worker_start_timeout_s,
                            no_workers_message(config))
        return
    else:
        raise RunCannotStart(f"--cluster {kind!r}: choose one of {', '.join(CLUSTERS)}")
    try:
        yield cluster, wait
    finally:
        cluster.close()
