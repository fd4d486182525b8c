"""Sanity checks between ingest and measurement: is it the model's modality (CT in Hounsfield
units, or MR that is not plainly a CT), do image, labels and companion images share a grid."""

from __future__ import annotations

import nibabel as nib
import numpy as np

from cohort.errors import SeriesError
from cohort.ingest.volume import Grid, LabelMap, ScanOrigin, Volume

AIR_HU_CEILING = -200.0
HU_RANGE = (-4096.0, 40000.0)
AFFINE_TOLERANCE_MM = 1e-3
# A CT holds air at about -1000 HU in and around the body; an MR magnitude image has no negative values.
CT_AIR_HU = -500.0
CT_AIR_MIN_FRACTION = 0.01
MODALITY_CHECKS = ("CT", "MR")


def check_modality(volume: Volume, modality: str, padded: np.ndarray | None = None) -> None:
    """The check of the model's modality: :func:`check_is_ct` for CT models, :func:`check_is_mr` for MR."""
    if modality not in MODALITY_CHECKS:
        raise ValueError(f"modality must be one of {MODALITY_CHECKS}, got {modality!r}")
    (check_is_ct if modality == "CT" else check_is_mr)(volume, padded)


def check_is_mr(volume: Volume, padded: np.ndarray | None = None) -> None:
    """Reject an image that is plainly a CT in Hounsfield units, for an MR model.

    MR intensities are arbitrary units without a fixed scale, so only the plain case is judged:
    at least 1 % of the voxels (outside padding) at or below -500, which is CT air. Anything else
    passes; the model is trusted with the rest.
    """
    keep = None if padded is None else ~padded
    if keep is not None and not keep.any():
        raise SeriesError(f"{volume.name}: every voxel is padding (outside the scan field); no image")
    low, high = _value_range(volume.hu, keep)
    if not np.isfinite(low) or not np.isfinite(high):
        raise SeriesError(f"{volume.name}: image holds NaN or infinite values")
    if low > CT_AIR_HU:
        return
    air = np.count_nonzero((volume.hu <= CT_AIR_HU) if keep is None else (volume.hu <= CT_AIR_HU) & keep)
    fraction = air / (volume.hu.size if keep is None else np.count_nonzero(keep))
    if fraction >= CT_AIR_MIN_FRACTION:
        raise SeriesError(f"{volume.name}: intensities {low:g}..{high:g} with {100 * fraction:.0f} % of voxels at or "
                          f"below {CT_AIR_HU:g} (air in Hounsfield units): this is a CT, and the model is an MR "
                          "model; use a CT model (e.g. --model fast)")


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
            "not a CT in Hounsfield units (an MR? the model is a CT model; use an MR model, e.g. --model vibeseg)"
        )
    if low < HU_RANGE[0] or high > HU_RANGE[1]:
        raise SeriesError(
            f"{volume.name}: intensities {low:g}..{high:g} lie outside {HU_RANGE[0]:g}..{HU_RANGE[1]:g}; "
            "not a CT in Hounsfield units"
        )


def check_finite(volume: Volume, padded: np.ndarray | None = None) -> None:
    """Reject an image with NaN or infinite values outside ``padded``: the check that remains for a
    companion image (Dixon fat or water), which no modality check judges. Summed into a structure,
    one such voxel made its fat fraction NaN, or 0 (or 1) where the water (or fat) signal was
    infinite, without a word."""
    low, high = _value_range(volume.hu, None if padded is None else ~padded)
    if not np.isfinite(low) or not np.isfinite(high):
        raise SeriesError(f"{volume.name}: image holds NaN or infinite values")


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
    labels = _on_grid(volume, label_map.labels, label_map.affine, label_map.name, "label map")
    return LabelMap(labels=labels, affine=volume.affine, source=label_map.source, name=label_map.name)


def align_image(volume: Volume, image: Volume, role: str) -> np.ndarray:
    """The voxels of a companion ``image`` (``role``: e.g. Dixon ``fat``) on ``volume``'s grid, by the
    same rule as :func:`align_labels`: reoriented without interpolation, or an error; also an error
    when both are DICOM series of different studies or scans (:func:`check_same_scan`)."""
    check_same_scan(volume.name, volume.origin, image.name, image.origin, role)
    return _on_grid(volume, image.hu, image.affine, image.name, f"{role} image")


