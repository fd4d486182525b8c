"""The Prefect flow of ``cohort run``: process the planned series on Dask, write batches.

Prefect records the run (and shows it in its UI when ``PREFECT_API_URL`` points at a
server); per-batch writes are Prefect tasks, per-series work is plain Dask futures.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

from distributed import Client
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.states import Cancelled, State
from prefect.utilities.annotations import quote

from cohort.errors import OutputWriteFailed, RunCannotStart
from cohort.pipeline import SeriesResult
from cohort.driver import BatchWriter, PreparedRun, RunSummary, finish_run
from cohort.flows.dispatch import run_series
from cohort.signals import StopRequest

def record_failures(summary: RunSummary) -> None:
    """A table artifact of the failed series, shown on the flow run's page in the Prefect UI."""
    create_table_artifact(key="failed-series", table=[{"series_id": f.series_id, "manifest_line": str(f.manifest_line), "error": str(f.error)}
                                 for f in summary.failures[:1000]],
                          description=f"{summary.n_failed} failed series; rerun the same command to retry them")


@task(name="write-batch", cache_policy=NO_CACHE)
def write_batch(writer: BatchWriter) -> OutputWriteFailed | None:
    """Commit the pending batch; a failed write comes back as a value (a task that raises is a
    crash report in Prefect's log), and the flow stops with its message."""
    try:
        writer.flush()
    except OutputWriteFailed as error:
        return error
    return None


@dataclass(frozen=True)
class StoppedEarly:
    """What the flow returns instead of raising when the run cannot go on (no worker starts, a
    SLURM job can never run, the output cannot be written): a clean message, not a Prefect crash
    report with a traceback."""

    error: RunCannotStart


def run_cohort_flow(run: PreparedRun, client: Client, on_result: Callable[[SeriesResult], None] | None = None,
                    stop: StopRequest | None = None) -> RunSummary:
    """Run the flow on ``client``'s cluster; raise :class:`RunCannotStart` (exit 2) when it stopped early.

    The caller opens the cluster (:func:`cohort.flows.clusters.open_client`) before it waits for
    the Prefect API, so that the two start together instead of one after the other.
    """
    state = cohort_run(run, client, on_result, stop, return_state=True)
    outcome = state.result(raise_on_failure=not state.is_cancelled())  # a bug in the flow raises here
    if isinstance(outcome, StoppedEarly):
        raise outcome.error
    return outcome


@flow(name="cohort-run", flow_run_name="{run.run_id}", validate_parameters=False)
def cohort_run(run: PreparedRun, client: Client, on_result: Callable[[SeriesResult], None] | None = None,
               stop: StopRequest | None = None) -> RunSummary | StoppedEarly | State:
    """Process ``run.plan.todo`` on the requested cluster; return the run's summary.

    When ``stop`` is set (SIGINT/SIGTERM) the dispatch ends early, every finished result is
    still written, ``stop.in_flight_dropped`` says how many series were dropped, and the flow
    run ends Cancelled (with the summary as its data), not Completed.
    """
    if stop is not None:
        stop.reclaim()
    logger = get_run_logger()
    writer = BatchWriter.for_run(run)
    logger.info("%d series to process, %d already done", len(run.plan.todo), len(run.plan.already_done))
    try:
        summary = _process(run, client, writer, logger, on_result, stop)
    except RunCannotStart as error:
        logger.info("stopped early: %s", error)
        if writer.pending and not isinstance(error, OutputWriteFailed):  # keep what finished before the stop
            failed = write_batch(quote(writer))
            if failed is not None:
                error = RunCannotStart(f"{error}; the series finished before the stop could not be written either: "
                                       f"{failed}")
        return StoppedEarly(error)
    if summary.failures:
        record_failures(summary)
    logger.info("done %d, failed %d, skipped %d in %.1f s", summary.n_done, summary.n_failed, summary.n_skipped,
                summary.seconds)
    if stop is not None and stop.is_set():
        return Cancelled(message=f"interrupted ({stop.signal.name}): {stop.in_flight_dropped} series in flight "
                                 "dropped; rerun the same command to resume", data=summary)
    return summary


def _process(run: PreparedRun, client: Client, writer: BatchWriter, logger, on_result,
             stop: StopRequest | None) -> RunSummary:
    started = time.perf_counter()
    execution = run.config.execution
    dashboard = client.dashboard_link
    logger.info("Dask dashboard: %s", dashboard)

    def record(result: SeriesResult) -> None:
        writer.add(result)
        if on_result is not None:
            on_result(result)
        if not result.done:
            logger.warning("series failed: %s", result.record.failure())
        flush_if_due()

    def flush_if_due() -> None:
        if writer.should_flush():
            failed = write_batch(quote(writer))
            if failed is not None:
                raise failed

    dropped = run_series(client, run.plan.todo, run.context, execution, record, on_idle=flush_if_due,
                         stop=stop.event if stop is not None else None)
    if stop is not None and stop.is_set():
        stop.in_flight_dropped = dropped
        logger.info("interrupted (%s): %d series in flight dropped", stop.signal.name, dropped)
    return finish_run(run, writer, started, dashboard)
