"""Benchmark: the fixed cost of ``cohort run`` before its first series (issue G's start-up target,
<= 5 s plus one model load on the 2-core machine), on the README's example (3 rows with label
maps, so no model load), in a fresh process each time.

    python benchmarks/bench_startup.py --repeat 3

Times, from the process's start (before ``import cohort``): the first series starting (its finish
time minus its own ``seconds_total``), the first series finished, and ``cohort.run`` returning.
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


def one_run(out: Path) -> dict[str, float]:
    """Runs in a child process: import cohort, run the example, report the three moments."""
    import cohort
    from cohort.manifest import example_manifest

    finished: list[tuple[float, float]] = []
    summary = cohort.run(example_manifest(), out,
                         on_result=lambda result: finished.append((time.perf_counter(), result.record.seconds_total)))
    assert summary.exit_code == 0, summary.failures
    first_finished = min(moment for moment, _ in finished)
    first_started = min(moment - seconds for moment, seconds in finished)
    return {"first_series_started_s": first_started - PROCESS_START,
            "first_series_finished_s": first_finished - PROCESS_START,
            "run_returned_s": time.perf_counter() - PROCESS_START}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(one_run(args.child)))
        return
    rows = []
    for _ in range(args.repeat):
        out = Path(tempfile.mkdtemp(prefix="bench_startup_")) / "results"
        done = subprocess.run([sys.executable, __file__, "--child", str(out)], capture_output=True, text=True, check=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        shutil.rmtree(out.parent, ignore_errors=True)
        print("  ".join(f"{key} {value:.2f}" for key, value in rows[-1].items()), flush=True)
    best = {key: min(row[key] for row in rows) for key in rows[0]}
    print("best of", args.repeat, "  ".join(f"{key} {value:.2f}" for key, value in best.items()))


if __name__ == "__main__":
    main()
