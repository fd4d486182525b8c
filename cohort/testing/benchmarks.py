"""What the benchmarks under ``benchmarks/`` share: a manifest of image files, the processing
window of a run read from its ``series/`` table, and the peak memory of its worker processes."""

from __future__ import annotations

import csv
import threading
from pathlib import Path
from types import TracebackType

import pandas as pd
import psutil


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
    window the series took. The run's start-up is outside it; a worker's first model load is
    inside it wherever a series waited for it (that wait is part of the series' ``seconds_total``)."""
    finished = (series["finished_at"] - pd.Timestamp(0, tz="UTC")).dt.total_seconds()
    return float((finished - series["seconds_total"]).min()), float(finished.max())


class PeakChildMemory:
    """The largest resident memory of any process started by this one (Dask workers, the Prefect
    server), and the largest sum over all of them, sampled every ``interval_s`` while the ``with``
    block runs."""

    def __init__(self, interval_s: float = 0.2) -> None:
        self.interval_s = interval_s
        self.peak_bytes = 0
        self.peak_total_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> "PeakChildMemory":
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        me = psutil.Process()
        while not self._stop.wait(self.interval_s):
            total = 0
            for child in me.children(recursive=True):
                try:
                    resident = child.memory_info().rss
                except psutil.Error:  # ended between listing and reading
                    continue
                self.peak_bytes = max(self.peak_bytes, resident)
                total += resident
            self.peak_total_bytes = max(self.peak_total_bytes, total)
