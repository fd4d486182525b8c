"""Benchmark: measuring one 117-class label map of 512x512x300 voxels.

cohort's one-pass ``measure_structures`` against TotalSegmentator's
``totalsegmentator.statistics.get_basic_statistics`` on the same arrays, in the same process,
checking that both give the same volumes and mean HU. Needs ``pip install -c constraints.txt
TotalSegmentator`` (the parity extra); ``--no-reference`` runs without it. Also times cohort's
two ways of grouping voxels, per-label histograms (integer CTs) and sorting by label (float
images), on the same arrays.

    python benchmarks/bench_measure.py [--repeats 3] [--no-reference]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from cohort.config import load_class_map
from cohort.measurement import features, measure_structures

EXAMPLES = Path(__file__).resolve().parents[1] / "cohort" / "examples"
SHAPE = (512, 512, 300)


def realistic_pair() -> tuple[nib.Nifti1Image, np.ndarray]:
    """The example CT and its full-model labels, resampled (nearest) to 512x512x300."""
    ct = nib.load(str(EXAMPLES / "example_ct_sm.nii.gz"))
    labels = np.asanyarray(nib.load(str(EXAMPLES / "example_seg.nii.gz")).dataobj)
    zoom = [n / s for n, s in zip(SHAPE, labels.shape)]
    big_labels = ndimage.zoom(labels, zoom, order=0)
    big_ct = ndimage.zoom(np.asanyarray(ct.dataobj), zoom, order=0).astype(np.int16)
    affine = ct.affine.copy()
    affine[:3, :3] = affine[:3, :3] / np.array(zoom)
    return nib.Nifti1Image(big_ct, affine), big_labels


def circular_field(shape: tuple[int, int, int], vary_slice: bool = False) -> np.ndarray:
    """The padding outside the circle inscribed in each slice (``measure.fov_edge``'s second edge);
    ``vary_slice``: one slice without it, so the volume's mask must be dilated."""
    x, y = np.mgrid[:shape[0], :shape[1]] - (np.array(shape[:2])[:, None, None] - 1) / 2
    field = np.repeat((np.hypot(x, y) > shape[0] / 2)[:, :, None], shape[2], axis=2)
    if vary_slice:
        field[:, :, shape[2] // 2] = False
    return field


def best_of(repeats: int, function) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return min(times), result


def time_sorting_path(repeats: int, ct: np.ndarray, labels: np.ndarray, voxel_ml: float, n_labels: int) -> float:
    """Best time of the sort path on the same arrays, checked against the histogram path."""
    histogram_path = measure_structures(ct, labels, voxel_ml, n_labels)
    limit, features.MAX_HISTOGRAM_BINS = features.MAX_HISTOGRAM_BINS, 0
    try:
        seconds, sorted_path = best_of(repeats, lambda: measure_structures(ct, labels, voxel_ml, n_labels))
    finally:
        features.MAX_HISTOGRAM_BINS = limit
    for column in ("n_voxels", "mean_hu", "median_hu", "p05_hu", "p95_hu"):
        np.testing.assert_array_equal(getattr(histogram_path, column), getattr(sorted_path, column), err_msg=column)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-reference", action="store_true", help="skip TotalSegmentator's statistics")
    args = parser.parse_args()
    ct_image, labels = realistic_pair()
    class_map = load_class_map("class_map_total_v2.csv")
    voxel_ml = float(np.prod(ct_image.header.get_zooms())) / 1000
    print(f"label map {labels.shape}, {len(np.unique(labels)) - 1} structures present, {labels.size / 1e6:.0f} M voxels")

    ct = np.asanyarray(ct_image.dataobj)
    ours_s, ours = best_of(args.repeats, lambda: measure_structures(ct, labels, voxel_ml, class_map.n_labels))
    sorting_s = time_sorting_path(args.repeats, ct, labels, voxel_ml, class_map.n_labels)
    print(f"cohort measure_structures, per-label histograms (integer CT): {ours_s:6.2f} s")
    print(f"cohort measure_structures, grouped by sorting (float images): {sorting_s:6.2f} s "
          f"({sorting_s / ours_s:.1f}x the histograms)")
    for field, what in ((circular_field(labels.shape), "the same in every slice"),
                        (circular_field(labels.shape, vary_slice=True), "one slice differs")):
        padded_s, _ = best_of(args.repeats, lambda: measure_structures(ct, labels, voxel_ml, class_map.n_labels,
                                                                       outside_fov=field))
        print(f"  with the padding of a circular field as an edge ({what}): {padded_s:6.2f} s "
              f"(+{padded_s - ours_s:.2f} s)")
    if args.no_reference:
        return
    from totalsegmentator.statistics import get_basic_statistics

    theirs_s, theirs = best_of(1, lambda: get_basic_statistics(labels, ct_image, quiet=True,
                                                               exclude_masks_at_border=False))
    for label, name in class_map.names.items():
        assert abs(ours.volume_ml[label] * 1000 - theirs[name]["volume"]) < 1e-3, name
        if ours.n_voxels[label]:
            assert abs(ours.mean_hu[label] - theirs[name]["intensity"]) <= 0.5e-5 + 1e-9, name
    print(f"TotalSegmentator get_basic_statistics (volume, mean):         {theirs_s:6.2f} s")
    print(f"same volumes and mean HU for all {len(class_map.names)} classes; speed-up {theirs_s / ours_s:.1f}x")


if __name__ == "__main__":
    main()
