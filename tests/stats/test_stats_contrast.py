"""Contrast phase in the aging study: a cohort where contrast use falls with age and shifts HU.

The pooled HU-vs-age statistics are confounded by phase; the `adjusted` table (contrast phase
among its covariates for HU metrics, by default) and the per-phase strata recover the planted
age effect, checked against statsmodels' OLS; summary.md and methods.md count the phases per age
group (chi-square checked against scipy). Cohorts without contrast information, or of one phase,
give the same bytes as without this feature (the paper preset's tables are unchanged even when mixed).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from scipy import stats as sps

from cohort.errors import ConfigError
from cohort.stats import run_stats
from cohort.stats.config import load_aging_config
from cohort.stats.methods import methods_lines
from cohort.stats.outputs import summary_lines
from cohort.stats.study import AgingResults, run_study
from cohort.testing.cohorts import SyntheticCohort, cohort_from_values, make_cohort, make_contrast_cohort

DEFAULT = dataclasses.replace(load_aging_config(), workers=1, figures=dataclasses.replace(
    load_aging_config().figures, which="none"))
GROUP_EDGES = (41, 59, 78)


@pytest.fixture(scope="module")
def cohort() -> SyntheticCohort:
    return make_contrast_cohort(n_subjects=3000, seed=11)


@pytest.fixture(scope="module")
def results(cohort: SyntheticCohort) -> AgingResults:
    config = dataclasses.replace(DEFAULT, analyses=("adjusted", "trends"), pooled_structures="",
                                 trends=dataclasses.replace(DEFAULT.trends, max_subjects=5000))  # no subsample
    return run_study(cohort.features, cohort.series, config)


def _truth(cohort: SyntheticCohort, structure: str) -> pd.DataFrame:
    values = cohort.features[cohort.features["structure"] == structure].set_index("series_id")
    series = cohort.series.set_index("series_id")
    return pd.DataFrame({"age": series["age"], "male": (series["sex"] == "M").astype(float),
                         "contrast": [float(dict(p)["contrast"] == "yes") for p in series["covariates"]],
                         "hu": values["mean_hu"], "volume": values["volume_ml"]})


def _row(table: pd.DataFrame, structure: str, metric: str, stratum: str = "all") -> pd.Series:
    return table.query("stratum == @stratum and structure == @structure and metric == @metric").iloc[0]


def test_phase_confounds_pooled_hu_and_the_adjustment_removes_it(cohort: SyntheticCohort,
                                                                   results: AgingResults) -> None:
    """Liver HU has no age effect, only fewer contrast scans in the old: pooled r_s is strongly
    negative and significant; adjusted for sex and phase it is about 0, with statsmodels' p."""
    truth = _truth(cohort, "liver")
    pooled = _row(results.correlations, "liver", "mean_hu")
    assert pooled["spearman_r"] < -0.25 and pooled["significant"]  # the confounding
    adjusted = _row(results.adjusted, "liver", "mean_hu")
    assert adjusted["covariates"] == "sex,contrast" and adjusted["n"] == len(truth)
    assert abs(adjusted["partial_r"]) < 0.05 and not adjusted["significant"]
    assert adjusted["ci_low"] < 0 < adjusted["ci_high"]
    ranks = sm.add_constant(np.column_stack([sps.rankdata(truth["age"]), truth["male"], truth["contrast"]]))
    ols = sm.OLS(sps.rankdata(truth["hu"]), ranks).fit()
    assert adjusted["p"] == pytest.approx(ols.pvalues[1], rel=1e-6)
    # volumes: no phase adjustment (contrast does not change a volume), sex only as before
    assert _row(results.adjusted, "liver", "volume_ml")["covariates"] == "sex"


