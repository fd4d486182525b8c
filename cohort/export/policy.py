"""Series selection as data: which series of a study become manifest rows, and why.

The policy is a YAML file (shipped: ``configs/selection.yaml``; ``--policy FILE`` replaces it)
validated on load. Each series gets ``selected`` and a one-line ``reason``: the first rule it
fails (``rule: detail``), or, among the series of a study that pass every rule, ``chosen: ...``
for the best ``series_per_study`` by the ``tie_break`` order and ``ranked lower: ...`` for
the others. A policy with a ``dixon:`` section (``configs/selection_dixon.yaml``) ranks Dixon
acquisitions instead of series (:mod:`cohort.export.dixon`): each row is the acquisition's image
to segment, with its fat and water series as the row's companions. ``contrast`` keeps the series of
one contrast phase (:mod:`cohort.export.contrast`): ``any`` (default), ``with`` or ``without``.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from cohort.config import CONFIG_DIR, config_file, from_mapping, load_yaml
from cohort.errors import ConfigError
from cohort.export.contrast import CONTRAST_CHOICES, ContrastPhase, contrast_phase
from cohort.export.dixon import ROLES, DixonPolicy, acquisitions, dixon_role
from cohort.export.series import SeriesSummary

DEFAULT_POLICY = CONFIG_DIR / "selection.yaml"
T = TypeVar("T")


@dataclass(frozen=True)
class Range:
    """An inclusive range of millimetres."""

    min: float
    max: float


@dataclass(frozen=True)
class SelectionPolicy:
    """The rules, checked in this order, then the tie-break (see ``configs/selection.yaml``)."""

    modalities: tuple[str, ...] = ("CT",)
    required_image_type: tuple[str, ...] = ("ORIGINAL", "PRIMARY")
    rejected_image_type: tuple[str, ...] = ("LOCALIZER", "DERIVED", "SECONDARY")
    max_tilt_from_axial_deg: float = 10.0
    slice_thickness_mm: Range = field(default_factory=lambda: Range(0.5, 5.0))
    min_slices: int = 30
    min_z_coverage_mm: float = 100.0
    contrast: str = "any"  # any, with or without (CONTRAST_CHOICES)
    description_without_contrast: tuple[str, ...] = ()  # SeriesDescription marks of a native series...
    description_with_contrast: tuple[str, ...] = ()  # ...and of a contrast-enhanced one (regexes)
    kernel_preference: tuple[str, ...] = ()
    tie_break: tuple[str, ...] = ("kernel_preference", "thinnest", "largest_coverage")
    series_per_study: int = 1
    dixon: DixonPolicy | None = None
    source: str = str(DEFAULT_POLICY)


def load_policy(path: Path | None = None) -> SelectionPolicy:
    """Load and validate ``path`` (default: the shipped ``configs/selection.yaml``; a bare name
    such as ``selection_dixon.yaml`` that is not a file here is one of the shipped ``configs/``)."""
    source = config_file(str(path)) if path else DEFAULT_POLICY
    data = load_yaml(source)
    if isinstance(data.get("contrast"), bool):  # YAML 1.1 reads yes/no/on/off as true/false
        raise ConfigError(f"{source}: key 'contrast' must be one of {', '.join(CONTRAST_CHOICES)}, "
                          f"got {data['contrast']!r} (YAML reads yes and no as true and false)")
    policy = from_mapping(SelectionPolicy, data, source)
    if policy.contrast not in CONTRAST_CHOICES:
        raise ConfigError(f"{source}: key 'contrast' must be one of {', '.join(CONTRAST_CHOICES)}, "
                          f"got {policy.contrast!r}")
    for key in ("description_without_contrast", "description_with_contrast"):
        _check_patterns(getattr(policy, key), key, source)
    unknown = [key for key in policy.tie_break if key not in TIE_BREAKS]
    if unknown:
        raise ConfigError(f"{source}: key 'tie_break' has unknown entry {unknown[0]!r} (known: {', '.join(TIE_BREAKS)})")
    if policy.series_per_study < 1 or policy.min_slices < 2:
        raise ConfigError(f"{source}: keys 'series_per_study' and 'min_slices' must be at least 1 and 2")
    if policy.slice_thickness_mm.min > policy.slice_thickness_mm.max:
        raise ConfigError(f"{source}: key 'slice_thickness_mm' has min above max")
    if policy.dixon is not None:
        _check_dixon(policy.dixon, source)
    return dataclasses.replace(policy, source=str(source))


def _check_dixon(dixon: DixonPolicy, source: Path) -> None:
    if dixon.image not in ROLES:
        raise ConfigError(f"{source}: key 'dixon.image' must be one of {', '.join(ROLES)}, got {dixon.image!r}")
    for role in dixon.needed:
        marks = getattr(dixon, role)
        if not (marks.image_type or marks.description):
            raise ConfigError(f"{source}: key 'dixon.{role}' needs 'image_type' or 'description' entries: "
                              f"a row needs its {role} series")
        _check_patterns(marks.description, f"dixon.{role}.description", source)


def _check_patterns(patterns: tuple[str, ...], key: str, source: Path) -> None:
    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as error:
            raise ConfigError(f"{source}: key '{key}' entry {pattern!r} is not a regular expression: {error}") from None


@dataclass(frozen=True)
class Choice:
    """The verdict on one series. A Dixon row's image lists its ``companions`` (role -> series);
    a companion names the image it belongs to in ``companion_of`` (its ``identity``; no row of its own)."""

    series: SeriesSummary
    selected: bool
    reason: str
    companions: tuple[tuple[str, SeriesSummary], ...] = ()
    companion_of: str | None = None


def select(series: list[SeriesSummary], policy: SelectionPolicy) -> list[Choice]:
    """A :class:`Choice` for every series, in the order given. Each choice's series has as
    ``contrast`` its phase as the policy judges it (a description mark, else ContrastBolusAgent):
    the manifest and index say what the ``contrast`` rule saw."""
    phases = {s.identity: contrast_phase(s, policy.description_without_contrast, policy.description_with_contrast)
              for s in series}
    series = [dataclasses.replace(s, contrast=phases[s.identity].with_contrast) for s in series]
    verdicts = {s.identity: first_failed_rule(s, policy, phases[s.identity]) for s in series}
    if policy.dixon is not None:
        return _select_dixon(series, verdicts, policy, policy.dixon)
    choices: dict[str, Choice] = {}
    eligible = [s for s in series if verdicts[s.identity] is None]
    for place, candidate, ranked in _ranked_per_study(eligible, lambda s: s, policy):
        chosen = place < policy.series_per_study
        choices[candidate.identity] = Choice(candidate, chosen, _ranking_reason(candidate, place, ranked, policy))
    return [choices.get(s.identity) or Choice(s, False, verdicts[s.identity]) for s in series]


def _ranked_per_study(candidates: list[T], image: Callable[[T], SeriesSummary], policy: SelectionPolicy
                      ) -> Iterator[tuple[int, T, list[SeriesSummary]]]:
    """``(place, candidate, the study's ranked images)`` for each candidate, ranked within its study
    by the ``tie_break`` order of its ``image`` (a series, or a Dixon acquisition's image series)."""
    by_study: dict[str, list[T]] = {}
    for candidate in candidates:
        by_study.setdefault(image(candidate).study_key, []).append(candidate)
    for group in by_study.values():
        ranked = sorted(group, key=lambda candidate: _rank(image(candidate), policy))
        images = [image(candidate) for candidate in ranked]
        for place, candidate in enumerate(ranked):
            yield place, candidate, images


def _select_dixon(series: list[SeriesSummary], verdicts: dict[str, str | None], policy: SelectionPolicy,
                  dixon: DixonPolicy) -> list[Choice]:
    """Dixon acquisitions (study x grid) of the series that pass every rule (``verdicts``: identity ->
    the first rule failed) as the candidates a study ranks."""
    roles = {s.identity: dixon_role(s, dixon) for s in series if verdicts[s.identity] is None}
    for summary in series:
        if verdicts[summary.identity] is None and roles[summary.identity] is None:
            verdicts[summary.identity] = (f"dixon: neither ImageType {summary.image_type or 'none'} nor description "
                                          f"{summary.series_description or 'none'!r} marks a Dixon image")
    choices: dict[str, Choice] = {}
    candidates = []
    for acquisition in acquisitions(series, roles):
        problem = acquisition.problem(dixon)
        members = [s for by_role in acquisition.series.values() for s in by_role]
        if problem:
            choices.update((s.identity, Choice(s, False, problem)) for s in members)
        else:
            candidates.append(acquisition)
    for place, acquisition, images in _ranked_per_study(candidates, lambda a: a.image(dixon), policy):
        chosen = place < policy.series_per_study
        image = images[place]
        companions = acquisition.companions()
        choices[image.identity] = Choice(image, chosen, _ranking_reason(image, place, images, policy),
                                           tuple(companions.items()))
        verdict = "chosen" if chosen else "ranked lower"
        for role, companion in companions.items():
            if companion.identity != image.identity:
                choices[companion.identity] = Choice(
                    companion, chosen, f"{verdict}: the {role} image beside {dixon.image} {image.label}",
                    companion_of=image.identity)
        for role, members in acquisition.series.items():
            for member in members:
                choices.setdefault(member.identity, Choice(
                    member, False, f"dixon: the {role} image is not used (rows take {', '.join(dixon.needed)})"))
    return [choices.get(s.identity) or Choice(s, False, verdicts[s.identity]) for s in series]


def first_failed_rule(series: SeriesSummary, policy: SelectionPolicy, phase: ContrastPhase) -> str | None:
    """``rule: detail`` of the first rule ``series`` (of contrast ``phase``) fails, or None when it
    passes them all. Contrast comes last: a series it rejects is one that passes every other rule,
    so the count of ``contrast`` rejections is what keeping one phase costs."""
    if series.modality.upper() not in {m.upper() for m in policy.modalities}:
        return f"modality: {series.modality or 'none'} is not {' or '.join(policy.modalities)}"
    types = series.image_type_values
    rejected = [t for t in policy.rejected_image_type if t.upper() in types]
    if rejected:
        return f"image type: {series.image_type} is {'/'.join(rejected)}"
    lacking = [t for t in policy.required_image_type if t.upper() not in types]
    if lacking:
        return f"image type: {series.image_type or 'none'} lacks {'/'.join(lacking)}"
    if series.geometry_problem:
        return f"geometry: {series.geometry_problem}"
    if series.tilt_from_axial_deg is None or series.tilt_from_axial_deg > policy.max_tilt_from_axial_deg:
        return (f"orientation: {series.orientation or 'unknown'}, {series.tilt_from_axial_deg} deg from axial "
                f"(limit {policy.max_tilt_from_axial_deg:g})")
    bounds = policy.slice_thickness_mm
    thickness = series.slice_thickness_mm
    if thickness is None or not bounds.min <= thickness <= bounds.max:
        shown = "none" if thickness is None else f"{thickness:g}"
        return f"slice thickness: {shown} mm is outside {bounds.min:g}-{bounds.max:g} mm"
    if series.n_instances < policy.min_slices:
        return f"slices: {series.n_instances} is below {policy.min_slices}"
    if (series.z_coverage_mm or 0) < policy.min_z_coverage_mm:
        return f"z-coverage: {series.z_coverage_mm:g} mm is below {policy.min_z_coverage_mm:g} mm"
    if policy.contrast not in ("any", phase.name):
        return f"contrast: {phase.name} ({phase.evidence}), the policy takes {policy.contrast}"
    return None


def kernel_rank(kernel: str, policy: SelectionPolicy) -> int:
    """Position of the first ``kernel_preference`` entry found in ``kernel`` (case-insensitive);
    after all of them when none is."""
    folded = kernel.casefold()
    return next((i for i, preferred in enumerate(policy.kernel_preference) if preferred.casefold() in folded),
                len(policy.kernel_preference))


TIE_BREAKS: dict[str, Callable[[SeriesSummary, SelectionPolicy], float]] = {
    "kernel_preference": lambda s, p: kernel_rank(s.kernel, p),
    "thinnest": lambda s, p: s.slice_thickness_mm or 0.0,
    "largest_coverage": lambda s, p: -(s.z_coverage_mm or 0.0),
    "most_slices": lambda s, p: -s.n_instances,
}


def _rank(series: SeriesSummary, policy: SelectionPolicy) -> tuple:
    return (*(TIE_BREAKS[name](series, policy) for name in policy.tie_break), series.identity)


def _ranking_reason(series: SeriesSummary, place: int, eligible: list[SeriesSummary], policy: SelectionPolicy) -> str:
    described = (f"kernel {series.kernel or 'none'}, {series.slice_thickness_mm:g} mm, "
                 f"{series.z_coverage_mm:g} mm coverage")
    if place < policy.series_per_study:
        return f"chosen: rank {place + 1} of {len(eligible)} eligible in the study by {', '.join(policy.tie_break)} ({described})"
    return f"ranked lower: rank {place + 1} of {len(eligible)} eligible in the study, {policy.series_per_study} kept ({described})"
