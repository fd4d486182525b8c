"""Benchmark: the CPU work of a series that cohort moved onto the GPU, each way on this machine.

1. A CT network's preprocessing (crop to the non-zero box, CT normalisation): nnU-Net's own
   ``run_case_npy`` on the CPU against cohort's torch version where the image is. The clinical-size
   CT (0.8 x 0.8 x 1.5 mm, 39 M voxels) resampled to each model's grid; every network of the model
   (the full model has five, each with its own plans), outputs checked equal bit for bit.
2. The labels back to the CT's grid: from each network's labels of its cropped box to the native
   label map on the CPU (un-crop, merge the networks in the model's ids, resample to the CT's
   spacing, undo the body crop and the reorientation). The way before 2026-11-29 (each network's
   labels to the CPU, un-cropped and merged with numpy there, resampled on the device, pasted and
   reoriented with numpy and nibabel) against cohort's torch steps where the labels are; label
   maps checked equal.
3. The labels from the logits (float16, as nnU-Net's sliding window returns them; each network's
   classes on its model's grid): ``argmax(0)`` against ``max(0).indices``, which cohort uses (the same first
   maximal class), labels checked equal.
4. Counting the label x value histograms that measurement reads (the clinical CT with a label map
   of 118 random ids): numpy on the CPU against ``torch.bincount``, counts checked equal.

Best of ``--repeat`` each. With a CUDA GPU it also times what a series pays there: the old way
brings the resampled image to the CPU, preprocesses it there and sends the float32 result back
(pinned), and counts on the CPU; the new way preprocesses on the GPU and counts there (the CT and
label map uploaded, the histograms downloaded); for the labels, the old way's round trips.

    python benchmarks/bench_device_work.py --models fast full --repeat 5
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from bench_pipeline import clinical_ct
from cohort.ingest import load_ct
from cohort.measurement.features import label_value_histograms
from cohort.measurement.on_device import label_value_histograms_on_device
from cohort.segmentation import load_model_spec
from cohort.segmentation.body_crop import paste
from cohort.segmentation.merge import merge_into
from cohort.segmentation.resample import resample_labels, to_native
from cohort.segmentation.segmenter import Segmenter
from cohort.segmentation.zoom import nearest_zoom
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


def labels_back_before(segmenter: Segmenter, outputs: list, grid, canonical, box, cropped_shape) -> np.ndarray:
    """The code before 2026-11-29: every network's labels to the CPU, numpy there."""
    merged = np.zeros(grid, dtype=np.uint8)
    for (_, predictor, lut), (labels, properties) in zip(segmenter._networks, outputs):
        host = labels.cpu().numpy()
        full = np.zeros(properties["shape_before_cropping"], dtype=host.dtype)
        full[tuple(slice(low, high) for low, high in properties["bbox_used_for_cropping"])] = host
        full = np.ascontiguousarray(full.transpose(predictor._predictor.plans_manager.transpose_backward).transpose(2, 1, 0))
        np.copyto(merged, lut.cpu().numpy().astype(np.uint8)[full], where=full > 0)
    if segmenter.device.type == "cuda":
        resampled = nearest_zoom(torch.from_numpy(merged).to(segmenter.device), tuple(cropped_shape)).cpu().numpy()
    else:
        resampled = nearest_zoom(merged, tuple(cropped_shape))
    if box is not None:
        pasted = np.zeros(canonical.array.shape, dtype=resampled.dtype)
        pasted[box] = resampled
        resampled = pasted
    return np.ascontiguousarray(nib.orientations.apply_orientation(resampled, canonical.to_native))


def labels_back_now(segmenter: Segmenter, outputs: list, grid, canonical, box, cropped_shape) -> np.ndarray:
    """cohort's steps (Segmenter.segment) where the labels are; one label map to the CPU at the end."""
    merged = torch.zeros(grid, dtype=torch.uint8, device=segmenter.device)
    for (_, predictor, lut), (labels, properties) in zip(segmenter._networks, outputs):
        merge_into(merged, predictor._uncropped(labels, properties), lut)
    return to_native(paste(resample_labels(merged, tuple(cropped_shape)), box, canonical.array.shape), canonical).cpu().numpy()


