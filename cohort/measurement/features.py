"""Per-structure volume and intensity statistics of a label map, in one pass over the voxels.

Integer images (CT in HU, most MR) are counted into one histogram per label: a ``bincount`` of
``label x value`` codes, slab by slab, so memory stays small and the cost is one linear pass
whatever the number of classes. Mean, standard deviation and percentiles then come from the
histograms exactly: the mean is an exact integer sum over a count, and each percentile is found
by its rank in the cumulative counts and interpolated as numpy does. Floating-point images
(scaled CTs, some MR) are grouped by label instead (a stable radix sort of the label ids) and
each structure's values measured as a contiguous slice. TotalSegmentator's own statistics build
one boolean mask of the whole volume per class, one pass per class.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

PERCENTILES = (5.0, 50.0, 95.0)
SLAB_VOXELS = 4_000_000
"""Voxels per histogram slab: the label x value codes of one slab (int64) take 32 MB."""
MAX_HISTOGRAM_BINS = 1 << 25
"""Above this many (label, value) bins (256 MB of counts) the sort path is used instead."""


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
    hu: np.ndarray, labels: np.ndarray, voxel_volume_ml: float, n_labels: int, border_voxels: int = 3,
    outside_fov: np.ndarray | None = None, device: torch.device | None = None,
) -> StructureMeasurements:
    """Measure label ids ``0 .. n_labels-1`` of ``labels`` over the image values ``hu``.

    ``outside_fov`` (the image's padding, None: none) is an edge of the field of view like the
    volume's faces: see :func:`labels_touching_border`. ``device``: a GPU to count an integer
    image's histograms on (:mod:`cohort.measurement.on_device`; the same counts), None for the CPU.

    ``std_hu`` is the population standard deviation; percentiles use linear interpolation
    (numpy's default). Labels with no voxel get ``n_voxels == 0`` and NaN statistics; ids of
    ``n_labels`` or more are not measured (``largest_label`` tells whether there were any).
    """
    if hu.shape != labels.shape:
        raise ValueError(f"image {hu.shape} and label map {labels.shape} differ in shape")
    value_range = _integer_range(hu)
    if value_range is not None and (n_labels + 1) * (value_range[1] - value_range[0] + 1) <= MAX_HISTOGRAM_BINS:
        values = np.arange(value_range[0], value_range[1] + 1, dtype=np.int64)
        histograms = _histograms_where(device, hu, labels, n_labels, values)
        counts, stats = _statistics_from_histograms(histograms, values)
    else:
        counts, stats = _statistics_from_sorted_groups(hu, labels, n_labels)
    return StructureMeasurements(
        n_voxels=counts,
        volume_ml=counts * voxel_volume_ml,
        mean_hu=stats[:, 0],
        std_hu=stats[:, 1],
        p05_hu=stats[:, 2],
        median_hu=stats[:, 3],
        p95_hu=stats[:, 4],
        touches_border=labels_touching_border(labels, n_labels, border_voxels, outside_fov),
        largest_label=int(labels.max()) if labels.size else 0,
    )


def _integer_range(hu: np.ndarray) -> tuple[int, int] | None:
    """The image's lowest and highest value; None for a float (or empty) image."""
    if not np.issubdtype(hu.dtype, np.integer) or hu.size == 0:
        return None
    return int(hu.min()), int(hu.max())


def label_value_histograms(hu: np.ndarray, labels: np.ndarray, n_labels: int, values: np.ndarray) -> np.ndarray:
    """Counts of each integer value per label: ``histograms[label, i]`` counts the voxels of
    ``label`` with value ``values[i]`` (``values``: consecutive integers covering ``hu``).

    Ids of ``n_labels`` or more share one extra last row, so no bin is ever out of range.
    """
    lowest = int(values[0])
    rows = n_labels + 1
    flat = np.zeros(rows * values.size, dtype=np.int64)
    axis = _slowest_axis(hu)
    step = max(1, SLAB_VOXELS * hu.shape[axis] // hu.size)
    for start in range(0, hu.shape[axis], step):
        slab = (slice(None),) * axis + (slice(start, start + step),)
        codes = labels[slab].astype(np.intp)
        np.minimum(codes, n_labels, out=codes)
        codes *= values.size
        codes += hu[slab]
        codes -= lowest
        flat += np.bincount(codes.ravel(order="K"), minlength=flat.size)
    return flat.reshape(rows, values.size)[:n_labels]


def _slowest_axis(array: np.ndarray) -> int:
    """The axis with the largest stride: its slabs are contiguous in memory."""
    return int(np.argmax(np.abs(array.strides)))


def _histograms_where(device: torch.device | None, hu: np.ndarray, labels: np.ndarray, n_labels: int,
                      values: np.ndarray) -> np.ndarray:
    """The histograms counted on ``device`` (the CPU's numpy when None or when it runs out of memory)."""
    if device is not None:
        import torch

        from cohort.measurement.on_device import label_value_histograms_on_device

        try:
            return label_value_histograms_on_device(hu, labels, n_labels, values, device)
        except torch.OutOfMemoryError:
            log.warning("counting %.0f M voxels ran out of memory on %s; counting on the CPU instead",
                        hu.size / 1e6, device)
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return label_value_histograms(hu, labels, n_labels, values)


def _statistics_from_histograms(histograms: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Counts and (mean, std, p05, median, p95) per label from its row of ``histograms``."""
    n_labels = histograms.shape[0]
    counts = histograms.sum(axis=1)
    stats = np.full((n_labels, 5), np.nan)  # mean, std, p05, median, p95
    present = np.flatnonzero(counts[1:]) + 1  # the background is counted, not measured
    if present.size == 0:
        return counts, stats
    histograms, n = histograms[present], counts[present]
    mean = (histograms @ values) / n  # exact integer sums: the same mean as numpy's
    deviations = values[None, :] - mean[:, None]
    stats[present, 0] = mean
    stats[present, 1] = np.sqrt(np.einsum("lv,lv->l", histograms, deviations * deviations) / n)
    cumulative = np.cumsum(histograms, axis=1)
    for row, label in enumerate(present):
        stats[label, 2:] = _percentiles_from_counts(cumulative[row], values)
    return counts, stats


def _percentiles_from_counts(cumulative: np.ndarray, values: np.ndarray) -> np.ndarray:
    """:data:`PERCENTILES` of the sorted values a cumulative histogram describes, with numpy's
    linear method: the same virtual index, neighbours and interpolation as ``np.percentile``."""
    n = int(cumulative[-1])
    virtual = (n - 1) * (np.asarray(PERCENTILES) / 100)
    previous = np.clip(np.floor(virtual), 0, n - 1).astype(np.int64)
    following = np.minimum(previous + 1, n - 1)
    gamma = virtual - previous
    below = values[np.searchsorted(cumulative, previous, side="right")].astype(np.float64)
    above = values[np.searchsorted(cumulative, following, side="right")].astype(np.float64)
    difference = above - below
    return np.where(gamma >= 0.5, above - difference * (1 - gamma), below + difference * gamma)


def _statistics_from_sorted_groups(hu: np.ndarray, labels: np.ndarray, n_labels: int) -> tuple[np.ndarray, np.ndarray]:
    flat_labels = labels.reshape(-1)
    foreground = flat_labels != 0
    fg_labels = flat_labels[foreground]
    order = np.argsort(fg_labels, kind="stable")  # a radix sort for 8/16-bit ids: linear time
    grouped_hu = hu.reshape(-1)[foreground][order]
    group_edges = np.searchsorted(fg_labels[order], np.arange(1, n_labels + 1))
    del order, fg_labels

    counts = np.zeros(n_labels, dtype=np.int64)
    counts[0] = flat_labels.size - int(np.count_nonzero(foreground))
    stats = np.full((n_labels, 5), np.nan)
    for label in range(1, n_labels):
        start, end = group_edges[label - 1], group_edges[label]
        counts[label] = end - start
        if end > start:
            stats[label] = _group_statistics(grouped_hu[start:end])
    return counts, stats


def _group_statistics(values: np.ndarray) -> list[float]:
    mean = values.mean(dtype=np.float64)
    std = np.sqrt(np.mean(np.square(values - mean, dtype=np.float64)))
    return [mean, std, *np.percentile(values, PERCENTILES)]


def labels_touching_border(labels: np.ndarray, n_labels: int, border_voxels: int,
                           outside_fov: np.ndarray | None = None) -> np.ndarray:
    """True for every label with a voxel within ``border_voxels`` of any face of the volume, or
    of a voxel of ``outside_fov`` (the padding around a circular reconstruction field).

    The faces are TotalSegmentator's rule for a structure cut off by the field of view. A CT's
    field is often the circle inscribed in the image: a patient wider than it is cut along the
    circle, mostly away from the faces, and the cut structures border the padding instead.
    """
    touching = np.zeros(n_labels, dtype=bool)
    if border_voxels <= 0:
        return touching
    b = border_voxels
    for slab in (labels[:b], labels[-b:], labels[:, :b], labels[:, -b:], labels[:, :, :b], labels[:, :, -b:]):
        touching |= np.bincount(slab.reshape(-1), minlength=n_labels)[:n_labels] > 0
    if outside_fov is not None and outside_fov.any():
        near = _labels_near(labels, outside_fov, b).reshape(-1)
        touching |= np.bincount(near[near != 0], minlength=n_labels)[:n_labels] > 0  # mostly air: 0
    touching[0] = False
    return touching


def _labels_near(labels: np.ndarray, mask: np.ndarray, distance: int) -> np.ndarray:
    """The labels of the voxels within ``distance`` (in each axis) of a voxel of ``mask``.

    A reconstruction field is usually the same in every slice: then one slice's mask is dilated
    (milliseconds) instead of the volume's (0.75 s for 512 x 512 x 300), with the same result.
    """
    size = 2 * distance + 1
    if np.array_equal(mask.all(axis=-1), mask.any(axis=-1)):
        near = ndimage.maximum_filter(mask[..., 0].astype(np.uint8), size=size, mode="constant").astype(bool)
    else:
        near = ndimage.maximum_filter(mask.view(np.uint8), size=size, mode="constant").view(bool)
    return labels[near]
