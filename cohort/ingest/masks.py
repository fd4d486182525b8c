"""Read a folder of binary masks, one per structure, into one :class:`LabelMap`.

TotalSegmentator's default output (without ``--ml``) is such a folder: ``liver.nii.gz``,
``spleen.nii.gz``, ... one file per class of its task, named by the class, an empty mask where the
structure is absent. A manifest's ``labels`` column may name such a folder instead of a multilabel
file; each mask then becomes its structure's id in the run's class map. The rules, each broken one
a failure of the series that names the mask:

- the folder's NIfTI files (``.nii``, ``.nii.gz``; other files, such as TotalSegmentator's
  ``statistics.json``, are not read) are named ``<structure>`` of the class map, each once: a
  name that is no structure (a folder of another task, or a typo) is an error;
- every structure of the class map has its file: a missing mask is never read as absent (0
  voxels), which would be a wrong measurement. ``--roi_subset`` writes only the chosen masks, and a
  label map cannot say "not segmented" (0 is background, and ``labels.zarr`` is measured again
  on resume), so such a folder is refused, naming what is missing;
- each mask lies on the image's grid, by the rule of :func:`cohort.ingest.checks.align_labels`
  (reoriented without interpolation, anything else an error), and holds only 0 and 1;
- no voxel is claimed by two masks (TotalSegmentator's masks never overlap).
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from cohort.config import ClassMap, IngestConfig
from cohort.errors import SeriesError
from cohort.ingest.checks import AFFINE_TOLERANCE_MM, grid_transform
from cohort.ingest.names import InputName
from cohort.ingest.nifti import NIFTI_SUFFIXES, READ_ERRORS, igzip, is_nifti, open_nifti, read_nifti_array
from cohort.ingest.volume import Grid, LabelMap

SHOWN_NAMES = 5  # structures or files named in one message; the rest are counted
IDENTITY = np.array([[0, 1], [1, 1], [2, 1]])  # a nibabel orientation transform that moves nothing
CHUNK_BYTES = 1 << 16  # inflated and scanned at a time: the fastest of 8 KiB-16 MiB (docs/performance.md)


def mask_files(folder: Path) -> list[Path]:
    """The NIfTI files directly in ``folder``, by name: what a mask folder's reader reads (and so
    what a row's fingerprint and content cover)."""
    return sorted((entry for entry in folder.iterdir() if entry.is_file() and is_nifti(entry)),
                  key=lambda entry: entry.name)


def structure_of(file: Path) -> str:
    """The structure a mask file names: its name without ``.nii`` or ``.nii.gz`` (any case)."""
    suffix = next(s for s in sorted(NIFTI_SUFFIXES, key=len, reverse=True) if file.name.lower().endswith(s))
    return file.name[:-len(suffix)]


def masks_by_label(name: InputName, class_map: ClassMap) -> dict[int, Path]:
    """The mask file of each label id of ``class_map`` in the folder ``name``, or a
    :class:`SeriesError` naming the files no structure has, the structures given twice or those
    without a file (in that order: a folder of another task is told as such, not as 117 missing)."""
    if not name.path.is_dir():
        raise SeriesError(f"{name}: {'folder not found' if not name.path.exists() else 'is not a folder'}")
    files = mask_files(name.path)
    if not files:
        raise SeriesError(f"{name}: folder holds no mask files (.nii, .nii.gz); a labels folder holds one binary mask "
                          "per structure, as TotalSegmentator writes them without --ml")
    ids = {structure: label for label, structure in class_map.names.items()}
    map_name = Path(class_map.source).name
    unknown = [file.name for file in files if structure_of(file) not in ids]
    if unknown:
        raise SeriesError(f"{name}: {_count(unknown, 'mask file')} named after no structure of the class map "
                          f"{map_name} ({_listed(unknown)}): a folder of another TotalSegmentator task, or a typo? "
                          "(--model picks the class map)")
    by_label: dict[int, Path] = {}
    for file in files:
        label = ids[structure_of(file)]
        if label in by_label:
            raise SeriesError(f"{name}: structure {class_map.names[label]} has two mask files "
                              f"({by_label[label].name}, {file.name}); keep one")
        by_label[label] = file
    missing = [structure for label, structure in sorted(class_map.names.items()) if label not in by_label]
    if missing:
        raise SeriesError(
            f"{name}: no mask file for {len(missing)} of the {len(ids)} structures of {map_name} ({_listed(missing)}); "
            "a missing mask is not read as absent: run TotalSegmentator without --roi_subset (it writes every "
            "structure's mask, an empty one where the structure is absent)")
    return dict(sorted(by_label.items()))


def load_label_masks(source: Path | InputName, class_map: ClassMap, grid: Grid, grid_name: str,
                     limits: IngestConfig = IngestConfig()) -> LabelMap:
    """The label map of the mask folder ``source`` on ``grid`` (the image ``grid_name``): each
    mask's voxels get its structure's id in ``class_map``, by the rules of this module.

    Each mask is read, checked and merged in turn, so memory holds the label map and one mask (one
    chunk of it, for most: :func:`_inflated_voxels`).
    """
    name = InputName.of(source)
    labels = np.zeros(grid.shape, dtype=np.uint8 if class_map.n_labels <= 256 else np.uint16, order="F")
    flat = labels.ravel(order="F")  # a view: the masks' voxel indices are in Fortran order
    for label, file in masks_by_label(name, class_map).items():
        mask_name = name.child(str(file), file.name)
        voxels = _mask_voxels(mask_name, grid, grid_name, limits)
        claimed = flat[voxels]
        if claimed.any():
            others = np.bincount(claimed[claimed != 0])
            other = int(others.argmax())
            raise SeriesError(f"{name}: masks {class_map.names[other]} and {class_map.names[label]} both claim "
                              f"{int(others[other]):,} voxels; a voxel belongs to one structure (are they of two "
                              "different runs?)")
        flat[voxels] = label
    return LabelMap(labels=np.ascontiguousarray(labels), affine=grid.affine, source=name.path, name=name.shown)


