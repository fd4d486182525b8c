"""Load and validate the manifest CSV into :class:`SeriesSpec` records.

Three kinds of problems, kept apart because they have different consequences:

* the file cannot be read as a manifest at all (not found, not UTF-8, broken CSV quoting, no
  header): :class:`~cohort.errors.ManifestError` straight away;
* problems of the manifest's structure (header columns missing, duplicated or unnamed; a row's
  ``series_id`` empty, unsafe, too long or duplicated; ``path`` empty; more values than columns):
  :func:`read_manifest` collects them as :class:`Problem` records, :func:`load_manifest` refuses
  the run on them (exit 2) and ``cohort check`` lists them all;
* one row's values (age, sex; the files themselves): that series' failure, reported by
  :func:`validate_subject` during a run and listed up front by ``cohort check``.

Every message names the manifest, the physical line of the row (the header is line 1; blank
lines and multi-line quoted fields counted as they appear in an editor) and the column.
"""

from __future__ import annotations

import codecs
import csv
import difflib
import io
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from cohort.errors import ManifestError, SeriesError

REQUIRED_COLUMNS = ("series_id", "path")
OPTIONAL_COLUMNS = ("age", "sex", "labels", "series_uid", "subject_id", "fat", "water", "fat_series_uid",
                    "water_series_uid")
IMAGE_COLUMNS = ("fat", "water")  # Dixon companion images: paths, resolved like `labels`
INPUT_COLUMNS = {"path": "series_uid", "labels": None, "fat": "fat_series_uid", "water": "water_series_uid"}
"""The columns naming a file or folder a row reads, each with the column naming the DICOM series under it."""
SERIES_UID_COLUMNS = {uid: column for column, uid in INPUT_COLUMNS.items() if uid}  # series UID column -> its path column
SERIES_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
SERIES_ID_MAX_LENGTH = 128
SHOWN_SERIES_ID_LENGTH = 60  # in messages; longer ids are cut
# Names a Zarr store (v2 or v3) keeps for its own metadata next to the arrays named by series_id.
RESERVED_SERIES_IDS = frozenset({"zarr.json", ".zgroup", ".zattrs", ".zarray", ".zmetadata"})
SEXES = {"m": "M", "male": "M", "f": "F", "female": "F"}
NEITHER_SEX = frozenset({"o", "other", "u", "unknown"})  # DICOM's O, and U: kept, with no sex
MISSING_VALUES = frozenset({"na", "n/a", "#n/a", "nan", "none", "null"})  # as R, Excel and pandas write "missing"
CLOSE_NAME_RATIO = 0.8  # difflib ratio at which a column name reads as a typo of a known one
MAX_AGE_YEARS = 130
DAYS_PER_YEAR = 365.25
DICOM_AGE = re.compile(r"^(\d{3})([DWMY])$", re.IGNORECASE)
YEARS_PER_DICOM_AGE_UNIT = {"D": 1 / DAYS_PER_YEAR, "W": 7 / DAYS_PER_YEAR, "M": 1 / 12, "Y": 1.0}
UNICODE_BOMS = (  # UTF-32 first: its little-endian BOM starts with UTF-16's
    (codecs.BOM_UTF32_LE, "UTF-32"), (codecs.BOM_UTF32_BE, "UTF-32"),
    (codecs.BOM_UTF16_LE, "UTF-16"), (codecs.BOM_UTF16_BE, "UTF-16"),
)


class Source(NamedTuple):
    """A file or folder a row reads: ``series_uid`` picks the DICOM series under a folder;
    ``masks``: a folder is read as one binary mask per structure (the ``labels`` column,
    ``cohort.ingest.masks``), not as DICOM."""

    path: Path
    series_uid: str | None = None
    masks: bool = False


