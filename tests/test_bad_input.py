"""Bad input: each broken series gets one clear failed row; a malformed manifest stops with exit 2."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from cohort.cli import main
from cohort.config import load_class_map, load_run_config
from cohort.manifest import load_manifest
from cohort.pipeline import MeasureSettings, RunContext, process_series
from cohort.provenance import load_content_key
from testkit import mirrored_qform_pair, with_header, with_label_table, write_manifest

CT, LABELS = "example_ct_sm.nii.gz", "example_seg_fast.nii.gz"


def _save_like(reference: Path, target: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    image = nib.load(str(reference))
    nib.save(nib.Nifti1Image(data, image.affine if affine is None else affine), str(target))
    return target


def _dixon_pair(ct: Path, folder: Path) -> tuple[Path, Path]:
    """Dixon water and fat images on the CT's grid, the water image infinite in the liver (id 5)."""
    water = np.clip(np.asanyarray(nib.load(str(ct)).dataobj).astype(np.float32) + 1100, 0, None)
    water[np.asanyarray(nib.load(str(folder / LABELS)).dataobj) == 5] = np.inf
    return (_save_like(ct, folder / "water_inf.nii.gz", water),
            _save_like(ct, folder / "fat.nii.gz", np.zeros_like(water) + 100))


def _bad_cases(folder: Path) -> dict[str, tuple[dict, str]]:
    """series_id -> (manifest row, words the failure reason must contain)."""
    ct, labels = folder / CT, folder / LABELS
    truncated = folder / "truncated.nii.gz"
    truncated.write_bytes(ct.read_bytes()[: ct.stat().st_size // 2])
    garbage = folder / "garbage.nii.gz"
    garbage.write_bytes(gzip.compress(b"this is not a nifti file" * 10))
    flat = _save_like(ct, folder / "flat.nii.gz", np.zeros((64, 64), np.int16))
    mr = _save_like(ct, folder / "mr.nii.gz", np.asanyarray(nib.load(str(ct)).dataobj).astype(np.int16) + 1100)
    cropped = _save_like(labels, folder / "cropped.nii.gz", np.asanyarray(nib.load(str(labels)).dataobj)[:, :, :20])
    moved_affine = nib.load(str(labels)).affine.copy()
    moved_affine[2, 3] += 30
    moved = _save_like(labels, folder / "moved.nii.gz", np.asanyarray(nib.load(str(labels)).dataobj), moved_affine)
    foreign_labels = np.asanyarray(nib.load(str(labels)).dataobj).copy()
    foreign_labels[60, 50, 15] = 200
    foreign = _save_like(labels, folder / "foreign.nii.gz", foreign_labels)
    unplaced = folder / "unplaced.nii.gz"  # written by a script that gave nibabel no affine
    nib.save(nib.Nifti1Image(np.asanyarray(nib.load(str(ct)).dataobj), None), str(unplaced))
    (folder / "empty_dicom").mkdir()
    two_series = folder / "two_series"
    shutil.copytree(folder / "example_ct_dicom", two_series)
    second_uid = pydicom.uid.generate_uid()
    for path in sorted(two_series.iterdir())[:10]:
        dataset = pydicom.dcmread(path)
        dataset.SeriesInstanceUID = second_uid
        dataset.save_as(path)
    two_forms, itk_labels = mirrored_qform_pair(ct, labels, folder)
    qform_only = folder / "qform_only.nii"
    with_header(ct, qform_only, sform_code=0, qform_code=1)
    negative_size = with_header(qform_only, folder / "negative_size.nii", pixdim=[1, -3, 3, 3, 1, 1, 1, 1])
    no_volume = with_header(ct, folder / "no_volume.nii", srow_z=[0, 0, 0, 94.3])
    complex_ct = _save_like(ct, folder / "complex.nii.gz",
                            np.asanyarray(nib.load(str(ct)).dataobj).astype(np.complex64))
    water_inf, fat = _dixon_pair(ct, folder)
    v1_names = load_class_map("class_map_total_v1.csv").names  # TotalSegmentator v1 (--v1_order)
    v1_numbered = with_label_table(labels, folder / "v1_numbered.nii.gz", v1_names)
    subset = with_label_table(labels, folder / "roi_subset.nii.gz", {1: "spleen", 5: "liver"}, only_named=True)
    return {
        "v1_numbered": ({"path": str(ct), "labels": str(v1_numbered)},
                        ["<labels of line", "label 7 is aorta in the file's own label table but pancreas in "
                         "class_map_total_v2.csv", "numbered by another class map",
                         "it agrees with class_map_total_v1.csv: set measure.class_map: class_map_total_v1.csv"]),
        "roi_subset": ({"path": str(ct), "labels": str(subset)},
                       ["<labels of line", "names 2 of the 117 structures", "--roi_subset"]),
        "two_forms": ({"path": str(two_forms), "labels": str(itk_labels)},
                      ["<path of line", "qform and sform disagree", "qform LAS", "sform RAS"]),
        "negative_size": ({"path": str(negative_size), "labels": str(labels)},
                          ["<path of line", "voxel sizes pixdim [-3.0, 3.0, 3.0]", "not all above 0"]),
        "no_volume": ({"path": str(no_volume), "labels": str(labels)},
                      ["<path of line", "sform does not place the voxels", "singular"]),
        "complex": ({"path": str(complex_ct), "labels": str(labels)}, ["<path of line", "complex64 voxels"]),
        "dixon_inf": ({"path": str(ct), "labels": str(labels), "water": str(water_inf), "fat": str(fat)},
                      ["<water of line", "NaN or infinite"]),
        "missing": ({"path": "does_not_exist.nii.gz"}, ["<path of line", "not found"]),
        "truncated": ({"path": str(truncated)}, ["<path of line", "corrupt or truncated"]),
        "garbage": ({"path": str(garbage)}, ["<path of line", "cannot read"]),
        "flat": ({"path": str(flat)}, ["<path of line", "3-D volume"]),
        "no_orientation": ({"path": str(unplaced)}, ["<path of line", "gives no orientation", "left and right"]),
        "empty_dicom": ({"path": str(folder / "empty_dicom")}, ["<path of line", "no DICOM series"]),
        "two_series": ({"path": str(two_series)}, ["<path of line", "2 DICOM series"]),
        "shape": ({"path": str(ct), "labels": str(cropped)}, ["<labels of line", "shape"]),
        "affine": ({"path": str(ct), "labels": str(moved)}, ["<labels of line", "affine", "origin"]),
        "unknown_label": ({"path": str(ct), "labels": str(foreign)}, ["<labels of line", "label ids [200]",
                                                                      "not in the class map"]),
        "not_ct": ({"path": str(mr)}, ["<path of line", "not a CT"]),
        "age_text": ({"path": str(ct), "labels": str(labels), "age": "sixty"}, ["line", "age 'sixty'", "not a number"]),
        "age_negative": ({"path": str(ct), "labels": str(labels), "age": "-4"}, ["age '-4'", "outside"]),
        "sex": ({"path": str(ct), "labels": str(labels), "sex": "X"}, ["sex 'X'", "not M or F"]),
    }


@pytest.fixture()
def bad_manifest(example_copy: Path, tmp_path: Path) -> tuple[Path, dict]:
    cases = _bad_cases(example_copy)
    rows = [{"series_id": sid, "age": "50", "sex": "F", **row} for sid, (row, _) in cases.items()]
    rows.append({"series_id": "good", "path": str(example_copy / CT), "labels": str(example_copy / LABELS),
                 "age": "64", "sex": "M"})
    return write_manifest(example_copy / "manifest.csv", rows), cases


def test_each_bad_series_fails_with_a_specific_reason(bad_manifest: tuple[Path, dict], tmp_path: Path) -> None:
    manifest, cases = bad_manifest
    context = RunContext(tmp_path / "labels.zarr", MeasureSettings.from_config(load_run_config()),
                         load_content_key(tmp_path / ".cohort.content_key"))
    results = {spec.series_id: process_series(spec, context) for spec in load_manifest(manifest)}
    assert results["good"].done
    for series_id, (_, words) in cases.items():
        record = results[series_id].record
        assert record.status == "failed", series_id
        assert "\n" not in record.error
        for word in words:
            assert word in record.error, (series_id, record.error)
        assert results[series_id].features is None


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ("path,age\na.nii.gz,40\n", ["line 1", "'series_id'", "missing"]),
        ("series_id,age\ns1,40\n", ["line 1", "'path'", "missing"]),
        ("series_id,path\ns1,a.nii.gz\ns2,b.nii.gz\ns1,c.nii.gz\n", ["line 4", "'series_id'", "duplicates line 2"]),
        ("series_id,path\ns1,a.nii.gz\n,b.nii.gz\n", ["line 3", "'series_id'", "empty"]),
        ("series_id,path\nsub/01,a.nii.gz\n", ["line 2", "'series_id'", "sub/01"]),
    ],
)
def test_malformed_manifest_stops_before_any_work(tmp_path: Path, capsys, content: str, words: list[str]) -> None:
    manifest = tmp_path / "scans.csv"
    manifest.write_text(content)
    out = tmp_path / "results"
    assert main(["run", "--manifest", str(manifest), "--out", str(out)]) == 2
    message = " ".join(capsys.readouterr().err.split())
    for word in [str(manifest.name), *words]:
        assert word in message, message
    assert not (out / "series").exists() or not any((out / "series").iterdir())


def test_bad_config_names_file_and_key(tmp_path: Path, capsys, examples: Path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text("execution:\n  batch_sise: 10\n")
    assert main(["run", "--manifest", str(examples / "manifest.csv"), "--out", str(tmp_path / "r"),
                 "--config", str(config)]) == 2
    message = " ".join(capsys.readouterr().err.split())
    assert "run.yaml" in message and "execution.batch_sise" in message
