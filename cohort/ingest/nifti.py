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

from cohort.config import ClassMap, IngestConfig
from cohort.errors import SeriesError
from cohort.ingest.checks import AFFINE_TOLERANCE_MM
from cohort.ingest.limits import check_voxel_count
from cohort.ingest.label_table import check_label_table, label_table
from cohort.ingest.names import InputName
from cohort.ingest.volume import LabelMap

NIFTI_SUFFIXES = (".nii", ".nii.gz")
GZIP_MAGIC = b"\x1f\x8b"
READ_ERRORS = (nib.filebasedimages.ImageFileError, nib.spatialimages.HeaderDataError, EOFError, zlib.error,
               OSError, ValueError, *((isal_zlib.error,) if isal_zlib else ()))
SINGULAR_VOXEL_MM3 = 1e-9  # below this a voxel (e.g. a matrix of zeros) has no volume


def is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def read_nifti_array(source: Path | InputName, limits: IngestConfig = IngestConfig()) -> tuple[np.ndarray, np.ndarray]:
    """Return the (x, y, z) voxel array (scaling applied) and the affine of a 3-D NIfTI file."""
    name = InputName.of(source)
    image = open_nifti(name, limits)
    return volume_voxels(name, image), image.affine


def volume_voxels(name: InputName, image: nib.Nifti1Image) -> np.ndarray:
    """The (x, y, z) voxels of ``image`` (opened by :func:`open_nifti`), scaling applied."""
    try:
        array = read_voxels(image, name.path)
    except READ_ERRORS as exc:
        raise unreadable_nifti(name, exc) from None
    while array.ndim > 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 3 or min(array.shape) < 2:
        raise SeriesError(f"{name}: image has shape {array.shape}; a 3-D volume is needed")
    return array


def open_nifti(name: InputName, limits: IngestConfig) -> nib.Nifti1Image:
    """The NIfTI file ``name``, loaded lazily (no voxel read yet), its header checked
    (:func:`check_header`): what every reader of its voxels starts from."""
    if not name.path.is_file():
        raise SeriesError(f"{name}: {'is a folder, not a NIfTI file' if name.path.is_dir() else 'file not found'}")
    if not is_nifti(name.path):
        raise SeriesError(f"{name}: not a NIfTI file (its name does not end in .nii or .nii.gz)")
    try:
        check_compression_matches_name(name)
        image = nib.load(str(name.path))  # NIfTI-1, or NIfTI-2 (a subclass)
        check_header(name, image, limits)
    except READ_ERRORS as exc:
        raise unreadable_nifti(name, exc) from None
    return image


def read_voxels(image: nib.Nifti1Image, path: Path) -> np.ndarray:
    """The voxels of ``image`` (loaded lazily from ``path``), scaling applied."""
    if igzip is None or not path.name.lower().endswith(".gz"):
        return np.asanyarray(image.dataobj)
    with igzip.open(path, "rb") as stream:
        holder = nib.FileHolder(str(path), fileobj=stream)
        return np.asanyarray(type(image).from_file_map({"image": holder, "header": holder}).dataobj)


def check_compression_matches_name(name: InputName) -> None:
    """Raise when the file's first bytes contradict its name: a ``.nii.gz`` that is not gzip, or a
    ``.nii`` that is (renamed by hand, or written by a tool that ignores the suffix). nibabel picks
    its reader by the name, and its error ("not a gzipped file", "cannot work out file type")
    reads like damage, not like the rename that fixes it."""
    with open(name.path, "rb") as handle:
        head = handle.read(len(GZIP_MAGIC))
    gzipped, named_gz = head == GZIP_MAGIC, name.path.name.lower().endswith(".gz")
    if len(head) == len(GZIP_MAGIC) and gzipped != named_gz:  # an empty file is for nibabel to call truncated
        actual, fixed = ("gzip-compressed", ".nii.gz") if gzipped else ("not gzip-compressed", ".nii")
        raise SeriesError(f"{name}: file is {actual}, although its name ends in {'.nii.gz' if named_gz else '.nii'}; "
                          f"rename it to end in {fixed}")


def check_header(name: InputName, image: nib.Nifti1Image, limits: IngestConfig) -> None:
    """Raise unless the file can hold what its header describes, within the voxel limit, stores real
    numbers (:func:`check_voxel_type`) and its header places the voxels in the patient as every tool
    reads it (:func:`check_placement`)."""
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
    check_voxel_type(name, image.header)
    check_placement(name, image.header, stored_voxel_sizes(image, name.path))


def check_voxel_type(name: InputName, header: nib.Nifti1Header) -> None:
    """Raise unless the file stores one real number per voxel: a complex image was measured by its
    real part without a word (numpy drops the imaginary part), an RGB one failed on an unforeseen
    type error."""
    dtype = header.get_data_dtype()
    if dtype.kind not in "biuf":
        raise SeriesError(f"{name}: NIfTI stores {'RGB' if dtype.names else dtype.name} voxels; an image or "
                          "label map of one real number per voxel is needed")


