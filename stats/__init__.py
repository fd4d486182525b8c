"""The TotalSegmentator aging study over ``cohort run`` outputs.

Two entry points for the command line, plain functions for notebooks::

    run_stats(results_dir, out_dir=None, config_path=None, preset=None) -> StatsRun   # cohort stats
    write_report(results_dir, out_path=None, stats_dir=None, strict=False) -> Path    # cohort report
    run_study(features, series, config=None, review=None) -> AgingResults             # in memory

Modules: ``config`` (YAML presets ``default`` and ``paper``), ``cohort_table`` (which rows enter),
``reasons`` (the names of why they do not), ``flow`` (the participant flow, series to analysed subjects),
``pooled`` (left/right rows), ``review`` (reviewer decisions), ``descriptives`` and ``age_tests``
(scipy), ``bootstrap`` (intervals), ``adjusted`` (partial Spearman), ``multiplicity``, ``trends``
(Theil-Sen, LOWESS), ``normative`` (centiles, z-scores), ``study`` (all of it), ``outputs``
(tables, summary.md), ``methods`` (methods.md), ``figures`` (PNG); the report: ``report`` (HTML), ``table1``, ``triage`` (who to look at),
``overlays`` (CT + label-map mosaics), ``report_figures``, ``freshness``, ``review_store`` and
``review_server`` (``cohort review``).
Synthetic cohorts for tests: ``cohort.testing.cohorts``.
"""

from cohort.stats.cohort_table import load_results
from cohort.stats.config import AgingConfig, load_aging_config
from cohort.stats.report import write_report
from cohort.stats.run import StatsRun, run_stats
from cohort.stats.study import AgingResults, run_study

__all__ = ["AgingConfig", "AgingResults", "StatsRun", "load_aging_config", "load_results", "run_stats",
           "run_study", "write_report"]
