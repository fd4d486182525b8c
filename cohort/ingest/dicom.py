"""Read one DICOM CT series: voxels (HU, x y z order), RAS affine, declared padding.

The geometry is never taken on trust. Every file's header (pydicom, pixels skipped) gives its
position, orientation, size and pixel spacing; :func:`slice_geometry` sorts the slices by
their position along the slice normal (not by InstanceNumber) and refuses, with a reason that
says so, what would make a volume silently wrong:

- slices of different size, pixel spacing or orientation;
- orientation vectors that are not orthogonal unit vectors;
- gantry tilt (slices stacked at an angle to their normal): refused, not resampled;
- two slices at one position, a missing slice (a gap above ``GAP_FACTOR`` x the median
  spacing) or uneven spacing (a step off the median by more than ``SPACING_TOLERANCE``);
- multi-frame (enhanced) images: refused (convert them with dcm2niix first);
- (:func:`series_geometry`) slices without RescaleSlope/RescaleIntercept beside slices with: their
  values would be in stored units, the others' in HU;
- (:func:`series_origin`) slices of several studies or frames of reference under one series UID:
  two scans mixed into one volume.

A series whose ``Modality`` tag names the other modality than the model's (MR for a CT model,
CT for an MR model) is refused before a voxel is read; other values (``OT`` after
reformatting, missing) leave the judgement to the intensity check (``cohort.ingest.checks``).

Pixels are read file by file with SimpleITK/GDCM (which decodes compressed transfer syntaxes),
each slice with its own RescaleSlope/RescaleIntercept, and stacked in the sorted order; the
affine is built from the headers. The series is the single series of a folder (GDCM,
non-recursive, plus the images of that series GDCM skips, truncated or damaged: they are refused
by their place in the series, never silently left out) or, when a ``series_uid`` is given, every
file under the folder, recursively, whose SeriesInstanceUID is that one: so a folder holding
several series, or a series split over sub-folders, is read exactly (a worker remembers which
series each file of the folder is of, :mod:`cohort.ingest.series_of_files`, so that its later rows
of that folder read only their own headers). Only voxels, geometry and
digests of the study and frame of reference UIDs (:class:`~cohort.ingest.volume.ScanOrigin`) leave
this module (patient data stays).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.uid import UID

from cohort.config import IngestConfig
from cohort.errors import SeriesError
from cohort.ingest.limits import check_voxel_count
from cohort.ingest.names import InputName
from cohort.ingest.padding import Padding, declared_padding, padding_mask
from cohort.ingest.series_of_files import SERIES_OF_FILES, FolderSeries, crawled_files_under, file_identity
from cohort.ingest.volume import ScanOrigin

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
ENCAPSULATED_END = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"  # sequence delimitation item closing compressed pixels
GEOMETRY_TAGS = ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows", "Columns",
                 "NumberOfFrames")
PHILIPS_CREATOR, PHILIPS_SCALE_SLOPE = 0x20050010, 0x2005100E  # "Philips MR Imaging DD 001", its scale slope
PHILIPS_MR_BLOCK = "Philips MR Imaging DD 001"
HEADER_TAGS = GEOMETRY_TAGS + ("Modality", "SeriesInstanceUID", "SOPInstanceUID", "StudyInstanceUID",
                               "FrameOfReferenceUID", "PixelRepresentation", "BitsAllocated",
                               "RescaleSlope", "RescaleIntercept", "PixelPaddingValue", "PixelPaddingRangeLimit",
                               "SamplesPerPixel", PHILIPS_CREATOR, PHILIPS_SCALE_SLOPE)
GAP_FACTOR = 1.5  # a step this many times the median spacing means missing slices
SPACING_TOLERANCE = 0.05  # relative deviation of a step from the median spacing still called even
SPACING_TOLERANCE_MM = 0.01  # absolute floor of that tolerance (positions are rounded in headers)
ORTHOGONALITY_TOLERANCE = 1e-3  # of the dot product / norms of the orientation vectors
OTHER_MODALITY = {"CT": ("MR", "an MR model, e.g. --model total_mr"), "MR": ("CT", "a CT model, e.g. --model fast")}
TILT_TOLERANCE_DEG = 0.1  # angle between the slice normal and the line through the slice positions
SAME_POSITION_MM = 1e-3
UNREADABLE = (pydicom.errors.InvalidDicomError, OSError, ValueError, EOFError, TypeError, KeyError)


class GeometryProblem(ValueError):
    """Why a set of slices is not one evenly spaced 3-D volume (a one-line reason)."""


@dataclass(frozen=True)
class SliceHeader:
    """The geometry of one image file, in DICOM's patient coordinates (LPS, mm)."""

    file: str
    position: tuple[float, float, float]
    orientation: tuple[float, float, float, float, float, float]
    rows: int
    columns: int
    pixel_spacing: tuple[float, float]  # between rows, between columns
    frames: int = 1

    @classmethod
    def of(cls, dataset: pydicom.Dataset, file: str) -> SliceHeader:
        """The geometry fields of ``dataset``; :class:`GeometryProblem` when one is missing."""
        missing = [tag for tag in GEOMETRY_TAGS[:5] if dataset.get(tag) in (None, "")]
        frames = int(dataset.get("NumberOfFrames") or 1)
        if missing and frames > 1:
            raise GeometryProblem(_multi_frame_reason(frames))
        if missing:
            raise GeometryProblem(f"image has no {'/'.join(missing)}; not a cross-sectional slice")
        try:
            return cls(file=file, position=tuple(float(v) for v in dataset.ImagePositionPatient),
                       orientation=tuple(float(v) for v in dataset.ImageOrientationPatient),
                       rows=int(dataset.Rows), columns=int(dataset.Columns),
                       pixel_spacing=tuple(float(v) for v in dataset.PixelSpacing), frames=frames)
        except (TypeError, ValueError):
            raise GeometryProblem("image position, orientation or pixel spacing is not numeric") from None


