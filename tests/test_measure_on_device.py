"""Counting a series' histograms with torch (on a GPU in a run) gives the CPU's measurements exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cohort.ingest import load_ct, load_label_nifti
from cohort.measurement import features, measure_structures
from cohort.measurement.on_device import label_value_histograms_on_device

COLUMNS = ("n_voxels", "volume_ml", "mean_hu", "std_hu", "median_hu", "p05_hu", "p95_hu", "touches_border")


def _example(examples: Path) -> tuple[np.ndarray, np.ndarray, float]:
    """The example CT as nibabel gives it (Fortran order) with TotalSegmentator's label map (C order)."""
    ct = load_ct(examples / "example_ct_sm.nii.gz")
    labels = np.ascontiguousarray(load_label_nifti(examples / "example_seg_fast.nii.gz").labels)
    assert not ct.hu.flags.c_contiguous and labels.flags.c_contiguous
    return ct.hu, labels, ct.grid.voxel_volume_ml


def _assert_same(ours, theirs) -> None:
    for column in COLUMNS:
        np.testing.assert_array_equal(getattr(ours, column), getattr(theirs, column), err_msg=column)


def test_torch_counts_equal_numpys_in_any_memory_order(examples: Path, monkeypatch) -> None:
    """Slabs, a flipped view and ids beyond the class map included (they share the last row)."""
    hu, labels, _ = _example(examples)
    values = np.arange(int(hu.min()), int(hu.max()) + 1)
    expected = features.label_value_histograms(hu, labels, 100, values)
    monkeypatch.setattr("cohort.measurement.on_device.SLAB_VOXELS", 10_007)  # many slabs, uneven last one
    cpu = torch.device("cpu")
    np.testing.assert_array_equal(label_value_histograms_on_device(hu, labels, 100, values, cpu), expected)
    flipped = features.label_value_histograms(hu[::-1], labels[::-1], 100, values)
    np.testing.assert_array_equal(label_value_histograms_on_device(hu[::-1], labels[::-1], 100, values, cpu), flipped)
    assert labels.max() >= 100, "the label map has ids beyond the 100 rows counted"


def test_measurements_counted_with_torch_equal_the_cpus(examples: Path) -> None:
    hu, labels, voxel_ml = _example(examples)
    on_cpu = measure_structures(hu, labels, voxel_ml, 118)
    _assert_same(measure_structures(hu, labels, voxel_ml, 118, device=torch.device("cpu")), on_cpu)
    assert np.count_nonzero(on_cpu.n_voxels[1:]) >= 40


def test_a_device_out_of_memory_counts_on_the_cpu(examples: Path, monkeypatch, caplog) -> None:
    from cohort.measurement import on_device

    def no_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(on_device, "label_value_histograms_on_device", no_memory)
    hu, labels, voxel_ml = _example(examples)
    _assert_same(measure_structures(hu, labels, voxel_ml, 118, device=torch.device("meta")),
                 measure_structures(hu, labels, voxel_ml, 118))
    assert "counting on the CPU instead" in caplog.text


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_measurements_counted_on_the_gpu_equal_the_cpus(examples: Path) -> None:
    hu, labels, voxel_ml = _example(examples)
    _assert_same(measure_structures(hu, labels, voxel_ml, 118, device=torch.device("cuda:0")),
                 measure_structures(hu, labels, voxel_ml, 118))
