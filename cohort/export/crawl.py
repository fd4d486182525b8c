"""Crawl a DICOM export: one header row per file, read in parallel, cached by (size, mtime).

Only headers are read (pydicom, ``stop_before_pixels``, the tags of :data:`TAGS`). Identifying
fields never leave a worker: the patient ID and StudyInstanceUID become keyed pseudonyms
(``cohort.export.pseudonyms``) and the birth date becomes an age. A file that is not DICOM,
is truncated, or has no SeriesInstanceUID and is no image (a DICOMDIR, a report) gets an
``error`` instead of header fields. An image without a SeriesInstanceUID (anonymisers blank
UIDs) gets ``series_uid`` "": ``cohort.export.series`` reads the images of one folder without a
UID as one series, as ``cohort run`` does.

The rows are kept in a cache table (Parquet, beside the index): a rerun stats every file and
reads again only those that are new or whose size or mtime changed, and those it could not open
(``cannot open (...)``: permissions or a network file system, fixed without touching the file);
the cache is dropped when the pseudonym key changed. The cache also tells ``cohort run`` which
series each file of a folder is of (``cohort.ingest.series_of_files``), so that a worker finding one
series in a folder of many reads only that series' headers: each file's status-change time is
kept beside its size and mtime for that, and the export's root in the table's metadata.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from datetime import date
from functools import partial
from pathlib import Path, PurePosixPath

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pydicom
import pydicom.config

from cohort.export.pseudonyms import PseudonymKey
from cohort.ingest.dicom import UNREADABLE, declares_rescale, truncated_pixel_data
from cohort.ingest.series_of_files import CRAWL_ROOT_METADATA, crawl_root_text
from cohort.manifest import parse_age

TAGS = ("SeriesInstanceUID", "StudyInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID", "PatientID",
        "IssuerOfPatientID", "PatientAge",
        "PatientBirthDate", "PatientSex", "StudyDate", "SeriesDate", "AcquisitionDate", "Modality", "ImageType",
        "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows", "Columns", "NumberOfFrames",
        "BitsAllocated", "SamplesPerPixel", "SliceThickness", "ConvolutionKernel", "ContrastBolusAgent", "KVP",
        "Manufacturer", "ManufacturerModelName", "SeriesDescription", "PatientName", "OtherPatientIDs",
        "AccessionNumber", "RescaleSlope", "RescaleIntercept")
FILE_COLUMNS = ("file", "size", "mtime_ns", "ctime_ns")
CHUNK_FILES = 256
PARALLEL_FROM_FILES = 1000  # fewer files are read in-process: starting workers would cost more
KEY_METADATA = b"cohort.pseudonym_key"
FORMAT_METADATA = b"cohort.crawl_format"
CACHE_ROW_GROUP_ROWS = 65_536
"""Rows sorted by file: a run reads one folder's rows in a group or two (9 ms for 500 files of a
2-million-file cache, against 34-46 ms with Parquet's default million-row groups)."""
RETRIED_ERROR = "cannot open ("  # not the file's content: read again on every crawl
FORMAT = b"7"  # 3: ages in completed years, descriptions without the name; 4: every name part; 5: birth date,
# other patient IDs and accession number too; 6: frame_key, subject_key with the IssuerOfPatientID, patient_key,
# rescale_declared; 7: study_declared (older: read again)


@dataclass(frozen=True)
class Crawl:
    """Header rows of every file under the root (``files``, one row per file) and what changed."""

    files: pd.DataFrame
    n_read: int
    n_new: int
    n_changed: int
    n_removed: int


