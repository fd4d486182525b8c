"""Map ``process_series`` over a Dask cluster with a bounded number of series in flight.

Why not one Prefect task per series: routing each task run through Dask costs about 100 ms
per series and 80 KB of driver memory (docs/performance.md); plain Dask futures cost a few
milliseconds. Submitting a sliding window (workers x ``max_in_flight_per_worker``) keeps the
scheduler small and the driver's memory flat however long the manifest is.
"""

from __future__ import annotations

import logging
from typing import Callable, Iterable

from distributed import Client, Future, wait
from distributed.client import FutureCancelledError
from distributed.scheduler import KilledWorker

from cohort.config import ExecutionConfig
from cohort.manifest import SeriesSpec
from cohort.pipeline import RunContext, SeriesResult, failed_result, process_series

log = logging.getLogger(__name__)
TICK_S = 1.0


def run_series(client: Client, specs: Iterable[SeriesSpec], context: RunContext, execution: ExecutionConfig,
               on_result: Callable[[SeriesResult], None], on_idle: Callable[[], None] = lambda: None) -> None:
    """Process every spec on ``client``'s workers, calling ``on_result`` as each finishes.

    ``on_idle`` is called about once a second while nothing finishes (to flush old batches).
    """
    shared_context = client.scatter(context, broadcast=True, hash=False)
    queue = iter(specs)
    in_flight: dict[Future, SeriesSpec] = {}

    def submit_next() -> None:
        spec = next(queue, None)
        if spec is not None:
            future = client.submit(process_series, spec, shared_context, key=f"series-{spec.series_id}", pure=False)
            in_flight[future] = spec

    for _ in range(window_size(client, execution)):
        submit_next()
    while in_flight:
        try:
            finished = wait(list(in_flight), timeout=TICK_S, return_when="FIRST_COMPLETED").done
        except TimeoutError:
            on_idle()
            continue
        for future in finished:
            spec = in_flight.pop(future)
            on_result(_collect(future, spec, execution))
            future.release()
            submit_next()


def window_size(client: Client, execution: ExecutionConfig) -> int:
    n_workers = len(client.scheduler_info(n_workers=-1).get("workers", {}))
    return max(1, n_workers) * execution.max_in_flight_per_worker


def _collect(future: Future, spec: SeriesSpec, execution: ExecutionConfig) -> SeriesResult:
    try:
        return future.result()
    except KilledWorker:
        reason = (f"{spec.where}: the worker process died {execution.retries + 1} time(s) while processing it "
                  "(killed, or out of memory?)")
    except FutureCancelledError:
        reason = f"{spec.where}: cancelled"
    except Exception as error:
        reason = f"{spec.where}: {type(error).__name__}: {error}"
    return failed_result(spec, reason, attempt=execution.retries + 1)
