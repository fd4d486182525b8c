"""A review decision judges one segmentation: once ``cohort run`` makes a series' label map anew, a decision
on the old one is stale (listed, counted, reviewed again) and never applied to the new one.

The run's tables are the synthetic cohort's, with the provenance ``cohort run`` records per ``series/`` row
(``run_settings``, ``input_content``, ``finished_at``); a series is "segmented anew" by rewriting its row as
a recompute with other weights does.
"""

from __future__ import annotations

import logging
import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cohort.provenance import RunKey
from cohort.stats import run_stats, write_report
from cohort.stats.review_server import ReviewSite
from cohort.stats.review_store import read_decisions
from cohort.testing.cohorts import make_cohort

RUN_FINISHED = datetime(2026, 3, 1, tzinfo=timezone.utc)


def _with_provenance(results: Path) -> Path:
    """``results``' series/ rows with the provenance ``cohort run`` records: run key (weights ``w1``), input
    content, finish time."""
    series = pd.read_parquet(results / "series")
    done = series["status"] == "done"
    key = RunKey("fast", "config", "w1", "measure")
    series["run_settings"], series["run_key"] = key.to_json(), key.digest
    series["input_content"] = "content-" + series["series_id"]
    series["finished_at"] = pd.Timestamp(RUN_FINISHED)
    series.loc[~done, ["run_settings", "run_key", "input_content"]] = None
    return _rewrite_series(results, series)


def _rewrite_series(results: Path, series: pd.DataFrame) -> Path:
    shutil.rmtree(results / "series")
    (results / "series").mkdir()
    series.to_parquet(results / "series" / "part-00000.parquet", index=False)
    return results


def _segment_anew(results: Path, series_id: str) -> None:
    """What ``cohort run --recompute changed`` leaves for a series segmented with other weights (``w2``)."""
    series = pd.read_parquet(results / "series")
    row = series["series_id"] == series_id
    key = RunKey("fast", "config", "w2", "measure")
    series.loc[row, "run_settings"], series.loc[row, "run_key"] = key.to_json(), key.digest
    series.loc[row, "finished_at"] = pd.Timestamp(datetime.now(timezone.utc) + timedelta(seconds=1))
    _rewrite_series(results, series)


@pytest.fixture()
def results(tmp_path: Path) -> Path:
    return _with_provenance(make_cohort(n_subjects=40, n_structures=6, seed=5).write(tmp_path / "results"))


def _studied(results: Path) -> str:
    series = pd.read_parquet(results / "series")
    return str(series.loc[(series["status"] == "done") & series["age"].notna(), "series_id"].iloc[0])


def _rejected_in_study(results: Path, structure: str) -> int:
    run_stats(results, figures="none")
    exclusions = pd.read_parquet(results / "aging" / "exclusions.parquet").set_index(["structure", "reason"])
    return int(exclusions.loc[(structure, "rejected_in_review"), "n_series"])


def test_a_decision_is_not_applied_to_a_segmentation_made_after_it(results: Path, caplog) -> None:
    """A reject of the aorta of S, then S segmented anew: the study went on excluding the new aorta, which nobody
    had looked at. It now keeps it, warns, and the report and review page list the decision as stale."""
    series_id = _studied(results)
    ReviewSite.load(results).decide({"series_id": series_id, "structure": "aorta", "decision": "reject",
                                     "reviewer": "ab", "comment": "leaks"})
    assert read_decisions(results)["label_map_key"].notna().all()
    assert _rejected_in_study(results, "aorta") == 1
    _segment_anew(results, series_id)
    with caplog.at_level(logging.WARNING):
        assert _rejected_in_study(results, "aorta") == 0
    assert "1 decisions were made on an earlier segmentation" in caplog.text
    report = write_report(results).read_text()
    assert "Decisions made on an earlier segmentation (1)" in report
    site = ReviewSite.load(results)
    assert "Made on an earlier segmentation; review again (1)" in site.index_page()
    assert "reject (ab, " in site.series_page(series_id, "aorta")
    assert "made on an earlier segmentation: review again" in site.series_page(series_id, "aorta")
    site.decide({"series_id": series_id, "structure": "aorta", "decision": "reject", "reviewer": "ab"})
    assert _rejected_in_study(results, "aorta") == 1  # reviewed again, on the new segmentation
    assert "Made on an earlier segmentation" not in site.index_page()


def test_a_decision_on_a_page_made_before_the_series_was_segmented_anew_is_refused(results: Path) -> None:
    """A review page open across a rerun shows the old segmentation's values: its decision is not recorded."""
    series_id = _studied(results)
    site = ReviewSite.load(results)
    _segment_anew(results, series_id)
    with pytest.raises(ValueError, match="segmented anew after this page was made"):
        site.decide({"series_id": series_id, "structure": "aorta", "decision": "reject", "reviewer": "ab",
                     "label_map_key": site.label_map_key(series_id)})
    assert read_decisions(results).empty


def test_decisions_of_a_file_without_label_map_keys_apply_unless_their_series_was_made_anew(results: Path) -> None:
    """review.parquet of an earlier cohort version has no ``label_map_key``: it is read, and a decision applies
    while its series' row finished before it, not once the series was segmented anew after it."""
    first, second = pd.read_parquet(results / "series").query("status == 'done' and age == age")["series_id"][:2]
    old = pa.schema([("series_id", pa.string()), ("structure", pa.string()), ("decision", pa.string()),
                     ("reviewer", pa.string()), ("comment", pa.string()), ("decided_at", pa.timestamp("ms", tz="UTC"))])
    decided = RUN_FINISHED + timedelta(days=1)
    pq.write_table(pa.Table.from_pylist([
        {"series_id": first, "structure": "aorta", "decision": "reject", "reviewer": "ab", "comment": "",
         "decided_at": decided},
        {"series_id": second, "structure": "aorta", "decision": "reject", "reviewer": "ab", "comment": "",
         "decided_at": decided}], schema=old), results / "review.parquet")
    assert read_decisions(results)["label_map_key"].isna().all()
    assert _rejected_in_study(results, "aorta") == 2
    _segment_anew(results, second)
    assert _rejected_in_study(results, "aorta") == 1
