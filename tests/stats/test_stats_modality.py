"""`cohort stats` studies the metrics the run's model measured: MR intensities (never HU) and
Dixon fat fractions; a table mixing modalities is refused."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from testkit import cohort_cli, mr_from_example, write_manifest

import cohort
from cohort.stats import run_stats
from cohort.stats.cohort_table import ResultsTableError
from cohort.stats.review_server import ReviewSite
from cohort.testing.cohorts import make_cohort


def _as_mr(tmp_path: Path, mixed: bool = False) -> tuple[Path, pd.DataFrame]:
    cohort = make_cohort(n_subjects=300, n_structures=3, seed=11)
    features = cohort.features.copy()
    ages = features["series_id"].map(cohort.series.set_index("series_id")["age"])
    rng = np.random.default_rng(0)
    features["mean_intensity"] = features.pop("mean_hu") + 500.0
    features["mean_hu"] = np.nan
    features["fat_fraction"] = 0.05 + 0.002 * ages.fillna(50).to_numpy() + rng.normal(0, 0.01, len(features))
    features["modality"] = "MR"
    if mixed:
        features.loc[features.index[:10], "modality"] = "CT"
    cohort = type(cohort)(features, cohort.series, cohort.effects, cohort.planted_exclusions)
    return cohort.write(tmp_path / "results"), features


def test_mr_results_are_studied_in_intensities_and_fat_fraction(tmp_path: Path) -> None:
    results, features = _as_mr(tmp_path)
    run_stats(results, figures="none")
    correlations = pd.read_parquet(results / "aging" / "correlations.parquet")
    assert set(correlations["metric"]) == {"volume_ml", "mean_intensity", "fat_fraction"}
    row = correlations.query("stratum == 'all' and metric == 'fat_fraction'").iloc[0]
    used = pd.read_parquet(results / "aging" / "descriptives.parquet")
    assert "mean_hu" not in set(used["metric"])
    assert row["spearman_r"] > 0.5  # the planted rise with age
    methods = (results / "aging" / "methods.md").read_text()
    summary = (results / "aging" / "summary.md").read_text()
    assert "Table S1" not in methods and "attenuation" not in methods  # CT's rules, not an MR study's
    assert "Table S1" not in summary


def test_an_mr_study_of_volumes_and_fat_fractions_is_described_as_mr(tmp_path: Path) -> None:
    """An MR run studied for volume and fat fraction only (no intensity metric configured) was taken
    for a CT study: methods.md named the paper's Table S1 lower bounds (an MR model has none) and
    attenuation, and summary.md compared its tests with the paper's CT results."""
    results, _ = _as_mr(tmp_path)
    features = pd.read_parquet(results / "features").assign(lower_bound_ml=np.nan)  # as an MR run writes it
    shutil.rmtree(results / "features")
    features.to_parquet(results / "features")
    config = tmp_path / "aging.yaml"
    config.write_text("metrics: [volume_ml]\n")
    run_stats(results, config_path=config, figures="none")
    correlations = pd.read_parquet(results / "aging" / "correlations.parquet")
    assert set(correlations["metric"]) == {"volume_ml", "fat_fraction"}
    methods = (results / "aging" / "methods.md").read_text()
    summary = (results / "aging" / "summary.md").read_text()
    assert "Table S1" not in methods and "attenuation" not in methods and "signal intensity" in methods
    assert "Table S1" not in summary and "lower bound" not in summary


def test_a_table_mixing_ct_and_mr_is_refused(tmp_path: Path) -> None:
    results, _ = _as_mr(tmp_path, mixed=True)
    with pytest.raises(ResultsTableError, match="several modalities"):
        run_stats(results, figures="none")