def test_the_adjusted_estimate_recovers_the_planted_age_effect(cohort: SyntheticCohort, results: AgingResults) -> None:
    """Aorta HU falls 4 HU per decade: OLS of HU on age, sex and phase (statsmodels) recovers -4 per decade
    and its partial correlation t / sqrt(t^2 + df) agrees with ours; the unadjusted slope and r_s overstate it."""
    truth = _truth(cohort, "aorta")
    design = sm.add_constant(truth[["age", "male", "contrast"]].to_numpy())
    ols = sm.OLS(truth["hu"].to_numpy(), design).fit()
    low, high = 10 * ols.conf_int()[1]
    assert low < -4.0 < high  # the cohort plants what it says
    t, df = ols.tvalues[1], ols.df_resid
    ols_partial = t / np.sqrt(t * t + df)
    adjusted = _row(results.adjusted, "aorta", "mean_hu")
    assert adjusted["partial_r"] == pytest.approx(ols_partial, abs=0.03)
    assert adjusted["ci_low"] < ols_partial < adjusted["ci_high"]
    unadjusted = sm.OLS(truth["hu"].to_numpy(), sm.add_constant(truth["age"].to_numpy())).fit()
    assert 10 * unadjusted.params[1] < -8.0  # confounded: more than twice the planted slope
    assert _row(results.correlations, "aorta", "mean_hu")["spearman_r"] < adjusted["partial_r"] - 0.02
    # within each phase, r_s and the Theil-Sen slope see the planted effect, pooled trends do not
    for stratum in ("with_contrast", "without_contrast"):
        within = _row(results.correlations, "aorta", "mean_hu", stratum)
        assert within["spearman_r"] == pytest.approx(adjusted["partial_r"], abs=0.06)
        trend = _row(results.trends, "aorta", "mean_hu", stratum)
        assert trend["slope_ci_low"] < -4.0 < trend["slope_ci_high"]
        phase = truth[truth["contrast"] == (stratum == "with_contrast")]
        assert trend["slope_per_decade"] == pytest.approx(10 * sps.theilslopes(phase["hu"], phase["age"]).slope)
    assert _row(results.trends, "aorta", "mean_hu")["slope_ci_high"] < -6.0
    assert not (results.correlations["stratum"].isin(["with_contrast", "without_contrast"])
                & (results.correlations["metric"] == "volume_ml")).any()  # strata of HU metrics only


def test_summary_and_methods_count_the_phases_per_age_group(cohort: SyntheticCohort, results: AgingResults) -> None:
    truth = _truth(cohort, "liver")
    group = np.searchsorted(GROUP_EDGES, truth["age"], side="right")
    group = np.where(truth["age"] == 78, 2, group)  # the paper's groups: 78 is in 59-78
    table = pd.crosstab(group, truth["contrast"]).to_numpy()  # columns: without, with
    n_with, n_without = int(truth["contrast"].sum()), int((truth["contrast"] == 0).sum())
    p = sps.chi2_contingency(table[:, ::-1]).pvalue
    summary = "\n".join(summary_lines(results))
    shares = ", ".join(f"{label} {w} of {w + wo} ({100 * w / (w + wo):.0f} %)"
                       for label, (wo, w) in zip(("<41", "41-59", "59-78", ">78"), table))
    assert (f"of {len(truth)} analysed subjects {n_with} with contrast, {n_without} without, 0 unknown. "
            f"With contrast, by age group: {shares}; chi-square test of phase by age group p = {p:.1e}") in summary
    assert "HU metrics (mean_hu) pool both phases" in summary
    assert "`covariates` column `sex,contrast`" in summary and "`with_contrast` and `without_contrast`" in summary
    assert "set `contrast: with` in the `cohort manifest` policy" in summary
    assert "## The same effects by sex and contrast phase, adjusted for sex, and per decade" in summary
    methods = "\n".join(methods_lines(results))
    assert f"{n_with} subjects were scanned with a contrast agent and {n_without} without" in methods
    assert f"(chi-square test of phase by age group, p = {p:.1e}). Values of mean attenuation (HU) pool both" in methods
    assert "adjusted for sex; those of mean attenuation (HU) also for contrast phase" in methods
    assert "Tests of mean attenuation (HU) were repeated within each contrast phase." in methods


def test_a_chi_square_p_below_the_smallest_double_is_never_printed_as_zero() -> None:
    """Contrast scans only under 59, native scans only from 59: the chi-square p underflows to 0."""
    age = np.repeat([30.0, 50.0, 70.0, 90.0], 1000)
    contrast = np.where(age < 59, "yes", "no")
    cohort = cohort_from_values(age, np.array(["F", "M"] * 2000), {("liver", "mean_hu"): np.arange(4000.0)},
                                covariates={"contrast": contrast})
    table = pd.crosstab(age < 59, contrast).to_numpy()
    assert sps.chi2_contingency(table).pvalue == 0.0
    results = run_study(cohort.features, cohort.series, dataclasses.replace(DEFAULT, analyses=()))
    summary, methods = "\n".join(summary_lines(results)), "\n".join(methods_lines(results))
    assert "chi-square test of phase by age group p < 1e-300." in summary
    assert "(chi-square test of phase by age group, p < 1e-300)." in methods
    assert "0.0e+00" not in summary + methods


def _with_phase(cohort: SyntheticCohort, cells: list[str] | None) -> SyntheticCohort:
    series = cohort.series.copy()
    if cells is not None:
        series["covariates"] = [[("contrast", c), ("kvp", "120")] for c in cells]
    return SyntheticCohort(cohort.features, series, cohort.effects, cohort.planted_exclusions)


