"""How many workers a local cluster gets, how many CPU threads each, and how much memory.

``os.cpu_count()`` is the machine's count, not what this process may use: a container's CPU
quota (cgroups), ``taskset`` or a SLURM allocation give it fewer. Sizing workers by the machine
oversubscribes the CPUs (64 workers on a 4-CPU allocation) and every series slows down. Each
source is read by a small function that takes the raw value, so each can be tested alone;
:func:`usable_cpus` takes the smallest.
"""

from __future__ import annotations

import logging
import math
import os
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from distributed.system import memory_limit as host_memory_limit

from cohort.errors import RunCannotStart
from cohort.heap import reuse_environment
from cohort.segmentation.passes import PassPolicy

THREAD_ENV_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
TORCH_THREADS_ENV = "COHORT_TORCH_THREADS"
"""Read by the segmenter when it loads a model (``torch.set_num_threads``): the worker's share."""
GIB = 1024 ** 3
log = logging.getLogger(__name__)
CGROUP_ROOT = Path("/sys/fs/cgroup")


def affinity_cpus() -> int:
    """CPUs this process may be scheduled on (``taskset``, ``numactl``, SLURM's task binding)."""
    return len(os.sched_getaffinity(0))


def cgroup_v2_cpus(cpu_max: str) -> int | None:
    """CPUs allowed by a cgroup v2 ``cpu.max`` line (``"max 100000"`` or ``"200000 100000"``).

    A fractional quota rounds up: 1.5 CPUs can keep two threads busy part of the time.
    """
    quota, _, period = cpu_max.strip().partition(" ")
    if quota == "max" or not period:
        return None
    return max(1, math.ceil(int(quota) / int(period)))


def cgroup_v1_cpus(quota_us: str, period_us: str) -> int | None:
    """CPUs allowed by cgroup v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` (quota -1: none)."""
    quota, period = int(quota_us), int(period_us)
    if quota <= 0 or period <= 0:
        return None
    return max(1, math.ceil(quota / period))


def slurm_cpus(environ: Mapping[str, str]) -> int | None:
    """CPUs of this SLURM task: ``SLURM_CPUS_PER_TASK``, else ``SLURM_CPUS_ON_NODE`` (smallest set)."""
    values = [int(environ[key]) for key in ("SLURM_CPUS_PER_TASK", "SLURM_CPUS_ON_NODE")
              if environ.get(key, "").strip().isdigit()]
    return min(values) if values else None


def cgroup_cpus(root: Path = CGROUP_ROOT, proc_cgroup: Path = Path("/proc/self/cgroup")) -> int | None:
    """The smallest CPU quota on this process's cgroup path (v2 ``cpu.max`` or v1 CFS files).

    A limit can sit on any ancestor, so every level from the process's own group up to the
    mount root is read.
    """
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    limits = []
    for line in lines:
        _, controllers, group = line.split(":", 2)
        if controllers == "":
            limits += [cgroup_v2_cpus(text) for text in _read_upwards(root, group, "cpu.max")]
        elif "cpu" in controllers.split(","):
            for mount in (root / controllers, root / "cpu", root / "cpu,cpuacct", root / "cpuacct,cpu"):
                quotas = _read_upwards(mount, group, "cpu.cfs_quota_us")
                periods = _read_upwards(mount, group, "cpu.cfs_period_us")
                limits += [cgroup_v1_cpus(q, p) for q, p in zip(quotas, periods)]
                if quotas:
                    break
    found = [limit for limit in limits if limit is not None]
    return min(found) if found else None


def _read_upwards(mount: Path, group: str, name: str) -> list[str]:
    """``name`` in ``mount/group`` and each parent up to ``mount`` (files that exist only)."""
    texts = []
    folder = mount / group.lstrip("/")
    while True:
        try:
            texts.append((folder / name).read_text())
        except OSError:
            pass
        if folder == mount or mount not in folder.parents:
            return texts
        folder = folder.parent


def usable_cpus(environ: Mapping[str, str] | None = None) -> int:
    """CPUs this process may use: the smallest of affinity, cgroup quota and SLURM allocation."""
    environ = os.environ if environ is None else environ
    limits = [affinity_cpus(), cgroup_cpus(), slurm_cpus(environ)]
    return min(limit for limit in limits if limit is not None)


def usable_memory_bytes(environ: Mapping[str, str] | None = None, cpus: int | None = None) -> int:
    """Memory this process may use: host and cgroup limits (``distributed.system``), and the
    SLURM job's ``--mem`` (``SLURM_MEM_PER_NODE``, MB) or ``--mem-per-cpu`` x CPUs."""
    environ = os.environ if environ is None else environ
    limits = [host_memory_limit()]
    if environ.get("SLURM_MEM_PER_NODE", "").isdigit():
        limits.append(int(environ["SLURM_MEM_PER_NODE"]) * 1024 ** 2)
    elif environ.get("SLURM_MEM_PER_CPU", "").isdigit():
        limits.append(int(environ["SLURM_MEM_PER_CPU"]) * 1024 ** 2 * (cpus or usable_cpus(environ)))
    return min(limit for limit in limits if limit > 0)


