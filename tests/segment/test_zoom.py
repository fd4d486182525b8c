"""Resampling around the network: torch's version of ``scipy.ndimage.zoom`` (used on a GPU) and
the index gather for label maps (used everywhere) against scipy itself."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy import ndimage

from cohort.segmentation.resample import resample_image, resample_labels
from cohort.segmentation.zoom import linear_zoom, nearest_zoom, zoom_shape

from conftest import EXAMPLES

CLINICAL_MM = np.array([0.8, 0.8, 1.5])


@pytest.fixture(scope="module")
def clinical_ct() -> np.ndarray:
    """The example CT at clinical spacing (as the pipeline benchmark uses)."""
    ct = nib.load(EXAMPLES / "example_ct.nii.gz")
    zoom = np.asarray(ct.header.get_zooms()[:3]) / CLINICAL_MM
    return ndimage.zoom(np.asanyarray(ct.dataobj).astype(np.int16), zoom, order=1)


@pytest.mark.parametrize("target_mm", [(3.0, 3.0, 3.0), (1.5, 1.5, 1.5)])
def test_linear_zoom_is_scipys_arithmetic_on_a_ct(clinical_ct: np.ndarray, target_mm: tuple[float, ...]) -> None:
    """Bit-identical float64 values, so the int32 truncation that TotalSegmentator applies lands
    on the same HU everywhere (the fast model's 3 mm grid and the full model's 1.5 mm)."""
    zoom = CLINICAL_MM / np.asarray(target_mm)
    expected = ndimage.zoom(clinical_ct.astype(np.float64), zoom, order=1, mode="nearest")
    ours = linear_zoom(torch.from_numpy(clinical_ct), zoom_shape(clinical_ct.shape, zoom)).numpy()
    assert ours.shape == expected.shape
    assert np.array_equal(ours, expected)


def test_linear_zoom_on_random_shapes_is_within_rounding() -> None:
    rng = np.random.default_rng(0)
    for _ in range(100):
        image = rng.integers(-1024, 2000, size=tuple(rng.integers(1, 30, 3))).astype(np.int16)
        zoom = rng.uniform(0.3, 3.0, 3)
        expected = ndimage.zoom(image.astype(np.float64), zoom, order=1, mode="nearest")
        ours = linear_zoom(torch.from_numpy(image), expected.shape).numpy()
        np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-9)


def test_nearest_zoom_equals_scipy_for_arrays_and_tensors() -> None:
    rng = np.random.default_rng(1)
    for _ in range(100):
        labels = rng.integers(0, 118, size=tuple(rng.integers(1, 30, 3))).astype(np.uint8)
        zoom = rng.uniform(0.3, 4.0, 3)
        expected = ndimage.zoom(labels, zoom, order=0, mode="nearest")
        assert np.array_equal(nearest_zoom(labels, expected.shape), expected)
        assert np.array_equal(nearest_zoom(torch.from_numpy(labels), expected.shape).numpy(), expected)
        assert np.array_equal(resample_labels(torch.from_numpy(labels), expected.shape).numpy(), expected)


def test_zoom_shape_rounds_as_scipy() -> None:
    for shape, zoom in [((122, 101, 112), (3.75, 3.75, 2.0)), ((7, 9, 11), (0.5, 0.5, 0.5)), ((5, 5, 5), (0.3, 1.1, 2.5))]:
        assert zoom_shape(shape, np.asarray(zoom)) == ndimage.zoom(np.zeros(shape), zoom, order=0).shape


def test_a_device_out_of_memory_resamples_on_the_cpu(clinical_ct: np.ndarray, monkeypatch, caplog) -> None:
    """Same values from scipy when the device cannot hold the CT (the torch path raising as CUDA would)."""
    from cohort.segmentation import resample

    def no_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(resample, "linear_zoom", no_memory)
    monkeypatch.setattr(resample, "nearest_zoom", lambda array, shape: no_memory() if isinstance(array, torch.Tensor)
                        else nearest_zoom(array, shape))
    meta = torch.device("meta")
    target = (3.0, 3.0, 3.0)
    assert np.array_equal(resample_image(clinical_ct, tuple(CLINICAL_MM), target, device=meta).numpy(),
                          resample_image(clinical_ct, tuple(CLINICAL_MM), target).numpy())
    assert "resampling on the CPU instead" in caplog.text


gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.gpu
@gpu
def test_resampling_on_the_gpu_equals_the_cpu(clinical_ct: np.ndarray) -> None:
    cuda = torch.device("cuda:0")
    for target in [(3.0, 3.0, 3.0), (1.5, 1.5, 1.5)]:
        assert np.array_equal(resample_image(clinical_ct, tuple(CLINICAL_MM), target, device=cuda).cpu().numpy(),
                              resample_image(clinical_ct, tuple(CLINICAL_MM), target).numpy())
    labels = torch.from_numpy((clinical_ct[::4, ::4, ::2] % 118).astype(np.uint8))
    on_gpu = resample_labels(labels.to(cuda), clinical_ct.shape)
    assert on_gpu.device == cuda and torch.equal(on_gpu.cpu(), resample_labels(labels, clinical_ct.shape))


def test_to_native_undoes_to_canonical_in_every_orientation() -> None:
    """The torch flips and permutation equal nibabel's ``apply_orientation`` back to the native
    axes, for all 48 axis orders and directions, and for a network trained in another orientation."""
    import itertools

    import nibabel as nib

    from cohort.segmentation.resample import to_canonical, to_native

    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    for axes in itertools.permutations(range(3)):
        for signs in itertools.product((1, -1), repeat=3):
            affine = np.eye(4)
            affine[:3, :3] = np.eye(3)[:, axes] * signs * [0.8, 0.9, 1.5]
            for axcodes in (("R", "A", "S"), ("P", "I", "R")):
                canonical = to_canonical(array, affine, axcodes)
                back = to_native(torch.from_numpy(np.ascontiguousarray(canonical.array)), canonical)
                assert back.is_contiguous() and np.array_equal(back.numpy(), array), (axes, signs, axcodes)
                assert np.array_equal(back.numpy(), nib.orientations.apply_orientation(canonical.array, canonical.to_native))


@pytest.mark.parametrize("order", [0, 1, 3])
def test_the_cpu_resamples_as_totalsegmentator_reads_the_image(clinical_ct: np.ndarray, order: int) -> None:
    """TotalSegmentator zooms the image in float64 (``get_fdata``) and truncates to int32; cohort
    hands scipy the stored integers (or float32 values) and asks for float64: the same values."""
    image = clinical_ct[::3, ::3, ::2]
    zoom = np.asarray(CLINICAL_MM) * [3, 3, 2] / 3.0
    for stored in (image, (image * 0.37).astype(np.float32)):
        expected = ndimage.zoom(stored.astype(np.float64), zoom, order=order, mode="nearest").astype(np.int32)
        ours = resample_image(stored, tuple(np.asarray(CLINICAL_MM) * [3, 3, 2]), (3.0, 3.0, 3.0), order).numpy()
        assert ours.dtype == np.int32 and np.array_equal(ours, expected), (order, stored.dtype)