@dataclass(frozen=True)
class SliceGeometry:
    """An evenly spaced stack: files in order along the normal, voxel (x, y, z) -> RAS affine."""

    files: tuple[str, ...]
    shape: tuple[int, int, int]
    affine: np.ndarray
    slice_spacing_mm: float

    @property
    def z_coverage_mm(self) -> float:
        """Distance from the first to the last slice centre plus one spacing (the scanned length)."""
        return self.slice_spacing_mm * self.shape[2]


def slice_geometry(slices: Sequence[SliceHeader]) -> SliceGeometry:
    """Sort ``slices`` along their normal and check they form one volume (see the module doc).

    >>> s = [SliceHeader(f"{k}", (0.0, 0.0, 2.0 * k), (1, 0, 0, 0, 1, 0), 4, 4, (0.5, 0.5)) for k in (2, 0, 1, 4)]
    >>> g = slice_geometry(s[:3]); g.files, g.shape, g.slice_spacing_mm
    (('0', '1', '2'), (4, 4, 3), 2.0)
    >>> slice_geometry(s)
    Traceback (most recent call last):
    cohort.ingest.dicom.GeometryProblem: missing slice(s): a gap of 4 mm between positions 4 and 8 mm where the spacing is 2 mm
    """
    frames = max((s.frames for s in slices), default=1)
    if frames > 1:  # before the count: an enhanced CT is one file holding every slice
        raise GeometryProblem(_multi_frame_reason(frames))
    if len(slices) < 2:
        raise GeometryProblem(f"series has {len(slices)} slice(s); a 3-D volume is needed")
    for field, what in (("rows", "size"), ("columns", "size"), ("pixel_spacing", "pixel spacing")):
        values = sorted({getattr(s, field) for s in slices})
        if len(values) > 1:
            shown = sorted({(s.rows, s.columns) if what == "size" else s.pixel_spacing for s in slices})
            unit = "rows x columns" if what == "size" else "mm"
            raise GeometryProblem(f"slices differ in {what} ({unit}: {', '.join(_fmt(v) for v in shown[:3])}); "
                                  "one series must have one grid")
    orientations = np.array([s.orientation for s in slices], dtype=float)
    if np.abs(orientations - orientations[0]).max() > ORTHOGONALITY_TOLERANCE:
        raise GeometryProblem("slices differ in orientation (ImageOrientationPatient); one series must have one")
    row, column = orientations[0, :3], orientations[0, 3:]
    _check_orthonormal(row, column)
    normal = np.cross(row, column)
    positions = np.array([s.position for s in slices], dtype=float)
    order = np.argsort(positions @ normal, kind="stable")
    positions = positions[order]
    steps = np.diff(positions @ normal)
    _check_spacing(steps, positions @ normal)
    stack = positions[-1] - positions[0]
    tilt = np.degrees(np.arccos(min(1.0, abs(stack @ normal) / np.linalg.norm(stack))))
    if tilt > TILT_TOLERANCE_DEG:
        raise GeometryProblem(f"gantry tilt: slices are stacked at {tilt:.1f} deg to their normal; refused "
                              "(resample to an untilted grid first, e.g. dcm2niix writes a _Tilt_ volume)")
    step = stack / (len(slices) - 1)
    lps = np.column_stack([row * slices[0].pixel_spacing[1], column * slices[0].pixel_spacing[0], step])
    affine = np.eye(4)
    affine[:3, :3] = LPS_TO_RAS @ lps
    affine[:3, 3] = LPS_TO_RAS @ positions[0]
    return SliceGeometry(files=tuple(slices[i].file for i in order),
                         shape=(slices[0].columns, slices[0].rows, len(slices)), affine=affine,
                         slice_spacing_mm=float(np.linalg.norm(step)))