@dataclass(frozen=True)
class SeriesSpec:
    """One manifest row: what to process, with the raw subject fields kept as text.

    ``line`` is the physical line of the row in the file (the header is line 1), used in every
    message and stored as ``manifest_line``. ``covariates`` holds every other column of the
    manifest as ``(column, value)`` pairs in header order, values as text ("" when empty).
    ``fat`` and ``water`` are Dixon images on the grid of ``path`` (with both, fat fractions are
    measured); ``fat_series_uid`` and ``water_series_uid`` pick their series where they are DICOM
    folders holding several, as ``series_uid`` does for ``path``.
    """

    series_id: str
    path: Path
    line: int
    manifest: Path
    age_text: str = ""
    sex_text: str = ""
    labels: Path | None = None
    series_uid: str | None = None
    subject_id: str | None = None
    covariates: tuple[tuple[str, str], ...] = ()
    fat: Path | None = None
    water: Path | None = None
    fat_series_uid: str | None = None
    water_series_uid: str | None = None

    @property
    def where(self) -> str:
        return f"{self.manifest.name} line {self.line} ({self.series_id})"

    @property
    def sources(self) -> tuple[Source, ...]:
        """What the row reads: image, label map, fat, water."""
        return tuple(Source(getattr(self, column), getattr(self, uid) if uid else None, column == "labels")
                     for column, uid in INPUT_COLUMNS.items() if getattr(self, column) is not None)

    @property
    def companions(self) -> tuple[Path, ...]:
        """The files read beside the image: label map and Dixon fat/water images, where given."""
        return tuple(path for path in (self.labels, self.fat, self.water) if path is not None)


@dataclass(frozen=True)
class Subject:
    """Validated subject fields of a series; ``None`` where the manifest leaves them empty."""

    age: float | None
    sex: str | None


@dataclass(frozen=True)
class Problem:
    """One problem of a manifest: the physical line, the row's series_id (when it has one), the
    column concerned (``None`` for the row as a whole) and a one-line reason."""

    line: int
    series_id: str | None
    column: str | None
    reason: str

    def describe(self, manifest_name: str) -> str:
        """``<manifest> line N (series_id): reason``, on one line whatever the series_id holds."""
        if not self.series_id:
            return f"{manifest_name} line {self.line}: {self.reason}"
        shown = self.series_id if self.series_id.isprintable() else repr(self.series_id)
        if len(shown) > SHOWN_SERIES_ID_LENGTH:
            shown = shown[:SHOWN_SERIES_ID_LENGTH - 3] + "..."
        return f"{manifest_name} line {self.line} ({shown}): {self.reason}"


@dataclass(frozen=True)
class ParsedManifest:
    """A manifest read as far as it can be: its rows as specs and the structural problems found.

    A row whose ``path`` cell is empty has no spec (its problem is listed). Specs of rows with a
    structural problem are kept, so that ``cohort check`` can look at their other columns too.
    """

    path: Path
    columns: tuple[str, ...]
    specs: tuple[SeriesSpec, ...]
    problems: tuple[Problem, ...]
    n_rows: int


@dataclass(frozen=True)
class _Row:
    line: int
    cells: tuple[str, ...]


def load_manifest(path: str | Path) -> list[SeriesSpec]:
    """Read ``path`` and return one :class:`SeriesSpec` per row, in file order.

    Raises :class:`ManifestError` on the first structural problem (and says how many more
    ``cohort check`` would list), so that a run never starts on an ambiguous manifest.
    """
    parsed = read_manifest(path)
    if parsed.problems:
        first, more = parsed.problems[0], len(parsed.problems) - 1
        hint = f" (and {more} more problem{'s' * (more > 1)}: `cohort check --manifest {path}` lists them all)"
        raise ManifestError(first.describe(parsed.path.name) + (hint if more else ""))
    return list(parsed.specs)


