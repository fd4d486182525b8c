"""The real nnU-Net predictor on the shipped example CTs with random small networks (no mocks)."""

from __future__ import annotations

import dataclasses
import time

import nibabel as nib
import numpy as np
import pytest
import torch

from cohort.errors import SeriesError
from cohort.ingest import Volume
from cohort.segmentation import DeviceSettings, Segmenter, get_segmenter
from cohort.segmentation.registry import ChunkSpec, model_class_map
from cohort.segmentation.segmenter import resolve_device


def _check_on_input_grid(volume: Volume, labels: np.ndarray, affine: np.ndarray, spec) -> None:
    assert labels.shape == volume.hu.shape
    assert np.array_equal(affine, volume.affine)
    assert set(np.unique(labels).tolist()) - {0} <= set(model_class_map(spec).names)


def test_fast_on_example(fast_spec, fast_weights, example_sm):
    segmentation = get_segmenter(fast_spec, fast_weights, "cpu").segment(example_sm)
    labels = segmentation.label_map.labels
    _check_on_input_grid(example_sm, labels, segmentation.label_map.affine, fast_spec)
    assert len(np.unique(labels)) > 5  # random weights still label many structures
    assert set(segmentation.seconds) == {"resample", "predict", "restore"}
    assert segmentation.label_map.source == example_sm.source


def test_networks_loaded_once_per_process(fast_spec, fast_weights, example_sm):
    first = get_segmenter(fast_spec, fast_weights, "cpu")
    load_seconds = first.load_seconds
    started = time.perf_counter()
    second = get_segmenter(fast_spec, fast_weights, "cpu")
    assert second is first and time.perf_counter() - started < 0.05
    second.segment(example_sm)
    assert second.load_seconds == load_seconds > 0


def test_non_ras_input_comes_back_in_its_own_orientation(fast_spec, fast_weights, example_dicom):
    dicom = Volume(example_dicom.hu[160:352, 160:352, :], example_dicom.affine, example_dicom.source)
    assert nib.aff2axcodes(dicom.affine) == ("L", "P", "S")
    segmenter = get_segmenter(fast_spec, fast_weights, "cpu")
    native = segmenter.segment(dicom).label_map
    _check_on_input_grid(dicom, native.labels, native.affine, fast_spec)
    canonical_image = nib.as_closest_canonical(nib.Nifti1Image(dicom.hu, dicom.affine))
    canonical = Volume(np.asanyarray(canonical_image.dataobj), canonical_image.affine, dicom.source)
    ras = segmenter.segment(canonical).label_map
    assert np.array_equal(ras.labels[::-1, ::-1, :], native.labels)  # LPS -> RAS flips x and y
    assert len(np.unique(native.labels)) > 3


def test_chunked_prediction_runs_through_nnunet(fast_spec, fast_weights, example_sm):
    """Two chunks of at most 24 slices with 3 slices (9 mm) of overlap on the 30-slice example.

    With random weights the argmax is a near-tie that moves with the sliding-window placement,
    so voxel agreement with the unchunked run is reported, not required to be high; stitching
    itself is tested exactly in test_segment_chunking.py, and the overlap's effect with real
    weights is documented in docs/models.md.
    """
    chunked_spec = dataclasses.replace(fast_spec, chunking=ChunkSpec(max_voxels=122 * 101 * 24, overlap_mm=9))
    chunked = Segmenter(chunked_spec, fast_weights, resolve_device("cpu")).segment(example_sm).label_map
    whole = get_segmenter(fast_spec, fast_weights, "cpu").segment(example_sm).label_map
    _check_on_input_grid(example_sm, chunked.labels, chunked.affine, fast_spec)
    agreement = float(np.mean(whole.labels == chunked.labels))
    print(f"chunked vs unchunked voxel agreement (random weights): {agreement:.3f}")
    assert agreement > 0.2


