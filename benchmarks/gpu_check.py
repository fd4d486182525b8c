"""GPU check (issue G): is the network, not cohort, the bottleneck on a GPU node?

    bash benchmarks/gpu_check.sh              # a GPU node: about 8 minutes on one H200 (estimated)
    bash benchmarks/gpu_check.sh --cpu        # the CPU fallback that CI runs: tiny sizes, the same steps

Prints, and writes as JSON to ``--out``:

1. the card, driver, torch and cuDNN;
2. pure network throughput: weights loaded, inputs preprocessed and already on the device, only the
   sliding window and the argmax timed (series/h); and one whole
   series' `segment` alone (resampling, prediction, restoring), for comparison with a slot's;
3. end to end: ``cohort run --cluster cuda`` on clinical-size CTs (0.8 x 0.8 x 1.5 mm, 39 M voxels),
   series/h over the processing window and the device busy fraction sampled with NVML meanwhile;
   the ratio to (2) is the share of the network's speed cohort keeps; once with one worker process
   per GPU (``gpu_prefetch`` series beside it) and once with ``--workers-per-gpu`` processes
   (``execution.workers_per_gpu``, one series beside each), whose CPU stages run in parallel;
4. fp16 (nnU-Net's own autocast) against fp32 and bf16: voxel agreement and time;
5. TotalSegmentator's CLI, one call per series, on the same files and weights: series/h over every
   call, the ratio, voxel agreement of its label maps with cohort's, and of a second CLI call on the
   first file with the first (the reference's own run-to-run floor);
6. reading, measuring and storing a series in 1, 4 and 8 threads of one process
   (``benchmarks/bench_slots.py``): whether a worker's slots can overlap these stages.

The weights are random, of TotalSegmentator's real network sizes (``cohort.testing.weights``): the
forward pass costs what trained weights cost; the labels mean nothing.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import torch
from scipy import ndimage

from cohort.ingest import load_ct
from cohort.manifest import example_manifest
from cohort.segmentation import DeviceSettings, get_segmenter, load_model_spec
from cohort.testing.benchmarks import processing_window, series_manifest
from cohort.testing.parity import run_totalsegmentator, totalsegmentator_env
from cohort.testing.weights import build_weights

CLINICAL_MM = (0.8, 0.8, 1.5)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def environment(device: torch.device) -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "device": str(device),
            "cpus": len(os.sched_getaffinity(0))}
    if device.type == "cuda":
        info.update(card=torch.cuda.get_device_name(device), cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version(),
                    memory_gib=round(torch.cuda.get_device_properties(device).total_memory / 2**30, 1))
        smi = shutil.which("nvidia-smi")
        if smi:
            info["nvidia_smi"] = subprocess.run([smi, "--query-gpu=name,driver_version,clocks.max.sm", "--format=csv,noheader"],
                                                capture_output=True, text=True).stdout.strip()
    return info


def _write_ct(args: tuple[np.ndarray, np.ndarray, Path]) -> Path:
    data, affine, path = args
    nib.save(nib.Nifti1Image(data, affine), path)
    return path


def clinical_cts(folder: Path, n: int, small: bool) -> list[Path]:
    """``n`` CTs made from the example at clinical spacing, each a different z-range, so no two
    files are the same; gzip-written in parallel. ``small`` (the CPU fallback): a quarter of the
    slices at half the resolution."""
    ct = nib.load(example_manifest().parent / "example_ct.nii.gz")
    spacing = np.asarray(ct.header.get_zooms()[:3], dtype=float)
    target = np.asarray(CLINICAL_MM) * (2 if small else 1)
    zoom = spacing / target
    source = np.asanyarray(ct.dataobj).astype(np.int16)
    volume = ndimage.zoom(source[:, :, :source.shape[2] // 4] if small else source, zoom, order=1)
    affine = ct.affine @ np.diag([*(1 / zoom), 1.0])
    depth = volume.shape[2]
    jobs = []
    for index in range(n):
        start = (index * 7) % max(1, depth // 5)
        shift = np.eye(4)
        shift[2, 3] = start
        jobs.append((volume[:, :, start:], affine @ shift, folder / f"ct{index:02d}.nii.gz"))
    with ProcessPoolExecutor(max_workers=min(n, len(os.sched_getaffinity(0)))) as pool:
        paths = list(pool.map(_write_ct, jobs))
    log(f"{n} CTs of up to {volume.shape} = {volume.size / 1e6:.1f} M voxels at {tuple(target.round(2).tolist())} mm")
    return paths


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def network_only(model: str, weights: Path, cts: list[Path], device: torch.device, settings: DeviceSettings) -> dict:
    """Series/h of the forward passes alone: inputs preprocessed and moved to the device first."""
    segmenter = get_segmenter(load_model_spec(model), weights, str(device), settings)
    inputs = []
    for path in cts:
        image = segmenter.model_grid_image(load_ct(path))
        inputs.append([(predictor, *predictor.preprocess(image, segmenter.spacing)) for predictor in segmenter.predictors])
    inputs = [[(predictor, data.to(device), properties) for predictor, data, properties in series] for series in inputs]
    for predictor, data, properties in inputs[0]:  # warm-up: cuDNN picks its kernels
        predictor.forward(data, properties)
    synchronize(device)
    start = time.perf_counter()
    for series in inputs:
        for predictor, data, properties in series:
            predictor.forward(data, properties)
    synchronize(device)
    seconds = time.perf_counter() - start
    shape = tuple(inputs[0][0][1].shape[1:])
    # One whole series alone, after a warm-up: what a slot's `segment` costs with nothing beside it.
    volume = load_ct(cts[0])
    segmenter.segment(volume)
    synchronize(device)
    alone = segmenter.segment(volume).seconds
    return {"model": model, "series": len(cts), "seconds": round(seconds, 3), "series_per_h": round(3600 * len(cts) / seconds),
            "seconds_per_series": round(seconds / len(cts), 4), "network_input_zyx": shape,
            "channels_last": settings.channels_last, "precision": settings.precision,
            "load_seconds": round(segmenter.load_seconds, 2),
            "one_series_segment_s": {stage: round(value, 3) for stage, value in alone.items()}}


class BusySampler:
    """Device utilisation (NVML's share of time a kernel ran) sampled every 50 ms in a thread."""

    def __init__(self, device: torch.device) -> None:
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._handle = None
        if device.type == "cuda":
            try:
                import pynvml

                pynvml.nvmlInit()
                self._handle = pynvml.nvmlDeviceGetHandleByIndex(device.index or 0)
                self._nvml = pynvml
            except Exception as error:  # noqa: BLE001 - a missing NVML only loses this number
                log(f"NVML unavailable ({error}); no busy fraction")
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            if self._handle is not None:
                self.samples.append((time.time(), self._nvml.nvmlDeviceGetUtilizationRates(self._handle).gpu))

    def __enter__(self) -> "BusySampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def busy(self, start: float, stop: float) -> float | None:
        window = [value for moment, value in self.samples if start <= moment <= stop]
        return round(float(np.mean(window)) / 100, 3) if window else None


def cohort_run(model: str, weights: Path, cts: list[Path], work: Path, device: torch.device, prefetch: int,
               workers_per_gpu: int = 1) -> dict:
    """``cohort run`` through the CLI on ``cts``; the window is first series started to last finished."""
    folder = work / f"run_{model}_p{prefetch}_w{workers_per_gpu}"
    folder.mkdir()
    manifest = series_manifest(folder / "scans.csv", cts)
    config = folder / "run.yaml"
    config.write_text(f"execution:\n  prefetch: {prefetch}\n  gpu_prefetch: {prefetch}\n"
                      f"  workers_per_gpu: {workers_per_gpu}\n")
    cluster = ["--cluster", "cuda"] if device.type == "cuda" else ["--cluster", "local", "--workers", "1"]
    command = [sys.executable, "-m", "cohort.cli", "run", "--manifest", str(manifest), "--out", str(folder / "results"),
               "--model", model, "--weights", str(weights), "--config", str(config), *cluster]
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}
    with BusySampler(device) as sampler:
        start = time.perf_counter()
        exit_code, stderr = run_in_own_group(command, env, timeout_s=240)
        wall = time.perf_counter() - start
    if exit_code not in (0, 1) or not any((folder / "results" / "series").glob("*.parquet")):
        raise RuntimeError(f"cohort run exited {exit_code}:\n{stderr[-3000:]}")
    everything = pd.read_parquet(folder / "results" / "series")
    series = everything[everything["status"] == "done"]  # exit 1: some failed; the others' numbers stand
    first, last = processing_window(series)
    window = last - first
    stages = ("ingest", "load_model", "segment", "measure", "store")
    finished = (series["finished_at"] - pd.Timestamp(0, tz="UTC")).dt.total_seconds().sort_values()
    # After the first series is out, the model is loaded and the pipeline full: the steady rate
    # (finished_at has whole seconds: none for a window of a few series within a second or two).
    steady_window = float(finished.iloc[-1] - finished.iloc[0]) if len(finished) >= 3 else 0.0
    per_series = [{"series_id": row.series_id, "started_s": round(row.finished_s - row.seconds_total - first, 2),
                   "finished_s": round(row.finished_s - first, 2),
                   **{stage: round(float(getattr(row, f"seconds_{stage}") or 0.0), 3) for stage in stages}}
                  for row in series.assign(finished_s=finished).sort_values("finished_s").itertuples()]
    return {"model": model, "series": len(series), "prefetch": prefetch, "workers_per_gpu": workers_per_gpu,
            "exit_code": exit_code, "failed": everything.loc[everything["status"] != "done", "error"].tolist(),
            "wall_s": round(wall, 1),
            "window_s": round(window, 2), "series_per_h": round(3600 * len(series) / window),
            "steady_series_per_h": round(3600 * (len(series) - 1) / steady_window) if steady_window > 0 else None,
            "busy_fraction": sampler.busy(first, last),
            "mean_stage_s": {stage: round(float(series[f"seconds_{stage}"].mean()), 3) for stage in stages},
            "done": int((series["status"] == "done").sum()), "per_series": per_series}


