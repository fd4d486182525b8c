"""The aging config is validated on load; errors name the file and the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from cohort.errors import ConfigError
from cohort.stats.config import DEFAULT_CONFIG, load_aging_config


def test_paper_preset_is_the_published_method() -> None:
    config = load_aging_config(preset="paper")
    assert config.alpha == 0.0001 and config.multiplicity == "none" and config.pairwise_correction == "none"
    assert config.age_groups.method == "paper" and config.age_groups.cut_points == (41.0, 59.0, 78.0)
    assert config.age_groups.cut_point_goes_to == ("older", "older", "younger")  # the paper's "> 78"
    assert config.include_statuses == ("ok", "fov_truncated")  # the lower bound is the paper's only QC rule
    assert config.age_range == (18.0, 100.0) and config.analyses == () and not config.stratify_by_sex
    assert config.figures.curve == "quadratic"


def test_default_preset_is_the_recommended_practice() -> None:
    config = load_aging_config()
    assert config.preset == "default" and config.source == str(DEFAULT_CONFIG)
    assert config.include_statuses == ("ok",) and config.metrics == ("volume_ml", "mean_hu")
    assert config.multiplicity == "fdr_bh" and config.alpha == 0.05 and config.stratify_by_sex
    assert set(config.analyses) == {"intervals", "adjusted", "trends", "normative"}
    assert config.repeated_scans == "first" and config.age_range == (18.0, 100.0)


def test_file_names_its_preset_and_overrides_keys(tmp_path: Path) -> None:
    path = tmp_path / "aging.yaml"
    path.write_text("preset: paper\nalpha: 0.001\nbootstrap: {n_resamples: 200}\n")
    config = load_aging_config(path)
    assert config.preset == "paper" and config.alpha == 0.001 and config.include_statuses == ("ok", "fov_truncated")
    assert config.bootstrap.n_resamples == 200 and config.bootstrap.seed == 2023
    assert load_aging_config(path, preset="default").include_statuses == ("ok",)  # the argument wins


@pytest.mark.parametrize(("text", "key"), [
    ("alpah: 0.01\n", "alpah"),
    ("alpha: high\n", "alpha"),
    ("alpha: 2\n", "alpha"),
    ("metrics: [volume_ml, hu]\n", "metrics"),
    ("include_statuses: [ok, failed]\n", "include_statuses"),
    ("age_groups: {method: deciles}\n", "age_groups.method"),
    ("age_groups: {cut_points: [59, 41, 78]}\n", "age_groups.cut_points"),
    ("age_groups: {cut_point: [41, 59, 78]}\n", "age_groups.cut_point"),
    ("pairwise_correction: tukey\n", "pairwise_correction"),
    ("figures: {which: some}\n", "figures.which"),
    ("figures: {top_n: 0}\n", "figures.top_n"),
    ("workers: 0\n", "workers"),
    ("stratify_by_sex: 1\n", "stratify_by_sex"),
    ("preset: nature\n", "preset"),
    ("multiplicity: holm\n", "multiplicity"),
    ("repeated_scans: median\n", "repeated_scans"),
    ("analyses: [intervals, magic]\n", "analyses"),
    ("age_range: [100, 18]\n", "age_range"),
    ("age_groups: {cut_point_goes_to: [older, up, older]}\n", "age_groups.cut_point_goes_to"),
    ("bootstrap: {confidence: 95}\n", "bootstrap.confidence"),
    ("normative: {outlier_z: -3}\n", "normative.outlier_z"),
    ("figures: {curve: spline}\n", "figures.curve"),
])
def test_bad_values_name_file_and_key(tmp_path: Path, text: str, key: str) -> None:
    path = tmp_path / "aging.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=rf"{path}: .*'{key}'"):
        load_aging_config(path)


def test_partial_file_keeps_other_defaults(tmp_path: Path) -> None:
    path = tmp_path / "aging.yaml"
    path.write_text("alpha: 0.05\nage_groups:\n  method: cohort_quartiles\n")
    config = load_aging_config(path)
    assert config.alpha == 0.05 and config.age_groups.method == "cohort_quartiles"
    assert config.age_groups.cut_points == (41.0, 59.0, 78.0) and config.source == str(path)


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_aging_config(tmp_path / "nope.yaml")
