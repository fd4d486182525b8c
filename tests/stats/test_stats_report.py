"""``write_report`` and ``cohort report``: content, freshness of the stats, Table 1, and a real browser."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import subprocess
import tempfile
import threading
import urllib.parse
from pathlib import Path

import matplotlib.image
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from testkit import cohort_cli

from cohort.stats import run_stats, write_report
from cohort.stats.cohort_table import AgeGroups, StudyTable, build_study_table
from cohort.stats.config import load_aging_config
from cohort.stats.freshness import check_stats
from cohort.stats.report import StaleStats, format_p, qc_html
from cohort.stats.report_figures import organ_systems, readable
from cohort.stats.review import rejected
from cohort.stats.review_store import Decision, append_decision, latest_decisions, read_decisions
from cohort.stats.table1 import characteristics, exclusions_by_group
from cohort.stats.review_server import ReviewSite
from cohort.stats.triage import flagged_series, flags, review_queue, suspicious_structures, unexpected_absences
from cohort.testing.cohorts import cohort_from_values, make_cohort

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
GROUPS = AgeGroups.from_edges((41, 59, 78))


def _study(series: pd.DataFrame, features: pd.DataFrame, review: pd.DataFrame | None = None,
           **config: object) -> StudyTable:
    """The study table of the default configuration (with ``config`` keys replaced), as the report builds it."""
    return build_study_table(features, series, dataclasses.replace(load_aging_config(), **config), review)


@pytest.fixture(scope="module")
def results(small_results_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    results = tmp_path_factory.mktemp("report") / "results"
    shutil.copytree(small_results_dir / "features", results / "features")
    shutil.copytree(small_results_dir / "series", results / "series")
    return results


@pytest.fixture(scope="module")
def report(results: Path) -> Path:
    run_stats(results, figures="top")
    return write_report(results, figure_formats=("png", "svg"))


def test_report_is_self_contained_and_complete(report: Path) -> None:
    text = report.read_text()
    assert report.name == "report.html"
    assert re.search(r"""src=["'](?!data:)""", text) is None  # nothing fetched, every image inline
    assert all(not re.match(r"[a-z]+:|/", href) for href in re.findall(r'href="([^"]*)"', text))  # links relative
    for heading in ("Run details", "Table 1: cohort characteristics", "Exclusions by age group and sex",
                    "Who to look at", "Failures", "QC overview", "Aging study", "truncated gzip stream",
                    "Up to date with the run"):
        assert heading in text
    assert "<pre>" not in text and "<table>" in text.split("Aging study")[-1]  # summary rendered as HTML
    assert "Stale" not in text
    figures = report.parent / "report-figures"
    assert {p.name for p in figures.iterdir()} == {"correlation_heatmap.png", "correlation_heatmap.svg",
                                                   "qc_by_system.png", "qc_by_system.svg"}
    assert matplotlib.image.imread(figures / "correlation_heatmap.png").shape[1] > 1500  # 300 dpi


def test_qc_overview_counts_statuses_as_the_study_applies_them(tmp_path: Path) -> None:
    """A structure cut by the field of view and below its lower bound is stored ``fov_truncated``
    (the border is checked first) but excluded as below its bound: the QC overview says so."""
    features = pd.DataFrame({"series_id": ["a", "b", "c"], "structure": ["liver"] * 3,
                             "status": ["fov_truncated", "fov_truncated", "ok"],
                             "volume_ml": [10.0, 900.0, 1500.0], "lower_bound_ml": [500.0] * 3})
    text = qc_html(features, tmp_path, ("png",))
    table = text.split("<details>")[-1]
    header = re.findall(r"<th>(\w*)</th>", table.split("<tbody>")[0])
    cells = re.findall(r"<td>(\w+)</td>", table.split("<tbody>")[1])
    assert dict(zip(header[1:], cells)) == {"structure": "liver", "below_lower_bound": "1", "fov_truncated": "1", "ok": "1"}


def test_missing_stats_say_not_computed_and_nothing_is_run(results: Path, tmp_path: Path) -> None:
    fresh = tmp_path / "results"
    shutil.copytree(results / "features", fresh / "features")
    shutil.copytree(results / "series", fresh / "series")
    text = write_report(fresh).read_text()
    assert "Aging study: not computed" in text and not (fresh / "aging").exists()


