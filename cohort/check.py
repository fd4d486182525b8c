"""``cohort check``: every problem of a manifest in one pass, without doing any work.

The structural problems and the age/sex rules come from :mod:`cohort.manifest` (the same code
``cohort run`` applies, so the two never disagree); this module adds cheap looks at the files a
row names: present, readable header, 3-D, and the header checks of ``cohort.ingest.nifti``
(an uncompressed file long enough for the voxels its header claims, the voxel limit) and, given
the model's modality, DICOM series tagged as the other one (``cohort.ingest.dicom``). Nothing
is segmented and nothing is written.

Messages never show an absolute input path: files are named as ``cohort.ingest`` names them
(:class:`~cohort.ingest.names.InputName`): relative to the manifest's folder when they lie
under it, else as ``<path of line N>`` (or ``<labels of line N>``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import pydicom

from cohort.config import IngestConfig, load_run_config
from cohort.errors import SeriesError
from cohort.ingest.dicom import check_declared_modality, series_geometry
from cohort.ingest.names import InputName
from cohort.ingest.nifti import READ_ERRORS, check_header, is_nifti
from cohort.manifest import IMAGE_COLUMNS, Problem, SeriesSpec, read_manifest, subject_problems


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


def check_manifest(path: str | Path, modality: str | None = None) -> ManifestReport:
    """Check the manifest at ``path`` and every file its rows name; with ``modality`` (the
    model's, ``CT`` or ``MR``), also the DICOM ``Modality`` tag of every series.

    Raises :class:`~cohort.errors.ManifestError` only when the file cannot be read as a
    manifest at all (not found, not UTF-8, broken CSV, no header).
    """
    parsed = read_manifest(path)
    limits = load_run_config().ingest  # the voxel limit `cohort run` applies by default
    problems = list(parsed.problems)
    for spec in parsed.specs:
        problems.extend(subject_problems(spec))
        problems.extend(_file_problems(spec, limits, modality))
    problems.sort(key=lambda problem: problem.line)
    return ManifestReport(manifest=parsed.path, n_rows=parsed.n_rows, problems=tuple(problems))


def _file_problems(spec: SeriesSpec, limits: IngestConfig, modality: str | None) -> list[Problem]:
    found = [("path", _image_problem(InputName.in_manifest(spec.path, spec.manifest, spec.line, "path"), limits,
                                     spec.series_uid, modality))]
    if spec.labels is not None:
        labels = InputName.in_manifest(spec.labels, spec.manifest, spec.line, "labels")
        found.append(("labels", _nifti_problem(labels, limits)))
    for column in IMAGE_COLUMNS:  # Dixon fat/water images
        image = getattr(spec, column)
        if image is not None:
            found.append((column, _image_problem(InputName.in_manifest(image, spec.manifest, spec.line, column),
                                                 limits, getattr(spec, f"{column}_series_uid"), None)))
    return [Problem(spec.line, spec.series_id, column, reason) for column, reason in found if reason]


def _image_problem(name: InputName, limits: IngestConfig, series_uid: str | None,
                   modality: str | None) -> str | None:
    """What ``cohort run`` reads (``cohort.ingest.load_ct``): a DICOM series folder (with a
    ``series_uid``: that series anywhere under it, its geometry checked from the headers), else NIfTI."""
    if name.path.is_dir() and series_uid:
        try:
            headers, _ = series_geometry(name, series_uid)
            if modality is not None:
                check_declared_modality(name, headers.values(), modality)
        except SeriesError as error:
            return str(error)
        return None
    if name.path.is_dir():
        return _dicom_folder_problem(name, modality)
    if name.path.exists() and not is_nifti(name.path):
        return f"{name}: neither a NIfTI file (.nii, .nii.gz) nor a DICOM series folder"
    return _nifti_problem(name, limits)


def _nifti_problem(name: InputName, limits: IngestConfig) -> str | None:
    """The header checks of ``cohort.ingest.nifti`` (length of an uncompressed file, voxel limit)
    and its 3-D rule, without reading a voxel."""
    if not name.path.is_file():
        return f"{name}: {'is a folder, not a NIfTI file' if name.path.is_dir() else 'file not found'}"
    try:
        image = nib.load(str(name.path))
        if not isinstance(image, nib.Nifti1Image):
            return f"{name}: is {type(image).__name__}, not NIfTI"
        check_header(name, image, limits)
    except SeriesError as error:
        return str(error)
    except READ_ERRORS as error:
        lines = str(error).strip().splitlines()
        return f"{name}: cannot read the NIfTI header ({name.scrub(lines[0] if lines else type(error).__name__)})"
    shape = tuple(image.shape)
    while len(shape) > 3 and shape[-1] == 1:  # as ingest squeezes trailing single dimensions
        shape = shape[:-1]
    if len(shape) != 3 or min(shape) < 2:
        return f"{name}: image has shape {tuple(image.shape)}; a 3-D volume is needed"
    return None


def _dicom_folder_problem(name: InputName, modality: str | None) -> str | None:
    """At least one file of the folder must be DICOM that pydicom reads (pixels not read), and
    not tagged as the other modality than ``modality``."""
    files = sorted(p for p in name.path.iterdir() if p.is_file())
    for file in files:
        try:
            header = pydicom.dcmread(file, stop_before_pixels=True)
        except Exception:  # any parse failure means "not readable DICOM"; the next file may be
            continue
        try:
            if modality is not None:
                check_declared_modality(name, [header], modality)
        except SeriesError as error:
            return str(error)
        return None
    if not files:
        return f"{name}: folder holds no files (no DICOM series)"
    return f"{name}: none of the folder's {len(files)} files is readable DICOM"
