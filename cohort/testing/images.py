"""Small synthetic CT and MR volumes (a body with a spine) for end-to-end tests of every model.

A CT holds air at -1000 HU around a 40 HU body with a 700 HU bone column; an MR (arbitrary
units) has 0-20 noise outside a 300-900 body and no negative values. Dixon ``fat``/``water``
images split the MR signal with a known fat fraction that grows along x.

>>> image = synthetic_image("MR", (20, 16, 8), (2.0, 2.0, 3.0))
>>> image.shape, bool(image.get_fdata().min() >= 0)
((20, 16, 8), True)
"""

from __future__ import annotations

import nibabel as nib
import numpy as np


def body_mask(shape: tuple[int, int, int]) -> np.ndarray:
    """An elliptic cylinder along z filling the middle of the x-y plane."""
    x, y = np.meshgrid(np.linspace(-1, 1, shape[0]), np.linspace(-1, 1, shape[1]), indexing="ij")
    return np.repeat(((x / 0.7) ** 2 + (y / 0.55) ** 2 <= 1)[:, :, None], shape[2], axis=2)


def synthetic_image(modality: str, shape: tuple[int, int, int], spacing: tuple[float, float, float],
                    seed: int = 0) -> nib.Nifti1Image:
    """A CT (int16, HU) or MR (float32, arbitrary units) body on an RAS grid of ``spacing``."""
    rng = np.random.default_rng(seed)
    body = body_mask(shape)
    spine = np.zeros(shape, dtype=bool)
    cx, cy = shape[0] // 2, int(shape[1] * 0.7)
    spine[cx - 2:cx + 2, cy - 2:cy + 2, :] = True
    if modality == "CT":
        data = np.where(body, 40, -1000) + np.where(spine, 660, 0) + rng.normal(0, 10, shape)
        data = data.astype(np.int16)
    else:
        data = np.where(body, rng.uniform(300, 900, shape), rng.uniform(0, 20, shape))
        data = np.where(spine, 150.0, data).astype(np.float32)
    return nib.Nifti1Image(data, np.diag([*spacing, 1.0]))


def known_fat_fraction(shape: tuple[int, int, int]) -> np.ndarray:
    """The planted voxelwise fat fraction: 0.05 at x = 0 rising linearly to 0.65 at the last x."""
    return np.broadcast_to(np.linspace(0.05, 0.65, shape[0])[:, None, None], shape)


def dixon_pair(image: nib.Nifti1Image) -> tuple[nib.Nifti1Image, nib.Nifti1Image]:
    """``(fat, water)`` splitting ``image``'s signal by :func:`known_fat_fraction`."""
    signal = np.asarray(image.dataobj, dtype=np.float32)
    fraction = known_fat_fraction(signal.shape)
    fat = nib.Nifti1Image((signal * fraction).astype(np.float32), image.affine)
    water = nib.Nifti1Image((signal * (1 - fraction)).astype(np.float32), image.affine)
    return fat, water
