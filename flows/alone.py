"""Run a series alone on its worker: the retry that tells which series killed a worker.

A worker with several series slots (``execution.prefetch`` > 0, GPU workers) that dies (out of
memory, a crash in a library, a SIGKILL) takes every series it was running with it, and any one
of them may be the cause. Counting the death against all of them fails innocent series with
their culprit; counting it against none retries a culprit forever. So each of them is retried
*alone*: it waits until the series beside it have finished, nothing starts beside it until it
is done, and the scheduler is told when it starts and ends (:data:`ALONE_TOPIC`). A worker that dies
while it runs alone died of that series. The driver's bookkeeping is in ``dispatch.py``.

>>> admission = Admission()
>>> with admission.shared() as first:
...     with admission.shared() as second:
...         admission.sharing
...     first.accompanied, second.accompanied
2
(True, True)
>>> with admission.alone() as seat:
...     admission.sharing, admission.running_alone, seat.accompanied
(0, True, False)

The same tells a series that ran out of memory beside others (``accompanied``), which is retried
alone, from one that ran out of memory by itself.

Several worker processes may compute on one GPU (``execution.workers_per_gpu`` > 1, SLURM jobs
with more processes than GPUs). Their series share the GPU's memory, so there *alone* means alone
on the GPU: :class:`SharedGpu` holds the GPU's other processes back too.
"""

from __future__ import annotations

import fcntl
import functools
import os
import sys
import threading
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from cohort.segmentation.passes import PassPolicy

ALONE_TOPIC = "cohort-series-alone"
AT_ONCE_POLL_S = 0.5
SHARED_GPU_ENV = "COHORT_SHARED_GPU"
"""Set in each worker process that computes on a GPU together with others: the path (without
suffix) of that GPU's lock files, the same for all of them (:func:`shared_gpu_path`)."""


@dataclass(eq=False)
class Seat:
    """One series' hold on its worker; ``accompanied`` once another series has run beside it;
    ``sole`` when it was let in while series run one at a time (``at_once`` 1): nothing starts
    beside it, so its worker's death is its own, as if it ran alone."""

    accompanied: bool = False
    sole: bool = False


class Admission:
    """Who may run on this worker now: series side by side (:meth:`shared`; as many as its Dask
    threads, or at most ``at_once()``, which is None while that is not known yet: one at a time
    meanwhile, not ``sole``, as two may soon run side by side), or one alone (:meth:`alone`). A
    series waiting to run alone goes first: no shared series starts while it waits, so it waits at
    most for the ones already running. With ``gpu``, the same holds
    across the worker processes on that GPU, and every series that runs side by side there counts
    as ``accompanied``: the other processes' series, and the GPU memory their allocators keep, may
    be what it lacked."""

    def __init__(self, gpu: SharedGpu | None = None, at_once: Callable[[], int | None] | None = None) -> None:
        self.gpu = gpu
        self.at_once = at_once
        self._limit: int | None = None  # at_once() when a series was last let in
        self._changed = threading.Condition()
        self._seats: set[Seat] = set()
        self.waiting_alone = 0
        self.running_alone = False

    @property
    def sharing(self) -> int:
        """How many series run side by side now."""
        return len(self._seats)

    def _room_beside(self) -> bool:
        if self.running_alone or self.waiting_alone or any(seat.sole for seat in self._seats):
            return False
        self._limit = None if self.at_once is None else self.at_once()
        return self.at_once is None or len(self._seats) < (self._limit or 1)

    @contextmanager
    def shared(self) -> Iterator[Seat]:
        seat = Seat()
        with self._changed:
            while not self._changed.wait_for(self._room_beside, timeout=AT_ONCE_POLL_S):
                pass  # at_once may grow without a notification (the model is loaded and timed)
            seat.sole = self._limit == 1
            if self._seats or self.gpu is not None:
                seat.accompanied = True
                for other in self._seats:
                    other.accompanied = True
            self._seats.add(seat)
        try:
            with self.gpu.shared() if self.gpu is not None else nullcontext():
                yield seat
        finally:
            with self._changed:
                self._seats.discard(seat)
                self._changed.notify_all()

    @contextmanager
    def alone(self) -> Iterator[Seat]:
        with self._changed:
            self.waiting_alone += 1
            self._changed.wait_for(lambda: not self.running_alone and not self._seats)
            self.waiting_alone -= 1
            self.running_alone = True
        try:
            with self.gpu.alone() if self.gpu is not None else nullcontext():
                yield Seat()
        finally:
            with self._changed:
                self.running_alone = False
                self._changed.notify_all()