def test_too_large_even_when_chunked_fails_the_series(fast_spec, fast_weights, example_sm):
    tiny = dataclasses.replace(fast_spec, chunking=ChunkSpec(max_voxels=1000, overlap_mm=50))
    with pytest.raises(SeriesError, match=r"example_ct_sm.nii.gz: too large for model 'fast' even when chunked"):
        Segmenter(tiny, fast_weights, resolve_device("cpu")).segment(example_sm)


def test_full_merges_five_parts_on_a_cropped_example(full_spec, full_weights, example_sm):
    crop = Volume(example_sm.hu[30:70, 30:70, 5:25], example_sm.affine, example_sm.source)
    segmentation = get_segmenter(full_spec, full_weights, "cpu").segment(crop)
    _check_on_input_grid(crop, segmentation.label_map.labels, segmentation.label_map.affine, full_spec)
    assert len(np.unique(segmentation.label_map.labels)) > 5


@pytest.mark.slow
def test_full_on_example(full_spec, full_weights, example_sm):
    segmentation = get_segmenter(full_spec, full_weights, "cpu").segment(example_sm)
    _check_on_input_grid(example_sm, segmentation.label_map.labels, segmentation.label_map.affine, full_spec)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_labels_agree_with_the_cpu(fast_spec, fast_weights, example_sm) -> None:
    """On a GPU: resampling and argmax on the device, fp16 autocast (nnU-Net's own on CUDA) or
    fp32. Random weights put many voxels near a tie between two classes, so float rounding moves
    some: an H100 gave 99.55 % equal to the CPU's float32 labels (docs/performance.md)."""
    cpu = get_segmenter(fast_spec, fast_weights, "cpu").segment(example_sm).label_map.labels
    for precision in ("fp16", "fp32"):
        gpu = get_segmenter(fast_spec, fast_weights, "cuda:0", DeviceSettings(precision)).segment(example_sm)
        assert gpu.label_map.labels.dtype == cpu.dtype and gpu.label_map.labels.shape == cpu.shape
        assert (gpu.label_map.labels == cpu).mean() >= 0.99, precision
    chunked = dataclasses.replace(fast_spec, chunking=ChunkSpec(max_voxels=122 * 101 * 12, overlap_mm=9))
    cpu = Segmenter(chunked, fast_weights, resolve_device("cpu")).segment(example_sm).label_map.labels
    gpu = Segmenter(chunked, fast_weights, resolve_device("cuda:0")).segment(example_sm).label_map.labels
    assert (gpu == cpu).mean() >= 0.99, "z-chunks of the preprocessed image on the device"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_merges_the_full_models_networks_as_the_cpu(full_spec, full_weights, example_sm) -> None:
    """The five networks' labels merged and restored on the device: the CPU's label map, up to the
    voxels fp16 rounding moves (fp32 here, so nearly none)."""
    cpu = get_segmenter(full_spec, full_weights, "cpu").segment(example_sm).label_map.labels
    gpu = get_segmenter(full_spec, full_weights, "cuda:0", DeviceSettings("fp32")).segment(example_sm).label_map.labels
    assert gpu.dtype == cpu.dtype and gpu.shape == cpu.shape and (gpu == cpu).mean() >= 0.99


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda:0", marks=[pytest.mark.gpu, pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU")])])
def test_a_label_map_that_does_not_fit_the_device_is_restored_on_the_cpu(fast_spec, fast_weights, example_sm, device,
                                                                        monkeypatch, caplog) -> None:
    """A large CT beside other series' passes may leave the GPU without room for its full-size
    label map: the way back runs on the CPU instead, with the same labels, and says so."""
    from cohort.segmentation import segmenter as module

    segmenter = get_segmenter(fast_spec, fast_weights, device, DeviceSettings("fp32"))
    expected = segmenter.segment(example_sm).label_map.labels
    devices = []
    restore = module.native_labels

    def first_out_of_memory(merged, *args):
        devices.append(merged.device.type)
        if len(devices) == 1:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return restore(merged, *args)

    monkeypatch.setattr(module, "native_labels", first_out_of_memory)
    labels = segmenter.segment(example_sm).label_map.labels
    assert devices == [torch.device(device).type, "cpu"] and np.array_equal(labels, expected)
    assert "restoring it on the CPU instead" in caplog.text


