"""Stopping a run on SIGINT (Ctrl-C) or SIGTERM without losing finished work.

The first signal only sets a flag: the dispatch loop sees it within a tick, submits
nothing more, drops what is still in flight and returns, and the run then writes every
finished result and closes its cluster and Prefect server as on a normal exit. A second
signal exits at once (what was written stays; the rerun redoes the rest).

Local Dask worker processes share the driver's process group, so a Ctrl-C (or a SIGTERM to
the group: ``timeout``, systemd, an sbatch job's end) reaches them too; with this module as
their preload (:data:`WORKER_PRELOAD`, :func:`dask_setup`) they ignore both: the driver
stops them.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from contextlib import contextmanager
from typing import Iterator

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
WORKER_PRELOAD = "cohort.signals"


class StopRequest:
    """Set once by the first SIGINT/SIGTERM; the dispatch loop polls :attr:`event` and the flow
    records how many series in flight it dropped."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.signal: signal.Signals | None = None
        self.in_flight_dropped = 0

    def is_set(self) -> bool:
        return self.event.is_set()

    @property
    def exit_code(self) -> int:
        """The shell's convention: 128 + signal number (130 for SIGINT, 143 for SIGTERM)."""
        assert self.signal is not None, "no stop was requested"
        return 128 + self.signal

    def handle(self, signum: int, frame=None) -> None:
        """The signal handler: the first signal sets the flag, a second one exits at once."""
        if self.is_set():
            sys.stderr.write(f"\ncohort run: {signal.Signals(signum).name} again; quitting without cleanup\n")
            sys.stderr.flush()
            os._exit(128 + signum)
        self.signal = signal.Signals(signum)
        self.event.set()

    def reclaim(self) -> None:
        """Install :meth:`handle` again (main thread).

        Prefect's flow engine replaces the SIGTERM handler for the flow's duration with one
        that raises ``TerminationSignal`` wherever the flow is (a traceback, nothing saved);
        the flow calls this first, and Prefect restores ours when the flow ends.
        """
        for signum in STOP_SIGNALS:
            signal.signal(signum, self.handle)


@contextmanager
def stop_on_signals() -> Iterator[StopRequest]:
    """Install SIGINT/SIGTERM handlers for the block (main thread only); restore the old ones after."""
    stop = StopRequest()
    previous = {signum: signal.signal(signum, stop.handle) for signum in STOP_SIGNALS}
    try:
        yield stop
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


HEARTBEAT_LOST = "Failed to communicate with scheduler during heartbeat"  # distributed.worker's words


class HeartbeatLossInOneLine(logging.Filter):
    """Turns distributed's "Failed to communicate with scheduler during heartbeat" from a traceback
    into one line naming the error. A worker whose scheduler closes first at the end of a stopped
    run (Ctrl-C, a full disk) logs it with a traceback under the driver's one-line message; on a
    real network fault the line still says what failed."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and str(record.msg).startswith(HEARTBEAT_LOST):
            error = record.exc_info[1]
            record.msg = f"{record.getMessage()} ({type(error).__name__}: {error})"
            record.args, record.exc_info, record.exc_text = (), None, None
        return True


def dask_setup(worker) -> None:
    """Dask worker preload hook (each worker process's main thread): ignore SIGINT and SIGTERM,
    and log a lost heartbeat in one line (:class:`HeartbeatLossInOneLine`).

    Its nanny, in the driver, stops it with a message and SIGKILL if that is not enough; a
    worker whose driver died exits by itself (distributed watches the parent).
    """
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    logging.getLogger("distributed.worker").addFilter(HeartbeatLossInOneLine())
