"""Stage 1: read a CT (NIfTI file or DICOM folder) and its label map (a multilabel NIfTI file or a
folder of binary masks, ``cohort.ingest.masks``) into typed volumes.

Inputs are given as a :class:`Path` or, from a manifest row, as an :class:`InputName` so that
messages never show the absolute path (see ``cohort.ingest.names``). Headers are checked
against ``ingest.max_voxels`` (an :class:`~cohort.config.IngestConfig`) before voxels are read.
"""

from __future__ import annotations

from pathlib import Path

from cohort.config import ClassMap, IngestConfig
from cohort.errors import SeriesError
from cohort.ingest.checks import (align_image, align_labels, check_dixon_scaling, check_finite, check_is_ct,
                                   check_modality)
from cohort.ingest.dicom import read_ct_dicom
from cohort.ingest.masks import load_label_masks
from cohort.ingest.names import InputName
from cohort.ingest.nifti import as_hu_array, is_nifti, load_label_nifti, read_nifti_array
from cohort.ingest.padding import AIR_HU, NO_SIGNAL, detect_padding, field_edge, fill_padding, padding_mask
from cohort.ingest.volume import Grid, LabelMap, Volume

__all__ = ["Grid", "InputName", "LabelMap", "Volume", "align_image", "align_labels", "check_dixon_scaling",
           "check_is_ct", "check_modality", "load_ct", "load_label_masks", "load_label_nifti", "load_labels"]


def load_ct(source: Path | InputName, limits: IngestConfig = IngestConfig(), series_uid: str | None = None,
            modality: str | None = "CT") -> Volume:
    """Load a CT from a NIfTI file or a DICOM series folder, mask its padding and check it is CT.

    ``series_uid`` picks one DICOM series out of a folder holding several, or split over its
    sub-folders (the manifest's ``series_uid`` column, see ``cohort.ingest.dicom``). ``modality``
    is the model's: a CT must hold Hounsfield units, an MR must not look like a CT.
    """
    name = InputName.of(source)
    padded = origin = None
    files, scales = (name.path,), frozenset()
    if name.path.is_dir():
        series = read_ct_dicom(name, limits, series_uid, modality)
        values, affine, padded, origin = series.values, series.affine, series.padded, series.origin
        files, scales = tuple(Path(file) for file in series.files), series.precise_scales
    elif is_nifti(name.path) or not name.path.exists():
        values, affine = read_nifti_array(name, limits)
    else:
        raise SeriesError(f"{name}: neither a NIfTI file (.nii, .nii.gz) nor a DICOM series folder")
    if padded is None:  # none declared (a DICOM header can): the corners tell
        padded = padding_mask(values, detect_padding(values))
    unchecked = Volume(hu=values, affine=affine, source=name.path, name=name.shown)
    if modality is not None:
        check_modality(unchecked, modality, padded)
    else:  # a companion image (Dixon fat/water), judged through its series; its values must still be numbers
        check_finite(unchecked, padded)
    fill = NO_SIGNAL if modality == "MR" else AIR_HU  # an MR's padding is no signal, never CT air
    edge = field_edge(values, padded, modality)
    return Volume(hu=as_hu_array(fill_padding(values, padded, fill)), affine=affine, source=name.path,
                  name=name.shown, outside_fov=edge, origin=origin, files=files, precise_scales=scales)


def load_labels(source: Path | InputName, volume: Volume, class_map: ClassMap,
                limits: IngestConfig = IngestConfig()) -> LabelMap:
    """The label map of ``volume`` on its grid, from a multilabel NIfTI file numbered as
    ``class_map`` or from a folder of one binary mask per structure of ``class_map`` (TotalSegmentator
    without ``--ml``): what a manifest's ``labels`` column may name."""
    name = InputName.of(source)
    if name.path.is_dir():
        return load_label_masks(name, class_map, volume.grid, volume.name, limits)
    return align_labels(volume, load_label_nifti(name, limits, class_map))
