"""``--cluster cuda``: Dask workers pinned to the visible GPUs.

One worker per GPU (``execution.workers_per_gpu: 1``, the default) is ``dask_cuda.LocalCUDACluster``:
it starts worker ``i`` with ``CUDA_VISIBLE_DEVICES`` rotated so that its own GPU comes first
(:func:`worker_visible_devices`), and pins it to the CPUs of that GPU's NUMA node. With
``workers_per_gpu: k > 1`` each GPU gets ``k`` worker processes (:func:`shared_gpu_cluster`),
each seeing only its GPU: a series' CPU stages (reading, nnU-Net's preprocessing, measuring,
storing) then run in ``k`` interpreters instead of the threads of one, which on an H200 were
40-60 times the fast network's own time per series (docs/performance.md); a series retried alone
holds the GPU's other workers back too (``flows/alone.py``). The segmenter uses
``cuda:0``, in every case the worker's own GPU. :func:`check_pinning` reads every started
worker's variable and stops the run unless each GPU has exactly its share of workers (they
would all land on the machine's GPU 0 otherwise).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import weakref
from collections import Counter

import dask
from distributed import Nanny, Scheduler, SpecCluster

from cohort.errors import RunCannotStart
from cohort.flows.alone import SHARED_GPU_ENV, shared_gpu_path
from cohort.flows.clusters import local_worker_settings
from cohort.flows.job_gpus import listed_devices
from cohort.flows.resources import Resources, usable_cpus, usable_memory_bytes, warn_if_short_of_memory
from cohort.signals import WORKER_PRELOAD

log = logging.getLogger(__name__)


def visible_gpus() -> int:
    """How many CUDA GPUs this process can use (0 without CUDA)."""
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def gpu_devices(visible: str | None, gpus: int, workers: int | None) -> list[str]:
    """The GPUs the run uses, as entries of this process's ``CUDA_VISIBLE_DEVICES`` (ids or
    UUIDs; ``0..gpus-1`` when it is unset): all of them, or the first N with ``--workers N``."""
    devices = listed_devices(visible) if visible else [str(i) for i in range(gpus)]
    devices = devices[:gpus]
    if workers and workers > len(devices):
        raise RunCannotStart(f"--workers {workers}: only {len(devices)} GPU(s) visible; "
                             "--cluster cuda runs on one GPU per --workers")
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


def check_pinning(client: object, devices: list[str], workers_per_gpu: int = 1) -> None:
    """Stop the run unless each of ``devices`` is the ``cuda:0`` of exactly ``workers_per_gpu`` workers."""
    seen = client.run(_visible_devices)
    owned = Counter(owned_device(value) for value in seen.values())
    if owned != Counter({device: workers_per_gpu for device in devices}):
        raise RunCannotStart(f"--cluster cuda: workers are not {workers_per_gpu} per GPU (expected "
                             f"{', '.join(devices)}; the workers' CUDA_VISIBLE_DEVICES are "
                             f"{', '.join(seen.values()) or 'unset'})")
    log.info("GPU workers pinned: %s", ", ".join(f"{worker} -> {value}" for worker, value in seen.items()))


def shared_gpu_specs(devices: list[str], workers_per_gpu: int, series_slots: int, memory_limit_bytes: int,
                     lock_directory: str) -> dict[str, dict]:
    """Dask worker specs of ``workers_per_gpu`` processes per GPU, each seeing only its GPU, and
    the GPU's lock under ``lock_directory`` (a series alone there holds the GPU's other workers
    back: ``flows/alone.py``).

    >>> specs = shared_gpu_specs(["0", "1"], 2, series_slots=2, memory_limit_bytes=2**30, lock_directory="/run/x")
    >>> {name: spec["options"]["env"]["CUDA_VISIBLE_DEVICES"] for name, spec in specs.items()}
    {'gpu0-0': '0', 'gpu0-1': '0', 'gpu1-0': '1', 'gpu1-1': '1'}
    >>> specs["gpu1-0"]["options"]["env"][SHARED_GPU_ENV]
    '/run/x/gpu-1'
    """
    return {f"gpu{device}-{copy}": {"cls": Nanny,
                                    "options": {"nthreads": series_slots, "memory_limit": memory_limit_bytes,
                                                "host": "127.0.0.1",
                                                "env": {"CUDA_VISIBLE_DEVICES": device,
                                                        SHARED_GPU_ENV: shared_gpu_path(lock_directory, device)}}}
            for device in devices for copy in range(workers_per_gpu)}


def shared_gpu_cluster(devices: list[str], workers_per_gpu: int, series_slots: int, resources: Resources
                       ) -> SpecCluster:
    """A local cluster of :func:`shared_gpu_specs` workers (no GPU is touched here: the workers
    open their CUDA context when they load a model), with a lock directory of its own, removed
    with the cluster. Call inside ``local_worker_settings``."""
    lock_directory = tempfile.mkdtemp(prefix="cohort-gpu-locks-")
    specs = shared_gpu_specs(devices, workers_per_gpu, series_slots, resources.memory_limit_bytes, lock_directory)
    cluster = SpecCluster(workers=specs, silence_logs=logging.ERROR, name="cohort-gpu",
                          scheduler={"cls": Scheduler, "options": {"host": "127.0.0.1", "dashboard_address": "127.0.0.1:0"}})
    weakref.finalize(cluster, shutil.rmtree, lock_directory, ignore_errors=True)
    return cluster


def cuda_cluster(workers: int | None, workers_per_gpu: int = 1, series_slots: int = 1,
                 reuse_freed_memory: bool = True, model_memory_gb: float | None = None) -> tuple[object, list[str]]:
    """A cluster on ``workers`` (default: all visible) GPUs with ``workers_per_gpu`` workers each,
    and the GPUs it uses. The CPUs and memory this process may use are shared among all the workers
    (torch threads for pre- and post-processing; a warning when a share is below ``model_memory_gb``).
    Only one worker per GPU needs dask-cuda."""
    gpus = visible_gpus()
    if gpus == 0:
        raise RunCannotStart("--cluster cuda: no CUDA GPU is visible to this process "
                             f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}, "
                             "torch.cuda.is_available() is False); use --cluster local on a CPU machine")
    devices = gpu_devices(os.environ.get("CUDA_VISIBLE_DEVICES"), gpus, workers)
    cpus = usable_cpus()
    resources = Resources.plan(cpus, usable_memory_bytes(cpus=cpus), workers=len(devices) * workers_per_gpu)
    log.info("GPU cluster: %s on %d GPU(s)", resources.describe(), len(devices))
    warn_if_short_of_memory(resources, model_memory_gb, "fewer execution.workers_per_gpu or GPUs per run")
    if resources.workers > cpus:
        log.warning("%d GPU workers share %d usable CPU(s): their CPU stages will queue for the CPUs "
                    "(fewer execution.workers_per_gpu)", resources.workers, cpus)
    with dask.config.set(local_worker_settings(resources, reuse_freed_memory)):
        if workers_per_gpu > 1:
            return shared_gpu_cluster(devices, workers_per_gpu, series_slots, resources), devices
        try:
            from dask_cuda import LocalCUDACluster
        except ImportError:
            raise RunCannotStart("--cluster cuda needs dask-cuda for one worker per GPU: pip install 'cohort[cuda]' "
                                 "(or execution.workers_per_gpu > 1, or --cluster local)") from None
        # dask-cuda passes its workers an explicit preload list, so the config's preload (Ctrl-C left
        # to the driver) must be given here too; dask-cuda appends its own after it
        cluster = LocalCUDACluster(CUDA_VISIBLE_DEVICES=",".join(devices), threads_per_worker=series_slots,
                                   memory_limit=resources.memory_limit_bytes, dashboard_address="127.0.0.1:0",
                                   silence_logs=logging.ERROR, preload=[WORKER_PRELOAD])
    return cluster, devices
