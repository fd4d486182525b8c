"""Optional first pass for CT: crop the image to the body before the main network.

The body is the connected components of voxels above a HU threshold (air outside the body
and the foam of the table lie far below it) of at least 10 ml, so that two legs or an arm apart
from the trunk are all kept; the box around them plus a margin is what the network sees. This is what TotalSegmentator's ``--body_seg`` achieves with its ``body`` network
(Salimi et al. 2025 report the speed-up), without a second network: a threshold needs no weights,
costs a fraction of a second and cannot miss the body of a CT, whose skin is at about -100 HU.

>>> import numpy as np
>>> image = np.full((20, 20, 10), -1000); image[5:12, 6:15, :] = 40
>>> body_box(image, (1.0, 1.0, 1.0), BodyCropSpec(enabled=True, margin_mm=2))
(slice(3, 14, None), slice(4, 17, None), slice(0, 10, None))
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from cohort.segmentation.registry import BodyCropSpec

Box = tuple[slice, slice, slice]


MIN_PART_ML = 10.0


def body_box(image: np.ndarray, spacing: tuple[float, float, float], rules: BodyCropSpec) -> Box | None:
    """The bounding box of the body plus ``margin_mm`` (clipped to the image), or None when no
    voxel is above the threshold (then the whole image is used).

    The body is every component above the threshold of at least :data:`MIN_PART_ML` (and the
    largest one, whatever its size): a scan of the thighs shows two legs, and arms may be
    separated from the trunk by air; only specks (noise, skin markers) are left out."""
    body = image > rules.threshold_hu
    components, count = ndimage.label(body)
    if count == 0:
        return None
    sizes = np.bincount(components.reshape(-1))[1:]
    voxel_ml = float(np.prod(spacing)) / 1000
    kept = (sizes * voxel_ml >= MIN_PART_ML) | (sizes == sizes.max())
    box = ndimage.find_objects(np.concatenate([[False], kept])[components].astype(np.uint8))[0]
    margins = [int(np.ceil(rules.margin_mm / s)) for s in spacing]
    return tuple(slice(max(0, axis.start - m), min(n, axis.stop + m))  # type: ignore[return-value]
                 for axis, m, n in zip(box, margins, image.shape))


def paste(cropped: torch.Tensor, box: Box | None, shape: tuple[int, ...]) -> torch.Tensor:
    """``cropped`` put back at ``box`` in a background tensor of ``shape``, where ``cropped`` is."""
    if box is None:
        return cropped
    full = torch.zeros(shape, dtype=cropped.dtype, device=cropped.device)
    full[box] = cropped
    return full
