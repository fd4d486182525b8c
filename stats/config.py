"""Configuration of the aging study: YAML -> frozen dataclasses, validated once on load.

Two presets hold complete settings: ``default`` (``aging_default.yaml``, the recommended
practice) and ``paper`` (``presets/paper.yaml``, the published method to the letter). A user
file names its base with ``preset:`` and overrides single keys. Errors name the file and the
key (unknown keys, wrong types, values out of range), so a typo fails before any statistic is
computed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cohort.config import from_mapping, load_yaml
from cohort.errors import ConfigError

STATS_DIR = Path(__file__).parent
DEFAULT_CONFIG = STATS_DIR / "aging_default.yaml"
PRESETS = {"default": DEFAULT_CONFIG, "paper": STATS_DIR / "presets" / "paper.yaml"}
METRICS = ("volume_ml", "mean_hu", "std_hu", "median_hu", "p05_hu", "p95_hu", "mean_intensity", "std_intensity",
           "median_intensity", "p05_intensity", "p95_intensity", "fat_fraction")
STATUSES = ("ok", "absent", "fov_truncated", "below_lower_bound")
AGE_GROUP_METHODS = ("paper", "cohort_quartiles")
CUT_SIDES = ("older", "younger")
CORRECTIONS = ("none", "bonferroni", "holm", "sidak", "holm-sidak", "fdr_bh", "fdr_by")
MULTIPLICITY = ("none", "bonferroni", "fdr_bh")
REPEATED_SCANS = ("first", "last", "mean")
ANALYSES = ("intervals", "adjusted", "trends", "normative")
FIGURE_CHOICES = ("none", "overview", "top", "all")
CURVES = ("lowess", "quadratic")
CONTRAST_ADJUST = ("none", "intensity")


@dataclass(frozen=True)
class AgeGroupConfig:
    """How subjects are cut into four age groups, and which group an age equal to a cut point joins."""

    method: str = "paper"
    cut_points: tuple[float, ...] = (41.0, 59.0, 78.0)
    cut_point_goes_to: tuple[str, ...] = ("older", "older", "younger")


@dataclass(frozen=True)
class BootstrapConfig:
    """Percentile bootstrap intervals: resamples, level and the seed that makes them repeatable."""

    n_resamples: int = 1000
    confidence: float = 0.95
    seed: int = 2023


@dataclass(frozen=True)
class TrendConfig:
    """Theil-Sen change per decade; ``reference_ages`` [from, to) is the young-adult range."""

    reference_ages: tuple[float, ...] = (18.0, 30.0)
    max_subjects: int = 1000


@dataclass(frozen=True)
class NormativeConfig:
    """Centile curves and z-scores: spline degrees of freedom, outlier threshold, smallest sample."""

    spline_df: int = 4
    outlier_z: float = 3.0
    min_n: int = 100


@dataclass(frozen=True)
class FigureConfig:
    """Which PNG figures are drawn and how."""

    which: str = "top"
    top_n: int = 6
    dpi: int = 120
    curve: str = "lowess"


@dataclass(frozen=True)
class ContrastConfig:
    """Contrast phase: the manifest column that holds it (``yes``/``no``, as ``cohort manifest`` writes it)
    and what the study does when the analysed subjects hold both phases (one phase or none: nothing)."""

    column: str = "contrast"
    adjust: str = "intensity"  # none | intensity: `adjusted` adjusts HU (MR: intensity) metrics for the phase
    stratify: bool = True  # HU (intensity) metrics also tested within each phase


@dataclass(frozen=True)
class AgingConfig:
    """Everything that decides the aging study's numbers and figures (defaults: the ``default`` preset)."""

    preset: str = "default"
    metrics: tuple[str, ...] = ("volume_ml", "mean_hu")
    include_statuses: tuple[str, ...] = ("ok",)
    age_range: tuple[float, ...] = (18.0, 100.0)
    repeated_scans: str = "first"
    alpha: float = 0.05
    multiplicity: str = "fdr_bh"
    age_groups: AgeGroupConfig = field(default_factory=AgeGroupConfig)
    pairwise_correction: str = "none"
    stratify_by_sex: bool = True
    covariates: tuple[str, ...] = ()
    analyses: tuple[str, ...] = ANALYSES
    pooled_structures: str = "pooled_structures.csv"
    contrast: ContrastConfig = field(default_factory=ContrastConfig)
    bootstrap: BootstrapConfig = field(default_factory=BootstrapConfig)
    trends: TrendConfig = field(default_factory=TrendConfig)
    normative: NormativeConfig = field(default_factory=NormativeConfig)
    summary_top_n: int = 20
    workers: int = 2
    figures: FigureConfig = field(default_factory=FigureConfig)
    source: str = str(DEFAULT_CONFIG)

    def runs(self, analysis: str) -> bool:
        """Whether the optional ``analysis`` (one of ``ANALYSES``) is part of this study."""
        return analysis in self.analyses