def _multi_frame_reason(frames: int) -> str:
    return (f"multi-frame (enhanced) image with {frames} frames in one file; cohort reads single-frame "
            "series only (convert it with dcm2niix first)")


def _check_orthonormal(row: np.ndarray, column: np.ndarray) -> None:
    norms = np.linalg.norm(row), np.linalg.norm(column)
    cosine = float(row @ column / (norms[0] * norms[1])) if min(norms) > 0 else 1.0
    if abs(cosine) > ORTHOGONALITY_TOLERANCE or max(abs(n - 1) for n in norms) > ORTHOGONALITY_TOLERANCE:
        angle = np.degrees(np.arccos(np.clip(cosine, -1, 1)))
        raise GeometryProblem(f"orientation vectors are not orthogonal unit vectors (at {angle:.1f} deg); "
                              "a sheared image is refused")


def _check_spacing(steps: np.ndarray, along: np.ndarray) -> None:
    same = np.flatnonzero(steps < SAME_POSITION_MM)
    if len(same):
        n_slices = len(set(same) | set(same + 1))
        shared = "one position" if n_slices == len(same) + 1 else f"{n_slices - len(same)} positions"
        raise GeometryProblem(f"{n_slices} slices share {shared} (duplicated slices or two series with one UID)")
    median = float(np.median(steps))
    widest = int(np.argmax(steps))
    if steps[widest] > GAP_FACTOR * median:
        raise GeometryProblem(f"missing slice(s): a gap of {steps[widest]:.3g} mm between positions "
                              f"{along[widest]:.4g} and {along[widest + 1]:.4g} mm where the spacing is {median:.3g} mm")
    if np.abs(steps - median).max() > max(SPACING_TOLERANCE * median, SPACING_TOLERANCE_MM):
        raise GeometryProblem(f"uneven slice spacing ({steps.min():.3g} to {steps.max():.3g} mm); "
                              "an evenly spaced series is needed")


def _fmt(value: tuple) -> str:
    return "x".join(f"{v:g}" for v in value)


@dataclass(frozen=True)
class DicomSeries:
    """What :func:`read_ct_dicom` reads: voxels (x, y, z), RAS affine, declared padding (a mask,
    None when no slice declares any), where the series was acquired and the files it was read
    from, in slice order (found once: their digest needs them too)."""

    values: np.ndarray
    affine: np.ndarray
    padded: np.ndarray | None
    origin: ScanOrigin
    files: tuple[str, ...]
    precise_scales: frozenset[float] = frozenset()


def read_ct_dicom(source: Path | InputName, limits: IngestConfig = IngestConfig(),
                  series_uid: str | None = None, modality: str | None = None) -> DicomSeries:
    """A DICOM series: the single series of a folder, or series ``series_uid`` found anywhere under
    the folder. ``modality`` is the model's: a series tagged as the other one is refused
    (:func:`check_declared_modality`)."""
    name = InputName.of(source)
    headers, geometry = series_geometry(name, series_uid)
    if modality is not None:
        check_declared_modality(name, headers.values(), modality)
    check_voxel_count(name, geometry.shape, limits)
    count = len(geometry.files)
    reader = _slice_reader()
    values = _stacked([_read_slice(reader, name, name.child(file, f"slice {index} of {count}"))
                       for index, file in enumerate(geometry.files, 1)])
    return DicomSeries(values, geometry.affine, _declared_padding_mask(values, [headers[file] for file in geometry.files]),
                       series_origin(headers.values()), geometry.files, series_precise_scales(headers.values()))


