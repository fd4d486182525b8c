"""Where a run keeps its outputs under ``--out``: one place that names every path."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import zarr

from cohort.errors import RunCannotStart


def missing_table(out: Path, *tables: str) -> str | None:
    """Why the results under ``out`` cannot be read: the first of ``tables`` (``features``,
    ``series``) that has no Parquet part yet; None when all have one."""
    for table in tables:
        if not any((Path(out) / table).glob("*.parquet")):
            return f"{Path(out) / table}: no Parquet table here; run `cohort run --out {out}` first"
    return None


def check_writable_folder(folder: Path, min_free_gb: float = 0.0, label: str | None = None) -> None:
    """Stop before any work when ``folder`` (existing, or to be made) is a file, cannot be
    written (permissions, a read-only file system), or has less than ``min_free_gb`` free;
    ``label`` names it in the message (default: ``--out <folder>``)."""
    folder = Path(folder)
    label = label or f"--out {folder}"
    if folder.exists() and not folder.is_dir():
        raise RunCannotStart(f"{label}: {folder} is a file, not a folder; give a folder for the results")
    existing = next(parent for parent in (folder, *folder.absolute().parents) if parent.exists())
    if not os.access(existing, os.W_OK | os.X_OK):
        reason = "a read-only file system" if _read_only_mount(existing) else "permission denied"
        raise RunCannotStart(f"{label}: cannot write in {existing} ({reason}); "
                             "choose a folder you can write to")
    free_gb = shutil.disk_usage(existing).free / 1e9
    if free_gb < min_free_gb:
        raise RunCannotStart(f"{label}: only {free_gb:.2f} GB free on its file system "
                             f"(execution.min_free_gb = {min_free_gb:g}); free space or choose another folder")


def _read_only_mount(path: Path) -> bool:
    return bool(os.statvfs(path).f_flag & os.ST_RDONLY)


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
    def content_key(self) -> Path:
        """The secret that keys the recorded digests of the rows' input bytes
        (:class:`cohort.provenance.ContentKey`): kept with the results, never in a table."""
        return self.root / ".cohort.content_key"

    @property
    def unflushed(self) -> Path:
        """The running run's finished series not yet in a Parquet part, for ``cohort status``."""
        return self.root / ".cohort.unflushed.json"

    @property
    def corrupt(self) -> Path:
        """Unreadable parts set aside on start (outside the datasets, so readers never see them)."""
        return self.root / "corrupt"

    @property
    def runs(self) -> Path:
        """One JSON record per run: arguments, resolved config, versions, manifest hash."""
        return self.root / "runs"

    def check_writable(self, min_free_gb: float) -> None:
        """Stop before any work when ``root`` is not a folder we can write to or is nearly full."""
        check_writable_folder(self.root, min_free_gb)

    def create(self) -> None:
        """Make every folder and the Zarr group before workers start (workers creating the
        group at the same moment race: zarr's ContainsGroupError)."""
        for folder in (self.root, self.features, self.series, self.runs):
            folder.mkdir(parents=True, exist_ok=True)
        try:
            zarr.open_group(str(self.labels_zarr), mode="a")
        except (ValueError, TypeError, KeyError, zarr.errors.BaseZarrError) as error:
            metadata = self.labels_zarr / "zarr.json"
            raise RunCannotStart(
                f"{metadata}: not valid Zarr metadata ({type(error).__name__}: {str(error)[:120]}). Restore it, or "
                f"move {self.labels_zarr} aside: the series whose label maps it held are then processed again"
            ) from None
