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
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

ALONE_TOPIC = "cohort-series-alone"


@dataclass(eq=False)
class Seat:
    """One series' hold on its worker; ``accompanied`` once another series has run beside it."""

    accompanied: bool = False


class Admission:
    """Who may run on this worker now: any number of series side by side (:meth:`shared`), or
    one alone (:meth:`alone`). A series waiting to run alone goes first: no shared series starts
    while it waits, so it waits at most for the ones already running."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._seats: set[Seat] = set()
        self.waiting_alone = 0
        self.running_alone = False

    @property
    def sharing(self) -> int:
        """How many series run side by side now."""
        return len(self._seats)

    @contextmanager
    def shared(self) -> Iterator[Seat]:
        seat = Seat()
        with self._changed:
            self._changed.wait_for(lambda: not self.running_alone and not self.waiting_alone)
            if self._seats:
                seat.accompanied = True
                for other in self._seats:
                    other.accompanied = True
            self._seats.add(seat)
        try:
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
            yield Seat()
        finally:
            with self._changed:
                self.running_alone = False
                self._changed.notify_all()


WORKER_ADMISSION = Admission()
"""The admission of this worker process (each Dask worker is its own process)."""
