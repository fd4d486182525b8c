"""The participant flow accounts for every series once, and adds up to Table 1 and the exclusions by group."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from cohort.stats.cohort_table import build_study_table
from cohort.stats.config import load_aging_config
from cohort.stats.table1 import characteristics, exclusions_by_group
from cohort.testing.cohorts import cohort_from_values

FATES = {"S00000": "not_in_manifest", "S00001": "series_failed", "S00002": "no_age", "S00003": "outside_age_range",
         "S00005": "repeated_scan", "S00006": "rejected_in_review", "S00008": "no_included_measurement"}


def _planted() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Twelve series, one of each fate: S4 and S5 scan one subject; S7 was rejected whole, then its liver
    accepted (so it is analysed); every structure of S8 is absent."""
    ages = np.array([30.0, 40.0, np.nan, 10.0, 50.0, 60.0, 45.0, 55.0, 65.0, 35.0, 70.0, 25.0])
    subjects = np.array([f"P{i}" for i in range(12)], dtype=object)
    subjects[5] = "P4"
    rng = np.random.default_rng(3)
    cohort = cohort_from_values(ages, np.array(["F", "M"] * 6), {
        ("liver", "volume_ml"): rng.normal(1500, 100, 12), ("spleen", "volume_ml"): rng.normal(200, 20, 12)},
        subject_id=subjects)
    series, features = cohort.series.copy(), cohort.features.copy()
    series.loc[0, "in_manifest"] = False
    series.loc[1, ["status", "error"]] = ["failed", "file not found"]
    features = features[features["series_id"] != "S00001"]
    features.loc[features["series_id"] == "S00008", ["status", "volume_ml"]] = ["absent", 0.0]
    review = pd.DataFrame({"series_id": ["S00006", "S00007", "S00007"], "structure": [None, None, "liver"],
                           "decision": ["reject", "reject", "accept"],
                           "decided_at": pd.to_datetime(["2026-01-01", "2026-01-01", "2026-01-02"], utc=True)})
    return series, features, review


@pytest.mark.parametrize("policy", ["first", "mean"])
def test_every_series_has_one_fate_and_the_flow_adds_up_to_table1(policy: str) -> None:
    series, features, review = _planted()
    study = build_study_table(features, series, dataclasses.replace(load_aging_config(), repeated_scans=policy),
                              review)
    fates = study.fates.set_index("series_id")["reason"]
    expected = dict(FATES, **({"S00005": "analysed"} if policy == "mean" else {}))
    assert {s: r for s, r in fates.items() if r != "analysed"} == {s: r for s, r in expected.items() if r != "analysed"}
    assert fates["S00007"] == "analysed"  # the liver's later accept undoes the whole-series reject for it

    flow = study.flow.set_index("reason")
    assert flow["excluded_series"].sum() == flow.loc["in_results", "series"] - flow.loc["analysed", "series"] == (
        len(series) - (fates == "analysed").sum())
    assert (flow["series"].shift(1) - flow["excluded_series"]).iloc[1:].tolist() == flow["series"].iloc[1:].tolist()
    assert flow.loc["repeated_scan", ["excluded_series", "excluded_subjects"]].tolist() == (
        [0, 0] if policy == "mean" else [1, 0])  # P4 keeps its first scan
    assert flow.loc["series_failed", "excluded_subjects"] == 1

    table1 = characteristics(series, study).set_index("characteristic")["all"]
    assert int(table1["n (subjects)"]) == flow.loc["analysed", "subjects"] == study.n_subjects()
    assert int(table1["n (series of these subjects)"]) == flow.loc["analysed", "series"]

    by_group = exclusions_by_group(series, features, study, review)
    series_level = by_group[by_group["level"] == "series"].set_index("reason")["total"]
    listed = series["in_manifest"].sum()
    assert listed - series_level.sum() == flow.loc["analysed", "series"]  # the manifest's series add up
    assert series_level.to_dict() == {r: 1 for s, r in expected.items() if r not in ("analysed", "not_in_manifest")}
