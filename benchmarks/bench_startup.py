"""Benchmark: the fixed cost of ``cohort run`` before its first series (issue G's start-up target,
<= 5 s plus one model load on the 2-core machine), in a fresh process each time.

    python benchmarks/bench_startup.py --repeat 3              # the README's example: label maps, no model
    python benchmarks/bench_startup.py --segment --repeat 3    # 2 CTs segmented by the fast model

Times, from the process's start (before ``import cohort``): the first series starting (its finish
time minus its own ``seconds_total``), the first series finished, and ``cohort.run`` returning; and
how long the first series waited for the model (its ``seconds_load_model``).
``--segment`` runs the example CT twice through the fast model (real-size random weights, one
worker), alternating ``execution.load_model_at_start`` on and off (cohort.flows.warmup), and
prints the ratio of the first series' finish without the warm-up to with it.
"""

from __future__ import annotations

import time

PROCESS_START = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402


def one_run(out: Path, manifest: Path | None, weights: Path | None, config: Path | None) -> dict[str, float]:
    """Runs in a child process: import cohort, run the manifest (the example's by default), report
    the three moments."""
    import cohort
    from cohort.manifest import example_manifest

    finished: list[tuple[float, object]] = []
    summary = cohort.run(manifest or example_manifest(), out, weights=weights, config=config, workers=1,
                         on_result=lambda result: finished.append((time.perf_counter(), result.record)))
    assert summary.exit_code == 0, summary.failures
    first_finished, first = min(finished, key=lambda pair: pair[0])
    first_started = min(moment - record.seconds_total for moment, record in finished)
    return {"first_series_started_s": first_started - PROCESS_START,
            "first_series_waited_for_model_s": first.seconds_load_model or 0.0,
            "first_series_finished_s": first_finished - PROCESS_START,
            "run_returned_s": time.perf_counter() - PROCESS_START}


def child_run(out: Path, extra: list[str]) -> dict[str, float]:
    done = subprocess.run([sys.executable, __file__, "--child", str(out), *extra], capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"the run failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def segment_inputs(work: Path) -> dict[str, list[str]]:
    """Two copies of the example CT, real-size fast weights, and a config per warm-up setting."""
    from cohort.manifest import example_manifest
    from cohort.segmentation import load_model_spec
    from cohort.testing.benchmarks import series_manifest
    from cohort.testing.weights import build_weights

    ct = example_manifest().parent / "example_ct.nii.gz"
    copies = [work / f"ct{index}.nii.gz" for index in range(2)]
    for copy in copies:
        shutil.copy(ct, copy)
    manifest = series_manifest(work / "scans.csv", copies)
    build_weights(load_model_spec("fast"), work / "weights", "real", seed=0)
    variants = {}
    for name, flag in (("model loaded at start", "true"), ("model loaded by the first series", "false")):
        config = work / f"warm_{flag}.yaml"
        config.write_text(f"execution:\n  load_model_at_start: {flag}\n")
        variants[name] = ["--manifest", str(manifest), "--weights", str(work / "weights"), "--config", str(config)]
    return variants


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--segment", action="store_true", help="2 CTs through the fast model, warm-up on and off")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--manifest", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--weights", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--config", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(one_run(args.child, args.manifest, args.weights, args.config)))
        return
    work = Path(tempfile.mkdtemp(prefix="bench_startup_"))
    variants = segment_inputs(work) if args.segment else {"the README's example": []}
    rows: dict[str, list[dict[str, float]]] = {name: [] for name in variants}
    for _ in range(args.repeat):
        for name, extra in variants.items():  # alternating, so that both see the same machine
            out = work / "results"
            rows[name].append(child_run(out, extra))
            shutil.rmtree(out, ignore_errors=True)
            print(f"{name}: " + "  ".join(f"{key} {value:.2f}" for key, value in rows[name][-1].items()), flush=True)
    best = {name: {key: min(row[key] for row in runs) for key in runs[0]} for name, runs in rows.items()}
    for name, values in best.items():
        print(f"best of {args.repeat}, {name}: " + "  ".join(f"{key} {value:.2f}" for key, value in values.items()))
    if args.segment:
        on, off = (best[name]["first_series_finished_s"] for name in variants)
        print(f"first series finished: {off:.2f} s without the warm-up / {on:.2f} s with it = {off / on:.2f}x")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