def crawl(root: Path, cache: Path, key: PseudonymKey, workers: int = 1, exclude: frozenset[Path] = frozenset(),
          on_progress: Callable[[int, int], None] = lambda done, total: None) -> Crawl:
    """Header rows of every file under ``root`` (``exclude`` skipped), reusing ``cache`` where the
    file is unchanged, and writing the new cache."""
    listed = list_files(root, exclude)
    previous = _read_cache(cache, key)
    known = previous.set_index("file") if len(previous) else None
    if known is not None:
        stamps = known[["size", "mtime_ns"]]  # a status change alone (chmod, a new link) is no new content
        joined = listed.join(stamps, on="file", rsuffix="_cached")
        unchanged = ((joined["size"] == joined["size_cached"]) & (joined["mtime_ns"] == joined["mtime_ns_cached"])
                     & ~joined["file"].isin(_retried(previous)))
        n_new = int(joined["size_cached"].isna().sum())
        reused = previous[previous["file"].isin(set(listed["file"][unchanged.to_numpy()]))]
        todo = listed[~unchanged.to_numpy()]
        n_removed = int((~previous["file"].isin(set(listed["file"]))).sum())
    else:
        reused, todo, n_new, n_removed = previous.iloc[0:0], listed, len(listed), 0
    on_progress(0, len(todo))
    fresh = pd.DataFrame(_read_all(root, todo, key, workers, on_progress), columns=list(HEADER_COLUMNS))
    fresh = fresh.merge(todo, on="file") if len(fresh) else _empty()
    files = pd.concat([frame for frame in (reused, fresh) if len(frame)] or [_empty()], ignore_index=True)
    files["ctime_ns"] = files["file"].map(listed.set_index("file")["ctime_ns"]).astype("int64")  # as listed now
    files = files.sort_values("file", ignore_index=True)
    _write_cache(files, cache, key, root)
    return Crawl(files=files, n_read=len(todo), n_new=n_new, n_changed=len(todo) - n_new, n_removed=n_removed)


def _retried(previous: pd.DataFrame) -> set[str]:
    """The cached files whose error was opening them, not their content: a chmod or a remount
    fixes that without changing their size or mtime."""
    errors = previous["error"].fillna("").astype(str)
    return set(previous["file"][errors.str.startswith(RETRIED_ERROR)])


def list_files(root: Path, exclude: frozenset[Path] = frozenset()) -> pd.DataFrame:
    """``file`` (relative, POSIX), ``size``, ``mtime_ns`` and ``ctime_ns`` of every regular file under ``root``."""
    skipped = {os.path.abspath(path) for path in exclude}
    rows = []
    stack = [os.path.abspath(root)]
    while stack:
        folder = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError:  # listed as a row of its own: reading it fails with the reason
            rows.append((Path(os.path.relpath(folder, root)).as_posix(), -1, -1, -1))
            continue
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                stack.append(entry.path)
            elif entry.is_symlink() and entry.is_dir():  # not followed (nor by `cohort run`): a row, with why
                rows.append((Path(os.path.relpath(entry.path, root)).as_posix(), -1, -1, -1))
            elif entry.is_file() and entry.path not in skipped:
                stat = entry.stat()
                rows.append((Path(os.path.relpath(entry.path, root)).as_posix(), stat.st_size, stat.st_mtime_ns,
                             stat.st_ctime_ns))
    return pd.DataFrame(rows, columns=list(FILE_COLUMNS))


HEADER_COLUMNS = ("file", "error", "series_uid", "sop_uid", "study_key", "frame_key", "subject_key", "patient_key",
                  "age", "sex", "modality", "image_type", "position", "orientation", "pixel_spacing", "rows", "columns", "frames",
                  "slice_thickness_mm", "kernel", "contrast_agent", "kvp", "manufacturer", "model",
                  "series_description", "rescale_declared", "study_declared")