def read_manifest(path: str | Path) -> ParsedManifest:
    """Read ``path`` into specs plus every structural problem, raising :class:`ManifestError`
    only when the file cannot be read as a manifest at all."""
    manifest = Path(path).resolve()
    if not manifest.is_file():
        raise ManifestError(f"{path}: manifest not found")
    header, rows = _read_table(manifest)
    columns = {name: index for index, name in enumerate(header) if header.count(name) == 1 and name}
    problems = _header_problems(header)
    if not rows:  # a run would finish "0 done" and name tables it never wrote
        problems.append(Problem(1, None, None, "the manifest has a header but no rows"))
    specs: list[SeriesSpec] = []
    for row in rows:
        spec, row_problems = _row_to_spec(row, header, columns, manifest)
        problems.extend(row_problems)
        if spec is not None:
            specs.append(spec)
    problems.extend(_duplicate_problems(specs))
    problems.sort(key=lambda problem: problem.line)
    return ParsedManifest(path=manifest, columns=header, specs=tuple(specs), problems=tuple(problems),
                          n_rows=len(rows))


def _read_table(manifest: Path) -> tuple[tuple[str, ...], list[_Row]]:
    """Header (names stripped) and the non-blank rows, each with the physical line it starts on."""
    reader = csv.reader(io.StringIO(_decode(manifest), newline=""), strict=True)
    records: list[_Row] = []
    try:
        while True:
            start = reader.line_num + 1
            try:
                cells = next(reader)
            except StopIteration:
                break
            records.append(_Row(start, tuple(cells)))
    except csv.Error as error:
        raise ManifestError(f"{manifest.name} line {reader.line_num}: not valid CSV ({error}); "
                            "is a quote left open or misplaced?") from None
    if not records or not any(c.strip() for c in records[0].cells):
        raise ManifestError(f"{manifest.name} line 1: no header; the first line must name the columns "
                            f"({','.join(REQUIRED_COLUMNS + OPTIONAL_COLUMNS)})")
    header = tuple(c.strip() for c in records[0].cells)
    rows = [row for row in records[1:] if any(c.strip() for c in row.cells)]  # blank rows describe nothing
    return header, rows


def _decode(manifest: Path) -> str:
    """The manifest's text; refuses anything but UTF-8 (with or without BOM), naming what it found."""
    data = manifest.read_bytes()
    for bom, encoding in UNICODE_BOMS:
        if data.startswith(bom):
            raise ManifestError(f"{manifest.name} line 1: the file is {encoding}; save it as UTF-8")
    if b"\x00" in data:
        line = data.count(b"\n", 0, data.index(b"\x00")) + 1
        raise ManifestError(f"{manifest.name} line {line}: the file holds NUL bytes (UTF-16 without a "
                            "byte-order mark?); save it as UTF-8")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        byte = data[error.start]
        line = data.count(b"\n", 0, error.start) + 1
        try:
            guess = f"; cp1252? there it reads {bytes([byte]).decode('cp1252')!r}"
        except UnicodeDecodeError:
            guess = ""
        raise ManifestError(f"{manifest.name} line {line}: the file is not UTF-8 (byte 0x{byte:02x}{guess}); "
                            "save it as UTF-8") from None


def _header_problems(header: tuple[str, ...]) -> list[Problem]:
    separator = next((name for sep, name in ((";", "semicolons"), ("\t", "tabs")) if len(header) == 1
                      and sep in header[0]), None)
    if separator:
        return [Problem(1, None, None, f"the header is one column '{header[0][:80]}': the file separates its "
                                       f"values with {separator}; save it as CSV with commas")]
    problems = []
    for column in REQUIRED_COLUMNS:
        if column not in header:
            problems.append(Problem(1, None, column, f"required column '{column}' is missing "
                                                     f"(found: {', '.join(c for c in header if c) or 'no names'})"))
    problems.extend(_misspelt_column_problems(header))
    for name in dict.fromkeys(header):
        positions = [i + 1 for i, c in enumerate(header) if c == name]
        if not name:
            problems.extend(Problem(1, None, None, f"column {p} of the header has no name") for p in positions)
        elif len(positions) > 1:
            problems.append(Problem(1, None, name, f"column '{name}' appears {len(positions)} times in the header "
                                                   f"(columns {', '.join(map(str, positions))}); keep one"))
    return problems


