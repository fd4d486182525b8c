"""DICOM geometry is never silently wrong: cohort's voxels and affine match dcm2niix's on every
series it reads, and every series it cannot read right is refused with a reason saying why."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
import pytest

from cohort.errors import SeriesError
from cohort.ingest import load_ct
from tests.export.pacs import (
    Patient,
    Study,
    example_slices,
    rotate_in_plane,
    tilt,
    write_series,
)

needs_dcm2niix = pytest.mark.skipif(shutil.which("dcm2niix") is None, reason="Debian's dcm2niix is not installed")
STUDY = Study(Patient("DOE^JANE", "PID-1", "19580312"))


def set_value(keyword: str, value_of):
    return lambda ds, k: setattr(ds, keyword, value_of(k))


@pytest.fixture(scope="module")
def slices(examples: Path):
    return example_slices(examples)[:8]  # 8 of the 20 slices: enough for every case, faster to convert


def dcm2niix(folder: Path, out: Path) -> list[Path]:
    """Convert ``folder`` with dcm2niix; the NIfTI files it wrote (``x.nii.gz``, ``x_Eq_1``, ``x_Tilt_1``)."""
    out.mkdir()
    subprocess.run(["dcm2niix", "-z", "y", "-f", "ref", "-o", str(out), str(folder)], check=True,
                   capture_output=True, timeout=120)
    return sorted(out.glob("*.nii.gz"))


def assert_matches_reference(volume, reference: Path) -> None:
    """Same voxels and affine as dcm2niix's NIfTI, up to axis order and flips."""
    image = nib.load(reference)
    transform = nib.orientations.ornt_transform(nib.io_orientation(image.affine), nib.io_orientation(volume.affine))
    voxels = nib.orientations.apply_orientation(image.get_fdata(), transform)
    affine = image.affine @ nib.orientations.inv_ornt_aff(transform, image.shape)
    assert voxels.shape == volume.hu.shape
    np.testing.assert_allclose(volume.affine, affine, atol=1e-4)
    np.testing.assert_allclose(volume.hu, voxels, atol=1e-3)


READABLE = {
    "instance numbers reversed": {"edit": set_value("InstanceNumber", lambda k: 100 - k)},
    "per-slice rescale": {"edit": lambda ds, k: (setattr(ds, "RescaleIntercept", -1000 if k % 2 else -1024),
                                                  setattr(ds, "RescaleSlope", 1.5 if k % 3 == 0 else 1))},
    "oblique in-plane orientation": {"edit": rotate_in_plane(30)},
}


@needs_dcm2niix
@pytest.mark.parametrize("case", READABLE)
def test_readable_series_match_dcm2niix(case: str, slices, tmp_path: Path) -> None:
    folder = tmp_path / "series"
    write_series(folder, slices, STUDY, **READABLE[case])
    (reference,) = dcm2niix(folder, tmp_path / "ref")
    volume = load_ct(folder)
    assert_matches_reference(volume, reference)
    if case == "per-slice rescale":
        plain = tmp_path / "plain"
        write_series(plain, slices, STUDY)
        stored = load_ct(plain).hu.astype(float) + 1024  # the plain series: slope 1, intercept -1024
        for k, (slope, intercept) in {2: (1, -1024), 3: (1.5, -1000), 6: (1.5, -1024)}.items():
            np.testing.assert_allclose(volume.hu[..., k], slope * stored[..., k] + intercept)


@needs_dcm2niix
def test_one_series_of_a_mixed_folder_and_a_split_series(slices, tmp_path: Path) -> None:
    mixed = tmp_path / "mixed"
    thick = write_series(mixed, slices[::2], STUDY, thickness=5.0)
    write_series(mixed, slices, STUDY, image_type="DERIVED\\SECONDARY\\AXIAL")
    with pytest.raises(SeriesError, match="folder holds 2 DICOM series; name one in the manifest's series_uid"):
        load_ct(mixed)
    alone = tmp_path / "alone"
    write_series(alone, slices[::2], STUDY, thickness=5.0)
    volume = load_ct(mixed, series_uid=thick)
    assert volume.hu.shape == (512, 512, 4) and volume.grid.spacing[2] == pytest.approx(4.0)
    assert_matches_reference(volume, dcm2niix(alone, tmp_path / "ref_alone")[0])

    study = tmp_path / "study"
    split = write_series([study / "part1", study / "deeper" / "part2"], slices, STUDY)
    write_series(study / "part1", slices[:5], STUDY, modality="CT", description="other series in the same folder")
    (study / "part1" / "notes.txt").write_text("not DICOM")
    volume = load_ct(study, series_uid=split)
    whole = tmp_path / "whole"
    write_series(whole, slices, STUDY)
    assert_matches_reference(volume, dcm2niix(whole, tmp_path / "ref_whole")[0])
    with pytest.raises(SeriesError, match="no file under the folder is of the DICOM series the manifest names"):
        load_ct(study, series_uid="1.2.3")


