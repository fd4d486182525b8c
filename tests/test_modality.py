"""Modality done right: the CT check for CT models only, an MR check for MR models, HU never
reported for MR, and the Dixon fat fraction against a planted truth."""

from __future__ import annotations

import doctest
import importlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from cohort.check import check_manifest
from cohort.config import load_run_config
from cohort.errors import SeriesError
from cohort.ingest import LabelMap, Volume, check_modality
from cohort.measurement.fat_fraction import fat_fractions
from cohort.pipeline import Dixon, MeasureSettings, measure_series
from cohort.segmentation import load_model_spec
from cohort.testing.images import known_fat_fraction, synthetic_image

SHAPE = (30, 24, 8)


def _volume(modality: str) -> Volume:
    image = synthetic_image(modality, SHAPE, (2.0, 2.0, 3.0))
    return Volume(hu=np.asarray(image.dataobj), affine=image.affine, source=Path("x"), name="scans.csv line 2 (s1)")


def test_ct_model_refuses_mr_and_mr_model_refuses_ct():
    check_modality(_volume("CT"), "CT")
    check_modality(_volume("MR"), "MR")
    with pytest.raises(SeriesError, match="not a CT in Hounsfield units.*use an MR model"):
        check_modality(_volume("MR"), "CT")
    with pytest.raises(SeriesError, match=r"scans.csv line 2 \(s1\): .*this is a CT.*MR model"):
        check_modality(_volume("CT"), "MR")


def test_an_mr_with_a_few_negative_values_is_not_taken_for_a_ct():
    volume = _volume("MR")
    volume.hu[0, 0, :2] = -1000  # 16 voxels of 5760: well below 1 %
    check_modality(volume, "MR")


def test_fat_fraction_is_the_ratio_of_sums_with_a_known_truth():
    rng = np.random.default_rng(0)
    labels = np.zeros((40, 10, 10), dtype=np.uint8)
    labels[:20], labels[20:] = 1, 2
    signal = rng.uniform(100, 1000, labels.shape)
    truth = np.where(labels == 1, 0.08, 0.35)  # e.g. a healthy and a fatty liver
    fractions = fat_fractions(signal * truth, signal * (1 - truth), labels, 4)
    np.testing.assert_allclose(fractions[1:3], [0.08, 0.35])
    assert np.isnan(fractions[0]) and np.isnan(fractions[3])
    # Signal-weighted: a dark voxel with an extreme voxelwise fraction barely moves the result.
    fat, water = signal * truth, signal * (1 - truth)
    fat[0, 0, 0], water[0, 0, 0] = 1.0, 0.0
    assert fat_fractions(fat, water, labels, 4)[1] == pytest.approx(0.08, abs=1e-3)


def test_mr_rows_have_intensities_not_hu_and_ct_rows_the_reverse():
    volume = _volume("MR")
    labels = LabelMap(labels=(volume.hu > 200).astype(np.uint8) * 5, affine=volume.affine, source=Path("x"), name="x")
    signal = volume.hu.astype(np.float64)
    dixon = Dixon(fat=signal * known_fat_fraction(SHAPE), water=signal * (1 - known_fat_fraction(SHAPE)))
    mr = MeasureSettings.from_config(load_run_config(), load_model_spec("vibeseg"))
    rows = measure_series("s1", volume, labels, "vibeseg", mr, dixon).to_pandas().set_index("label")
    assert rows.loc[5, "structure"] == "liver" and rows.loc[5, "modality"] == "MR"
    assert np.isnan(rows.loc[5, "mean_hu"]) and rows.loc[5, "mean_intensity"] == pytest.approx(
        volume.hu[volume.hu > 200].mean())
    assert 0.05 < rows.loc[5, "fat_fraction"] < 0.65 and rows["lower_bound_ml"].isna().all()
    ct = MeasureSettings.from_config(load_run_config())
    assert ct.modality == "CT" and ct.digest != mr.digest
    rows = measure_series("s1", _volume("CT"), labels, "fast", ct).to_pandas().set_index("label")
    assert rows.loc[5, "modality"] == "CT" and np.isnan(rows.loc[5, "mean_intensity"])
    assert rows["fat_fraction"].isna().all() and rows["lower_bound_ml"].notna().any()


def test_the_models_class_map_is_the_default_measurement_class_map():
    assert MeasureSettings.from_config(load_run_config(), load_model_spec("total_mr")).class_map.n_labels == 51
    assert MeasureSettings.from_config(load_run_config()).class_map.n_labels == 118


def test_mr_rows_measured_before_padding_at_no_signal_stopped_being_a_field_edge_are_measured_again():
    """MR rows whose statuses took an MR's PixelPaddingValue 0 (its background) for the field's edge
    are not reused by a rerun as if measured today: the MR measurement key carries its own rules."""
    from cohort.config import config_file
    from cohort.provenance import digest, measurement_digest

    config = load_run_config()
    settings = MeasureSettings.from_config(config, load_model_spec("total_mr_fast"))
    common = measurement_digest(config_file("class_map_total_mr.csv"), config_file("lower_bounds_none.csv"),
                                config.measure.border_voxels, config.measure.fov_edge)
    assert settings.digest not in (common, digest([common, "MR"]))  # the key MR rows had before


def test_cohort_check_names_a_missing_dixon_image(tmp_path):
    image = synthetic_image("MR", SHAPE, (2.0, 2.0, 3.0))
    nib.save(image, str(tmp_path / "mr.nii.gz"))
    nib.save(image, str(tmp_path / "water.nii.gz"))
    (tmp_path / "scans.csv").write_text("series_id,path,fat,water\ns1,mr.nii.gz,fat.nii.gz,water.nii.gz\n")
    report = check_manifest(tmp_path / "scans.csv")
    assert [(p.column, p.series_id) for p in report.problems] == [("fat", "s1")]


def test_dixon_columns_naming_one_image_or_one_without_the_other_fail_the_row_and_the_check(tmp_path):
    """fat and water naming the same image gave every structure a fat fraction of 0.5, silently;
    `cohort check` did not name a row with one of the two columns."""
    from cohort.config import IngestConfig
    from cohort.manifest import read_manifest
    from cohort.pipeline import load_dixon

    image = synthetic_image("MR", SHAPE, (2.0, 2.0, 3.0))
    nib.save(image, str(tmp_path / "mr.nii.gz"))
    nib.save(image, str(tmp_path / "water.nii.gz"))
    (tmp_path / "scans.csv").write_text("series_id,path,fat,water\ns1,mr.nii.gz,water.nii.gz,./water.nii.gz\n"
                                        "s2,mr.nii.gz,,water.nii.gz\ns3,mr.nii.gz,mr.nii.gz,water.nii.gz\n")
    report = check_manifest(tmp_path / "scans.csv")
    assert [(p.series_id, p.column) for p in report.problems] == [("s1", "fat"), ("s2", "water")]
    assert "name the same image" in report.problems[0].reason
    assert "'water' is given without 'fat'" in report.problems[1].reason
    specs = read_manifest(tmp_path / "scans.csv").specs
    volume = _volume("MR")
    with pytest.raises(SeriesError, match=r"line 2 \(s1\): columns 'fat' and 'water' name the same image"):
        load_dixon(specs[0], volume, IngestConfig())


@pytest.mark.parametrize("name", ["cohort.measurement.fat_fraction", "cohort.segmentation.postprocess",
                                  "cohort.segmentation.body_crop", "cohort.testing.images"])
def test_docstring_examples_run(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name))
    assert result.attempted > 0 and result.failed == 0
