"""Read NIfTI files into arrays / :class:`LabelMap`, failing with one-line reasons.

The header is checked before any voxel is read: an uncompressed file must be as long as its
header's shape says, and no file may claim more than ``ingest.max_voxels`` voxels. (A gzipped
file's length says nothing about its content; the voxel limit bounds what it can allocate.)

Gzipped voxels are inflated by ISA-L (the ``isal`` package) where it is installed: twice zlib's
speed, 0.18 s instead of 0.38 s for a 39 M-voxel CT (docs/performance.md); nibabel still parses
the header and the voxels, from ISA-L's stream. Without ``isal`` (a platform without its wheel)
nibabel's own gzip reads them.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import nibabel as nib
import numpy as np

try:
    from isal import igzip, isal_zlib
except ImportError:  # no wheel for this platform: nibabel's gzip
    igzip = isal_zlib = None

from cohort.config import IngestConfig
from cohort.errors import SeriesError
from cohort.ingest.limits import check_voxel_count
from cohort.ingest.names import InputName
from cohort.ingest.volume import LabelMap

NIFTI_SUFFIXES = (".nii", ".nii.gz")
READ_ERRORS = (nib.filebasedimages.ImageFileError, nib.spatialimages.HeaderDataError, EOFError, zlib.error,
               OSError, ValueError, *((isal_zlib.error,) if isal_zlib else ()))


def is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def read_nifti_array(source: Path | InputName, limits: IngestConfig = IngestConfig()) -> tuple[np.ndarray, np.ndarray]:
    """Return the (x, y, z) voxel array (scaling applied) and the affine of a 3-D NIfTI file."""
    name = InputName.of(source)
    if not name.path.exists():
        raise SeriesError(f"{name}: file not found")
    try:
        image = nib.load(str(name.path))
        if not isinstance(image, nib.Nifti1Image):
            raise nib.filebasedimages.ImageFileError(f"{type(image).__name__}, not NIfTI")
        check_header(name, image, limits)
        array = read_voxels(image, name.path)
    except READ_ERRORS as exc:
        raise SeriesError(f"{name}: cannot read NIfTI ({name.scrub(_first_line(exc))}): corrupt or truncated?") from None
    while array.ndim > 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 3 or min(array.shape) < 2:
        raise SeriesError(f"{name}: image has shape {array.shape}; a 3-D volume is needed")
    return array, image.affine


def read_voxels(image: nib.Nifti1Image, path: Path) -> np.ndarray:
    """The voxels of ``image`` (loaded lazily from ``path``), scaling applied."""
    if igzip is None or not path.name.lower().endswith(".gz"):
        return np.asanyarray(image.dataobj)
    with igzip.open(path, "rb") as stream:
        holder = nib.FileHolder(str(path), fileobj=stream)
        return np.asanyarray(type(image).from_file_map({"image": holder, "header": holder}).dataobj)


def check_header(name: InputName, image: nib.Nifti1Image, limits: IngestConfig) -> None:
    """Raise unless the file can hold what its header describes, within the voxel limit, and its
    header places the voxels in the patient (a qform or sform)."""
    shape = tuple(int(n) for n in image.shape)
    if name.path.name.lower().endswith(".nii"):
        dtype = image.header.get_data_dtype()
        needed = int(image.dataobj.offset) + int(np.prod(shape, dtype=object)) * dtype.itemsize
        size = name.path.stat().st_size
        if size < needed:
            raise SeriesError(
                f"{name}: file is {size:,} bytes, header says {needed:,} (shape {'x'.join(map(str, shape))} "
                f"of {dtype}): truncated?"
            )
    check_voxel_count(name, shape, limits)
    if not image.header["sform_code"] and not image.header["qform_code"]:
        raise SeriesError(f"{name}: NIfTI header gives no orientation (qform_code and sform_code are 0), so left and "
                          "right cannot be told apart and a left/right structure could be labelled as the other; "
                          "convert it again from DICOM (e.g. dcm2niix) or set its qform/sform")


def load_label_nifti(source: Path | InputName, limits: IngestConfig = IngestConfig()) -> LabelMap:
    name = InputName.of(source)
    array, affine = read_nifti_array(name, limits)
    return LabelMap(labels=as_label_array(array, name), affine=affine, source=name.path, name=name.shown)


def as_hu_array(array: np.ndarray) -> np.ndarray:
    """Integer CTs stay int16 (as TotalSegmentator measures them); scaled ones become float32."""
    if np.issubdtype(array.dtype, np.integer) and array.dtype.itemsize <= 2 and array.dtype != np.uint16:
        return array.astype(np.int16, copy=False)
    if np.issubdtype(array.dtype, np.integer):
        low, high = int(array.min()), int(array.max())
        if -32768 <= low and high <= 32767:
            return array.astype(np.int16)
    return array.astype(np.float32, copy=False)


def as_label_array(array: np.ndarray, name: InputName) -> np.ndarray:
    if not np.issubdtype(array.dtype, np.integer):
        rounded = np.rint(array)
        if not np.array_equal(rounded, array):
            raise SeriesError(f"{name}: label map holds non-integer values; is it a label map?")
        array = rounded
    if array.min() < 0 or array.max() > np.iinfo(np.uint16).max:
        raise SeriesError(f"{name}: label ids must lie in 0-65535 (found {array.min()}-{array.max()})")
    return array.astype(np.uint8 if array.max() <= 255 else np.uint16, copy=False)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