@dataclass(frozen=True)
class Resources:
    """A local cluster's size: ``workers`` processes, each running one series at a time with
    ``threads_per_worker`` CPU threads (torch, OpenMP, BLAS) and at most ``memory_limit_bytes``.

    ``workers x threads_per_worker <= cpus``: the workers never oversubscribe the CPUs.
    """

    cpus: int
    workers: int
    threads_per_worker: int
    memory_limit_bytes: int

    @classmethod
    def plan(cls, cpus: int, memory_bytes: int, workers: int | None = None, threads_per_worker: int = 1,
             worker_memory_gb: float | None = None, model_memory_gb: float | None = None) -> "Resources":
        """Size a cluster for ``cpus`` CPUs and ``memory_bytes`` of memory.

        Without ``workers``: ``cpus // threads_per_worker`` workers, fewer when
        ``worker_memory_gb`` each (else ``model_memory_gb``, what the run's model needs: its
        ``worker_memory_gb`` key) would not fit in memory. With ``workers`` (``--workers N``): that
        many, sharing the CPUs (``cpus // N`` threads each, at least 1). Memory per worker:
        ``worker_memory_gb``, else an equal share; never more than there is, all workers together
        (``--workers N`` with a ``worker_memory_gb`` that N workers cannot all have gets the equal
        share, with a warning: limits above the memory would let the kernel's OOM killer, not
        Dask's restart at 95 %, end the workers).
        """
        if workers is not None and workers < 1:
            raise RunCannotStart(f"--workers {workers}: must be at least 1")
        if workers is None:
            workers = max(1, cpus // threads_per_worker)
            needed_gb = worker_memory_gb or model_memory_gb
            if needed_gb:
                workers = max(1, min(workers, int(memory_bytes // (needed_gb * GIB))))
        threads = max(1, cpus // workers)
        share = memory_bytes // workers
        if worker_memory_gb and worker_memory_gb * GIB > share:
            if workers > 1:
                log.warning("%d workers x execution.worker_memory_gb %g GB do not fit in %.1f GiB: each worker "
                            "gets %.1f GiB (fewer --workers to give each more)", workers, worker_memory_gb,
                            memory_bytes / GIB, share / GIB)
            return cls(cpus, workers, threads, share)
        return cls(cpus, workers, threads, int(worker_memory_gb * GIB) if worker_memory_gb else share)

    @classmethod
    def for_this_process(cls, workers: int | None = None, threads_per_worker: int = 1,
                         worker_memory_gb: float | None = None, model_memory_gb: float | None = None
                         ) -> "Resources":
        """:meth:`plan` with the CPUs and memory this process may use."""
        cpus = usable_cpus()
        return cls.plan(cpus, usable_memory_bytes(cpus=cpus), workers, threads_per_worker, worker_memory_gb,
                        model_memory_gb)

    def network_passes(self, wanted: int, model_memory_gb: float | None) -> int:
        """Forward passes a CPU worker may run at once (cohort.segmentation.gate): ``wanted`` (its
        ``execution.network_passes``, at most one per series slot), as long as each gets a thread
        of its own and the worker's memory holds what each pass needs (``model_memory_gb``: the
        model's ``worker_memory_gb``, the peak of one pass on a large CT).

        >>> Resources(cpus=2, workers=1, threads_per_worker=2, memory_limit_bytes=24 * GIB).network_passes(2, 8)
        2
        >>> Resources(cpus=16, workers=8, threads_per_worker=2, memory_limit_bytes=8 * GIB).network_passes(2, 8)
        1
        """
        passes = min(wanted, self.threads_per_worker)
        if model_memory_gb:
            passes = min(passes, int(self.memory_limit_bytes // (model_memory_gb * GIB)))
        return max(1, passes)

    def pass_policy(self, wanted: PassPolicy, model_memory_gb: float | None) -> PassPolicy:
        """``wanted`` with at most the passes this worker's threads and memory allow
        (:meth:`network_passes`)."""
        return dataclasses.replace(wanted, most=self.network_passes(wanted.most, model_memory_gb))

    def worker_environment(self, reuse_freed_memory: bool = True, passes: PassPolicy = PassPolicy()
                           ) -> dict[str, str]:
        """Variables each worker process starts with, so its libraries use its share of CPUs and,
        with ``reuse_freed_memory``, its C heap keeps freed memory (cohort.heap); ``passes`` says how
        its forward passes and series share its threads on a CPU (:meth:`pass_policy`)."""
        threads = str(self.threads_per_worker)
        heap = reuse_environment(self.memory_limit_bytes) if reuse_freed_memory else {}
        return {**{name: threads for name in THREAD_ENV_VARIABLES}, TORCH_THREADS_ENV: threads,
                **passes.environment(), **heap}

    def dask_config(self, reuse_freed_memory: bool = True, passes: PassPolicy = PassPolicy()) -> dict[str, str]:
        """:meth:`worker_environment` as Dask's ``pre-spawn-environ``: set before each worker
        process starts (and restarts), as OpenMP and glibc read them only when they load. Dask's
        own default is 1 thread per worker whatever the worker count, and a heap that returns
        everything it frees (``MALLOC_TRIM_THRESHOLD_`` 64 kB)."""
        return {f"distributed.nanny.pre-spawn-environ.{name}": value
                for name, value in self.worker_environment(reuse_freed_memory, passes).items()}

    def describe(self) -> str:
        return (f"{self.workers} worker(s) x {self.threads_per_worker} thread(s) on {self.cpus} usable CPU(s), "
                f"{self.memory_limit_bytes / GIB:.1f} GiB each")


def warn_if_short_of_memory(resources: Resources, model_memory_gb: float | None, remedy: str) -> None:
    """Log a warning when each worker's memory is below what the run's model needs on a large CT."""
    if model_memory_gb and resources.memory_limit_bytes < model_memory_gb * GIB:
        log.warning(
            "each worker gets %.1f GiB, less than the %.0f GB the model needs on a large CT: large series may "
            "run out of memory (%s)", resources.memory_limit_bytes / GIB, model_memory_gb, remedy)
