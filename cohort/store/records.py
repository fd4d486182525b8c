"""The typed record of one series that travels from a worker to the ``series/`` table.

Workers return a :class:`SeriesRecord` (never a ``dict`` read by string keys elsewhere); the
table is made from records by :func:`series_table`, whose schema is
:data:`cohort.store.tables.SERIES_SCHEMA` (the two are checked to agree field by field).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from datetime import datetime

import pyarrow as pa

from cohort.store.tables import SERIES_SCHEMA

DONE = "done"
FAILED = "failed"


@dataclass(frozen=True)
class SeriesRecord:
    """One row of ``series/``; see the table's schema for what each column means."""

    series_id: str
    status: str
    manifest_line: int
    subject_id: str | None = None
    age: float | None = None
    sex: str | None = None
    error: str | None = None
    in_manifest: bool = True
    model: str | None = None
    shape: tuple[int, ...] | None = None
    spacing_mm: tuple[float, ...] | None = None
    orientation: str | None = None
    measure_spacing_mm: str | None = None
    n_structures_ok: int | None = None
    reused_label_map: bool | None = None
    seconds_ingest: float | None = None
    seconds_load_model: float | None = None
    seconds_segment: float | None = None
    seconds_measure: float | None = None
    seconds_store: float | None = None
    seconds_total: float | None = None
    attempts: int = 1
    worker: str | None = None
    cohort_version: str | None = None
    nnunet_version: str | None = None
    finished_at: datetime | None = None
    run_key: str | None = None
    run_settings: str | None = None
    input_fingerprint: str | None = None
    series_uid: str | None = None
    covariates: tuple[tuple[str, str], ...] = ()
    input_content: str | None = None
    fat_series_uid: str | None = None
    water_series_uid: str | None = None

    @property
    def done(self) -> bool:
        return self.status == DONE

    @property
    def records_content(self) -> bool:
        """Made by a version that records ``input_content``, and with it the status-change times
        in ``input_fingerprint`` and the fat and water series UIDs."""
        return self.input_content is not None

    def failure(self) -> str:
        """``line N (series_id): reason``, for a failed row on the console; a reason that already
        starts with where it is (``scans.csv line N (series_id): ...``) does not say it twice.

        >>> SeriesRecord("b", "failed", 3, error="scans.csv line 3 (b): sex 'W' is not M or F").failure()
        "line 3 (b): sex 'W' is not M or F"
        >>> SeriesRecord("a", "failed", 2, error="a.nii.gz: file not found").failure()
        'line 2 (a): a.nii.gz: file not found'
        """
        where = f"line {self.manifest_line} ({self.series_id})"
        reason = re.sub(rf"^.*? {re.escape(where)}: ", "", self.error or "", count=1)
        return f"{where}: {reason}"

    def replace(self, **changes: object) -> "SeriesRecord":
        return dataclasses.replace(self, **changes)

    def as_row(self) -> dict[str, object]:
        row = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        row["covariates"] = list(self.covariates)
        return row

    @classmethod
    def from_row(cls, row: dict[str, object]) -> "SeriesRecord":
        """A record from a ``series/`` row as pyarrow's ``to_pylist`` gives it (older parts may
        lack newer columns: they take the field's default)."""
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in row.items() if k in names}
        for key in ("shape", "spacing_mm"):
            if values.get(key) is not None:
                values[key] = tuple(values[key])
        values["covariates"] = tuple((k, v) for k, v in (values.get("covariates") or ()))
        if values.get("in_manifest") is None:
            values["in_manifest"] = True
        return cls(**values)


def series_table(records: list[SeriesRecord]) -> pa.Table:
    """The ``series/`` rows of ``records``, in :data:`SERIES_SCHEMA`."""
    return pa.Table.from_pylist([record.as_row() for record in records], schema=SERIES_SCHEMA)


def check_schema_agrees() -> None:
    """Fail loudly if the record and the table schema ever drift apart."""
    fields = [f.name for f in dataclasses.fields(SeriesRecord)]
    if sorted(fields) != sorted(SERIES_SCHEMA.names):
        raise AssertionError(f"SeriesRecord and SERIES_SCHEMA differ: {sorted(set(fields) ^ set(SERIES_SCHEMA.names))}")


check_schema_agrees()
