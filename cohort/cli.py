"""``cohort`` command line: a thin layer over the plain API (run, stats, report, models).

Exit codes: 0 every row done; 1 some rows failed; 2 the run could not start.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from cohort.errors import RunCannotStart
from cohort.manifest import example_manifest

console = Console(stderr=True)
MAX_FAILURES_LISTED = 20


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cohort", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="show Prefect and Dask logs")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="segment and measure every series of a manifest")
    run.add_argument("--manifest", type=Path, required=True,
                     help=f"CSV with series_id,path[,age,sex,labels] (example: {example_manifest()})")
    run.add_argument("--out", type=Path, default=Path("results"), help="output folder (default: results/)")
    run.add_argument("--model", default="fast",
                     help="model for rows without labels: fast, full, or any configs/models/<name>.yaml (default: fast)")
    run.add_argument("--weights", type=Path, help="folder holding TotalSegmentator's Dataset... folders")
    run.add_argument("--config", type=Path, help="run configuration YAML (default: configs/default.yaml)")
    run.add_argument("--cluster", choices=("local", "cuda", "slurm"), default="local")
    run.add_argument("--workers", type=positive_int,
                     help="Dask workers (local: default usable CPUs // execution.threads_per_worker)")

    stats = commands.add_parser("stats", help="run the aging study on a results folder")
    stats.add_argument("--results", type=Path, required=True)
    stats.add_argument("--out", type=Path, help="default: <results>/aging")
    stats.add_argument("--config", type=Path, help="aging-study configuration YAML (default: stats/aging_default.yaml)")
    stats.add_argument("--figures", choices=("none", "overview", "top", "all"),
                       help="which figures to draw (default from the config: overview and the top structures)")

    report = commands.add_parser("report", help="write one HTML page: run summary, QC and the aging study")
    report.add_argument("--results", type=Path, required=True)
    report.add_argument("--out", type=Path, help="default: <results>/report.html")

    models = commands.add_parser("models", help="where weights are looked for, what is there, how to get the rest")
    models.add_argument("--weights", type=Path)

    check = commands.add_parser("check", help="every problem of a manifest in one pass, no work done")
    check.add_argument("--manifest", type=Path, required=True)

    status = commands.add_parser("status", help="done, failed, remaining and ETA of a running or stopped run")
    status.add_argument("--out", type=Path, default=Path("results"), help="the run's output folder (default: results/)")
    return parser


def positive_int(text: str) -> int:
    """argparse type of counts such as ``--workers``: an integer of at least 1 (else exit code 2)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _configure_logging(args.verbose)
    try:
        return COMMANDS[args.command](args)
    except RunCannotStart as error:
        console.print(f"[bold red]cohort {args.command}: cannot start:[/] {error}", highlight=False)
        return 2


def _configure_logging(verbose: bool) -> None:
    level = logging.INFO if verbose else logging.WARNING
    quiet = logging.getLevelName(level if verbose else logging.ERROR).lower()
    os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", quiet.upper())  # the API still gets INFO
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", quiet)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.setLevel(level)  # records propagated from Prefect's and Dask's loggers too


def run_command(args: argparse.Namespace) -> int:
    """SIGINT/SIGTERM stop the run cleanly (finished results saved, exit 130/143); see cohort.signals.

    The Prefect server (unless PREFECT_API_URL names one) starts first, so that it boots while
    the manifest is read and the cluster starts.
    """
    from cohort.flows.prefect_api import prefect_api
    from cohort.signals import stop_on_signals

    started = time.perf_counter()
    command = "cohort " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    with stop_on_signals() as stop, prefect_api() as api:
        from cohort.run import RunRequest, prepare_run
        from cohort.store import OutputLayout, exclusive_output

        request = RunRequest(manifest=args.manifest, out=args.out, model=args.model, weights=args.weights,
                             config=args.config, cluster=args.cluster, workers=args.workers)
        with exclusive_output(OutputLayout(args.out.resolve()).lock, command):
            run = prepare_run(request)
            console.print(f"[bold]{len(run.plan.todo)}[/] series to process, "
                          f"{len(run.plan.already_done)} already done in {run.layout.root} "
                          f"(Prefect: {api.description})", highlight=False, soft_wrap=True)
            if run.plan.todo and not stop.is_set():
                with api.connected():
                    summary = _run_with_progress(run, stop)
            else:
                summary = _finish_without_work(run)
    if stop.is_set():
        console.print(f"[bold]cohort run:[/] interrupted ({stop.signal.name}); {summary.n_done} series done and saved"
                      f"{f', {summary.n_failed} failed' if summary.n_failed else ''}, {stop.in_flight_dropped} in "
                      "flight dropped; rerun the same command to resume", highlight=False, soft_wrap=True)
        return stop.exit_code
    _print_summary(summary, time.perf_counter() - started)
    return summary.exit_code


