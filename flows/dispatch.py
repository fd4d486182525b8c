"""Map ``process_series`` over a Dask cluster with a bounded number of series in flight.

Why not one Prefect task per series: routing each task run through Dask costs about 100 ms
per series and 80 KB of driver memory (docs/performance.md); plain Dask futures cost a few
milliseconds. Submitting a sliding window (worker threads x ``max_in_flight_per_worker``) keeps the
scheduler small and the driver's memory flat however long the manifest is.

Faults, each retried ``execution.retries`` times and then written as a ``failed`` row:

- a worker that dies mid-series (SIGKILL, out of memory, ``scancel`` of its SLURM job): Dask
  reports ``KilledWorker`` at once (``allowed-failures`` 0) and the driver decides whom the death
  counts against (:func:`blame`). A series that was alone on the worker, or ran alone
  (``flows/alone.py``), caused it. Series that died side by side are each retried alone before
  any of them is charged an attempt; a series that died beside one running alone, or on a worker
  the driver restarted, is resubmitted as it was;
- a series that runs out of memory (host or GPU) while other series run beside it on its worker:
  the worker returns :class:`OutOfMemoryBeside` and the series is retried alone, not counted as an
  attempt; out of memory alone, it fails with the reason;
- a series running past ``series_timeout_s``: the worker-side :func:`process_with_deadline`
  returns :class:`TimedOut` instead of waiting; the driver restarts that worker (a thread
  cannot be stopped, a process can) and submits the series again.

Every retry runs alone on its worker, so a series that killed one worker takes nothing with it
the next time.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field, replace
from enum import Enum
from itertools import count, islice
from typing import Callable, Iterable, Iterator

from distributed import Client, Future, get_worker, wait
from distributed.client import FutureCancelledError
from distributed.scheduler import KilledWorker
from distributed.utils import sync

from cohort.config import ExecutionConfig
from cohort.errors import RunCannotStart
from cohort.flows.alone import ALONE_TOPIC, worker_admission
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


@dataclass(frozen=True)
class OutOfMemoryBeside:
    """What a worker returns for a series that ran out of memory while other series ran beside it."""

    worker: str
    reason: str


@dataclass(frozen=True)
class Attempt:
    """One submission of a series: which attempt it is (deaths it caused and timeouts count) and
    whether it runs alone on its worker (``flows/alone.py``)."""

    spec: SeriesSpec
    number: int = 1
    alone: bool = False


@dataclass(frozen=True)
class WorkerDied:
    """What the driver learns when a series' worker dies: the task and the worker's address."""

    key: str
    worker: str


def process_with_deadline(spec: SeriesSpec, context: RunContext, attempt: int, timeout_s: float,
                          alone: bool = False) -> SeriesResult | TimedOut | OutOfMemoryBeside:
    """Run ``process_series`` on a worker, giving up waiting after ``timeout_s`` seconds.

    The series runs in its own daemon thread; on timeout it is left behind and the driver
    restarts this worker process, which ends it. ``alone``: first wait until no other series
    runs on this worker, keep them waiting meanwhile, and tell the scheduler when it starts and ends
    (so too a series let in while the worker runs one at a time: ``prefetch: auto``, flows/alone.py).
    The deadline starts once the series may run. A series out of memory while others ran beside
    it gives :class:`OutOfMemoryBeside` instead of its failed row.
    """
    outcome: list[SeriesResult | BaseException] = []

    def target() -> None:
        try:
            outcome.append(process_series(spec, context, attempt))
        except BaseException as error:  # process_series does not raise; keep a bug visible anyway
            outcome.append(error)

    worker = get_worker()
    admission = worker_admission()
    with admission.alone() if alone else admission.shared() as seat:
        announced = alone or seat.sole  # a series let in one at a time is alone there too
        if announced:
            _tell_scheduler_alone(worker, running=True)
        thread = threading.Thread(target=target, name=f"cohort-series-{spec.series_id}", daemon=True)
        thread.start()
        thread.join(timeout_s)
        if announced:
            _tell_scheduler_alone(worker, running=False)
    if not outcome:
        return TimedOut(spec.series_id, worker.address, timeout_s)
    if worker.memory_manager.memory_limit:
        trim_when_above(worker.memory_manager.memory_limit // 2)  # well below Dask's pause (80 %)
    if isinstance(outcome[0], BaseException):
        raise outcome[0]
    if outcome[0].out_of_memory and seat.accompanied:
        return OutOfMemoryBeside(worker.address, outcome[0].record.error)
    return outcome[0]


def _tell_scheduler_alone(worker, running: bool) -> None:
    """Record on the scheduler that this worker's current series starts (ends) running alone.

    A round trip, not the batched stream: a record must be there before the next thing the
    worker does (a SIGKILL a moment later, a task-finished message), and the end is recorded
    before any other series may start. A lost record costs the driver only its judgement of a death
    on this worker (a start it never saw: the cause looks like a suspect and runs alone again; an
    end: that series is no longer processing there, which :func:`blame` checks)."""
    try:
        sync(worker.loop, worker.scheduler.log_event, topic=ALONE_TOPIC,
             msg={"key": worker.get_current_task(), "worker": worker.address, "running": running})
    except (OSError, TimeoutError) as error:  # CommClosedError is an OSError
        log.warning("could not tell the scheduler that a series %s alone: %s", "starts" if running else "ended", error)


@dataclass
class _Window:
    """The series in flight, each with its :class:`Attempt`, and the workers the driver restarted.

    Each task carries the (small) run context itself rather than depending on a shared one:
    a dependency makes Dask place tasks beside its data, so one worker's death would also
    take series merely waiting there.
    """

    client: Client
    context: RunContext
    execution: ExecutionConfig
    in_flight: dict[Future, Attempt] = field(default_factory=dict)
    restarted: set[str] = field(default_factory=set)
    serial: Iterator[int] = field(default_factory=count)

    def submit(self, attempts: list[Attempt]) -> None:
        """Submit ``attempts`` in one message, so that Dask queues them as one group (one per worker)."""
        if not attempts:
            return
        n = len(attempts)
        futures = self.client.map(process_with_deadline, [attempt.spec for attempt in attempts], [self.context] * n,
                                  [attempt.number for attempt in attempts], [self.execution.series_timeout_s] * n,
                                  [attempt.alone for attempt in attempts],
                                  key=[f"series-{attempt.spec.series_id}-{next(self.serial)}" for attempt in attempts],
                                  pure=False, retries=0)
        self.in_flight.update(zip(futures, attempts))


def run_series(client: Client, specs: Iterable[SeriesSpec], context: RunContext, execution: ExecutionConfig,
               on_result: Callable[[SeriesResult], None], on_idle: Callable[[], None] = lambda: None,
               stop: threading.Event | None = None) -> int:
    """Process every spec on ``client``'s workers, calling ``on_result`` as each finishes.

    ``on_idle`` is called about once a second while nothing finishes (to flush old batches).
    Once ``stop`` is set (SIGINT/SIGTERM, within a tick) nothing more is submitted and the
    series in flight are cancelled; returns how many were (0 when every spec was processed).
    """
    window = _Window(client, context, execution)
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
            window.submit([Attempt(spec) for spec in batch])
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
            attempt = window.in_flight.pop(future)
            outcome = _collect(future, attempt)
            future.release()
            if isinstance(outcome, TimedOut):
                outcome = _after_timeout(window, attempt, outcome)
            elif isinstance(outcome, WorkerDied):
                outcome = _after_death(window, attempt, outcome)
            elif isinstance(outcome, OutOfMemoryBeside):
                outcome = _after_out_of_memory(window, attempt, outcome)
            if outcome is not None:
                on_result(outcome)


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


def _after_timeout(window: _Window, attempt: Attempt, timed_out: TimedOut) -> SeriesResult | None:
    """Restart the worker that holds the stuck series; retry it (alone) or give up with a failed row."""
    spec = attempt.spec
    log.warning("%s: timed out after %g s on %s (attempt %d); restarting that worker", spec.where,
                timed_out.seconds, timed_out.worker, attempt.number)
    window.restarted.add(timed_out.worker)
    try:
        window.client.restart_workers([timed_out.worker], timeout=RESTART_TIMEOUT_S, raise_for_error=False)
    except (OSError, TimeoutError, ValueError) as error:  # the worker may already be gone
        log.warning("could not restart %s: %s", timed_out.worker, error)
    return _retry_alone_or_fail(window, attempt, f"{spec.where}: timed out after {timed_out.seconds:g} s "
                                                 f"({attempt.number} attempt(s); execution.series_timeout_s)")


def _after_out_of_memory(window: _Window, attempt: Attempt, out_of_memory: OutOfMemoryBeside) -> None:
    """Retry alone, not counted, a series that ran out of memory beside other series: the memory
    they held may be what it lacked (a GPU's, shared by the worker's slots)."""
    log.warning("%s: ran out of memory on %s beside other series; retrying it alone (not counted as an attempt): %s",
                attempt.spec.where, out_of_memory.worker, out_of_memory.reason)
    window.submit([replace(attempt, alone=True)])


def _retry_alone_or_fail(window: _Window, attempt: Attempt, reason: str) -> SeriesResult | None:
    """After a death the series caused, or a timeout: its next attempt (alone, like every retry),
    or its failed row with ``reason`` once ``retries + 1`` attempts are spent."""
    if attempt.number <= window.execution.retries:
        window.submit([Attempt(attempt.spec, attempt.number + 1, alone=True)])
        return None
    return failed_result(attempt.spec, reason, attempt=attempt.number)


class Blame(Enum):
    """Whom a worker's death counts against."""

    CAUSE = "the series died alone, or running alone: it counts as an attempt"
    SUSPECT = "the series died beside others, none running alone: retry it alone, not counted"
    BYSTANDER = "another series was running alone, or the driver restarted the worker: resubmit as it was"


