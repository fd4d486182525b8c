"""``cohort status`` over real Parquet parts, run records and a real flock; progress log lines of
``cohort run`` when stderr is not a terminal."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pytest

from cohort.errors import RunCannotStart
from cohort.progress import ProgressLog, format_duration, progress_line
from cohort.status import run_status
from cohort.store import OutputLayout, exclusive_output, write_part
from cohort.store.tables import SERIES_SCHEMA
from testkit import cli_env, cohort_cli

RUN_ID = "20261126T080000-abc123"
OLD_RUN = "20261125T080000-0ld000"
STARTED = datetime(2026, 11, 26, 8, 0, tzinfo=timezone.utc)


def _rows(rows: list[tuple[str, str, datetime]]) -> pa.Table:
    return pa.Table.from_pylist([{"series_id": series_id, "status": status, "in_manifest": True, "seconds_total": 30.0,
                                  "finished_at": finished} for series_id, status, finished in rows],
                                schema=SERIES_SCHEMA)


@pytest.fixture()
def results(tmp_path: Path) -> Path:
    """An output folder: an old run did s0..s3 (s3 failed); the newest run, started at 08:00 on a
    10-series manifest, retried s3 at 08:01 and did s4..s7 at one per minute (08:02..08:05)."""
    layout = OutputLayout(tmp_path / "results")
    layout.series.mkdir(parents=True)
    layout.runs.mkdir()
    yesterday = STARTED - timedelta(days=1)
    write_part(layout.series, f"part-{OLD_RUN}-00000",
               _rows([(f"s{i}", "failed" if i == 3 else "done", yesterday) for i in range(4)]))
    write_part(layout.series, f"part-{RUN_ID}-00000",
               _rows([(f"s{i}", "done", STARTED + timedelta(minutes=i - 2)) for i in range(3, 8)]))
    record = layout.runs / f"{RUN_ID}.json"
    record.write_text(json.dumps({"run_id": RUN_ID, "n_series": 10, "n_todo": 7}))
    os.utime(record, (STARTED.timestamp(), STARTED.timestamp()))
    old = layout.runs / f"{OLD_RUN}.json"
    old.write_text(json.dumps({"run_id": OLD_RUN, "n_series": 4, "n_todo": 4}))
    os.utime(old, (STARTED.timestamp() - 86400,) * 2)
    return layout.root


def test_stopped_run_counts_and_rate(results: Path) -> None:
    status = run_status(results)
    assert (status.running, status.run_id, status.started) == (False, RUN_ID, STARTED)
    assert (status.n_series, status.n_done, status.n_failed, status.n_remaining) == (10, 8, 0, 2)
    assert status.n_this_run == 5
    assert status.last_finished == STARTED + timedelta(minutes=5)
    assert status.rate_per_min == pytest.approx(1.0)
    assert status.eta_s is None
    text = status.describe()
    assert "stopped" in text and "8 done, 0 failed, 2 remaining of 10" in text and "rerun" in text


def test_rows_rewritten_for_manifest_edits_are_not_finished_by_this_run(results: Path) -> None:
    """A run whose manifest edits age or sex of done rows (or drops rows) rewrites them into
    ``part-<run_id>-manifest``: those series were done by earlier runs, so they neither count as
    finished by this run nor feed its rate and ETA (they made "3 finished by this run" of one)."""
    layout = OutputLayout(results)
    yesterday = STARTED - timedelta(days=1)
    write_part(layout.series, f"part-{RUN_ID}-manifest", _rows([(f"s{i}", "done", yesterday) for i in range(3)]))
    status = run_status(results)
    assert (status.n_done, status.n_this_run) == (8, 5)
    assert status.rate_per_min == pytest.approx(1.0)


def test_running_run_gives_an_eta(results: Path) -> None:
    now = STARTED + timedelta(minutes=10)
    with exclusive_output(OutputLayout(results).lock, "cohort run --manifest scans.csv --out results"):
        status = run_status(results, now=now)
    assert status.running and "cohort run --manifest scans.csv" in status.holder
    assert status.rate_per_min == pytest.approx(0.5)
    assert status.eta_s == pytest.approx(2 / 0.5 * 60)
    assert "ETA 4m" in status.describe()
    assert not run_status(results, now=now).running, "the flock is gone once the run ends"


def test_a_live_run_counts_the_series_it_finished_since_its_last_part(results: Path) -> None:
    """What ``BatchWriter`` publishes after each series (``.cohort.unflushed.json``) counts while the
    run holds the folder; once it stops, those series were never written and are not counted."""
    from cohort.driver import BatchWriter
    from cohort.pipeline import SeriesResult
    from cohort.store.records import SeriesRecord

    layout = OutputLayout(results)
    writer = BatchWriter(layout, RUN_ID, batch_size=50, flush_interval_s=60)
    for series_id, status, minute in (("s8", "done", 6), ("s9", "failed", 7)):
        writer.add(SeriesResult(SeriesRecord(series_id, status, 9, finished_at=STARTED + timedelta(minutes=minute))))
    now = STARTED + timedelta(minutes=10)
    with exclusive_output(layout.lock, "cohort run --manifest scans.csv --out results"):
        live = run_status(results, now=now)
    assert (live.n_done, live.n_failed, live.n_remaining, live.n_this_run) == (9, 1, 0, 7)
    assert (run_status(results, now=now).n_done, run_status(results, now=now).n_remaining) == (8, 2)  # stopped
    (layout.runs / "20261126T090000-new000.json").write_text(json.dumps({"run_id": "20261126T090000-new000",
                                                                         "n_series": 10}))
    with exclusive_output(layout.lock, "cohort run --manifest scans.csv --out results"):
        assert run_status(results, now=now).n_done == 8, "another run's unflushed series do not count"


def test_folder_without_results_is_refused(tmp_path: Path) -> None:
    with pytest.raises(RunCannotStart, match="no cohort results"):
        run_status(tmp_path)


def test_status_cli(results: Path, tmp_path: Path) -> None:
    shown = cohort_cli("status", "--out", str(results), timeout=120)
    assert shown.returncode == 0, shown.stderr
    assert "8 done, 0 failed, 2 remaining of 10 series" in shown.stderr
    empty = cohort_cli("status", "--out", str(tmp_path / "nothing"), timeout=120)
    assert empty.returncode == 2 and "no cohort results" in empty.stderr and "Traceback" not in empty.stderr


def test_progress_line_numbers() -> None:
    assert progress_line(4004, 117, 3, elapsed_s=3600) == "cohort run: 117/4004 done, 3 failed, 2.0 series/min, " \
                                                            "ETA 32h22m"
    assert progress_line(10, 0, 0, elapsed_s=5).endswith("ETA unknown")
    assert [format_duration(s) for s in (40, 720, 18720)] == ["40s", "12m", "5h12m"]


def test_progress_log_counts_results_and_writes_on_its_timer() -> None:
    lines: list[str] = []
    clock = iter(range(0, 10_000, 60)).__next__
    with ProgressLog(3, write=lines.append, interval_s=3600, clock=clock) as log:
        log(SimpleNamespace(done=True))
        log(SimpleNamespace(done=False))
        assert log.line() == "cohort run: 1/3 done, 1 failed, 2.0 series/min, ETA 30s"
    assert lines == []
    with ProgressLog(3, write=lines.append, interval_s=0.05) as log:
        log(SimpleNamespace(done=True))
        while not lines:
            pass
    assert lines[0].startswith("cohort run: 1/3 done, 0 failed")


def test_run_without_a_terminal_logs_progress_lines_and_status_reads_it(tmp_path: Path, examples: Path,
                                                                        prefect_server: str) -> None:
    out = tmp_path / "results"
    result = subprocess.run([sys.executable, "-m", "cohort.cli", "run", "--manifest", str(examples / "manifest.csv"),
                             "--out", str(out), "--workers", "1"], capture_output=True, text=True, timeout=300,
                            env={**cli_env(prefect_server), "COHORT_PROGRESS_INTERVAL_S": "0.2"})
    assert result.returncode == 0, result.stderr
    lines = re.findall(r"cohort run: (\d+)/3 done, (\d+) failed, [\d.]+ series/min, ETA \S+", result.stderr)
    assert lines, result.stderr
    assert "\x1b[" not in result.stderr and "━" not in result.stderr, "no progress bar in a log file"
    status = run_status(out)
    assert (status.running, status.n_done, status.n_failed, status.n_remaining, status.n_this_run) == \
        (False, 3, 0, 0, 3)