def test_stats_of_a_version_with_other_config_keys_still_give_a_report(results: Path, tmp_path: Path) -> None:
    """A stats folder made by a cohort whose configuration had a key this one does not know stopped
    ``cohort report`` with a configuration error nobody could fix but by running the stats again. The page
    is now made, on the default configuration, under the stale banner saying why; ``--strict`` refuses it."""
    copy = tmp_path / "results"
    shutil.copytree(results, copy, ignore=shutil.ignore_patterns("report*", "qc", "aging"))
    run_stats(copy, figures="none")
    marker = copy / "aging" / "correlations.parquet"
    table = pq.read_table(marker)
    recorded = json.loads(table.schema.metadata[b"cohort.aging"])
    recorded["config"]["bootstrap_engine"] = "percentile"  # a key of another version
    pq.write_table(table.replace_schema_metadata({b"cohort.aging": json.dumps(recorded).encode()}), marker)
    page = write_report(copy).read_text()
    assert "Stale statistics" in page and "another version of cohort" in page and "bootstrap_engine" in page
    assert "Table 1: cohort characteristics" in page and "Participant flow" in page
    with pytest.raises(StaleStats, match="another version"):
        write_report(copy, strict=True)


def test_other_stats_folder_and_stale_stats(results: Path, tmp_path: Path) -> None:
    copy = tmp_path / "results"
    shutil.copytree(results, copy, ignore=shutil.ignore_patterns("report*", "qc"))
    run_stats(copy, out_dir=tmp_path / "elsewhere", figures="none")
    assert "Stats: <code>elsewhere/</code>" in write_report(copy, stats_dir=tmp_path / "elsewhere").read_text()
    assert check_stats(copy, tmp_path / "elsewhere").fresh
    newest = sorted((copy / "series").glob("*.parquet"))[-1]
    grown = pd.read_parquet(newest)  # the run grew after the stats: new series
    grown.assign(series_id=grown["series_id"] + "-new").to_parquet(copy / "series" / "part-99999.parquet", index=False)
    state = check_stats(copy, tmp_path / "elsewhere")
    assert not state.fresh and state.problems[0].startswith("series changed after the stats were made")
    assert "Stale statistics" in write_report(copy, stats_dir=tmp_path / "elsewhere").read_text()
    with pytest.raises(StaleStats):
        write_report(copy, stats_dir=tmp_path / "elsewhere", strict=True)
    strict = cohort_cli("report", "--results", str(copy), "--stats", str(tmp_path / "elsewhere"), "--strict")
    assert strict.returncode == 2 and "stats are stale" in strict.stderr
    assert cohort_cli("report", "--results", str(copy), "--stats", str(tmp_path / "elsewhere")).returncode == 0


def test_p_values_underflow_as_text() -> None:
    assert format_p(0.0) == "< 1e-300" and format_p(1e-310) == "1.0e-310" and format_p(0.5) == "0.5"


def test_table1_counts_the_subjects_the_study_analysed(results: Path) -> None:
    series, features = pd.read_parquet(results / "series"), pd.read_parquet(results / "features")
    study = _study(series, features)
    table = characteristics(series, study).set_index("characteristic")
    analysed = series[series["series_id"].isin(study.scans["series_id"])]
    n = table.loc["n (subjects)"].astype(int)
    assert n["all"] == study.n_subjects() == len(analysed) and n.drop("all").sum() == n["all"]
    assert table.loc["n (series of these subjects)", "all"] == str(len(analysed))
    young = analysed[analysed["age"] < 41]
    assert n["<41"] == len(young)
    assert table.loc["sex: M, n (%)", "<41"] == f"{(young['sex'] == 'M').sum()} ({100 * (young['sex'] == 'M').mean():.1f} %)"
    assert table.loc["age (years), mean (SD)", "all"] == f"{analysed['age'].mean():.1f} ({analysed['age'].std():.1f})"


