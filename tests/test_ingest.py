"""Ingest: header checks before reading, padding outside the scan field, no patient paths in errors."""

from __future__ import annotations

import gzip
import re
import time
import tracemalloc
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from cohort.config import IngestConfig, load_run_config
from cohort.errors import ConfigError, SeriesError
from cohort.ingest import InputName, align_labels, load_ct, load_label_nifti
from cohort.ingest.padding import AIR_HU
from cohort.measurement import measure_structures

CT, LABELS, DICOM = "example_ct_sm.nii.gz", "example_seg_fast.nii.gz", "example_ct_dicom"
N_LABELS = 118


def _error(source, **kwargs) -> str:
    with pytest.raises(SeriesError) as caught:
        load_ct(source, **kwargs)
    return str(caught.value)


def _hostile_header(target: Path, shape: tuple[int, int, int]) -> Path:
    """A real small NIfTI written by nibabel whose header is then rewritten to claim ``shape``."""
    small = target.with_name("small.nii")
    nib.save(nib.Nifti1Image(np.zeros((16, 16, 16), np.int16), np.eye(4)), str(small))
    with small.open("rb") as handle:
        header = nib.Nifti1Header.from_fileobj(handle)
    header.set_data_shape(shape)
    content = header.binaryblock + small.read_bytes()[len(header.binaryblock):]
    target.write_bytes(gzip.compress(content) if target.name.endswith(".gz") else content)
    return target


def _fails_fast(source: Path) -> str:
    tracemalloc.start()
    started = time.perf_counter()
    try:
        message = _error(source)
        seconds = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert seconds < 2.0, seconds
    assert peak < 20 * 2**20, peak
    return message


def test_truncated_nii_claiming_2048_cubed_fails_fast_without_reading(tmp_path: Path) -> None:
    message = _fails_fast(_hostile_header(tmp_path / "huge.nii", (2048, 2048, 2048)))
    assert message.startswith("huge.nii: file is ")
    assert "header says 17,179,869,536" in message and "2048x2048x2048" in message and "truncated?" in message


@pytest.mark.parametrize("side", [2048, 4000])
def test_gzipped_header_claiming_too_many_voxels_fails_fast(tmp_path: Path, side: int) -> None:
    message = _fails_fast(_hostile_header(tmp_path / "huge.nii.gz", (side, side, side)))
    assert f"{side}x{side}x{side} = {side**3:,} voxels" in message
    assert "ingest.max_voxels = 1,500,000,000" in message


