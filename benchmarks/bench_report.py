"""Benchmark of ``cohort report`` at the paper's size: 4,004 subjects x 117 structures.

Builds the synthetic cohort (``cohort.testing.cohorts``), runs ``cohort stats`` (default figures),
gives every series the review queue lists a real CT and label map (the shipped example, so
overlays are drawn as for a real run), then times ``write_report`` (cold: overlays drawn; warm:
cached), the page size, and how long headless Chromium takes to open it (navigation start to the
``load`` event, every image decoded). Targets: opens in < 2 s, < 10 MB. Not a test: it prints.

    python benchmarks/bench_report.py [--subjects 4004] [--screenshot report.png]
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import tempfile
import time
from pathlib import Path

import pandas as pd

from cohort.ingest import load_label_nifti
from cohort.stats import run_stats, write_report
from cohort.stats.triage import review_queue
from cohort.store import write_label_map
from cohort.testing.cohorts import make_cohort

EXAMPLES = Path(__file__).resolve().parents[1] / "cohort" / "examples"
CHROMIUM = "/usr/bin/chromium"


def give_images(results: Path) -> Path:
    """A manifest naming a real CT (the shipped example) for every series, and a run record."""
    series = pd.read_parquet(results / "series")
    manifest = results.parent / "scans.csv"
    shutil.copy(EXAMPLES / "example_ct_sm.nii.gz", results.parent / "ct.nii.gz")
    with manifest.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["series_id", "path", "age", "sex"])
        writer.writerows([sid, "ct.nii.gz", "", ""] for sid in series["series_id"])
    for part in (results / "series").glob("*.parquet"):
        part.unlink()
    series.assign(manifest_line=range(2, len(series) + 2)).to_parquet(results / "series" / "part-00000.parquet")
    (results / "runs").mkdir(exist_ok=True)
    (results / "runs" / "bench.json").write_text(json.dumps({"run_id": "bench", "request": {"manifest": str(manifest)}}))
    return manifest


def give_label_maps(results: Path) -> int:
    """The example label map for every series the review queue lists (computed with the stats' z-scores)."""
    zscores = results / "aging" / "zscores.parquet"
    queue = review_queue(pd.read_parquet(results / "features"), pd.read_parquet(results / "series"),
                         pd.read_parquet(zscores) if zscores.exists() else None)
    listed = {sid for sid, _ in queue.overlay_requests()}
    labels = load_label_nifti(EXAMPLES / "example_seg_fast.nii.gz")
    for sid in listed:
        write_label_map(results / "labels.zarr", sid, labels, {}, "bench")
    return len(listed)


def open_seconds(page: Path, screenshot: Path | None) -> float:
    """Navigation start to the load event in headless Chromium (median of 3); optionally a full-page screenshot."""
    from playwright.sync_api import sync_playwright

    times = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        for _ in range(3):
            tab = browser.new_page()
            tab.goto(page.as_uri(), wait_until="load")
            times.append(tab.evaluate("performance.getEntriesByType('navigation')[0].loadEventEnd") / 1000)
            if screenshot is not None:
                tab.screenshot(path=screenshot, full_page=True)
            tab.close()
        browser.close()
    return sorted(times)[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=4004)
    parser.add_argument("--screenshot", type=Path, help="also save a full-page screenshot of the report here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = make_cohort(n_subjects=args.subjects, seed=0).write(Path(tmp) / "results")
        give_images(results)
        start = time.perf_counter()
        run_stats(results)
        n_listed = give_label_maps(results)
        print(f"{args.subjects} subjects; cohort stats {time.perf_counter() - start:.1f} s; "
              f"{n_listed} series in the review queue")
        for label in ("cold (overlays drawn)", "warm (overlays cached)"):
            start = time.perf_counter()
            page = write_report(results)
            print(f"  write_report, {label:<24s}{time.perf_counter() - start:6.2f} s")
        print(f"  report.html size              {page.stat().st_size / 1e6:6.2f} MB (target < 10)")
        print(f"  opens in Chromium (load event){open_seconds(page, args.screenshot):6.2f} s (target < 2)")


if __name__ == "__main__":
    main()
