"""Sanity checks between ingest and measurement: is it CT, do image and labels share a grid."""

from __future__ import annotations

import nibabel as nib
import numpy as np

from cohort.errors import SeriesError
from cohort.ingest.volume import LabelMap, Volume

AIR_HU_CEILING = -200.0
HU_RANGE = (-4096.0, 40000.0)
AFFINE_TOLERANCE_MM = 1e-3


def check_is_ct(volume: Volume, padded: np.ndarray | None = None) -> None:
    """Reject images whose intensities cannot be Hounsfield units.

    Every CT of a body holds air (about -1000 HU) around or inside it; an MR, PET or
    normalised image has no values that low. Only the voxels outside ``padded`` (the mask of
    padding outside the scan field, see ``cohort.ingest.padding``) are judged.
    """
    if padded is not None and padded.all():
        raise SeriesError(f"{volume.name}: every voxel is padding (outside the scan field); no image")
    low, high = _value_range(volume.hu, None if padded is None else ~padded)
    if not np.isfinite(low) or not np.isfinite(high):
        raise SeriesError(f"{volume.name}: image holds NaN or infinite values; not a CT in HU")
    if low > AIR_HU_CEILING:
        raise SeriesError(
            f"{volume.name}: intensities {low:g}..{high:g} have no air (nothing below {AIR_HU_CEILING:g}); "
            "not a CT in Hounsfield units"
        )
    if low < HU_RANGE[0] or high > HU_RANGE[1]:
        raise SeriesError(
            f"{volume.name}: intensities {low:g}..{high:g} lie outside {HU_RANGE[0]:g}..{HU_RANGE[1]:g}; "
            "not a CT in Hounsfield units"
        )


def _value_range(values: np.ndarray, keep: np.ndarray | None) -> tuple[float, float]:
    """Lowest and highest value of ``values`` where ``keep`` (everywhere when None); NaN propagates."""
    if keep is None:
        return float(values.min()), float(values.max())
    info = np.finfo(values.dtype) if values.dtype.kind == "f" else np.iinfo(values.dtype)
    return (float(values.min(where=keep, initial=info.max)), float(values.max(where=keep, initial=info.min)))


def align_labels(volume: Volume, label_map: LabelMap) -> LabelMap:
    """Return ``label_map`` on the CT's voxel grid, or raise if it lies on another grid.

    A label map may store the same grid with flipped or permuted axes (dcm2niix writes a DICOM
    series as LAS, SimpleITK reads it as LPS): it is reoriented, without interpolation. Any
    other difference in shape, spacing or position is an error.
    """
    transform = nib.orientations.ornt_transform(
        nib.orientations.io_orientation(label_map.affine), nib.orientations.io_orientation(volume.affine)
    )
    labels = nib.orientations.apply_orientation(label_map.labels, transform)
    affine = label_map.affine @ nib.orientations.inv_ornt_aff(transform, label_map.labels.shape)
    if labels.shape != volume.hu.shape:
        raise SeriesError(
            f"{label_map.name}: label map shape {label_map.labels.shape} does not match "
            f"CT shape {volume.hu.shape} ({volume.name})"
        )
    if not np.allclose(volume.affine, affine, atol=AFFINE_TOLERANCE_MM):
        raise SeriesError(
            f"{label_map.name}: label map affine does not match the CT's ({volume.name}): "
            f"spacing {np.round(label_map.grid.spacing, 3).tolist()} vs {np.round(volume.grid.spacing, 3).tolist()}, "
            f"origin {np.round(affine[:3, 3], 2).tolist()} vs {np.round(volume.affine[:3, 3], 2).tolist()}"
        )
    return LabelMap(labels=np.ascontiguousarray(labels), affine=volume.affine, source=label_map.source,
                    name=label_map.name)
