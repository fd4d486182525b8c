"""Map each network's labels to the model's ids and merge the networks in order.

The full model runs five part networks (organs, vertebrae, cardiac, muscles, ribs); each
part's labels name structures of the 117-class ``total`` map. As in TotalSegmentator, parts
are written one after another and a later part overwrites an earlier one where it labels a
voxel; background never overwrites.
"""

from __future__ import annotations

import numpy as np

from cohort.config import ClassMap
from cohort.segmentation.registry import NetworkSpec, network_classes


def label_lookup(network: NetworkSpec, model_classes: ClassMap) -> np.ndarray:
    """Array ``lut`` with ``lut[network_label] == model_id`` (0 stays 0)."""
    ids = {name: label for label, name in model_classes.names.items()}
    classes = network_classes(network)
    lut = np.zeros(max(classes) + 1, dtype=np.uint16)
    for label, name in classes.items():
        lut[label] = ids[name]
    return lut


def merge_into(merged: np.ndarray, network_labels: np.ndarray, lut: np.ndarray) -> None:
    """Write ``network_labels`` (mapped through ``lut``) into ``merged`` where they are not 0."""
    if network_labels.max(initial=0) >= len(lut):
        raise ValueError(f"network predicted label {int(network_labels.max())}, its class map ends at {len(lut) - 1}")
    np.copyto(merged, lut.astype(merged.dtype)[network_labels], where=network_labels > 0)  # no index arrays