def series_precise_scales(headers: Iterable[pydicom.Dataset]) -> frozenset[float]:
    """The distinct :func:`philips_precise_scale` factors of a series' slices (empty: none has one)."""
    return frozenset(scale for header in headers if (scale := philips_precise_scale(header)) is not None)


def philips_precise_scale(header: pydicom.Dataset) -> float | None:
    """RescaleSlope x Philips' private scale slope (2005,100E) of an MR slice, or None where the slice
    has no such slope. Philips scales each image's stored values for display; its precise values
    are the display values divided by this factor, so display values of two images (a Dixon fat
    and water pair) or of two slices are comparable only where the factor is the same."""
    creator = header.get(PHILIPS_CREATOR)
    slope = header.get(PHILIPS_SCALE_SLOPE)
    if creator is None or slope is None or str(creator.value).strip() != PHILIPS_MR_BLOCK:
        return None
    value = slope.value
    if isinstance(value, bytes):  # implicit VR: the element is read without its VR (FL, 4 bytes)
        value = np.frombuffer(value[:4], dtype="<f4")[0] if len(value) >= 4 else None
    if value is None or not np.isfinite(float(value)) or float(value) == 0:
        return None
    return float(header.get("RescaleSlope") or 1.0) * float(value)


def _declared_padding_mask(values: np.ndarray, headers: Sequence[pydicom.Dataset]) -> np.ndarray | None:
    """The voxels each slice declares padding, by its own header: a padding value is a stored
    value, so with per-slice RescaleSlope/RescaleIntercept it is another HU value on every slice
    (the first slice's HU value would miss the padding of the others). None when no slice declares any."""
    paddings = [_declared_padding(header) for header in headers]
    if all(padding is None for padding in paddings):
        return None
    mask = np.zeros(values.shape, dtype=bool)
    for k, padding in enumerate(paddings):
        padded = padding_mask(values[..., k], padding)
        if padded is not None:
            mask[..., k] = padded
    return mask


def truncated_pixel_data(header: pydicom.Dataset, handle: BinaryIO) -> str | None:
    """Why the pixel data after ``header`` (read from the open file ``handle``) cannot be whole, or
    None. Cheap, from the file's size and, when compressed, its last bytes: `cohort manifest` and
    `cohort check` judge files by their headers, and a file cut short (a copy interrupted) has a
    whole header."""
    size = os.fstat(handle.fileno()).st_size
    if header.get("Rows") is None:
        return None  # not an image (a report, a DICOMDIR): its series is judged as a whole
    syntax = UID(getattr(header.file_meta, "TransferSyntaxUID", "") or "1.2.840.10008.1.2")
    if syntax.is_compressed:
        handle.seek(max(0, size - len(ENCAPSULATED_END)))
        return None if handle.read() == ENCAPSULATED_END else "truncated (compressed pixel data has no end)"
    frames = int(header.get("NumberOfFrames") or 1)
    needed = (int(header.Rows) * int(header.get("Columns") or 0) * int(header.get("BitsAllocated") or 16) // 8
              * int(header.get("SamplesPerPixel") or 1) * frames)
    return None if size >= needed else f"truncated ({size} bytes, pixel data alone needs {needed})"


def check_declared_modality(name: InputName, headers: Iterable[pydicom.Dataset], modality: str) -> None:
    """Refuse a series whose ``Modality`` tag is the other of CT and MR than the model's ``modality``."""
    if modality not in OTHER_MODALITY:
        return
    other, suggestion = OTHER_MODALITY[modality]
    declared = {str(header.get("Modality", "")).strip().upper() for header in headers}
    if other in declared:
        raise SeriesError(f"{name}: its DICOM Modality is {other}, and the model is for {modality} (use {suggestion})")


def series_geometry(source: Path | InputName,
                    series_uid: str | None = None) -> tuple[dict[str, pydicom.Dataset], SliceGeometry]:
    """The series' headers (file -> header, pixels not read) and checked geometry: everything
    :func:`read_ct_dicom` refuses for, found without reading a voxel (``cohort check`` can use it)."""
    name = InputName.of(source)
    if not name.path.exists():
        raise SeriesError(f"{name}: folder not found")
    headers = _series_headers(name, series_uid)
    try:
        geometry = slice_geometry([SliceHeader.of(header, file) for file, header in headers.items()])
        check_rescale_declared([declares_rescale(headers[file]) for file in geometry.files])
        series_origin(headers.values())
    except GeometryProblem as problem:
        raise SeriesError(f"{name}: {problem}") from None
    return headers, geometry


