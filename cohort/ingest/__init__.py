"""Stage 1: read a CT (NIfTI file or DICOM folder) and its label map into typed volumes."""

from __future__ import annotations

from pathlib import Path

from cohort.errors import SeriesError
from cohort.ingest.checks import align_labels, check_is_ct
from cohort.ingest.dicom import load_ct_dicom
from cohort.ingest.nifti import is_nifti, load_ct_nifti, load_label_nifti
from cohort.ingest.volume import Grid, LabelMap, Volume

__all__ = ["Grid", "LabelMap", "Volume", "align_labels", "check_is_ct", "load_ct", "load_label_nifti"]


def load_ct(path: Path) -> Volume:
    """Load a CT from a NIfTI file or a DICOM series folder and check it is CT."""
    if path.is_dir():
        volume = load_ct_dicom(path)
    elif is_nifti(path) or not path.exists():
        volume = load_ct_nifti(path)
    else:
        raise SeriesError(f"{path}: neither a NIfTI file (.nii, .nii.gz) nor a DICOM series folder")
    check_is_ct(volume)
    return volume
