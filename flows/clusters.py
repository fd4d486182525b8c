"""Dask clusters a run can use: a local cluster (default), dask-cuda, SLURM."""

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


@contextmanager
def open_client(kind: str, workers: int | None, execution: ExecutionConfig) -> Iterator[Client]:
    """A Dask client on a fresh cluster of ``kind``; the cluster is closed on exit."""
    settings = {"distributed.scheduler.allowed-failures": execution.retries}
    with dask.config.set(settings), _cluster(kind, workers) as cluster, Client(cluster) as client:
        yield client


@contextmanager
def _cluster(kind: str, workers: int | None) -> Iterator[object]:
    if kind == "local":
        cluster = LocalCluster(n_workers=workers or os.cpu_count() or 1, threads_per_worker=1, processes=True,
                               dashboard_address="127.0.0.1:0", silence_logs=logging.ERROR)
    else:
        raise RunCannotStart(f"--cluster {kind!r}: choose one of {', '.join(CLUSTERS)}")
    try:
        yield cluster
    finally:
        cluster.close()
