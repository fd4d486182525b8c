"""The aging study finds what was planted in a synthetic cohort, and nothing else.

These tests check the paper's method (``preset: paper``); the default preset's additions are
tested in ``test_stats_beyond_paper.py``."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps
from statsmodels.stats.multitest import multipletests

from cohort.stats.cohort_table import ResultsTableError
from cohort.stats.config import load_aging_config
from cohort.stats.study import AgingResults, run_study
from cohort.testing.cohorts import SyntheticCohort, make_cohort

PAPER = load_aging_config(preset="paper")


def _joined(corr: pd.DataFrame, effects: pd.DataFrame) -> pd.DataFrame:
    return corr[corr["stratum"] == "all"].merge(effects, on=["structure", "metric"], validate="one_to_one")


def test_planted_effects_found_with_right_sign(results: AgingResults, cohort: SyntheticCohort) -> None:
    planted = _joined(results.correlations, cohort.effects).query("planted_r != 0")
    assert len(planted) == 8
    assert planted["significant"].all()
    assert (np.sign(planted["spearman_r"]) == np.sign(planted["planted_r"])).all()
    assert np.allclose(planted["spearman_r"], planted["planted_r"], atol=0.06)
    kw = results.quartile_tests.merge(planted[["structure", "metric"]], on=["structure", "metric"])
    assert kw["significant"].all() and (kw["epsilon_squared"] > 0.05).all()


def test_oldest_vs_youngest_pair_has_the_planted_direction(results: AgingResults, cohort: SyntheticCohort) -> None:
    pairs = results.pairwise_tests.query("group_young == '<41' and group_old == '>=78'")
    planted = pairs.merge(cohort.effects.query("planted_r != 0"), on=["structure", "metric"])
    assert planted["significant"].all()
    assert (np.sign(planted["rank_biserial"]) == np.sign(planted["planted_r"])).all()
    assert (np.sign(planted["median_difference"]) == np.sign(planted["planted_r"])).all()


def test_no_effect_where_none_was_planted(results: AgingResults, cohort: SyntheticCohort) -> None:
    null = _joined(results.correlations, cohort.effects).query("planted_r == 0")
    assert len(null) == 226
    assert null["significant"].sum() <= 1  # expected 226 * 1e-4 = 0.02
    assert (null["spearman_r"].abs() < 0.08).all()


def test_false_positive_rate_near_alpha_at_five_percent(cohort: SyntheticCohort) -> None:
    config = dataclasses.replace(PAPER, alpha=0.05)
    corr = run_study(cohort.features, cohort.series, config).correlations
    null = _joined(corr, cohort.effects).query("planted_r == 0")
    rate = null["significant"].mean()
    assert 0.01 <= rate <= 0.10, rate  # 0.05 +- 3 binomial SD for 226 tests
    assert sps.kstest(null["p"], "uniform").pvalue > 0.001  # null p-values are uniform


def test_exclusions_match_what_was_planted(results: AgingResults, cohort: SyntheticCohort) -> None:
    table = results.exclusions.pivot(index="structure", columns="reason", values="n_series")
    assert (table.sum(axis=1) == len(cohort.series)).all()  # pooled structures too
    planted = cohort.planted_exclusions.pivot(index="structure", columns="status", values="n_series").fillna(0)
    table = table.loc[planted.index]
    # the paper's rule: a volume below the bound is a failed segmentation, also where the status (QC checks
    # the border first) says fov_truncated; the synthetic cohort has a few such truncated rows
    rows = cohort.features[cohort.features["series_id"].isin(
        cohort.series.loc[cohort.series["age"].notna() & (cohort.series["status"] == "done"), "series_id"])]
    truncated_below = rows[(rows["status"] == "fov_truncated") & (rows["volume_ml"] < rows["lower_bound_ml"])]
    truncated_below = truncated_below.groupby("structure").size().reindex(planted.index, fill_value=0)
    assert truncated_below.sum() > 0
    assert (table["absent"] == planted["absent"]).all()
    assert (table["below_lower_bound"] == planted["below_lower_bound"] + truncated_below).all()
    # the paper excludes by the lower bound only: FOV-truncated rows enter (TotalSegmentator's later rule does not)
    assert "fov_truncated" not in table.columns
    assert (table["included"] == planted["ok"] + planted["fov_truncated"] - truncated_below).all()
    assert (table["series_failed"] == 20).all() and (table["no_age"] == 15).all()
    for reason in ("not_measured", "outside_age_range", "repeated_scan", "rejected_in_review", "not_in_manifest"):
        assert (table[reason] == 0).all()


def test_included_counts_agree_across_tables(results: AgingResults) -> None:
    included = results.exclusions.query("reason == 'included'").set_index("structure")["n_series"]
    corr = results.correlations.set_index(["structure", "metric"])["n"]
    for (structure, _metric), n in corr.items():
        assert n == included[structure]  # HU is missing only where the structure is absent


@pytest.mark.parametrize("seed", [11, 12, 13, 14, 15])
def test_permuted_age_destroys_every_correlation(seed: int) -> None:
    cohort = make_cohort(n_structures=12, seed=seed)  # all eight planted effects and four null structures
    rng = np.random.default_rng(seed)
    series = cohort.series.assign(age=rng.permutation(cohort.series["age"].to_numpy()))
    before = run_study(cohort.features, cohort.series, PAPER).correlations
    assert before.query("structure != 'kidney'")["significant"].sum() == 8  # kidney: pooled from kidney_left
    corr = run_study(cohort.features, series, PAPER).correlations
    assert not corr["significant"].any()
    assert corr["spearman_r"].abs().max() < 0.08


def test_results_equal_scipy_on_the_same_data(results: AgingResults, cohort: SyntheticCohort) -> None:
    rows = cohort.features.merge(cohort.series, on="series_id", suffixes=("", "_series"))
    rows = rows[rows["status"].isin(["ok", "fov_truncated"]) & (rows["status_series"] == "done") & rows["age"].notna()]
    rows = rows[(rows["structure"] == "kidney_left") & ~(rows["volume_ml"] < rows["lower_bound_ml"])]
    age, volume = rows["age"].to_numpy(), rows["volume_ml"].to_numpy()
    key = "structure == 'kidney_left' and metric == 'volume_ml'"
    corr = results.correlations.query(key).iloc[0]
    expected = sps.spearmanr(age, volume)
    assert corr["spearman_r"] == pytest.approx(expected.statistic, rel=1e-12)
    assert corr["p"] == pytest.approx(expected.pvalue, rel=1e-9)
    groups = [volume[age < 41], volume[(age >= 41) & (age < 59)], volume[(age >= 59) & (age <= 78)], volume[age > 78]]
    kw = results.quartile_tests.query(key).iloc[0]
    h = sps.kruskal(*groups)
    assert (kw["h_statistic"], kw["p"]) == pytest.approx((h.statistic, h.pvalue), rel=1e-12)
    assert kw["epsilon_squared"] == pytest.approx(h.statistic / (len(volume) - 1))
    pairs = results.pairwise_tests.query(key)
    raw = [sps.mannwhitneyu(groups[b], groups[a]) for a, b in [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]]
    assert pairs["u_statistic"].tolist() == pytest.approx([r.statistic for r in raw], rel=1e-12)
    adjusted = multipletests([r.pvalue for r in raw], method="bonferroni")[1]
    assert pairs["p_adjusted"].tolist() == pytest.approx(list(adjusted))
    desc = results.descriptives.query(key + " and age_group == 'all'").iloc[0]
    z = (volume - volume.mean()) / volume.std(ddof=1)
    assert desc["ks_p"] == pytest.approx(sps.kstest(z, "norm").pvalue)
    expected_desc = (len(volume), np.median(volume), volume.std(ddof=1), np.percentile(volume, 75) - np.percentile(volume, 25))
    assert (desc["n"], desc["median"], desc["sd"], desc["iqr"]) == pytest.approx(expected_desc)


def test_cut_point_ages_follow_the_papers_groups(results: AgingResults) -> None:
    # the paper writes <41, 41-59, 59-78, >78: 41 and 59 open the older group, 78 closes 59-78
    groups = results.age_groups
    assert groups.labels == ("<41", "41-59", "59-78", ">78")
    ages = np.array([18.0, 40.9, 41.0, 58.99, 59.0, 77.5, 78.0, 78.5, 100.0])
    assert groups.assign(ages).tolist() == [1, 1, 2, 2, 3, 3, 3, 4, 4]


def test_cohort_quartiles_split_subjects_evenly() -> None:
    cohort = make_cohort(n_subjects=2000, n_structures=8, seed=6)
    config = dataclasses.replace(PAPER, age_groups=dataclasses.replace(PAPER.age_groups, method="cohort_quartiles"))
    results = run_study(cohort.features, cohort.series, config)
    sizes = results.descriptives.query("structure == 'aorta' and metric == 'volume_ml' and age_group != 'all'")["n"]
    assert sizes.min() > 0.22 * sizes.sum()


@pytest.mark.parametrize("repeated_scans", ["first", "mean"])
def test_cohort_quartiles_count_each_subject_once(repeated_scans: str) -> None:
    """Ten old subjects scanned 30 times each would pull the cut points up if scans were counted."""
    cohort = make_cohort(n_subjects=400, n_structures=4, seed=6)
    old = cohort.series[(cohort.series["status"] == "done") & (cohort.series["age"] > 85)].head(10)
    repeats = pd.concat([old.assign(series_id=old["series_id"] + f"_r{k}", age=old["age"] + k / 10)
                         for k in range(1, 30)])
    features = pd.concat([cohort.features, *(cohort.features[cohort.features["series_id"] == sid].assign(
        series_id=rid) for sid, rid in zip(repeats["series_id"].str.split("_r").str[0], repeats["series_id"]))])
    base = dataclasses.replace(PAPER, repeated_scans=repeated_scans, workers=1)
    config = dataclasses.replace(base, age_groups=dataclasses.replace(PAPER.age_groups, method="cohort_quartiles"))
    results = run_study(features, pd.concat([cohort.series, repeats]), config)
    done = pd.concat([cohort.series, repeats])
    done = done[(done["status"] == "done") & done["age"].between(*config.age_range)]
    subject_ages = done.groupby("subject_id")["age"].agg("first" if repeated_scans == "first" else "mean")
    assert results.age_groups.edges == pytest.approx(tuple(np.quantile(subject_ages, [0.25, 0.5, 0.75])))


def test_cohort_quartiles_place_averaged_subjects_at_their_mean_age() -> None:
    """With ``repeated_scans: mean`` the analysis places a subject at the mean age of its scans; the
    cut points took the first scan's age, so subjects rescanned 20 years later moved groups."""
    cohort = make_cohort(n_subjects=400, n_structures=4, seed=6)
    done = cohort.series[(cohort.series["status"] == "done") & cohort.series["age"].between(30, 60)].head(100)
    later = done.assign(series_id=done["series_id"] + "_later", age=done["age"] + 20)
    features = pd.concat([cohort.features, *(cohort.features[cohort.features["series_id"] == sid].assign(
        series_id=sid + "_later") for sid in done["series_id"])])
    series = pd.concat([cohort.series, later])
    base = dataclasses.replace(PAPER, repeated_scans="mean", workers=1)
    config = dataclasses.replace(base, age_groups=dataclasses.replace(PAPER.age_groups, method="cohort_quartiles"))
    results = run_study(features, series, config)
    included = series[(series["status"] == "done") & series["age"].between(*config.age_range)]
    by_subject = included.groupby("subject_id")["age"]
    assert results.age_groups.edges == pytest.approx(tuple(np.quantile(by_subject.mean(), [0.25, 0.5, 0.75])))
    assert results.age_groups.edges != pytest.approx(tuple(np.quantile(by_subject.min(), [0.25, 0.5, 0.75])))