def series_origin(headers: Iterable[pydicom.Dataset]) -> ScanOrigin:
    """The study and frame of reference of a series' slices; :class:`GeometryProblem` when its
    slices name several of either (two scans under one SeriesInstanceUID: one volume of two
    patient positions). Slices without the UID are judged by the others."""
    headers = list(headers)
    studies, frames = ({str(header.get(tag) or "").strip() for header in headers} - {""}
                       for tag in ("StudyInstanceUID", "FrameOfReferenceUID"))
    check_one_scan(studies, frames)
    return ScanOrigin.of(next(iter(studies), ""), next(iter(frames), ""))


def check_one_scan(studies: set[str], frames: set[str]) -> None:
    """:class:`GeometryProblem` when a series' slices name several ``studies`` or ``frames`` (their
    StudyInstanceUIDs and FrameOfReferenceUIDs, or keys standing for them; blanks left out)."""
    for values, what, tag in ((studies, "studies", "StudyInstanceUID"),
                              (frames, "frames of reference", "FrameOfReferenceUID")):
        if len(values) > 1:
            raise GeometryProblem(f"slices of {len(values)} {what} ({tag}) under one series UID: two scans "
                                  "mixed into one volume; refused")


def declares_rescale(header: pydicom.Dataset) -> bool:
    """Whether a slice's header has RescaleSlope or RescaleIntercept."""
    return header.get("RescaleSlope") is not None or header.get("RescaleIntercept") is not None


def check_rescale_declared(declared: Sequence[bool]) -> None:
    """Refuse a series where some slices declare RescaleSlope/RescaleIntercept and others do not
    (``declared``: per slice, in stack order): GDCM reads the latter in stored units, so one volume
    would mix HU and raw values (a slice 1024 too bright, silently)."""
    bare = [index for index, flag in enumerate(declared, 1) if not flag]
    if bare and len(bare) < len(declared):
        raise GeometryProblem(f"slice(s) {', '.join(map(str, bare[:3]))}{' ...' if len(bare) > 3 else ''} of "
                              f"{len(declared)} have no RescaleSlope/RescaleIntercept and the others have: their "
                              "values would not be in the others' units; refused")


def _series_headers(name: InputName, series_uid: str | None) -> dict[str, pydicom.Dataset]:
    """File -> header of every file of the series (one per SOPInstanceUID)."""
    if series_uid is None:
        files = _single_series_files(name)
        return {file: _read_header(name.child(file, f"file {index} of {len(files)}")) for index, file in
                enumerate(files, 1)}
    headers: dict[str, pydicom.Dataset] = {}
    instances: set[str] = set()
    known, read = SERIES_OF_FILES.folder(name.path), FolderSeries(name.path)
    for file in sorted(_files_under(name.path)):
        identity = file_identity(file)
        if known.of_another_series(file, identity, series_uid):  # the folder's other series, unchanged
            read.files[file] = known.files[file]
            continue
        try:
            header = pydicom.dcmread(file, stop_before_pixels=True, specific_tags=list(HEADER_TAGS))
        except UNREADABLE:
            read.remember(file, identity, None)
            continue  # files of no series, or of another: not this series' business
        instance, uid = str(header.get("SOPInstanceUID", "")), str(header.get("SeriesInstanceUID", ""))
        read.remember(file, identity, uid)
        if uid == series_uid and not (instance and instance in instances):
            instances.add(instance)  # a file copied twice under the folder counts once
            headers[file] = header
    SERIES_OF_FILES.store(read)
    if not headers:
        raise SeriesError(f"{name}: no file under the folder is of the DICOM series the manifest names")
    return headers


def learn_from_crawl(cache: Path, folder: Path) -> int:
    """Let this process know which series each file under ``folder`` is of from the crawl in
    ``cache``, unless it has read the folder itself (:mod:`cohort.ingest.series_of_files`); returns
    how many files it learnt of."""
    if SERIES_OF_FILES.knows(folder):
        return 0
    return SERIES_OF_FILES.learn_from_crawl(folder, crawled_files_under(cache, folder))


def _files_under(folder: Path) -> list[str]:
    return [os.path.join(root, file) for root, _, files in os.walk(folder) for file in files]


def series_files(source: Path | InputName, series_uid: str | None = None) -> list[str]:
    """The files of the series :func:`read_ct_dicom` reads (headers only): those of ``series_uid``
    under the folder, else the folder's one series as GDCM groups it."""
    name = InputName.of(source)
    return list(_series_headers(name, series_uid)) if series_uid else _single_series_files(name)


