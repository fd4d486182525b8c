"""Per-structure volume and HU statistics of a label map, in one pass over the voxels.

The foreground voxels are grouped by label once (a stable radix sort of the label ids), then
each structure's values are a contiguous slice: mean, standard deviation and percentiles
(one partition) are computed on that slice alone. The cost is linear in the number of voxels
whatever the number of classes; TotalSegmentator's own statistics build one boolean mask of
the whole volume per class instead.
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
    largest_label: int


def measure_structures(
    hu: np.ndarray, labels: np.ndarray, voxel_volume_ml: float, n_labels: int, border_voxels: int = 3
) -> StructureMeasurements:
    """Measure label ids ``0 .. n_labels-1`` of ``labels`` over the CT values ``hu``.

    ``std_hu`` is the population standard deviation; percentiles use linear interpolation
    (numpy's default). Labels with no voxel get ``n_voxels == 0`` and NaN statistics; ids of
    ``n_labels`` or more are not measured (``largest_label`` tells whether there were any).
    """
    flat_labels = labels.reshape(-1)
    foreground = flat_labels != 0
    fg_labels = flat_labels[foreground]
    order = np.argsort(fg_labels, kind="stable")  # a radix sort for 8/16-bit ids: linear time
    grouped_hu = hu.reshape(-1)[foreground][order]
    sorted_labels = fg_labels[order]
    group_edges = np.searchsorted(sorted_labels, np.arange(1, n_labels + 1))
    largest_label = int(sorted_labels[-1]) if sorted_labels.size else 0
    del order, fg_labels, sorted_labels

    counts = np.zeros(n_labels, dtype=np.int64)
    counts[0] = flat_labels.size - int(np.count_nonzero(foreground))
    stats = np.full((n_labels, 5), np.nan)  # mean, std, p05, median, p95
    for label in range(1, n_labels):
        start, end = group_edges[label - 1], group_edges[label]
        counts[label] = end - start
        if end > start:
            stats[label] = _group_statistics(grouped_hu[start:end])
    return StructureMeasurements(
        n_voxels=counts,
        volume_ml=counts * voxel_volume_ml,
        mean_hu=stats[:, 0],
        std_hu=stats[:, 1],
        p05_hu=stats[:, 2],
        median_hu=stats[:, 3],
        p95_hu=stats[:, 4],
        touches_border=labels_touching_border(labels, n_labels, border_voxels),
        largest_label=largest_label,
    )


def _group_statistics(values: np.ndarray) -> list[float]:
    mean = values.mean(dtype=np.float64)
    std = np.sqrt(np.mean(np.square(values - mean, dtype=np.float64)))
    return [mean, std, *np.percentile(values, PERCENTILES)]


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
