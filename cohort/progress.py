"""Progress of ``cohort run`` as log lines, for runs nobody watches (``sbatch``, ``nohup``, CI).

A progress bar redrawn in place turns into megabytes of control characters in a job's log
file; :class:`ProgressLog` instead writes one plain line per interval, from a timer thread, so a
line comes even while every worker is busy with a long series.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Callable

PROGRESS_INTERVAL_S = 60.0
INTERVAL_ENV = "COHORT_PROGRESS_INTERVAL_S"


def progress_interval_s() -> float:
    """Seconds between lines: ``COHORT_PROGRESS_INTERVAL_S`` when set, else one minute."""
    value = os.environ.get(INTERVAL_ENV, "")
    try:
        return float(value) if float(value) > 0 else PROGRESS_INTERVAL_S
    except ValueError:
        return PROGRESS_INTERVAL_S


def format_duration(seconds: float) -> str:
    """``5h12m``, ``12m``, ``40s``: short enough for a log line."""
    minutes = int(round(seconds / 60))
    if seconds < 60:
        return f"{max(0, int(seconds))}s"
    if minutes < 60:
        return f"{minutes}m"
    return f"{minutes // 60}h{minutes % 60:02d}m"


def progress_line(total: int, done: int, failed: int, elapsed_s: float) -> str:
    """``cohort run: 120/4004 done, 3 failed, 2.1 series/min, ETA 5h12m``."""
    finished = done + failed
    rate = finished / elapsed_s * 60 if elapsed_s > 0 else 0.0
    eta = format_duration((total - finished) / rate * 60) if rate > 0 else "unknown"
    return f"cohort run: {done}/{total} done, {failed} failed, {rate:.1f} series/min, ETA {eta}"


class ProgressLog:
    """Called with each finished series (the ``on_result`` callback of the flow, like the rich bar);
    writes :func:`progress_line` every ``interval_s`` while used as a context manager."""

    def __init__(self, total: int, write: Callable[[str], None] | None = None, interval_s: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.total = total
        self.done = 0
        self.failed = 0
        self._write = write or (lambda line: print(line, file=sys.stderr, flush=True))
        self._interval_s = interval_s if interval_s is not None else progress_interval_s()
        self._clock = clock
        self._started = clock()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._timer = threading.Thread(target=self._tick, name="cohort-progress", daemon=True)

    def __call__(self, result) -> None:
        with self._lock:
            if result.done:
                self.done += 1
            else:
                self.failed += 1

    def line(self) -> str:
        with self._lock:
            return progress_line(self.total, self.done, self.failed, self._clock() - self._started)

    def _tick(self) -> None:
        while not self._stop.wait(self._interval_s):
            self._write(self.line())

    def __enter__(self) -> "ProgressLog":
        self._started = self._clock()
        self._timer.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._timer.join()