def test_table1_leaves_out_series_the_manifest_no_longer_lists(results: Path) -> None:
    """Series a later manifest dropped are kept in series/ by `cohort run` but are not in the cohort."""
    series, features = pd.read_parquet(results / "series"), pd.read_parquet(results / "features")
    series["in_manifest"] = np.arange(len(series)) % 10 != 0
    listed = series[series["in_manifest"]]
    study = _study(series, features)
    analysed = listed[listed["series_id"].isin(study.scans["series_id"])]
    table = characteristics(series, study).set_index("characteristic")
    assert int(table.loc["n (subjects)", "all"]) == len(analysed) < len(listed)
    assert table.loc["age (years), mean (SD)", "all"] == f"{analysed['age'].mean():.1f} ({analysed['age'].std():.1f})"
    losses = exclusions_by_group(series, features, _study(series, features)).set_index(["level", "reason"])
    assert losses.xs("measurement")["total"].sum() == features["series_id"].isin(listed["series_id"]).sum()
    assert losses.loc[("series", "series_failed"), "total"] == (listed["status"] == "failed").sum()
    assert set(losses["counted"]) == {"series", "series x structure"}


def test_table1_shows_manifest_covariates(results: Path) -> None:
    series, features = pd.read_parquet(results / "series"), pd.read_parquet(results / "features")
    kernel = np.where(np.arange(len(series)) % 4 == 0, "B70f", "B30f")
    series["covariates"] = [[("kernel", k), ("kvp", str(100 + 20 * (i % 2)))] for i, k in enumerate(kernel)]
    table = characteristics(series, _study(series, features)).set_index("characteristic")
    analysed = series["series_id"].isin(_study(series, features).scans["series_id"]).to_numpy()
    kvp = 100 + 20 * (np.arange(len(series))[analysed] % 2)
    assert table.loc["kernel: B30f, n (%)", "all"].startswith(f"{(kernel[analysed] == 'B30f').sum()} (")
    assert table.loc["kvp, mean (SD)", "all"] == f"{kvp.mean():.1f} ({kvp.std(ddof=1):.1f})"


def test_table1_shows_the_contrast_phase_as_the_study_reads_it(results: Path) -> None:
    """The manifest's contrast cells yes/YES/No/venous/blank: the study reads two with, one without and
    two unknown; Table 1 listed the raw text instead (yes and YES two rows, venous a phase of its own)."""
    series, features = pd.read_parquet(results / "series"), pd.read_parquet(results / "features")
    cells = np.array(["yes", "YES", "No", "venous", ""])[np.arange(len(series)) % 5]
    series["covariates"] = [[("contrast", cell)] for cell in cells]
    study = _study(series, features)
    table = characteristics(series, study).set_index("characteristic")
    cells = cells[series["series_id"].isin(study.scans["series_id"]).to_numpy()]
    n = len(cells)
    with_n, without_n = int(np.isin(cells, ["yes", "YES"]).sum()), int((cells == "No").sum())
    assert table.loc["contrast phase: with, n (%)", "all"] == f"{with_n} ({100 * with_n / n:.1f} %)"
    assert table.loc["contrast phase: without, n (%)", "all"] == f"{without_n} ({100 * without_n / n:.1f} %)"
    assert table.loc["contrast phase: unknown, n (%)", "all"].startswith(f"{n - with_n - without_n} (")
    assert study.phase_counts().tolist() == [with_n, without_n, n - with_n - without_n]  # as summary.md counts
    assert not any(name.startswith("contrast:") for name in table.index)
    other_column = characteristics(series, study, contrast_column="phase").set_index("characteristic")
    assert "contrast: YES, n (%)" in other_column.index  # not the study's phase column: listed as it is


