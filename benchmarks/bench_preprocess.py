"""Benchmark: a CT network's preprocessing (crop to the non-zero box, CT normalisation) by
nnU-Net's own ``run_case_npy`` on the CPU against cohort's torch version where the image is.

The clinical-size CT (0.8 x 0.8 x 1.5 mm, 39 M voxels) resampled to each model's grid; every
network of the model (the full model has five, each with its own plans) preprocessed ``--repeat``
times each way, best time kept, outputs checked equal bit for bit. On a machine with a CUDA GPU
it also times what a series pays there: the old way brings the resampled image to the CPU,
preprocesses it there and sends the float32 result back (pinned); the new way never leaves the GPU.

    python benchmarks/bench_preprocess.py --models fast full --repeat 5
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from bench_pipeline import clinical_ct
from cohort.ingest import load_ct
from cohort.segmentation import load_model_spec
from cohort.segmentation.segmenter import Segmenter
from cohort.testing.weights import build_weights


def best_seconds(work: Callable[[], object], repeat: int, device: torch.device) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        work()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return min(times)


def nnunets(predictor, image: np.ndarray, spacing: tuple[float, float, float]) -> torch.Tensor:
    nnunet = predictor._predictor
    data = np.ascontiguousarray(image.transpose(2, 1, 0))[None]
    data, _, _ = predictor._preprocessor.run_case_npy(
        data, None, {"spacing": [spacing[2], spacing[1], spacing[0]]}, nnunet.plans_manager,
        nnunet.configuration_manager, nnunet.dataset_json)
    return torch.from_numpy(data)


def compare_model(model: str, volume, work: Path, repeat: int, device: torch.device) -> None:
    spec = load_model_spec(model)
    build_weights(spec, work / model, "small", seed=0)
    segmenter = Segmenter(spec, work / model, device)
    image = segmenter._prepare(volume)[0]
    host_image = image.cpu().numpy()
    print(f"{model}: model grid {tuple(image.shape)} = {image.numel() / 1e6:.1f} M voxels, "
          f"{len(segmenter.predictors)} network(s), {device}")
    old_total = new_total = 0.0
    for index, predictor in enumerate(segmenter.predictors):
        ours = predictor._ct_preprocessing.run(image, segmenter.spacing)[0]
        assert torch.equal(ours.cpu(), nnunets(predictor, host_image, segmenter.spacing)), "values differ"
        if device.type == "cuda":
            old = best_seconds(lambda: nnunets(predictor, image.cpu().numpy(), segmenter.spacing).pin_memory().to(device),
                               repeat, device)
        else:
            old = best_seconds(lambda: nnunets(predictor, host_image, segmenter.spacing), repeat, device)
        new = best_seconds(lambda: predictor._ct_preprocessing.run(image, segmenter.spacing), repeat, device)
        old_total, new_total = old_total + old, new_total + new
        print(f"  network {index}: nnU-Net's {old * 1000:7.1f} ms, cohort's {new * 1000:7.1f} ms ({old / new:.1f}x), equal")
    print(f"  a series ({len(segmenter.predictors)} network(s)): {old_total * 1000:.0f} ms -> {new_total * 1000:.0f} ms "
          f"({old_total / new_total:.1f}x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["fast", "full"])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_preprocess_"))
    volume = load_ct(clinical_ct(work))
    devices = [torch.device("cpu")] + ([torch.device("cuda:0")] if torch.cuda.is_available() else [])
    print(f"torch threads: {torch.get_num_threads()}")
    for device in devices:
        for model in args.models:
            compare_model(model, volume, work, args.repeat, device)


if __name__ == "__main__":
    main()
