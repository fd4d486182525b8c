"""``preset: paper`` is the published method to the letter, and the rules every preset shares:
adults only, one scan per subject, pooled left/right rows, reviewer decisions, the selection table."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps
from testkit import cohort_cli

from cohort.stats import run_stats
from cohort.stats.config import load_aging_config
from cohort.stats.methods import methods_lines
from cohort.stats.outputs import summary_lines
from cohort.stats.study import run_study
from cohort.testing.cohorts import cohort_from_values, make_cohort

PAPER = dataclasses.replace(load_aging_config(preset="paper"), workers=1)
DEFAULT = dataclasses.replace(load_aging_config(), workers=1, analyses=())


def _two_groups_at_p(target: float, n: int = 150) -> tuple[np.ndarray, np.ndarray, float]:
    """Ages and values where the <41 and >78 groups differ with a Mann-Whitney p of about ``target``."""
    rng = np.random.default_rng(5)
    noise = rng.standard_normal((4, n))
    low, high = 0.0, 2.0
    for _ in range(60):  # the p-value falls as the shift grows: bisect the shift
        shift = (low + high) / 2
        p = sps.mannwhitneyu(noise[3] + shift, noise[0]).pvalue
        low, high = (shift, high) if p > target else (low, shift)
    age = np.repeat([30.0, 50.0, 70.0, 85.0], n)
    values = np.concatenate([noise[0], noise[1], noise[2], noise[3] + shift])
    return age, values, float(sps.mannwhitneyu(noise[3] + shift, noise[0]).pvalue)


def test_a_pair_between_the_two_thresholds_is_significant_once_corrected() -> None:
    age, values, raw_p = _two_groups_at_p(4e-5)
    assert 1.7e-5 < raw_p < 1e-4  # significant at the paper's 0.0001, not after a second x6
    cohort = cohort_from_values(age, np.where(np.arange(len(age)) % 2, "M", "F"), {("liver", "volume_ml"): values})
    pairs = run_study(cohort.features, cohort.series, PAPER).pairwise_tests
    edge = pairs.query("stratum == 'all' and metric == 'volume_ml' and group_young == '<41' and group_old == '>78'")
    assert edge["p"].iloc[0] == pytest.approx(raw_p, rel=1e-12)
    assert edge["p_adjusted"].iloc[0] == edge["p"].iloc[0] and edge["significant"].iloc[0]
    twice = run_study(cohort.features, cohort.series, dataclasses.replace(PAPER, pairwise_correction="bonferroni"))
    old = twice.pairwise_tests.query("metric == 'volume_ml' and group_young == '<41' and group_old == '>78'")
    assert old["p_adjusted"].iloc[0] == pytest.approx(6 * raw_p) and not old["significant"].iloc[0]


def test_age_78_is_in_the_third_group_as_in_the_paper() -> None:
    ages = np.array([40.0, 41.0, 58.0, 59.0, 78.0, 78.0, 78.5, 90.0] * 5)
    cohort = cohort_from_values(ages, np.array(["F", "M"] * 20), {("liver", "volume_ml"): np.arange(40.0)})
    desc = run_study(cohort.features, cohort.series, PAPER).descriptives
    n = desc.query("metric == 'volume_ml' and age_group != 'all'").set_index("age_group")["n"]
    assert n.to_dict() == {"<41": 5, "41-59": 10, "59-78": 15, ">78": 10}


def test_fov_truncated_rows_enter_only_the_paper_preset() -> None:
    cohort = make_cohort(n_subjects=300, n_structures=8, seed=4)
    truncated = cohort.planted_exclusions.query("status == 'fov_truncated'").set_index("structure")["n_series"]
    paper = run_study(cohort.features, cohort.series, PAPER).exclusions.set_index(["structure", "reason"])["n_series"]
    default = run_study(cohort.features, cohort.series, DEFAULT).exclusions.set_index(["structure", "reason"])["n_series"]
    for structure, n in truncated.items():
        assert default[structure, "fov_truncated"] == n
        assert paper[structure, "included"] == default[structure, "included"] + n
        assert (structure, "fov_truncated") not in paper.index


def test_only_adults_enter_by_default() -> None:
    ages = np.array([16.0, 17.9, 18.0, 60.0, 100.0, 101.0] * 10)
    cohort = cohort_from_values(ages, np.array(["F", "M"] * 30), {("liver", "volume_ml"): np.arange(60.0)})
    results = run_study(cohort.features, cohort.series, DEFAULT)
    assert results.table.values["age"].between(18, 100).all() and len(results.table.values) == 30
    reasons = results.exclusions.set_index("reason")["n_series"]
    assert reasons["outside_age_range"] == 30 and reasons["included"] == 30


@pytest.mark.parametrize(("policy", "value", "age"), [("first", 1.0, 50.0), ("last", 5.0, 62.0), ("mean", 3.0, 56.0)])
def test_repeated_scans_count_once(policy: str, value: float, age: float) -> None:
    rng = np.random.default_rng(1)
    others = rng.uniform(20, 90, 30)
    ages = np.r_[62.0, 50.0, others]  # P0 scanned twice, the later scan listed first
    subjects = np.array(["P0", "P0", *(f"Q{i}" for i in range(30))])
    values = np.r_[5.0, 1.0, rng.normal(size=30)]
    cohort = cohort_from_values(ages, np.array(["F"] * 32), {("liver", "volume_ml"): values}, subject_id=subjects)
    results = run_study(cohort.features, cohort.series, dataclasses.replace(DEFAULT, repeated_scans=policy))
    rows = results.table.values
    assert len(rows) == 31  # 31 subjects, one row each
    kept = rows[~rows["series_id"].isin([f"S{i:05d}" for i in range(2, 32)])]
    assert kept["volume_ml"].tolist() == [value] and kept["age"].tolist() == [age]
    reasons = results.exclusions.set_index("reason")["n_series"]
    assert reasons["repeated_scan"] == 1 and reasons["included"] == 31


def test_averaged_subjects_are_counted_once_when_their_first_scan_lost_a_structure() -> None:
    """``repeated_scans: mean``: a subject whose first scan failed QC for the liver keeps its liver in the
    second scan's row and its spleen in the first's; it is still one subject in the counts and phase table."""
    rng = np.random.default_rng(3)
    ages = np.r_[rng.integers(20, 90, 20), np.full(5, 95.0)].astype(float)
    subjects = np.array([*(f"P{i}" for i in range(20)), *(f"P{i}" for i in range(5))])  # P0-P4 scanned twice
    contrast = np.where(np.arange(25) % 2, "yes", "no")
    contrast[20:] = contrast[:5]
    cohort = cohort_from_values(ages, np.array(["F", "M"] * 12 + ["F"]), {
        ("liver", "volume_ml"): rng.normal(1500, 100, 25), ("spleen", "volume_ml"): rng.normal(200, 20, 25)},
        subject_id=subjects, covariates={"contrast": contrast})
    features = cohort.features.copy()
    lost = (features["structure"] == "liver") & features["series_id"].isin([f"S{i:05d}" for i in range(5)])
    features.loc[lost, ["status", "volume_ml"]] = ["absent", 0.0]
    results = run_study(features, cohort.series, dataclasses.replace(PAPER, repeated_scans="mean"))
    assert results.table.values.groupby("structure")["series_id"].nunique().to_dict() == {"liver": 20, "spleen": 20}
    assert any("Subjects with an included measurement: 20." in line for line in summary_lines(results))
    assert "series of 20 subjects were analysed" in "\n".join(methods_lines(results))
    assert int(results.table.phase_counts().sum()) == 20
    assert results.table.n_subjects() == 20


def test_averaged_age_of_a_metric_is_that_of_the_scans_whose_values_were_averaged() -> None:
    """``repeated_scans: mean`` with the HU undefined (NaN) in some of a subject's scans: the HU mean is over the
    other scans, and so must be its age; the age was the mean over every included scan, so a subject's HU was
    placed at an age it was not measured at (here up to another age group)."""
    rng = np.random.default_rng(11)
    subjects = np.repeat([f"P{i}" for i in range(40)], 3)
    ages = np.round(rng.uniform(20, 95, len(subjects)))
    hu = rng.normal(40, 10, len(subjects))
    hu[rng.random(len(subjects)) < 0.3] = np.nan
    volume = rng.normal(1500, 100, len(subjects))
    cohort = cohort_from_values(ages, np.array(["F", "M"] * 60), {("liver", "volume_ml"): volume,
                                                                  ("liver", "mean_hu"): hu}, subject_id=subjects)
    results = run_study(cohort.features, cohort.series, dataclasses.replace(DEFAULT, repeated_scans="mean"))
    scans = pd.DataFrame({"subject": subjects, "age": ages, "mean_hu": hu, "volume_ml": volume})
    correlations = results.correlations.query("stratum == 'all' and structure == 'liver'").set_index("metric")
    groups = results.age_groups
    for metric in ("mean_hu", "volume_ml"):
        truth = scans.dropna(subset=[metric]).groupby("subject")[["age", metric]].mean()
        assert correlations.loc[metric, "n"] == len(truth)
        assert correlations.loc[metric, "spearman_r"] == pytest.approx(sps.spearmanr(truth["age"], truth[metric])[0])
        per_group = results.descriptives.query(f"stratum == 'all' and metric == '{metric}' and age_group != 'all'")
        expected = pd.Series(groups.assign(truth["age"].to_numpy())).map(dict(enumerate(groups.labels, 1)))
        assert per_group.set_index("age_group")["n"].to_dict() == expected.value_counts().reindex(
            per_group["age_group"], fill_value=0).to_dict()


def test_pooled_rows_sum_volumes_and_weight_hu_by_volume() -> None:
    n = 40
    rng = np.random.default_rng(2)
    left, right = rng.uniform(100, 200, n), rng.uniform(50, 150, n)
    hu_left, hu_right = rng.uniform(20, 40, n), rng.uniform(30, 50, n)
    cohort = cohort_from_values(rng.uniform(20, 90, n), np.array(["F", "M"] * 20), {
        ("kidney_left", "volume_ml"): left, ("kidney_left", "mean_hu"): hu_left,
        ("kidney_right", "volume_ml"): right, ("kidney_right", "mean_hu"): hu_right})
    features = cohort.features.copy()
    features.loc[(features["structure"] == "kidney_right") & (features["series_id"] == "S00003"), "status"] = \
        "below_lower_bound"
    results = run_study(features, cohort.series, PAPER)
    kidney = results.table.values.query("structure == 'kidney'").set_index("series_id")
    assert "S00003" not in kidney.index  # one failed side drops the pooled row
    expected = pd.Series(left + right, index=cohort.series["series_id"]).drop("S00003")
    assert np.allclose(kidney["volume_ml"], expected.loc[kidney.index])
    weighted = (hu_left * left + hu_right * right) / (left + right)
    assert np.allclose(kidney["mean_hu"], pd.Series(weighted, index=cohort.series["series_id"]).loc[kidney.index])
    reasons = results.exclusions.query("structure == 'kidney'").set_index("reason")["n_series"]
    assert reasons["below_lower_bound"] == 1 and reasons["included"] == n - 1


def test_rejected_review_decisions_are_excluded(tmp_path: Path) -> None:
    cohort = make_cohort(n_subjects=120, n_structures=8, seed=3, n_failed_series=0, n_without_age=0)
    results_dir = cohort.write(tmp_path / "results")
    at = pd.Timestamp("2026-11-20 10:00", tz="UTC")
    pd.DataFrame({
        "series_id": ["S00001", "S00001", "S00002", "S00003", "S00003"],
        "structure": [None, "aorta", "pancreas", "pancreas", "pancreas"],
        "decision": ["reject", "accept", "reject", "reject", "accept"],
        "reviewer": ["ab", "ab", "cd", "cd", "cd"], "comment": ["motion", "", "leak", "", "fine after all"],
        "decided_at": [at, at + pd.Timedelta(hours=1), at, at, at + pd.Timedelta(hours=2)],
    }).to_parquet(results_dir / "review.parquet")
    run_stats(results_dir, tmp_path / "aging", preset="paper", figures="none")
    exclusions = pd.read_parquet(tmp_path / "aging" / "exclusions.parquet").set_index(["structure", "reason"])["n_series"]
    # S00001 rejected as a whole, its aorta accepted later; S00002's pancreas rejected; S00003's reject overridden
    expected = {s: int(s != "aorta") + int(s == "pancreas") for s in cohort.features["structure"].unique()}
    for structure, n in expected.items():
        assert exclusions[structure, "rejected_in_review"] == n, structure
    corr = pd.read_parquet(tmp_path / "aging" / "correlations.parquet").set_index(["structure", "metric"])["n"]
    assert corr["pancreas", "volume_ml"] == exclusions["pancreas", "included"]


def test_a_part_rejected_in_review_takes_its_pooled_row_out() -> None:
    """A reviewer's reject of ``kidney_left`` must not come back inside the pooled kidney (sum of both sides)."""
    n = 40
    rng = np.random.default_rng(2)
    cohort = cohort_from_values(rng.uniform(20, 90, n), np.array(["F", "M"] * 20), {
        ("kidney_left", "volume_ml"): rng.uniform(100, 200, n), ("kidney_right", "volume_ml"): rng.uniform(100, 200, n)})
    review = pd.DataFrame({"series_id": ["S00003"], "structure": ["kidney_left"], "decision": ["reject"],
                           "reviewer": ["ab"], "comment": ["leak"],
                           "decided_at": pd.to_datetime(["2026-11-20"], utc=True)})
    results = run_study(cohort.features, cohort.series, PAPER, review)
    used = results.table.values
    assert not used.loc[used["structure"].isin(["kidney_left", "kidney"]), "series_id"].eq("S00003").any()
    reasons = results.exclusions.query("structure == 'kidney'").set_index("reason")["n_series"]
    assert reasons["rejected_in_review"] == 1 and reasons["included"] == n - 1