@pytest.mark.parametrize("policy", ["first", "last", "mean"])
def test_table1_counts_a_subject_scanned_three_times_once(policy: str, tmp_path: Path) -> None:
    """Table 1 counted series: a subject scanned three times was three in n, sex and age, and could stand in
    two age groups at once. It now counts each analysed subject once, at the age the analysis uses for it
    (``repeated_scans``: its first or last scan's, or the mean of its averaged scans'), says how many series
    these subjects contributed, and its n is the subjects of ``summary.md`` and ``methods.md``."""
    rng = np.random.default_rng(8)
    n = 40
    ages = np.r_[rng.integers(20, 70, n), 0.0, 0.0, 0.0].astype(float)
    ages[n:] = ages[0] + 12.0, ages[0] + 27.0, ages[1] + 9.0  # P0 scanned three times, P1 twice
    subjects = np.array([*(f"P{i}" for i in range(n)), "P0", "P0", "P1"])
    sex = np.where(np.arange(n + 3) % 2, "M", "F")
    sex[n:] = sex[0], sex[0], sex[1]
    cohort = cohort_from_values(ages, sex, {("liver", "volume_ml"): rng.normal(1500, 100, n + 3)}, subject_id=subjects)
    results = cohort.write(tmp_path / "results")
    (tmp_path / "aging.yaml").write_text(f"repeated_scans: {policy}\n")
    run_stats(results, config_path=tmp_path / "aging.yaml", figures="none")
    page = write_report(results).read_text()

    scans = pd.DataFrame({"subject": subjects, "age": ages, "sex": sex})
    chosen = {"first": scans.loc[scans.groupby("subject")["age"].idxmin()],
              "last": scans.loc[scans.groupby("subject")["age"].idxmax()], "mean": scans}[policy]
    truth = chosen.groupby("subject").agg(age=("age", "mean"), sex=("sex", "first"), n=("age", "size"))
    in_page = page.split("Table 1: cohort characteristics")[1].split("</table>")[0]
    age = f"{truth['age'].mean():.1f} ({truth['age'].std():.1f})"
    rows = [re.findall(r"<td>([^<]*)</td>", tr) for tr in in_page.split("<tr>")]
    last_cell = {cells[0]: cells[-1] for cells in rows if len(cells) > 1}  # the `all` column
    assert last_cell["n (subjects)"] == str(n) and last_cell["age (years), mean (SD)"] == age
    analysed = f"{int(truth['n'].sum())} series of {n} subjects were analysed"
    assert f"Subjects with an included measurement: {n}." in (results / "aging" / "summary.md").read_text()
    assert analysed in (results / "aging" / "summary.md").read_text()
    assert analysed in (results / "aging" / "methods.md").read_text()
    flow = pd.read_parquet(results / "aging" / "flow.parquet").set_index("reason")
    assert flow.loc["analysed", ["series", "subjects"]].tolist() == [truth["n"].sum(), n]
    assert flow.loc["in_results", ["series", "subjects"]].tolist() == [n + 3, n]
    assert flow.loc["repeated_scan", "excluded_series"] == (0 if policy == "mean" else 3)
    assert last_cell["n (series of these subjects)"] == str(truth["n"].sum())
    assert "Participant flow" in page
    series = pd.read_parquet(results / "series")
    study = build_study_table(pd.read_parquet(results / "features"), series,
                              dataclasses.replace(load_aging_config(), repeated_scans=policy))
    table = characteristics(series, study).set_index("characteristic")
    assert table.loc["n (subjects)", "all"] == str(n)
    assert table.loc["n (series of these subjects)", "all"] == str(truth["n"].sum())
    assert table.loc["age (years), mean (SD)", "all"] == f"{truth['age'].mean():.1f} ({truth['age'].std():.1f})"
    q1, median, q3 = truth["age"].quantile([0.25, 0.5, 0.75])
    assert table.loc["age (years), median [Q1, Q3]", "all"] == f"{median:.1f} [{q1:.1f}, {q3:.1f}]"
    females = int((truth["sex"] == "F").sum())
    assert table.loc["sex: F, n (%)", "all"] == f"{females} ({100 * females / n:.1f} %)"
    labels = list(study.age_groups.labels)
    per_group = pd.Series(labels)[study.age_groups.assign(truth["age"].to_numpy()) - 1].value_counts()
    assert table.loc["n (subjects)", labels].astype(int).to_dict() == per_group.reindex(labels, fill_value=0).to_dict()