def load_aging_config(path: Path | None = None, preset: str | None = None) -> AgingConfig:
    """Load a preset (``preset``, else the file's ``preset:`` key, else ``default``) with ``path``'s keys over it.

    >>> load_aging_config().alpha, load_aging_config(preset="paper").alpha
    (0.05, 0.0001)
    """
    source = Path(path) if path else None
    user = load_yaml(source) if source else {}
    name = preset or user.get("preset", "default")
    if name not in PRESETS:
        raise ConfigError(f"{source or 'preset'}: key 'preset' value {name!r} is not one of {', '.join(PRESETS)}")
    merged = _merge(load_yaml(PRESETS[name]), {**user, "preset": name})
    where = source or PRESETS[name]
    config = from_mapping(AgingConfig, merged, where)
    _validate(config, where)
    return dataclasses.replace(config, source=str(where))


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``override`` over ``base``, section by section (a partial section keeps the base's other keys)."""
    merged = dict(base)
    for key, value in override.items():
        both_sections = isinstance(value, dict) and isinstance(base.get(key), dict)
        merged[key] = _merge(base[key], value) if both_sections else value
    return merged


def _validate(config: AgingConfig, source: Path) -> None:
    _check_choices(config.metrics, METRICS, source, "metrics")
    _check_choices(config.include_statuses, STATUSES, source, "include_statuses")
    _check_choices((config.age_groups.method,), AGE_GROUP_METHODS, source, "age_groups.method")
    _check_choices(config.age_groups.cut_point_goes_to, CUT_SIDES, source, "age_groups.cut_point_goes_to")
    _check_choices((config.pairwise_correction,), CORRECTIONS, source, "pairwise_correction")
    _check_choices((config.multiplicity,), MULTIPLICITY, source, "multiplicity")
    _check_choices((config.repeated_scans,), REPEATED_SCANS, source, "repeated_scans")
    _check_choices(config.analyses, ANALYSES, source, "analyses")
    _check_choices((config.figures.which,), FIGURE_CHOICES, source, "figures.which")
    _check_choices((config.figures.curve,), CURVES, source, "figures.curve")
    _check_choices((config.contrast.adjust,), CONTRAST_ADJUST, source, "contrast.adjust")
    if config.contrast.column != config.contrast.column.strip() or "," in config.contrast.column:
        raise ConfigError(f"{source}: key 'contrast.column' must be a manifest column name (or \"\" for none), "
                          f"got {config.contrast.column!r}")
    for key, value in (("alpha", config.alpha), ("bootstrap.confidence", config.bootstrap.confidence)):
        if not 0.0 < value < 1.0:
            raise ConfigError(f"{source}: key '{key}' must be between 0 and 1, got {value!r}")
    cuts = config.age_groups.cut_points
    if len(cuts) != 3 or list(cuts) != sorted(set(cuts)):
        raise ConfigError(f"{source}: key 'age_groups.cut_points' must be 3 increasing ages, got {list(cuts)}")
    if len(config.age_groups.cut_point_goes_to) != 3:
        raise ConfigError(f"{source}: key 'age_groups.cut_point_goes_to' must name a side for each of the 3 cut points")
    for key in ("age_range", "trends.reference_ages"):
        section, _, name = key.rpartition(".")
        pair = getattr(getattr(config, section) if section else config, name)
        if len(pair) != 2 or not pair[0] < pair[1]:
            raise ConfigError(f"{source}: key '{key}' must be [from, to] with from < to, got {list(pair)}")
    for key in ("summary_top_n", "workers", "figures.top_n", "figures.dpi", "trends.max_subjects",
                "normative.spline_df", "normative.min_n", "bootstrap.n_resamples"):
        section, _, name = key.rpartition(".")
        value = getattr(getattr(config, section) if section else config, name)
        if value < 1:
            raise ConfigError(f"{source}: key '{key}' must be at least 1, got {value!r}")
    if config.normative.outlier_z <= 0:
        raise ConfigError(f"{source}: key 'normative.outlier_z' must be positive, got {config.normative.outlier_z!r}")
    if not config.metrics or not config.include_statuses:
        raise ConfigError(f"{source}: keys 'metrics' and 'include_statuses' must not be empty")


def _check_choices(values: tuple[str, ...], allowed: tuple[str, ...], source: Path, key: str) -> None:
    for value in values:
        if value not in allowed:
            raise ConfigError(f"{source}: key '{key}' value {value!r} is not one of {', '.join(allowed)}")


def with_figures(config: AgingConfig, which: str | None) -> AgingConfig:
    """``config`` with ``figures.which`` replaced (e.g. from a command-line flag); None keeps it."""
    if which is None:
        return config
    if which not in FIGURE_CHOICES:
        raise ConfigError(f"figures: {which!r} is not one of {', '.join(FIGURE_CHOICES)}")
    return dataclasses.replace(config, figures=dataclasses.replace(config.figures, which=which))
