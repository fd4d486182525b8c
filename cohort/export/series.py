"""The series index: the crawled file rows grouped by SeriesInstanceUID, one summary per series.

A series is its UID, wherever its files lie: a series split over folders is one series, a folder
holding several series gives several. Its geometry is judged by the same function that ingest
uses (``cohort.ingest.dicom.slice_geometry``), so a series the index calls whole is one that
``cohort run`` reads, and a gap or a tilt is named here already.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import PurePosixPath

import numpy as np
import pandas as pd

from cohort.ingest.dicom import GeometryProblem, SliceGeometry, SliceHeader, slice_geometry


@dataclass(frozen=True)
class SeriesSummary:
    """What selection needs to know of one series (no identifying field: keys are pseudonyms)."""

    series_uid: str
    study_key: str
    subject_key: str
    folder: str  # deepest folder (relative to the export root) holding every file of the series
    n_instances: int
    modality: str
    image_type: str
    orientation: str  # axial, coronal, sagittal (the plane closest to the slices), "" when unknown
    tilt_from_axial_deg: float | None
    slice_thickness_mm: float | None
    slice_spacing_mm: float | None
    z_coverage_mm: float | None
    geometry_problem: str | None  # why the files are not one evenly spaced volume
    kernel: str
    contrast: bool
    kvp: float | None
    manufacturer: str
    model: str
    series_description: str
    age: float | None
    sex: str
    grid: str = ""  # the volume's shape and affine: series of one Dixon acquisition share it; "" when not one volume

    @property
    def image_type_values(self) -> set[str]:
        return {value.strip() for value in self.image_type.split("\\") if value.strip()}


def summarise(files: pd.DataFrame) -> list[SeriesSummary]:
    """One :class:`SeriesSummary` per SeriesInstanceUID among the readable rows of ``files``."""
    by_series: dict[str, list[dict]] = {}
    for row in files.to_dict("records"):  # plain rows: per-series pandas groups cost ~10x more
        if _is_missing(row.get("error")):
            by_series.setdefault(str(row["series_uid"]), []).append(row)
    return [_summary(uid, by_series[uid]) for uid in sorted(by_series)]


def _summary(series_uid: str, rows: list[dict]) -> SeriesSummary:
    if all(row["sop_uid"] for row in rows):
        rows = list({row["sop_uid"]: row for row in rows}.values())
    column = {name: [row[name] for row in rows] for name in rows[0]}
    thickness = _most_common(column["slice_thickness_mm"])
    problem, spacing, coverage, grid = None, None, None, ""
    try:
        geometry = slice_geometry([_slice_header(row) for row in rows])
        spacing, coverage = round(geometry.slice_spacing_mm, 4), round(geometry.z_coverage_mm, 2)
        grid = _grid(geometry)
    except GeometryProblem as exc:
        problem = str(exc)
    orientation, tilt = _plane(rows[0]["orientation"])
    return SeriesSummary(
        series_uid=series_uid, study_key=str(rows[0]["study_key"]), subject_key=str(rows[0]["subject_key"]),
        folder=_common_folder(column["file"]), n_instances=len(rows), modality=_most_common(column["modality"]) or "",
        image_type=_most_common(column["image_type"]) or "", orientation=orientation, tilt_from_axial_deg=tilt,
        slice_thickness_mm=None if thickness is None else float(thickness), slice_spacing_mm=spacing,
        z_coverage_mm=coverage, geometry_problem=problem, kernel=_most_common(column["kernel"]) or "",
        contrast=_contrast(_most_common(column["contrast_agent"]) or ""), kvp=_most_common(column["kvp"]),
        manufacturer=_most_common(column["manufacturer"]) or "", model=_most_common(column["model"]) or "",
        series_description=_most_common(column["series_description"]) or "", age=_most_common(column["age"]),
        sex=_most_common(column["sex"]) or "", grid=grid,
    )


def _grid(geometry: SliceGeometry) -> str:
    """Shape and affine to 0.01 mm: equal for the series of one acquisition (Dixon water, fat...)."""
    affine = " ".join(f"{value:.2f}" for value in np.asarray(geometry.affine)[:3].ravel())
    return f"{'x'.join(map(str, geometry.shape))} {affine}".replace("-0.00", "0.00")


def _slice_header(row: dict) -> SliceHeader:
    frames = 1 if _is_missing(row["frames"]) else int(row["frames"])
    missing = [name for name in ("position", "orientation", "pixel_spacing", "rows", "columns")
               if _is_missing(row[name])]
    if missing and frames <= 1:
        raise GeometryProblem(f"image has no {'/'.join(missing)}; not a cross-sectional slice")
    if missing:
        return SliceHeader(row["file"], (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0), 0, 0, (0.0, 0.0), frames)
    return SliceHeader(row["file"], tuple(row["position"]), tuple(row["orientation"]), int(row["rows"]),
                       int(row["columns"]), tuple(row["pixel_spacing"]), frames)


def _is_missing(value) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value))


def _plane(orientation) -> tuple[str, float | None]:
    """The anatomical plane closest to the slices and the normal's angle to the body axis."""
    if _is_missing(orientation) or len(orientation) != 6:
        return "", None
    normal = np.cross(np.asarray(orientation[:3], float), np.asarray(orientation[3:], float))
    if not np.linalg.norm(normal):
        return "", None
    normal = np.abs(normal / np.linalg.norm(normal))
    plane = ("sagittal", "coronal", "axial")[int(np.argmax(normal))]
    return plane, round(float(np.degrees(np.arccos(min(1.0, normal[2])))), 2)


def _common_folder(files: list[str]) -> str:
    """The deepest folder holding every file: where ``cohort run`` looks for the series' UID."""
    folders = {str(PurePosixPath(file).parent) for file in files}
    common = os.path.commonpath(list(folders)) if all(f != "." for f in folders) else "."
    return common or "."


def _contrast(agent: str) -> bool:
    """ContrastBolusAgent names an agent (not empty, not "none"/"no")."""
    return agent.strip().casefold() not in ("", "none", "no", "n", "0")


def _most_common(values: list):
    present = [v for v in values if not _is_missing(v) and v != ""]
    return Counter(present).most_common(1)[0][0] if present else None
