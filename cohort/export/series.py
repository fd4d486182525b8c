"""The series index: the crawled file rows grouped by SeriesInstanceUID, one summary per series.

A series is its UID, wherever its files lie: a series split over folders is one series, a folder
holding several series gives several. Its geometry is judged by the same function that ingest
uses (``cohort.ingest.dicom.slice_geometry``), so a series the index calls whole is one that
``cohort run`` reads, and a gap or a tilt is named here already.

Images without a SeriesInstanceUID (anonymisers blank UIDs) are grouped by folder: the ones
of one folder are one series, because that is what ``cohort run`` reads for a manifest row with
that folder and no ``series_uid`` (GDCM groups a folder's files by their UID, here the empty
one). Such a series is called whole only when ``cohort run``'s own reader
(``cohort.ingest.dicom.series_geometry``) reads these very files as one volume: not when the
folder also holds series with a UID (the run would refuse a folder of several series), when
its files are two stacks (duplicate positions, two orientations), or when the run would read a
file the crawl could not. Those get a ``geometry_problem`` that says so.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import NamedTuple

import numpy as np
import pandas as pd

from cohort.errors import SeriesError
from cohort.ingest.dicom import (GeometryProblem, SliceGeometry, SliceHeader, check_one_scan, check_rescale_declared,
                                 series_geometry, slice_geometry)
from cohort.ingest.names import InputName


@dataclass(frozen=True)
class SeriesSummary:
    """What selection needs to know of one series (no identifying field: keys are pseudonyms)."""

    series_uid: str  # "" for the images of a folder that have none
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
    contrast: bool  # ContrastBolusAgent names an agent; selection may judge otherwise by the description
    kvp: float | None
    manufacturer: str
    model: str
    series_description: str
    age: float | None
    sex: str
    grid: str = ""  # the volume's shape and affine: series of one Dixon acquisition share it; "" when not one volume
    frame_key: str = ""  # pseudonym of the FrameOfReferenceUID (one scan's series share it); "" when none

    @property
    def image_type_values(self) -> set[str]:
        return {value.strip() for value in self.image_type.split("\\") if value.strip()}

    @property
    def identity(self) -> str:
        """What names the series, unique in an export and the same on every crawl: its UID, else
        (images without one) its study key and folder. Its ``series_id`` is a pseudonym of it."""
        return self.series_uid or f"{self.study_key}:{self.folder}"

    @property
    def label(self) -> str:
        """How a reason names the series."""
        return f"series {self.series_uid}" if self.series_uid else f"the series without UID in {self.folder}"


class Measured(NamedTuple):
    """A series' geometry as the index reports it: ``problem`` when its slices are not one volume."""

    problem: str | None
    spacing_mm: float | None = None
    coverage_mm: float | None = None
    grid: str = ""


def summarise(files: pd.DataFrame, root: Path) -> list[SeriesSummary]:
    """One :class:`SeriesSummary` per SeriesInstanceUID among the readable rows of ``files``, then
    one per folder (under the export ``root``) for its images without a UID."""
    by_series: dict[str, list[dict]] = {}
    uidless: dict[str, list[dict]] = {}
    for row in files.to_dict("records"):  # plain rows: per-series pandas groups cost ~10x more
        if _is_missing(row.get("error")):
            if row["series_uid"]:
                by_series.setdefault(str(row["series_uid"]), []).append(row)
            else:
                uidless.setdefault(_folder(row["file"]), []).append(row)
    with_uid = Counter(folder for rows in by_series.values() for folder in {_folder(row["file"]) for row in rows})
    summaries = []
    for uid in sorted(by_series):
        rows = _distinct_instances(by_series[uid])
        summaries.append(_summary(uid, rows, _measure(rows)))
    for folder, rows in sorted(uidless.items()):
        summaries.append(_summary("", rows, _measure_folder(root, folder, rows, with_uid[folder])))
    return summaries


