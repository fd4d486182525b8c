"""Build PACS-like DICOM exports from the example CT's 20 slices (real files, written with pydicom).

The example's pixel data (JPEG 2000) is copied as is; only headers change: UIDs, patient fields,
image type, kernel, positions, rescale, as a real export would have them.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import generate_uid

Edit = Callable[[pydicom.Dataset, int], None]


@dataclass(frozen=True)
class Patient:
    name: str
    patient_id: str
    birth_date: str
    sex: str = "F"
    age: str = ""  # PatientAge; empty: derived from the birth date


@dataclass
class Study:
    patient: Patient
    date: str = "20221208"
    uid: str = field(default_factory=generate_uid)
    accession: str = "ACC-77321"


def example_slices(examples: Path) -> list[pydicom.Dataset]:
    """The example series' slices, sorted from bottom to top (z ascending)."""
    slices = [pydicom.dcmread(path) for path in (examples / "example_ct_dicom").iterdir()]
    return sorted(slices, key=lambda ds: float(ds.ImagePositionPatient[2]))


def write_series(folders: Path | list[Path], slices: list[pydicom.Dataset], study: Study, *,
                 modality: str = "CT", image_type: str = "ORIGINAL\\PRIMARY\\AXIAL", kernel: str = "Br38f",
                 thickness: float = 3.0, description: str = "CT Body", edit: Edit | None = None,
                 uid: str | None = None) -> str:
    """Write ``slices`` as one new series (over ``folders`` in turn when several); its UID."""
    uid = uid or generate_uid()
    folders = folders if isinstance(folders, list) else [folders]
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
    per_folder = -(-len(slices) // len(folders))
    for k, source in enumerate(slices):
        ds = copy.deepcopy(source)
        ds.PatientName, ds.PatientID, ds.PatientBirthDate = study.patient.name, study.patient.patient_id, study.patient.birth_date
        ds.PatientSex, ds.PatientAge = study.patient.sex, study.patient.age
        ds.AccessionNumber, ds.InstitutionName = study.accession, "St Elsewhere Hospital"
        ds.StudyInstanceUID, ds.StudyDate, ds.SeriesInstanceUID = study.uid, study.date, uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
        ds.Modality, ds.ImageType, ds.ConvolutionKernel = modality, image_type.split("\\"), kernel
        ds.SliceThickness, ds.SeriesDescription, ds.InstanceNumber = thickness, description, k + 1
        if edit:
            edit(ds, k)
        ds.save_as(folders[k // per_folder] / f"IM{uid[-6:]}_{k:04d}.dcm")
    return uid


def tilt(degrees: float) -> Edit:
    """Gantry tilt: slices rotated about the x axis while the table still moves along z."""
    angle = np.radians(degrees)

    def edit(ds: pydicom.Dataset, k: int) -> None:
        ds.ImageOrientationPatient = [1, 0, 0, 0, float(np.cos(angle)), float(-np.sin(angle))]
        ds.GantryDetectorTilt = degrees

    return edit


def rotate_in_plane(degrees: float) -> Edit:
    """An oblique but orthonormal orientation: rows and columns turned about the body axis."""
    angle = np.radians(degrees)

    def edit(ds: pydicom.Dataset, k: int) -> None:
        ds.ImageOrientationPatient = [float(np.cos(angle)), float(np.sin(angle)), 0.0,
                                      float(-np.sin(angle)), float(np.cos(angle)), 0.0]

    return edit


def without_uids(frame_of_reference: str) -> Edit:
    """An anonymiser's output, as the shipped example is: Series, Study and SOP Instance UIDs blank
    (the file meta keeps its instance UID), patient ID, name and birth date blank, age and sex
    kept; ``frame_of_reference`` is the scan's FrameOfReferenceUID (the series of one scan share it)."""

    def edit(ds: pydicom.Dataset, k: int) -> None:
        ds.SeriesInstanceUID = ds.StudyInstanceUID = ds.SOPInstanceUID = ""
        ds.PatientID = ds.PatientName = ds.PatientBirthDate = ""
        ds.FrameOfReferenceUID = frame_of_reference

    return edit


def combined(*edits: Edit) -> Edit:
    """The ``edits`` applied in turn."""

    def edit(ds: pydicom.Dataset, k: int) -> None:
        for each in edits:
            each(ds, k)

    return edit
