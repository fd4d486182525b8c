"""``--cluster cuda``: one Dask worker per visible GPU (``dask_cuda.LocalCUDACluster``).

dask-cuda starts worker ``i`` with ``CUDA_VISIBLE_DEVICES`` rotated so that its own GPU comes
first (:func:`worker_visible_devices`); the segmenter uses ``cuda:0``, which in that worker is
its own GPU. :func:`check_pinning` reads every started worker's variable and stops the run if
two workers would share a GPU (they would all land on the machine's GPU 0 otherwise).
"""

from __future__ import annotations

import logging
import os

import dask

from cohort.errors import RunCannotStart
from cohort.flows.resources import Resources, usable_cpus, usable_memory_bytes

log = logging.getLogger(__name__)


def visible_gpus() -> int:
    """How many CUDA GPUs this process can use (0 without CUDA)."""
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def gpu_devices(visible: str | None, gpus: int, workers: int | None) -> list[str]:
    """The GPU each worker owns, as entries of this process's ``CUDA_VISIBLE_DEVICES`` (ids or
    UUIDs; ``0..gpus-1`` when it is unset): one per worker, ``--workers N`` takes the first N."""
    devices = [d.strip() for d in visible.split(",") if d.strip()] if visible else [str(i) for i in range(gpus)]
    devices = devices[:gpus]
    if workers and workers > len(devices):
        raise RunCannotStart(f"--workers {workers}: only {len(devices)} GPU(s) visible; "
                             "--cluster cuda runs one worker per GPU")
    return devices[:workers or len(devices)]


def worker_visible_devices(devices: list[str]) -> list[str]:
    """``CUDA_VISIBLE_DEVICES`` of each worker as dask-cuda sets it: its own GPU first, so that
    ``cuda:0`` in worker ``i`` is ``devices[i]``."""
    return [",".join(devices[i:] + devices[:i]) for i in range(len(devices))]


def owned_device(worker_visible: str) -> str:
    """The GPU a worker computes on: the first entry of its ``CUDA_VISIBLE_DEVICES``."""
    return worker_visible.split(",")[0].strip()


def _visible_devices() -> str:
    """Run on each worker by :func:`check_pinning`."""
    return os.environ.get("CUDA_VISIBLE_DEVICES", "")


def check_pinning(client: object, devices: list[str]) -> None:
    """Stop the run unless each worker's ``cuda:0`` is a different one of ``devices``."""
    seen = client.run(_visible_devices)
    owned = sorted(owned_device(value) for value in seen.values())
    if owned != sorted(devices):
        raise RunCannotStart(f"--cluster cuda: workers are not one per GPU (expected {', '.join(devices)}, the "
                             f"workers' CUDA_VISIBLE_DEVICES are {', '.join(seen.values()) or 'unset'})")
    log.info("GPU workers pinned: %s", ", ".join(f"{worker} -> {value}" for worker, value in seen.items()))


def cuda_cluster(workers: int | None, series_slots: int = 1, reuse_freed_memory: bool = True
                 ) -> tuple[object, list[str]]:
    """A ``LocalCUDACluster`` with ``workers`` (default: all visible) GPUs, one worker each, and
    the GPU each worker owns. The CPUs this process may use are shared among the GPU workers
    (torch threads for pre- and post-processing)."""
    try:
        from dask_cuda import LocalCUDACluster
    except ImportError:
        raise RunCannotStart("--cluster cuda needs dask-cuda: pip install 'cohort[cuda]' (or use --cluster local)"
                             ) from None
    gpus = visible_gpus()
    if gpus == 0:
        raise RunCannotStart("--cluster cuda: no CUDA GPU is visible to this process "
                             f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}, "
                             "torch.cuda.is_available() is False); use --cluster local on a CPU machine")
    devices = gpu_devices(os.environ.get("CUDA_VISIBLE_DEVICES"), gpus, workers)
    cpus = usable_cpus()
    resources = Resources.plan(cpus, usable_memory_bytes(cpus=cpus), workers=len(devices))
    log.info("GPU cluster: %s", resources.describe())
    with dask.config.set(resources.dask_config(reuse_freed_memory)):
        cluster = LocalCUDACluster(CUDA_VISIBLE_DEVICES=",".join(devices), threads_per_worker=series_slots,
                                   memory_limit=resources.memory_limit_bytes, dashboard_address="127.0.0.1:0",
                                   silence_logs=logging.ERROR)
    return cluster, devices
