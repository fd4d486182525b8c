"""The ledger's start-up work over real Parquet parts: superseded rows dropped per series id, each
part's ids read once per version of the file."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from cohort.store import OutputLayout, drop_superseded_rows, write_part
from cohort.store.ledger import featured_series_ids
from cohort.store.tables import part_series_ids


def _series(rows: list[tuple[str, str]]) -> pa.Table:
    return pa.table({"series_id": [sid for sid, _ in rows], "status": [status for _, status in rows]})


def _features(ids: list[str], structures: int = 3) -> pa.Table:
    return pa.table({"series_id": [sid for sid in ids for _ in range(structures)],
                     "label": [label for _ in ids for label in range(1, structures + 1)]})


def _layout(tmp_path: Path) -> OutputLayout:
    layout = OutputLayout(tmp_path)
    layout.series.mkdir()
    layout.features.mkdir()
    return layout


def test_superseded_rows_are_dropped_and_untouched_parts_kept(tmp_path: Path) -> None:
    layout = _layout(tmp_path)
    write_part(layout.series, "part-1", _series([("a", "done"), ("b", "failed"), ("c", "done")]))
    write_part(layout.features, "part-1", _features(["a", "c"]))
    write_part(layout.series, "part-2", _series([("b", "done"), ("a", "done")]))  # b retried, a recomputed
    write_part(layout.features, "part-2", _features(["b", "a"]))
    write_part(layout.series, "part-3", _series([("d", "failed")]))
    write_part(layout.features, "part-3", _features(["c"]))  # a features part whose series row says failed
    write_part(layout.series, "part-4", _series([("c", "failed")]))
    untouched = (layout.features / "part-2.parquet").stat().st_ino

    assert drop_superseded_rows(layout) == 3 + 3 + 3 + 3  # part 1: series a, b, c and features a, c; part 3: c

    series = pq.read_table(layout.series).to_pydict()
    assert sorted(zip(series["series_id"], series["status"])) == [
        ("a", "done"), ("b", "done"), ("c", "failed"), ("d", "failed")]
    features = pq.read_table(layout.features).to_pydict()
    assert sorted(set(features["series_id"])) == ["a", "b"] and len(features["series_id"]) == 6
    assert not (layout.features / "part-1.parquet").exists() and not (layout.features / "part-3.parquet").exists()
    assert (layout.features / "part-2.parquet").stat().st_ino == untouched
    assert drop_superseded_rows(layout) == 0
    assert featured_series_ids(layout) == {"a", "b"}


def test_a_part_is_read_again_only_once_it_was_replaced(tmp_path: Path) -> None:
    layout = _layout(tmp_path)
    part = write_part(layout.features, "part-1", _features(["a"]))
    first = part_series_ids(part)
    assert first.to_pylist() == ["a"] and part_series_ids(part) is first
    write_part(layout.features, "part-1", _features(["a", "b"]))
    assert part_series_ids(part).to_pylist() == ["a", "b"]
