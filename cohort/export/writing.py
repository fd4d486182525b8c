"""Write what ``cohort manifest`` found: ``scans.csv``, ``scans.index.parquet`` and the unreadable files.

``scans.csv`` has one row per chosen series: ``series_id,path,age,sex,series_uid,subject_id``
and the covariates ``contrast,kvp,kernel,scanner,slice_thickness_mm`` (carried into
``series/`` by ``cohort run``). ``path`` is the deepest folder holding every file of the series
(relative to the manifest's folder when it lies under it) and ``series_uid`` tells ``cohort run``
which series under it to read; it is empty for a folder's images without a UID, which the run
reads as the folder's one series. Rows of a Dixon policy add ``fat``, ``fat_series_uid``, ``water``
and ``water_series_uid``: the same for the acquisition's fat and water series, whose fat fractions
``cohort run`` measures. ``scans.index.parquet`` has one row per series found;
``scans.unreadable.parquet`` one row per file that is not usable DICOM, with the reason.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pandas as pd

from cohort.export.policy import Choice
from cohort.export.pseudonyms import PseudonymKey
from cohort.export.series import SeriesSummary

MANIFEST_COLUMNS = ("series_id", "path", "age", "sex", "series_uid", "subject_id",
                    "contrast", "kvp", "kernel", "scanner", "slice_thickness_mm")
DIXON_COLUMNS = ("fat", "fat_series_uid", "water", "water_series_uid")


def index_path(manifest: Path) -> Path:
    """``scans.index.parquet`` beside ``scans.csv``."""
    return manifest.with_name(manifest.stem + ".index.parquet")


def unreadable_path(manifest: Path) -> Path:
    return manifest.with_name(manifest.stem + ".unreadable.parquet")


def series_id(series: SeriesSummary, key: PseudonymKey) -> str:
    """The pseudonym of the series' identity: of its UID, else of its study key and folder."""
    return key.pseudonym("ser", series.identity)


def write_manifest(choices: list[Choice], manifest: Path, root: Path, key: PseudonymKey) -> int:
    """Write the chosen series as manifest rows; returns how many."""
    chosen = [choice for choice in choices if choice.selected and choice.companion_of is None]
    rows = [_manifest_row(choice, manifest, root, key) for choice in chosen]
    columns = MANIFEST_COLUMNS + (DIXON_COLUMNS if any(choice.companions for choice in chosen) else ())
    temporary = manifest.with_name(manifest.name + ".partial")
    with temporary.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(temporary, manifest)
    return len(rows)


def _manifest_row(choice: Choice, manifest: Path, root: Path, key: PseudonymKey) -> dict:
    series = choice.series
    companions = {}
    for role, companion in choice.companions:
        companions[role] = _series_folder(companion, manifest, root)
        companions[f"{role}_series_uid"] = companion.series_uid
    return {
        "series_id": series_id(series, key),
        "path": _series_folder(series, manifest, root),
        "age": "" if series.age is None else f"{series.age:g}", "sex": series.sex,
        "series_uid": series.series_uid, "subject_id": series.subject_key,
        "contrast": "yes" if series.contrast else "no", "kvp": "" if series.kvp is None else f"{series.kvp:g}",
        "kernel": series.kernel, "scanner": " ".join(filter(None, (series.manufacturer, series.model))),
        "slice_thickness_mm": "" if series.slice_thickness_mm is None else f"{series.slice_thickness_mm:g}",
        **companions,
    }


def _series_folder(series: SeriesSummary, manifest: Path, root: Path) -> str:
    """The series' folder, relative to the manifest's folder when it lies under it."""
    folder = Path(os.path.abspath(root / series.folder))
    home = Path(os.path.abspath(manifest)).parent
    return folder.relative_to(home).as_posix() if folder.is_relative_to(home) else str(folder)


def write_index(choices: list[Choice], manifest: Path, key: PseudonymKey) -> None:
    """One row per series found, with ``selected`` and ``reason``; ``series_uid`` is null for a
    folder's images without a UID, which its ``folder`` names."""
    rows = []
    for choice in sorted(choices, key=lambda c: (c.series.subject_key, c.series.study_key, not c.selected, c.reason)):
        series = choice.series
        rows.append({
            "series_id": series_id(series, key), "series_uid": series.series_uid or None,
            "study_key": series.study_key, "subject_id": series.subject_key, "folder": series.folder,
            "modality": series.modality, "image_type": series.image_type, "orientation": series.orientation,
            "tilt_from_axial_deg": series.tilt_from_axial_deg, "slice_thickness_mm": series.slice_thickness_mm,
            "slice_spacing_mm": series.slice_spacing_mm, "n_instances": series.n_instances,
            "z_coverage_mm": series.z_coverage_mm, "kernel": series.kernel, "contrast": series.contrast,
            "kvp": series.kvp, "manufacturer": series.manufacturer, "model": series.model,
            "series_description": series.series_description, "age": series.age, "sex": series.sex or None,
            "selected": choice.selected, "reason": choice.reason,
        })
    # a string column even when every series lacks a UID (all null would be typed null)
    _write_parquet(pd.DataFrame(rows, columns=INDEX_COLUMNS).astype({"series_uid": "string"}), index_path(manifest))


INDEX_COLUMNS = ("series_id", "series_uid", "study_key", "subject_id", "folder", "modality", "image_type",
                 "orientation", "tilt_from_axial_deg", "slice_thickness_mm", "slice_spacing_mm", "n_instances",
                 "z_coverage_mm", "kernel", "contrast", "kvp", "manufacturer", "model", "series_description", "age",
                 "sex", "selected", "reason")


def write_unreadable(files: pd.DataFrame, manifest: Path) -> int:
    """The files that are not usable DICOM (``file`` relative to the export root, ``reason``)."""
    broken = files[files["error"].notna()][["file", "error"]].rename(columns={"error": "reason"})
    _write_parquet(broken.reset_index(drop=True), unreadable_path(manifest))
    return len(broken)


def _write_parquet(frame: pd.DataFrame, path: Path) -> None:
    temporary = path.with_name(path.name + ".partial")
    frame.to_parquet(temporary, index=False)
    os.replace(temporary, path)
