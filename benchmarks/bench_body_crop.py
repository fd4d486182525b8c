"""Benchmark: the optional body crop (``body_crop.enabled`` in a model file) on speed and agreement.

Runs one model with and without the crop on the shipped example CTs and on the same CTs padded
with air to a clinical 500 mm field of view (a scanner's reconstruction, before any cropping),
with random weights of the real network size (``--size real``). Prints per series: voxels kept
by the crop, seconds of both, the speed ratio, the voxel agreement of the two label maps, and the
share of the reference segmentation (``example_seg_fast.nii.gz``, TotalSegmentator's own output
on ``example_ct_sm``) that lies inside the crop box: 100 % means the crop cut no labelled structure.

    python benchmarks/bench_body_crop.py --model fast --size real

With random weights the label maps of the two runs differ wherever the argmax is a near-tie
(sliding-window tiles are placed differently on a cropped image): their agreement is a floor,
not what trained weights give.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from cohort.ingest import Volume, load_ct
from cohort.segmentation import get_segmenter, load_model_spec
from cohort.segmentation.body_crop import body_box
from cohort.segmentation.registry import BodyCropSpec
from cohort.testing.weights import build_weights

EXAMPLES = Path(__file__).resolve().parents[1] / "cohort" / "examples"
FOV_MM = 500.0
AIR_HU = -1024


def padded_to_fov(volume: Volume) -> tuple[Volume, tuple[slice, ...]]:
    """``volume`` centred in air on an in-plane field of view of :data:`FOV_MM`; and where it sits."""
    spacing = volume.grid.spacing
    shape = [max(n, int(round(FOV_MM / s))) if axis < 2 else n
             for axis, (n, s) in enumerate(zip(volume.hu.shape, spacing))]
    offsets = [(m - n) // 2 for m, n in zip(shape, volume.hu.shape)]
    data = np.full(shape, AIR_HU, dtype=volume.hu.dtype)
    where = tuple(slice(o, o + n) for o, n in zip(offsets, volume.hu.shape))
    data[where] = volume.hu
    affine = volume.affine.copy()
    affine[:3, 3] -= affine[:3, :3] @ np.array(offsets)
    return Volume(hu=data, affine=affine, source=volume.source, name=volume.name + "@500mm"), where


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="fast")
    parser.add_argument("--size", choices=("small", "real"), default="real")
    args = parser.parse_args()
    spec = load_model_spec(args.model)
    cropped_spec = dataclasses.replace(spec, body_crop=BodyCropSpec(enabled=True))
    weights = Path(tempfile.mkdtemp())
    build_weights(spec, weights, args.size, seed=0)
    plain, cropped = get_segmenter(spec, weights, "cpu"), get_segmenter(cropped_spec, weights, "cpu")
    reference = np.asanyarray(nib.load(EXAMPLES / "example_seg_fast.nii.gz").dataobj)
    ct = load_ct(EXAMPLES / "example_ct.nii.gz")
    sm = load_ct(EXAMPLES / "example_ct_sm.nii.gz")
    padded, inner = padded_to_fov(sm)  # the reference is TotalSegmentator's output on example_ct_sm
    cases = [(sm, reference, None), (ct, None, None), (padded, reference, inner), (padded_to_fov(ct)[0], None, None)]
    totals = {"plain": 0.0, "cropped": 0.0}
    print(f"model {spec.name}, {args.size} random weights, body crop threshold {cropped_spec.body_crop.threshold_hu:g} HU, "
          f"margin {cropped_spec.body_crop.margin_mm:g} mm")
    print("series                 shape          kept   plain_s  crop_s  speedup  agree   ref_inside")
    for volume, ref, where in cases:
        seconds = {}
        labels = {}
        for name, segmenter in (("plain", plain), ("cropped", cropped)):
            tick = time.perf_counter()
            labels[name] = segmenter.segment(volume).label_map.labels
            seconds[name] = time.perf_counter() - tick
            totals[name] += seconds[name]
        box = body_box(volume.hu, volume.grid.spacing, cropped_spec.body_crop)
        kept = volume.hu[box].size / volume.hu.size
        agree = float((labels["plain"] == labels["cropped"]).mean())
        inside = "-"
        if ref is not None:
            full_ref = np.zeros(volume.hu.shape, dtype=ref.dtype)
            full_ref[where or tuple(slice(None) for _ in range(3))] = ref
            mask = np.zeros(volume.hu.shape, dtype=bool)
            mask[box] = True
            inside = f"{100 * (full_ref[mask] > 0).sum() / max(1, (full_ref > 0).sum()):.2f} %"
        print(f"{volume.name:22s} {str(volume.hu.shape):14s} {100 * kept:5.1f} %  {seconds['plain']:6.1f}  "
              f"{seconds['cropped']:6.1f}  {seconds['plain'] / seconds['cropped']:5.2f}x  {100 * agree:5.1f} %  {inside}")
    print(f"total: plain {totals['plain']:.1f} s, cropped {totals['cropped']:.1f} s, "
          f"ratio {totals['plain'] / totals['cropped']:.2f}x")


if __name__ == "__main__":
    main()
