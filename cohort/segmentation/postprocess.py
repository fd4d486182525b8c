"""Post-processing of a label map as data: small components removed, compact organs kept whole.

VIBESegmentator's paper cleans its predictions this way (Graf et al. 2025): connected components
below a per-structure volume are removed and organs that are one compact body keep only their
largest component. The rules are keys of the model file (:class:`PostprocessSpec`); each class
is labelled inside its own bounding box, so the cost follows the structure, not the volume.

>>> import numpy as np
>>> from cohort.segmentation.registry import PostprocessSpec
>>> labels = np.zeros((8, 8, 8), np.uint8); labels[1:4, 1:4, 1:4] = 1; labels[6, 6, 6] = 1
>>> int(clean_label_map(labels, PostprocessSpec(min_component_ml=0.002), {1: "liver"}, 0.001)[6, 6, 6])
0
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from cohort.segmentation.registry import PostprocessSpec

FULL_CONNECTIVITY = np.ones((3, 3, 3), dtype=bool)


def clean_label_map(labels: np.ndarray, rules: PostprocessSpec, names: dict[int, str],
                    voxel_volume_ml: float) -> np.ndarray:
    """``labels`` with the components that ``rules`` reject set to background (a copy when changed)."""
    if not rules.active:
        return labels
    labels = labels.copy()
    largest_only = set(rules.largest_component_only)
    for label, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None or label not in names:
            continue
        name = names[label]
        min_ml = rules.min_component_ml_by_class.get(name, rules.min_component_ml)
        if min_ml <= 0 and name not in largest_only:
            continue
        region = labels[box]
        components, count = ndimage.label(region == label, structure=FULL_CONNECTIVITY)
        if count == 0:
            continue
        sizes = np.bincount(components.reshape(-1))[1:]
        keep = sizes * voxel_volume_ml >= min_ml
        if name in largest_only:
            keep &= np.arange(count) == int(np.argmax(sizes))
        if not keep.all():
            drop = np.concatenate([[False], ~keep])[components]
            region[drop] = 0
    return labels
