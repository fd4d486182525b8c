"""Sanity checks between ingest and measurement: is it CT, do image and labels share a grid."""

from __future__ import annotations

import nibabel as nib
import numpy as np

from cohort.errors import SeriesError
from cohort.ingest.volume import LabelMap, Volume

AIR_HU_CEILING = -200.0
HU_RANGE = (-4096.0, 40000.0)
AFFINE_TOLERANCE_MM = 1e-3


def check_is_ct(volume: Volume) -> None:
    """Reject images whose intensities cannot be Hounsfield units.

    Every CT of a body holds air (about -1000 HU) around or inside it; an MR, PET or
    normalised image has no values that low.
    """
    low, high = float(volume.hu.min()), float(volume.hu.max())
    if not np.isfinite(low) or not np.isfinite(high):
        raise SeriesError(f"{volume.source}: image holds NaN or infinite values; not a CT in HU")
    if low > AIR_HU_CEILING:
        raise SeriesError(
            f"{volume.source}: intensities {low:g}..{high:g} have no air (nothing below {AIR_HU_CEILING:g}); "
            "not a CT in Hounsfield units"
        )
    if low < HU_RANGE[0] or high > HU_RANGE[1]:
        raise SeriesError(
            f"{volume.source}: intensities {low:g}..{high:g} lie outside {HU_RANGE[0]:g}..{HU_RANGE[1]:g}; "
            "not a CT in Hounsfield units"
        )


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
            f"{label_map.source}: label map shape {label_map.labels.shape} does not match "
            f"CT shape {volume.hu.shape} ({volume.source.name})"
        )
    if not np.allclose(volume.affine, affine, atol=AFFINE_TOLERANCE_MM):
        raise SeriesError(
            f"{label_map.source}: label map affine does not match the CT's ({volume.source.name}): "
            f"spacing {np.round(label_map.grid.spacing, 3).tolist()} vs {np.round(volume.grid.spacing, 3).tolist()}, "
            f"origin {np.round(affine[:3, 3], 2).tolist()} vs {np.round(volume.affine[:3, 3], 2).tolist()}"
        )
    return LabelMap(labels=np.ascontiguousarray(labels), affine=volume.affine, source=label_map.source)
