"""What is already done under ``--out``: resume, repair after a kill, and no duplicate rows.

The ``series/`` table is the ledger: a series is done when its row says ``done``. Planning
reads only that table's ``series_id`` and ``status`` columns, so it stays fast at 10,000 rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from cohort.manifest import SeriesSpec
from cohort.store.layout import OutputLayout
from cohort.store.tables import SERIES_SCHEMA, part_files, read_dataset, remove_temporaries, write_part


@dataclass(frozen=True)
class Plan:
    """The manifest split into what is left to do and what an earlier run finished."""

    todo: list[SeriesSpec]
    already_done: list[SeriesSpec]


def repair(layout: OutputLayout) -> None:
    """Undo what a killed run may have left: temporary files and features parts whose
    series part was never written (those series are redone, so their rows would repeat)."""
    for folder in (layout.features, layout.series):
        remove_temporaries(folder)
    committed = {path.name for path in part_files(layout.series)}
    for path in part_files(layout.features):
        if path.name not in committed:
            path.unlink()


def done_series_ids(layout: OutputLayout) -> set[str]:
    table = read_dataset(layout.series, SERIES_SCHEMA, columns=["series_id", "status"])
    done = table.filter(pc.equal(table["status"], "done"))
    return set(done["series_id"].to_pylist())


def plan_run(specs: list[SeriesSpec], layout: OutputLayout) -> Plan:
    """Split ``specs`` into rows to process and rows already done (failed rows are retried)."""
    done = done_series_ids(layout)
    return Plan(
        todo=[spec for spec in specs if spec.series_id not in done],
        already_done=[spec for spec in specs if spec.series_id in done],
    )


def drop_superseded_rows(layout: OutputLayout) -> int:
    """Keep only the newest row per ``series_id`` in ``series/`` (a failed row whose retry
    finished later is superseded). Rewrites only the parts that hold such rows."""
    parts = part_files(layout.series)
    newest_part: dict[str, int] = {}
    ids_per_part = [pq.read_table(path, columns=["series_id"])["series_id"].to_pylist() for path in parts]
    for index, ids in enumerate(ids_per_part):
        for series_id in ids:
            newest_part[series_id] = index
    removed = 0
    for index, (path, ids) in enumerate(zip(parts, ids_per_part)):
        keep = [newest_part[series_id] == index for series_id in ids]
        if all(keep):
            continue
        removed += keep.count(False)
        table = pq.read_table(path).filter(pa.array(keep))
        if table.num_rows:
            write_part(layout.series, path.stem, table)
        else:
            path.unlink()
    return removed
