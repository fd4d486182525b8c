"""`cohort stats` studies the metrics the run's model measured: MR intensities (never HU) and
Dixon fat fractions; a table mixing modalities is refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cohort.stats import run_stats
from cohort.stats.cohort_table import ResultsTableError
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


def test_a_table_mixing_ct_and_mr_is_refused(tmp_path: Path) -> None:
    results, _ = _as_mr(tmp_path, mixed=True)
    with pytest.raises(ResultsTableError, match="several modalities"):
        run_stats(results, figures="none")