def _single_series_files(name: InputName) -> list[str]:
    folder = str(name.path)
    series_ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(folder)
    if not series_ids:
        raise SeriesError(f"{name}: no DICOM series found in the folder")
    if len(series_ids) > 1:
        raise SeriesError(f"{name}: folder holds {len(series_ids)} DICOM series; name one in the manifest's "
                          "series_uid column (`cohort manifest` does), or give each series its own folder")
    files = list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(folder, series_ids[0]))
    return files + _skipped_images(name.path, files)


def _skipped_images(folder: Path, grouped: list[str]) -> list[str]:
    """The folder's other images of the series of ``grouped`` (pydicom reads their header, GDCM
    could not read them: truncated or damaged pixel data). GDCM leaves them out of the series
    without a word; returned, they are read with the rest and refused by their place in the series,
    instead of silently missing (a slice at either end) or called a gap."""
    uid = str(pydicom.dcmread(grouped[0], stop_before_pixels=True,
                              specific_tags=["SeriesInstanceUID"]).get("SeriesInstanceUID", ""))
    known = {os.path.realpath(file) for file in grouped}
    skipped = []
    for entry in sorted(os.scandir(folder), key=lambda entry: entry.name):
        if not entry.is_file() or os.path.realpath(entry.path) in known:
            continue
        try:
            header = pydicom.dcmread(entry.path, stop_before_pixels=True, specific_tags=["SeriesInstanceUID", "Rows"])
        except UNREADABLE:
            continue  # not DICOM: no file of the series
        if header.get("Rows") is not None and str(header.get("SeriesInstanceUID", "")) == uid:
            skipped.append(entry.path)
    return skipped


def _read_header(file: InputName) -> pydicom.Dataset:
    try:
        return pydicom.dcmread(file.path, stop_before_pixels=True, specific_tags=list(HEADER_TAGS))
    except UNREADABLE as exc:
        reason = file.scrub(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
        raise SeriesError(f"{file}: cannot read DICOM header ({reason})") from None


def _slice_reader() -> sitk.ImageFileReader:
    """A reader of DICOM files through GDCM, named once: ``sitk.ReadImage`` asks every registered
    image format whether it can read each file (a fifth of reading an uncompressed slice)."""
    reader = sitk.ImageFileReader()
    reader.SetImageIO("GDCMImageIO")
    return reader


def _read_slice(reader: sitk.ImageFileReader, folder: InputName, file: InputName) -> np.ndarray:
    """One slice as (rows, columns), rescaled with its own RescaleSlope/RescaleIntercept (GDCM applies them)."""
    reader.SetFileName(str(file.path))
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        reason = folder.scrub(file.scrub(str(exc).strip().splitlines()[-1]))
        raise SeriesError(f"{file}: cannot read DICOM pixels ({reason})") from None
    return sitk.GetArrayFromImage(image).reshape(image.GetSize()[1], image.GetSize()[0])


def _stacked(slices: list[np.ndarray]) -> np.ndarray:
    """Slices of (rows, columns) as one (x, y, z) array, in the type that holds them all. Each slice
    is copied whole into its plane of a (z, y, x) array, whose transpose is returned: the Fortran
    order a NIfTI volume has, without the strided copy ``np.stack`` of (x, y) views makes."""
    values = np.empty((len(slices), *slices[0].shape), dtype=np.result_type(*slices))
    for index, plane in enumerate(slices):
        values[index] = plane
    return values.transpose(2, 1, 0)


def _declared_padding(header: pydicom.Dataset) -> Padding | None:
    """PixelPaddingValue (and PixelPaddingRangeLimit) as HU, or None when the header has none."""
    if header.get("PixelPaddingValue") is None:
        return None
    limit = header.get("PixelPaddingRangeLimit")
    return declared_padding(_stored_value(header, header.PixelPaddingValue),
                            None if limit is None else _stored_value(header, limit),
                            float(header.get("RescaleSlope") or 1.0), float(header.get("RescaleIntercept") or 0.0))


def _stored_value(header: pydicom.Dataset, value: int) -> int:
    """A padding value as the signed or unsigned pixel it stands for (some writers store -2000 as US 63536)."""
    bits = int(header.get("BitsAllocated") or 16)
    if int(header.get("PixelRepresentation") or 0) == 1 and value >= 2 ** (bits - 1):
        return int(value) - 2**bits
    return int(value)

