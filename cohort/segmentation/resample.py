"""Geometry around the network: to RAS and the model spacing, and back to the CT's own grid.

These are the steps TotalSegmentator takes (Wasserthal et al. 2023; see
``shared/reference/totalsegmentator_inference_facts.md``): reorient to the closest canonical
orientation without interpolation, resample with ``scipy.ndimage.zoom`` (linear, edge mode
``nearest``, values cast to int32), and after prediction resample the labels back with order 0
and undo the reorientation. Doing the same arithmetic is what makes the label maps agree. On a GPU
the same arithmetic runs in torch (:mod:`cohort.segmentation.zoom`) on the network's device, so the
full-resolution image and label map never pass through the CPU's interpolation.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import nibabel as nib
import numpy as np
import torch
from scipy import ndimage

from cohort.segmentation.zoom import linear_zoom, nearest_zoom, zoom_shape

CPU = torch.device("cpu")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Canonical:
    """An (x, y, z) array reoriented to RAS and the transform that undoes it."""

    array: np.ndarray
    spacing: tuple[float, float, float]
    to_native: np.ndarray  # nibabel orientation array mapping the canonical axes back


RAS = ("R", "A", "S")


def to_canonical(array: np.ndarray, affine: np.ndarray, axcodes: tuple[str, ...] = RAS) -> Canonical:
    """Permute and flip axes so the array is in the closest orientation to ``axcodes`` (RAS by default;
    a network's ``dataset.json`` may name another, e.g. ``("P", "I", "R")``)."""
    target = nib.orientations.axcodes2ornt(axcodes)
    ornt = nib.orientations.ornt_transform(nib.orientations.io_orientation(affine), target)
    canonical = nib.orientations.apply_orientation(array, ornt)
    # io_orientation sends native axis i to canonical axis ornt[i, 0]: spacings travel with their axes.
    spacing = np.empty(3)
    spacing[ornt[:, 0].astype(int)] = np.linalg.norm(affine[:3, :3], axis=0)
    back = nib.orientations.ornt_transform(target,
                                           nib.orientations.axcodes2ornt(nib.orientations.aff2axcodes(affine)))
    return Canonical(canonical, (float(spacing[0]), float(spacing[1]), float(spacing[2])), back)


def to_native(labels: torch.Tensor, canonical: Canonical) -> torch.Tensor:
    """Undo :func:`to_canonical` on a label tensor of the canonical shape (flips, then the axes
    permuted, as nibabel's ``apply_orientation``), where ``labels`` is."""
    ornt = canonical.to_native
    flips = [axis for axis in range(3) if ornt[axis, 1] == -1]
    flipped = labels.flip(flips) if flips else labels
    return flipped.permute(*np.argsort(ornt[:, 0]).tolist()).contiguous()


def resample_image(array: np.ndarray, spacing: tuple[float, ...], target: tuple[float, ...], order: int = 1,
                   dtype: str = "int32", device: torch.device = CPU) -> torch.Tensor:
    """Resampling of an image to ``target`` spacing (mm): linear (``order`` 1), nearest (0) or cubic
    spline (3, scipy's, on the CPU), values cast to ``dtype`` (TotalSegmentator: int32); a tensor
    left where it was computed: on ``device`` when it is a GPU (the network's preprocessing reads it
    there), on the CPU otherwise.

    Computed in float64 as TotalSegmentator does (it reads the image with ``get_fdata``), so that
    the int32 truncation lands on the same values: on the CPU with ``scipy.ndimage.zoom`` itself,
    on a GPU with the same arithmetic in torch (:mod:`cohort.segmentation.zoom`). A GPU without
    the memory for it (a very large CT beside other series) hands the work to the CPU.
    """
    zoom = np.asarray(spacing, dtype=float) / np.asarray(target, dtype=float)
    same_grid = bool(np.allclose(zoom, 1.0))
    if device.type != "cpu" and order in (0, 1):  # a cubic spline (order 3) runs on the CPU
        try:
            image = torch.from_numpy(np.ascontiguousarray(array)).to(device)
            if not same_grid:
                shape = zoom_shape(array.shape, zoom)
                image = linear_zoom(image, shape) if order == 1 else nearest_zoom(image, shape).to(torch.float64)
            return image.to(getattr(torch, dtype))
        except torch.OutOfMemoryError:
            _out_of_device_memory(device, array.size)
    if same_grid:
        values = np.asarray(array, dtype=np.float64)
    else:  # scipy interpolates in float64 whatever the input's type: no float64 copy of the CT first
        values = ndimage.zoom(array, zoom, order=order, mode="nearest", output=np.float64)
    return torch.from_numpy(values.astype(dtype))


def resample_labels(labels: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Nearest-neighbour (order 0) resampling of a label tensor to ``shape`` where it is: an index
    gather per axis, identical to ``scipy.ndimage.zoom(order=0)`` and faster on a CPU too (numpy's
    gather there)."""
    if tuple(labels.shape) == tuple(shape):
        return labels
    if labels.device.type == "cpu":
        return torch.from_numpy(nearest_zoom(labels.numpy(), tuple(shape)))
    return nearest_zoom(labels, tuple(shape))


def _out_of_device_memory(device: torch.device, voxels: int) -> None:
    log.warning("resampling %.0f M voxels ran out of memory on %s; resampling on the CPU instead", voxels / 1e6, device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