def test_sex_strata_are_analysed_separately() -> None:
    small = make_cohort(n_subjects=800, n_structures=9, seed=5)
    config = dataclasses.replace(PAPER, stratify_by_sex=True, workers=1)
    corr = run_study(small.features, small.series, config).correlations
    assert set(corr["stratum"]) == {"all", "F", "M"}
    n = corr.query("structure == 'aorta' and metric == 'volume_ml'").set_index("stratum")["n"]
    assert n["F"] + n["M"] == n["all"]
    assert n["M"] / n["all"] == pytest.approx(0.635, abs=0.05)


def test_one_worker_and_two_workers_agree() -> None:
    small = make_cohort(n_subjects=400, n_structures=40, seed=9)
    base = dataclasses.replace(load_aging_config(), bootstrap=dataclasses.replace(load_aging_config().bootstrap,
                                                                                  n_resamples=200))
    one = run_study(small.features, small.series, dataclasses.replace(base, workers=1))
    two = run_study(small.features, small.series, dataclasses.replace(base, workers=2))
    for name, table in one.tables().items():
        pd.testing.assert_frame_equal(table, two.tables()[name])


def test_tiny_and_constant_samples_give_nan_not_errors() -> None:
    small = make_cohort(n_subjects=30, n_structures=8, seed=2, n_failed_series=0, n_without_age=0)
    features = small.features.assign(volume_ml=np.where(small.features["structure"] == "aorta", 5000.0,  # > bound
                                                         small.features["volume_ml"]))
    results = run_study(features, small.series, dataclasses.replace(PAPER, workers=1))
    aorta = results.correlations.query("structure == 'aorta' and metric == 'volume_ml'").iloc[0]
    assert np.isnan(aorta["spearman_r"]) and not aorta["significant"]


def test_features_of_unknown_series_are_ignored(caplog: pytest.LogCaptureFixture) -> None:
    small = make_cohort(n_subjects=200, n_structures=8, seed=8)
    stray = small.features.head(8).assign(series_id="NOT_IN_SERIES")
    results = run_study(pd.concat([small.features, stray]), small.series, dataclasses.replace(PAPER, workers=1))
    assert "8 rows of series missing from series/" in caplog.text
    assert (results.exclusions.groupby("structure")["n_series"].sum() == 200).all()


def test_duplicate_rows_are_refused() -> None:
    small = make_cohort(n_subjects=100, n_structures=8, seed=8)
    with pytest.raises(ResultsTableError, match="several rows for one series_id and structure"):
        run_study(pd.concat([small.features, small.features.tail(1)]), small.series, PAPER)