@pytest.mark.parametrize("spacing", [(3.0, 3.0, 3.0), (3.6, 3.6, 3.6)], ids=["plans_spacing", "other_spacing"])
def test_predictor_equals_nnunets_predict_single_npy_array(fast_spec, fast_weights, example_sm, spacing) -> None:
    """cohort's preprocessing / sliding window / argmax / un-crop gives nnU-Net's own result, both
    when the image is on the plans' grid (argmax where the logits are) and when it is not (nnU-Net
    resamples the logits back itself)."""
    predictor = get_segmenter(fast_spec, fast_weights, "cpu").predictors[0]
    image = example_sm.hu.astype(np.int32)
    ours = predictor.predict(image, spacing, overlap=0).numpy()
    data = np.ascontiguousarray(image.transpose(2, 1, 0))[None].astype(np.float32)
    theirs = predictor._predictor.predict_single_npy_array(data, {"spacing": list(reversed(spacing))}, None, None, False)
    assert ours.shape == image.shape
    assert np.array_equal(ours, np.asarray(theirs).transpose(2, 1, 0))


def test_chunks_of_an_mr_image_see_the_whole_images_normalisation(tmp_path, example_sm):
    """An MR network's z-score is the image's: every chunk the sliding window reads is a slab of the
    whole image preprocessed at once, not a chunk normalised by its own mean and deviation."""
    from cohort.segmentation.registry import load_model_spec
    from cohort.testing.weights import build_weights

    spec = load_model_spec("total_mr_fast")
    build_weights(spec, tmp_path, "small", seed=3)
    chunked_spec = dataclasses.replace(spec, chunking=ChunkSpec(max_voxels=10_000, overlap_mm=9))
    segmenter = Segmenter(chunked_spec, tmp_path, resolve_device("cpu"))
    (predictor,) = segmenter.predictors
    rng = np.random.default_rng(0)
    image = (np.linspace(0, 400, 30)[None, None, :] + rng.normal(0, 20, (24, 20, 30))).astype(np.int32)
    whole, _ = predictor.preprocess(image, segmenter.spacing)
    seen = []
    original = predictor._logits
    predictor._logits = lambda data: seen.append(data.clone()) or original(data)
    labels = predictor.predict(image, segmenter.spacing, overlap=2)
    assert labels.shape == image.shape and len(seen) >= 2
    for data in seen:  # each slab is found, value for value, in the whole image's preprocessed z range
        matches = [start for start in range(whole.shape[1] - data.shape[1] + 1)
                   if torch.equal(whole[:, start:start + data.shape[1]], data)]
        assert matches, "a chunk was normalised on its own"


def test_labels_are_the_argmax_of_the_logits_with_ties_and_nan(fast_spec, fast_weights, monkeypatch) -> None:
    """The labels are the first maximal class (torch's and numpy's argmax), also where classes tie,
    as random or float16 logits often do, and where a logit is NaN or infinite."""
    predictor = get_segmenter(fast_spec, fast_weights, "cpu").predictors[0]
    logits = torch.randint(0, 3, (118, 9, 10, 11), generator=torch.Generator().manual_seed(0)).half()
    logits[:, 0, 0, 0] = float("nan")
    logits[5, 1, 1, 1] = float("nan")
    logits[7, 2, 2, 2] = float("inf")
    monkeypatch.setattr(predictor, "_logits", lambda data: logits)
    labels = predictor._argmax_labels(torch.zeros(1, 9, 10, 11))
    assert labels.dtype == torch.uint8
    assert np.array_equal(labels.numpy(), logits.argmax(0).numpy())
    assert np.array_equal(labels.numpy(), np.argmax(logits.float().numpy(), axis=0))
