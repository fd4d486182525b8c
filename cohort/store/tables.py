"""The two Parquet datasets of the user contract and how parts of them are written.

A run writes both tables in parts, one pair per finished batch, named alike
(``features/<part>.parquet`` and ``series/<part>.parquet``). A part is written to a
temporary name and renamed, so a reader never sees half a file; the features part is
written first, so a series row marked ``done`` always has its features on disk.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

FEATURES_SCHEMA = pa.schema(
    [
        ("series_id", pa.string()),
        ("structure", pa.string()),
        ("label", pa.int32()),
        ("volume_ml", pa.float64()),
        ("mean_hu", pa.float64()),
        ("std_hu", pa.float64()),
        ("median_hu", pa.float64()),
        ("p05_hu", pa.float64()),
        ("p95_hu", pa.float64()),
        ("n_voxels", pa.int64()),
        ("status", pa.string()),
        ("lower_bound_ml", pa.float64()),
        ("model", pa.string()),
        ("measure_spacing_mm", pa.string()),
        ("modality", pa.string()),
        ("mean_intensity", pa.float64()),
        ("std_intensity", pa.float64()),
        ("median_intensity", pa.float64()),
        ("p05_intensity", pa.float64()),
        ("p95_intensity", pa.float64()),
        ("fat_fraction", pa.float64()),
    ]
)
"""One row per series x structure. ``modality`` is the model's (``CT`` or ``MR``): CT rows fill the
``*_hu`` columns, MR rows (arbitrary units) the ``*_intensity`` columns, the other set is null.
``fat_fraction`` = fat / (water + fat) inside the mask, from Dixon ``fat``/``water`` images (null
without them; see cohort.measurement.fat_fraction)."""

SERIES_SCHEMA = pa.schema(
    [
        ("series_id", pa.string()),
        ("subject_id", pa.string()),
        ("age", pa.float64()),
        ("sex", pa.string()),
        ("status", pa.string()),
        ("error", pa.string()),
        ("manifest_line", pa.int32()),
        ("in_manifest", pa.bool_()),
        ("model", pa.string()),
        ("shape", pa.list_(pa.int32())),
        ("spacing_mm", pa.list_(pa.float64())),
        ("orientation", pa.string()),
        ("measure_spacing_mm", pa.string()),
        ("n_structures_ok", pa.int32()),
        ("reused_label_map", pa.bool_()),
        ("seconds_ingest", pa.float64()),
        ("seconds_load_model", pa.float64()),
        ("seconds_segment", pa.float64()),
        ("seconds_measure", pa.float64()),
        ("seconds_store", pa.float64()),
        ("seconds_total", pa.float64()),
        ("attempts", pa.int32()),
        ("worker", pa.string()),
        ("cohort_version", pa.string()),
        ("nnunet_version", pa.string()),
        ("finished_at", pa.timestamp("s", tz="UTC")),
        ("run_key", pa.string()),
        ("run_settings", pa.string()),
        ("input_fingerprint", pa.string()),
        ("series_uid", pa.string()),
        ("covariates", pa.map_(pa.string(), pa.string())),
        ("input_content", pa.string()),
        ("fat_series_uid", pa.string()),
        ("water_series_uid", pa.string()),
    ]
)
"""One row per manifest row. ``run_key`` (digest of ``run_settings``, a JSON of
:class:`cohort.provenance.RunKey`) and ``input_fingerprint`` (paths, sizes, times) and
``input_content`` (the bytes) say what the row was made with and from; ``in_manifest`` is false for a series the current manifest no longer lists (kept, left out
of the study); ``covariates`` holds the manifest's extra columns."""


def write_part(folder: Path, name: str, table: pa.Table, metadata: dict[str, str] | None = None) -> Path:
    """Write ``table`` as ``folder/name.parquet`` atomically (temporary file, then rename)."""
    if metadata:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), **metadata})
    return write_replacing(folder / f"{name}.parquet",
                           lambda temporary: pq.write_table(table, temporary, compression="zstd"))


def replace_durably(temporary: Path, target: Path) -> None:
    """Rename a finished ``temporary`` file to ``target`` so that a power loss leaves the old file
    or the whole new one: the data reach the disk before the rename, the rename before return
    (without the flushes, a journal may keep the rename and lose the data: an empty file)."""
    with open(temporary, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(temporary, target)
    folder = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def write_replacing(target: Path, write: Callable[[Path], None]) -> Path:
    """Make ``target`` by ``write(temporary)`` on a temporary file beside it, then :func:`replace_durably`: a
    crash or Ctrl-C while writing leaves the previous ``target`` whole (and no temporary file), never half a file."""
    temporary = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")  # its own: two writers may race
    try:
        write(temporary)
        replace_durably(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)
    return target


def part_files(folder: Path) -> list[Path]:
    """The finished parts of a dataset folder, oldest name first (names sort by time)."""
    return sorted(folder.glob("*.parquet")) if folder.is_dir() else []


def part_series_status(path: Path) -> pa.Table:
    """The ``series_id`` and ``status`` columns of one ``series/`` part, read once per version of
    the file in this process: a run's start-up checks and compacts the same parts
    (``cohort.store.ledger``). A part is only ever replaced by a rename (:func:`write_part`), which
    gives it a new inode."""
    return _part_series_status(str(path), _version(path))


def part_series_ids(path: Path) -> pa.Array:
    """The distinct series ids of one part, read once per version of the file like
    :func:`part_series_status`; only these are kept (a features part has a row per structure)."""
    return _part_series_ids(str(path), _version(path))


def _version(path: Path) -> tuple[int, int, int]:
    stat = path.stat()
    return stat.st_ino, stat.st_mtime_ns, stat.st_size


@lru_cache(maxsize=4096)
def _part_series_status(path: str, version: tuple[int, int, int]) -> pa.Table:
    return pq.read_table(path, columns=["series_id", "status"])


@lru_cache(maxsize=4096)
def _part_series_ids(path: str, version: tuple[int, int, int]) -> pa.Array:
    return pc.unique(pq.read_table(path, columns=["series_id"])["series_id"])


def read_dataset(folder: Path, schema: pa.Schema, columns: list[str] | None = None) -> pa.Table:
    """All parts of ``folder`` as one table (empty table with ``schema`` when there are none)."""
    parts = [pq.read_table(path, columns=columns) for path in part_files(folder)]
    if not parts:
        wanted = schema if columns is None else pa.schema([schema.field(c) for c in columns])
        return wanted.empty_table()
    return pa.concat_tables(parts, promote_options="default")


def remove_temporaries(folder: Path) -> None:
    """Delete half-written parts left by a run that was killed while writing."""
    for leftover in folder.glob(".*.tmp"):
        leftover.unlink(missing_ok=True)
