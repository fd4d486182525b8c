"""Benchmark: two CPU steps of a series' ``segment``, the way before 2026-11-29 against now, on
the clinical-size CT (0.8 x 0.8 x 1.5 mm, 39 M voxels), in a process with a worker's heap settings
(cohort.heap: without them page faults hide everything else).

1. A whole ``segment`` of the fast model (random weights of the small test network or of
   TotalSegmentator's size) with the labels taken as ``argmax(0)`` of the logits and as
   ``max(0).indices``, alternating (ABBA); label maps checked equal.
2. Resampling to each model's grid (3 mm fast, 1.5 mm full): scipy's zoom of a float64 copy of the
   CT (TotalSegmentator's ``get_fdata``) against scipy's zoom of the stored integers asked for
   float64 output (``resample_image``); values checked equal.

Prints the best, the median and every time of each.

    python benchmarks/bench_cpu_steps.py --size small --rounds 4
    python benchmarks/bench_cpu_steps.py --size real --rounds 6
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from bench_pipeline import clinical_ct
from cohort.heap import reuse_environment
from cohort.ingest import load_ct
from cohort.segmentation import load_model_spec
from cohort.segmentation.resample import resample_image
from cohort.segmentation.segmenter import Segmenter
from cohort.testing.weights import build_weights

WORKER_MEMORY_BYTES = 8 * 1024 ** 3


def with_worker_heap() -> None:
    """Start this script again with a worker's heap settings, which glibc reads at start only."""
    heap = reuse_environment(WORKER_MEMORY_BYTES)
    if any(os.environ.get(name) != value for name, value in heap.items()):
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **heap})


def best_of(rounds: int, work) -> tuple[float, list[float], object]:
    times, result = [], None
    for _ in range(rounds):
        start = time.perf_counter()
        result = work()
        times.append(time.perf_counter() - start)
    return min(times), times, result


def compare_resampling(hu: np.ndarray, spacing: tuple[float, float, float], rounds: int) -> None:
    for target in ((3.0, 3.0, 3.0), (1.5, 1.5, 1.5)):
        zoom = np.asarray(spacing) / np.asarray(target)
        old, old_times, before = best_of(rounds, lambda: torch.from_numpy(
            ndimage.zoom(np.asarray(hu, dtype=np.float64), zoom, order=1, mode="nearest").astype(np.int32)))
        new, new_times, now = best_of(rounds, lambda: resample_image(hu, spacing, target))
        assert torch.equal(before, now), "resampled values differ"
        print(f"resampling to {target[0]} mm: float64 copy first {old:.3f} s, stored values {new:.3f} s "
              f"({old / new:.2f}x), equal; all {[round(t, 3) for t in old_times]} / {[round(t, 3) for t in new_times]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=["small", "real"], default="small")
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    with_worker_heap()
    work = Path(tempfile.mkdtemp(prefix="bench_cpu_steps_"))
    volume = load_ct(clinical_ct(work))
    spec = load_model_spec("fast")
    build_weights(spec, work / "weights", args.size, seed=0)
    segmenter = Segmenter(spec, work / "weights", torch.device("cpu"))
    (predictor,) = segmenter.predictors
    max_indices = predictor._argmax_labels

    def argmax(data: torch.Tensor) -> torch.Tensor:
        with predictor.gate, torch.inference_mode():
            return predictor._logits(data).argmax(0).to(torch.uint8)

    segmenter.segment(volume)  # warm-up
    seconds: dict[str, list[float]] = {"argmax(0)": [], "max(0).indices": []}
    labels = {}
    ways = [("argmax(0)", argmax), ("max(0).indices", max_indices)]
    for round_ in range(args.rounds):
        for name, choose in ways if round_ % 2 == 0 else ways[::-1]:  # ABBA: neither always goes first
            predictor._argmax_labels = choose
            start = time.perf_counter()
            labels[name] = segmenter.segment(volume).label_map.labels
            seconds[name].append(time.perf_counter() - start)
    assert np.array_equal(*labels.values()), "label maps differ"
    for name, times in seconds.items():
        print(f"{args.size} network, segment with {name}: best {min(times):.2f} s, median {np.median(times):.2f} s, "
              f"all {[round(t, 2) for t in times]}")
    old, new = seconds["argmax(0)"], seconds["max(0).indices"]
    print(f"ratio {min(old) / min(new):.2f}x (best), {np.median(old) / np.median(new):.2f}x (median), label maps equal")
    compare_resampling(volume.hu, volume.grid.spacing, args.rounds)


if __name__ == "__main__":
    main()
