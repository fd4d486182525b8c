"""``cohort`` command line: a thin layer over the plain API (run, stats, report, models).

Exit codes: 0 every row done; 1 some rows failed; 2 the run could not start.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from cohort.errors import WRITE_ERRORS, OutputWriteFailed, RunCannotStart
from cohort.manifest import example_manifest

console = Console(stderr=True)
MAX_FAILURES_LISTED = 20
MAX_REASONS_LISTED = 5


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
                     help="Dask workers (local: default usable CPUs // threads per worker: "
                          "execution.threads_per_worker, else the model's worker_threads when segmenting, else 1)")
    run.add_argument("--recompute", choices=("changed",),
                     help="changed: recompute the done rows whose model, weights, measurement settings or input "
                          "files changed (otherwise such a rerun stops and names what changed)")

    stats = commands.add_parser("stats", help="run the aging study on a results folder")
    stats.add_argument("--results", type=Path, required=True)
    stats.add_argument("--out", type=Path, help="default: <results>/aging")
    stats.add_argument("--config", type=Path, help="aging-study configuration YAML (default: stats/aging_default.yaml)")
    stats.add_argument("--figures", choices=("none", "overview", "top", "all"),
                       help="which figures to draw (default from the config: overview and the top structures)")
    stats.add_argument("--preset", choices=("default", "paper"),
                       help="settings to start from: default (recommended) or paper (the published method); "
                            "overrides the config file's preset key")

    report = commands.add_parser("report", help="write one HTML page: run summary, QC and the aging study")
    report.add_argument("--results", type=Path, required=True)
    report.add_argument("--out", type=Path, help="default: <results>/report.html")
    report.add_argument("--stats", type=Path, help="the folder `cohort stats --out` wrote (default: <results>/aging)")
    report.add_argument("--strict", action="store_true",
                        help="exit 2 instead of a warning banner when the stats are older than the run's tables")
    report.add_argument("--figure-formats", default="png", type=lambda text: tuple(text.split(",")),
                        help="manuscript figures in report-figures/: any of png,svg,pdf (default: png, 300 dpi)")

    review = commands.add_parser("review", help="serve a local page (127.0.0.1) to accept or reject segmentations")
    review.add_argument("--results", type=Path, required=True)
    review.add_argument("--stats", type=Path, help="stats folder for z-score outliers (default: <results>/aging)")
    review.add_argument("--port", type=int, default=8765, help="port on 127.0.0.1 (default: 8765; 0: any free port)")

    models = commands.add_parser("models", help="where weights are looked for, what is there, how to get the rest")
    models.add_argument("--weights", type=Path)
    models_actions = models.add_subparsers(dest="models_action")
    download = models_actions.add_parser("download", help="fetch and unpack a model's release archives (checked, atomic)")
    download.add_argument("name", help="a model of configs/models/ (see `cohort models`) or a model YAML file")
    download.add_argument("--weights", type=Path, dest="download_weights", metavar="DIR",
                          help="weights folder (default: where `cohort models` looks)")
    download.add_argument("--mirror", metavar="URL", help="base URL or folder serving the same archive file names (offline mirror, cache)")

    check = commands.add_parser("check", help="every problem of a manifest in one pass, no work done")
    check.add_argument("--manifest", type=Path, required=True)
    check.add_argument("--model", help="also refuse DICOM series tagged as the other modality than this model's "
                                       "(e.g. MR series for a CT model); labels folders are judged by its class map "
                                       "(default: fast's)")
    check.add_argument("--config", type=Path, help="the run configuration `cohort run --config` will use: its voxel "
                                                   "limit (ingest.max_voxels) and class map (measure.class_map) "
                                                   "(default: configs/default.yaml)")

    status = commands.add_parser("status", help="done, failed, remaining and ETA of a running or stopped run")
    status.add_argument("--out", type=Path, default=Path("results"), help="the run's output folder (default: results/)")

    manifest = commands.add_parser("manifest", help="a DICOM export -> manifest (+ scans.index.parquet beside it)")
    manifest.add_argument("--dicom", type=Path, required=True, help="the export's root folder (crawled recursively)")
    manifest.add_argument("--out", type=Path, required=True, help="the manifest to write, e.g. scans.csv")
    manifest.add_argument("--policy", type=Path, help="selection policy YAML (default: configs/selection.yaml)")
    manifest.add_argument("--key", type=Path, help="pseudonym key file, created on first use (default: "
                                                   "$COHORT_PSEUDONYM_KEY, else ~/.config/cohort/pseudonym.key)")
    manifest.add_argument("--workers", type=positive_int, help="header-reading processes (default: usable CPUs)")
    manifest.add_argument("--age-cap", type=float, metavar="YEARS",
                          help="write ages at or above YEARS as YEARS (HIPAA safe harbour: --age-cap 90); "
                               "default: ages as they are")
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


@contextmanager
def writing_to(out: Path, folder: Path | None = None) -> Iterator[None]:
    """For the commands whose driver writes its outputs itself: stop before any work unless
    ``folder`` (default: ``out``, a folder) can be written, then turn a failure to write ``out``
    (disk full, quota, read-only, permissions) into exit 2 with the reason and the path."""
    from cohort.store.layout import check_writable_folder

    check_writable_folder(folder or out, label=f"--out {out}")
    try:
        yield
    except OSError as error:
        if error.errno not in WRITE_ERRORS:
            raise
        raise OutputWriteFailed(f"{error.strerror or error} while writing {error.filename or out}; what was "
                                "written before is incomplete: free space (or choose a folder you can write to) "
                                "and run the command again") from None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _configure_logging(args.verbose)
    try:
        return COMMANDS[args.command](args)
    except RunCannotStart as error:
        what = "stopped" if isinstance(error, OutputWriteFailed) else "cannot start"
        console.print(f"[bold red]cohort {args.command}: {what}:[/] {escape(str(error))}", highlight=False,
                      soft_wrap=True)
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
        if not verbose:  # the summary lists failures; Prefect's own warnings reach its API, not the console
            handler.addFilter(lambda record: record.levelno >= logging.ERROR or not record.name.startswith("prefect"))
    # Dask reports a connection that its own shutdown closed at INFO, with a traceback: not news to a user
    logging.getLogger("distributed.batched").setLevel(logging.WARNING)


def run_command(args: argparse.Namespace) -> int:
    """``cohort.api.run`` with a progress display; SIGINT/SIGTERM stop cleanly (exit 130/143)."""
    from cohort.api import run

    started = time.perf_counter()
    progress = RunProgress()
    try:
        summary = run(args.manifest, args.out, model=args.model, weights=args.weights, config=args.config,
                      cluster=args.cluster, workers=args.workers, recompute=args.recompute,
                      on_start=progress.start, on_result=progress.advance)
    finally:
        progress.close()
    if summary.stopped_by is not None:
        name = signal.Signals(summary.stopped_by).name
        failed = f", {summary.n_failed} failed" if summary.n_failed else ""
        console.print(f"[bold]cohort run:[/] interrupted ({name}); {summary.n_done} series done and saved{failed}, "
                      f"{summary.in_flight_dropped} in flight dropped; rerun the same command to resume",
                      highlight=False, soft_wrap=True)
    else:
        _print_summary(summary, time.perf_counter() - started)
    return summary.exit_code


class RunProgress:
    """The run's first line, then a progress bar on a terminal or a log line a minute otherwise
    (sbatch, nohup, output to a file: :class:`cohort.progress.ProgressLog`)."""

    def __init__(self) -> None:
        self._display: Progress | None = None
        self._log = None
        self._bar = None
        self._failed = 0

    def start(self, run, prefect: str) -> None:
        from cohort.progress import ProgressLog

        plan = run.plan
        console.print(f"[bold]{len(plan.todo)}[/] series to process, {len(plan.already_done)} already done in "
                      f"{run.layout.root} (Prefect: {prefect})", highlight=False, soft_wrap=True)
        for line in _plan_notes(plan):
            console.print(f"  {line}", highlight=False, soft_wrap=True)
        if not plan.todo:
            return
        if console.is_terminal:
            columns = (TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
                       TextColumn("[red]{task.fields[failed]} failed"), TimeElapsedColumn(), TimeRemainingColumn())
            self._display = Progress(*columns, console=console, transient=False)
            self._bar = self._display.add_task("series", total=len(plan.todo), failed=0)
            self._display.start()
        else:
            self._log = ProgressLog(len(plan.todo), write=lambda line: console.print(line, highlight=False,
                                                                                    soft_wrap=True)).__enter__()

    def advance(self, result) -> None:
        self._failed += not result.done
        if self._display is not None:
            self._display.update(self._bar, advance=1, failed=self._failed)
        elif self._log is not None:
            self._log(result)

    def close(self) -> None:
        if self._display is not None:
            self._display.stop()
        if self._log is not None:
            self._log.__exit__(None, None, None)
        self._display = self._log = None


def _plan_notes(plan) -> list[str]:
    """What the plan does besides processing: recomputed, redone, rewritten, no longer listed."""
    notes = []
    if plan.changed and len(plan.changed) <= len(plan.todo):
        notes.append(f"{len(plan.changed)} done series recomputed (--recompute changed)")
    if plan.redo:
        notes.append(f"{len(plan.redo)} done series redone: their features or label map were missing")
    if plan.moved:
        notes.append(f"{len(plan.moved)} done series whose files moved or were touched, contents unchanged: kept")
    if plan.inputs_gone:
        notes.append(f"{len(plan.inputs_gone)} done series whose input files are gone: kept as they are "
                     f"(e.g. {plan.inputs_gone[0].where})")
    edited = [record for record in plan.metadata_updates if record.in_manifest]  # the others: below
    if edited:
        what = "manifest edits (age, sex, covariates, line)" + (", moved files" if plan.moved else "")
        notes.append(f"{len(edited)} rows updated in place from {what}")
    if plan.not_in_manifest:
        notes.append(f"{len(plan.not_in_manifest)} series in the results are not in this manifest: kept, marked "
                     "in_manifest = false, left out of the aging study")
    return notes


def _print_summary(summary, wall_seconds: float) -> None:
    failed = f"[red]{summary.n_failed} failed[/]" if summary.n_failed else "0 failed"
    console.print(f"[bold]cohort run:[/] {summary.n_done} done, {failed}, {summary.n_skipped} skipped (done before) "
                  f"in {wall_seconds:.1f} s ({summary.seconds:.1f} s in the flow)", highlight=False, soft_wrap=True)
    for name, path in (("features", "features"), ("series", "series"), ("label maps", "labels.zarr")):
        console.print(f"  {name + ':':12s}{summary.out / path}", highlight=False, soft_wrap=True)
    for failure in sorted(summary.failures, key=lambda record: record.manifest_line)[:MAX_FAILURES_LISTED]:
        console.print(f"  [red]failed[/] {escape(failure.failure())}", highlight=False, soft_wrap=True)
    if summary.n_failed > MAX_FAILURES_LISTED:
        console.print(f"  ... and {summary.n_failed - MAX_FAILURES_LISTED} more: see {summary.out / 'series'} "
                      "(status == 'failed')")


def stats_command(args: argparse.Namespace) -> int:
    from cohort import stats

    _require_tables(args.results)
    out = args.out or args.results / "aging"
    with writing_to(out):
        run = stats.run_stats(args.results, args.out, args.config, figures=args.figures, preset=args.preset)
    console.print(run.describe(), highlight=False, soft_wrap=True)
    return 0


def report_command(args: argparse.Namespace) -> int:
    from cohort import stats

    _require_tables(args.results)
    out = args.out or args.results / "report.html"
    with writing_to(out, out.parent):
        path = stats.write_report(args.results, args.out, stats_dir=args.stats, strict=args.strict,
                                  figure_formats=args.figure_formats)
    console.print(f"report: {path}")
    return 0


def review_command(args: argparse.Namespace) -> int:
    from cohort.stats.review_server import serve

    _require_tables(args.results)
    serve(args.results, args.port, args.stats)
    return 0


def _require_tables(results: Path) -> None:
    """Stats need measured series; when every series failed, say why instead of "run first"."""
    from cohort.store.layout import missing_table

    if missing := missing_table(results, "series"):
        raise RunCannotStart(missing)
    if not any((results / "features").glob("*.parquet")):
        import pandas as pd

        failed = pd.read_parquet(results / "series", columns=["status", "error"]).query("status == 'failed'")
        reasons = failed["error"].str.split(": ", n=1).str[-1].value_counts().head(MAX_REASONS_LISTED)
        lines = [f"no series in {results} was measured: {len(failed)} failed. Most common reasons:"]
        lines += [f"  {n} x {reason}" for reason, n in reasons.items()]
        lines.append(f"Fix the inputs, rerun `cohort run --out {results}` (failed rows are retried), then this command.")
        raise RunCannotStart("\n".join(lines))


def models_command(args: argparse.Namespace) -> int:
    from cohort.segmentation import load_model_spec, models_report, resolve_weights_dir

    if args.models_action == "download":
        from cohort.segmentation.download import download_model

        spec = load_model_spec(args.name)
        weights = resolve_weights_dir(args.download_weights or args.weights, spec)
        for fetched in download_model(spec, weights, args.mirror):
            print(f"{fetched.state:9s} {fetched.folder}")
        return 0
    print(models_report(args.weights))
    return 0


def check_command(args: argparse.Namespace) -> int:
    """Exit 0: no problem; 1: problems listed (one line each, then a summary); 2: not a manifest."""
    from cohort.check import check_manifest
    from cohort.config import load_run_config
    from cohort.pipeline import MeasureSettings
    from cohort.segmentation.registry import load_model_spec

    model = load_model_spec(args.model) if args.model else None
    config = load_run_config(args.config)
    report = check_manifest(args.manifest, model.modality if model else None,
                            MeasureSettings.from_config(config, model).class_map, config)
    for line in report.lines():
        print(line)
    print(report.summary())
    return 0 if report.clean else 1


def status_command(args: argparse.Namespace) -> int:
    from cohort.status import run_status

    console.print(run_status(args.out).describe(), highlight=False, soft_wrap=True)
    return 0


def manifest_command(args: argparse.Namespace) -> int:
    """Crawl a DICOM export with a progress bar, write the manifest and print what was found;
    exit 1 when no series was chosen (the manifest would have no rows)."""
    from cohort.export import build_manifest

    with writing_to(args.out, args.out.parent), Progress(TextColumn("headers"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True, disable=not console.is_terminal) as display:
        bar = display.add_task("headers", total=None)
        summary = build_manifest(args.dicom, args.out, args.policy, args.key, args.workers,
                                 on_progress=lambda done, total: display.update(bar, completed=done, total=total),
                                 age_cap=args.age_cap)
    console.print("[bold]cohort manifest:[/] " + "\n".join(summary.describe(args.out)), highlight=False,
                  soft_wrap=True)
    return summary.exit_code


COMMANDS = {"run": run_command, "stats": stats_command, "report": report_command, "review": review_command,
            "models": models_command,
            "status": status_command, "check": check_command, "manifest": manifest_command}

if __name__ == "__main__":
    sys.exit(main())
