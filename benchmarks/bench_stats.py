"""Benchmark of the aging study: 4,004 subjects x 117 structures x 2 metrics, both presets.

Targets: ``preset: paper`` (the published tests) <= 10 s and ``preset: default`` (everything:
sex strata, bootstrap intervals, partial correlations, Theil-Sen trends, normative z-scores)
<= 60 s, end to end. Writes a synthetic paper-sized cohort as Parquet
(``cohort.testing.cohorts``), then times ``cohort stats`` in parts: reading the tables, the
analysis, writing the tables, the default figures (overview + 6 strongest), and the whole
``run_stats``. Not a test: it prints.

    python benchmarks/bench_stats.py [--repeat 1] [--workers 2] [--preset paper --preset default]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import resource
import tempfile
import time
from pathlib import Path

from cohort.stats import load_aging_config, load_results, run_stats, run_study
from cohort.stats.figures import draw_figures
from cohort.stats.outputs import write_tables
from cohort.testing.cohorts import make_cohort


def _cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the forked workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _timed(label: str, func, *args, **kwargs):  # type: ignore[no-untyped-def]
    """Call ``func`` and print wall and CPU seconds (CPU shows the cost when the machine is shared)."""
    wall, cpu = time.perf_counter(), _cpu_seconds()
    value = func(*args, **kwargs)
    print(f"  {label:<30s}{time.perf_counter() - wall:7.2f} s wall {_cpu_seconds() - cpu:7.2f} s CPU")
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--preset", action="append", choices=("paper", "default"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results_dir = make_cohort().write(Path(tmp) / "results")
        print(f"aging study, 4004 subjects x 117 structures x 2 metrics, workers={args.workers}, "
              f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
        for preset in args.preset or ["paper", "default"]:
            config = dataclasses.replace(load_aging_config(preset=preset), workers=args.workers)
            config_path = Path(tmp) / f"{preset}.yaml"
            config_path.write_text(f"preset: {preset}\nworkers: {args.workers}\n")
            for run in range(1, args.repeat + 1):
                print(f"preset {preset}, run {run}")
                tables = _timed("read features + series", load_results, results_dir)
                results = _timed("analysis (run_study)", run_study, tables.features, tables.series, config)
                _timed("write tables", write_tables, results, Path(tmp) / "parts")
                _timed("figures (overview + top 6)", draw_figures, results, Path(tmp) / "parts" / "figures")
                _timed("run_stats end to end", run_stats, results_dir, Path(tmp) / "aging", config_path)


if __name__ == "__main__":
    main()