def test_run_study_from_a_notebook_refuses_mixed_modalities_and_studies_mr_intensities(tmp_path: Path) -> None:
    """``run_study`` (the documented notebook entry point) applies the same modality rules as ``run_stats``:
    CT and MR volumes are never pooled silently, and an MR table is studied in intensities, not in empty HU."""
    from cohort.stats.config import load_aging_config
    from cohort.stats.study import run_study

    _, mixed = _as_mr(tmp_path / "mixed", mixed=True)
    series = make_cohort(n_subjects=300, n_structures=3, seed=11).series
    with pytest.raises(ResultsTableError, match="several modalities"):
        run_study(mixed, series, load_aging_config(preset="paper"))
    _, mr = _as_mr(tmp_path / "mr")
    correlations = run_study(mr, series, load_aging_config(preset="paper")).correlations
    assert set(correlations["metric"]) == {"volume_ml", "mean_intensity", "fat_fraction"}
    assert (correlations["n"] > 0).all()


def test_mr_pooling_weights_intensities_and_keeps_what_the_model_measures_whole() -> None:
    from cohort.config import ConfigError
    from cohort.stats.pooled import add_pooled_rows, load_pooled_definitions

    features = pd.DataFrame({
        "series_id": ["s1"] * 3,
        "structure": ["kidney_left", "kidney_right", "lung_left"],  # total_mr: the left lung is one class
        "status": ["ok", "fov_truncated", "ok"],
        "volume_ml": [150.0, 50.0, 1500.0],
        "mean_hu": [np.nan] * 3,
        "mean_intensity": [400.0, 800.0, 90.0],
    })
    definitions = load_pooled_definitions("pooled_structures.csv")
    rows = add_pooled_rows(features, definitions).set_index("structure")
    assert rows.loc["kidney", "mean_intensity"] == pytest.approx((400 * 150 + 800 * 50) / 200)
    assert rows.loc["kidney", "volume_ml"] == 200 and rows.loc["kidney", "status"] == "fov_truncated"
    assert np.isnan(rows.loc["kidney", "mean_hu"])
    assert rows.index.tolist().count("lung_left") == 1 and rows.loc["lung_left", "volume_ml"] == 1500
    lobe = features.iloc[[2]].assign(structure="lung_upper_lobe_left")
    with pytest.raises(ConfigError, match="'lung_left' is measured whole and also pooled from measured parts "
                                          r"\(lung_upper_lobe_left\)"):
        add_pooled_rows(pd.concat([features, lobe]), definitions)


def test_cohort_stats_and_report_on_a_real_total_mr_run(examples: Path, tmp_path: Path, prefect_server: str) -> None:
    image, labels = mr_from_example(examples, tmp_path)
    rows = [{"series_id": f"mr{i:02d}", "path": str(image), "age": 30 + 3 * i, "sex": "MF"[i % 2], "labels": str(labels)}
            for i in range(16)]
    manifest = write_manifest(tmp_path / "scans.csv", rows)
    out = tmp_path / "results"
    for command in (("run", "--manifest", str(manifest), "--out", str(out), "--model", "total_mr"),
                    ("stats", "--results", str(out)), ("report", "--results", str(out))):
        done = cohort_cli(*command, api=prefect_server)
        assert done.returncode == 0, done.stderr[-2000:]
    descriptives = pd.read_parquet(out / "aging" / "descriptives.parquet")
    assert "mean_hu" not in set(descriptives["metric"]) and "mean_intensity" in set(descriptives["metric"])
    exclusions = pd.read_parquet(out / "aging" / "exclusions.parquet").set_index(["structure", "reason"])["n_series"]
    assert exclusions["lung_left", "absent"] == 16  # the model's own whole-lung rows (the slab holds no lung)
    assert exclusions["kidney", "fov_truncated"] == 16  # pooled from the two (cut) kidneys
    assert "not a CT" not in (out / "report.html").read_text()
    stored = pd.read_parquet(out / "features").query("series_id == 'mr00'").sort_values("label").reset_index(drop=True)
    measured = cohort.measure(image, labels, series_id="mr00", model="total_mr")  # the notebook path, same rows
    pd.testing.assert_frame_equal(measured, stored, check_dtype=False)
    page = ReviewSite.load(out).series_page("mr00")  # the review site's structure table: intensities, no HU
    assert "<th>mean_intensity</th>" in page and "<th>mean_hu</th>" not in page
