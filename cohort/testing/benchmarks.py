"""What the benchmarks under ``benchmarks/`` share: a manifest of image files and the processing
window of a run read from its ``series/`` table."""

from __future__ import annotations

import csv
from pathlib import Path

import pandas as pd


def series_manifest(path: Path, images: list[Path], age: float = 50, sex: str = "F") -> Path:
    """Write a manifest of ``images`` (series ids ``s000``, ``s001``, ...), all with one made-up
    age and sex, to ``path``."""
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["series_id", "path", "age", "sex"])
        writer.writerows([f"s{index:03d}", image, age, sex] for index, image in enumerate(images))
    return path


def processing_window(series: pd.DataFrame) -> tuple[float, float]:
    """First series started and last series finished (epoch seconds) of a ``series/`` table: the
    window the series took, start-up and model load of the run excluded."""
    finished = (series["finished_at"] - pd.Timestamp(0, tz="UTC")).dt.total_seconds()
    return float((finished - series["seconds_total"]).min()), float(finished.max())