def stored_voxel_sizes(image: nib.Nifti1Image, path: Path) -> np.ndarray:
    """pixdim[1:4] as the file at ``path`` stores them: nibabel's loader repairs them in
    ``image.header`` (a 0 becomes 1, a negative size its absolute value), as other tools do not."""
    with nib.openers.ImageOpener(str(path)) as stream:
        stored = type(image.header).from_fileobj(stream, check=False)
    return stored["pixdim"][1:1 + min(3, int(stored["dim"][0]))]


def check_placement(name: InputName, header: nib.Nifti1Header, voxel_sizes: np.ndarray) -> None:
    """Raise unless the header places the voxels in the patient in one way every tool reads alike.

    nibabel (so cohort and TotalSegmentator) takes the sform when its code is set, else the qform;
    ITK-based tools (SimpleITK, nnU-Net's reader, 3D Slicer) take the qform unless the sform code
    is 1 (scanner). A file whose two disagree is therefore read mirrored or shifted by one of them,
    and a label map made by such a tool was reoriented onto the image as its header said: silently
    laid over the other side. A qform with a voxel size of 0 or below is read as 1 mm by both, or
    mirrored by ITK, and a singular or non-finite matrix has no voxel volume. ``voxel_sizes``:
    pixdim[1:4] as stored (:func:`stored_voxel_sizes`).
    """
    qform_code, sform_code = int(header["qform_code"]), int(header["sform_code"])
    if not sform_code and not qform_code:
        raise SeriesError(f"{name}: NIfTI header gives no orientation (qform_code and sform_code are 0), so left and "
                          "right cannot be told apart and a left/right structure could be labelled as the other; "
                          "convert it again from DICOM (e.g. dcm2niix) or set its qform/sform")
    if qform_code and not (voxel_sizes > 0).all():
        raise SeriesError(f"{name}: NIfTI header gives voxel sizes pixdim {np.round(voxel_sizes, 3).tolist()}, "
                          "not all above 0, and its qform needs them: tools read such a file with 1 mm or "
                          "mirrored voxels; set the voxel sizes in the header")
    form, affine = ("sform", header.get_sform()) if sform_code else ("qform", header.get_qform())
    if not np.isfinite(affine).all():
        problem = "is not finite"
    elif abs(np.linalg.det(affine[:3, :3])) < SINGULAR_VOXEL_MM3:
        problem = "is singular: voxels without volume"
    else:
        problem = None
    if problem:
        raise SeriesError(f"{name}: NIfTI header's {form} does not place the voxels (its matrix {problem}); "
                          "convert it again from DICOM (e.g. dcm2niix)")
    if qform_code and sform_code and not np.allclose(header.get_qform(), qform_of(affine),
                                                     atol=AFFINE_TOLERANCE_MM):
        raise SeriesError(
            f"{name}: NIfTI header's qform and sform disagree (qform {_placement(header.get_qform())}, sform "
            f"{_placement(affine)}): nibabel-based tools read the sform, ITK-based ones (SimpleITK, nnU-Net, "
            "Slicer) the qform, so a label map can land mirrored or shifted; set both to the right one"
        )


def _placement(affine: np.ndarray) -> str:
    """``affine`` in a few words: its orientation and origin (``RAS at [x, y, z]``), or "not finite"."""
    if not np.isfinite(affine).all():
        return "not finite"
    return f"{''.join(nib.aff2axcodes(affine))} at {np.round(affine[:3, 3], 2).tolist()}"


def qform_of(affine: np.ndarray) -> np.ndarray:
    """The qform that stands for ``affine`` (an sform): the affine itself when orthogonal, else its
    closest rotation with the same voxel sizes (a qform cannot hold a shear, e.g. a gantry tilt), as
    nibabel and the NIfTI C library (dcm2niix) write it beside the sform."""
    header = nib.Nifti1Header()
    header.set_qform(affine)
    return header.get_qform()


def load_label_nifti(source: Path | InputName, limits: IngestConfig = IngestConfig(),
                     class_map: ClassMap | None = None) -> LabelMap:
    """A multilabel NIfTI file; given the ``class_map`` it will be measured by, the file's own label
    table (TotalSegmentator's ``--ml`` writes one) is checked against it before a voxel is read
    (:mod:`cohort.ingest.label_table`)."""
    name = InputName.of(source)
    image = open_nifti(name, limits)
    if class_map is not None:
        check_label_table(name, label_table(image), class_map)
    return LabelMap(labels=as_label_array(volume_voxels(name, image), name), affine=image.affine, source=name.path,
                    name=name.shown)


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


def unreadable_nifti(name: InputName, exc: BaseException) -> SeriesError:
    """The one-line reason for a NIfTI file that nibabel (or its gzip stream) cannot read."""
    return SeriesError(f"{name}: cannot read NIfTI ({name.scrub(_first_line(exc))}): corrupt or truncated?")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