def check_dixon_scaling(fat: tuple[str, frozenset[float]], water: tuple[str, frozenset[float]]) -> None:
    """Refuse a Dixon pair whose values are not on one scale. Philips writes each MR image's values
    for display, scaled by RescaleSlope x its private scale slope (2005,100E); where that factor
    differs between the fat and the water image, or between slices of one of them, a fat fraction
    of the display values is off by the factors' ratio, silently. Its precise values (the display
    values divided by the factor) are what dcm2niix writes by default (``-p y``): give those NIfTI
    files instead. ``fat``, ``water``: each image's name and its factors
    (:attr:`cohort.ingest.volume.Volume.precise_scales`)."""
    for name, scales in (fat, water):
        if len(scales) > 1:
            raise SeriesError(f"{name}: its slices are scaled differently for display (Philips RescaleSlope x "
                              f"scale slope (2005,100E): {_factors(scales)}), so a fat fraction of its "
                              "values would mix scales; convert the series to its precise values (dcm2niix -p y) "
                              "and give the NIfTI files")
    if fat[1] != water[1]:
        raise SeriesError(f"{fat[0]}: the fat and water images are scaled differently for display (Philips "
                          f"RescaleSlope x scale slope (2005,100E): {_factors(fat[1])} and "
                          f"{_factors(water[1])}), so fat fractions of their values would be off; convert "
                          "both to their precise values (dcm2niix -p y) and give the NIfTI files")


def _factors(scales: frozenset[float]) -> str:
    return ", ".join(f"{scale:.6g}" for scale in sorted(scales)) or "none"


def check_same_scan(image_name: str, image_origin: ScanOrigin | None, name: str, origin: ScanOrigin | None,
                    role: str) -> None:
    """Refuse a companion image (``role``) of another study or scan than the image it goes with: a
    Dixon fat image of last year's visit, reconstructed on the same grid, would otherwise pass
    every geometric check and give fat fractions of two visits."""
    problem = image_origin.mismatch(origin) if image_origin and origin else None
    if problem:
        raise SeriesError(f"{name}: {role} image is {problem} than the image ({image_name}); "
                          "a row's images must come from one scan")


def _on_grid(volume: Volume, array: np.ndarray, affine: np.ndarray, name: str, what: str) -> np.ndarray:
    transform = grid_transform(volume.grid, volume.name, array.shape, affine, name, what)
    return np.ascontiguousarray(nib.orientations.apply_orientation(array, transform))


def grid_transform(grid: Grid, grid_name: str, shape: tuple[int, ...], affine: np.ndarray, name: str,
                   what: str) -> np.ndarray:
    """The axis flips and permutation (a nibabel orientation) that put a ``what`` of ``shape`` and
    ``affine`` on ``grid`` (the image ``grid_name``), or a :class:`SeriesError` when none does.

    Shapes and affines suffice, so ``cohort check`` applies the rule of :func:`align_labels` from
    headers alone, with the run's tolerance and wording.
    """
    shape = tuple(int(n) for n in shape)
    transform = nib.orientations.ornt_transform(
        nib.orientations.io_orientation(affine), nib.orientations.io_orientation(grid.affine)
    )
    order = np.argsort(transform[:, 0])  # as nibabel.orientations.apply_orientation permutes the axes
    moved_shape = tuple(shape[axis] for axis in order) + shape[len(order):]
    moved_affine = affine @ nib.orientations.inv_ornt_aff(transform, shape)
    if moved_shape != grid.shape:
        raise SeriesError(
            f"{name}: {what} shape {shape} does not match "
            f"image shape {grid.shape} ({grid_name})"
        )
    if not np.allclose(grid.affine, moved_affine, atol=AFFINE_TOLERANCE_MM):
        spacing = np.linalg.norm(affine[:3, :3], axis=0)
        raise SeriesError(
            f"{name}: {what} affine does not match the image's ({grid_name}): "
            f"spacing {np.round(spacing, 3).tolist()} vs {np.round(grid.spacing, 3).tolist()}, "
            f"origin {np.round(moved_affine[:3, 3], 2).tolist()} vs {np.round(grid.affine[:3, 3], 2).tolist()}"
        )
    return transform
