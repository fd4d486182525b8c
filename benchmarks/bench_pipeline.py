"""Benchmark: one worker strictly one series at a time with the C library's default heap
(``prefetch: 0``, ``reuse_freed_memory: false``, cohort before issue G), the same with the heap
keeping freed memory (cohort.heap), and ``prefetch: 1`` on top (a second series slot, read,
restored, measured and stored beside the one on the network), with one forward pass at a time
and with two at once (``network_passes: 2``, each on one of the worker's two threads,
cohort.segmentation.gate), and the defaults (``prefetch`` and ``network_passes`` ``auto``: the
worker times its network and runs two series side by side only where two passes pay), on clinical-size CTs (0.8 x 0.8 x 1.5 mm) and the
small random test network (``--size real``: random weights of TotalSegmentator's size), in one
run; for comparison, the CPUs split into one-thread workers instead (each with its own copy of
the model).

    python benchmarks/bench_pipeline.py --n 8
    python benchmarks/bench_pipeline.py --n 4 --size real

Prints the processing window of each (first series started to last finished, from the
``series/`` table: start-up excluded, a series' wait for the model load included), the ratios, the mean stage seconds and the
worker's peak resident memory.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from scipy import ndimage

import cohort
from cohort.flows.resources import usable_cpus
from cohort.manifest import example_manifest
from cohort.pipeline import STAGES
from cohort.segmentation import load_model_spec
from cohort.testing.benchmarks import PeakChildMemory, processing_window, series_manifest
from cohort.testing.weights import build_weights

CLINICAL_SPACING_MM = (0.8, 0.8, 1.5)


def clinical_ct(folder: Path) -> Path:
    """The example CT resampled to clinical spacing (about 39 M voxels), saved once."""
    ct = nib.load(example_manifest().parent / "example_ct.nii.gz")
    spacing = np.asarray(ct.header.get_zooms()[:3], dtype=float)
    zoom = spacing / np.asarray(CLINICAL_SPACING_MM)
    data = ndimage.zoom(np.asanyarray(ct.dataobj).astype(np.int16), zoom, order=1)
    affine = ct.affine @ np.diag([*(1 / zoom), 1.0])
    path = folder / "clinical.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), path)
    print(f"clinical-size CT: {data.shape} = {data.size / 1e6:.1f} M voxels at {CLINICAL_SPACING_MM} mm")
    return path


VARIANTS = {
    "one at a time, default heap": {"prefetch": 0, "reuse_freed_memory": "false"},
    "one at a time, heap reused": {"prefetch": 0, "reuse_freed_memory": "true"},
    "prefetch 1, one pass at a time, heap reused": {"prefetch": 1, "network_passes": 1, "reuse_freed_memory": "true"},
    "prefetch 1, two passes at once, heap reused": {"prefetch": 1, "network_passes": 2, "reuse_freed_memory": "true"},
    "the defaults (prefetch and network_passes auto)": {"reuse_freed_memory": "true"},
}
ONE_THREAD_WORKERS = "one-thread workers, one at a time, heap reused"


def run(ct: Path, n: int, weights: Path, work: Path, name: str, execution: dict[str, object], workers: int = 1
        ) -> tuple[pd.DataFrame, PeakChildMemory]:
    folder = work / name.replace(" ", "_").replace(",", "")
    folder.mkdir()
    copies = [folder / f"ct{index:02d}.nii.gz" for index in range(n)]
    for copy in copies:
        copy.symlink_to(ct)
    manifest = series_manifest(folder / "scans.csv", copies)
    config = folder / "run.yaml"
    config.write_text("execution:\n" + "".join(f"  {key}: {value}\n" for key, value in execution.items()))
    with PeakChildMemory() as memory:
        summary = cohort.run(manifest, folder / "results", weights=weights, config=config, workers=workers)
    assert summary.exit_code == 0, summary.failures
    return pd.read_parquet(folder / "results" / "series"), memory


def window_s(series: pd.DataFrame) -> float:
    first, last = processing_window(series)
    return last - first


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--size", choices=("small", "real"), default="small",
                        help="random weights of the small test network or of TotalSegmentator's real size")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_pipeline_"))
    weights = work / "weights"
    build_weights(load_model_spec("fast"), weights, args.size, seed=0)
    ct = clinical_ct(work)
    cpus = usable_cpus()
    variants = {name: (execution, 1) for name, execution in VARIANTS.items()}
    variants[ONE_THREAD_WORKERS] = (VARIANTS["one at a time, heap reused"], cpus)
    windows = {}
    for name, (execution, workers) in variants.items():
        series, memory = run(ct, args.n, weights, work, name, execution, workers)
        windows[name] = window_s(series)
        stages = ", ".join(f"{stage} {series[f'seconds_{stage}'].mean():.2f}" for stage in STAGES)
        print(f"{name}: {args.n} series in {windows[name]:.1f} s "
              f"({3600 * args.n / windows[name]:.0f} series/h); mean s per series: {stages}; "
              f"worker peak {memory.peak_bytes / 2 ** 30:.2f} GiB, "
              f"all its processes {memory.peak_total_bytes / 2 ** 30:.2f} GiB")
    baseline, reused, prefetch, passes, defaults, split = windows.values()
    print(f"heap reused / default heap, one at a time: {baseline / reused:.2f}x")
    print(f"prefetch 1 / prefetch 0, heap reused, one pass at a time: {reused / prefetch:.2f}x")
    print(f"prefetch 1 / prefetch 0, heap reused, two passes at once: {reused / passes:.2f}x")
    print(f"the defaults / prefetch 0, heap reused: {reused / defaults:.2f}x (issue G's target: 1.3x)")
    print(f"{cpus} one-thread workers / one worker one at a time: {reused / split:.2f}x")


if __name__ == "__main__":
    main()
