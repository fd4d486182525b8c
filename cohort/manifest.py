"""Load and validate the manifest CSV into :class:`SeriesSpec` records.

Problems with the manifest as a whole (missing required column, duplicate or empty
``series_id``) stop the run before any work: :class:`~cohort.errors.ManifestError`, with the
file, the CSV line and the column. Problems with one row's values (bad age or sex, missing
image) are that series' failure and are reported by :func:`validate_subject`.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

from cohort.errors import ManifestError, SeriesError

REQUIRED_COLUMNS = ("series_id", "path")
OPTIONAL_COLUMNS = ("age", "sex", "labels")
SERIES_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
SEXES = ("M", "F")


@dataclass(frozen=True)
class SeriesSpec:
    """One manifest row: what to process, with the raw subject fields kept as text.

    ``line`` is the CSV line number (the header is line 1), used in every message.
    """

    series_id: str
    path: Path
    line: int
    manifest: Path
    age_text: str = ""
    sex_text: str = ""
    labels: Path | None = None

    @property
    def where(self) -> str:
        return f"{self.manifest.name} line {self.line} ({self.series_id})"


@dataclass(frozen=True)
class Subject:
    """Validated subject fields of a series; ``None`` where the manifest leaves them empty."""

    age: float | None
    sex: str | None


def load_manifest(path: str | Path) -> list[SeriesSpec]:
    """Read ``path`` and return one :class:`SeriesSpec` per row, in file order.

    >>> specs = load_manifest(example_manifest())  # doctest: +SKIP
    """
    manifest = Path(path).resolve()
    if not manifest.is_file():
        raise ManifestError(f"{path}: manifest not found")
    with manifest.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = [c.strip() for c in (reader.fieldnames or [])]
        for column in REQUIRED_COLUMNS:
            if column not in columns:
                raise ManifestError(
                    f"{manifest}: line 1: required column '{column}' is missing "
                    f"(found: {', '.join(columns) or 'no header'})"
                )
        reader.fieldnames = columns
        specs = [_row_to_spec(row, line, manifest) for line, row in enumerate(reader, start=2)]
    _reject_duplicates(specs, manifest)
    return specs


def _row_to_spec(row: dict[str, str | None], line: int, manifest: Path) -> SeriesSpec:
    def cell(column: str) -> str:
        return (row.get(column) or "").strip()

    series_id = cell("series_id")
    if not series_id:
        raise ManifestError(f"{manifest}: line {line}: column 'series_id' is empty")
    if not SERIES_ID_PATTERN.match(series_id):
        raise ManifestError(
            f"{manifest}: line {line}: column 'series_id' value {series_id!r} may hold only "
            "letters, digits, '.', '_' and '-' (it names files and Zarr arrays)"
        )
    if not cell("path"):
        raise ManifestError(f"{manifest}: line {line}: column 'path' is empty")
    labels = cell("labels")
    return SeriesSpec(
        series_id=series_id,
        path=_resolve(cell("path"), manifest),
        line=line,
        manifest=manifest,
        age_text=cell("age"),
        sex_text=cell("sex"),
        labels=_resolve(labels, manifest) if labels else None,
    )


def _resolve(value: str, manifest: Path) -> Path:
    candidate = Path(value).expanduser()
    return candidate if candidate.is_absolute() else (manifest.parent / candidate)


def _reject_duplicates(specs: list[SeriesSpec], manifest: Path) -> None:
    first_line: dict[str, int] = {}
    for spec in specs:
        if spec.series_id in first_line:
            raise ManifestError(
                f"{manifest}: line {spec.line}: column 'series_id' value {spec.series_id!r} "
                f"duplicates line {first_line[spec.series_id]}"
            )
        first_line[spec.series_id] = spec.line


def validate_subject(spec: SeriesSpec) -> Subject:
    """Parse age and sex of one row, raising :class:`SeriesError` naming the row."""
    age: float | None = None
    if spec.age_text:
        try:
            age = float(spec.age_text)
        except ValueError:
            raise SeriesError(f"{spec.where}: age {spec.age_text!r} is not a number") from None
        if not (0 <= age <= 130):
            raise SeriesError(f"{spec.where}: age {spec.age_text!r} is outside 0-130 years")
    sex = spec.sex_text.upper() or None
    if sex is not None and sex not in SEXES:
        raise SeriesError(f"{spec.where}: sex {spec.sex_text!r} is not M or F")
    return Subject(age=age, sex=sex)


def subject_or_empty(spec: SeriesSpec) -> Subject:
    """The subject fields where valid, else empty: what a failed row still records."""
    try:
        return validate_subject(spec)
    except SeriesError:
        return Subject(age=None, sex=None)


def example_manifest() -> Path:
    """Path of the manifest shipped with the package (TotalSegmentator's example CTs)."""
    return Path(__file__).parent / "examples" / "manifest.csv"
