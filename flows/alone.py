"""Run a series alone on its worker: the retry that tells which series killed a worker.

A worker with several series slots (``execution.prefetch`` > 0, GPU workers) that dies (out of
memory, a crash in a library, a SIGKILL) takes every series it was running with it, and any one
of them may be the cause. Counting the death against all of them fails innocent series with
their culprit; counting it against none retries a culprit forever. So each of them is retried
*alone*: it waits until the series beside it have finished, nothing starts beside it until it
is done, and the scheduler is told when it starts and ends (:data:`ALONE_TOPIC`). A worker that dies
while it runs alone died of that series. The driver's bookkeeping is in ``dispatch.py``.

>>> admission = Admission()
>>> with admission.shared():
...     admission.sharing
1
>>> with admission.alone():
...     admission.sharing, admission.running_alone
(0, True)
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator

ALONE_TOPIC = "cohort-series-alone"


class Admission:
    """Who may run on this worker now: any number of series side by side (:meth:`shared`), or
    one alone (:meth:`alone`). A series waiting to run alone goes first: no shared series starts
    while it waits, so it waits at most for the ones already running."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self.sharing = 0
        self.waiting_alone = 0
        self.running_alone = False

    @contextmanager
    def shared(self) -> Iterator[None]:
        with self._changed:
            self._changed.wait_for(lambda: not self.running_alone and not self.waiting_alone)
            self.sharing += 1
        try:
            yield
        finally:
            with self._changed:
                self.sharing -= 1
                self._changed.notify_all()

    @contextmanager
    def alone(self) -> Iterator[None]:
        with self._changed:
            self.waiting_alone += 1
            self._changed.wait_for(lambda: not self.running_alone and not self.sharing)
            self.waiting_alone -= 1
            self.running_alone = True
        try:
            yield
        finally:
            with self._changed:
                self.running_alone = False
                self._changed.notify_all()


WORKER_ADMISSION = Admission()
"""The admission of this worker process (each Dask worker is its own process)."""
