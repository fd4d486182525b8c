"""What the default preset adds to the paper, checked against scipy/statsmodels or a planted truth:
bootstrap intervals, sex-adjusted partial correlations, multiplicity, Theil-Sen trends, LOWESS curves,
normative z-scores."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import statsmodels.api as sm
from scipy import stats as sps
from statsmodels.stats.multitest import multipletests

from cohort.stats import bootstrap
from cohort.stats.config import METRICS, load_aging_config
from cohort.stats.methods import methods_lines
from cohort.stats.study import AgingResults, run_study
from cohort.stats.trends import age_curve, is_ratio_scale
from cohort.testing.cohorts import cohort_from_values

DEFAULT = dataclasses.replace(load_aging_config(), workers=1)


def _study(ages: np.ndarray, sex: np.ndarray, values: dict, **changes) -> AgingResults:  # type: ignore[type-arg]
    cohort = cohort_from_values(ages, sex, values)
    return run_study(cohort.features, cohort.series, dataclasses.replace(DEFAULT, **changes))


def test_resampled_statistics_equal_scipy_on_the_resampled_data() -> None:
    rng = np.random.default_rng(0)
    age = rng.integers(18, 101, 300).astype(float)  # whole years: many ties
    values = np.round(age + rng.normal(0, 25, 300))  # ties in the values too
    group = np.searchsorted([41, 59, 78], age, side="right") + 1
    counts = bootstrap.resample_counts(300, 20, rng)
    assert (counts.sum(axis=0) == 300).all()
    age_ranks, _ = bootstrap.weighted_midranks(age, counts)
    value_ranks, ties = bootstrap.weighted_midranks(values, counts)
    r = bootstrap.spearman_resamples(age_ranks, value_ranks, counts)
    epsilon = bootstrap.epsilon_squared_resamples(value_ranks, ties, group, counts, 4)
    for j in range(20):
        drawn = np.repeat(np.arange(300), counts[:, j].astype(int))
        assert r[j] == pytest.approx(sps.spearmanr(age[drawn], values[drawn]).statistic, abs=1e-5)
        h = sps.kruskal(*[values[drawn][group[drawn] == g] for g in range(1, 5)]).statistic
        assert epsilon[j] == pytest.approx(h / 299, abs=1e-5)
        oldest = values[drawn][group[drawn] == 4]
        assert bootstrap.median_resamples(values[group == 4], counts[group == 4])[j] == np.median(oldest)


def test_spearman_interval_agrees_with_scipy_bootstrap() -> None:
    rng = np.random.default_rng(1)
    age = rng.uniform(18, 100, 400)
    volume = 300 + 2 * age + rng.normal(0, 60, 400)
    sex = np.where(rng.random(400) < 0.6, "M", "F")
    results = _study(age, sex, {("aorta", "volume_ml"): volume}, analyses=("intervals",))
    row = results.correlations.query("stratum == 'all' and metric == 'volume_ml'").iloc[0]
    reference = sps.bootstrap((age, volume), lambda a, v: sps.spearmanr(a, v).statistic, paired=True,
                              vectorized=False, n_resamples=1000, method="percentile", random_state=3).confidence_interval
    assert row["ci_low"] < row["spearman_r"] < row["ci_high"]
    assert row["ci_low"] == pytest.approx(reference.low, abs=0.02)
    assert row["ci_high"] == pytest.approx(reference.high, abs=0.02)
    kw = results.quartile_tests.query("stratum == 'all' and metric == 'volume_ml'").iloc[0]
    assert kw["epsilon_squared_ci_low"] < kw["epsilon_squared"] < kw["epsilon_squared_ci_high"]
    pair = results.pairwise_tests.query("stratum == 'all' and metric == 'volume_ml' and group_old == '>78'"
                                        " and group_young == '<41'").iloc[0]
    assert pair["median_difference_ci_low"] < pair["median_difference"] < pair["median_difference_ci_high"]
    again = _study(age, sex, {("aorta", "volume_ml"): volume}, analyses=("intervals",))
    assert again.correlations["ci_low"].equals(results.correlations["ci_low"])  # seeded: the same interval


def test_no_interval_from_fewer_than_five_values() -> None:
    """A group of one to four subjects gets no median-difference interval (95 % intervals of a null difference
    covered 0 in 24 % of cohorts with one subject in a group); a sample of four gets no r_s interval."""
    rng = np.random.default_rng(4)
    age = np.r_[rng.uniform(20, 40, 40), np.full(20, 50.0), np.full(3, 70.0), 90.0]  # 40, 20, 3 and 1 per group
    results = _study(age, np.array(["F", "M"] * 32), {("liver", "volume_ml"): rng.normal(0, 1, len(age))},
                     analyses=("intervals",), stratify_by_sex=False)
    pairs = results.pairwise_tests.query("metric == 'volume_ml'").set_index(["group_young", "group_old"])
    with_interval = pairs["median_difference_ci_low"].notna() & pairs["median_difference_ci_high"].notna()
    assert with_interval[with_interval].index.tolist() == [("<41", "41-59")]
    assert pairs["p"].notna().all()  # the tests themselves still run
    assert "given where the sample, or each age group of a pair, held at least 5 values" in " ".join(
        methods_lines(results))
    four = _study(np.array([20.0, 40.0, 60.0, 80.0]), np.array(["F"] * 4), {("liver", "volume_ml"): np.arange(4.0)},
                  analyses=("intervals",), stratify_by_sex=False)
    row = four.correlations.query("metric == 'volume_ml'").iloc[0]
    assert row["spearman_r"] == 1.0 and np.isnan(row["ci_low"]) and np.isnan(row["ci_high"])


def test_a_sex_difference_in_a_cohort_of_younger_men_is_not_an_age_effect_after_adjustment() -> None:
    rng = np.random.default_rng(2)
    n = 2000
    male = rng.random(n) < 0.5
    age = np.where(male, rng.uniform(18, 55, n), rng.uniform(45, 95, n))  # the men are younger
    volume = 1000 + 300 * male + rng.normal(0, 80, n)  # a sex difference and no age effect
    sex = np.where(male, "M", "F")
    results = _study(age, sex, {("liver", "volume_ml"): volume}, analyses=("adjusted",))
    pooled = results.correlations.query("metric == 'volume_ml'").set_index("stratum")
    assert pooled.loc["all", "spearman_r"] < -0.5 and pooled.loc["all", "significant"]  # confounded
    assert not pooled.loc["F", "significant"] and not pooled.loc["M", "significant"]
    adjusted = results.adjusted.query("metric == 'volume_ml'").iloc[0]
    assert adjusted["covariates"] == "sex" and abs(adjusted["partial_r"]) < 0.06 and not adjusted["significant"]
    assert adjusted["ci_low"] < 0 < adjusted["ci_high"]
    # the partial correlation's t-test is the age coefficient's in an OLS of the ranks (statsmodels)
    design = sm.add_constant(np.column_stack([sps.rankdata(age), male.astype(float)]))
    ols = sm.OLS(sps.rankdata(volume), design).fit()
    assert adjusted["p"] == pytest.approx(ols.pvalues[1], rel=1e-6)


def test_an_empty_covariate_cell_is_missing_and_a_numeric_covariate_stays_numeric() -> None:
    """``cohort run`` stores an empty manifest cell as ``""``: the row is left out of the adjustment and
    ``kvp`` stays a number, so the partial correlation's p equals statsmodels' OLS of the ranks."""
    rng = np.random.default_rng(9)
    n = 300
    age, kvp = rng.uniform(18, 100, n), rng.choice([80.0, 100.0, 120.0, 140.0], n)
    sex = np.where(rng.random(n) < 0.5, "M", "F")
    hu = 60 - 0.3 * kvp + 0.2 * age + rng.normal(0, 5, n)
    cells = kvp.astype(int).astype(str).astype(object)
    cells[:3] = ""
    cohort = cohort_from_values(age, sex, {("liver", "mean_hu"): hu}, covariates={"kvp": cells})
    config = dataclasses.replace(DEFAULT, covariates=("kvp",), analyses=("adjusted",))
    row = run_study(cohort.features, cohort.series, config).adjusted.query("metric == 'mean_hu'").iloc[0]
    keep = np.arange(n) >= 3
    design = np.column_stack([np.ones(n - 3), sps.rankdata(age[keep]), sex[keep] == "M", sps.rankdata(kvp[keep])])
    ols = sm.OLS(sps.rankdata(hu[keep]), design.astype(float)).fit()
    assert row["n"] == n - 3
    assert row["p"] == pytest.approx(ols.pvalues[1], rel=1e-6)


def test_rows_without_sex_are_left_out_of_the_adjustment_also_when_one_sex_is_known() -> None:
    """With one known sex and some missing, as with both sexes known, rows without sex are not adjusted for it."""
    rng = np.random.default_rng(4)
    age = rng.uniform(18, 100, 150)
    for sex in (np.array(["F", "M", None] * 50, dtype=object), np.array(["F", "F", None] * 50, dtype=object)):
        row = _study(age, sex, {("liver", "volume_ml"): rng.normal(100, 10, 150)}, analyses=("adjusted",)).adjusted
        assert row.query("metric == 'volume_ml'")["n"].iloc[0] == 100


def test_p_fdr_and_p_bonferroni_cover_the_family_of_structures_and_metrics() -> None:
    rng = np.random.default_rng(4)
    age = rng.uniform(18, 100, 300)
    values = {(f"organ_{i}", "volume_ml"): 100 + (i < 3) * 0.5 * age + rng.normal(0, 20, 300) for i in range(10)}
    results = _study(age, np.where(rng.random(300) < 0.5, "M", "F"), values, analyses=())
    corr = results.correlations.query("stratum == 'all'")
    tested = corr.dropna(subset=["p"])
    assert len(corr) == 20 and len(tested) == 10  # 10 structures x 2 metrics, HU constant: untested
    assert (corr["family_size"] == 10).all()  # untested rows are not in the family
    assert np.allclose(tested["p_fdr"], multipletests(tested["p"], method="fdr_bh")[1])
    assert np.allclose(tested["p_bonferroni"], np.minimum(1.0, 10 * tested["p"]))
    assert set(tested.loc[tested["significant"], "structure"]) == {"organ_0", "organ_1", "organ_2"}


def test_planted_slope_per_decade_is_recovered_with_scipy_theilslopes() -> None:
    rng = np.random.default_rng(5)
    age = rng.uniform(18, 100, 800)
    volume = 400 + 2.5 * age + rng.normal(0, 15, 800)  # +25 ml per decade
    results = _study(age, np.where(rng.random(800) < 0.5, "M", "F"), {("aorta", "volume_ml"): volume},
                     analyses=("trends",))
    trend = results.trends.query("stratum == 'all' and metric == 'volume_ml'").iloc[0]
    fit = sps.theilslopes(volume, age, alpha=0.95)
    assert trend["slope_per_decade"] == pytest.approx(10 * fit.slope, rel=1e-12)
    assert (trend["slope_ci_low"], trend["slope_ci_high"]) == pytest.approx((10 * fit.low_slope, 10 * fit.high_slope))
    assert trend["slope_ci_low"] < 25 < trend["slope_ci_high"] and trend["unit"] == "ml"
    young = np.median(volume[(age >= 18) & (age < 30)])
    assert trend["pct_per_decade"] == pytest.approx(100 * 10 * fit.slope / young)


def test_a_non_monotone_trajectory_shows_in_the_lowess_curve_not_in_r_s() -> None:
    rng = np.random.default_rng(6)
    age = rng.uniform(20, 90, 1500)
    hu = 0.05 * (age - 55) ** 2 + rng.normal(0, 5, 1500)  # lowest at 55
    results = _study(age, np.where(rng.random(1500) < 0.5, "M", "F"), {("liver", "mean_hu"): hu},
                     analyses=("trends",))
    assert abs(results.correlations.query("stratum == 'all' and metric == 'mean_hu'")["spearman_r"].iloc[0]) < 0.1
    x, y = age_curve(age, hu)
    assert 50 < x[np.argmin(y)] < 60 and y[0] - y.min() > 40 and y[-1] - y.min() > 40


def test_planted_outliers_get_large_z_scores_and_the_rest_looks_standard_normal() -> None:
    rng = np.random.default_rng(7)
    n = 1200
    age = rng.uniform(18, 100, n)
    male = rng.random(n) < 0.5
    volume = np.exp(np.log(1500) + 0.2 * male - 0.004 * age + rng.normal(0, 0.1, n))
    planted = rng.choice(n, 12, replace=False)
    volume[planted] *= 0.4  # failed segmentations that stayed above the lower bound
    results = _study(age, np.where(male, "M", "F"), {("liver", "volume_ml"): volume}, analyses=("normative",))
    z = results.zscores.query("metric == 'volume_ml'").set_index("series_id")
    flagged = set(z.index[z["outlier"]])
    planted_ids = {f"S{i:05d}" for i in planted}
    assert planted_ids <= flagged and len(flagged - planted_ids) <= 3
    clean = z.drop(index=list(planted_ids))["z"]
    assert abs(clean.mean()) < 0.1 and clean.std() == pytest.approx(1.0, abs=0.1)
    median_at_60 = results.centiles.query("metric == 'volume_ml' and sex == 'F' and age == 60 and centile == 0.5")
    assert median_at_60["value"].iloc[0] == pytest.approx(1500 * np.exp(-0.24), rel=0.03)
    assert list(z.reset_index().columns[:7]) == ["series_id", "structure", "metric", "sex", "age", "value", "z"]


def test_outlier_threshold_is_configurable() -> None:
    rng = np.random.default_rng(8)
    age = rng.uniform(18, 100, 600)
    hu = 50 + rng.standard_t(3, 600) * 10
    sex = np.where(rng.random(600) < 0.5, "M", "F")
    counts = [_study(age, sex, {("liver", "mean_hu"): hu}, analyses=("normative",),
                     normative=dataclasses.replace(DEFAULT.normative, outlier_z=limit)).zscores
              .query("metric == 'mean_hu'")["outlier"].sum() for limit in (2.0, 3.0)]
    assert counts[0] > counts[1] > 0


def test_pct_per_decade_only_for_metrics_with_a_true_zero() -> None:
    """HU is an interval scale (0 = water by convention): +0.3 HU per decade at a median of -40 HU is not
    "-0.75 % per decade", so ``pct_per_decade`` is NaN for HU while the slope stays (checked with scipy)."""
    rng = np.random.default_rng(9)
    age = rng.uniform(18, 100, 600)
    hu = -40 + 0.03 * age + rng.normal(0, 3, 600)  # a fat-like structure: negative HU, rising slowly
    volume = 20 + 0.1 * age + rng.normal(0, 2, 600)
    results = _study(age, np.where(rng.random(600) < 0.5, "M", "F"),
                     {("thyroid_gland", "mean_hu"): hu, ("thyroid_gland", "volume_ml"): volume}, analyses=("trends",))
    trends = results.trends.query("stratum == 'all'").set_index("metric")
    young = (age >= 18) & (age < 30)
    assert trends.loc["mean_hu", "slope_per_decade"] == pytest.approx(10 * sps.theilslopes(hu, age).slope, rel=1e-12)
    assert trends.loc["mean_hu", "reference_median"] == pytest.approx(np.median(hu[young]))
    assert trends.loc["mean_hu", "reference_median"] < 0 < trends.loc["mean_hu", "slope_per_decade"]
    assert np.isnan(trends.loc["mean_hu", "pct_per_decade"]) and trends.loc["mean_hu", "unit"] == "HU"
    assert trends.loc["volume_ml", "pct_per_decade"] == pytest.approx(
        100 * 10 * sps.theilslopes(volume, age).slope / np.median(volume[young]), rel=1e-12)
    assert {m for m in METRICS if is_ratio_scale(m)} == {"volume_ml", "std_hu", "fat_fraction"}


def test_trends_say_how_many_values_the_slope_used() -> None:
    """Above ``trends.max_subjects`` Theil-Sen runs on a seeded subsample: ``n`` is the sample, ``n_used`` the
    subsample, and the slope is scipy's on exactly that subsample."""
    rng = np.random.default_rng(10)
    n = 1500
    age = rng.uniform(18, 100, n)
    volume = 400 + 2.5 * age + rng.normal(0, 40, n)
    results = _study(age, np.where(np.arange(n) % 2, "M", "F"), {("aorta", "volume_ml"): volume}, analyses=("trends",))
    trends = results.trends.query("metric == 'volume_ml'").set_index("stratum")
    assert list(results.trends.columns[:6]) == ["stratum", "structure", "metric", "unit", "n", "n_used"]
    assert (trends.loc["all", "n"], trends.loc["all", "n_used"]) == (n, DEFAULT.trends.max_subjects)
    assert (trends.loc[["F", "M"], "n_used"] == trends.loc[["F", "M"], "n"]).all()  # 750 each: no subsample
    rng_all = bootstrap.generator(DEFAULT.bootstrap, "all|aorta|volume_ml|trend")
    chosen = np.sort(rng_all.choice(n, DEFAULT.trends.max_subjects, replace=False))
    fit = sps.theilslopes(volume[chosen], age[chosen], alpha=0.95)
    assert trends.loc["all", "slope_per_decade"] == pytest.approx(10 * fit.slope, rel=1e-12)
    assert trends.loc["all", "slope_ci_high"] == pytest.approx(10 * fit.high_slope, rel=1e-12)


