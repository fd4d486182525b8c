"""Label maps in one Zarr store, one array per series, so features can be recomputed later.

Each array keeps the voxel grid it was measured on (``affine``, ``spacing_mm`` attributes), the
class map that gives its ids meaning (``class_map``, and ``structures``: id -> name, so that a
reader needs no CSV) and the image's ``modality``; nothing from the image header beyond geometry.

An array is written in two steps: voxels first, then the attribute ``complete`` together with
``source_key`` (the digest of the model, its weights and the content of the input files that made it). A
series whose array is complete and whose key is still the same need not be segmented again:
after a kill, or when only the measurement settings changed, it is measured from here.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import zarr

from cohort.ingest.volume import LabelMap

CHUNKS = (128, 128, 64)


def write_label_map(store: Path, series_id: str, label_map: LabelMap, attributes: dict, source_key: str) -> None:
    """Write (or overwrite) the array ``series_id`` of the store at ``store``; mark it complete last."""
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
    array.attrs.update({"source_key": source_key, "complete": True})


def label_map_attributes(store: Path, series_id: str) -> dict:
    """The attributes of one series' stored label map (``{}`` for maps written before cohort
    recorded any)."""
    return dict(zarr.open_array(str(store), path=series_id, mode="r").attrs)


def complete_label_map(store: Path, series_id: str, source_key: str, shape: tuple[int, ...]) -> LabelMap | None:
    """The stored label map of ``series_id`` if it is complete, made from ``source_key`` and of
    ``shape``; else ``None`` (missing, half-written, made otherwise, or unreadable)."""
    try:
        array = zarr.open_array(str(store), path=series_id, mode="r")
        attributes = dict(array.attrs)
        if not attributes.get("complete") or attributes.get("source_key") != source_key or array.shape != shape:
            return None
        return LabelMap(labels=array[...], affine=np.asarray(attributes["affine"]), source=store / series_id)
    except (FileNotFoundError, KeyError, ValueError, OSError, zarr.errors.BaseZarrError):
        return None


def complete_source_keys(store: Path) -> dict[str, str | None]:
    """The ``source_key`` of every series whose label map is marked complete, by series id (reads
    only each array's metadata)."""
    complete = {}
    for metadata in Path(store).glob("*/zarr.json"):
        try:
            attributes = json.loads(metadata.read_text()).get("attributes", {})
        except (OSError, ValueError):
            continue
        if attributes.get("complete"):
            complete[metadata.parent.name] = attributes.get("source_key")
    return complete


def read_label_map(store: str | Path, series_id: str) -> LabelMap:
    """Read one series' label map back, with the affine it was written with.

    The README's public way back to a run's label maps, so ``store`` may be a ``str`` as a notebook
    writes it (``read_label_map("results/labels.zarr", "s1")``).
    """
    array = zarr.open_array(str(store), path=series_id, mode="r")
    return LabelMap(labels=array[...], affine=np.asarray(array.attrs["affine"]), source=Path(store) / series_id)
