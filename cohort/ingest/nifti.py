"""Read NIfTI files into :class:`Volume` / :class:`LabelMap`, failing with one-line reasons."""

from __future__ import annotations

import zlib
from pathlib import Path

import nibabel as nib
import numpy as np

from cohort.errors import SeriesError
from cohort.ingest.volume import LabelMap, Volume

NIFTI_SUFFIXES = (".nii", ".nii.gz")


def is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def read_nifti_array(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Return the (x, y, z) voxel array (scaling applied) and the affine of a 3-D NIfTI file."""
    if not path.exists():
        raise SeriesError(f"{path}: file not found")
    try:
        image = nib.load(str(path))
        array = np.asanyarray(image.dataobj)
    except (nib.filebasedimages.ImageFileError, EOFError, zlib.error, OSError, ValueError) as exc:
        raise SeriesError(f"{path}: cannot read NIfTI ({_first_line(exc)}): corrupt or truncated?") from None
    while array.ndim > 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 3 or min(array.shape) < 2:
        raise SeriesError(f"{path}: image has shape {array.shape}; a 3-D volume is needed")
    return array, image.affine


def load_ct_nifti(path: Path) -> Volume:
    array, affine = read_nifti_array(path)
    return Volume(hu=as_hu_array(array), affine=affine, source=path)


def load_label_nifti(path: Path) -> LabelMap:
    array, affine = read_nifti_array(path)
    return LabelMap(labels=as_label_array(array, path), affine=affine, source=path)


def as_hu_array(array: np.ndarray) -> np.ndarray:
    """Integer CTs stay int16 (as TotalSegmentator measures them); scaled ones become float32."""
    if np.issubdtype(array.dtype, np.integer) and array.dtype.itemsize <= 2 and array.dtype != np.uint16:
        return array.astype(np.int16, copy=False)
    if np.issubdtype(array.dtype, np.integer):
        low, high = int(array.min()), int(array.max())
        if -32768 <= low and high <= 32767:
            return array.astype(np.int16)
    return array.astype(np.float32, copy=False)


def as_label_array(array: np.ndarray, path: Path) -> np.ndarray:
    if not np.issubdtype(array.dtype, np.integer):
        rounded = np.rint(array)
        if not np.array_equal(rounded, array):
            raise SeriesError(f"{path}: label map holds non-integer values; is it a label map?")
        array = rounded
    if array.min() < 0 or array.max() > np.iinfo(np.uint16).max:
        raise SeriesError(f"{path}: label ids must lie in 0-65535 (found {array.min()}-{array.max()})")
    return array.astype(np.uint8 if array.max() <= 255 else np.uint16, copy=False)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