def test_voxel_limit_comes_from_the_run_config(tmp_path: Path, examples: Path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text("ingest:\n  max_voxels: 300000\n")
    limits = load_run_config(config).ingest
    assert limits == IngestConfig(max_voxels=300_000)
    assert load_run_config().ingest == IngestConfig()
    message = _error(examples / CT, limits=limits)
    assert "122x101x30 = 369,660 voxels" in message and "ingest.max_voxels = 300,000" in message
    with pytest.raises(SeriesError, match="ingest.max_voxels"):
        load_label_nifti(examples / LABELS, limits=limits)
    assert load_ct(examples / CT, limits=IngestConfig(max_voxels=369_660)).hu.shape == (122, 101, 30)
    config.write_text("ingest:\n  max_voxels: 0\n")
    with pytest.raises(ConfigError, match="ingest.max_voxels"):
        load_run_config(config)


def test_voxel_limit_applies_to_a_dicom_series(examples: Path) -> None:
    series_voxels = 512 * 512 * 20
    message = _error(examples / "example_ct_dicom", limits=IngestConfig(max_voxels=series_voxels - 1))
    assert "512x512x20" in message and "ingest.max_voxels" in message
    assert load_ct(examples / "example_ct_dicom", limits=IngestConfig(max_voxels=series_voxels)).hu.shape == (512, 512, 20)


def _outside_circle(shape: tuple[int, ...], radius: float) -> np.ndarray:
    """(x, y, z) mask of the voxels outside an in-plane circle centred in the slice."""
    x, y = np.ogrid[: shape[0], : shape[1]]
    outside = (x - (shape[0] - 1) / 2) ** 2 + (y - (shape[1] - 1) / 2) ** 2 > radius**2
    return np.broadcast_to(outside[:, :, None], shape)


def test_ct_padded_outside_a_circular_field_is_accepted_and_measures_the_same(tmp_path: Path,
                                                                               examples: Path) -> None:
    image = nib.load(str(examples / CT))
    original = np.asanyarray(image.dataobj)
    outside = _outside_circle(original.shape, radius=45)
    padded_path = tmp_path / "padded.nii.gz"
    nib.save(nib.Nifti1Image(np.where(outside, np.int16(-32768), original), image.affine), str(padded_path))

    padded = load_ct(padded_path)
    assert padded.hu.dtype == np.int16
    assert np.all(padded.hu[outside] == AIR_HU)
    assert np.array_equal(padded.hu[~outside], original[~outside])

    labels = load_label_nifti(examples / LABELS).labels
    inside = np.setdiff1d(np.unique(labels), np.unique(labels[outside]))
    assert len(inside) >= 5
    reference = measure_structures(load_ct(examples / CT).hu, labels, padded.grid.voxel_volume_ml, N_LABELS)
    measured = measure_structures(padded.hu, labels, padded.grid.voxel_volume_ml, N_LABELS)
    for statistic in ("n_voxels", "mean_hu", "std_hu", "p05_hu", "median_hu", "p95_hu"):
        assert np.array_equal(getattr(measured, statistic)[inside], getattr(reference, statistic)[inside])


def test_padding_does_not_make_an_mr_look_like_ct(tmp_path: Path, examples: Path) -> None:
    image = nib.load(str(examples / CT))
    mr_like = np.asanyarray(image.dataobj).astype(np.int16) + 1100
    nib.save(nib.Nifti1Image(mr_like, image.affine), str(tmp_path / "mr.nii.gz"))
    padded = np.where(_outside_circle(mr_like.shape, radius=45), np.int16(-32768), mr_like)
    nib.save(nib.Nifti1Image(padded, image.affine), str(tmp_path / "mr_padded.nii.gz"))
    for name in ("mr.nii.gz", "mr_padded.nii.gz"):
        message = _error(tmp_path / name)
        assert "have no air" in message and "not a CT" in message, message
    nib.save(nib.Nifti1Image(np.full((8, 8, 8), -32768, np.int16), image.affine), str(tmp_path / "empty.nii.gz"))
    assert "every voxel is padding" in _error(tmp_path / "empty.nii.gz")


def _write_ct_series(folder: Path, stored: np.ndarray, padding_tags: dict[str, int],
                     intercepts: tuple[int, ...] = (-1024,), modality: str = "CT") -> Path:
    """A CT series as real DICOM files: ``stored`` is (z, y, x) int16; slice k has RescaleIntercept
    ``intercepts[k % len(intercepts)]`` (``modality``: the Modality tag)."""
    folder.mkdir(parents=True)
    study, series = generate_uid(), generate_uid()
    for k, pixels in enumerate(stored):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.InstanceNumber = modality, study, series, k + 1
        ds.ImagePositionPatient, ds.ImageOrientationPatient = [0.0, 0.0, 2.0 * k], [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing, ds.SliceThickness = [1.0, 1.0], 2.0
        ds.Rows, ds.Columns = pixels.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = intercepts[k % len(intercepts)], 1
        for key, value in padding_tags.items():
            setattr(ds, key, value)
        ds.PixelData = pixels.astype("<i2").tobytes()
        ds.save_as(folder / f"IM{k:04d}.dcm", enforce_file_format=True)
    return folder


def test_dicom_pixel_padding_range_is_masked(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    hu = np.full((8, 48, 48), -1000, np.int16)  # (z, y, x): air...
    hu[:, 10:38, 8:40] = 40 + rng.integers(-20, 20, (8, 28, 32))  # ...a body...
    hu[2:6, 18:30, 18:30] = 60 + rng.integers(-30, 30, (4, 12, 12))  # ...and an organ in it
    outside = np.transpose(_outside_circle((48, 48, 8), radius=23), (2, 1, 0))
    stored = np.where(outside, np.int16(-31000), hu + 1024).astype(np.int16)
    stored[:, :3, :3] = -32768  # padding values vary within the declared range
    tags = {"PixelPaddingValue": -32768, "PixelPaddingRangeLimit": -30000}
    volume = load_ct(_write_ct_series(tmp_path / "declared", stored, tags))
    undeclared = _error(_write_ct_series(tmp_path / "undeclared", stored, {}))
    assert "not a CT" in undeclared  # only the header says -31000 is padding too

    hu_xyz, outside_xyz = np.transpose(hu, (2, 1, 0)), np.transpose(outside, (2, 1, 0))
    assert np.all(volume.hu[outside_xyz] == AIR_HU)
    assert np.array_equal(volume.hu[~outside_xyz], hu_xyz[~outside_xyz])
    organ = np.zeros(hu_xyz.shape, np.uint8)
    organ[18:30, 18:30, 2:6] = 1
    measured = measure_structures(volume.hu, organ, volume.grid.voxel_volume_ml, 2)
    assert measured.mean_hu[1] == pytest.approx(hu_xyz[organ == 1].mean())
    assert measured.p05_hu[1] == pytest.approx(np.percentile(hu_xyz[organ == 1], 5))


def test_dicom_pixel_padding_is_masked_on_slices_of_another_rescale(tmp_path: Path) -> None:
    """PixelPaddingValue is a stored value: with per-slice RescaleIntercept it is another HU value on
    every other slice; masked by the first slice's rescale only, -2000 HU stayed in those slices."""
    hu = np.full((6, 32, 32), -1000, np.int16)
    hu[:, 8:24, 8:24] = 40
    outside = np.zeros(hu.shape, bool)
    outside[:, :4, :] = True
    intercepts = (-1024, -1000)
    stored = np.stack([np.where(outside[k], -1000, hu[k] - intercepts[k % 2]) for k in range(6)]).astype(np.int16)
    volume = load_ct(_write_ct_series(tmp_path / "series", stored, {"PixelPaddingValue": -1000}, intercepts))
    outside_xyz = np.transpose(outside, (2, 1, 0))
    assert np.all(volume.hu[outside_xyz] == AIR_HU), np.unique(volume.hu[outside_xyz])
    assert np.array_equal(volume.hu[~outside_xyz], np.transpose(hu, (2, 1, 0))[~outside_xyz])


def test_an_mr_series_declaring_padding_gets_no_signal_there_not_ct_air(tmp_path: Path) -> None:
    """An MR series may declare PixelPaddingValue 0 (its background): those voxels become 0, not
    -1024 HU, which fed the MR network and every structure's intensities a CT's air value."""
    signal = np.zeros((6, 32, 32), np.int16)
    signal[:, 8:24, 8:24] = 300 + np.arange(16, dtype=np.int16)
    folder = _write_ct_series(tmp_path / "mr", signal, {"PixelPaddingValue": 0}, (0,), modality="MR")
    volume = load_ct(folder, modality="MR")
    assert volume.hu.min() == 0 and np.array_equal(volume.hu, np.transpose(signal, (2, 1, 0)))
    organ = np.zeros(volume.hu.shape, np.uint8)
    organ[6:26, 6:26, :] = 1  # reaches into the background
    measured = measure_structures(volume.hu, organ, volume.grid.voxel_volume_ml, 2)
    assert measured.mean_hu[1] == pytest.approx(np.transpose(signal, (2, 1, 0))[organ == 1].mean())


def test_an_mr_padding_value_of_no_signal_is_the_background_not_an_edge_of_the_field(tmp_path: Path) -> None:
    """An MR declaring PixelPaddingValue 0 declares its background (air has no signal): every structure
    at the body's surface (subcutaneous fat, the outer muscles) was flagged fov_truncated as if cut by
    a circular CT field. A padding value the image also holds as signal-free air marks no edge."""
    signal = np.zeros((10, 32, 32), np.int16)
    signal[:, 8:24, 8:24] = 300 + np.arange(16, dtype=np.int16)
    folder = _write_ct_series(tmp_path / "mr", signal, {"PixelPaddingValue": 0}, (0,), modality="MR")
    volume = load_ct(folder, modality="MR")
    assert volume.outside_fov is None and volume.hu.min() == 0
    surface = np.zeros(volume.hu.shape, np.uint8)
    surface[7:25, 7:25, 4:6] = 1  # at the body's surface, far from the volume's faces
    measured = measure_structures(volume.hu, surface, volume.grid.voxel_volume_ml, 2, 3, volume.outside_fov)
    assert not measured.touches_border[1]
    ct_padding = np.where(signal > 0, signal, -2000).astype(np.int16)  # a value no voxel of the image holds
    ct = load_ct(_write_ct_series(tmp_path / "ct", ct_padding - 1024 * (ct_padding > 0), {"PixelPaddingValue": -2000}))
    assert ct.outside_fov is not None and ct.outside_fov.sum() == (signal == 0).sum()


PATIENT = "DOE_JOHN_12345"


def _patient_inputs(folder: Path, examples: Path) -> dict[str, Path]:
    """Broken inputs, each in a folder named like a patient."""
    folder.mkdir(parents=True)
    image = nib.load(str(examples / CT))
    mr_like = np.asanyarray(image.dataobj).astype(np.int16) + 1100
    nib.save(nib.Nifti1Image(mr_like, image.affine), str(folder / "ct.nii.gz"))
    (folder / "garbage.nii.gz").write_bytes(gzip.compress(b"not a nifti file" * 20))
    (folder / "dicom").mkdir()
    return {"not_ct": folder / "ct.nii.gz", "garbage": folder / "garbage.nii.gz",
            "truncated": _hostile_header(folder / "huge.nii", (2048, 2048, 2048)),
            "missing": folder / "missing.nii.gz", "empty_dicom": folder / "dicom",
            "other": folder / "ct.mha"}


def test_errors_do_not_show_patient_folders(tmp_path: Path, examples: Path) -> None:
    """Manifest rows are named by column and line, even when the manifest sits above the export
    (``site/scans.csv`` and ``site/export/DOE_JOHN_12345/``, as ``cohort manifest`` writes it)."""
    inputs = _patient_inputs(tmp_path / "export" / PATIENT, examples)
    for line, path in enumerate(inputs.values(), start=2):
        message = _error(InputName.in_manifest(path, line))
        assert message.startswith(f"<path of line {line}>: "), message
        assert PATIENT not in message and str(tmp_path) not in message, message
    for path in inputs.values():  # without a manifest (library use): only the last component
        message = _error(path)
        assert PATIENT not in message and message.startswith(f"{path.name}: "), message

    labels = nib.load(str(examples / LABELS))
    cropped = tmp_path / "export" / PATIENT / "labels.nii.gz"
    nib.save(nib.Nifti1Image(np.asanyarray(labels.dataobj)[:, :, :20], labels.affine), str(cropped))
    label_map = load_label_nifti(InputName.in_manifest(cropped, 7, column="labels"))
    with pytest.raises(SeriesError) as caught:
        align_labels(load_ct(examples / CT), label_map)
    assert str(caught.value).startswith("<labels of line 7>: label map shape") and PATIENT not in str(caught.value)


def test_a_damaged_dicom_file_is_named_by_its_place_not_its_name(tmp_path: Path, examples: Path) -> None:
    """Exports name DICOM files by their SOP instance UID (the shipped example does), and some
    vendors' UIDs carry the date of the scan: errors say which file by its place in the series."""
    folder = tmp_path / "export" / PATIENT / "series2"
    folder.mkdir(parents=True)
    series_uid = generate_uid()
    for source in sorted((examples / DICOM).iterdir()):  # the example's UIDs were removed: give it some
        dataset = pydicom.dcmread(source)
        dataset.SeriesInstanceUID, dataset.SOPInstanceUID = series_uid, generate_uid()
        dataset.save_as(folder / f"CT.{dataset.SOPInstanceUID}")
    files = sorted(folder.iterdir())
    damaged = files[len(files) // 2]
    damaged.write_bytes(damaged.read_bytes()[:-4000])
    message = _error(InputName.in_manifest(folder, 4), series_uid=series_uid)
    assert re.match(rf"<path of line 4> \(slice \d+ of {len(files)}\): cannot read DICOM pixels", message), message
    assert damaged.name not in message and PATIENT not in message and str(tmp_path) not in message, message


def test_a_damaged_end_slice_is_not_silently_dropped_from_a_folder_series(tmp_path: Path, examples: Path) -> None:
    """Without a series_uid the folder's series is grouped by GDCM, which leaves out a file it cannot
    read: a damaged top or bottom slice left no gap, and the volume came out one slice short."""
    folder = tmp_path / "export" / PATIENT / "series"
    folder.mkdir(parents=True)
    series_uid = generate_uid()
    for source in sorted((examples / DICOM).iterdir()):
        dataset = pydicom.dcmread(source)
        dataset.SeriesInstanceUID, dataset.SOPInstanceUID = series_uid, generate_uid()
        dataset.save_as(folder / f"CT.{dataset.SOPInstanceUID}")
    (folder / "notes.txt").write_text("not DICOM, not the series'")
    top = max(folder.glob("CT.*"), key=lambda file: float(pydicom.dcmread(file).ImagePositionPatient[2]))
    top.write_bytes(top.read_bytes()[:-4000])
    message = _error(InputName.in_manifest(folder, 4))
    assert message.startswith("<path of line 4> (slice 20 of 20): cannot read DICOM pixels"), message
    assert top.name not in message and PATIENT not in message and str(tmp_path) not in message, message


@pytest.mark.parametrize("scaled", [False, True])
def test_gzip_read_by_isal_equals_nibabels_own(tmp_path: Path, examples: Path, monkeypatch, scaled: bool) -> None:
    """ISA-L's stream gives the very voxels (scaling applied) that nibabel's gzip gives."""
    pytest.importorskip("isal")
    from cohort.ingest import nifti

    source = examples / CT
    if scaled:
        image = nib.load(str(source))
        rescaled = nib.Nifti1Image(np.asanyarray(image.dataobj).astype(np.int16), image.affine)
        rescaled.header.set_slope_inter(0.5, -10.0)
        source = tmp_path / "scaled.nii.gz"
        nib.save(rescaled, source)
    fast, fast_affine = nifti.read_nifti_array(source)
    monkeypatch.setattr(nifti, "igzip", None)
    slow, slow_affine = nifti.read_nifti_array(source)
    assert fast.dtype == slow.dtype and (fast.dtype.kind == "f") is scaled
    np.testing.assert_array_equal(fast, slow)
    np.testing.assert_array_equal(fast_affine, slow_affine)


def test_unexpected_errors_name_inputs_by_their_line(tmp_path: Path) -> None:
    """An unforeseen error (an ``OSError`` names its file) is stored without the row's paths."""
    from cohort.manifest import load_manifest
    from cohort.pipeline import scrub_input_paths

    export = tmp_path / "export" / PATIENT
    export.mkdir(parents=True)
    (tmp_path / "scans.csv").write_text(f"series_id,path,labels\ns,export/{PATIENT}/ct.nii.gz,export/{PATIENT}/seg.nii.gz\n")
    (spec,) = load_manifest(tmp_path / "scans.csv")
    text = f"PermissionError: [Errno 13] Permission denied: '{export / 'seg.nii.gz'}' (read from {export / 'ct.nii.gz'})"
    assert scrub_input_paths(spec, text) == ("PermissionError: [Errno 13] Permission denied: '<labels of line 2>' "
                                             "(read from <path of line 2>)")
