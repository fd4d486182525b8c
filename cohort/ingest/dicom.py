"""Read a folder holding one DICOM CT series into a :class:`Volume` (RAS affine, HU).

SimpleITK/GDCM sorts the slices by position and applies RescaleSlope/RescaleIntercept. No
header field is kept: only voxels and geometry leave this module (patient data stays behind).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from cohort.errors import SeriesError
from cohort.ingest.nifti import as_hu_array
from cohort.ingest.volume import Volume

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def load_ct_dicom(folder: Path) -> Volume:
    """Read the single DICOM series in ``folder``."""
    files = _series_files(folder)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise SeriesError(f"{folder}: cannot read DICOM series ({str(exc).strip().splitlines()[-1]})") from None
    if image.GetDimension() != 3 or min(image.GetSize()) < 2:
        raise SeriesError(f"{folder}: DICOM series has size {image.GetSize()}; a 3-D volume is needed")
    hu = np.transpose(sitk.GetArrayFromImage(image), (2, 1, 0))
    return Volume(hu=as_hu_array(hu), affine=ras_affine(image), source=folder)


def _series_files(folder: Path) -> list[str]:
    if not folder.exists():
        raise SeriesError(f"{folder}: folder not found")
    series_ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not series_ids:
        raise SeriesError(f"{folder}: no DICOM series found in the folder")
    if len(series_ids) > 1:
        raise SeriesError(
            f"{folder}: folder holds {len(series_ids)} DICOM series; give each series its own folder and row"
        )
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series_ids[0])
    if len(files) < 2:
        raise SeriesError(f"{folder}: DICOM series has {len(files)} slice(s); a 3-D volume is needed")
    return list(files)


def ras_affine(image: sitk.Image) -> np.ndarray:
    """Voxel (x, y, z) to RAS world affine of a SimpleITK image (which is LPS)."""
    direction = np.array(image.GetDirection(), dtype=float).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = LPS_TO_RAS @ direction @ np.diag(image.GetSpacing())
    affine[:3, 3] = LPS_TO_RAS @ np.array(image.GetOrigin(), dtype=float)
    return affine
