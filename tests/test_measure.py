"""Measurement: parity with TotalSegmentator's statistics, DICOM geometry, one-pass correctness."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from cohort.config import load_class_map
from cohort.errors import ConfigError
from cohort.ingest import align_labels, load_ct, load_label_nifti
from cohort.measurement import features, measure_structures


def test_reproduces_totalsegmentator_statistics(examples: Path) -> None:
    ct = load_ct(examples / "example_ct_sm.nii.gz")
    labels = load_label_nifti(examples / "example_seg_fast.nii.gz")
    class_map = load_class_map("class_map_total_v2.csv")
    measured = measure_structures(ct.hu, labels.labels, ct.grid.voxel_volume_ml, class_map.n_labels)
    reference = json.loads((examples / "example_seg_fast_statistics.json").read_text())
    assert set(reference) == set(class_map.names.values())
    for label, name in class_map.names.items():
        assert measured.volume_ml[label] * 1000 == pytest.approx(reference[name]["volume"], abs=1e-6), name
        if measured.n_voxels[label]:
            assert abs(measured.mean_hu[label] - reference[name]["intensity"]) <= 0.5e-5 + 1e-9, name
        else:
            assert reference[name]["intensity"] == 0.0


def test_dicom_series_lands_on_the_label_grid(examples: Path) -> None:
    ct = load_ct(examples / "example_ct_dicom")
    labels = align_labels(ct, load_label_nifti(examples / "example_seg_dicom.nii.gz"))
    assert ct.hu.shape == (512, 512, 20)
    assert ct.grid.spacing == pytest.approx((0.9766, 0.9766, 2.0), abs=1e-3)
    class_map = load_class_map("class_map_total_v2.csv")
    ids = {name: label for label, name in class_map.names.items()}
    measured = measure_structures(ct.hu, labels.labels, ct.grid.voxel_volume_ml, class_map.n_labels)
    for bone in ("vertebrae_T11", "vertebrae_T12", "rib_left_7", "rib_right_7"):
        assert measured.mean_hu[ids[bone]] > 200, bone
    for soft_tissue in ("liver", "spleen", "autochthon_left"):
        assert -50 < measured.mean_hu[ids[soft_tissue]] < 150, soft_tissue
    assert ct.hu.min() <= -1000  # RescaleIntercept applied: air is about -1000 HU, not 0


@pytest.mark.parametrize("dtype", [np.float32, np.int16])
def test_one_pass_equals_per_mask_statistics(dtype: type) -> None:
    """Both paths (float images: grouped by sorting; integer images: histograms) against numpy
    on each structure's own voxels."""
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 6, size=(20, 30, 40)).astype(np.uint8)
    labels[labels == 4] = 0  # an absent class
    hu = rng.normal(40, 200, size=labels.shape).round().astype(dtype)
    measured = measure_structures(hu, labels, 0.5, n_labels=7, border_voxels=0)
    assert measured.n_voxels[0] == np.count_nonzero(labels == 0)
    for label in range(1, 7):
        values = hu[labels == label]
        assert measured.n_voxels[label] == values.size
        if values.size == 0:
            assert np.isnan(measured.mean_hu[label]) and np.isnan(measured.median_hu[label])
            continue
        assert measured.volume_ml[label] == pytest.approx(values.size * 0.5)
        assert measured.mean_hu[label] == pytest.approx(values.mean(dtype=np.float64), rel=1e-12)
        assert measured.std_hu[label] == pytest.approx(values.std(dtype=np.float64), rel=1e-9)
        assert [measured.p05_hu[label], measured.median_hu[label], measured.p95_hu[label]] == pytest.approx(
            np.percentile(values, [5, 50, 95]), rel=1e-12)


def test_histograms_give_the_sorted_paths_numbers_on_a_real_ct(examples: Path, monkeypatch) -> None:
    """On the example CT and TotalSegmentator's label map the histogram path gives the same
    counts, means and percentiles to the last bit, and the same standard deviations to 1e-12."""
    ct = load_ct(examples / "example_ct_sm.nii.gz")
    labels = load_label_nifti(examples / "example_seg_fast.nii.gz").labels
    assert ct.hu.dtype == np.int16
    by_histogram = measure_structures(ct.hu, labels, ct.grid.voxel_volume_ml, 118)
    monkeypatch.setattr(features, "MAX_HISTOGRAM_BINS", 0)
    by_sorting = measure_structures(ct.hu, labels, ct.grid.voxel_volume_ml, 118)
    for column in ("n_voxels", "volume_ml", "mean_hu", "median_hu", "p05_hu", "p95_hu", "touches_border"):
        np.testing.assert_array_equal(getattr(by_histogram, column), getattr(by_sorting, column), err_msg=column)
    np.testing.assert_allclose(by_histogram.std_hu, by_sorting.std_hu, rtol=1e-12)
    assert np.count_nonzero(by_histogram.n_voxels[1:]) >= 40


