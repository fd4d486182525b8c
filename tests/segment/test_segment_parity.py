"""Parity with TotalSegmentator's own CLI on identical (random) weights: label maps voxel-wise.

Skipped unless TotalSegmentator is installed (the ``parity`` extra). Uses the small random
networks so it stays cheap; ``benchmarks/bench_segment.py`` runs the real-size ones.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from cohort.segmentation import get_segmenter
from cohort.testing.parity import compare, run_totalsegmentator, totalsegmentator_env
from cohort.segmentation.registry import model_class_map

pytest.importorskip("totalsegmentator")


def test_fast_equals_totalsegmentator(fast_spec, fast_weights, example_sm, tmp_path):
    home = tmp_path / "home"
    shutil.copytree(fast_weights, home / "nnunet" / "results")
    run_totalsegmentator(Path(example_sm.source), tmp_path / "ts.nii.gz", totalsegmentator_env(home), ["--fast"])
    theirs = np.asanyarray(nib.load(tmp_path / "ts.nii.gz").dataobj)
    ours = get_segmenter(fast_spec, fast_weights, "cpu").segment(example_sm).label_map.labels
    agreement = compare(ours, theirs, model_class_map(fast_spec))
    print("\n".join(agreement.lines()))
    assert agreement.identical >= 0.999
