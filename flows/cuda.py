"""``--cluster cuda``: one Dask worker per visible GPU (``dask_cuda.LocalCUDACluster``).

dask-cuda starts each worker with ``CUDA_VISIBLE_DEVICES`` rotated so that its own GPU is
device 0; the segmenter, loaded once per worker process, therefore lands on that GPU.
"""

from __future__ import annotations

import logging
import os

from cohort.errors import RunCannotStart

log = logging.getLogger(__name__)


def visible_gpus() -> int:
    """How many CUDA GPUs this process can use (0 without CUDA)."""
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def cuda_cluster(workers: int | None) -> object:
    """A ``LocalCUDACluster`` with ``workers`` (default: all visible) GPUs, one worker each."""
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
    if workers and workers > gpus:
        raise RunCannotStart(f"--workers {workers}: only {gpus} GPU(s) visible; --cluster cuda runs one worker per GPU")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    devices = [d.strip() for d in visible.split(",") if d.strip()] if visible else [str(i) for i in range(gpus)]
    return LocalCUDACluster(CUDA_VISIBLE_DEVICES=",".join(devices[:workers or gpus]), threads_per_worker=1, dashboard_address="127.0.0.1:0",
                            silence_logs=logging.ERROR)