def test_ids_beyond_the_class_map_are_counted_apart() -> None:
    labels = np.zeros((10, 10, 10), dtype=np.uint16)
    labels[2:5, 2:5, 2:5] = 1
    labels[6:8, 6:8, 6:8] = 300
    hu = np.full(labels.shape, -1000, dtype=np.int16)
    hu[2:5, 2:5, 2:5] = 50
    measured = measure_structures(hu, labels, 1.0, n_labels=3, border_voxels=0)
    assert measured.largest_label == 300
    assert measured.n_voxels.tolist() == [1000 - 27 - 8, 27, 0]
    assert measured.mean_hu[1] == 50 and measured.std_hu[1] == 0 and measured.p95_hu[1] == 50


def test_image_and_label_map_must_have_one_shape() -> None:
    with pytest.raises(ValueError, match="differ in shape"):
        measure_structures(np.zeros((4, 4, 4), np.int16), np.zeros((4, 4, 5), np.uint8), 1.0, n_labels=2)


def test_border_rule_marks_structures_near_any_face() -> None:
    labels = np.zeros((20, 20, 20), dtype=np.uint8)
    labels[8:12, 8:12, 8:12] = 1     # interior
    labels[8:12, 8:12, 17:19] = 2    # within 3 voxels of the last z face
    labels[3:6, 8:12, 8:12] = 3      # exactly 3 voxels from the first x face: not touching
    labels[2, 10, 10] = 4            # one voxel inside the border slab
    measured = measure_structures(np.zeros(labels.shape, np.int16), labels, 1.0, n_labels=5, border_voxels=3)
    assert measured.touches_border.tolist() == [False, False, True, False, True]


