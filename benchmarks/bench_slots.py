"""Benchmark: do a series' CPU stages outside the network (read, measure, store) overlap when
several series run in threads of one worker process, as its slots do (``prefetch``,
``gpu_prefetch``)? Each stage alone, then all three, in 1, 2 and 4 threads, on a clinical-size CT
(0.8 x 0.8 x 1.5 mm, 39 M voxels) with a label map of random ids (what a random-weight network
gives: every structure present).

    python benchmarks/bench_slots.py --n 8

Prints seconds per series at each thread count and the speed-up over one thread. On a GPU node
these stages are most of a fast-model series, so a stage that does not speed up with threads
bounds what more slots of one process can give (``benchmarks/gpu_check.py`` runs this there).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from cohort.config import RunConfig
from cohort.ingest import LabelMap, load_ct
from cohort.pipeline import MeasureSettings, measure_series
from cohort.segmentation import load_model_spec
from cohort.store.zarr_labels import write_label_map


def thread_scaling(ct: Path, work: Path, n: int, threads: tuple[int, ...]) -> dict[str, dict[int, float]]:
    """Seconds per series of each stage (and of all three) with ``n`` series in each thread count."""
    volume = load_ct(ct)
    settings = MeasureSettings.from_config(RunConfig(), load_model_spec("fast"))
    labels = np.random.default_rng(0).integers(0, settings.class_map.n_labels, volume.hu.shape, dtype=np.uint8)
    label_map = LabelMap(labels=labels, affine=volume.affine, source=ct, name="random")
    store = work / "bench_slots.zarr"
    stages = {
        "read": lambda index: load_ct(ct),
        "measure": lambda index: measure_series("s", volume, label_map, "fast", settings),
        "store": lambda index: write_label_map(store, f"s{index}_{time.perf_counter_ns()}", label_map, {}, "key"),
    }
    parts = list(stages.values())
    stages["all three"] = lambda index: [stage(index) for stage in parts]
    results: dict[str, dict[int, float]] = {}
    for name, stage in stages.items():
        stage(0)  # warm-up
        results[name] = {}
        for count in threads:
            start = time.perf_counter()
            with ThreadPoolExecutor(count) as pool:
                list(pool.map(stage, range(n)))
            results[name][count] = round((time.perf_counter() - start) / n, 4)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=8, help="series per measurement")
    parser.add_argument("--threads", default="1,2,4", help="thread counts, comma-separated")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_pipeline import clinical_ct

    work = Path(tempfile.mkdtemp(prefix="bench_slots_"))
    threads = tuple(int(value) for value in args.threads.split(","))
    for name, per_series in thread_scaling(clinical_ct(work), work, args.n, threads).items():
        first = per_series[threads[0]]
        print(f"{name:>10}: " + ", ".join(f"{count} thread(s) {seconds:.3f} s/series ({first / seconds:.2f}x)"
                                            for count, seconds in per_series.items()), flush=True)


if __name__ == "__main__":
    main()
