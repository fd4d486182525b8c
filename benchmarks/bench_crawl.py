"""Header crawl of a synthetic DICOM export: files/s of a first `cohort manifest`, wall time of a rerun.

The export (written once, reused by later runs) holds copies of the example CT's 20 slices with
new UIDs: ``--files`` files as series of 20 slices, 5 series per study, one study per patient.

    python benchmarks/bench_crawl.py --files 50000 --export /tmp/cohort_bench_export
"""

from __future__ import annotations

import argparse
import copy
import os
import shutil
import tempfile
import time
from pathlib import Path

import pydicom
from pydicom.uid import generate_uid

from cohort.export import build_manifest

EXAMPLE = Path(__file__).parents[1] / "cohort" / "examples" / "example_ct_dicom"
SERIES_PER_STUDY = 5


def write_export(root: Path, n_files: int) -> None:
    """``n_files`` copies of the example slices, with new study/series/instance UIDs and patients."""
    slices = sorted((pydicom.dcmread(path) for path in EXAMPLE.iterdir()), key=lambda ds: float(ds.ImagePositionPatient[2]))
    partial = root.with_name(root.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    written, series = 0, 0
    while written < n_files:
        study, patient = generate_uid(), f"PAT{series // SERIES_PER_STUDY:06d}"
        for _ in range(SERIES_PER_STUDY):
            folder = partial / patient / f"series{series:06d}"
            folder.mkdir(parents=True)
            uid = generate_uid()
            for k, source in enumerate(slices[:n_files - written]):
                ds = copy.copy(source)
                ds.PatientID, ds.PatientAge, ds.StudyInstanceUID, ds.SeriesInstanceUID = patient, "060Y", study, uid
                ds.SOPInstanceUID = generate_uid()
                ds.save_as(folder / f"IM{k:04d}.dcm")
                written += 1
            series += 1
            if written >= n_files:
                break
    partial.rename(root)


def _cpu_seconds() -> float:
    """User + system time of this process and its finished children (the crawl's workers)."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=50_000)
    parser.add_argument("--export", type=Path, default=Path(tempfile.gettempdir()) / "cohort_bench_export")
    parser.add_argument("--workers", type=int, default=None, help="default: usable CPUs")
    args = parser.parse_args()
    if not args.export.is_dir():
        started = time.perf_counter()
        write_export(args.export, args.files)
        print(f"wrote {args.files} files to {args.export} in {time.perf_counter() - started:.0f} s")
    with tempfile.TemporaryDirectory() as scratch:
        manifest, key = Path(scratch) / "out" / "scans.csv", Path(scratch) / "pseudonym.key"
        started, cpu = time.perf_counter(), _cpu_seconds()
        first = build_manifest(args.export, manifest, key=key, workers=args.workers)
        first_s, first_cpu = time.perf_counter() - started, _cpu_seconds() - cpu
        started = time.perf_counter()
        rerun = build_manifest(args.export, manifest, key=key, workers=args.workers)
        rerun_s = time.perf_counter() - started
    n_files = len(first.crawl.files)
    print(f"files: {n_files}, series: {first.n_series}, studies: {first.n_studies}")
    cores = len(os.sched_getaffinity(0))
    print(f"first crawl: {first_s:.1f} s = {n_files / first_s:.0f} files/s (target >= 1000); load average "
          f"{os.getloadavg()[0]:.1f} on {cores} cores")
    print(f"  CPU: {1000 * first_cpu / n_files:.2f} ms per file (all processes) = {cores * n_files / first_cpu:.0f} "
          f"files/s when the {cores} cores are free")
    print(f"unchanged rerun: {rerun_s:.1f} s, {rerun.crawl.n_read} headers read (target <= 10 s)")


if __name__ == "__main__":
    main()