def test_selection_table_shows_who_qc_removed() -> None:
    rng = np.random.default_rng(3)
    ages = rng.uniform(18, 100, 400)
    cohort = cohort_from_values(ages, np.where(rng.random(400) < 0.5, "F", "M"), {("liver", "volume_ml"): rng.normal(size=400)})
    old = cohort.series.loc[cohort.series["age"] > 78, "series_id"]
    features = cohort.features.assign(status=np.where(cohort.features["series_id"].isin(old[::2]), "below_lower_bound", "ok"))
    selection = run_study(features, cohort.series, PAPER).selection
    excluded = selection.query("reason == 'below_lower_bound'").groupby("age_group")["n"].sum()
    assert list(excluded.index) == [">78"] and excluded[">78"] == len(old[::2])
    shares = selection.groupby(["age_group", "sex"])["share"].sum()
    assert np.allclose(shares, 1.0)


def test_a_failed_series_without_age_is_in_no_age_group_of_the_selection_table() -> None:
    """Three old subjects' series failed and have no age: they are not losses of the youngest group."""
    ages = np.r_[np.full(20, 30.0), np.full(20, 90.0)]
    cohort = cohort_from_values(ages, np.array(["F", "M"] * 20), {("liver", "volume_ml"): np.arange(40.0)})
    series = cohort.series.copy()
    lost = series.index[20:23]
    series.loc[lost, ["status", "age"]] = ["failed", np.nan]
    features = cohort.features[~cohort.features["series_id"].isin(series.loc[lost, "series_id"])]
    results = run_study(features, series, PAPER)
    assert results.exclusions.set_index("reason")["n_series"]["series_failed"] == 3
    assert not (results.selection["reason"] == "series_failed").any()
    assert results.selection.groupby("age_group")["n"].sum().to_dict() == {"<41": 20, ">78": 17}
    assert not any("<41 13.0 %" in line for line in summary_lines(results))  # 3 of 23 "lost" when they counted