def _misspelt_column_problems(header: tuple[str, ...]) -> list[Problem]:
    """A column that is no known column but reads like one (``lables``, ``Sex``, ``subject id``)
    would silently become a covariate while the column it was meant to be stays empty; name it."""
    known = REQUIRED_COLUMNS + OPTIONAL_COLUMNS
    problems = []
    for name in dict.fromkeys(header):
        if not name or name in known:
            continue
        folded = re.sub(r"[\s-]+", "_", name.strip().casefold())
        close = [column for column in known if column == folded] or \
            difflib.get_close_matches(folded, known, n=1, cutoff=CLOSE_NAME_RATIO)
        if close:
            problems.append(Problem(1, None, name, f"column '{name}' is not one of cohort's columns but reads like "
                                                   f"'{close[0]}': rename it to '{close[0]}' (or, if it is a "
                                                   "covariate of its own, to a name less like it)"))
    return problems


def _row_to_spec(row: _Row, header: tuple[str, ...], columns: dict[str, int],
                 manifest: Path) -> tuple[SeriesSpec | None, list[Problem]]:
    def cell(column: str) -> str:
        index = columns.get(column)
        return row.cells[index].strip() if index is not None and index < len(row.cells) else ""

    series_id = cell("series_id")
    problems = []
    if "series_id" in columns:
        reason = series_id_problem(series_id)
        if reason:
            problems.append(Problem(row.line, series_id or None, "series_id", reason))
    if any(value.strip() for value in row.cells[len(header):]):
        problems.append(Problem(row.line, series_id or None, None,
                                f"row has {len(row.cells)} values but the header names {len(header)} columns "
                                "(a value with an unquoted comma?)"))
    if "path" in columns and not cell("path"):
        problems.append(Problem(row.line, series_id or None, "path", "column 'path' is empty"))
    if not cell("path"):
        return None, problems
    extra = [name for name in columns if name not in REQUIRED_COLUMNS + OPTIONAL_COLUMNS]
    spec = SeriesSpec(
        series_id=series_id,
        path=_resolve(cell("path"), manifest),
        line=row.line,
        manifest=manifest,
        age_text=cell("age"),
        sex_text=cell("sex"),
        labels=_resolve(cell("labels"), manifest) if cell("labels") else None,
        series_uid=cell("series_uid") or None,
        subject_id=cell("subject_id") or None,
        covariates=tuple((name, cell(name)) for name in extra),
        **{column: _resolve(cell(column), manifest) for column in IMAGE_COLUMNS if cell(column)},
        **{f"{column}_series_uid": cell(f"{column}_series_uid") for column in IMAGE_COLUMNS
           if cell(f"{column}_series_uid")},
    )
    return spec, problems


def series_id_problem(series_id: str) -> str | None:
    """Why ``series_id`` cannot name a series (it names files and Zarr arrays), or ``None``."""
    if not series_id:
        return "column 'series_id' is empty"
    if len(series_id) > SERIES_ID_MAX_LENGTH:
        return (f"column 'series_id' is {len(series_id)} characters long; at most {SERIES_ID_MAX_LENGTH} are "
                "allowed (it names files and Zarr arrays)")
    if not SERIES_ID_PATTERN.match(series_id):
        return (f"column 'series_id' value {series_id!r} may hold only letters, digits, '.', '_' and '-', "
                "starting with a letter or digit (it names files and Zarr arrays)")
    if series_id.casefold() in RESERVED_SERIES_IDS:
        return f"column 'series_id' value {series_id!r} is a name Zarr keeps for its own metadata; choose another"
    return None


def _resolve(value: str, manifest: Path) -> Path:
    candidate = Path(value).expanduser()
    return candidate if candidate.is_absolute() else (manifest.parent / candidate)


def _duplicate_problems(specs: list[SeriesSpec]) -> list[Problem]:
    """Each repeat of a series_id; ids differing only in case too (one folder in labels.zarr on
    a case-insensitive file system)."""
    first: dict[str, SeriesSpec] = {}
    problems = []
    for spec in specs:
        if not spec.series_id:
            continue
        earlier = first.setdefault(spec.series_id.casefold(), spec)
        if earlier is spec:
            continue
        reason = (f"column 'series_id' value {spec.series_id!r} duplicates line {earlier.line}"
                  if earlier.series_id == spec.series_id else
                  f"column 'series_id' value {spec.series_id!r} differs only in case from {earlier.series_id!r} "
                  f"on line {earlier.line} (both would name one folder of labels.zarr on macOS and Windows)")
        problems.append(Problem(spec.line, spec.series_id, "series_id", reason))
    return problems