def cpu_stage_threads(cts: list[Path], work: Path, threads: tuple[int, ...]) -> dict:
    """Seconds per series of reading, measuring and storing (and all three) in 1..N threads of one
    process, as a worker's slots run them: a stage that does not speed up bounds the slots."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_slots import thread_scaling

    return {name: {f"{count}_threads": seconds for count, seconds in per_series.items()}
            for name, per_series in thread_scaling(cts[0], work, 8, threads).items()}


def precision_agreement(weights: Path, cts: list[Path], device: torch.device) -> dict:
    """fp16 (the default) against fp32 and bf16 on the same series: voxels equal, seconds per series."""
    spec = load_model_spec("fast")
    volumes = [load_ct(path) for path in cts]
    results: dict[str, dict] = {}
    reference = None
    for precision in ("fp16", "fp32", "bf16"):
        segmenter = get_segmenter(spec, weights, str(device), DeviceSettings(precision))
        segmenter.segment(volumes[0])  # warm-up
        synchronize(device)
        start = time.perf_counter()
        labels = [segmenter.segment(volume).label_map.labels for volume in volumes]
        seconds = (time.perf_counter() - start) / len(volumes)
        if reference is None:
            reference = labels
        agreement = float(np.mean([np.mean(a == b) for a, b in zip(labels, reference)]))
        results[precision] = {"seconds_per_series": round(seconds, 3), "voxels_equal_to_fp16": round(agreement, 6)}
    return results


CONVOLUTION_SETTINGS = {  # how cuDNN picks and lays out the convolutions: (channels_last, cudnn.benchmark)
    "default": (False, True), "channels_last": (True, True), "no_autotuning": (False, False)}


def totalsegmentator_loop(weights: Path, cts: list[Path], work: Path, device: torch.device) -> dict:
    """TotalSegmentator's CLI once per series (``--fast``), and the share of its voxels cohort's
    labels of the same files equal, under each way of running the convolutions on a GPU."""
    if importlib.util.find_spec("totalsegmentator") is None:
        return {"skipped": "TotalSegmentator is not installed (pip install -c constraints.txt -e '.[parity]')"}
    home = work / "totalseg_home"
    shutil.copytree(weights, home / "nnunet" / "results", dirs_exist_ok=True)
    env = totalsegmentator_env(home)
    ts_device = "gpu" if device.type == "cuda" else "cpu"
    start = time.perf_counter()
    outputs = []
    for index, path in enumerate(cts):
        target = work / f"ts_{index:02d}.nii.gz"
        run_totalsegmentator(path, target, env, ["--fast"], ts_device, timeout_s=180)
        outputs.append(target)
    theirs = [np.asanyarray(nib.load(output).dataobj) for output in outputs]
    # The reference against itself: the same file through the CLI again, in a new process (on a GPU,
    # cuDNN's autotuning may pick other fp16 kernels there), is the floor any agreement can reach.
    # It is one more CLI call of a series, so it counts in the loop's rate.
    again = work / "ts_00_again.nii.gz"
    run_totalsegmentator(cts[0], again, env, ["--fast"], ts_device, timeout_s=180)
    seconds = time.perf_counter() - start
    self_agreement = round(float(np.mean(np.asanyarray(nib.load(again).dataobj) == theirs[0])), 6)
    volumes = [load_ct(path) for path in cts]
    agreement = {}
    for name, (channels_last, autotune) in CONVOLUTION_SETTINGS.items() if device.type == "cuda" else [("default", (False, False))]:
        segmenter = get_segmenter(load_model_spec("fast"), weights, str(device), DeviceSettings(channels_last=channels_last))
        torch.backends.cudnn.benchmark = autotune
        agreement[name] = [round(float(np.mean(segmenter.segment(volume).label_map.labels == labels)), 6)
                           for volume, labels in zip(volumes, theirs)]
    torch.backends.cudnn.benchmark = True
    return {"series": len(cts), "cli_calls": len(cts) + 1, "seconds": round(seconds, 1),
            "series_per_h": round(3600 * (len(cts) + 1) / seconds),
            "voxels_equal_to_cohort": agreement["default"], "voxels_equal_by_convolution_setting": agreement,
            "totalsegmentator_rerun_voxels_equal": self_agreement}


def run_in_own_group(command: list[str], env: dict[str, str], timeout_s: float) -> tuple[int, str]:
    """Run ``command`` in a process group of its own; on timeout kill the whole group (the
    ``cohort run`` with its Prefect server and Dask workers, which would hold the GPU and CPUs
    through the next steps). Returns (exit code, stderr)."""
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        _, stderr = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise
    return process.returncode, stderr


def step(results: dict, name: str, out: Path, function, *args) -> None:
    """Run one step; a failure is recorded and the next step still runs."""
    log(f"{name} ...")
    start = time.perf_counter()
    try:
        results[name] = function(*args)
    except Exception as error:  # noqa: BLE001 - the check reports every step it can
        results[name] = {"error": f"{type(error).__name__}: {error}"[:4000]}
    results[name]["step_s"] = round(time.perf_counter() - start, 1) if isinstance(results[name], dict) else None
    shown = {key: value for key, value in results[name].items() if key != "per_series"} if isinstance(results[name], dict) \
        else results[name]
    log(f"{name}: {json.dumps(shown)}")
    write_results(out, results)


def write_results(out: Path, results: dict) -> None:
    """``gpu_check.json``, replaced whole (a kill while writing leaves the previous one)."""
    partial = out / "gpu_check.json.partial"
    partial.write_text(json.dumps(results, indent=2))
    os.replace(partial, out / "gpu_check.json")


def summary(results: dict) -> list[str]:
    lines = []
    pure = results.get("network_fast", {}).get("series_per_h")
    e2e = results.get("cohort_run_fast", {}).get("series_per_h")
    ts = results.get("totalsegmentator_fast", {}).get("series_per_h")
    if pure and e2e:
        steady = results["cohort_run_fast"].get("steady_series_per_h")
        lines.append(f"fast: end to end {e2e} series/h = {e2e / pure:.0%} of the network alone ({pure} series/h); "
                     f"after the first series {steady} series/h; targets >= 70 % and >= 720 series/h")
    if e2e and ts:
        lines.append(f"fast: cohort run / TotalSegmentator CLI loop = {e2e / ts:.1f}x ({e2e} vs {ts} series/h); target >= 5x")
    reference = results.get("totalsegmentator_fast", {})
    if "voxels_equal_to_cohort" in reference:
        lines.append(f"fast: voxels equal to TotalSegmentator's labels, per series: {reference['voxels_equal_to_cohort']}; "
                     f"its own second call on series 1: {reference['totalsegmentator_rerun_voxels_equal']}; target >= 0.999")
    for model, pure_rate in (("fast", pure), ("full", results.get("network_full", {}).get("series_per_h"))):
        shared = results.get(f"cohort_run_{model}_shared", {})
        if pure_rate and shared.get("series_per_h"):
            lines.append(f"{model}, {shared['workers_per_gpu']} workers on the GPU: end to end {shared['series_per_h']} "
                         f"series/h = {shared['series_per_h'] / pure_rate:.0%} of the network alone; after the first "
                         f"series {shared['steady_series_per_h']} series/h")
    pure_full = results.get("network_full", {}).get("series_per_h")
    e2e_full = results.get("cohort_run_full", {}).get("series_per_h")
    if pure_full and e2e_full:
        steady = results["cohort_run_full"].get("steady_series_per_h")
        lines.append(f"full: end to end {e2e_full} series/h = {e2e_full / pure_full:.0%} of the network alone "
                     f"({pure_full} series/h); after the first series {steady} series/h")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="the CPU fallback: small networks and CTs, 2 series")
    parser.add_argument("--n", type=int, default=None, help="CTs for the end-to-end run (20; 2 with --cpu)")
    parser.add_argument("--ts-n", type=int, default=None, help="CTs for the TotalSegmentator loop, each one CLI call, plus a second call on the first (1)")
    parser.add_argument("--prefetch", type=int, default=3, help="execution.gpu_prefetch of the cohort run")
    parser.add_argument("--workers-per-gpu", type=int, default=4,
                        help="execution.workers_per_gpu of the *_shared runs (each with gpu_prefetch 1)")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "benchmarks/out")))
    parser.add_argument("--steps", default="all", help="comma-separated step names to run (default: all)")
    args = parser.parse_args()
    device = torch.device("cpu" if args.cpu or not torch.cuda.is_available() else "cuda:0")
    on_gpu = device.type == "cuda"
    n = args.n or (20 if on_gpu else 2)
    ts_n = args.ts_n or 1
    size = "real" if on_gpu else "small"
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    results: dict = {"environment": environment(device),
                     "settings": {"n": n, "ts_n": ts_n, "size": size, "prefetch": args.prefetch,
                                  "workers_per_gpu": args.workers_per_gpu}}
    log(json.dumps(results["environment"]))
    weights = work / "weights"
    build_weights(load_model_spec("fast"), weights, size, seed=0)
    if on_gpu:
        build_weights(load_model_spec("full"), weights, size, seed=0)
    cts = clinical_cts(work, n, small=not on_gpu)
    # What docs/gpu.md decides on first (network and end-to-end speed, one and several workers per
    # GPU): a step the time limit cuts off then costs the least. gpu_check.json is rewritten after
    # every step, so a timeout keeps what was measured.
    steps = [
        ("network_fast", network_only, "fast", weights, cts[:10], device, DeviceSettings()),
        ("cohort_run_fast", cohort_run, "fast", weights, cts, work, device, args.prefetch),
        ("cohort_run_fast_shared", cohort_run, "fast", weights, cts, work, device, 1, args.workers_per_gpu),
        ("network_full", network_only, "full", weights, cts[:4], device, DeviceSettings()),
        ("cohort_run_full", cohort_run, "full", weights, cts[:8], work, device, args.prefetch),
        ("cohort_run_full_shared", cohort_run, "full", weights, cts[:12], work, device, 1, args.workers_per_gpu),
        ("totalsegmentator_fast", totalsegmentator_loop, weights, cts[:ts_n], work, device),
        ("precision_fast", precision_agreement, weights, cts[:3], device),
        ("cpu_stage_threads", cpu_stage_threads, cts, work, (1, 4, 8) if on_gpu else (1, 2)),
    ]
    gpu_only = {"cohort_run_fast_shared", "precision_fast", "network_full", "cohort_run_full",
                "cohort_run_full_shared"}
    chosen = set(args.steps.split(",")) if args.steps != "all" else {name for name, *_ in steps}
    for name, function, *arguments in steps:
        if name in chosen and (on_gpu or name not in gpu_only):
            step(results, name, args.out, function, *arguments)
    results["summary"] = summary(results)
    write_results(args.out, results)
    print("\n".join(["", "== gpu_check summary ==", *results["summary"]]), flush=True)
    failed = [name for name, value in results.items() if isinstance(value, dict) and "error" in value]
    if failed:
        print(f"steps that failed: {', '.join(failed)}", flush=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