def test_series_outside_the_age_range_are_not_losses_of_an_age_group() -> None:
    """The selection table is of series with an age in the range: children and ages over 100 are not studied,
    so they are not exclusions of `<41` or `>78` (they are counted in `exclusions` as outside_age_range)."""
    ages = np.r_[np.full(10, 16.0), np.full(20, 30.0), np.full(20, 90.0), np.full(10, 101.0)]
    cohort = cohort_from_values(ages, np.array(["F", "M"] * 30), {("liver", "volume_ml"): np.arange(60.0)})
    results = run_study(cohort.features, cohort.series, PAPER)
    assert results.exclusions.set_index("reason")["n_series"]["outside_age_range"] == 20
    assert set(results.selection["reason"]) == {"included"}
    assert results.selection.groupby("age_group")["n"].sum().to_dict() == {"<41": 20, ">78": 20}


def test_cli_preset_paper_and_a_covariate_config(tmp_path: Path) -> None:
    rng = np.random.default_rng(9)
    n = 300
    age = rng.uniform(18, 100, n)
    kvp = rng.choice(["100", "120"], n)
    cohort = cohort_from_values(age, np.where(rng.random(n) < 0.5, "M", "F"),
                                {("liver", "mean_hu"): 60 + 10 * (kvp == "100") + rng.normal(0, 5, n)},
                                covariates={"kvp": kvp})
    results_dir = cohort.write(tmp_path / "results")
    paper = cohort_cli("stats", "--results", str(results_dir), "--out", str(tmp_path / "paper"), "--preset", "paper",
                       "--figures", "none")
    assert paper.returncode == 0, paper.stderr
    assert "Preset `paper`" in (tmp_path / "paper" / "summary.md").read_text()
    config = tmp_path / "aging.yaml"
    config.write_text("covariates: [kvp]\nanalyses: [adjusted]\nfigures: {which: none}\n")
    default = cohort_cli("stats", "--results", str(results_dir), "--out", str(tmp_path / "default"), "--config",
                         str(config))
    assert default.returncode == 0, default.stderr
    adjusted = pd.read_parquet(tmp_path / "default" / "adjusted.parquet").query("metric == 'mean_hu'").iloc[0]
    assert adjusted["covariates"] == "sex,kvp" and adjusted["n"] == n
    config.write_text("covariates: [contrast]\n")
    missing = cohort_cli("stats", "--results", str(results_dir), "--config", str(config))
    assert missing.returncode == 2 and "covariate 'contrast'" in missing.stderr + missing.stdout


