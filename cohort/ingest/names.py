"""How ingest messages name an input file: never by its absolute path.

Folders and files of clinical exports are often named after the patient (``DOE_JOHN_12345/``)
or by DICOM UIDs, and the ``error`` column of ``series/`` travels further than the images do (the
report, the Prefect server). So every :class:`~cohort.errors.SeriesError` raised in
``cohort.ingest`` names its input as:

- ``<path of line 12>`` (or ``<labels of line 12>``) for a manifest row: the manifest column and
  CSV line, which find the file without saying where it is, not even relative to the manifest;
- a bare :class:`~pathlib.Path` (library use, no manifest) by its last component only.

A file inside a DICOM folder is named by its place in the series: ``<path of line 12> (slice 7
of 20)``.
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
    def in_manifest(cls, path: Path, line: int, column: str = "path") -> "InputName":
        """The name of the file in ``column`` of CSV ``line`` of the manifest.

        >>> str(InputName.in_manifest(Path("/exports/DOE_JOHN_12345/ct.nii.gz"), 12))
        '<path of line 12>'
        """
        return cls(path, f"<{column} of line {line}>")

    @classmethod
    def of(cls, source: "Path | str | InputName") -> "InputName":
        """``source`` itself when it is already named, else a bare path shown by its last component."""
        if isinstance(source, InputName):
            return source
        path = Path(source)
        return cls(path, path.name or "<input>")

    def child(self, file: str, place: str) -> "InputName":
        """File ``file`` of this input (a DICOM folder), shown by its ``place`` in the series.

        >>> InputName(Path("/x/DOE"), "<path of line 3>").child("/x/DOE/CT.1.2.840.9", "slice 7 of 20").shown
        '<path of line 3> (slice 7 of 20)'
        """
        return InputName(Path(file), f"{self.shown} ({place})")

    def scrub(self, text: str) -> str:
        """``text`` (a library's error message) with every spelling of this path replaced by ``shown``."""
        spellings = {str(self.path), os.path.abspath(self.path), os.path.realpath(self.path)}
        for spelling in sorted(spellings, key=len, reverse=True):
            text = text.replace(spelling, self.shown)
        return text

    def __str__(self) -> str:
        return self.shown
