"""Fat fraction of each structure from water/fat (Dixon) images: fat / (water + fat).

The NAKO and UK Biobank biomarker (liver fat, muscle fat infiltration). Per structure it is the
ratio of the summed signals, ``sum(fat) / (sum(water) + sum(fat))`` over the mask, not the mean
of the voxelwise fraction: a voxel at the mask border or in noise has water + fat near zero and
a voxelwise fraction anywhere in [0, 1] (or undefined), which the mean would weigh like any other
voxel; the ratio of sums weighs each voxel by its signal, so such voxels barely count. Where
the signal is uniform (a homogeneous organ) both definitions agree.

Signals below zero count as zero: Dixon fat and water images are magnitudes, so a negative
voxel is noise of a scaled image or padding outside the field of view (set to -1024 on
ingest, ``cohort.ingest.padding``). Summed as they are, one padded voxel in a mask made its
total negative (a NaN fraction) and a negative water signal gave fractions above 1; clipped,
every fraction lies in [0, 1].

>>> import numpy as np
>>> labels = np.array([[[1, 1, 2, 0]]]); water = np.array([[[3.0, 6.0, 1.0, 9.0]]])
>>> fat = np.array([[[1.0, 2.0, 1.0, 9.0]]])
>>> fat_fractions(fat, water, labels, 3).round(3).tolist()
[nan, 0.25, 0.5]
"""

from __future__ import annotations

import numpy as np


def fat_fractions(fat: np.ndarray, water: np.ndarray, labels: np.ndarray, n_labels: int) -> np.ndarray:
    """Fat fraction per label id ``0 .. n_labels-1`` (NaN for background, empty labels and masks
    without signal); ids of ``n_labels`` or more are ignored."""
    flat = labels.reshape(-1)
    inside = (flat > 0) & (flat < n_labels)
    ids = flat[inside]
    fat_sum = np.bincount(ids, weights=_signal(fat, inside), minlength=n_labels)
    water_sum = np.bincount(ids, weights=_signal(water, inside), minlength=n_labels)
    total = fat_sum + water_sum
    fractions = np.full(n_labels, np.nan)
    np.divide(fat_sum, total, out=fractions, where=total > 0)
    fractions[0] = np.nan
    return fractions


def _signal(image: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """The image's voxels where ``inside`` (flat), as float64 with negatives (noise, padding) at 0."""
    return np.maximum(image.reshape(-1)[inside].astype(np.float64), 0.0)