def read_header(path: str, key: PseudonymKey, folder: str) -> dict:
    """One file's header row (``error`` set, and nothing else, when it is not a usable DICOM file);
    ``folder`` (relative to the export root) stands in for missing UIDs (:func:`study_identity`)."""
    if os.path.isdir(path):
        what = "a link to a folder, not followed: crawl its target" if os.path.islink(path) else "a folder"
        return {"error": f"unreadable ({what})"}
    try:
        with open(path, "rb") as handle:
            header = pydicom.dcmread(handle, stop_before_pixels=True, specific_tags=list(TAGS))
            problem = truncated_pixel_data(header, handle)
    except pydicom.errors.InvalidDicomError:
        return {"error": "not DICOM (no DICM prefix)"}
    except OSError as exc:  # not the file's content: permissions, a network file system
        return {"error": f"{RETRIED_ERROR}{type(exc).__name__})"}
    except UNREADABLE as exc:
        return {"error": f"unreadable ({type(exc).__name__})"}
    if problem:
        return {"error": problem}
    series_uid = _text(header, "SeriesInstanceUID")
    if not series_uid and header.get("Rows") is None:
        return {"error": "no SeriesInstanceUID (not an image)"}
    study = study_identity(header, folder)
    try:
        return {
            "series_uid": series_uid, "sop_uid": str(header.get("SOPInstanceUID") or ""),
            "study_key": key.pseudonym("stu", study), "frame_key": _frame_key(header, key),
            "subject_key": key.pseudonym("sub", subject_identity(header, study)),
            "patient_key": key.pseudonym("pid", _text(header, "PatientID")) if _text(header, "PatientID") else "",
            "age": age_years(header), "sex": _sex(header), "modality": _text(header, "Modality"),
            "image_type": "\\".join(_values(header, "ImageType")).upper(),
            "position": _numbers(header, "ImagePositionPatient"), "orientation": _numbers(header, "ImageOrientationPatient"),
            "pixel_spacing": _numbers(header, "PixelSpacing"), "rows": _integer(header, "Rows"),
            "columns": _integer(header, "Columns"), "frames": _integer(header, "NumberOfFrames") or 1,
            "slice_thickness_mm": _number(header, "SliceThickness"),
            "kernel": "\\".join(_values(header, "ConvolutionKernel")), "contrast_agent": _text(header, "ContrastBolusAgent"),
            "kvp": _number(header, "KVP"), "manufacturer": _text(header, "Manufacturer"),
            "model": _text(header, "ManufacturerModelName"), "series_description": _free_text(header, "SeriesDescription"),
            "rescale_declared": declares_rescale(header),
            # whether study_key is of a StudyInstanceUID, not a stand-in: ingest judges a series' studies by those
            "study_declared": bool(_text(header, "StudyInstanceUID")),
        }
    except (TypeError, ValueError) as exc:
        return {"error": f"malformed header value ({type(exc).__name__})"}


def _frame_key(header: pydicom.Dataset, key: PseudonymKey) -> str:
    """The pseudonym of the FrameOfReferenceUID ("" without one): the slices of one scan share it."""
    frame = _text(header, "FrameOfReferenceUID")
    return key.pseudonym("for", frame) if frame else ""


def subject_identity(header: pydicom.Dataset, study: str) -> str:
    """What ``subject_key`` is made of: the PatientID within the namespace of its IssuerOfPatientID,
    when the header names one (two hospitals' patient 12345 are two subjects); else the PatientID
    alone (so exports without an issuer keep their subject pseudonyms); without a PatientID, the
    study (``study``: :func:`study_identity`) stands for its own subject.

    >>> ids = {"00100020": {"vr": "LO", "Value": ["12345"]}}
    >>> subject_identity(pydicom.Dataset.from_json(ids), "1.2.3")
    '12345'
    >>> a, b = ({**ids, "00100021": {"vr": "LO", "Value": [site]}} for site in ("SITE-A", "SITE-B"))
    >>> subject_identity(pydicom.Dataset.from_json(a), "1.2.3") != subject_identity(pydicom.Dataset.from_json(b), "1.2.3")
    True
    """
    patient = _text(header, "PatientID")
    if not patient:
        return "study:" + study
    issuer = _text(header, "IssuerOfPatientID")
    return f"{patient}\x00issuer:{issuer}" if issuer else patient  # no PatientID holds a NUL: no collision


