"""The typed values that flow out of ingest: a CT volume and a label map on a voxel grid."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import nibabel as nib


@dataclass(frozen=True)
class Grid:
    """A voxel grid: array shape and the voxel-to-world (RAS, mm) affine."""

    shape: tuple[int, int, int]
    affine: np.ndarray

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along the array axes (norms of the affine's columns)."""
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0))

    @property
    def voxel_volume_ml(self) -> float:
        """Volume of one voxel: the absolute determinant of the affine's 3x3 part (mm^3 / 1000).

        For the orthogonal grids of most scans this is the product of the spacings, as
        TotalSegmentator computes it; for a sheared grid (a gantry-tilted CT written to NIfTI
        without tilt correction) the product of the column norms overstates it by 1/cos(tilt),
        while the determinant stays the physical volume of the parallelepiped a voxel fills.
        """
        return float(abs(np.linalg.det(self.affine[:3, :3]))) / 1000.0

    @property
    def orientation(self) -> str:
        return "".join(nib.aff2axcodes(self.affine))


@dataclass(frozen=True)
class ScanOrigin:
    """Which study and which scan of it a DICOM series comes from, as digests of its
    StudyInstanceUID and FrameOfReferenceUID ("" when its headers have none).

    Series that belong together, a Dixon acquisition's in-phase, fat and water images, share both;
    a series of the same grid from another visit, or from another scan of the visit, does not.
    Digests, so that no identifier travels with the voxels.

    >>> ScanOrigin.of("1.2.3", "1.2.9").mismatch(ScanOrigin.of("1.2.4", "1.2.9"))
    'from another study (its StudyInstanceUID differs)'
    >>> ScanOrigin.of("1.2.3", "1.2.9").mismatch(ScanOrigin.of("1.2.3", "")) is None
    True
    """

    study: str
    frame: str

    @classmethod
    def of(cls, study_uid: str, frame_uid: str) -> ScanOrigin:
        return cls(_uid_digest(study_uid), _uid_digest(frame_uid))

    def mismatch(self, other: ScanOrigin) -> str | None:
        """How ``other`` comes from elsewhere than this series, or None (also when a header lacks the UID)."""
        if self.study and other.study and self.study != other.study:
            return "from another study (its StudyInstanceUID differs)"
        if self.frame and other.frame and self.frame != other.frame:
            return ("from another scan of the study (its FrameOfReferenceUID differs: the patient lay "
                    "differently)")
        return None


def _uid_digest(uid: str) -> str:
    return hashlib.sha256(uid.encode()).hexdigest()[:16] if uid else ""


@dataclass(frozen=True)
class Volume:
    """A CT series: Hounsfield units in (x, y, z) array order, as the file stores them.

    Padding outside the scan field is already air (-1024, see ``cohort.ingest.padding``);
    ``outside_fov`` keeps where it was (None: no padding), so that a structure cut off by a
    circular reconstruction field is known as cut off. ``name`` is how messages show
    ``source`` (see ``cohort.ingest.names``): never its absolute path; it defaults to the last
    component of ``source``. ``origin``: the study and scan of a DICOM series (None for NIfTI).
    ``files``: the files the voxels were read from (the NIfTI file, or the DICOM series' files,
    not the other files of its folder), so that a row's input content digests them without
    finding its series again. ``precise_scales``: the distinct Philips display-to-precise factors
    of its slices (:func:`cohort.ingest.dicom.philips_precise_scale`; empty for other series).
    """

    hu: np.ndarray
    affine: np.ndarray
    source: Path
    name: str = ""
    outside_fov: np.ndarray | None = field(default=None, repr=False, compare=False)
    origin: ScanOrigin | None = field(default=None, repr=False, compare=False)
    files: tuple[Path, ...] = field(default=(), repr=False, compare=False)
    precise_scales: frozenset[float] = field(default=frozenset(), repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.name:
            object.__setattr__(self, "name", Path(self.source).name)

    @property
    def grid(self) -> Grid:
        return Grid(tuple(int(n) for n in self.hu.shape), self.affine)


@dataclass(frozen=True)
class LabelMap:
    """Integer structure ids on a voxel grid (0 = background); ``name`` as for :class:`Volume`."""

    labels: np.ndarray
    affine: np.ndarray
    source: Path
    name: str = ""

    def __post_init__(self) -> None:
        if not self.name:
            object.__setattr__(self, "name", Path(self.source).name)

    @property
    def grid(self) -> Grid:
        return Grid(tuple(int(n) for n in self.labels.shape), self.affine)

    def to_nifti(self) -> nib.Nifti1Image:
        """The label map as a NIfTI image (``nib.save(label_map.to_nifti(), "seg.nii.gz")``)."""
        return nib.Nifti1Image(self.labels, self.affine)