def blame(client: Client, died: WorkerDied, restarted: set[str]) -> Blame:
    """Decide from the scheduler's record of the death (the tasks the worker was processing)
    and of the series that started alone (:data:`ALONE_TOPIC`) whether ``died.key`` killed its worker."""
    if died.worker in restarted:
        return Blame.BYSTANDER
    processing = _processing_at_death(client, died)
    if processing is None:  # no record left: count it, as Dask's allowed-failures would
        return Blame.CAUSE
    alone = running_alone((event for _, event in client.get_events(ALONE_TOPIC)), died.worker)
    if alone in processing:
        return Blame.CAUSE if alone == died.key else Blame.BYSTANDER
    return Blame.CAUSE if processing == {died.key} else Blame.SUSPECT


def running_alone(alone_events: Iterable[dict], worker: str) -> str | None:
    """The task that had started running alone on ``worker`` and not ended, from the scheduler's
    :data:`ALONE_TOPIC` records in order (at most one: the hold is exclusive). A task's finish may
    not have reached the scheduler when its worker dies, so the tasks still "processing" there
    cannot tell a series that ran alone a moment ago from the one running alone now.

    >>> events = [{"worker": "w", "key": "a", "running": True}, {"worker": "w", "key": "a", "running": False},
    ...           {"worker": "w", "key": "b", "running": True}, {"worker": "v", "key": "c", "running": True}]
    >>> running_alone(events, "w"), running_alone(events[:2], "w"), running_alone(events, "v")
    ('b', None, 'c')
    """
    current = None
    for event in alone_events:
        if event["worker"] != worker:
            continue
        if event["running"]:
            current = event["key"]
        elif current == event["key"]:
            current = None
    return current


