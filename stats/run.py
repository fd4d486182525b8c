"""``run_stats``: the aging study from a ``cohort run`` output folder to tables and figures."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from cohort.stats.cohort_table import load_results
from cohort.stats.config import load_aging_config, with_figures
from cohort.stats.figures import draw_figures
from cohort.stats.freshness import input_state
from cohort.stats.methods import write_methods
from cohort.stats.outputs import testable, write_summary, write_tables
from cohort.stats.study import ALL, run_study

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StatsRun:
    """Where ``run_stats`` wrote what, and the headline counts."""

    out_dir: Path
    tables: tuple[Path, ...]
    figures: tuple[Path, ...]
    summary: Path
    n_series: int
    n_subjects: int
    n_tests: int
    n_significant: int
    seconds: float
    n_not_testable: int = 0

    def describe(self) -> str:
        """A few lines for the command line."""
        untested = f" ({self.n_not_testable} not testable here: too few series)" if self.n_not_testable else ""
        return (f"aging study: {self.n_subjects} subjects ({self.n_series} series in the run), "
                f"{self.n_significant} of {self.n_tests} testable structure-metric correlations significant"
                f"{untested}, {self.seconds:.1f} s\n"
                f"tables, {len(self.figures)} figures, summary.md and methods.md in {self.out_dir}")


def run_stats(results_dir: Path, out_dir: Path | None = None, config_path: Path | None = None,
              figures: str | None = None, preset: str | None = None) -> StatsRun:
    """Run the aging study on ``results_dir/{features,series}`` and write ``out_dir``.

    ``out_dir`` defaults to ``results_dir/aging``; ``config_path`` to the shipped
    ``stats/aging_default.yaml``; ``figures`` (``none``, ``overview``, ``top``, ``all``)
    overrides the config's ``figures.which``; ``preset`` (``default``, ``paper``) the file's ``preset:``.
    Decisions in ``results_dir/review.parquet`` are honoured (rejected rows: ``rejected_in_review``). Raises ``cohort.errors.ConfigError`` for a bad config
    (before reading any table) and ``ResultsTableError`` for a missing or malformed table;
    both are ``RunCannotStart`` (exit code 2 on the command line).
    """
    start = time.perf_counter()
    config = with_figures(load_aging_config(config_path, preset), figures)
    results_dir = Path(results_dir)
    out_dir = Path(out_dir) if out_dir else results_dir / "aging"
    inputs = input_state(results_dir)  # before reading: rows added meanwhile make the stats stale, not silently newer
    tables = load_results(results_dir)
    results = run_study(tables.features, tables.series, config, tables.review)
    paths = write_tables(results, out_dir, inputs)
    figures = draw_figures(results, out_dir / "figures")
    summary = write_summary(results, out_dir)
    write_methods(results, out_dir)
    overall = results.correlations[results.correlations["stratum"] == ALL]
    tested = overall[testable(overall)] if len(overall) else overall
    run = StatsRun(
        out_dir=out_dir, tables=tuple(paths), figures=tuple(figures), summary=summary,
        n_series=len(tables.series), n_subjects=results.table.n_subjects(),
        n_tests=len(tested), n_significant=int(tested["significant"].sum()) if len(tested) else 0,
        n_not_testable=len(overall) - len(tested), seconds=time.perf_counter() - start,
    )
    log.info("%s", run.describe())
    return run
