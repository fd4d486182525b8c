"""Where a run keeps its outputs under ``--out``: one place that names every path."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import zarr


@dataclass(frozen=True)
class OutputLayout:
    """Paths of the tables, the label store and the run's own bookkeeping under ``root``."""

    root: Path

    @property
    def features(self) -> Path:
        return self.root / "features"

    @property
    def series(self) -> Path:
        return self.root / "series"

    @property
    def labels_zarr(self) -> Path:
        return self.root / "labels.zarr"

    @property
    def lock(self) -> Path:
        return self.root / ".cohort.lock"

    @property
    def runs(self) -> Path:
        """One JSON record per run: arguments, resolved config, versions, manifest hash."""
        return self.root / "runs"

    def create(self) -> None:
        """Make every folder and the Zarr group before workers start (workers creating the
        group at the same moment race: zarr's ContainsGroupError)."""
        for folder in (self.root, self.features, self.series, self.runs):
            folder.mkdir(parents=True, exist_ok=True)
        zarr.open_group(str(self.labels_zarr), mode="a")
