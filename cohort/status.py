"""``cohort status``: how far a run under ``--out`` is, read from what the run leaves on disk.

Nothing talks to the running process: the ``series/`` parts say what is done and failed, and
while a run is live its ``.cohort.unflushed.json`` adds the series it finished since its last part
(parts are written per batch); the newest ``runs/*.json`` says how many series the manifest has,
and the ``.cohort.lock`` flock, held by a live ``cohort run`` only (the kernel drops it when the
process dies), says whether one runs. A stopped run's unflushed series are not counted: they are
lost with it, and its rerun does them again.
"""

from __future__ import annotations

import fcntl
import json
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pyarrow.parquet as pq

from cohort.errors import RunCannotStart
from cohort.progress import format_duration
from cohort.store import OutputLayout
from cohort.store.lock import describe_holder
from cohort.store.tables import part_files


@dataclass(frozen=True)
class RunStatus:
    """Counts over the manifest of the newest run, and this run's own pace."""

    out: Path
    running: bool
    holder: str | None
    run_id: str | None
    started: datetime | None
    n_series: int
    n_done: int
    n_failed: int
    n_this_run: int
    last_finished: datetime | None
    now: datetime

    @property
    def n_remaining(self) -> int:
        return max(0, self.n_series - self.n_done - self.n_failed)

    @property
    def rate_per_min(self) -> float | None:
        """Series finished per minute by the newest run: its rows over the time since it started
        (until now while it runs, until its last row once stopped)."""
        end = self.now if self.running else self.last_finished
        if not self.n_this_run or self.started is None or end is None or end <= self.started:
            return None
        return self.n_this_run / (end - self.started).total_seconds() * 60

    @property
    def eta_s(self) -> float | None:
        rate = self.rate_per_min
        return self.n_remaining / rate * 60 if self.running and rate else None

    def describe(self) -> str:
        state = f"running ({self.holder})" if self.running else "stopped (no cohort run holds the folder)"
        since = f", run {self.run_id} started {self.started.astimezone():%Y-%m-%d %H:%M:%S}" if self.started else ""
        lines = [f"cohort status: {self.out}: {state}{since}",
                 f"  {self.n_done} done, {self.n_failed} failed, {self.n_remaining} remaining "
                 f"of {self.n_series} series in the manifest"]
        rate = self.rate_per_min
        if rate is not None:
            eta = f", ETA {format_duration(self.eta_s)}" if self.eta_s is not None else ""
            lines.append(f"  {self.n_this_run} finished by this run, {rate:.1f} series/min{eta}")
        if not self.running and (self.n_remaining or self.n_failed):
            lines.append("  rerun the same `cohort run` command to process the rest (failed series are retried)")
        return "\n".join(lines)


def run_status(out: Path, now: datetime | None = None) -> RunStatus:
    """Status of the run(s) under ``out``; :class:`RunCannotStart` when ``out`` holds no cohort results."""
    layout = OutputLayout(Path(out).resolve())
    records = sorted(layout.runs.glob("*.json"), key=lambda path: path.stat().st_mtime) if layout.runs.is_dir() \
        else []
    parts = part_files(layout.series)
    if not records and not parts:
        raise RunCannotStart(f"{out}: no cohort results here (no runs/*.json, no series/*.parquet); "
                             "give the --out folder of a `cohort run`")
    record = _read_record(records[-1]) if records else {}
    run_id = record.get("run_id")
    running, holder = _lock_holder(layout.lock)
    statuses = _latest_statuses(parts)
    finished = [time for path in parts if run_id and _processed_by(path, run_id)
                for time in pq.read_table(path, columns=["finished_at"])["finished_at"].to_pylist() if time]
    if running:
        for series_id, status, finished_at in _unflushed(layout.unflushed, run_id):
            statuses[series_id] = status
            if finished_at:
                finished.append(datetime.fromisoformat(finished_at))
    counts = list(statuses.values())
    return RunStatus(out=layout.root, running=running, holder=holder, run_id=run_id,
                     started=datetime.fromtimestamp(records[-1].stat().st_mtime, timezone.utc) if records else None,
                     n_series=int(record.get("n_series", len(counts))), n_done=counts.count("done"),
                     n_failed=counts.count("failed"), n_this_run=len(finished),
                     last_finished=max(finished) if finished else None, now=now or datetime.now(timezone.utc))


def _processed_by(part: Path, run_id: str) -> bool:
    """Whether ``part`` holds series that run ``run_id`` processed: its numbered batches
    (``part-<run_id>-00000.parquet``), not its ``part-<run_id>-manifest.parquet``, which only
    rewrites manifest edits (age, sex, ``in_manifest``) of rows done by earlier runs.

    >>> _processed_by(Path("part-r1-00003.parquet"), "r1"), _processed_by(Path("part-r1-manifest.parquet"), "r1")
    (True, False)
    """
    return re.fullmatch(rf"part-{re.escape(run_id)}-\d+\.parquet", part.name) is not None


def _unflushed(path: Path, run_id: str | None) -> list[tuple[str, str, str | None]]:
    """The series the live run ``run_id`` finished since its last part (none if the file is
    another run's, missing or being replaced)."""
    record = _read_record(path)
    return [tuple(row) for row in record.get("series", [])] if run_id and record.get("run_id") == run_id else []


def _read_record(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _latest_statuses(parts: list[Path]) -> dict[str, str]:
    """The newest status of each series still in the manifest (parts are named in time order;
    a failed row and its later retry both stay on disk until the run ends)."""
    latest: dict[str, str] = {}
    for path in parts:
        table = pq.read_table(path, columns=[c for c in ("series_id", "status", "in_manifest")
                                             if c in pq.read_schema(path).names])
        listed_column = table["in_manifest"].to_pylist() if "in_manifest" in table.column_names else [True] * len(table)
        for series_id, status, listed in zip(table["series_id"].to_pylist(), table["status"].to_pylist(),
                                             listed_column):
            if listed is False:
                latest.pop(series_id, None)
            else:
                latest[series_id] = status
    return latest


def _lock_holder(lock: Path) -> tuple[bool, str | None]:
    """(whether a live ``cohort run`` holds ``lock``, who: pid, host, since, command)."""
    try:
        handle = open(lock)
    except OSError:
        return False, None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True, describe_holder(handle.read())
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False, None