def study_identity(header: pydicom.Dataset, folder: str) -> str:
    """What ``study_key`` is made of: the StudyInstanceUID; else the SeriesInstanceUID (the series
    is its own study); for an image with neither, its FrameOfReferenceUID (the series of one scan
    share it, so they are ranked against each other), else its folder: a blank UID never makes the
    files of several folders one study (nor, without a PatientID, one subject).

    >>> blank = pydicom.Dataset.from_json({"0020000D": {"vr": "UI"}, "0020000E": {"vr": "UI"}})
    >>> study_identity(blank, "A/ct"), study_identity(blank, "B/ct") != study_identity(blank, "A/ct")
    ('folder:A/ct', True)
    """
    series_uid = _text(header, "SeriesInstanceUID")
    frame = _text(header, "FrameOfReferenceUID")
    return _text(header, "StudyInstanceUID") or series_uid or (f"frame:{frame}" if frame else f"folder:{folder}")


def age_years(header: pydicom.Dataset) -> float | None:
    """PatientAge (``064Y``, ``018M``...), else birth date to study (or series, acquisition) date
    in completed years (completed months below one year), as PatientAge would say it: an age in
    days would give the birth date back to anyone who knows the scan's date.

    >>> age_years(pydicom.Dataset.from_json({"00101010": {"vr": "AS", "Value": ["018M"]}}))
    1.5
    >>> age_years(pydicom.Dataset.from_json({"00100030": {"vr": "DA", "Value": ["19580312"]},
    ...                                      "00080020": {"vr": "DA", "Value": ["20221208"]}}))
    64.0
    """
    try:
        age = parse_age(_text(header, "PatientAge"))
    except ValueError:
        age = None
    if age is not None:
        return round(age, 2)
    birth = _date(_text(header, "PatientBirthDate"))
    scanned = next((d for d in map(_date, (_text(header, t) for t in ("StudyDate", "SeriesDate", "AcquisitionDate")))
                    if d), None)
    if birth is None or scanned is None or scanned < birth:
        return None
    months = (scanned.year - birth.year) * 12 + scanned.month - birth.month - (scanned.day < birth.day)
    return float(months // 12) if months >= 12 else round(months / 12, 2)


def _date(text: str) -> date | None:
    try:
        return date(int(text[:4]), int(text[4:6]), int(text[6:8])) if len(text) >= 8 else None
    except ValueError:
        return None


def _sex(header: pydicom.Dataset) -> str:
    sex = _text(header, "PatientSex").upper()
    return sex if sex in ("M", "F") else ""


def _free_text(header: pydicom.Dataset, tag: str) -> str:
    """A free-text field with the patient's name parts, IDs (PatientID, OtherPatientIDs), the
    accession number and the birth date (as operators write dates) starred out: operators type
    them into series descriptions.

    >>> header = pydicom.Dataset.from_json({"00100010": {"vr": "PN", "Value": [{"Alphabetic": "Doe^Jane"}]},
    ...                                     "0008103E": {"vr": "LO", "Value": ["CT Body 3.0 DOE_JANE Doedel"]}})
    >>> _free_text(header, "SeriesDescription")
    'CT Body 3.0 *_* Doedel'
    >>> header.PatientBirthDate, header.AccessionNumber = "19580312", "A-77"
    >>> header.SeriesDescription = "CT 12.03.1958 1958-03-12 12/3/58 A-77 3.0"
    >>> _free_text(header, "SeriesDescription")
    'CT * * * * 3.0'
    """
    text = _text(header, tag)
    # name parts: components (^), groups (=: alphabetic, ideographic, phonetic), hyphenated and other words
    names = {part for part in re.split(r"[\W_]+", _text(header, "PatientName")) if len(part) >= 2}
    identifiers = {_text(header, "PatientID"), _text(header, "AccessionNumber"), *_values(header, "OtherPatientIDs")}
    for identifier in sorted(names | identifiers - {""}, key=len, reverse=True):
        text = re.sub(rf"(?<![^\W_]){re.escape(identifier)}(?![^\W_])", "*", text, flags=re.IGNORECASE)
    birth = _date(_text(header, "PatientBirthDate"))
    if birth is not None:
        text = re.sub(rf"(?<![^\W_])(?:{_date_pattern(birth)})(?![^\W_])", "*", text)
    return text


def _date_pattern(day: date) -> str:
    """``day`` as people write it: year first (``19580312``, ``1958-03-12``), day first (``12.03.1958``,
    ``12/3/58``) or month first (``03/12/1958``), with ``-``, ``.``, ``/`` or a space, leading zeros optional."""
    y, yy, m, d = f"{day.year:04d}", f"{day.year % 100:02d}", f"0?{day.month}", f"0?{day.day}"
    year, sep = f"(?:{y}|{yy})", r"[-./ ]"
    return "|".join((f"{y}{day.month:02d}{day.day:02d}", f"{y}{sep}{m}{sep}{d}", f"{d}{sep}{m}{sep}{year}",
                     f"{m}{sep}{d}{sep}{year}"))


def _text(header: pydicom.Dataset, tag: str) -> str:
    value = header.get(tag)
    return "" if value is None else str(value).strip()


def _values(header: pydicom.Dataset, tag: str) -> list[str]:
    value = header.get(tag)
    if value is None or value == "":
        return []
    return [str(v).strip() for v in (value if isinstance(value, pydicom.multival.MultiValue) else [value])]


def _numbers(header: pydicom.Dataset, tag: str) -> list[float] | None:
    values = _values(header, tag)
    return [float(v) for v in values] if values else None


def _number(header: pydicom.Dataset, tag: str) -> float | None:
    values = _values(header, tag)
    return float(values[0]) if values and values[0] else None


def _integer(header: pydicom.Dataset, tag: str) -> int | None:
    value = header.get(tag)
    return None if value in (None, "") else int(value)


def _read_chunk(root: str, files: list[str], key: PseudonymKey) -> list[dict]:
    """Header rows of ``files``; pydicom's value validation is off meanwhile (a third of the time,
    and a malformed value is caught per file anyway)."""
    validation = pydicom.config.settings.reading_validation_mode
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    try:
        return [{"file": file, **read_header(os.path.join(root, file), key, PurePosixPath(file).parent.as_posix())}
                for file in files]
    finally:
        pydicom.config.settings.reading_validation_mode = validation


def _read_all(root: Path, todo: pd.DataFrame, key: PseudonymKey, workers: int,
              on_progress: Callable[[int, int], None]) -> list[dict]:
    files = list(todo["file"])
    chunks = [files[i:i + CHUNK_FILES] for i in range(0, len(files), CHUNK_FILES)]
    rows: list[dict] = []
    read = partial(_read_chunk, str(root), key=key)
    if workers <= 1 or len(files) < PARALLEL_FROM_FILES:
        for chunk in chunks:
            rows.extend(read(chunk))
            on_progress(len(rows), len(files))
        return rows
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for future in as_completed([pool.submit(read, chunk) for chunk in chunks]):
            rows.extend(future.result())
            on_progress(len(rows), len(files))
    return rows


def _empty() -> pd.DataFrame:
    return pd.DataFrame(columns=list(HEADER_COLUMNS + FILE_COLUMNS[1:]))


def _read_cache(cache: Path, key: PseudonymKey) -> pd.DataFrame:
    """The cached rows, or none when there is no cache, it is unreadable, made with another key or
    by an older crawl (whose rows would miss what this one reads)."""
    try:
        table = pq.read_table(cache)
    except (OSError, pa.ArrowException):
        return _empty()
    metadata = table.schema.metadata or {}
    if metadata.get(KEY_METADATA) != key.fingerprint.encode() or metadata.get(FORMAT_METADATA) != FORMAT:
        return _empty()
    return table.to_pandas()


def _write_cache(files: pd.DataFrame, cache: Path, key: PseudonymKey, root: Path) -> None:
    table = pa.Table.from_pandas(files, preserve_index=False)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), KEY_METADATA: key.fingerprint.encode(),
                                           FORMAT_METADATA: FORMAT,
                                           CRAWL_ROOT_METADATA: crawl_root_text(root, cache).encode()})
    partial_file = cache.with_name(cache.name + ".partial")
    pq.write_table(table, partial_file, row_group_size=CACHE_ROW_GROUP_ROWS)
    os.replace(partial_file, cache)