def parse_age(text: str) -> float | None:
    """Years from a number or a DICOM Age String (``065Y``, ``030M``, ``012W``, ``005D``).

    Raises ``ValueError`` with the reason; ``None`` for an empty cell.
    """
    if not text or text.strip().casefold() in MISSING_VALUES:
        return None
    dicom = DICOM_AGE.match(text)
    try:
        if not text.isascii() or "_" in text:  # float() reads "4_5" as 45 and other scripts' digits
            raise ValueError(text)
        age = int(dicom[1]) * YEARS_PER_DICOM_AGE_UNIT[dicom[2].upper()] if dicom else float(text)
    except ValueError:
        raise ValueError(f"age {text!r} is not a number of years nor a DICOM age like '065Y'") from None
    if not (math.isfinite(age) and 0 <= age <= MAX_AGE_YEARS):
        raise ValueError(f"age {text!r} is outside 0-{MAX_AGE_YEARS} years")
    return age


def parse_sex(text: str) -> str | None:
    """``M`` or ``F`` from ``M``/``F``/``male``/``female`` in any case; ``None`` for an empty cell,
    a missing value (``NA``...) and for neither (DICOM's ``O``, ``U``, ``other``, ``unknown``: the row
    is measured, and the study's per-sex strata leave it out)."""
    folded = text.strip().casefold()
    if not folded or folded in MISSING_VALUES or folded in NEITHER_SEX:
        return None
    try:
        return SEXES[folded]
    except KeyError:
        raise ValueError(f"sex {text!r} is not M or F (nor male, female, or O/U for neither)") from None


def subject_problems(spec: SeriesSpec) -> list[Problem]:
    """The row's age and sex problems (what :func:`validate_subject` would fail on), all of them."""
    problems = []
    for column, parse, text in (("age", parse_age, spec.age_text), ("sex", parse_sex, spec.sex_text)):
        try:
            parse(text)
        except ValueError as error:
            problems.append(Problem(spec.line, spec.series_id, column, str(error)))
    return problems


def dixon_problem(spec: SeriesSpec) -> str | None:
    """Why the row's Dixon columns cannot give a fat fraction, from the manifest alone, or None:
    one of ``fat`` and ``water`` without the other, or both naming one image (the same file, or the
    same series of one folder), which gave every structure a fat fraction of 0.5 without a word."""
    if spec.fat is None and spec.water is None:
        return None
    if spec.fat is None or spec.water is None:
        given, missing = ("fat", "water") if spec.fat is not None else ("water", "fat")
        return f"column '{given}' is given without '{missing}'; a fat fraction needs both"
    if spec.fat.resolve() == spec.water.resolve() and spec.fat_series_uid == spec.water_series_uid:
        return ("columns 'fat' and 'water' name the same image"
                f"{' (the same fat_series_uid and water_series_uid)' if spec.fat_series_uid else ''}; a fat "
                "fraction needs the acquisition's fat image and its water image")
    return None


def validate_subject(spec: SeriesSpec) -> Subject:
    """Parse age and sex of one row, raising :class:`SeriesError` naming the row."""
    problems = subject_problems(spec)
    if problems:
        raise SeriesError(f"{spec.where}: " + "; ".join(problem.reason for problem in problems))
    return Subject(age=parse_age(spec.age_text), sex=parse_sex(spec.sex_text))


def subject_or_empty(spec: SeriesSpec) -> Subject:
    """The subject fields where valid, else empty: what a failed row still records."""
    try:
        return validate_subject(spec)
    except SeriesError:
        return Subject(age=None, sex=None)


def example_manifest() -> Path:
    """Path of the manifest shipped with the package (TotalSegmentator's example CTs)."""
    return Path(__file__).parent / "examples" / "manifest.csv"
