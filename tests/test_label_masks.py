"""A ``labels`` folder of one binary mask per structure (TotalSegmentator without ``--ml``), built
from the example's real multilabel map: measured as that map is, refused for each broken rule,
covered by the row's fingerprint and content, and checked from headers by ``cohort check``."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

import cohort
from cohort.check import check_manifest
from cohort.config import load_class_map
from cohort.errors import SeriesError
from cohort.ingest import InputName, load_ct, load_labels
from cohort.ingest import masks as mask_folders
from cohort.provenance import input_content, input_fingerprint
from testkit import cohort_cli, write_manifest

CT, LABELS = "example_ct_sm.nii.gz", "example_seg.nii.gz"
CLASS_MAP = load_class_map("class_map_total_v2.csv")


def write_masks(labels: np.ndarray, affine: np.ndarray, folder: Path) -> Path:
    """One uint8 mask per structure of the class map, as TotalSegmentator writes them (empty ones too)."""
    folder.mkdir(parents=True, exist_ok=True)
    for label, structure in CLASS_MAP.names.items():
        nib.save(nib.Nifti1Image((labels == label).astype(np.uint8), affine), str(folder / f"{structure}.nii.gz"))
    return folder


@pytest.fixture(scope="module")
def masks(tmp_path_factory, examples: Path) -> Path:
    image = nib.load(str(examples / LABELS))
    return write_masks(np.asanyarray(image.dataobj), image.affine, tmp_path_factory.mktemp("masks") / "segmentations")


@pytest.fixture()
def folder(masks: Path, tmp_path: Path) -> Path:
    """A copy of the mask folder a test may damage."""
    return Path(shutil.copytree(masks, tmp_path / "segmentations"))


def _mask(folder: Path, structure: str) -> tuple[np.ndarray, np.ndarray]:
    image = nib.load(str(folder / f"{structure}.nii.gz"))
    return np.asanyarray(image.dataobj).copy(), image.affine


def _save(folder: Path, structure: str, array: np.ndarray, affine: np.ndarray) -> None:
    nib.save(nib.Nifti1Image(array, affine), str(folder / f"{structure}.nii.gz"))


def _error(examples: Path, folder: Path) -> str:
    """The run's message for the mask folder as the labels of manifest line 7."""
    volume = load_ct(InputName.in_manifest(examples / CT, 7))
    with pytest.raises(SeriesError) as caught:
        load_labels(InputName.in_manifest(folder, 7, "labels"), volume, CLASS_MAP)
    message = str(caught.value)
    assert str(folder.parent) not in message  # named by column and line, never by path
    return message


def test_a_mask_folder_measures_as_its_multilabel_map(examples: Path, masks: Path) -> None:
    from_file = cohort.measure(examples / CT, examples / LABELS, series_id="s")
    from_masks = cohort.measure(examples / CT, masks, series_id="s")
    assert (from_file["n_voxels"] > 0).sum() > 30
    pd.testing.assert_frame_equal(from_file, from_masks)


def test_masks_stored_with_flipped_axes_are_reoriented(examples: Path, tmp_path: Path) -> None:
    image = nib.load(str(examples / LABELS))
    flip = np.diag([-1.0, 1.0, 1.0, 1.0])
    flip[0, 3] = image.shape[0] - 1
    folder = write_masks(np.asanyarray(image.dataobj)[::-1], image.affine @ flip, tmp_path / "las")
    assert nib.aff2axcodes(nib.load(str(folder / "liver.nii.gz")).affine)[0] == "L"
    pd.testing.assert_frame_equal(cohort.measure(examples / CT, examples / LABELS, series_id="s"),
                                  cohort.measure(examples / CT, folder, series_id="s"))


def _int16(array: np.ndarray, affine: np.ndarray) -> nib.Nifti1Image:
    return nib.Nifti1Image(array.astype(np.int16), affine)


