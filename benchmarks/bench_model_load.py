"""Benchmark: a worker's first model load in a new process, with nnU-Net's trainer module imported
(as before cohort read trainers from their source) and without it (now), alternating.

    python benchmarks/bench_model_load.py --repeat 3
    python benchmarks/bench_model_load.py --model full --size real

Each run is a fresh Python process that imports ``cohort.segmentation`` and loads the model on the
CPU; "trainer imported" first imports the checkpoint's trainer class as nnU-Net does. Prints the
seconds from the process's first import to the loaded model (the figure compared), of
``get_segmenter`` alone (short when the trainer's import already brought in what it needs), and
the process's peak resident memory.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = """
import json, resource, sys, time
start = time.perf_counter()
from cohort.segmentation import get_segmenter, load_model_spec
spec = load_model_spec(sys.argv[1])
if sys.argv[3] == "import":
    from cohort.segmentation.nnunet_folder import find_trainer_class
    find_trainer_class(spec.trainer)
segmenter = get_segmenter(spec, sys.argv[2], "cpu")
print(json.dumps({"imports_and_load_s": time.perf_counter() - start, "load_s": segmenter.load_seconds,
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""
VARIANTS = {"trainer imported (before)": "import", "trainer read from its source (now)": "source"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--model", default="fast")
    parser.add_argument("--size", choices=("small", "real"), default="small", help="random weights' network size")
    args = parser.parse_args()

    from cohort.segmentation import load_model_spec
    from cohort.testing.weights import build_weights

    weights = Path(tempfile.mkdtemp(prefix="bench_model_load_"))
    build_weights(load_model_spec(args.model), weights, args.size, seed=0)
    rows: dict[str, list[dict[str, float]]] = {name: [] for name in VARIANTS}
    for _ in range(args.repeat):
        for name, how in VARIANTS.items():
            done = subprocess.run([sys.executable, "-c", CHILD, args.model, str(weights), how],
                                  capture_output=True, text=True, check=True)
            rows[name].append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"{name}: " + "  ".join(f"{key} {value:.2f}" for key, value in rows[name][-1].items()), flush=True)
    best = {name: {key: min(row[key] for row in runs) for key in runs[0]} for name, runs in rows.items()}
    before, now = (best[name]["imports_and_load_s"] for name in VARIANTS)
    print(f"imports and model load, best of {args.repeat}: {before:.2f} s with the trainer imported / {now:.2f} s "
          f"without = {before / now:.2f}x")


if __name__ == "__main__":
    main()