def compare_labels_back(model: str, volume, work: Path, repeat: int, device: torch.device) -> None:
    spec = load_model_spec(model)
    segmenter = Segmenter(spec, work / model, device)
    image, canonical, box, cropped = segmenter._prepare(volume)
    outputs = []
    for predictor in segmenter.predictors:
        data, properties = predictor.preprocess(image, segmenter.spacing)
        outputs.append((predictor._argmax_labels(data), properties))
    steps = (segmenter, outputs, tuple(image.shape), canonical, box, cropped.shape)
    before = labels_back_before(*steps)
    assert np.array_equal(labels_back_now(*steps), before), "label maps differ"
    old = best_seconds(lambda: labels_back_before(*steps), repeat, device)
    new = best_seconds(lambda: labels_back_now(*steps), repeat, device)
    print(f"{model}: labels back to the CT's grid ({len(outputs)} network(s) -> {before.size / 1e6:.1f} M voxels), "
          f"{device}: before {old * 1000:.0f} ms, now {new * 1000:.0f} ms ({old / new:.1f}x), equal")


def compare_label_choice(model: str, volume, work: Path, repeat: int, device: torch.device) -> None:
    segmenter = Segmenter(load_model_spec(model), work / model, device)
    grid = tuple(segmenter._prepare(volume)[0].shape)
    old_total = new_total = 0.0
    classes = []
    for predictor in segmenter.predictors:
        heads = predictor._predictor.label_manager.num_segmentation_heads
        logits = torch.randn((heads, *grid), generator=torch.Generator().manual_seed(0)).half().to(device)
        assert torch.equal(logits.argmax(0), logits.max(0).indices), "labels differ"
        old_total += best_seconds(lambda: logits.argmax(0), repeat, device)
        new_total += best_seconds(lambda: logits.max(0).indices, repeat, device)
        classes.append(str(heads))
    print(f"{model}: labels from float16 logits, {'+'.join(classes)} classes x {np.prod(grid) / 1e6:.1f} M voxels, "
          f"{device}: argmax {old_total * 1000:.0f} ms, max's indices {new_total * 1000:.0f} ms "
          f"({old_total / new_total:.1f}x), equal")


def compare_counting(volume, repeat: int, device: torch.device) -> None:
    labels = np.random.default_rng(0).integers(0, 118, volume.hu.shape, dtype=np.uint8)
    values = np.arange(int(volume.hu.min()), int(volume.hu.max()) + 1)
    expected = label_value_histograms(volume.hu, labels, 118, values)
    counted = label_value_histograms_on_device(volume.hu, labels, 118, values, device)
    assert np.array_equal(counted, expected), "counts differ"
    numpy_s = best_seconds(lambda: label_value_histograms(volume.hu, labels, 118, values), repeat, device)
    torch_s = best_seconds(lambda: label_value_histograms_on_device(volume.hu, labels, 118, values, device),
                           repeat, device)
    print(f"counting {volume.hu.size / 1e6:.1f} M voxels x 118 labels: numpy on the CPU {numpy_s * 1000:.0f} ms, "
          f"torch on {device} {torch_s * 1000:.0f} ms ({numpy_s / torch_s:.1f}x), equal")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["fast", "full"])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_device_work_"))
    volume = load_ct(clinical_ct(work))
    devices = [torch.device("cpu")] + ([torch.device("cuda:0")] if torch.cuda.is_available() else [])
    print(f"torch threads: {torch.get_num_threads()}")
    for device in devices:
        for model in args.models:
            compare_model(model, volume, work, args.repeat, device)
            compare_labels_back(model, volume, work, args.repeat, device)
            compare_label_choice(model, volume, work, args.repeat, device)
        compare_counting(volume, args.repeat, device)


if __name__ == "__main__":
    main()
