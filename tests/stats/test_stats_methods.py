"""``methods.md`` says what ran and nothing else: the references it cites, the exclusion rule in words,
the excluded measurements by reason, the sample sizes and the side each age-group cut point belongs to."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest

from cohort.stats.config import load_aging_config
from cohort.stats.methods import methods_lines
from cohort.stats.study import AgingResults, run_study
from cohort.testing.cohorts import cohort_from_values, make_cohort

PAPER = dataclasses.replace(load_aging_config(preset="paper"), workers=1)
DEFAULT = load_aging_config()
DEFAULT = dataclasses.replace(DEFAULT, workers=1, bootstrap=dataclasses.replace(DEFAULT.bootstrap, n_resamples=50))


@pytest.fixture(scope="module")
def studies() -> dict[str, AgingResults]:
    cohort = make_cohort(n_subjects=400, n_structures=8, seed=4)
    return {"paper": run_study(cohort.features, cohort.series, PAPER),
            "default": run_study(cohort.features, cohort.series, DEFAULT),
            "no figures": run_study(cohort.features, cohort.series, dataclasses.replace(
                DEFAULT, figures=dataclasses.replace(DEFAULT.figures, which="none")))}


def _text_and_references(results: AgingResults) -> tuple[str, list[str]]:
    lines = methods_lines(results)
    end = lines.index("## References")
    return "\n".join(lines[:end]), [line for line in lines[end + 1:] if line]


@pytest.mark.parametrize(("study", "authors"), [
    ("paper", ["Wasserthal", "Virtanen", "Seabold"]),
    ("no figures", ["Wasserthal", "Virtanen", "Seabold", "Benjamini", "Efron", "Sen PK", "Cole"]),
    ("default", ["Wasserthal", "Virtanen", "Seabold", "Benjamini", "Efron", "Sen PK", "Cole", "Cleveland"]),
])
def test_references_are_those_the_text_cites_in_citation_order(studies: dict[str, AgingResults], study: str,
                                                               authors: list[str]) -> None:
    text, references = _text_and_references(studies[study])
    cited = list(dict.fromkeys(int(n) for n in re.findall(r"\[(\d+)\]", text)))
    assert cited == list(range(1, len(references) + 1))  # every reference cited, numbered as first cited
    assert [r.split("] ", 1)[0] + "]" for r in references] == [f"[{n}]" for n in cited]
    assert len(references) == len(authors) and all(r.split("] ", 1)[1].startswith(a) for r, a in zip(references, authors))


def test_the_exclusion_rule_reads_as_a_sentence(studies: dict[str, AgingResults]) -> None:
    paper, _ = _text_and_references(studies["paper"])
    assert "status was neither ok nor fov_truncated: when it was absent (no voxel segmented) or its volume was " \
           "below the anatomical lower bound of [1], Table S1 (a failed segmentation, whatever its status)" in paper
    assert "structures cut off by the field of view were otherwise kept" in paper
    assert "not ok, fov_truncated" not in paper
    default, _ = _text_and_references(studies["default"])
    assert "status was not ok: when it was absent (no voxel segmented), it was cut off by the field of view" in default


def test_excluded_measurements_by_reason_and_sample_sizes_match_the_tables(studies: dict[str, AgingResults]) -> None:
    results = studies["default"]
    text, _ = _text_and_references(results)
    totals = results.exclusions.groupby("reason")["n_series"].sum()
    assert (f"Of {totals.sum():,} structure measurements (each series x each of "
            f"{results.exclusions['structure'].nunique()} structures, pooled left/right rows included), "
            f"{totals['included']:,} entered the analysis; excluded by reason: series failed processing "
            f"{totals['series_failed']}, no age {totals['no_age']}, absent {totals['absent']}, cut off by the field "
            f"of view {totals['fov_truncated']}, volume below the lower bound {totals['below_lower_bound']}.") in text
    corr = results.correlations
    overall, women = corr.loc[corr["stratum"] == "all", "n"], corr.loc[corr["stratum"] == "F", "n"]
    assert f"n = {overall.min()}-{overall.max()} for the correlation and group tests" in text
    assert f"n = {women.min()}-{women.max()} within women" in text
    used = results.trends["n_used"]
    assert f"n = {used.min()}-{used.max()} values per Theil-Sen slope" in text


def test_the_age_group_edges_are_stated_as_the_code_assigns_them(studies: dict[str, AgingResults]) -> None:
    """The paper's <41, 41-59, 59-78, >78: 41 opens 41-59, 59 opens 59-78, 78 closes 59-78."""
    results = studies["paper"]
    text, _ = _text_and_references(results)
    assert ("age < 41, 41 ≤ age < 59, 59 ≤ age ≤ 78 and age > 78 (an age equal to a cut point joined the older "
            "group at 41 and 59, the younger group at 78)") in text
    assert results.age_groups.assign(np.array([40.9, 41.0, 58.9, 59.0, 78.0, 78.1])).tolist() == [1, 2, 2, 3, 3, 4]


def test_sample_sizes_of_theil_sen_slopes_are_of_the_slopes_computed() -> None:
    """Six women are too few for a slope (n_used 0): the range is of the slopes there are, 54-60, not 0-60."""
    rng = np.random.default_rng(0)
    cohort = cohort_from_values(rng.uniform(18, 100, 60), np.array(["M"] * 54 + ["F"] * 6),
                                {("liver", "volume_ml"): rng.normal(1500, 100, 60)})
    results = run_study(cohort.features, cohort.series, dataclasses.replace(DEFAULT, analyses=("trends",)))
    assert set(results.trends.query("stratum == 'F'")["n_used"]) == {0}
    text, _ = _text_and_references(results)
    assert "n = 54-60 values per Theil-Sen slope" in text
