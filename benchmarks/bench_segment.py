"""Benchmark: cohort's segmenter (networks loaded once) vs a loop of the TotalSegmentator CLI.

Both use the same random-weight folder of TotalSegmentator's real network size, on the same
N CTs (the shipped examples and z-crops of them, varied sizes), on the CPU. Prints series/hour
of both, the ratio, cohort's per-stage seconds, and the voxel agreement of every label map
(parity: TotalSegmentator's output vs cohort's on identical weights).

    python benchmarks/bench_segment.py --n 4 --model fast --size real
    python benchmarks/bench_segment.py --n 1 --model full --size small   # full-model parity, cheaper networks

Needs the ``parity`` extra (TotalSegmentator installed in the same pip command as torch).
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from cohort.ingest import load_ct
from cohort.segmentation import get_segmenter, load_model_spec
from cohort.testing.parity import compare, run_totalsegmentator, totalsegmentator_env
from cohort.segmentation.registry import model_class_map
from cohort.testing.weights import build_weights

EXAMPLES = Path(__file__).resolve().parents[1] / "cohort" / "examples"
log = logging.getLogger("bench_segment")


def make_series(folder: Path, n: int) -> list[Path]:
    """N NIfTI CTs of varied length: the two examples and z-crops of the 112-slice one."""
    ct = nib.load(EXAMPLES / "example_ct.nii.gz")
    data = np.asanyarray(ct.dataobj)
    variants = [EXAMPLES / "example_ct_sm.nii.gz", EXAMPLES / "example_ct.nii.gz"]
    for start, stop in ((0, 60), (20, 100), (40, 112), (10, 50)):
        path = folder / f"example_ct_z{start}-{stop}.nii.gz"
        nib.save(nib.Nifti1Image(data[:, :, start:stop], ct.affine @ _shift_z(start)), path)
        variants.append(path)
    return [variants[i % len(variants)] for i in range(n)]


def _shift_z(start: int) -> np.ndarray:
    shift = np.eye(4)
    shift[2, 3] = start
    return shift


def bench_cohort(spec_name: str, weights: Path, series: list[Path]) -> tuple[float, float, list, dict]:
    """Load once, segment every series; returns (wall s, load s, label maps, summed stage s)."""
    start = time.perf_counter()
    segmenter = get_segmenter(load_model_spec(spec_name), weights, "cpu")
    stages: dict[str, float] = {"load": segmenter.load_seconds}
    labels = []
    for path in series:
        tick = time.perf_counter()
        volume = load_ct(path)
        stages["ingest"] = stages.get("ingest", 0.0) + time.perf_counter() - tick
        result = segmenter.segment(volume)
        for stage, seconds in result.seconds.items():
            stages[stage] = stages.get(stage, 0.0) + seconds
        labels.append(result.label_map.labels)
    return time.perf_counter() - start, segmenter.load_seconds, labels, stages


def bench_cli(home: Path, series: list[Path], out: Path, options: list[str]) -> tuple[float, list]:
    env = totalsegmentator_env(home)
    start = time.perf_counter()
    outputs = []
    for index, path in enumerate(series):
        target = out / f"ts_{index}.nii.gz"
        run_totalsegmentator(path, target, env, options)
        outputs.append(target)
    wall = time.perf_counter() - start
    return wall, [np.asanyarray(nib.load(p).dataobj) for p in outputs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=4, help="number of series")
    parser.add_argument("--model", choices=["fast", "full"], default="fast")
    parser.add_argument("--size", choices=["real", "small"], default="real", help="random network size")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_segment_"))
    home = work / "totalseg_home"
    weights = home / "nnunet" / "results"
    spec = load_model_spec(args.model)
    build_weights(spec, weights, args.size, seed=0)
    series = make_series(work, args.n)
    cohort_wall, load_s, ours, stages = bench_cohort(args.model, weights, series)
    cli_wall, theirs = bench_cli(home, series, work, ["--fast"] if args.model == "fast" else [])
    log.info("model %s, %s random weights, %d series, CPU", args.model, args.size, len(series))
    log.info("cohort segmenter: %.1f s (load %.1f s once) -> %.0f series/hour", cohort_wall, load_s,
             3600 * len(series) / cohort_wall)
    log.info("TotalSegmentator CLI loop: %.1f s -> %.0f series/hour", cli_wall, 3600 * len(series) / cli_wall)
    log.info("ratio: %.2fx", cli_wall / cohort_wall)
    log.info("cohort seconds per stage (summed): %s", {k: round(v, 2) for k, v in stages.items()})
    classes = model_class_map(spec)
    for path, a, b in zip(series, ours, theirs):
        log.info("parity %s: %s", path.name, "; ".join(compare(a, b, classes).lines()))


if __name__ == "__main__":
    main()