def _mask_voxels(name: InputName, grid: Grid, grid_name: str, limits: IngestConfig) -> np.ndarray:
    """The flat indices (on ``grid``, Fortran order: NIfTI's own) of the voxels of the binary mask
    file ``name``, its header checked first.

    A mask as TotalSegmentator writes it (gzipped uint8, unscaled, on the image's grid as stored) is
    inflated and scanned in chunks (:func:`_inflated_voxels`); any other mask, and one that chunked
    reading refuses, is read whole by nibabel (:func:`_read_voxels`), which says what is wrong.
    """
    image = open_nifti(name, limits)
    voxels = _inflated_voxels(image, name.path) if _stored_on_grid(image, grid, grid_name, name) else None
    return _read_voxels(name, grid, grid_name, limits) if voxels is None else voxels


def _stored_on_grid(image: nib.Nifti1Image, grid: Grid, grid_name: str, name: InputName) -> bool:
    """Whether the mask ``image`` stores unscaled uint8 voxels that lie on ``grid`` as stored (no
    reorientation), so that its bytes are its voxels. Checked from the header alone, and only
    where the shape and affine already match, so that nibabel's reader still tells a damaged file
    before a grid that does not fit, as it did when it read every mask."""
    shape = tuple(int(n) for n in image.shape)
    if not (image.header.get_data_dtype() == np.uint8 and (image.dataobj.slope, image.dataobj.inter) == (1, 0)
            and shape[:3] == grid.shape and all(n == 1 for n in shape[3:])
            and np.allclose(image.affine, grid.affine, atol=AFFINE_TOLERANCE_MM)):
        return False
    transform = grid_transform(grid, grid_name, shape[:3], image.affine, name.shown, "mask")  # the rule itself
    return np.array_equal(transform, IDENTITY)


def _inflated_voxels(image: nib.Nifti1Image, path: Path) -> np.ndarray | None:
    """The flat indices of the nonzero voxels of the gzipped uint8 mask ``image`` at ``path`` if all
    of them are 1, else None (also for a stream that is damaged or too short, or without ISA-L).

    ISA-L inflates :data:`CHUNK_BYTES` at a time into one buffer, each chunk scanned while in
    cache: nibabel's reader builds a fresh array per mask (74 MB for 74 M voxels, faulted in page
    by page) and scans it twice, 6x the CPU (docs/performance.md).
    """
    if igzip is None or not path.name.lower().endswith(".gz"):
        return None
    size = int(np.prod(image.shape))
    buffer = np.empty(min(CHUNK_BYTES, size), dtype=np.uint8)
    found, done = [], 0
    try:
        with igzip.open(path, "rb") as stream:
            stream.seek(int(image.dataobj.offset))
            while done < size:
                count = stream.readinto(buffer[:size - done])
                if not count:  # the stream ends before the voxels do: nibabel's reader says so
                    return None
                chunk = buffer[:count]
                top = chunk.max()
                if top > 1:  # a value other than 0 and 1: nibabel's reader names them
                    return None
                if top:
                    found.append(np.flatnonzero(chunk) + done)
                done += count
    except READ_ERRORS:
        return None
    return np.concatenate(found) if found else np.empty(0, dtype=np.intp)


def _read_voxels(name: InputName, grid: Grid, grid_name: str, limits: IngestConfig) -> np.ndarray:
    """What :func:`_mask_voxels` returns, for any mask nibabel reads: the whole array, reoriented
    onto ``grid`` and scaled, or the error of its grid or values."""
    array, affine = read_nifti_array(name, limits)
    transform = grid_transform(grid, grid_name, array.shape, affine, name.shown, "mask")
    if not np.array_equal(transform, IDENTITY):
        array = nib.orientations.apply_orientation(array, transform)
    flat = array.ravel(order="F")  # a view, not a copy, of an array as nibabel reads it
    voxels = np.flatnonzero(flat)
    values = flat[voxels]
    if not (values == 1).all():
        found = np.unique(values[values != 1])
        shown = ", ".join(f"{value:g}" for value in found[:SHOWN_NAMES].tolist())
        raise SeriesError(f"{name}: mask holds values other than 0 and 1 ({shown}{', ...' * (len(found) > SHOWN_NAMES)})"
                          "; a mask must be binary (a multilabel map is given as a file, not in a folder)")
    return voxels


def _count(items: list[str], what: str) -> str:
    return f"{len(items)} {what}{'s' * (len(items) != 1)}"


def _listed(items: list[str]) -> str:
    """The first :data:`SHOWN_NAMES` of ``items``, then how many more."""
    more = len(items) - SHOWN_NAMES
    return ", ".join(items[:SHOWN_NAMES]) + (f" and {more} more" if more > 0 else "")
