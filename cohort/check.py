"""``cohort check``: every problem of a manifest in one pass, without doing any work.

The structural problems and the age/sex rules come from :mod:`cohort.manifest` (the same code
``cohort run`` applies, so the two never disagree); this module adds looks at the files a row
names, from their headers, through the functions the run itself calls: NIfTI files present,
readable, 3-D, within the header checks of ``cohort.ingest.nifti`` (an uncompressed file long
enough for the voxels its header claims, the voxel limit) and gzipped ones not cut short; DICOM
folders found as the run finds its series (``cohort.ingest.dicom.series_geometry``: one series
per folder unless ``series_uid`` names one, slices forming one volume) and, given the model's
modality, not tagged as the other one; ``labels`` folders holding one mask file per structure of
the class map (``cohort.ingest.masks``: names, each once, none missing); label maps, their masks
and Dixon images on the image's grid (``cohort.ingest.checks.grid_transform``) and Dixon images
of the image's study and scan
(``cohort.ingest.checks.check_same_scan``). Nothing is segmented and nothing is written.

Messages never show an absolute input path: files are named as ``cohort.ingest`` names them
(:class:`~cohort.ingest.names.InputName`): relative to the manifest's folder when they lie
under it, else as ``<path of line N>`` (or ``<labels of line N>``).
"""

from __future__ import annotations

import gzip
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import nibabel as nib
import pydicom

from cohort.config import ClassMap, IngestConfig, RunConfig, load_run_config
from cohort.errors import SeriesError
from cohort.ingest.checks import check_dixon_scaling, check_same_scan, grid_transform
from cohort.ingest.label_table import check_label_table, label_table
from cohort.ingest.dicom import (check_declared_modality, series_geometry, series_origin, series_precise_scales,
                                 truncated_pixel_data)
from cohort.ingest.limits import check_voxel_count
from cohort.ingest.masks import masks_by_label
from cohort.ingest.names import InputName
from cohort.ingest.nifti import READ_ERRORS, igzip, is_nifti, open_nifti, unreadable_nifti
from cohort.ingest.volume import Grid, ScanOrigin
from cohort.manifest import IMAGE_COLUMNS, Problem, SeriesSpec, dixon_problem, read_manifest, subject_problems
from cohort.pipeline import learn_crawled_series

FILE_COLUMNS = ("path", "labels", *IMAGE_COLUMNS)  # the image first: the others are judged on its grid
GZIP_ISIZE_BYTES = 4  # a gzip member's last field: its inflated size mod 2**32
INFLATE_CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class ManifestReport:
    """What ``cohort check`` found: the manifest, how many rows it has, and every problem by line."""

    manifest: Path
    n_rows: int
    problems: tuple[Problem, ...]

    @property
    def clean(self) -> bool:
        return not self.problems

    def lines(self) -> list[str]:
        """One line per problem: ``<manifest> line N (series_id): reason``."""
        return [problem.describe(self.manifest.name) for problem in self.problems]

    def summary(self) -> str:
        if self.clean:
            return f"{self.manifest.name}: {self.n_rows} rows, no problems found"
        n_lines = len({problem.line for problem in self.problems})
        return (f"{self.manifest.name}: {self.n_rows} rows, {len(self.problems)} problems "
                f"on {n_lines} line{'s' * (n_lines != 1)}")


def check_manifest(path: str | Path, modality: str | None = None, class_map: ClassMap | None = None,
                   config: RunConfig | None = None) -> ManifestReport:
    """Check the manifest at ``path`` and every file its rows name; with ``modality`` (the
    model's, ``CT`` or ``MR``), also the DICOM ``Modality`` tag of every series. ``labels``
    folders are judged against ``class_map`` (default: the one a run of the default model uses
    with ``config``), files against ``config``'s voxel limit (default: configs/default.yaml's).

    Raises :class:`~cohort.errors.ManifestError` only when the file cannot be read as a
    manifest at all (not found, not UTF-8, broken CSV, no header).
    """
    from cohort.pipeline import MeasureSettings

    parsed = read_manifest(path)
    config = config or load_run_config()  # the voxel limit and class map `cohort run` applies
    rules = FileRules(config.ingest, modality, class_map or MeasureSettings.from_config(config).class_map)
    problems = list(parsed.problems)
    for spec in parsed.specs:
        problems.extend(subject_problems(spec))
        problems.extend(_file_problems(spec, rules))
    problems.sort(key=lambda problem: problem.line)
    return ManifestReport(manifest=parsed.path, n_rows=parsed.n_rows, problems=tuple(problems))


@dataclass(frozen=True)
class FileRules:
    """What the files of a row are judged by: the voxel limit, the model's modality (None: not
    judged) and the class map a ``labels`` folder's masks are named by."""

    limits: IngestConfig
    modality: str | None
    class_map: ClassMap


