"""Do the aging tables still describe the run's tables? Which stats, made when, from what.

``cohort stats`` reads ``series/``, ``features/`` and ``review.parquet``; when any of them changes
afterwards (the run grew, rows were recomputed, a reviewer rejected a series) the stats are stale
and a report built on them would mix two states. :func:`input_state` is a cheap fingerprint of
those inputs (file names and sizes of every part: parts are immutable, new rows mean new parts).
When the stats' Parquet metadata (key ``cohort.aging``) carries it under ``inputs``, the check
compares fingerprints; otherwise it falls back to modification times (an input part newer
than the stats' tables).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pyarrow.parquet as pq

from cohort.provenance import digest
from cohort.stats.pooled import DEFAULT_DEFINITIONS
from cohort.store.tables import part_files

METADATA_KEY = b"cohort.aging"
INPUTS = ("series", "features", "review")
MARKER_TABLE = "correlations"


def input_state(results_dir: Path) -> dict[str, str]:
    """A digest per input (``series``, ``features``, ``review``) of its parts' names and sizes.

    ``cohort stats`` stores this under ``inputs`` in its tables' ``cohort.aging`` metadata.
    """
    results_dir = Path(results_dir)
    files = {"series": part_files(results_dir / "series"), "features": part_files(results_dir / "features"),
             "review": [p for p in [results_dir / "review.parquet"] if p.exists()]}
    return {name: digest([(p.name, p.stat().st_size) for p in paths]) for name, paths in files.items()}


@dataclass(frozen=True)
class StatsState:
    """Which stats folder a report shows, when it was made, with what, and why it may be stale."""

    stats_dir: Path
    made_at: datetime | None
    provenance: dict
    problems: tuple[str, ...]

    @property
    def computed(self) -> bool:
        return self.made_at is not None

    @property
    def pooled_structures(self) -> str:
        """The pooled-structure definitions the study of these stats used (config ``pooled_structures``), so that
        the review and the report know its pooled rows; the default's where no stats say otherwise."""
        return str(self.provenance.get("config", {}).get("pooled_structures", DEFAULT_DEFINITIONS))

    @property
    def fresh(self) -> bool:
        return self.computed and not self.problems


def check_stats(results_dir: Path, stats_dir: Path) -> StatsState:
    """The state of ``stats_dir`` against ``results_dir``'s current inputs."""
    marker = Path(stats_dir) / f"{MARKER_TABLE}.parquet"
    if not marker.exists():
        return StatsState(Path(stats_dir), None, {}, ())
    metadata = pq.read_schema(marker).metadata or {}
    provenance = json.loads(metadata.get(METADATA_KEY, b"{}"))
    made_at = datetime.fromtimestamp(marker.stat().st_mtime, tz=timezone.utc)
    recorded = provenance.get("inputs")
    if recorded:
        now = input_state(results_dir)
        problems = tuple(f"{name} changed after the stats were made" for name in INPUTS
                         if recorded.get(name) != now[name])
    else:
        problems = tuple(_newer_inputs(Path(results_dir), marker.stat().st_mtime))
    return StatsState(Path(stats_dir), made_at, provenance, problems)


def _newer_inputs(results_dir: Path, made: float) -> list[str]:
    """Inputs with a part written after ``made`` (the stats' modification time)."""
    newer = []
    for name, paths in (("series", part_files(results_dir / "series")),
                        ("features", part_files(results_dir / "features")),
                        ("review", [results_dir / "review.parquet"])):
        latest = max((p.stat().st_mtime for p in paths if p.exists()), default=0.0)
        if latest > made:
            when = datetime.fromtimestamp(latest, tz=timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
            newer.append(f"{name} changed after the stats were made (written {when})")
    return newer