def _positions(offsets: dict[int, float]):
    return lambda ds, k: setattr(ds, "ImagePositionPatient",
                                 [*map(float, ds.ImagePositionPatient[:2]), float(ds.ImagePositionPatient[2]) + offsets.get(k, 0.0)])


REFUSED = {
    "uneven spacing": ({"edit": _positions({5: 0.4})}, "uneven slice spacing (1.6 to 2.4 mm)"),
    "duplicate position": ({"edit": _positions({5: 2.0})}, "2 slices share one position"),
    "series written twice": ({"edit": lambda ds, k: _positions({k: -2.0 * (k % 2)})(ds, k)},
                             "8 slices share 4 positions"),
    "mixed pixel spacing": ({"edit": lambda ds, k: setattr(ds, "PixelSpacing", [0.8, 0.8] if k == 4 else ds.PixelSpacing)},
                            "slices differ in pixel spacing (mm: 0.8x0.8, 0.976562x0.976562)"),
    "mixed size": ({"edit": lambda ds, k: setattr(ds, "Rows", 256 if k == 4 else 512)}, "slices differ in size (rows x columns: 256x512, 512x512)"),
    "mixed orientation": ({"edit": lambda ds, k: rotate_in_plane(10)(ds, k) if k == 4 else None},
                          "slices differ in orientation"),
    "not orthogonal": ({"edit": set_value("ImageOrientationPatient", lambda k: [1, 0, 0, 0.2, 0.98, 0])},
                       "orientation vectors are not orthogonal unit vectors (at 78.5 deg)"),
    "rescale missing on one slice": ({"edit": lambda ds, k: (delattr(ds, "RescaleSlope"), delattr(ds, "RescaleIntercept"))
                                      if k == 4 else None},
                                     "slice(s) 5 of 8 have no RescaleSlope/RescaleIntercept and the others have"),
    "multi-frame": ({"edit": lambda ds, k: setattr(ds, "NumberOfFrames", 3) if k == 0 else None},
                    "multi-frame (enhanced) image with 3 frames in one file; cohort reads single-frame series only"),
}


@pytest.mark.parametrize("case", REFUSED)
def test_wrong_geometry_is_refused_with_its_reason(case: str, slices, tmp_path: Path) -> None:
    options, reason = REFUSED[case]
    folder = tmp_path / "patient_folder"
    write_series(folder, slices, STUDY, **options)
    with pytest.raises(SeriesError) as error:
        load_ct(folder)
    assert str(error.value).startswith("patient_folder: ") and reason in str(error.value), str(error.value)


@pytest.mark.parametrize("case", REFUSED)
def test_the_manifest_index_refuses_what_ingest_refuses_with_its_reason(case: str, slices, tmp_path: Path,
                                                                        tmp_path_factory) -> None:
    """The index judges a series from crawled headers by ingest's own rules; a series it chose that
    the run then refuses (a slice without rescale tags beside slices with them, until now) costs a
    manifest row and a failed series instead of a reason before the run."""
    from cohort.export import build_manifest
    from tests.export.conftest import TEST_POLICY

    options, reason = REFUSED[case]
    uid = write_series(tmp_path / "export" / "patient_folder", slices, STUDY, **options)
    out = tmp_path / "manifest"
    out.mkdir()
    (out / "policy.yaml").write_text(TEST_POLICY)
    build_manifest(tmp_path / "export", out / "scans.csv", out / "policy.yaml",
                   key=tmp_path_factory.mktemp("keys") / "k.key")
    row = pd.read_parquet(out / "scans.index.parquet").set_index("series_uid").loc[uid]
    assert not row["selected"] and reason in row["reason"], row["reason"]


