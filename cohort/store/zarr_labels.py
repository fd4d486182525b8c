"""Label maps in one Zarr store, one array per series, so features can be recomputed later.

Each array keeps the voxel grid it was measured on (``affine``, ``spacing_mm`` attributes) and
the class map that gives its ids meaning; nothing from the image header beyond geometry.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr

from cohort.ingest.volume import LabelMap

CHUNKS = (128, 128, 64)


def write_label_map(store: Path, series_id: str, label_map: LabelMap, attributes: dict) -> None:
    """Write (or overwrite) the array ``series_id`` of the store at ``store``."""
    group = zarr.open_group(str(store), mode="a")
    chunks = tuple(min(c, n) for c, n in zip(CHUNKS, label_map.labels.shape))
    array = group.create_array(
        series_id,
        shape=label_map.labels.shape,
        dtype=label_map.labels.dtype,
        chunks=chunks,
        overwrite=True,
        dimension_names=("x", "y", "z"),
    )
    array[...] = label_map.labels
    array.attrs.update(
        {
            "affine": np.asarray(label_map.affine, dtype=float).tolist(),
            "spacing_mm": list(label_map.grid.spacing),
            **attributes,
        }
    )


def read_label_map(store: Path, series_id: str) -> LabelMap:
    """Read one series' label map back, with the affine it was written with."""
    array = zarr.open_array(str(store), path=series_id, mode="r")
    return LabelMap(labels=array[...], affine=np.asarray(array.attrs["affine"]), source=store / series_id)
