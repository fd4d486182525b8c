"""Orchestration overhead of ``cohort run``: tiny series end to end, rerun no-op, planning.

    python benchmarks/bench_orchestration.py --series 2000 --workers 2 [--api URL]

Tiny series = rows with precomputed labels on small synthetic NIfTIs (16^3 voxels), so nearly
all the time is orchestration: manifest, planning, Dask dispatch, Parquet batches, Zarr.
Prints wall per series, rerun time, driver peak RSS, and the time to plan 10,000 rows with
9,990 done.
"""

from __future__ import annotations

import argparse
import csv
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np


def make_inputs(folder: Path, n: int) -> Path:
    rng = np.random.default_rng(0)
    ct = rng.normal(40, 20, (16, 16, 16)).astype(np.int16)
    ct[:2] = -1000
    labels = np.zeros((16, 16, 16), np.uint8)
    labels[4:12, 4:12, 4:12] = 5
    labels[5:8, 5:8, 5:8] = 1
    affine = np.diag([1.5, 1.5, 1.5, 1.0])
    nib.save(nib.Nifti1Image(ct, affine), folder / "ct.nii.gz")
    nib.save(nib.Nifti1Image(labels, affine), folder / "seg.nii.gz")
    manifest = folder / "scans.csv"
    with manifest.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["series_id", "path", "age", "sex", "labels"])
        for i in range(n):
            writer.writerow([f"s{i:05d}", "ct.nii.gz", 20 + i % 60, "MF"[i % 2], "seg.nii.gz"])
    return manifest


def run_cli(args: list[str], api: str | None) -> tuple[float, int, str]:
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}
    env.pop("PREFECT_API_URL", None)
    if api:
        env["PREFECT_API_URL"] = api
    started = time.perf_counter()
    process = subprocess.run([sys.executable, "-m", "cohort.cli", "run", *args], capture_output=True, text=True,
                             env=env)
    wall = time.perf_counter() - started
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024
    return wall, peak_mb, process.stderr


def bench_planning(folder: Path) -> float:
    """Plan a 10,000-row manifest whose output holds 9,990 done rows."""
    import pyarrow as pa

    from cohort.manifest import load_manifest
    from cohort.config import load_run_config
    from cohort.pipeline import MeasureSettings, RunContext, failed_result
    from cohort.provenance import input_fingerprint, load_content_key
    from cohort.store.records import series_table
    from cohort.store import OutputLayout, plan_run, write_part

    manifest = make_inputs(folder, 10_000)
    specs = load_manifest(manifest)
    layout = OutputLayout(folder / "out")
    layout.create()
    context = RunContext(layout.labels_zarr, MeasureSettings.from_config(load_run_config()),
                         load_content_key(layout.content_key))
    records = [failed_result(spec, "x").record.replace(
        status="done", error=None, run_key=context.run_key(spec).digest, run_settings=context.run_key(spec).to_json(),
        input_fingerprint=input_fingerprint(spec.path, spec.companions)) for spec in specs[:9_990]]
    for start in range(0, len(records), 50):
        write_part(layout.series, f"part-{start:06d}", series_table(records[start:start + 50]))
        write_part(layout.features, f"part-{start:06d}", pa.table({"series_id": [r.series_id for r in records[start:start + 50]]}))
    for record in records:  # label maps marked complete, as a finished run leaves them
        (layout.labels_zarr / record.series_id).mkdir()
        (layout.labels_zarr / record.series_id / "zarr.json").write_text('{"attributes": {"complete": true}}')
    started = time.perf_counter()
    plan = plan_run(load_manifest(manifest), layout, context)
    seconds = time.perf_counter() - started
    assert len(plan.todo) == 10 and len(plan.already_done) == 9_990
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--api", help="PREFECT_API_URL of a running server (default: ephemeral)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        manifest = make_inputs(folder, args.series)
        common = ["--manifest", str(manifest), "--out", str(folder / "results"), "--workers", str(args.workers)]
        wall, peak, log = run_cli(common, args.api)
        assert "failed" not in log.split("cohort run:")[-1].split(",")[1] or " 0 failed" in log, log[-2000:]
        print(f"first run: {args.series} series in {wall:.1f} s wall = {1000 * wall / args.series:.1f} ms/series "
              f"(process start, Prefect and cluster start-up included); driver peak RSS {peak} MB")
        again, _, log = run_cli(common, args.api)
        print(f"rerun of the finished manifest (no-op): {again:.1f} s wall")
        with tempfile.TemporaryDirectory() as plan_tmp:
            print(f"planning 10,000 rows with 9,990 done: {bench_planning(Path(plan_tmp)):.2f} s")


if __name__ == "__main__":
    main()
