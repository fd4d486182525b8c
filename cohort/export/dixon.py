"""Dixon MR exports: which series is water, fat, in-phase or opposed-phase, and which belong together.

A Dixon acquisition is reconstructed into up to four series (water, fat, in-phase and opposed-phase
images) with one grid: the same rows, columns, pixel spacing, orientation and slice positions, and
one FrameOfReferenceUID (a repeat scan on the same grid after the patient moved has another). A
series' role is read from its ImageType values (Siemens writes ``DIXON\\WATER``, ``DIXON\\FAT``,
``IN_PHASE``, ``OPP_PHASE``; Philips ``W``, ``F``, ``IP``, ``OP``), else from its SeriesDescription
(``..._W``, ``..._F``, ``..._in``, ``..._opp`` as NAKO and UK Biobank name them). Both are data:
``dixon:`` of the selection policy (``configs/selection_dixon.yaml``). The series of one study,
frame of reference and grid are one acquisition; it becomes a manifest row when it has exactly one series of
each role the row needs: the image that is segmented (``dixon.image``) and the fat and water
images that give each structure its fat fraction.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from cohort.export.series import SeriesSummary

ROLES = ("water", "fat", "in_phase", "opposed_phase")
COMPANION_ROLES = ("fat", "water")  # the manifest's Dixon columns


@dataclass(frozen=True)
class RoleMarks:
    """What marks a series as one role: any of ``image_type`` among its ImageType values, else any of
    the regular expressions ``description`` found in its SeriesDescription (case-insensitive)."""

    image_type: tuple[str, ...] = ()
    description: tuple[str, ...] = ()

    def marks_image_type(self, series: SeriesSummary) -> bool:
        return any(value.upper() in series.image_type_values for value in self.image_type)

    def marks_description(self, series: SeriesSummary) -> bool:
        return any(re.search(pattern, series.series_description, re.IGNORECASE) for pattern in self.description)


@dataclass(frozen=True)
class DixonPolicy:
    """``dixon:`` of a selection policy: the role segmented and how each role is recognised."""

    image: str = "in_phase"
    water: RoleMarks = field(default_factory=RoleMarks)
    fat: RoleMarks = field(default_factory=RoleMarks)
    in_phase: RoleMarks = field(default_factory=RoleMarks)
    opposed_phase: RoleMarks = field(default_factory=RoleMarks)

    @property
    def needed(self) -> tuple[str, ...]:
        """The roles a manifest row needs: the segmented image, then fat and water."""
        return tuple(dict.fromkeys((self.image, *COMPANION_ROLES)))


def dixon_role(series: SeriesSummary, policy: DixonPolicy) -> str | None:
    """The role of ``series`` (ImageType first, for every role, then the description), or None.

    >>> from dataclasses import replace
    >>> policy = DixonPolicy(water=RoleMarks(("WATER",), (r"_W$",)), fat=RoleMarks(("FAT",), (r"_F$",)))
    >>> blank = SeriesSummary("1", "st", "su", ".", 40, "MR", "", "axial", 0.0, 3.0, 3.0, 120.0, None, "", False,
    ...                       None, "", "", "", None, "", "")
    >>> dixon_role(replace(blank, image_type="DERIVED\\\\PRIMARY\\\\DIXON\\\\WATER"), policy)
    'water'
    >>> dixon_role(replace(blank, series_description="t1_vibe_dixon_tra_F"), policy), dixon_role(blank, policy)
    ('fat', None)
    """
    for marks in ("marks_image_type", "marks_description"):
        found = [role for role in ROLES if getattr(getattr(policy, role), marks)(series)]
        if found:
            return found[0]
    return None


@dataclass(frozen=True)
class Acquisition:
    """The Dixon series of one study and frame of reference on one grid, by role (several per role:
    ambiguous)."""

    study_key: str
    frame_key: str
    grid: str
    series: dict[str, list[SeriesSummary]]

    def problem(self, policy: DixonPolicy) -> str | None:
        """Why this acquisition cannot be a manifest row, or None."""
        missing = [role for role in policy.needed if not self.series.get(role)]
        if missing:
            found = ", ".join(role for role in ROLES if self.series.get(role)) or "nothing"
            return f"dixon: no {' or '.join(missing)} series on this grid ({found} found)"
        repeated = [f"{len(self.series[role])} {role}" for role in policy.needed if len(self.series[role]) > 1]
        if repeated:
            return f"dixon: {', '.join(repeated)} series on this grid; which belong together is ambiguous"
        return None

    def image(self, policy: DixonPolicy) -> SeriesSummary:
        return self.series[policy.image][0]

    def companions(self) -> dict[str, SeriesSummary]:
        return {role: self.series[role][0] for role in COMPANION_ROLES}


def acquisitions(series: list[SeriesSummary], roles: dict[str, str]) -> list[Acquisition]:
    """The series with a role (``roles``: series identity -> role) grouped by study, frame of
    reference and grid, in the order of their first series. ``cohort run`` refuses a row whose fat
    or water image has another study or frame of reference than its image: such series never pair."""
    grouped: dict[tuple[str, str, str], dict[str, list[SeriesSummary]]] = {}
    for summary in series:
        role = roles.get(summary.identity)
        if role is not None:
            key = (summary.study_key, summary.frame_key, summary.grid)
            grouped.setdefault(key, {}).setdefault(role, []).append(summary)
    return [Acquisition(study, frame, grid, by_role) for (study, frame, grid), by_role in grouped.items()]