def test_lower_bounds_mapping_covers_v2_names() -> None:
    class_map = load_class_map("class_map_total_v2.csv")
    from cohort.config import config_file, load_lower_bounds

    bounds = load_lower_bounds("lower_bounds_v2.csv", class_map)
    ids = {name: label for label, name in class_map.names.items()}
    assert bounds[ids["heart"]] == 70 + 40 + 60 + 50 + 80
    assert bounds[ids["spleen"]] == 40 and bounds[ids["vertebrae_L4"]] == 40
    assert np.isnan(bounds[ids["thyroid_gland"]]) and np.isnan(bounds[ids["costal_cartilages"]])
    with config_file("lower_bounds_v2.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["structure"] for r in rows] == [class_map.names[i] for i in sorted(class_map.names)]
    assert all(r["note"] for r in rows)


@pytest.mark.parametrize("name", ["../../../escaped", "kidney/left", '<img src=x onerror="alert(1)">', ".hidden"])
def test_a_structure_name_that_would_leave_qc_or_be_markup_is_refused(tmp_path: Path, name: str) -> None:
    """A structure name becomes ``results/qc/<series_id>/<structure>.png`` and text on the report and review
    pages: a custom class map naming one with a path separator or markup is refused on load, naming file and line."""
    path = tmp_path / "class_map_custom.csv"
    with path.open("w", newline="") as handle:
        csv.writer(handle).writerows([("label", "structure"), (1, "liver"), (2, name)])
    with pytest.raises(ConfigError, match=r"class_map_custom.csv: line 3: key 'structure'"):
        load_class_map(str(path))


def test_voxel_volume_of_a_sheared_grid_is_its_determinant() -> None:
    """A gantry-tilted CT stored as NIfTI without tilt correction has a sheared affine: its z
    column is longer than the slice spacing. Volumes must use the voxel's real size (the
    determinant), not the product of column norms (10% too large at 25 degrees)."""
    from cohort.ingest import Grid

    affine = np.diag([0.8, 0.8, 2.0, 1.0])
    affine[1, 2] = 2.0 * np.tan(np.radians(25))
    grid = Grid((4, 4, 4), affine)
    assert grid.voxel_volume_ml == pytest.approx(0.8 * 0.8 * 2.0 / 1000)
    assert Grid((4, 4, 4), np.diag([-0.8, 0.8, 2.0, 1.0])).voxel_volume_ml == pytest.approx(0.8 * 0.8 * 2.0 / 1000)


def test_structure_cut_by_a_circular_field_of_view_is_fov_truncated(tmp_path: Path) -> None:
    """A patient wider than the reconstruction circle is cut along the circle, away from the
    image faces: a structure ending at the padding (here at 45 degrees, 7 voxels from every
    face) is cut off by the field of view just as one at a face, and must not be ``ok``."""
    import nibabel as nib

    from cohort.measurement import qc_status

    n = 64
    x, y = np.mgrid[:n, :n] - (n - 1) / 2
    inside = np.hypot(x, y) <= n / 2 - 0.5
    hu = np.full((n, n, 20), -3024, np.int16)  # padding outside the circle
    hu[inside] = 40
    hu[30:34, 30:34] = -1000
    nib.save(nib.Nifti1Image(hu, np.diag([0.8, 0.8, 2.0, 1.0])), tmp_path / "ct.nii.gz")
    volume = load_ct(tmp_path / "ct.nii.gz")
    labels = np.zeros(hu.shape, np.uint8)
    labels[inside & (x > 12) & (y > 12) & (np.abs(x - y) < 6), 4:-4] = 1  # reaches the circle
    labels[inside & (np.hypot(x, y) < 8), 4:-4] = 2  # well inside the field
    measured = measure_structures(volume.hu, labels, volume.grid.voxel_volume_ml, 3,
                                  outside_fov=volume.outside_fov)
    assert qc_status(measured, np.full(3, np.nan))[1:].tolist() == ["fov_truncated", "ok"]


def test_fat_fraction_ignores_negative_signals_and_stays_in_0_1() -> None:
    """A padded voxel (-1024 in both images after ingest) in a mask made the whole structure NaN;
    a negative water signal made a fraction of 2.5. Negative signals are no signal."""
    from cohort.measurement.fat_fraction import fat_fractions

    labels = np.array([[[1, 1, 1, 2, 2]]])
    fat = np.array([[[10.0, 10.0, -1024.0, 5.0, 0.0]]])
    water = np.array([[[90.0, 90.0, -1024.0, -3.0, 0.0]]])
    assert fat_fractions(fat, water, labels, 3)[1:].tolist() == [0.1, 1.0]


def test_fov_edge_setting_chooses_the_rule_and_is_part_of_the_run_key(tmp_path: Path) -> None:
    """``measure.fov_edge: faces`` keeps TotalSegmentator's rule; the two settings never share rows."""
    import dataclasses

    import nibabel as nib

    from cohort.config import load_run_config
    from cohort.ingest.volume import LabelMap
    from cohort.pipeline import MeasureSettings, measure_series

    n = 64
    x, y = np.mgrid[:n, :n] - (n - 1) / 2
    inside = np.hypot(x, y) <= n / 2 - 0.5
    hu = np.full((n, n, 20), -3024, np.int16)
    hu[inside] = 40
    hu[..., 9][~inside] = -2000  # the field's padding read with another value on one slice: the general path
    nib.save(nib.Nifti1Image(hu, np.diag([0.8, 0.8, 2.0, 1.0])), tmp_path / "ct.nii.gz")
    volume = load_ct(tmp_path / "ct.nii.gz")
    labels = np.zeros(hu.shape, np.uint8)
    labels[inside & (x > 12) & (y > 12) & (np.abs(x - y) < 6), 4:-4] = 1  # spleen, reaching the circle
    config = load_run_config()
    statuses, digests = {}, set()
    for edge in ("faces_and_padding", "faces"):
        settings = MeasureSettings.from_config(dataclasses.replace(
            config, measure=dataclasses.replace(config.measure, fov_edge=edge)))
        table = measure_series("ct", volume, LabelMap(labels, volume.affine, tmp_path / "labels"), "labels",
                               settings).to_pandas()
        statuses[edge] = table.set_index("structure").loc["spleen", "status"]
        digests.add(settings.digest)
    assert statuses == {"faces_and_padding": "fov_truncated", "faces": "below_lower_bound"}
    assert len(digests) == 2


def test_fov_edge_must_be_a_known_rule(tmp_path: Path) -> None:
    from cohort.config import load_run_config

    path = tmp_path / "run.yaml"
    path.write_text("measure:\n  fov_edge: circle\n")
    with pytest.raises(ConfigError, match="run.yaml: key 'measure.fov_edge' must be one of faces, faces_and_padding"):
        load_run_config(path)
