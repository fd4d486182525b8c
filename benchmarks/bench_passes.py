"""Benchmark: should a CPU worker run several forward passes at once (``execution.network_passes``)?

In one process with a worker's heap settings (cohort.heap), on a clinical-size CT (0.8 x 0.8 x
1.5 mm, 39 M voxels) and the fast model's network (small test size, or random weights of
TotalSegmentator's size with ``--size real``), three timings of the sliding window alone
(preprocessing done once beforehand):

- one pass on all of this process's threads (what ``network_passes: 1`` does);
- one pass alone on ``threads / passes`` threads (how well the network scales with threads);
- ``passes`` passes at once, each on ``threads / passes`` threads (what ``network_passes`` does).

    python benchmarks/bench_passes.py --size real
    python benchmarks/bench_passes.py --size small --passes 2 --repeat 3

First, what ``network_passes: auto`` times on a worker (one tile of the plans' patch size alone
and ``passes`` at once, and the tile's work in GFLOP). Then seconds per series of each, the network's speed-up from its threads, how much the passes
slow each other down, and the ratio that decides the key: seconds per series with one pass at a
time against several at once. Above 1, ``network_passes`` pays on this machine for this network.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

from cohort.flows.resources import usable_memory_bytes
from cohort.heap import reuse_environment
from cohort.ingest import load_ct
from cohort.segmentation import load_model_spec
from cohort.segmentation.gate import LARGE_TILE_GFLOP_PER_THREAD, NetworkGate, time_passes
from cohort.segmentation.segmenter import Segmenter
from cohort.testing.weights import build_weights

sys.path.insert(0, str(Path(__file__).parent))
from bench_pipeline import clinical_ct  # noqa: E402


def with_worker_heap() -> None:
    """Start this script again with the heap settings of a worker, which glibc reads only at start."""
    if "MALLOC_ARENA_MAX" not in os.environ:
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **reuse_environment(usable_memory_bytes())})


def timed_passes(predictor, data, properties, passes: int, threads: int) -> list[float]:
    """Seconds of each of ``passes`` forward passes started together, each on ``threads`` threads
    (set by the worker's own gate)."""
    predictor.gate = NetworkGate(passes, threads_each=threads)
    seconds = [0.0] * passes

    def one(index: int) -> None:
        start = time.perf_counter()
        predictor.forward(data, properties)
        seconds[index] = time.perf_counter() - start

    workers = [threading.Thread(target=one, args=(index,)) for index in range(passes)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=("small", "real"), default="real")
    parser.add_argument("--passes", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    with_worker_heap()
    threads = torch.get_num_threads()
    share = max(1, threads // args.passes)
    work = Path(tempfile.mkdtemp(prefix="bench_passes_"))
    spec = load_model_spec("fast")
    build_weights(spec, work / "weights", args.size, seed=0)
    volume = load_ct(clinical_ct(work))
    segmenter = Segmenter(spec, work / "weights", torch.device("cpu"))
    predictor = segmenter.predictors[0]
    data, properties = predictor.preprocess(segmenter.model_grid_image(volume), segmenter.spacing)
    tile = time_passes(predictor.tile_forward(), args.passes, threads, predictor.tile_gflop())
    print(f"one tile as network_passes: auto times it, without its cut at {LARGE_TILE_GFLOP_PER_THREAD:g} GFLOP "
          f"per thread: {tile.describe()}")
    timed_passes(predictor, data, properties, 1, threads)  # warm-up: the heap grows to its peak once
    whole, alone, together = [], [], []
    for _ in range(args.repeat):
        whole += timed_passes(predictor, data, properties, 1, threads)
        alone += timed_passes(predictor, data, properties, 1, share)
        together.append(max(timed_passes(predictor, data, properties, args.passes, share)))
    best_whole, best_alone, best_together = min(whole), min(alone), min(together)
    print(f"{args.size} network, {threads} threads, {args.passes} passes of {share} thread(s), best of {args.repeat}:")
    print(f"  one pass on {threads} threads: {best_whole:.2f} s per series")
    print(f"  one pass alone on {share} thread(s): {best_alone:.2f} s "
          f"(the network's speed-up from {threads} threads: {best_alone / best_whole:.2f}x)")
    print(f"  {args.passes} passes at once: {best_together:.2f} s for {args.passes} series = "
          f"{best_together / args.passes:.2f} s per series (each {best_together / best_alone:.2f}x slower than alone)")
    print(f"  one at a time / {args.passes} at once: {best_whole / (best_together / args.passes):.2f}x")


if __name__ == "__main__":
    main()