def _distinct_instances(rows: list[dict]) -> list[dict]:
    """One row per SOPInstanceUID (duplicate copies count once) when every row has one; what the
    run reads for a ``series_uid``. A folder's images without a UID are not deduplicated: the
    run reads each of their files."""
    if all(row["sop_uid"] for row in rows):
        return list({row["sop_uid"]: row for row in rows}.values())
    return rows


def _measure(rows: list[dict]) -> Measured:
    """The rows' geometry, by the function ingest applies to the same headers."""
    try:
        geometry = slice_geometry([_slice_header(row) for row in rows])
        check_one_scan({row["study_key"] for row in rows if row["study_declared"]},  # blanks left out, as ingest does
                       {row["frame_key"] for row in rows} - {""})
        declared = {row["file"]: bool(row["rescale_declared"]) for row in rows}
        check_rescale_declared([declared[file] for file in geometry.files])
    except GeometryProblem as exc:
        return Measured(str(exc))
    return Measured(None, round(geometry.slice_spacing_mm, 4), round(geometry.z_coverage_mm, 2), _grid(geometry))


def _measure_folder(root: Path, folder: str, rows: list[dict], n_series_with_uid: int) -> Measured:
    """The geometry of ``folder``'s images without a UID, read as one series; a problem as well
    when ``cohort run`` would not read these files as this series from the folder."""
    grouped = f"{len(rows)} files without SeriesInstanceUID in one folder"
    if n_series_with_uid:
        return Measured(f"{grouped} lie beside {n_series_with_uid} series with one; `cohort run` cannot read them "
                        "apart (move them to a folder of their own)")
    measured = _measure(rows)
    problem = measured.problem or _run_reading_problem(root / folder, folder, rows)
    return measured._replace(problem=f"{grouped} are read as one series: {problem}", grid="") if problem else measured


def _run_reading_problem(path: Path, folder: str, rows: list[dict]) -> str | None:
    """Why ``cohort run`` would not read the files of ``rows`` as the series of the folder ``path``
    (its own reader, headers only), or None when it reads exactly them."""
    try:
        _, geometry = series_geometry(InputName(path, folder), None)
    except SeriesError as error:
        return str(error)
    read = {Path(file).name for file in geometry.files}
    grouped = {PurePosixPath(row["file"]).name for row in rows}
    if read != grouped:
        differing = sorted(read ^ grouped)
        return (f"`cohort run` reads {len(read)} files of the folder as its series, not these {len(grouped)} "
                f"({len(differing)} differ, e.g. {differing[0]})")
    return None


def _summary(series_uid: str, rows: list[dict], measured: Measured) -> SeriesSummary:
    column = {name: [row[name] for row in rows] for name in rows[0]}
    thickness = _most_common(column["slice_thickness_mm"])
    orientation, tilt = _plane(rows[0]["orientation"])
    return SeriesSummary(
        series_uid=series_uid, study_key=str(rows[0]["study_key"]), subject_key=str(rows[0]["subject_key"]),
        folder=_common_folder(column["file"]), n_instances=len(rows), modality=_most_common(column["modality"]) or "",
        image_type=_most_common(column["image_type"]) or "", orientation=orientation, tilt_from_axial_deg=tilt,
        slice_thickness_mm=None if thickness is None else float(thickness), slice_spacing_mm=measured.spacing_mm,
        z_coverage_mm=measured.coverage_mm, geometry_problem=measured.problem,
        kernel=_most_common(column["kernel"]) or "",
        contrast=_contrast(_most_common(column["contrast_agent"]) or ""), kvp=_most_common(column["kvp"]),
        manufacturer=_most_common(column["manufacturer"]) or "", model=_most_common(column["model"]) or "",
        series_description=_most_common(column["series_description"]) or "", age=_most_common(column["age"]),
        sex=_most_common(column["sex"]) or "", grid=measured.grid,
        frame_key=_most_common([frame for frame in column["frame_key"] if frame]) or "",
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


def _folder(file: str) -> str:
    """The folder of ``file`` (both relative to the export root)."""
    return PurePosixPath(file).parent.as_posix()


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