def test_the_normative_median_curve_is_the_exact_least_absolute_deviation_fit() -> None:
    """The median curve solves min sum |y - X b| exactly (up to 1e-5 on the fitted values): checked
    against the same problem as a linear programme solved by scipy's HiGHS, at a small and a large n."""
    import patsy
    from scipy.optimize import linprog
    from scipy.sparse import csr_matrix, hstack, identity

    from cohort.stats.normative import fit_normative

    rng = np.random.default_rng(7)
    for n in (150, 2_000):
        age = rng.uniform(18, 90, n)
        volume = 300 + 2 * age + rng.gamma(2, 30, n)
        fit = fit_normative(age, volume, "volume_ml", DEFAULT.normative)
        basis = np.asarray(patsy.dmatrix(f"cr(age, df={DEFAULT.normative.spline_df}, constraints='center')",
                                         {"age": age}))
        p = basis.shape[1]
        exact = linprog(np.r_[np.zeros(p), np.ones(2 * n)], A_eq=hstack([csr_matrix(basis), identity(n), -identity(n)]),
                        b_eq=np.log(volume), bounds=[(None, None)] * p + [(0, None)] * (2 * n), method="highs")
        median, _ = fit.median_and_scale(age)
        assert np.abs(median - basis @ exact.x[:p]).max() < 1e-4, n
