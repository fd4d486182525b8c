"""``results/review.parquet``: reviewers' decisions, one row each, appended atomically.

Columns (the user contract): ``series_id``, ``structure`` (null: the whole series), ``decision``
(``accept`` or ``reject``), ``reviewer``, ``comment``, ``decided_at`` (UTC), and ``label_map_key``:
the ``source_key`` of the label map the reviewer judged (:func:`cohort.provenance.source_key`, as its
array in ``labels.zarr`` carries it), so that a decision is never applied to a segmentation made
after it (``review.py``). Files written before that column existed read with it null. Rows are never
edited: a changed mind is a new row, and the latest decision per series and structure counts
(:func:`latest_decisions`). ``cohort stats`` excludes rejected rows under ``rejected_in_review``.

An append rewrites the file to a temporary name and renames it over the old one while holding
an exclusive ``flock`` on ``results/.review.lock``: readers see the old or the new file, never
half of one, and two reviewers deciding at once both keep their rows.
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from cohort.errors import RunCannotStart
from cohort.store.tables import write_replacing

DECISIONS = ("accept", "reject")
REVIEW_FILE = "review.parquet"
REVIEW_SCHEMA = pa.schema([
    ("series_id", pa.string()), ("structure", pa.string()), ("decision", pa.string()), ("reviewer", pa.string()),
    ("comment", pa.string()), ("decided_at", pa.timestamp("ms", tz="UTC")), ("label_map_key", pa.string()),
])


@dataclass(frozen=True)
class Decision:
    """One reviewer's verdict on a series (``structure`` None) or on one structure of it, as segmented in the
    label map whose ``source_key`` is ``label_map_key`` (None: not known)."""

    series_id: str
    decision: str
    reviewer: str
    structure: str | None = None
    comment: str = ""
    decided_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    label_map_key: str | None = None

    def __post_init__(self) -> None:
        if self.decision not in DECISIONS:
            raise ValueError(f"decision {self.decision!r} is not one of {', '.join(DECISIONS)}")
        if not self.reviewer.strip():
            raise ValueError("a decision needs the reviewer's name")


def append_decision(results_dir: Path, decision: Decision) -> Path:
    """Add ``decision`` to ``results_dir/review.parquet`` (created on first use); returns its path.

    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> _ = append_decision(folder, Decision("S1", "reject", "ab", "liver", "leaks into the kidney"))
    >>> read_decisions(folder)[["series_id", "structure", "decision"]].values.tolist()
    [['S1', 'liver', 'reject']]
    """
    path = Path(results_dir) / REVIEW_FILE
    with _locked(Path(results_dir)):
        new = pa.Table.from_pylist([asdict(decision)], schema=REVIEW_SCHEMA)
        table = pa.concat_tables([_read_table(path), new]) if path.exists() else new
        # the one file holding every decision: never left empty
        write_replacing(path, lambda temporary: pq.write_table(table, temporary))
    return path


def read_decisions(results_dir: Path) -> pd.DataFrame:
    """Every decision so far, oldest first (an empty frame with the columns when there are none)."""
    path = Path(results_dir) / REVIEW_FILE
    if not path.exists():
        return REVIEW_SCHEMA.empty_table().to_pandas()
    try:
        return _read_table(path).to_pandas()
    except (pa.ArrowInvalid, OSError, ValueError, KeyError) as error:
        raise RunCannotStart(f"{path}: not a review table ({error}); move it aside") from error


def _read_table(path: Path) -> pa.Table:
    """The decisions of ``path`` in :data:`REVIEW_SCHEMA`; a file written before ``label_map_key`` existed
    gets the column, null."""
    table = pq.read_table(path)
    if "label_map_key" not in table.column_names:
        table = table.append_column("label_map_key", pa.nulls(len(table), pa.string()))
    return table.select(REVIEW_SCHEMA.names).cast(REVIEW_SCHEMA)


def latest_decisions(decisions: pd.DataFrame) -> pd.DataFrame:
    """The last decision per series and structure (a changed mind replaces the earlier one)."""
    keyed = decisions.assign(_structure=decisions["structure"].fillna(""))
    latest = keyed.sort_values("decided_at", kind="stable").drop_duplicates(["series_id", "_structure"], keep="last")
    return latest.drop(columns="_structure").reset_index(drop=True)


@contextmanager
def _locked(results_dir: Path) -> Iterator[None]:
    with (results_dir / ".review.lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
