"""``run_stats`` writes tidy Parquet and CSV tables, figures and summary.md."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from cohort.errors import ConfigError
from cohort.stats import run_stats
from cohort.stats.cohort_table import ResultsTableError
from cohort.stats.config import STATS_DIR, load_aging_config
from cohort.stats.outputs import METADATA_KEY, agreement_with_paper, strongest_effects, summary_lines
from cohort.stats.paper import paper_kruskal_p
from cohort.stats.study import AgingResults, run_study
from cohort.testing.cohorts import make_cohort

TABLES = ("correlations", "quartile_tests", "pairwise_tests", "descriptives", "adjusted", "trends", "exclusions",
          "selection", "flow")
PER_SUBJECT_TABLES = ("zscores", "centiles")
CORRELATION_COLUMNS = ["stratum", "structure", "metric", "n", "spearman_r", "p", "ci_low", "ci_high", "family_size",
                       "p_bonferroni", "p_fdr", "significant"]


def test_run_stats_writes_every_table_as_parquet_and_an_equal_csv(small_results_dir: Path, tmp_path: Path) -> None:
    run = run_stats(small_results_dir, tmp_path / "aging")
    assert run.out_dir == tmp_path / "aging" and run.n_series == 600 and run.n_tests == 26  # 12 + pooled kidney, x 2
    for name in (*TABLES, *PER_SUBJECT_TABLES):
        parquet = pd.read_parquet(tmp_path / "aging" / f"{name}.parquet")
        assert len(parquet) > 0 and (tmp_path / "aging" / f"{name}.csv").exists(), name
        pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "aging" / f"{name}.csv"), parquet, check_dtype=False,
                                      check_categorical=False, check_exact=True, obj=name)
    metadata = json.loads(pq.read_schema(tmp_path / "aging" / "correlations.parquet").metadata[METADATA_KEY])
    assert metadata["config"]["alpha"] == 0.05 and metadata["age_group_edges"] == [41.0, 59.0, 78.0]
    assert "Theil-Sen" in (tmp_path / "aging" / "methods.md").read_text()


def test_tables_are_tidy_with_documented_columns(small_results_dir: Path, tmp_path: Path) -> None:
    run_stats(small_results_dir, tmp_path)
    corr = pd.read_parquet(tmp_path / "correlations.parquet")
    assert list(corr.columns) == CORRELATION_COLUMNS
    assert not corr.duplicated(["stratum", "structure", "metric"]).any()
    pairs = pd.read_parquet(tmp_path / "pairwise_tests.parquet")
    assert len(pairs) == 6 * len(corr)
    desc = pd.read_parquet(tmp_path / "descriptives.parquet")
    assert set(desc["age_group"]) == {"all", "<41", "41-59", "59-78", ">78"}
    excl = pd.read_parquet(tmp_path / "exclusions.parquet")
    assert (excl.groupby("structure")["n_series"].sum() == 600).all()


def test_summary_names_the_strongest_planted_effect(small_results_dir: Path, tmp_path: Path) -> None:
    run = run_stats(small_results_dir, tmp_path, preset="paper")
    text = run.summary.read_text()
    assert "| gluteus_minimus_left | mean_hu |" in text
    assert "alpha = 0.0001" in text and "<41, 41-59, 59-78, >78" in text


@pytest.mark.parametrize(("which", "expected"), [("none", 0), ("overview", 1), ("top", 3), ("all", 7)])
def test_figure_choice(tmp_path: Path, which: str, expected: int) -> None:
    results = make_cohort(n_subjects=300, n_structures=3, seed=4).write(tmp_path / "results")
    config = tmp_path / "aging.yaml"
    config.write_text(f"figures: {{which: {which}, top_n: 2}}\n")
    run = run_stats(results, tmp_path / "out", config)
    assert len(run.figures) == expected
    assert all(p.stat().st_size > 1000 for p in run.figures)


def test_missing_results_folder_says_what_to_run(tmp_path: Path) -> None:
    with pytest.raises(ResultsTableError, match="cohort run"):
        run_stats(tmp_path)


def test_summary_compares_with_the_papers_table_s1(results: AgingResults) -> None:
    agreement = agreement_with_paper(results.quartile_tests)
    assert agreement["n"].sum() == 194  # structure-metric pairs with a Table S1 p among the 234
    both = agreement.query("paper_significant and significant")["n"].sum()
    assert both == 8  # every planted effect is one the paper found too
    effects = strongest_effects(results, 30)
    effects = effects[effects["structure"].isin(set(paper_kruskal_p()["structure"]))]  # pooled rows: not in Table S1
    assert len(effects) == 8 and (effects["paper_kruskal_p"] == "< 0.0001").all()
    assert effects.set_index("structure").loc["aorta", "paper_r"] == 0.64


def test_agreement_with_paper_counts_untestable_pairs_apart() -> None:
    """A NaN p (too few series or age groups) is neither agreement nor disagreement with Table S1."""
    tests = pd.DataFrame({
        "stratum": ["all", "all", "all", "all", "F"],
        "structure": ["aorta", "aorta", "urinary_bladder", "pancreas", "pancreas"],
        "metric": ["volume_ml", "mean_hu", "volume_ml", "volume_ml", "volume_ml"],
        "p": [np.nan, 1e-6, np.nan, 0.3, np.nan],
        "significant": [False, True, False, False, False],
    })
    agreement = agreement_with_paper(tests).set_index(["testable", "paper_significant", "significant"])["n"]
    assert agreement.to_dict() == {(False, True, False): 1, (False, False, False): 1,  # aorta volume, bladder volume
                                   (True, True, True): 1, (True, True, False): 1}  # aorta HU, pancreas volume


def test_summary_reports_pairs_not_testable_here() -> None:
    """Subjects all under 41: one age group, so no Kruskal-Wallis p, while Spearman is testable."""
    small = make_cohort(n_subjects=50, n_structures=8, seed=1)
    young = small.series[small.series["age"] < 41]
    results = run_study(small.features[small.features["series_id"].isin(young["series_id"])], young,
                        load_aging_config(preset="paper"))
    assert results.quartile_tests["p"].isna().all() and results.correlations["p"].notna().all()
    text = "\n".join(summary_lines(results))
    not_testable = "not testable here (too few series, age groups or distinct values)"
    assert (f"Spearman significant: 0 of 16 testable structure-metric pairs; Kruskal-Wallis significant: 0 of 0; "
            f"{not_testable}: Spearman 0, Kruskal-Wallis 16.") in text
    assert (f"16 structure-metric pairs in both: {not_testable} 16; of the 0 testable: significant in both 0, "
            "only in the paper 0, only here 0, in neither 0.") in text


def test_table_s1_kruskal_p_has_the_papers_exceptions() -> None:
    paper = paper_kruskal_p().set_index(["structure", "metric"])["paper_kruskal_p"]
    assert paper["urinary_bladder", "volume_ml"] == "0.0041"
    assert paper["lung_lower_lobe_left", "mean_hu"] == "0.2424" and paper["esophagus", "mean_hu"] == "0.0010"


def test_cohort_without_ages_gives_empty_tables_with_their_columns(tmp_path: Path) -> None:
    cohort = make_cohort(n_subjects=50, n_structures=8, seed=1)
    cohort = dataclasses.replace(cohort, series=cohort.series.assign(age=float("nan")))
    run = run_stats(cohort.write(tmp_path / "results"), tmp_path / "aging")
    assert run.n_subjects == 0 and run.n_tests == 0 and run.figures == ()
    corr = pd.read_parquet(tmp_path / "aging" / "correlations.parquet")
    assert corr.empty and list(corr.columns) == CORRELATION_COLUMNS
    excl = pd.read_parquet(tmp_path / "aging" / "exclusions.parquet").groupby("reason")["n_series"].max()
    assert excl["no_age"] == 30 and excl["series_failed"] == 20 and excl["included"] == 0
    assert "No significant age effect." in run.summary.read_text()


def test_figures_argument_overrides_the_config(tmp_path: Path) -> None:
    results = make_cohort(n_subjects=300, n_structures=3, seed=4).write(tmp_path / "results")
    assert len(run_stats(results, tmp_path / "out", figures="overview").figures) == 1
    with pytest.raises(ConfigError, match="figures: 'some'"):
        run_stats(results, tmp_path / "out", figures="some")


def test_paper_r_of_both_sides_is_on_the_pooled_row(tmp_path: Path) -> None:
    """The paper reports kidney volume (r_s = -0.49) for both kidneys together: that is the pooled ``kidney``
    row's comparison, not each side's; only a study without the pooled row compares the sides with it."""
    cohort = make_cohort(n_subjects=600, n_structures=12, seed=3)
    paper = dataclasses.replace(load_aging_config(preset="paper"), workers=1)
    effects = strongest_effects(run_study(cohort.features, cohort.series, paper), 50).set_index(["structure", "metric"])
    assert effects.loc[("kidney", "volume_ml"), "paper_r"] == -0.49
    assert np.isnan(effects.loc[("kidney_left", "volume_ml"), "paper_r"])
    assert effects.loc[("aorta", "volume_ml"), "paper_r"] == 0.64
    unpooled = run_study(cohort.features, cohort.series, dataclasses.replace(paper, pooled_structures=""))
    effects = strongest_effects(unpooled, 50).set_index(["structure", "metric"])
    assert effects.loc[("kidney_left", "volume_ml"), "paper_r"] == -0.49


def test_summary_names_the_configuration_file_not_its_folder(small_results_dir: Path, tmp_path: Path) -> None:
    """A user's --config path would show their directories: summary.md names the file, as methods.md does."""
    private = tmp_path / "home" / "someone" / "project"
    private.mkdir(parents=True)
    (private / "my-aging.yaml").write_text("preset: paper\nfigures: {which: none}\n")
    run = run_stats(small_results_dir, tmp_path / "aging", private / "my-aging.yaml")
    text = run.summary.read_text()
    assert "configuration: `my-aging.yaml`" in text and "someone" not in text
    preset = run_stats(small_results_dir, tmp_path / "preset", preset="paper", figures="none").summary.read_text()
    assert "configuration: `paper.yaml`" in preset and str(STATS_DIR) not in preset


