"""The Dask workers of a SLURM GPU job, one GPU each: worker ``i`` of a job computes on its GPU ``i mod G``.

SLURM gives a job with ``--gres=gpu:G`` a ``CUDA_VISIBLE_DEVICES`` listing its G GPUs, and every
worker process of the job inherits it: each would compute on ``cuda:0``, the job's first GPU,
while the others sit idle. This module is those workers' preload (``--preload
cohort.flows.job_gpus`` in the job script, :func:`cohort.flows.slurm.cluster_kwargs`): in each
worker process, before anything touches CUDA, it narrows ``CUDA_VISIBLE_DEVICES`` to the worker's
own GPU, so that ``cuda:0`` is that GPU; where processes outnumber the GPUs, it gives the processes
of each GPU that GPU's lock, so that a series retried alone has the whole GPU. A worker's index in
its job is the suffix that Dask's worker command gives the processes of one job (``<name>-0``,
``<name>-1``, ...); a job of one process (:data:`PROCESSES_ENV` is 1) has no suffix, and its
worker takes the job's first GPU.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from pathlib import Path

from cohort.flows.alone import SHARED_GPU_ENV, shared_gpu_path

PROCESSES_ENV = "COHORT_JOB_PROCESSES"
"""Exported by the job script: how many worker processes the job runs."""
log = logging.getLogger(__name__)


def job_gpu(worker_name: str, processes: int, visible: str) -> str | None:
    """The entry of the job's ``CUDA_VISIBLE_DEVICES`` that the worker named ``worker_name`` owns
    (None when the job lists no GPU).

    >>> job_gpu("cohort-worker-3-1", 2, "4,7"), job_gpu("cohort-worker-3-0", 2, "4,7")
    ('7', '4')
    >>> job_gpu("cohort-worker-3-3", 4, "4,7"), job_gpu("cohort-worker-12", 1, "4,7"), job_gpu("x-1", 2, "")
    ('7', '4', None)
    """
    devices = listed_devices(visible)
    if not devices:
        return None
    suffix = re.search(r"-(\d+)$", worker_name)
    index = int(suffix.group(1)) if processes > 1 and suffix else 0
    return devices[index % len(devices)]


def listed_devices(visible: str) -> list[str]:
    """The entries of a ``CUDA_VISIBLE_DEVICES`` value (ids or UUIDs), in order.

    >>> listed_devices("GPU-1a2b, 3,")
    ['GPU-1a2b', '3']
    """
    return [device.strip() for device in visible.split(",") if device.strip()]


def job_lock_directory(job_id: str) -> Path:
    """Where the worker processes of one job keep the locks of the GPUs they share (node-local)."""
    return Path(tempfile.gettempdir()) / f"cohort-gpu-locks-job-{job_id}"


def dask_setup(worker) -> None:
    """Dask worker preload hook: pin this worker process to its GPU of the job; when the job runs
    more processes than it has GPUs, give it the GPU's lock (``flows/alone.py``)."""
    processes = int(os.environ.get(PROCESSES_ENV, "1") or 1)
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    device = job_gpu(str(worker.name), processes, visible)
    if device is None:
        return
    os.environ["CUDA_VISIBLE_DEVICES"] = device
    log.info("worker %s computes on GPU %s of its job", worker.name, device)
    job = os.environ.get("SLURM_JOB_ID")
    if job and processes > len(listed_devices(visible)):
        os.environ[SHARED_GPU_ENV] = shared_gpu_path(job_lock_directory(job), device)
