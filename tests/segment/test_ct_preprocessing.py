"""A CT network's preprocessing in torch gives nnU-Net's ``run_case_npy`` bit for bit."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from cohort.segmentation import load_model_spec
from cohort.segmentation.ct_preprocessing import CTPreprocessing, nonzero_box
from cohort.segmentation.segmenter import Segmenter, resolve_device
from cohort.testing.weights import build_weights


def _nnunets(predictor, image: np.ndarray, spacing: tuple[float, float, float]) -> tuple[np.ndarray, dict]:
    nnunet = predictor._predictor
    data = np.ascontiguousarray(image.transpose(2, 1, 0))[None]
    data, _, properties = predictor._preprocessor.run_case_npy(
        data, None, {"spacing": [spacing[2], spacing[1], spacing[0]]}, nnunet.plans_manager,
        nnunet.configuration_manager, nnunet.dataset_json)
    return data, properties


def _plain(value) -> object:
    """Tuples as lists, numpy integers as ints: how the two sides spell the same properties."""
    return json.loads(json.dumps(value, default=int))


def _framed_ct(volume, shape: tuple[int, int, int]) -> np.ndarray:
    """The example CT's values (air below the plans' 0.5th percentile, water at 0 HU) and a metal
    implant above its 99.5th, in a frame of zeros on five sides, with a zero hole inside (nnU-Net
    fills holes before its crop)."""
    image = np.zeros(shape, dtype=np.int32)
    values = volume.hu.astype(np.int32)[: shape[0] - 5, 2: shape[1] - 1, : shape[2] - 4]
    image[3: 3 + values.shape[0], 1: 1 + values.shape[1], 4: 4 + values.shape[2]] = values
    image[20:25, 20:25, 10:14] = 0
    image[30:32, 30:32, 20:22] = 2500
    return image


@pytest.mark.parametrize("spacing_mm", [(3.0, 3.0, 3.0), (3.0, 1.5, 1.5)], ids=["isotropic", "transposed"])
def test_ct_preprocessing_equals_nnunets(tmp_path, example_sm, spacing_mm) -> None:
    """Values, crop box and properties equal nnU-Net's, also where the plans transpose the axes
    (an x spacing coarser than y and z puts x first)."""
    spec = dataclasses.replace(load_model_spec("fast"), spacing_mm=spacing_mm)
    build_weights(spec, tmp_path, "small", seed=5)
    (predictor,) = Segmenter(spec, tmp_path, resolve_device("cpu")).predictors
    transpose = predictor._predictor.plans_manager.transpose_forward
    assert (list(transpose) != [0, 1, 2]) == (spacing_mm[0] != spacing_mm[1])
    assert predictor._ct_preprocessing is not None
    image = _framed_ct(example_sm, (60, 50, 40))
    ours, properties = predictor.preprocess(torch.from_numpy(image), spacing_mm)
    theirs, their_properties = _nnunets(predictor, image, spacing_mm)
    assert ours.dtype == torch.float32 and tuple(ours.shape) == theirs.shape
    assert torch.equal(ours, torch.from_numpy(np.ascontiguousarray(theirs)))
    assert float(ours.max()) == pytest.approx((1500 - 80) / 250) and float(ours.min()) == pytest.approx((-1000 - 80) / 250)
    for key in ("spacing", "shape_before_cropping", "bbox_used_for_cropping", "shape_after_cropping_and_before_resampling"):
        assert _plain(properties[key]) == _plain(their_properties[key]), key
    assert torch.equal(predictor.preprocess(image, spacing_mm)[0], ours), "an array is preprocessed as a tensor is"


def test_an_empty_image_keeps_its_whole_box_as_nnunet_does() -> None:
    assert nonzero_box(torch.zeros(4, 5, 6)) == [[0, 4], [0, 5], [0, 6]]
    image = torch.zeros(4, 5, 6, dtype=torch.int32)
    image[2, 1, 5] = -7
    assert nonzero_box(image) == [[2, 3], [1, 2], [5, 6]]


def test_other_networks_keep_nnunets_own_preprocessing(tmp_path, example_sm) -> None:
    """An MR network (z-score) and a CT image off the plans' grid go through nnU-Net's code."""
    spec = load_model_spec("total_mr_fast")
    build_weights(spec, tmp_path / "mr", "small", seed=6)
    (mr,) = Segmenter(spec, tmp_path / "mr", resolve_device("cpu")).predictors
    assert mr._ct_preprocessing is None
    ct_spec = load_model_spec("fast")
    build_weights(ct_spec, tmp_path / "ct", "small", seed=7)
    (ct,) = Segmenter(ct_spec, tmp_path / "ct", resolve_device("cpu")).predictors
    image = _framed_ct(example_sm, (40, 40, 30))
    off_grid = (3.6, 3.6, 3.6)
    ours, properties = ct.preprocess(torch.from_numpy(image), off_grid)
    theirs, _ = _nnunets(ct, image, off_grid)
    assert properties["shape_after_cropping_and_before_resampling"] != tuple(ours.shape[1:])  # nnU-Net resampled
    assert torch.equal(ours, torch.from_numpy(theirs))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_ct_preprocessing_on_the_gpu_equals_the_cpu(example_sm) -> None:
    ct = CTPreprocessing(transpose_forward=(2, 0, 1), lower=-1000.0, upper=1500.0, mean=80.0, std=250.0)
    image = torch.from_numpy(_framed_ct(example_sm, (60, 50, 40)))
    on_cpu, cpu_properties = ct.run(image, (3.0, 1.5, 1.5))
    on_gpu, gpu_properties = ct.run(image.to("cuda:0"), (3.0, 1.5, 1.5))
    assert on_gpu.device.type == "cuda" and torch.equal(on_gpu.cpu(), on_cpu) and gpu_properties == cpu_properties