def test_summary_names_the_p_value_that_decides_agreement_with_table_s1(small_results_dir: Path, tmp_path: Path) -> None:
    """Significance here is decided by the configured p (the default: FDR-adjusted), so the Table S1
    line must not say the raw p."""
    lines = run_stats(small_results_dir, tmp_path / "aging", figures="none").summary.read_text().splitlines()
    line = next(line for line in lines if line.startswith("- Kruskal-Wallis vs the paper's Table S1"))
    assert "here: the Benjamini-Hochberg FDR-adjusted p (`p_fdr`) < 0.05" in line, line


def test_rows_measured_by_different_settings_are_refused(small_results_dir: Path, tmp_path: Path) -> None:
    """A stopped ``--recompute changed`` leaves rows of two measurement rules: not one study."""
    import json
    import shutil

    results = tmp_path / "results"
    shutil.copytree(small_results_dir, results)
    series = pd.read_parquet(results / "series")
    key = {"model": "fast", "model_config": "a", "weights": "b"}
    series["run_settings"] = [json.dumps({**key, "measurement": "old" if i % 3 else "new"}) for i in range(len(series))]
    for part in (results / "series").glob("*.parquet"):
        part.unlink()
    series.to_parquet(results / "series" / "part-0.parquet")
    with pytest.raises(ResultsTableError, match="measured by 2 different measurement settings or rules"):
        run_stats(results, tmp_path / "aging")
    series["run_settings"] = json.dumps({**key, "measurement": "new"})
    series.to_parquet(results / "series" / "part-0.parquet")
    assert run_stats(results, tmp_path / "aging", figures="none").summary.exists()