def _scaled(array: np.ndarray, affine: np.ndarray) -> nib.Nifti1Image:
    """uint8 voxels 0 and 2 with scl_slope 0.5: float 0 and 1 as read."""
    image = nib.Nifti1Image(array * np.uint8(2), affine)
    image.header.set_slope_inter(0.5, 0)
    return image


@pytest.mark.parametrize("stored", [_int16, _scaled], ids=["int16", "scl_slope"])
def test_a_mask_stored_otherwise_is_read_whole_and_measures_alike(examples: Path, folder: Path, stored,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Only uint8 masks without scaling are inflated chunk by chunk; nibabel reads any other."""
    array, affine = _mask(folder, "liver")
    nib.save(stored(array, affine), str(folder / "liver.nii.gz"))
    read_whole, read_voxels = [], mask_folders._read_voxels
    monkeypatch.setattr(mask_folders, "_read_voxels",
                        lambda name, *args: read_whole.append(name.path.name) or read_voxels(name, *args))
    pd.testing.assert_frame_equal(cohort.measure(examples / CT, examples / LABELS, series_id="s"),
                                  cohort.measure(examples / CT, folder, series_id="s"))
    assert read_whole == ["liver.nii.gz"]


def test_a_truncated_mask_is_refused_as_a_truncated_file(examples: Path, folder: Path) -> None:
    data = (folder / "liver.nii.gz").read_bytes()
    (folder / "liver.nii.gz").write_bytes(data[:len(data) // 2])
    message = _error(examples, folder)
    assert "(liver.nii.gz): cannot read NIfTI (" in message and message.endswith("corrupt or truncated?")


def test_a_mask_on_another_grid_is_refused(examples: Path, folder: Path) -> None:
    array, affine = _mask(folder, "liver")
    _save(folder, "liver", array[:, :, :20], affine)
    message = _error(examples, folder)
    assert "<labels of line 7> (liver.nii.gz): mask shape (122, 101, 20) does not match image shape" in message
    shifted = affine.copy()
    shifted[0, 3] += 5
    _save(folder, "liver", array, shifted)
    assert "(liver.nii.gz): mask affine does not match the image's (<path of line 7>)" in _error(examples, folder)


def test_a_mask_with_values_other_than_0_and_1_is_refused(examples: Path, folder: Path) -> None:
    array, affine = _mask(folder, "liver")
    _save(folder, "liver", array * 255, affine)
    assert "(liver.nii.gz): mask holds values other than 0 and 1 (255); a mask must be binary" in _error(examples, folder)


def test_overlapping_masks_are_refused_naming_both_and_the_voxels(examples: Path, folder: Path) -> None:
    liver, affine = _mask(folder, "liver")
    spleen, _ = _mask(folder, "spleen")
    assert liver.any() and spleen.any()
    spleen[np.nonzero(liver)[0][:40], np.nonzero(liver)[1][:40], np.nonzero(liver)[2][:40]] = 1
    _save(folder, "spleen", spleen, affine)
    message = _error(examples, folder)
    assert "<labels of line 7>: masks spleen and liver both claim 40 voxels" in message


def test_a_file_named_after_no_structure_is_refused(examples: Path, folder: Path) -> None:
    (folder / "liver.nii.gz").rename(folder / "livr.nii.gz")
    message = _error(examples, folder)
    assert "1 mask file named after no structure of the class map class_map_total_v2.csv (livr.nii.gz)" in message
    (folder / "livr.nii.gz").rename(folder / "liver.nii.gz")
    shutil.copy(folder / "liver.nii.gz", folder / "liver.nii")
    assert "structure liver has two mask files (liver.nii, liver.nii.gz)" in _error(examples, folder)


def test_a_missing_mask_is_refused_not_read_as_absent(examples: Path, folder: Path) -> None:
    """--roi_subset writes only the chosen masks: such a folder is refused, naming what is missing."""
    for structure in ("brain", "liver"):
        (folder / f"{structure}.nii.gz").unlink()
    message = _error(examples, folder)
    assert "no mask file for 2 of the 117 structures of class_map_total_v2.csv (liver, brain)" in message
    assert "--roi_subset" in message


def test_a_folder_without_masks_is_refused(examples: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "statistics.json").write_text("{}")
    assert "<labels of line 7>: folder holds no mask files (.nii, .nii.gz)" in _error(examples, tmp_path / "empty")


def test_fingerprint_and_content_cover_every_mask_by_name(folder: Path) -> None:
    """A changed, renamed, added or removed mask changes the content; a file that is not read
    (TotalSegmentator's statistics.json) changes only the fingerprint."""
    ct = folder.parent / "ct.nii.gz"
    ct.write_bytes(b"ct")
    sources = [(ct, None), (folder, None, True)]
    before = input_fingerprint(ct, (folder,)), input_content(sources)
    (folder / "statistics.json").write_text("{}")
    after = input_fingerprint(ct, (folder,)), input_content(sources)
    assert after[0] != before[0] and after[1] == before[1]
    contents = {before[1]}
    array, affine = _mask(folder, "liver")
    array[0, 0, 0] = 1 - array[0, 0, 0]
    _save(folder, "liver", array, affine)
    contents.add(input_content(sources))
    (folder / "brain.nii.gz").rename(folder / "brain_x.nii.gz")  # the same bytes, another name
    contents.add(input_content(sources))
    (folder / "brain_x.nii.gz").unlink()
    contents.add(input_content(sources))
    assert len(contents) == 4 and None not in contents


def test_a_rerun_notices_a_changed_mask(examples: Path, folder: Path, tmp_path: Path, prefect_server: str) -> None:
    shutil.copy(examples / CT, tmp_path / "ct.nii.gz")
    manifest = write_manifest(tmp_path / "scans.csv", [{"series_id": "masks", "path": "ct.nii.gz",
                                                        "labels": "segmentations", "age": 50, "sex": "F"}])
    out = tmp_path / "results"
    first = cohort_cli("run", "--manifest", str(manifest), "--out", str(out), "--workers", "1", api=prefect_server)
    assert first.returncode == 0, first.stderr
    pd.testing.assert_frame_equal(
        pd.read_parquet(out / "features").drop(columns="series_id"),
        cohort.measure(examples / CT, examples / LABELS, series_id="s").drop(columns="series_id"), check_dtype=False)
    array, affine = _mask(folder, "liver")
    array[tuple(index[0] for index in np.nonzero(array))] = 0
    _save(folder, "liver", array, affine)
    refused = cohort_cli("run", "--manifest", str(manifest), "--out", str(out), "--workers", "1", api=prefect_server)
    assert refused.returncode == 2, refused.stderr
    assert "input file contents (image, labels, fat or water): 1 series" in " ".join(refused.stderr.split())


def test_cohort_check_reads_mask_headers_only(examples: Path, folder: Path, tmp_path: Path) -> None:
    shutil.copy(examples / CT, tmp_path / "ct.nii.gz")
    shutil.copy(examples / "example_ct.nii.gz", tmp_path / "tall.nii.gz")
    (tmp_path / "partial").mkdir()
    for structure in ("liver", "spleen"):
        shutil.copy(folder / f"{structure}.nii.gz", tmp_path / "partial")
    manifest = write_manifest(tmp_path / "scans.csv", [
        {"series_id": "ok", "path": "ct.nii.gz", "labels": "segmentations"},
        {"series_id": "grid", "path": "tall.nii.gz", "labels": "segmentations"},
        {"series_id": "partial", "path": "ct.nii.gz", "labels": "partial"}])
    problems = {problem.series_id: problem.reason for problem in check_manifest(manifest).problems}
    assert set(problems) == {"grid", "partial"}
    assert problems["grid"].startswith("<labels of line 3> (spleen.nii.gz): mask shape (122, 101, 30) does not match "
                                       "image shape (122, 101, 112) (<path of line 3>) (and 116 more masks")
    assert "no mask file for 115 of the 117 structures" in problems["partial"]
