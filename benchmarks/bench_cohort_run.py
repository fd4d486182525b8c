"""Benchmark: ``cohort run`` (2 Dask workers, networks loaded once per worker) against a loop of
the ``TotalSegmentator --fast`` CLI over the same files with the same random weights of the real
network size, on the CPU, in one run. Prints series/hour of both, the ratio and cohort's
per-stage seconds from its own ``series/`` table.

    python benchmarks/bench_cohort_run.py --n 20 --workers 2
    python benchmarks/bench_cohort_run.py --n 8 --workers 1,2     # each worker count, one CLI loop

Needs the ``parity`` extra (TotalSegmentator, installed with -c constraints.txt).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_segment import bench_cli, make_series  # noqa: E402

from cohort.pipeline import STAGES  # noqa: E402
from cohort.segmentation import load_model_spec  # noqa: E402
from cohort.testing.benchmarks import series_manifest  # noqa: E402
from cohort.testing.weights import build_weights  # noqa: E402


def run_cohort(series: list[Path], weights: Path, work: Path, workers: int) -> tuple[float, pd.DataFrame]:
    manifest = series_manifest(work / "scans.csv", series)
    out = work / f"results_{workers}_workers"
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "cohort.cli", "run", "--manifest", str(manifest), "--out", str(out),
                    "--model", "fast", "--weights", str(weights), "--workers", str(workers)], check=True, env=env)
    return time.perf_counter() - start, pd.read_parquet(out / "series")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--workers", type=lambda text: [int(count) for count in text.split(",")], default=[2],
                        help="cohort's worker count, or several separated by commas (each run on the same files)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_cohort_run_"))
    home = work / "totalseg_home"
    weights = home / "nnunet" / "results"
    build_weights(load_model_spec("fast"), weights, "real", seed=0)
    series = make_series(work, args.n)
    runs = {workers: run_cohort(series, weights, work, workers) for workers in args.workers}
    cli_wall, _ = bench_cli(home, series, work, ["--fast"])
    n = len(series)
    print(f"{n} series, fast model, real-size random weights, CPU")
    print(f"TotalSegmentator --fast loop:   {cli_wall:7.1f} s -> {3600 * n / cli_wall:6.0f} series/hour")
    for workers, (cohort_wall, table) in runs.items():
        print(f"cohort run --workers {workers}: {cohort_wall:7.1f} s -> {3600 * n / cohort_wall:6.0f} series/hour, "
              f"ratio to the CLI loop {cli_wall / cohort_wall:.2f}x")
        stage_sums = {stage: round(float(table[f"seconds_{stage}"].fillna(0).sum()), 1) for stage in STAGES}
        print(f"  seconds per stage, summed over series (all workers): {stage_sums}")
        print(f"  done: {(table['status'] == 'done').sum()} of {n}")


if __name__ == "__main__":
    main()
