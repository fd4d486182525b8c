"""nnU-Net's preprocessing of a CT network, in torch on the device the image is on.

For a one-channel network whose plans normalise with ``CTNormalization``, nnU-Net's
``run_case_npy`` on an image already on the plans' grid does three things: transpose the axes
(``transpose_forward``), crop to the bounding box of the non-zero voxels, and clip to the
foreground's 0.5th-99.5th percentiles, subtract its mean and divide by its deviation, in float32.
The same arithmetic runs here in torch, so that on a GPU the resampled image never comes back to
the CPU before the network: nnU-Net's own version costs 136 ms of CPU per network on a clinical CT
on the full model's 1.5 mm grid (11 M voxels, five networks a series) and needs the image there.

The values are nnU-Net's bit for bit (tests/segment/test_ct_preprocessing.py): the crop is the box
of the non-zero voxels (nnU-Net fills the holes of that mask first, which never changes its box:
a voxel outside the box reaches the border along an axis without meeting the mask), the
clip/subtract/divide are the same float32 operations, and the deviation divides as a tensor on the
device (CUDA divides by a CPU scalar as a multiplication by its reciprocal, which rounds
differently). Other networks (MR's z-score with a mask, several channels, regions, an image off
the plans' grid) keep nnU-Net's own preprocessing on the CPU.

>>> import torch
>>> ct = CTPreprocessing(transpose_forward=(0, 1, 2), lower=-1000.0, upper=1000.0, mean=0.0, std=500.0)
>>> image = torch.zeros(4, 5, 6, dtype=torch.int32); image[1:3, 2:4, 0:5] = 1500
>>> data, properties = ct.run(image, (1.5, 1.5, 1.5))
>>> tuple(data.shape), properties["bbox_used_for_cropping"], float(data.max())
((1, 5, 2, 2), [[0, 5], [2, 4], [1, 3]], 2.0)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

CT_NORMALIZATION = "CTNormalization"
STD_FLOOR = 1e-8  # nnU-Net's epsilon for a float32 target


@dataclass(frozen=True)
class CTPreprocessing:
    """The plans' values that nnU-Net's preprocessing of a CT network reads."""

    transpose_forward: tuple[int, int, int]
    lower: float  # the foreground's 0.5th percentile
    upper: float  # its 99.5th percentile
    mean: float
    std: float

    @classmethod
    def from_plans(cls, plans_manager, configuration_manager) -> CTPreprocessing | None:
        """The preprocessing of a one-channel ``CTNormalization`` network; None for any other."""
        if list(configuration_manager.normalization_schemes) != [CT_NORMALIZATION]:
            return None
        intensities = plans_manager.foreground_intensity_properties_per_channel["0"]
        return cls(transpose_forward=tuple(int(axis) for axis in plans_manager.transpose_forward),  # type: ignore[arg-type]
                   lower=float(intensities["percentile_00_5"]), upper=float(intensities["percentile_99_5"]),
                   mean=float(intensities["mean"]), std=float(intensities["std"]))

    def run(self, image: torch.Tensor, spacing: tuple[float, float, float]) -> tuple[torch.Tensor, dict]:
        """The (1, ...) float32 tensor the network reads and the properties that undo the crop, for
        an (x, y, z) image of ``spacing`` (mm) on the plans' grid, computed where ``image`` is."""
        zyx = image.permute(2, 1, 0).permute(*self.transpose_forward)
        box = nonzero_box(zyx)
        data = zyx[tuple(slice(low, high) for low, high in box)].to(torch.float32)
        data.clamp_(self.lower, self.upper)
        data.sub_(self.mean)
        data.div_(torch.tensor(max(self.std, STD_FLOOR), dtype=torch.float32, device=data.device))
        properties = {
            "spacing": [spacing[2], spacing[1], spacing[0]],  # as given, not transposed (nnU-Net's too)
            "shape_before_cropping": tuple(zyx.shape),
            "bbox_used_for_cropping": box,
            "shape_after_cropping_and_before_resampling": tuple(data.shape),
        }
        return data[None], properties


def nonzero_box(array: torch.Tensor) -> list[list[int]]:
    """Half-open [start, stop) per axis of the non-zero voxels; the whole array when there are none
    (as nnU-Net's ``get_bbox_from_mask``)."""
    nonzero = array != 0
    box = []
    for axis, size in enumerate(array.shape):
        others = tuple(other for other in range(array.ndim) if other != axis)
        present = torch.nonzero(nonzero.any(dim=others)).flatten()
        box.append([int(present[0]), int(present[-1]) + 1] if len(present) else [0, size])
    return box