def _outputs(out: Path) -> dict[str, bytes]:
    """Every output's bytes, the Parquet tables as their data (their metadata holds the inputs' digest)."""
    files = {p.name: p.read_bytes() for p in out.iterdir() if p.suffix in (".csv", ".md")}
    files |= {p.name: pd.read_parquet(p).to_csv().encode() for p in out.glob("*.parquet")}
    return files


@pytest.mark.parametrize("preset", ["default", "paper"])
def test_no_contrast_column_one_phase_or_column_off_give_the_same_outputs(tmp_path: Path, preset: str) -> None:
    base = make_cohort(n_subjects=400, n_structures=8, seed=3)
    mixed = list(np.where(np.random.default_rng(5).random(len(base.series)) < 0.6, "yes", "no"))
    runs = {"none": (None, ""), "yes": (["yes"] * len(base.series), ""), "no": (["No "] * len(base.series), ""),
            "blank": ([""] * len(base.series), ""), "off": (mixed, "contrast:\n  column: ''\n")}
    outputs = {}
    for name, (cells, extra) in runs.items():
        results = _with_phase(base, cells).write(tmp_path / name / "results")
        config = tmp_path / name / "aging.yaml"
        config.write_text(f"preset: {preset}\nworkers: 1\n{extra}")
        run_stats(results, tmp_path / name / "out", config, figures="none")
        outputs[name] = _outputs(tmp_path / name / "out")
    for name in ("yes", "no", "blank", "off"):
        assert outputs[name] == outputs["none"], name
    adjusted = pd.read_csv(tmp_path / "none" / "out" / "adjusted.csv")
    assert preset == "paper" or set(adjusted["covariates"]) == {"sex"}


def test_the_paper_preset_keeps_its_tables_on_a_mixed_cohort_and_says_so(tmp_path: Path) -> None:
    """preset: paper counts the phases in summary.md and methods.md, and its method stays the paper's."""
    base = make_cohort(n_subjects=400, n_structures=8, seed=3)
    mixed = list(np.where(np.random.default_rng(5).random(len(base.series)) < 0.6, "yes", "no"))
    config = dataclasses.replace(load_aging_config(preset="paper"), workers=1)
    plain = run_study(base.features, base.series, config)
    both = run_study(base.features, _with_phase(base, mixed).series, config)
    for name, table in plain.tables().items():
        pd.testing.assert_frame_equal(table, both.tables()[name])
    summary = summary_lines(both)
    assert next(line for line in summary if line not in summary_lines(plain)).startswith("- Contrast phase")
    assert any("No analysis adjusts for it" in line for line in summary)


def test_contrast_in_covariates_adjusts_every_metric_once(cohort: SyntheticCohort) -> None:
    config = dataclasses.replace(DEFAULT, covariates=("contrast",), analyses=("adjusted",), pooled_structures="")
    adjusted = run_study(cohort.features, cohort.series, config).adjusted
    assert set(adjusted["covariates"]) == {"sex,contrast"}
    off = dataclasses.replace(DEFAULT, analyses=("adjusted",), pooled_structures="",
                              contrast=dataclasses.replace(DEFAULT.contrast, adjust="none", stratify=False))
    plain = run_study(cohort.features, cohort.series, off)
    assert set(plain.adjusted["covariates"]) == {"sex"} and set(plain.correlations["stratum"]) == {"all", "F", "M"}


def test_unknown_phases_are_left_out_of_the_phase_adjustment_and_counted(cohort: SyntheticCohort) -> None:
    series = cohort.series.copy()
    cells = [dict(p)["contrast"] for p in series["covariates"]]
    cells[:5] = ["", " ", "venous", None, "YES"]
    series["covariates"] = [[("contrast", c)] if c is not None else [] for c in cells]
    config = dataclasses.replace(DEFAULT, analyses=("adjusted",), pooled_structures="")
    results = run_study(cohort.features, series, config)
    assert _row(results.adjusted, "liver", "mean_hu")["n"] == len(series) - 4
    assert _row(results.adjusted, "liver", "volume_ml")["n"] == len(series)
    assert results.table.phase_counts()["unknown"] == 4
    assert any(", 4 unknown." in line for line in summary_lines(results))


def test_contrast_in_covariates_reads_the_phase_as_counted(cohort: SyntheticCohort) -> None:
    """Listed in ``covariates``, the contrast column is the phase the counts and strata read: ``YES`` and
    ``No `` are yes and no (not levels of their own), ``venous`` is unknown and left out, not a third phase."""
    series = cohort.series.copy()
    cells = [dict(p)["contrast"] for p in series["covariates"]]
    clean = dataclasses.replace(DEFAULT, covariates=("contrast",), analyses=("adjusted",), pooled_structures="")
    expected = run_study(cohort.features, series.drop(range(10)), clean).adjusted
    cells[10:60] = [{"yes": "YES", "no": "No "}[c] for c in cells[10:60]]
    cells[:10] = ["venous"] * 10
    series["covariates"] = [[("contrast", c)] for c in cells]
    results = run_study(cohort.features, series, clean)
    assert results.table.phase_counts()["unknown"] == 10
    hu, expected_hu = _row(results.adjusted, "liver", "mean_hu"), _row(expected, "liver", "mean_hu")
    assert hu["n"] == len(series) - 10
    assert hu["partial_r"] == pytest.approx(expected_hu["partial_r"], abs=1e-12)


