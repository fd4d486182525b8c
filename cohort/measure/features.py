"""Per-structure volume and HU statistics of a label map, in one pass over the voxels.

The foreground voxels are grouped by label once (a stable radix sort of the label ids);
counts, sums and squared deviations come from ``np.bincount`` and the percentiles from one
partition per group, so the cost is linear in the number of voxels whatever the number of
classes. TotalSegmentator's own statistics build one boolean mask per class instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PERCENTILES = (5.0, 50.0, 95.0)


@dataclass(frozen=True)
class StructureMeasurements:
    """Columns of per-label measurements; index ``i`` is label id ``i`` (0 = background)."""

    n_voxels: np.ndarray
    volume_ml: np.ndarray
    mean_hu: np.ndarray
    std_hu: np.ndarray
    median_hu: np.ndarray
    p05_hu: np.ndarray
    p95_hu: np.ndarray
    touches_border: np.ndarray


def measure_structures(
    hu: np.ndarray, labels: np.ndarray, voxel_volume_ml: float, n_labels: int, border_voxels: int = 3
) -> StructureMeasurements:
    """Measure label ids ``0 .. n_labels-1`` of ``labels`` over the CT values ``hu``.

    ``std_hu`` is the population standard deviation; percentiles use linear interpolation
    (numpy's default). Labels with no voxel get ``n_voxels == 0`` and NaN statistics.
    """
    flat_labels = labels.reshape(-1)
    foreground = np.flatnonzero(flat_labels)
    fg_labels = flat_labels[foreground]
    fg_hu = hu.reshape(-1)[foreground]
    del foreground

    counts = np.bincount(fg_labels, minlength=n_labels)[:n_labels]
    counts[0] = np.count_nonzero(flat_labels == 0) if n_labels else 0
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.bincount(fg_labels, weights=fg_hu, minlength=n_labels)[:n_labels] / counts
        deviation = fg_hu - mean[fg_labels]
        std = np.sqrt(np.bincount(fg_labels, weights=deviation * deviation, minlength=n_labels)[:n_labels] / counts)
    del deviation

    percentiles = _grouped_percentiles(fg_labels, fg_hu, counts, n_labels)
    mean[0] = std[0] = np.nan
    return StructureMeasurements(
        n_voxels=counts.astype(np.int64),
        volume_ml=counts * voxel_volume_ml,
        mean_hu=mean,
        std_hu=std,
        median_hu=percentiles[:, 1],
        p05_hu=percentiles[:, 0],
        p95_hu=percentiles[:, 2],
        touches_border=labels_touching_border(labels, n_labels, border_voxels),
    )


def _grouped_percentiles(fg_labels: np.ndarray, fg_hu: np.ndarray, counts: np.ndarray, n_labels: int) -> np.ndarray:
    order = np.argsort(fg_labels, kind="stable")
    grouped_hu = fg_hu[order]
    del order
    result = np.full((n_labels, len(PERCENTILES)), np.nan)
    ends = np.cumsum(counts[1:])
    starts = ends - counts[1:]
    for label in np.flatnonzero(counts[1:]) + 1:
        group = grouped_hu[starts[label - 1] : ends[label - 1]]
        result[label] = np.percentile(group, PERCENTILES)
    return result


def labels_touching_border(labels: np.ndarray, n_labels: int, border_voxels: int) -> np.ndarray:
    """True for every label with a voxel within ``border_voxels`` of any face of the volume.

    This is TotalSegmentator's rule for a structure cut off by the field of view.
    """
    touching = np.zeros(n_labels, dtype=bool)
    if border_voxels <= 0:
        return touching
    b = border_voxels
    for slab in (labels[:b], labels[-b:], labels[:, :b], labels[:, -b:], labels[:, :, :b], labels[:, :, -b:]):
        touching |= np.bincount(slab.reshape(-1), minlength=n_labels)[:n_labels] > 0
    touching[0] = False
    return touching
