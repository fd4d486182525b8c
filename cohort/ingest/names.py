"""How ingest messages name an input file: never by its absolute path.

Folders of clinical exports are often named after the patient (``DOE_JOHN_12345/``), and the
``error`` column of ``series/`` travels further than the images do. So every
:class:`~cohort.errors.SeriesError` raised in ``cohort.ingest`` names its input as:

- the path relative to the manifest's folder, when the input lies under it
  (``scans/ct_017.nii.gz``): what the manifest's author wrote there, or its equivalent;
- otherwise ``<path of line 12>`` (or ``<labels of line 12>``): the manifest column and CSV
  line, which find the file without saying where it is;
- a bare :class:`~pathlib.Path` (library use, no manifest) by its last component only.

A file inside a DICOM folder is appended to the folder's name: ``<path of line 12>/IM0001``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class InputName:
    """An input's real ``path`` and the ``shown`` name that messages use instead of it."""

    path: Path
    shown: str

    @classmethod
    def in_manifest(cls, path: Path, manifest: Path, line: int, column: str = "path") -> "InputName":
        """The name of the file in ``column`` of CSV ``line`` of ``manifest``."""
        absolute = Path(os.path.abspath(path))
        folder = Path(os.path.abspath(manifest)).parent
        if absolute.is_relative_to(folder) and absolute != folder:
            return cls(path, absolute.relative_to(folder).as_posix())
        return cls(path, f"<{column} of line {line}>")

    @classmethod
    def of(cls, source: "Path | str | InputName") -> "InputName":
        """``source`` itself when it is already named, else a bare path shown by its last component."""
        if isinstance(source, InputName):
            return source
        path = Path(source)
        return cls(path, path.name or "<input>")

    def child(self, name: str) -> str:
        """How to show file ``name`` inside this input (a DICOM folder)."""
        return f"{self.shown}/{name}"

    def scrub(self, text: str) -> str:
        """``text`` (a library's error message) with every spelling of this path replaced by ``shown``."""
        spellings = {str(self.path), os.path.abspath(self.path), os.path.realpath(self.path)}
        for spelling in sorted(spellings, key=len, reverse=True):
            text = text.replace(spelling, self.shown)
        return text

    def __str__(self) -> str:
        return self.shown