def _file_problems(spec: SeriesSpec, rules: FileRules) -> list[Problem]:
    """The problems of the files a row names: each read as far as its headers, as ``cohort run``
    reads it, and the label map and Dixon images on the image's grid (``cohort.ingest.checks``)."""
    names = {column: InputName.in_manifest(getattr(spec, column), spec.line, column)
             for column in FILE_COLUMNS if getattr(spec, column) is not None}
    learn_crawled_series(spec)
    image: Grid | None = None
    image_origin: ScanOrigin | None = None
    dixon_scales: dict[str, tuple[str, frozenset[float]]] = {}
    found: list[Problem] = []
    for column, name in names.items():
        try:
            if column == "labels" and name.path.is_dir():
                _check_mask_folder(name, rules, image, names["path"].shown)
                continue
            header = _header_grid(spec, column, name, rules)
            grid, origin = header.grid, header.origin
            if column == "path":
                image, image_origin = grid, origin
            elif image is not None:
                if column != "labels":
                    check_same_scan(names["path"].shown, image_origin, name.shown, origin, column)
                grid_transform(image, names["path"].shown, grid.shape, grid.affine, name.shown,
                               "label map" if column == "labels" else f"{column} image")
            if column in ("fat", "water"):
                dixon_scales[column] = (name.shown, header.precise_scales)
        except SeriesError as error:
            found.append(Problem(spec.line, spec.series_id, column, str(error)))
    if len(dixon_scales) == 2:
        try:
            check_dixon_scaling(dixon_scales["fat"], dixon_scales["water"])
        except SeriesError as error:
            found.append(Problem(spec.line, spec.series_id, "fat", str(error)))
    dixon = dixon_problem(spec)
    if dixon:
        found.append(Problem(spec.line, spec.series_id, "fat" if spec.fat is not None else "water", dixon))
    return found


class FileHeader(NamedTuple):
    """What a file's headers tell: its grid and, for a DICOM series, its study and scan and its
    Philips display-to-precise factors (``cohort.ingest.dicom.philips_precise_scale``)."""

    grid: Grid
    origin: ScanOrigin | None = None
    precise_scales: frozenset[float] = frozenset()


def _header_grid(spec: SeriesSpec, column: str, name: InputName, rules: FileRules) -> FileHeader:
    """The headers of the file in ``column``, read as the run reads it: the label map as NIfTI (its
    own label table checked against the class map), the image (judged against the model's modality)
    and Dixon images as ``cohort.ingest.load_ct`` does."""
    limits, modality = rules.limits, rules.modality
    if column == "labels":
        return FileHeader(_nifti_grid(name, limits, rules.class_map))
    if column == "path":
        return _image_grid(name, limits, spec.series_uid, modality)
    return _image_grid(name, limits, getattr(spec, f"{column}_series_uid"), None)


def _check_mask_folder(name: InputName, rules: FileRules, image: Grid | None, image_name: str) -> None:
    """The header-only checks of a ``labels`` folder (``cohort.ingest.masks``): the mask files
    named after the class map's structures, each once, none missing, and each mask's header
    readable and on the image's grid (when the image's is known); the first problem, with how
    many more masks have one. Binary values and overlaps need the voxels: left to the run."""
    failures = []
    for file in masks_by_label(name, rules.class_map).values():
        mask = name.child(str(file), file.name)
        try:
            grid = _nifti_grid(mask, rules.limits)
            if image is not None:
                grid_transform(image, image_name, grid.shape, grid.affine, mask.shown, "mask")
        except SeriesError as error:
            failures.append(str(error))
    if failures:
        more = len(failures) - 1
        raise SeriesError(failures[0] + (f" (and {more} more mask{'s' * (more > 1)} with a problem)" if more else ""))


def _image_grid(name: InputName, limits: IngestConfig, series_uid: str | None,
                modality: str | None) -> FileHeader:
    """What ``cohort run`` reads (``cohort.ingest.load_ct``): a DICOM series folder, else NIfTI."""
    if name.path.is_dir():
        return _dicom_grid(name, limits, series_uid, modality)
    if name.path.exists() and not is_nifti(name.path):
        raise SeriesError(f"{name}: neither a NIfTI file (.nii, .nii.gz) nor a DICOM series folder")
    return FileHeader(_nifti_grid(name, limits))


