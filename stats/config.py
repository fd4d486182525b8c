"""Configuration of the aging study: YAML -> frozen dataclasses, validated once on load.

Errors name the file and the key (unknown keys, wrong types, values out of range), so a
typo fails before any statistic is computed. Defaults live in ``aging_default.yaml``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from cohort.config import from_mapping, load_yaml
from cohort.errors import ConfigError

DEFAULT_CONFIG = Path(__file__).with_name("aging_default.yaml")
METRICS = ("volume_ml", "mean_hu", "std_hu", "median_hu", "p05_hu", "p95_hu")
STATUSES = ("ok", "absent", "fov_truncated", "below_lower_bound")
AGE_GROUP_METHODS = ("paper", "cohort_quartiles")
CORRECTIONS = ("bonferroni", "holm", "sidak", "holm-sidak", "fdr_bh", "fdr_by")
FIGURE_CHOICES = ("none", "overview", "top", "all")


@dataclass(frozen=True)
class AgeGroupConfig:
    """How subjects are cut into four age groups."""

    method: str = "paper"
    cut_points: tuple[float, ...] = (41.0, 59.0, 78.0)


@dataclass(frozen=True)
class FigureConfig:
    """Which PNG figures are drawn and how."""

    which: str = "top"
    top_n: int = 6
    dpi: int = 120


@dataclass(frozen=True)
class AgingConfig:
    """Everything that decides the aging study's numbers and figures."""

    metrics: tuple[str, ...] = ("volume_ml", "mean_hu")
    include_statuses: tuple[str, ...] = ("ok",)
    alpha: float = 0.0001
    age_groups: AgeGroupConfig = field(default_factory=AgeGroupConfig)
    pairwise_correction: str = "bonferroni"
    stratify_by_sex: bool = False
    summary_top_n: int = 20
    workers: int = 2
    figures: FigureConfig = field(default_factory=FigureConfig)
    source: str = str(DEFAULT_CONFIG)


def load_aging_config(path: Path | None = None) -> AgingConfig:
    """Load ``path`` (or the shipped ``aging_default.yaml``) and validate every key.

    >>> load_aging_config().alpha
    0.0001
    """
    source = Path(path) if path else DEFAULT_CONFIG
    config = from_mapping(AgingConfig, load_yaml(source), source)
    _validate(config, source)
    return dataclasses.replace(config, source=str(source))


def _validate(config: AgingConfig, source: Path) -> None:
    _check_choices(config.metrics, METRICS, source, "metrics")
    _check_choices(config.include_statuses, STATUSES, source, "include_statuses")
    _check_choices((config.age_groups.method,), AGE_GROUP_METHODS, source, "age_groups.method")
    _check_choices((config.pairwise_correction,), CORRECTIONS, source, "pairwise_correction")
    _check_choices((config.figures.which,), FIGURE_CHOICES, source, "figures.which")
    if not 0.0 < config.alpha < 1.0:
        raise ConfigError(f"{source}: key 'alpha' must be between 0 and 1, got {config.alpha!r}")
    cuts = config.age_groups.cut_points
    if len(cuts) != 3 or list(cuts) != sorted(set(cuts)):
        raise ConfigError(f"{source}: key 'age_groups.cut_points' must be 3 increasing ages, got {list(cuts)}")
    for key in ("summary_top_n", "workers", "figures.top_n", "figures.dpi"):
        section, _, name = key.rpartition(".")
        value = getattr(getattr(config, section) if section else config, name)
        if value < 1:
            raise ConfigError(f"{source}: key '{key}' must be at least 1, got {value!r}")
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