def test_a_volume_below_its_bound_is_excluded_whatever_its_status() -> None:
    """QC checks the image border first, so a structure cut by the field of view AND below its bound is
    ``fov_truncated`` in features/: the study still excludes it as a failed segmentation (the paper's
    rule), in both presets, counts it under ``below_lower_bound``, and fails the pooled row with it."""
    cohort = make_cohort(n_subjects=300, n_structures=12, seed=4)  # kidney_left and kidney_right: a pooled kidney
    features = cohort.features.copy()
    with_age = features["series_id"].isin(cohort.series.loc[cohort.series["age"].notna(), "series_id"])
    truncated = features.index[(features["status"] == "fov_truncated") & (features["structure"] == "kidney_left")
                               & with_age]
    planted = truncated[:5]
    assert len(planted) == 5
    features.loc[planted, "volume_ml"] = 0.5 * features.loc[planted, "lower_bound_ml"]
    ids = set(features.loc[planted, "series_id"])
    kept = run_study(cohort.features, cohort.series, PAPER).table.values.query("structure == 'kidney'")
    assert kept["series_id"].isin(ids).any()  # the pooled kidney of a truncated side enters the paper preset
    for config, was in ((PAPER, "included"), (DEFAULT, "fov_truncated")):
        before = run_study(cohort.features, cohort.series, config).exclusions.set_index(["structure", "reason"])
        after = run_study(features, cohort.series, config)
        counts = after.exclusions.set_index(["structure", "reason"])["n_series"]
        before = before["n_series"]
        assert counts["kidney_left", "below_lower_bound"] == before["kidney_left", "below_lower_bound"] + 5
        assert counts["kidney_left", was] == before["kidney_left", was] - 5
        used = after.table.values
        assert not used.loc[used["structure"].isin(["kidney_left", "kidney"]), "series_id"].isin(ids).any()
        assert after.correlations.query("stratum == 'all' and structure == 'kidney_left' and metric == 'volume_ml'"
                                        )["n"].iloc[0] == counts["kidney_left", "included"]