class SharedGpu:
    """A reader-writer lock across the worker processes that compute on one GPU: series run side
    by side (:meth:`shared`) or one alone (:meth:`alone`), whichever process runs them.

    Two files under ``path``, locked with ``flock(2)``, a lock per open file, so each series holds
    its own and the kernel drops those of a process that dies (a killed worker never blocks its
    GPU): ``.room``, shared by the series running side by side and exclusive for one alone; and
    ``.turnstile``, held exclusively by a series waiting to run alone, which keeps later series out
    so that it waits only for those already running. Every process lets go of the GPU memory its
    allocator keeps cached when it sees a series waiting to run alone, so that series gets it.

    >>> import tempfile
    >>> gpu = SharedGpu(Path(tempfile.mkdtemp()) / "gpu-0")
    >>> with gpu.shared(), gpu.shared():
    ...     gpu.alone_waiting()
    False
    >>> with gpu.alone():
    ...     gpu.alone_waiting()
    True
    """

    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.room = path.with_name(path.name + ".room")
        self.turnstile = path.with_name(path.name + ".turnstile")

    @classmethod
    def from_environment(cls) -> SharedGpu | None:
        """The GPU this worker process shares (:data:`SHARED_GPU_ENV`), or None."""
        path = os.environ.get(SHARED_GPU_ENV)
        return cls(path) if path else None

    @contextmanager
    def shared(self) -> Iterator[None]:
        turnstile = _open(self.turnstile)
        try:
            try:
                fcntl.flock(turnstile, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:  # a series waits to run alone: wait behind it, without cached memory
                release_cached_gpu_memory()
                fcntl.flock(turnstile, fcntl.LOCK_SH)
            room = _locked(self.room, fcntl.LOCK_SH)
        finally:
            os.close(turnstile)
        try:
            yield
        finally:
            os.close(room)
            if self.alone_waiting():
                release_cached_gpu_memory()

    @contextmanager
    def alone(self) -> Iterator[None]:
        turnstile = _locked(self.turnstile, fcntl.LOCK_EX)
        try:
            room = _locked(self.room, fcntl.LOCK_EX)
            try:
                yield
            finally:
                os.close(room)
        finally:
            os.close(turnstile)

    def alone_waiting(self) -> bool:
        """Whether a series waits to run alone on this GPU, or runs alone."""
        turnstile = _open(self.turnstile)
        try:
            fcntl.flock(turnstile, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return False
        except BlockingIOError:
            return True
        finally:
            os.close(turnstile)


def shared_gpu_path(directory: str | Path, device: str) -> str:
    """The lock path (:data:`SHARED_GPU_ENV`) of ``device`` (an entry of ``CUDA_VISIBLE_DEVICES``)
    for the workers that share ``directory``, one per run (local) or job (SLURM)."""
    return str(Path(directory) / f"gpu-{device}")


def release_cached_gpu_memory() -> None:
    """Give the GPU memory that torch's allocator keeps for reuse back to the device (nothing
    without CUDA in use in this process)."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def _open(path: Path) -> int:
    return os.open(path, os.O_RDWR | os.O_CREAT, 0o600)


def _locked(path: Path, operation: int) -> int:
    descriptor = _open(path)
    try:
        fcntl.flock(descriptor, operation)
    except BaseException:
        os.close(descriptor)
        raise
    return descriptor


@functools.cache
def worker_admission() -> Admission:
    """The admission of this worker process (each Dask worker is its own process), across the
    processes of its GPU when it shares one. Made on first use, after a SLURM worker's preload
    has chosen its GPU (``job_gpus.py``). Under ``prefetch: auto`` (:class:`PassPolicy`) its series
    run side by side only while the network gate of its model does (cohort.segmentation.gate)."""
    policy = PassPolicy.from_environment()
    return Admission(SharedGpu.from_environment(), series_at_once if policy.series_follow_passes else None)


def series_at_once() -> int | None:
    """Series that run side by side on a worker whose series follow its forward passes: as many as
    its model's passes at once; None while a model is being loaded and timed; one where it runs
    one pass at a time, or has no model (a run of label maps only)."""
    from cohort.segmentation.gate import passes_at_once  # torch: workers only, not the driver
    from cohort.segmentation.segmenter import model_loading

    return None if model_loading() else max(1, passes_at_once())