def test_exclusions_by_group_count_every_series_and_measurement(results: Path) -> None:
    series, features = pd.read_parquet(results / "series"), pd.read_parquet(results / "features")
    whole = series["series_id"].iloc[-1]
    review = pd.DataFrame({"series_id": [whole], "structure": [None], "decision": ["reject"],
                           "decided_at": pd.to_datetime(["2026-01-01"], utc=True)})
    table = exclusions_by_group(series, features, _study(series, features, review=review), review).set_index(["level", "reason"])
    assert table.loc[("series", "series_failed"), "total"] == (series["status"] == "failed").sum()
    assert table.loc[("series", "rejected_in_review"), "total"] == 1
    measured = table.xs("measurement")
    assert measured["total"].sum() == len(features)
    assert measured.loc["rejected_in_review", "total"] == (features["series_id"] == whole).sum()
    others = features[features["series_id"] != whole]
    assert measured.loc["below_lower_bound", "total"] == (others["status"] == "below_lower_bound").sum()
    assert (measured["sex F"] + measured["sex M"]).equals(measured["total"])


def test_exclusions_by_group_count_structures_rejected_in_review_as_the_study_does(results: Path,
                                                                                  tmp_path: Path) -> None:
    """A reviewer's reject of one structure excludes that row in the study (``rejected_in_review``, ahead of
    QC); the report's exclusion table showed it under its QC status, as if nobody had looked."""
    copy = tmp_path / "results"
    shutil.copytree(results, copy, ignore=shutil.ignore_patterns("report*", "qc", "aging"))
    features, series = pd.read_parquet(copy / "features"), pd.read_parquet(copy / "series")
    done = series.loc[(series["status"] == "done") & series["age"].notna(), "series_id"].iloc[:3].tolist()
    append_decision(copy, Decision(done[0], "reject", "ab", "liver", "leaks into the kidney"))
    append_decision(copy, Decision(done[1], "reject", "ab", "spleen"))
    append_decision(copy, Decision(done[1], "accept", "cd"))  # a later accept of the whole series undoes it
    append_decision(copy, Decision(done[2], "accept", "ab", "liver"))
    run_stats(copy, figures="none")
    study = pd.read_parquet(copy / "aging" / "exclusions.parquet")
    in_study = study.loc[(study["reason"] == "rejected_in_review") & (study["structure"] == "liver"), "n_series"].sum()
    table = exclusions_by_group(series, features, _study(series, features, review=read_decisions(copy)), read_decisions(copy))
    measured = table[table["level"] == "measurement"].set_index("reason")
    assert measured.loc["rejected_in_review", "total"] == in_study == 1
    page = write_report(copy).read_text().split("Exclusions by age group and sex")[1].split("</table>")[0]
    assert "<td>rejected_in_review</td>" in page


def test_unexpected_absence_and_flag_ranking(results: Path) -> None:
    features = pd.read_parquet(results / "features")
    worst = features["series_id"].iloc[0]
    mask = (features["series_id"] == worst) & features["label"].isin([3, 5, 7])
    planted = features.assign(status=features["status"].where(~mask, "below_lower_bound"))
    planted.loc[(planted["series_id"] == worst) & (planted["label"] == 9), "status"] = "absent"
    planted.loc[(planted["series_id"] == worst) & planted["label"].isin([8, 10]), "status"] = "ok"
    absent = unexpected_absences(planted)
    assert ((absent["series_id"] == worst) & (absent["label"] == 9)).sum() == 1
    top = flagged_series(flags(planted, None), 3)
    assert top["series_id"].iloc[0] == worst and top["n_flags"].iloc[0] >= 4