def _nifti_grid(name: InputName, limits: IngestConfig, class_map: ClassMap | None = None) -> Grid:
    """The header checks of ``cohort.ingest.nifti`` (:func:`open_nifti`, the same reasons in the same
    words; a label map's own label table against ``class_map``), its 3-D rule and the length of a
    gzip stream (:func:`_check_gzip_length`), without reading a voxel."""
    image = open_nifti(name, limits)
    if class_map is not None:
        check_label_table(name, label_table(image), class_map)
    if name.path.name.lower().endswith(".gz"):
        try:
            _check_gzip_length(name, image)
        except READ_ERRORS as error:
            raise unreadable_nifti(name, error) from None
    shape = tuple(int(n) for n in image.shape)
    while len(shape) > 3 and shape[-1] == 1:  # as ingest squeezes trailing single dimensions
        shape = shape[:-1]
    if len(shape) != 3 or min(shape) < 2:
        raise SeriesError(f"{name}: image has shape {tuple(image.shape)}; a 3-D volume is needed")
    return Grid(shape, image.affine)


def _check_gzip_length(name: InputName, image: nib.Nifti1Image) -> None:
    """Raise when a gzipped NIfTI's stream breaks off before the voxels its header describes (a cut
    download or copy: nibabel reads the header of such a file, and the run fails on its voxels).

    A gzip file ends with ISIZE, its last member's inflated size mod 2**32. A file as nibabel or
    ISA-L write it is one member holding exactly the header's bytes, so a match settles it from the
    header and 4 bytes. A mismatch proves nothing by itself: a cut file ends in compressed data (any
    number, often larger than needed), a multi-member file (bgzip, concatenated members) ends with
    its last member's size, bytes may follow the voxels. Only then is the stream inflated, counted
    and dropped, up to the bytes needed: no valid file is flagged, and a cut one is missed only when
    its last 4 bytes happen to equal the size needed (a chance of 1 in 2**32).
    """
    dtype = image.header.get_data_dtype()
    needed = int(image.dataobj.offset) + math.prod(int(n) for n in image.shape) * dtype.itemsize
    with name.path.open("rb") as file:
        file.seek(-GZIP_ISIZE_BYTES, os.SEEK_END)
        isize = int.from_bytes(file.read(GZIP_ISIZE_BYTES), "little")
    if isize != needed % 2 ** 32 and not _inflates_to(name.path, needed):
        raise SeriesError(
            f"{name}: truncated or damaged (its gzip stream breaks off before the {needed:,} bytes its header "
            f"needs: shape {'x'.join(str(int(n)) for n in image.shape)} of {dtype})"
        )


def _inflates_to(path: Path, needed: int) -> bool:
    """Whether the gzip file at ``path`` inflates to at least ``needed`` bytes, every member read as
    the run reads it (ISA-L where installed), in chunks that are counted and dropped."""
    count = 0
    try:
        with (igzip or gzip).open(path, "rb") as stream:
            while count < needed and (chunk := stream.read(min(INFLATE_CHUNK_BYTES, needed - count))):
                count += len(chunk)
    except READ_ERRORS:  # a cut or corrupt stream
        return False
    return count >= needed


def _dicom_grid(name: InputName, limits: IngestConfig, series_uid: str | None,
                modality: str | None) -> FileHeader:
    """The series' grid by the run's own discovery (``cohort.ingest.dicom.series_geometry``: the
    folder's single series, or series ``series_uid`` under it; its slices checked), from headers
    only, within the voxel limit and, given ``modality``, not tagged as the other one."""
    if series_uid is None:
        _check_has_dicom(name)
    headers, geometry = series_geometry(name, series_uid)
    if modality is not None:
        check_declared_modality(name, headers.values(), modality)
    check_voxel_count(name, geometry.shape, limits)
    _check_whole_slices(name, geometry.files, headers)
    return FileHeader(Grid(tuple(int(n) for n in geometry.shape), geometry.affine), series_origin(headers.values()),
                      series_precise_scales(headers.values()))


def _check_whole_slices(name: InputName, files: Sequence[str], headers: dict[str, pydicom.Dataset]) -> None:
    """Raise for the first file of the series whose pixel data is cut short (a copy interrupted:
    its header is whole), by its place in the series, as the run would fail on it."""
    for index, file in enumerate(files, 1):
        with open(file, "rb") as handle:
            problem = truncated_pixel_data(headers[file], handle)
        if problem:
            raise SeriesError(f"{name.child(file, f'slice {index} of {len(files)}')}: {problem}")


def _check_has_dicom(name: InputName) -> None:
    """Raise unless a file of the folder is DICOM that pydicom reads (pixels not read): a plainer
    reason for an empty or foreign folder than "no DICOM series found"."""
    files = sorted(p for p in name.path.iterdir() if p.is_file())
    for file in files:
        try:
            pydicom.dcmread(file, stop_before_pixels=True)
        except Exception:  # any parse failure means "not readable DICOM"; the next file may be
            continue
        return
    if not files:
        raise SeriesError(f"{name}: folder holds no files (no DICOM series)")
    raise SeriesError(f"{name}: none of the folder's {len(files)} files is readable DICOM")
