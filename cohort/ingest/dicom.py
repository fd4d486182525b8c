"""Read a folder holding one DICOM CT series: voxels (HU, x y z order), RAS affine, declared padding.

SimpleITK/GDCM sorts the slices by position and applies RescaleSlope/RescaleIntercept. Before
any pixel is read, one header (pydicom, pixels skipped) gives the slice size, so the series'
voxel count is checked against ``ingest.max_voxels``, and its PixelPaddingValue. No other
header field is kept: only voxels and geometry leave this module (patient data stays behind).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk

from cohort.config import IngestConfig
from cohort.errors import SeriesError
from cohort.ingest.limits import check_voxel_count
from cohort.ingest.names import InputName
from cohort.ingest.padding import Padding, declared_padding

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
HEADER_TAGS = ("Rows", "Columns", "NumberOfFrames", "PixelRepresentation", "BitsAllocated", "RescaleSlope",
               "RescaleIntercept", "PixelPaddingValue", "PixelPaddingRangeLimit")


def read_ct_dicom(source: Path | InputName,
                  limits: IngestConfig = IngestConfig()) -> tuple[np.ndarray, np.ndarray, Padding | None]:
    """The voxels, affine and declared padding of the single DICOM series in a folder."""
    name = InputName.of(source)
    files = _series_files(name)
    header = _read_header(name, files[0])
    try:
        shape = (int(header.Columns), int(header.Rows), int(header.get("NumberOfFrames") or 1) * len(files))
    except AttributeError:
        raise SeriesError(f"{name.child(Path(files[0]).name)}: DICOM header has no Rows/Columns; not an image") from None
    check_voxel_count(name, shape, limits)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        reason = name.scrub(str(exc).strip().splitlines()[-1])
        raise SeriesError(f"{name}: cannot read DICOM series ({reason})") from None
    if image.GetDimension() != 3 or min(image.GetSize()) < 2:
        raise SeriesError(f"{name}: DICOM series has size {image.GetSize()}; a 3-D volume is needed")
    values = np.transpose(sitk.GetArrayFromImage(image), (2, 1, 0))
    return values, ras_affine(image), _declared_padding(header)


def _series_files(name: InputName) -> list[str]:
    folder = str(name.path)
    if not name.path.exists():
        raise SeriesError(f"{name}: folder not found")
    series_ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(folder)
    if not series_ids:
        raise SeriesError(f"{name}: no DICOM series found in the folder")
    if len(series_ids) > 1:
        raise SeriesError(
            f"{name}: folder holds {len(series_ids)} DICOM series; give each series its own folder and row"
        )
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(folder, series_ids[0])
    if len(files) < 2:
        raise SeriesError(f"{name}: DICOM series has {len(files)} slice(s); a 3-D volume is needed")
    return list(files)


def _read_header(name: InputName, file: str) -> pydicom.Dataset:
    try:
        return pydicom.dcmread(file, stop_before_pixels=True, specific_tags=list(HEADER_TAGS))
    except (pydicom.errors.InvalidDicomError, OSError, ValueError, EOFError) as exc:
        reason = name.scrub(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
        raise SeriesError(f"{name.child(Path(file).name)}: cannot read DICOM header ({reason})") from None


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


def ras_affine(image: sitk.Image) -> np.ndarray:
    """Voxel (x, y, z) to RAS world affine of a SimpleITK image (which is LPS)."""
    direction = np.array(image.GetDirection(), dtype=float).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = LPS_TO_RAS @ direction @ np.diag(image.GetSpacing())
    affine[:3, 3] = LPS_TO_RAS @ np.array(image.GetOrigin(), dtype=float)
    return affine
