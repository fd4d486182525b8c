"""Contrast phase: whether a series was scanned with a contrast agent, and what says so.

The mean HU of liver, spleen, kidneys and aorta differ by tens to hundreds of HU between a native
and a contrast-enhanced scan, so an aging study of HU must not mix them. DICOM's
ContrastBolusAgent says whether an agent was given, but scanners often leave it empty on contrast
scans; the SeriesDescription, written per series by the protocol or the operator, often names the
phase (``nativ``, ``venous``, ``KM``). A policy's description marks (regular expressions, data in
``configs/selection.yaml``) therefore decide when one is found in the description; else the tag
does. The marks of a series without contrast are tried first: a negation such as ``non-contrast``
or ``ohne KM`` holds the very word a mark of contrast looks for.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from cohort.export.series import SeriesSummary

CONTRAST_CHOICES = ("any", "with", "without")  # the policy's ``contrast``: which series it takes


@dataclass(frozen=True)
class ContrastPhase:
    """With or without contrast, and the evidence a reason names."""

    with_contrast: bool
    evidence: str

    @property
    def name(self) -> str:
        """``with`` or ``without``, as the policy's ``contrast`` names the phase."""
        return "with" if self.with_contrast else "without"


def contrast_phase(series: SeriesSummary, without_marks: tuple[str, ...], with_marks: tuple[str, ...]
                   ) -> ContrastPhase:
    """The phase of ``series`` (whose ``contrast`` is read from ContrastBolusAgent): the first
    description mark found (case-insensitive; ``without_marks`` first), else the tag.

    >>> from dataclasses import replace
    >>> venous = SeriesSummary("1", "st", "su", ".", 40, "CT", "", "axial", 0.0, 3.0, 3.0, 120.0, None, "", False,
    ...                        None, "", "", "Abdomen venous 3.0", None, "")
    >>> contrast_phase(venous, ("nativ",), ("venous",))
    ContrastPhase(with_contrast=True, evidence="description matches 'venous'")
    >>> contrast_phase(replace(venous, series_description="Abdomen NATIV", contrast=True), ("nativ",), ()).name
    'without'
    >>> contrast_phase(replace(venous, series_description="Abdomen 3.0"), ("nativ",), ("venous",)).evidence
    'no agent in ContrastBolusAgent, no mark in the description'
    """
    for with_contrast, marks in ((False, without_marks), (True, with_marks)):
        found = next((mark for mark in marks if re.search(mark, series.series_description, re.IGNORECASE)), None)
        if found is not None:
            return ContrastPhase(with_contrast, f"description matches '{found}'")
    if series.contrast:
        return ContrastPhase(True, "ContrastBolusAgent names an agent, no mark in the description")
    return ContrastPhase(False, "no agent in ContrastBolusAgent, no mark in the description")
