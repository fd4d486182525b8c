"""The TotalSegmentator aging study over ``cohort run`` outputs.

Two entry points for the command line, plain functions for notebooks::

    run_stats(results_dir, out_dir=None, config_path=None) -> StatsRun    # cohort stats
    write_report(results_dir, out_path=None) -> Path                      # cohort report
    run_study(features, series, config=None) -> AgingResults              # in memory

Modules: ``config`` (YAML), ``cohort_table`` (which rows enter), ``descriptives`` and
``age_tests`` (scipy), ``study`` (all tests), ``outputs`` (tables, summary.md),
``figures`` (PNG), ``report`` (HTML). Synthetic cohorts for tests: ``cohort.testing.cohorts``.
"""

from cohort.stats.cohort_table import load_results
from cohort.stats.config import AgingConfig, load_aging_config
from cohort.stats.report import write_report
from cohort.stats.run import StatsRun, run_stats
from cohort.stats.study import AgingResults, run_study

__all__ = ["AgingConfig", "AgingResults", "StatsRun", "load_aging_config", "load_results", "run_stats",
           "run_study", "write_report"]