def test_review_decisions_append_atomically_from_many_threads(tmp_path: Path) -> None:
    def decide(i: int) -> None:
        for j in range(5):
            append_decision(tmp_path, Decision(f"S{i}", "reject" if j % 2 else "accept", f"r{i}", f"s{j}"))

    threads = [threading.Thread(target=decide, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    decisions = read_decisions(tmp_path)
    assert len(decisions) == 30 and list(decisions.columns) == [
        "series_id", "structure", "decision", "reviewer", "comment", "decided_at", "label_map_key"]
    append_decision(tmp_path, Decision("S0", "accept", "r9", "s1", "second look: fine"))
    latest = latest_decisions(read_decisions(tmp_path)).set_index(["series_id", "structure"])
    assert latest.loc[("S0", "s1"), "decision"] == "accept" and len(latest) == 30
    with pytest.raises(ValueError, match="not one of accept, reject"):
        Decision("S0", "maybe", "r1")


def test_newest_decision_counts_series_wide_or_per_structure() -> None:
    at = pd.to_datetime(["2026-01-01", "2026-01-02", "2026-01-03"], utc=True)
    review = pd.DataFrame({"series_id": ["a", "a", "a"], "structure": [None, "liver", None],
                           "decision": ["reject", "accept", "accept"], "decided_at": at})
    rows = pd.DataFrame({"series_id": ["a", "a"], "structure": ["liver", "aorta"]})
    assert rejected(review.iloc[:1], rows).tolist() == [True, True]
    assert rejected(review.iloc[:2], rows).tolist() == [False, True]
    assert rejected(review, rows).tolist() == [False, False]


def _chromium(*args: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    try:
        return subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}", *args],
            capture_output=True, text=True, timeout=120, check=True)
    finally:
        shutil.rmtree(profile, ignore_errors=True)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_screenshot_is_not_blank(report: Path, tmp_path: Path) -> None:
    shot = tmp_path / "shot.png"
    _chromium("--window-size=1280,2000", f"--screenshot={shot}", report.as_uri())
    pixels = matplotlib.image.imread(shot)
    assert pixels.shape[0] >= 1000 and pixels[..., :3].std() > 0.05


def test_table1_uses_the_study_age_groups(report: Path, results: Path) -> None:
    """Table 1 groups ages as the study did (the default config puts 78 in 59-78: ``>78`` last)."""
    descriptives = pd.read_parquet(results / "aging" / "descriptives.parquet")
    study_labels = set(descriptives["age_group"].astype(str))
    assert ">78" in study_labels
    page = report.read_text()
    assert "&gt;78" in page and "&gt;=78" not in page


def test_organ_systems_cover_v3_and_mr_structures_and_keep_ct_systems_first() -> None:
    systems = organ_systems()
    assert systems.index.is_unique
    assert systems["vertebrae_L6"] == "vertebrae"  # v3 only
    assert systems["intervertebral_discs"] == "organs"  # MR only
    assert systems["heart"] == "cardiac" and systems["spleen"] == "organs"
    assert "subcutaneous_fat" not in systems  # VIBESegmentator: "other"


def test_pooled_rows_are_in_their_parts_organ_system(report: Path, results: Path) -> None:
    """The study's pooled rows (kidney, lung, autochthon, ...) were drawn under "other" in the r_s heat map,
    apart from their organ system, though both their parts are in it."""
    systems = organ_systems()
    assert (systems["kidney"], systems["lung"], systems["autochthon"], systems["iliac_artery"]) == (
        "organs", "organs", "muscles", "cardiac")
    correlations = pd.read_parquet(results / "aging" / "correlations.parquet")
    pooled = {"kidney", "autochthon", "iliopsoas"} & set(correlations["structure"])
    assert pooled and not {s for s in pooled if s not in systems}


def test_below_bound_lists_count_truncated_structures_below_their_bound(results: Path) -> None:
    """"Structures most often below their lower bound" counts rows by volume: a structure cut by the field
    of view and below its bound (status ``fov_truncated`` on disk) is one; so do the flags and Table 1's
    exclusions, as the study excludes it."""
    features = pd.read_parquet(results / "features")
    series = pd.read_parquet(results / "series")
    planted = features.index[features["status"] == "fov_truncated"][:7]
    features.loc[planted, "volume_ml"] = 0.5 * features.loc[planted, "lower_bound_ml"]
    below = (features["status"] == "below_lower_bound").sum() + 7
    flag_rows = flags(features, None)
    assert (flag_rows["reason"] == "below_lower_bound").sum() == below
    assert suspicious_structures(features, flag_rows, 100)["below_lower_bound"].sum() == below
    table = exclusions_by_group(series, features, _study(series, features)).set_index(["level", "reason"])
    assert table.loc[("measurement", "below_lower_bound"), "total"] == below
    assert table.loc[("measurement", "fov_truncated"), "total"] == (features["status"] == "fov_truncated").sum() - 7


def test_series_ids_are_shown_as_stored(small_results_dir: Path, tmp_path: Path) -> None:
    """The example series of each suspicious structure is named as in the tables (``site_a_00012``), so a
    reader can find it; only structure names are made readable (``vertebrae_L4`` -> ``vertebrae L4``)."""
    results = tmp_path / "results"
    for name in ("features", "series"):
        table = pd.read_parquet(small_results_dir / name)
        (results / name).mkdir(parents=True)
        table.assign(series_id="site_a_" + table["series_id"]).to_parquet(results / name / "part-0.parquet")
    text = write_report(results).read_text()
    table = text.split("absent where expected</h3>")[1].split("</table>")[0]
    examples = re.findall(r"<td>(site_a\w*)</td>", table)
    assert examples and all(e.startswith("site_a_S") for e in examples)
    assert "site a " not in text


def test_report_and_review_need_only_the_columns_cohort_stats_needs(tmp_path: Path) -> None:
    """``cohort stats`` requires of ``features/`` only ``series_id, structure, status`` (and its metrics): a table
    without ``lower_bound_ml``, ``label`` or ``model`` (an older or hand-made one, as ``cohort_from_values``
    writes) was studied, then ``cohort report`` and the review pages stopped with a KeyError."""
    rng = np.random.default_rng(0)
    age = rng.uniform(20, 90, 40)
    cohort = cohort_from_values(age, np.array(["F", "M"] * 20), {("liver", "volume_ml"): 1000 + 5 * age + rng.normal(0, 30, 40)})
    results = cohort.write(tmp_path / "results")
    assert not {"lower_bound_ml", "label", "model"} & set(cohort.features.columns)
    run_stats(results, figures="none")
    text = write_report(results).read_text()
    assert "Who to look at" in text and "not recorded" in text
    site = ReviewSite.load(results)
    assert "Spot checks" in site.index_page()
    assert "liver" in site.series_page("S00000")


def test_the_structure_figures_shown_are_the_strongest_effects(results: Path, tmp_path: Path) -> None:
    """With ``cohort stats --figures all`` the page showed the first 12 figures by file name (aorta, gallbladder,
    ... whatever their r_s) and left out the strongest effects further down the alphabet."""
    copy = tmp_path / "results"
    shutil.copytree(results, copy, ignore=shutil.ignore_patterns("report*", "qc", "aging"))
    run_stats(copy, figures="all")
    correlations = pd.read_parquet(copy / "aging" / "correlations.parquet")
    everyone = correlations[correlations["stratum"] == "all"].dropna(subset=["spearman_r"])
    drawn = {p.stem for p in (copy / "aging" / "figures").glob("*__*.png")}
    assert len(drawn) > 12
    ranked = everyone.assign(stem=everyone["structure"] + "__" + everyone["metric"], strength=everyone["spearman_r"].abs())
    strongest = ranked[ranked["stem"].isin(drawn)].sort_values("strength", ascending=False)["stem"].head(12)
    shown = re.findall(r'<img alt="([^"]+__[^"]+)"', write_report(copy).read_text())
    assert shown == strongest.tolist()


def test_adjusted_p_values_that_underflow_read_as_p_does(report: Path, results: Path, tmp_path: Path) -> None:
    """A Spearman p of 0 (below the smallest double) read ``< 1e-300`` but its FDR- and Bonferroni-adjusted p
    read ``0`` on the same row, a value no test gives."""
    stats = tmp_path / "aging"
    shutil.copytree(results / "aging", stats)
    correlations = pd.read_parquet(stats / "correlations.parquet")
    correlations.loc[0, ["p", "p_fdr", "p_bonferroni"]] = 0.0
    correlations.to_parquet(stats / "correlations.parquet")
    page = write_report(results, out_path=tmp_path / "report.html", stats_dir=stats).read_text()
    table = page.split("<summary>correlations (")[1].split("</table>")[0]
    header = re.findall(r"<th>(\w+)</th>", table)
    first = re.findall(r"<td>([^<]*)</td>", table.split("<tbody>")[1].split("</tr>")[0])
    cells = dict(zip(header, first))
    assert cells["p"] == cells["p_fdr"] == cells["p_bonferroni"] == "&lt; 1e-300"


def _links(page: Path) -> list[Path]:
    return [page.parent / urllib.parse.unquote(href) for href in re.findall(r'href="([^"]*)"', page.read_text())]


def test_links_are_relative_and_survive_moving_the_folder(report: Path, results: Path, tmp_path: Path) -> None:
    """The page named ``qc/`` and the CSVs but linked to nothing: a reader could not open a full-size overlay,
    the 300 dpi figures or a table's CSV from it. Its links are relative, so the folder moved whole keeps them
    (the overlays' links, which need a real run's images: test_review_browser)."""
    moved = tmp_path / "elsewhere" / "results"
    shutil.copytree(results, moved)
    page = moved / report.name
    links = _links(page)
    assert {"correlations.csv", "qc_by_system.png", "correlation_heatmap.png"} <= {link.name for link in links}
    assert links and all(link.is_file() for link in links)
    outside = write_report(moved, out_path=tmp_path / "pages" / "report.html")  # --out in another folder
    assert _links(outside) and all(link.is_file() for link in _links(outside))


def test_a_card_says_the_newest_decision_that_applies_as_the_study_reads_it(tmp_path: Path) -> None:
    """Accept pancreas, later reject the whole series: the study excludes pancreas (the newer decision applies),
    but the card of that series and structure said "accepted in review" (a structure's own decision won)."""
    results = make_cohort(n_subjects=40, n_structures=6, seed=3).write(tmp_path / "results")
    queue = review_queue(pd.read_parquet(results / "features"), pd.read_parquet(results / "series"), None)
    series_id, structure = queue.flagged[["series_id", "worst"]].iloc[0]
    append_decision(results, Decision(series_id, "accept", "ab", structure, decided_at=pd.Timestamp("2026-01-01", tz="UTC")))
    append_decision(results, Decision(series_id, "reject", "cd", None, "motion", pd.Timestamp("2026-01-02", tz="UTC")))
    assert rejected(read_decisions(results), pd.DataFrame({"series_id": [series_id], "structure": [structure]}))[0]
    flagged = write_report(results).read_text().split("most flagged structures")[1].split("<h3>")[0]
    assert f"<b>{series_id}</b> (rejected in review)" in flagged and "accepted" not in flagged


def test_the_review_lists_do_not_depend_on_the_order_of_the_rows(results: Path) -> None:
    """A run writes its series in the order they finish, which differs from run to run: the example series of
    each failing structure was the first one in row order, so the same results could list other series."""
    features, series = pd.read_parquet(results / "features"), pd.read_parquet(results / "series")
    finished = pd.Series(np.random.default_rng(1).permutation(features["series_id"].unique()))  # another finish order
    order = features["series_id"].map(pd.Series(finished.index, index=finished.to_numpy()))
    shuffled = features.assign(order=order).sort_values("order", kind="stable").drop(columns="order").reset_index(drop=True)
    one, other = review_queue(features, series, None), review_queue(shuffled, series, None)
    pd.testing.assert_frame_equal(one.structures, other.structures)
    pd.testing.assert_frame_equal(one.flagged, other.flagged)


def test_qc_counts_per_structure_follow_the_class_maps_order(tmp_path: Path) -> None:
    """The report's counts per structure were in name order (rib left 1, 10, 11, 12, 2; vertebrae C1 .. T9);
    they now follow the class map's label order."""
    features = make_cohort(n_subjects=60, n_structures=117, seed=3).features
    page = qc_html(features.sort_values("structure"), tmp_path, ("png",))
    listed = re.findall(r"<tr>\s*(?:<th></th>\s*)?<td>([^<]+)</td>", page.split("Counts per structure and status")[1])
    by_label = features.drop_duplicates("structure").sort_values("label")["structure"]
    assert len(listed) == 117 and listed == [readable(name) for name in by_label]


def test_a_report_interrupted_while_written_leaves_the_previous_one_whole(report: Path, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """report.html was written in place: a Ctrl-C (or a full disk) while writing left half a page where the good
    one was. It is now written beside it and renamed over it, so the previous page stays whole."""
    copy = tmp_path / "results"
    shutil.copytree(report.parent, copy, ignore=shutil.ignore_patterns("qc"))
    before = (copy / "report.html").read_bytes()
    real_write_text = Path.write_text

    def interrupted(path: Path, text: str, *args, **kwargs) -> int:  # type: ignore[no-untyped-def]
        real_write_text(path, text[: len(text) // 2], *args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(Path, "write_text", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_report(copy)
    monkeypatch.undo()
    assert (copy / "report.html").read_bytes() == before
    assert not list(copy.glob(".*.tmp"))