def test_a_mean_of_scans_of_both_phases_is_of_neither_phase() -> None:
    """``repeated_scans: mean``: a subject scanned native and with contrast has HU averaged over both
    phases; it must not stand in the without_contrast stratum (first scan native) as a native value."""
    rng = np.random.default_rng(5)
    subject = np.r_[np.repeat(np.arange(100), 2), np.arange(100, 300)]  # 100 subjects scanned twice: no, then yes
    phase = np.r_[np.tile(["no", "yes"], 100), np.where(np.arange(200) % 2, "yes", "no")]
    age = rng.integers(18, 101, 300).astype(float)[subject]
    hu = 60.0 + 150.0 * (phase == "yes") + rng.normal(0.0, 10.0, len(subject))
    cohort = cohort_from_values(age, np.where(rng.random(len(subject)) < 0.5, "M", "F"), {("aorta", "mean_hu"): hu},
                                subject_id=subject.astype(str), covariates={"contrast": phase})
    config = dataclasses.replace(DEFAULT, repeated_scans="mean", analyses=("adjusted",), pooled_structures="")
    results = run_study(cohort.features, cohort.series, config)
    assert results.table.phase_counts().to_dict() == {"with": 100, "without": 100, "unknown": 100}
    native = results.descriptives.query("stratum == 'without_contrast' and age_group == 'all' and metric == 'mean_hu'")
    assert native["n"].item() == 100 and native["mean"].item() == pytest.approx(60.0, abs=3.0)
    assert _row(results.adjusted, "aorta", "mean_hu")["n"] == 200


def test_a_mean_takes_its_phase_from_the_scans_whose_intensity_it_averaged() -> None:
    """``repeated_scans: mean``: a native scan whose HU is undefined and a contrast scan average to the contrast
    scan's HU alone, yet the mean was of unknown phase (the native scan's phase counted): it left the
    with_contrast stratum and the phase adjustment."""
    rng = np.random.default_rng(6)
    subject = np.r_[np.repeat(np.arange(100), 2), np.arange(100, 200)]  # 100 subjects scanned twice: native first
    phase = np.r_[np.tile(["no", "yes"], 100), np.where(np.arange(100) % 2, "yes", "no")]
    age = rng.integers(18, 101, 200).astype(float)[subject]
    hu = 60.0 + 150.0 * (phase == "yes") + rng.normal(0.0, 10.0, len(subject))
    hu[0:200:2] = np.nan  # the native scans of the twice-scanned: no HU
    cohort = cohort_from_values(age, np.where(rng.random(len(subject)) < 0.5, "M", "F"), {("aorta", "mean_hu"): hu},
                                subject_id=subject.astype(str), covariates={"contrast": phase})
    config = dataclasses.replace(DEFAULT, repeated_scans="mean", analyses=("adjusted",), pooled_structures="")
    results = run_study(cohort.features, cohort.series, config)
    assert results.table.phase_counts().to_dict() == {"with": 150, "without": 50, "unknown": 0}
    with_contrast = results.descriptives.query(
        "stratum == 'with_contrast' and age_group == 'all' and metric == 'mean_hu'")
    assert with_contrast["n"].item() == 150 and with_contrast["mean"].item() == pytest.approx(210.0, abs=3.0)
    assert _row(results.adjusted, "aorta", "mean_hu")["n"] == 200


@pytest.mark.parametrize("text, key", [("contrast: {adjust: all}\n", "contrast.adjust"),
                                       ("contrast: {column: yes}\n", "contrast.column"),
                                       ("contrast: {column: 'contrast, kvp'}\n", "contrast.column"),
                                       ("contrast: {stratify: maybe}\n", "contrast.stratify"),
                                       ("contrast: {phase: with}\n", "contrast.phase")])
def test_contrast_keys_are_validated_naming_file_and_key(tmp_path: Path, text: str, key: str) -> None:
    path = tmp_path / "aging.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=rf"aging\.yaml: .*'{key}'"):
        load_aging_config(path)


def test_the_presets_contrast_settings() -> None:
    assert dataclasses.astuple(load_aging_config().contrast) == ("contrast", "intensity", True)
    assert dataclasses.astuple(load_aging_config(preset="paper").contrast) == ("contrast", "none", False)
