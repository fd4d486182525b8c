"""Map ``process_series`` over a Dask cluster with a bounded number of series in flight.

Why not one Prefect task per series: routing each task run through Dask costs about 100 ms
per series and 80 KB of driver memory (docs/performance.md); plain Dask futures cost a few
milliseconds. Submitting a sliding window (workers x ``max_in_flight_per_worker``) keeps the
scheduler small and the driver's memory flat however long the manifest is.

Faults, each retried ``execution.retries`` times and then written as a ``failed`` row:

- a worker that dies mid-series (SIGKILL, out of memory, ``scancel`` of its SLURM job): Dask
  reschedules the series elsewhere and gives up with ``KilledWorker`` (``allowed-failures``);
- a series running past ``series_timeout_s``: the worker-side :func:`process_with_deadline`
  returns :class:`TimedOut` instead of waiting; the driver restarts that worker (a thread
  cannot be stopped, a process can) and submits the series again.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from itertools import islice
from typing import Callable, Iterable

from distributed import Client, Future, get_worker, wait
from distributed.client import FutureCancelledError
from distributed.scheduler import KilledWorker

from cohort.config import ExecutionConfig
from cohort.errors import RunCannotStart
from cohort.heap import trim_when_above
from cohort.manifest import SeriesSpec
from cohort.pipeline import RunContext, SeriesResult, failed_result, process_series

log = logging.getLogger(__name__)
TICK_S = 1.0
NO_WORKER_TIMEOUT_S = 600.0
RESTART_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class TimedOut:
    """What a worker returns for a series still running after the timeout."""

    series_id: str
    worker: str
    seconds: float


def process_with_deadline(spec: SeriesSpec, context: RunContext, attempt: int, timeout_s: float
                          ) -> SeriesResult | TimedOut:
    """Run ``process_series`` on a worker, giving up waiting after ``timeout_s`` seconds.

    The series runs in its own daemon thread; on timeout it is left behind and the driver
    restarts this worker process, which ends it.
    """
    outcome: list[SeriesResult | BaseException] = []

    def target() -> None:
        try:
            outcome.append(process_series(spec, context, attempt))
        except BaseException as error:  # process_series does not raise; keep a bug visible anyway
            outcome.append(error)

    thread = threading.Thread(target=target, name=f"cohort-series-{spec.series_id}", daemon=True)
    thread.start()
    thread.join(timeout_s)
    worker = get_worker()
    if not outcome:
        return TimedOut(spec.series_id, worker.address, timeout_s)
    if worker.memory_manager.memory_limit:
        trim_when_above(worker.memory_manager.memory_limit // 2)  # well below Dask's pause (80 %)
    if isinstance(outcome[0], BaseException):
        raise outcome[0]
    return outcome[0]


@dataclass
class _Window:
    """The series in flight, and how many attempts each has had (timeouts are counted here).

    Each task carries the (small) run context itself rather than depending on a shared one:
    a dependency makes Dask place tasks beside its data, so one worker's death would also
    count against series merely waiting there.
    """

    client: Client
    context: RunContext
    execution: ExecutionConfig
    in_flight: dict[Future, tuple[SeriesSpec, int]]

    def submit(self, specs: list[SeriesSpec], attempt: int = 1) -> None:
        """Submit ``specs`` in one message, so that Dask queues them as one group (one per worker)."""
        if not specs:
            return
        n = len(specs)
        futures = self.client.map(process_with_deadline, specs, [self.context] * n, [attempt] * n,
                                  [self.execution.series_timeout_s] * n,
                                  key=[f"series-{spec.series_id}-{attempt}" for spec in specs], pure=False,
                                  retries=0)
        self.in_flight.update((future, (spec, attempt)) for future, spec in zip(futures, specs))


def run_series(client: Client, specs: Iterable[SeriesSpec], context: RunContext, execution: ExecutionConfig,
               on_result: Callable[[SeriesResult], None], on_idle: Callable[[], None] = lambda: None,
               stop: threading.Event | None = None) -> int:
    """Process every spec on ``client``'s workers, calling ``on_result`` as each finishes.

    ``on_idle`` is called about once a second while nothing finishes (to flush old batches).
    Once ``stop`` is set (SIGINT/SIGTERM, within a tick) nothing more is submitted and the
    series in flight are cancelled; returns how many were (0 when every spec was processed).
    """
    window = _Window(client, context, execution, {})
    queue = iter(specs)
    exhausted = False
    size, sized_at, idle_since = window_size(client, execution), time.monotonic(), None
    while True:
        if stop is not None and stop.is_set():
            dropped = list(window.in_flight)
            client.cancel(dropped)
            return len(dropped)
        if not exhausted and len(window.in_flight) < size:
            batch = list(islice(queue, size - len(window.in_flight)))
            exhausted = len(batch) < size - len(window.in_flight)
            window.submit(batch)
        finished: set[Future] = set()
        if not window.in_flight:
            if exhausted:
                return 0
            time.sleep(TICK_S)  # no worker right now: nothing may be submitted
        else:
            try:
                finished = wait(list(window.in_flight), timeout=TICK_S, return_when="FIRST_COMPLETED").done
            except TimeoutError:
                pass
        if time.monotonic() - sized_at > TICK_S:  # workers come and go (SLURM jobs, restarts)
            size, sized_at = window_size(client, execution), time.monotonic()
            idle_since = _check_workers(size, idle_since)
        if not finished:
            on_idle()
            continue
        for future in finished:
            spec, attempt = window.in_flight.pop(future)
            result = _collect(future, spec, attempt, execution)
            future.release()
            if isinstance(result, TimedOut):
                result = _after_timeout(window, spec, attempt, result)
            if result is not None:
                on_result(result)


def window_size(client: Client, execution: ExecutionConfig) -> int:
    """Series to keep submitted: ``max_in_flight_per_worker`` per worker thread (0 with no worker)."""
    threads = sum(client.nthreads().values())
    return threads * execution.max_in_flight_per_worker


def _check_workers(size: int, idle_since: float | None) -> float | None:
    if size:
        return None
    now = time.monotonic()
    if idle_since is None:
        log.warning("no Dask worker is connected; waiting up to %g s for one", NO_WORKER_TIMEOUT_S)
        return now
    if now - idle_since > NO_WORKER_TIMEOUT_S:
        raise RunCannotStart(f"no Dask worker for {NO_WORKER_TIMEOUT_S:g} s (all jobs ended or lost?); "
                             "finished batches are saved: rerun the same command to resume")
    return idle_since


def _after_timeout(window: _Window, spec: SeriesSpec, attempt: int, timed_out: TimedOut) -> SeriesResult | None:
    """Restart the worker that holds the stuck series; retry it or give up with a failed row."""
    log.warning("%s: timed out after %g s on %s (attempt %d); restarting that worker", spec.where,
                timed_out.seconds, timed_out.worker, attempt)
    try:
        window.client.restart_workers([timed_out.worker], timeout=RESTART_TIMEOUT_S, raise_for_error=False)
    except (OSError, TimeoutError, ValueError) as error:  # the worker may already be gone
        log.warning("could not restart %s: %s", timed_out.worker, error)
    if attempt <= window.execution.retries:
        window.submit([spec], attempt + 1)
        return None
    return failed_result(spec, f"{spec.where}: timed out after {timed_out.seconds:g} s "
                               f"({attempt} attempt(s); execution.series_timeout_s)", attempt=attempt)


def _collect(future: Future, spec: SeriesSpec, attempt: int, execution: ExecutionConfig
             ) -> SeriesResult | TimedOut:
    try:
        return future.result()
    except KilledWorker:
        reason = (f"{spec.where}: the worker process died {execution.retries + 1} time(s) while processing it "
                  "(killed, out of memory, or its SLURM job ended?)")
    except FutureCancelledError:
        reason = f"{spec.where}: cancelled"
    except Exception as error:
        reason = f"{spec.where}: {type(error).__name__}: {error}"
    return failed_result(spec, reason, attempt=attempt + execution.retries)
