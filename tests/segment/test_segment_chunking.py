"""Planning z-chunks: every slice kept exactly once, chunks within budget, clear failure."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cohort.segmentation.chunking import ChunkTooLarge, overlap_slices, plan_chunks, predict_in_chunks


@pytest.mark.parametrize("nz, max_slices, overlap", [(100, 60, 10), (900, 300, 34), (57, 20, 3), (10, 10, 2)])
def test_chunks_cover_each_slice_once_within_budget(nz, max_slices, overlap):
    chunks = plan_chunks((8, 8, nz), 8 * 8 * max_slices, overlap)
    kept = [z for c in chunks for z in range(c.keep_start, c.keep_stop)]
    assert kept == list(range(nz))
    for c in chunks:
        assert c.stop - c.start <= max_slices
        assert c.start == max(0, c.keep_start - overlap) and c.stop == min(nz, c.keep_stop + overlap)


def test_small_volume_is_one_chunk():
    assert len(plan_chunks((512, 512, 100), 512 * 512 * 100, 30)) == 1


def test_too_wide_fails_clearly():
    with pytest.raises(ChunkTooLarge, match="in-plane"):
        plan_chunks((512, 512, 400), 512 * 512 * 40, 20)


def test_overlap_in_slices():
    assert overlap_slices(50, 1.5) == 34 and overlap_slices(50, 3.0) == 17 and overlap_slices(0, 3.0) == 0


def test_stitching_a_local_prediction_equals_the_whole():
    rng = np.random.default_rng(0)
    image = torch.from_numpy(rng.integers(-1000, 1000, size=(7, 5, 53)))
    local = lambda slab: (slab > 0).to(torch.uint8) + (slab > 500)
    chunks = plan_chunks(tuple(image.shape), 7 * 5 * 15, 4)
    assert len(chunks) > 3
    assert torch.equal(predict_in_chunks(image, chunks, local), local(image))


@pytest.mark.parametrize("max_voxels", [10_000, 4 * 4 * 4])
def test_labels_above_255_are_kept(max_voxels):
    """A network of more than 256 classes returns int32 labels: stitching must not wrap them."""
    image = np.zeros((4, 4, 12), dtype=np.int32)
    wide = lambda slab: torch.full(slab.shape, 300, dtype=torch.int32)
    labels = predict_in_chunks(image, plan_chunks(image.shape, max_voxels, 1), wide)
    assert labels.dtype == torch.int32 and bool((labels == 300).all())
