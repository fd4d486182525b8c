"""Benchmark: reading a ``labels`` folder of 117 gzipped masks against its multilabel file.

Builds, from the shipped example's real TotalSegmentator v2 map (``example_seg.nii.gz``) and CT,
a clinical-size pair by repeating voxels (``--repeat 4,5,10``: 488 x 505 x 300, 74 M voxels), writes
the map as one uint8 mask per structure of ``class_map_total_v2.csv`` as TotalSegmentator does
(gzip level 6 by nibabel, empty masks for absent structures), then times
``cohort.ingest.load_labels`` (wall and CPU seconds) on the multilabel file and on the folder, the
latter twice in turn: as read (chunk by chunk, ``cohort.ingest.masks._inflated_voxels``) and with
every mask read whole by nibabel (the reader of masks stored otherwise, and of every mask before
chunked reading). Checks that all three give the same label map and prints the CPU ratio of the
two folder readers.

    python benchmarks/bench_label_masks.py --repeat 4,5,10 --rounds 3
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from pathlib import Path
from unittest import mock

import nibabel as nib
import numpy as np

from cohort.config import ClassMap, load_class_map
from cohort.ingest import LabelMap, Volume, load_ct, load_labels, masks
from cohort.manifest import example_manifest

READERS = {  # how the folder's masks are read: as cohort does, and all whole by nibabel
    "chunked": contextlib.nullcontext,
    "nibabel": lambda: mock.patch.object(masks, "_inflated_voxels", return_value=None),
}


def build(folder: Path, repeat: tuple[int, ...]) -> None:
    """``ct.nii.gz``, ``seg.nii.gz`` and ``segmentations/`` (one mask per structure) in ``folder``."""
    examples = example_manifest().parent
    seg, ct = nib.load(str(examples / "example_seg.nii.gz")), nib.load(str(examples / "example_ct_sm.nii.gz"))
    labels, values = np.asanyarray(seg.dataobj), np.asanyarray(ct.dataobj)
    for axis, times in enumerate(repeat):
        labels, values = np.repeat(labels, times, axis=axis), np.repeat(values, times, axis=axis)
    affine = seg.affine.copy()
    affine[:3, :3] /= np.array(repeat)
    nib.save(nib.Nifti1Image(labels.astype(np.uint8), affine), str(folder / "seg.nii.gz"))
    nib.save(nib.Nifti1Image(values.astype(np.int16), affine), str(folder / "ct.nii.gz"))
    (folder / "segmentations").mkdir()
    for label, structure in load_class_map("class_map_total_v2.csv").names.items():
        mask = (labels == label).astype(np.uint8)
        nib.save(nib.Nifti1Image(mask, affine), str(folder / "segmentations" / f"{structure}.nii.gz"))


def timed(what: str, source: Path, volume: Volume, class_map: ClassMap) -> tuple[LabelMap, float]:
    """The label map of ``source`` and the CPU seconds it took; prints wall and CPU seconds."""
    wall, cpu = time.perf_counter(), time.process_time()
    labels = load_labels(source, volume, class_map)
    cpu = time.process_time() - cpu
    print(f"  {what:28s} {time.perf_counter() - wall:6.2f} s wall {cpu:6.2f} s CPU")
    return labels, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", default="4,5,10", help="voxel repeats along x,y,z of the 122x101x30 example")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    class_map = load_class_map("class_map_total_v2.csv")
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        build(folder, tuple(int(n) for n in args.repeat.split(",")))
        volume = load_ct(folder / "ct.nii.gz")
        print(f"image {volume.hu.shape} ({volume.hu.size / 1e6:.1f} M voxels), {len(class_map.names)} masks")
        cpu = dict.fromkeys(READERS, 0.0)
        for round_ in range(args.rounds):
            expected, _ = timed("multilabel file", folder / "seg.nii.gz", volume, class_map)
            for reader in sorted(READERS, reverse=bool(round_ % 2)):  # in turn: load on the machine hits both alike
                with READERS[reader]():
                    labels, seconds = timed(f"mask folder, {reader}", folder / "segmentations", volume, class_map)
                assert np.array_equal(expected.labels, labels.labels)
                cpu[reader] += seconds
        print(f"mask folder: nibabel / chunked CPU {cpu['nibabel'] / cpu['chunked']:.1f}x over {args.rounds} rounds")


if __name__ == "__main__":
    main()
