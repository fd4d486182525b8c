"""Benchmark: a whole series' ``segment`` with the labels taken as ``argmax(0)`` of the logits
(cohort before 2026-11-29) and as ``max(0).indices`` (now), alternating in one process.

The clinical-size CT (0.8 x 0.8 x 1.5 mm, 39 M voxels), the fast model with random weights of
the small test network or of TotalSegmentator's size, on the CPU, in a process with a worker's
heap settings (cohort.heap: without them page faults hide everything else). Prints the best and
every time of each and checks the label maps equal.

    python benchmarks/bench_label_choice.py --size small --rounds 4
    python benchmarks/bench_label_choice.py --size real --rounds 3
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

from bench_pipeline import clinical_ct
from cohort.heap import reuse_environment
from cohort.ingest import load_ct
from cohort.segmentation import load_model_spec
from cohort.segmentation.segmenter import Segmenter
from cohort.testing.weights import build_weights

WORKER_MEMORY_BYTES = 8 * 1024 ** 3


def with_worker_heap() -> None:
    """Start this script again with a worker's heap settings, which glibc reads at start only."""
    heap = reuse_environment(WORKER_MEMORY_BYTES)
    if any(os.environ.get(name) != value for name, value in heap.items()):
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **heap})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=["small", "real"], default="small")
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    with_worker_heap()
    work = Path(tempfile.mkdtemp(prefix="bench_label_choice_"))
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
    for _ in range(args.rounds):
        for name, choose in (("argmax(0)", argmax), ("max(0).indices", max_indices)):
            predictor._argmax_labels = choose
            start = time.perf_counter()
            labels[name] = segmenter.segment(volume).label_map.labels
            seconds[name].append(time.perf_counter() - start)
    assert np.array_equal(*labels.values()), "label maps differ"
    for name, times in seconds.items():
        print(f"{args.size} network, segment with {name}: best {min(times):.2f} s, all {[round(t, 2) for t in times]}")
    print(f"ratio {min(seconds['argmax(0)']) / min(seconds['max(0).indices']):.2f}x, label maps equal")


if __name__ == "__main__":
    main()
