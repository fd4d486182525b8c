"""Padding: voxels outside the scanner's field of view, stored as a value no tissue has.

Scanners reconstruct a circle; the corners of each slice are filled with a padding value
(-32768, -3024, -2000 HU, or whatever DICOM's PixelPaddingValue / PixelPaddingRangeLimit
declare). Those values say "no measurement here", not "very low density": judged as HU they
make a CT look like no CT (-32768 lies far below air), and measured as HU they would drag any
structure that reached them towards -32768.

Padded voxels are therefore left out of the "is it CT" check and then set to air (-1024 HU).
Air is what the networks see there anyway: TotalSegmentator/nnU-Net clip CT intensities to
their training percentiles (about -1000 at the low end) before normalising, so padding and air
are the same input to the model, and an air value keeps every later stage (resampling,
measurement) free of extreme numbers. In an MR (an MR model's image) padding is set to 0, no
signal, instead: MR magnitudes are never negative, and -1024 would enter the networks' z-score
normalisation and every ``*_intensity`` of a structure that reaches a padded voxel (an MR series
may declare PixelPaddingValue 0, its background).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

AIR_HU = -1024
NO_SIGNAL = 0  # an MR's padding: magnitude images have no negative values
PADDING_CEILING_HU = -1500.0  # no reconstructed voxel lies this far below air (-1000 HU)


@dataclass(frozen=True)
class Padding:
    """The HU values that mean "outside the scan field" (an inclusive range)."""

    low: float
    high: float


def declared_padding(value: int, range_limit: int | None, slope: float, intercept: float) -> Padding:
    """The HU padding range of DICOM PixelPaddingValue (and PixelPaddingRangeLimit), in stored units.

    Stored values are mapped through the rescale; the range widens by half a rescale step so
    that float rounding of ``stored * slope + intercept`` cannot miss a padded voxel, and
    still stops short of the next stored value.
    """
    ends = [value * slope + intercept, (value if range_limit is None else range_limit) * slope + intercept]
    half_step = abs(slope) / 2 * 0.999
    return Padding(min(ends) - half_step, max(ends) + half_step)


def detect_padding(values: np.ndarray) -> Padding | None:
    """Padding of an image that declares none: the lowest corner value, if far below air.

    Every corner of a volume lies outside a circular field of view. A value there that no
    tissue or air has (the dtype minimum, -3024, -2000...) is padding wherever it occurs.
    """
    corners = values[np.ix_(*[[0, n - 1] for n in values.shape])]
    lowest = float(corners.min())
    if not lowest <= PADDING_CEILING_HU:
        return None
    return Padding(lowest, lowest)


def padding_mask(values: np.ndarray, padding: Padding | None) -> np.ndarray | None:
    """Boolean mask of the padded voxels, or None when there are none."""
    if padding is None:
        return None
    if padding.low == padding.high:
        mask = values == padding.low
    else:
        mask = (values >= padding.low) & (values <= padding.high)
    return mask if mask.any() else None


def field_edge(values: np.ndarray, padded: np.ndarray | None, modality: str | None) -> np.ndarray | None:
    """The padded voxels that mark the edge of the field of view: ``padded``, except in an MR whose
    padding takes in :data:`NO_SIGNAL` (PixelPaddingValue 0): that is its background air too, which
    every structure at the body's surface touches, not the border of a circular CT field."""
    if padded is None or modality != "MR" or not np.any(values[padded] == NO_SIGNAL):
        return padded
    return None


def fill_padding(values: np.ndarray, padded: np.ndarray | None, fill: int = AIR_HU) -> np.ndarray:
    """``values`` with the padded voxels set to ``fill`` (air; an MR's :data:`NO_SIGNAL`), in place
    where the dtype holds it."""
    if padded is None:
        return values
    if values.dtype.kind == "u" and fill < 0:
        values = values.astype(np.int32)
    values[padded] = fill
    return values