def _processing_at_death(client: Client, died: WorkerDied) -> set[str] | None:
    for _, event in client.get_events(died.worker):
        if event.get("action") == "remove-worker" and died.key in event.get("processing-tasks", ()):
            return set(event["processing-tasks"])
    return None


def _after_death(window: _Window, attempt: Attempt, died: WorkerDied) -> SeriesResult | None:
    """Resubmit a series whose worker died, or give up with a failed row after ``retries + 1`` deaths it caused."""
    spec = attempt.spec
    verdict = blame(window.client, died, window.restarted)
    if verdict is Blame.BYSTANDER:
        window.submit([attempt])
        return None
    if verdict is Blame.SUSPECT:
        log.warning("%s: its worker %s died with other series on it; retrying it alone to tell which one killed "
                    "it (not counted as an attempt)", spec.where, died.worker)
        window.submit([replace(attempt, alone=True)])
        return None
    log.warning("%s: its worker %s died while running it (attempt %d)", spec.where, died.worker, attempt.number)
    return _retry_alone_or_fail(window, attempt, f"{spec.where}: the worker process died {attempt.number} time(s) "
                                                 "while processing it alone (killed, out of memory, or its SLURM "
                                                 "job ended?)")


def _collect(future: Future, attempt: Attempt) -> SeriesResult | TimedOut | OutOfMemoryBeside | WorkerDied:
    spec = attempt.spec
    try:
        return future.result()
    except KilledWorker as error:
        return WorkerDied(future.key, error.last_worker.address)
    except FutureCancelledError:
        reason = f"{spec.where}: cancelled"
    except Exception as error:
        reason = f"{spec.where}: {type(error).__name__}: {error}"
    return failed_result(spec, reason, attempt=attempt.number)