def _finish_without_work(run):
    """Nothing left to do: no Prefect flow, no cluster, so a finished manifest reruns in seconds."""
    from cohort.run import BatchWriter, finish_run

    return finish_run(run, BatchWriter.for_run(run), time.perf_counter())


def _run_with_progress(run, stop):
    """A progress bar on a terminal; a log line a minute otherwise (sbatch, nohup: cohort.progress)."""
    from cohort.flows.run_flow import cohort_run
    from cohort.progress import ProgressLog

    if not console.is_terminal:
        def write(line: str) -> None:
            console.print(line, highlight=False, soft_wrap=True)

        with ProgressLog(len(run.plan.todo), write=write) as log_line:
            return cohort_run(run, on_result=log_line, stop=stop)
    columns = (TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("[red]{task.fields[failed]} failed"), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        bar = progress.add_task("series", total=len(run.plan.todo), failed=0)
        failed = 0

        def advance(result) -> None:
            nonlocal failed
            failed += not result.done
            progress.update(bar, advance=1, failed=failed)

        return cohort_run(run, on_result=advance, stop=stop)


def _print_summary(summary, wall_seconds: float) -> None:
    failed = f"[red]{summary.n_failed} failed[/]" if summary.n_failed else "0 failed"
    console.print(f"[bold]cohort run:[/] {summary.n_done} done, {failed}, {summary.n_skipped} skipped (done before) "
                  f"in {wall_seconds:.1f} s ({summary.seconds:.1f} s in the flow)", highlight=False)
    for name, path in (("features", "features"), ("series", "series"), ("label maps", "labels.zarr")):
        console.print(f"  {name + ':':12s}{summary.out / path}", highlight=False, soft_wrap=True)
    for failure in summary.failures[:MAX_FAILURES_LISTED]:
        console.print(f"  [red]failed[/] line {failure['manifest_line']}: {failure['error']}", highlight=False,
                      soft_wrap=True)
    if summary.n_failed > MAX_FAILURES_LISTED:
        console.print(f"  ... and {summary.n_failed - MAX_FAILURES_LISTED} more: see {summary.out / 'series'} "
                      "(status == 'failed')")


def stats_command(args: argparse.Namespace) -> int:
    from cohort import stats

    _require_tables(args.results)
    console.print(stats.run_stats(args.results, args.out, args.config, figures=args.figures).describe(), highlight=False, soft_wrap=True)
    return 0


def report_command(args: argparse.Namespace) -> int:
    from cohort import stats

    _require_tables(args.results)
    path = stats.write_report(args.results, args.out)
    console.print(f"report: {path}")
    return 0


def _require_tables(results: Path) -> None:
    for table in ("features", "series"):
        if not any((results / table).glob("*.parquet")):
            raise RunCannotStart(f"{results / table}: no Parquet table here; run `cohort run --out {results}` first")


def models_command(args: argparse.Namespace) -> int:
    from cohort.segment import models_report

    print(models_report(args.weights))
    return 0


def check_command(args: argparse.Namespace) -> int:
    """Exit 0: no problem; 1: problems listed (one line each, then a summary); 2: not a manifest."""
    from cohort.check import check_manifest

    report = check_manifest(args.manifest)
    for line in report.lines():
        print(line)
    print(report.summary())
    return 0 if report.clean else 1


def status_command(args: argparse.Namespace) -> int:
    from cohort.status import run_status

    console.print(run_status(args.out).describe(), highlight=False, soft_wrap=True)
    return 0


COMMANDS = {"run": run_command, "stats": stats_command, "report": report_command, "models": models_command,
            "status": status_command, "check": check_command}

if __name__ == "__main__":
    sys.exit(main())