@needs_dcm2niix
@pytest.mark.parametrize("case, edit, reason, dcm2niix_wrote", [
    ("missing slice", None, ("missing slice(s): a gap of 4 mm between positions -798.5 and -794.5 mm where the "
                            "spacing is 2 mm"), "ref_Eq_1.nii.gz"),
    ("gantry tilt", tilt(15), "gantry tilt: slices are stacked at 15.0 deg to their normal; refused", "ref_Tilt_1.nii.gz"),
])
def test_gaps_and_tilt_that_dcm2niix_resamples_are_refused(case, edit, reason, dcm2niix_wrote, slices,
                                                           tmp_path: Path) -> None:
    folder = tmp_path / "series"
    write_series(folder, slices[:4] + slices[5:] if case == "missing slice" else slices, STUDY, edit=edit)
    written = dcm2niix(folder, tmp_path / "ref")
    assert dcm2niix_wrote in {path.name for path in written}  # dcm2niix sees the same problem and resamples
    with pytest.raises(SeriesError, match="^series: ") as error:
        load_ct(folder)
    assert reason in str(error.value)


def test_a_series_tagged_as_the_other_modality_is_refused_before_its_voxels(slices, tmp_path: Path) -> None:
    mr = tmp_path / "mr"
    write_series(mr, slices, STUDY, modality="MR")
    with pytest.raises(SeriesError, match=r"mr: its DICOM Modality is MR, and the model is for CT \(use an MR model"):
        load_ct(mr)
    assert load_ct(mr, modality=None).hu.shape == (512, 512, 8)  # a companion or overlay image is not judged
    other = tmp_path / "other"
    write_series(other, slices, STUDY, modality="OT")  # a reformatted series: the intensities decide
    assert load_ct(other).hu.shape == (512, 512, 8)
    ct = tmp_path / "ct"
    write_series(ct, slices, STUDY)
    with pytest.raises(SeriesError, match=r"its DICOM Modality is CT, and the model is for MR \(use a CT model"):
        load_ct(ct, modality="MR")


def _enhanced(ds: pydicom.Dataset, k: int) -> None:
    """An enhanced CT as scanners write it: every frame in one file, positions in per-frame groups only."""
    ds.NumberOfFrames = 8
    for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
        delattr(ds, keyword)


def test_an_enhanced_ct_of_one_file_is_refused_as_multi_frame(slices, tmp_path: Path) -> None:
    """One file holding all frames is named for what it is, not "1 slice", with or without a series_uid."""
    folder = tmp_path / "enhanced"
    uid = write_series(folder, slices[:1], STUDY, edit=_enhanced)
    for series_uid in (None, uid):
        with pytest.raises(SeriesError) as error:
            load_ct(folder, series_uid=series_uid)
        assert str(error.value).startswith("enhanced: multi-frame (enhanced) image with 8 frames in one file"), \
            str(error.value)
    with pytest.raises(SeriesError, match=r"^single: series has 1 slice\(s\); a 3-D volume is needed"):
        write_series(tmp_path / "single", slices[:1], STUDY)
        load_ct(tmp_path / "single")


def test_a_file_rewritten_into_the_series_is_found_though_the_worker_knew_it_of_another(
        examples: Path, tmp_path: Path) -> None:
    """A worker remembers which series each file of a flat study folder is of, so that its next row
    skips the other series' headers (cohort.ingest.series_of_files). A file rewritten since (here: a
    file of series B replaced by one more slice on top of series A) must be read again: skipped as
    B's, series A would silently lose its top slice."""
    from cohort.ingest import InputName

    study, slices = Study(Patient("DOE^JANE", "P1", "19600101")), example_slices(examples)
    folder = tmp_path / "study"
    series_a, series_b = write_series(folder, slices, study), write_series(folder, slices, study)
    first = load_ct(InputName.in_manifest(folder, 2), series_uid=series_a)
    assert load_ct(InputName.in_manifest(folder, 3), series_uid=series_b).hu.shape == first.hu.shape
    top = pydicom.dcmread(sorted(folder.glob(f"IM{series_a[-6:]}_*.dcm"))[-1])
    step = float(top.ImagePositionPatient[2]) - float(slices[-2].ImagePositionPatient[2])
    top.ImagePositionPatient = [*top.ImagePositionPatient[:2], float(top.ImagePositionPatient[2]) + step]
    top.SOPInstanceUID = top.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    top.save_as(sorted(folder.glob(f"IM{series_b[-6:]}_*.dcm"))[0])  # B's first file, rewritten in place
    again = load_ct(InputName.in_manifest(folder, 2), series_uid=series_a)
    assert again.hu.shape == (*first.hu.shape[:2], first.hu.shape[2] + 1)
