"""Table 1 of a manuscript: who the study analysed, by age group; and what was left out, by whom.

:func:`characteristics` gives one row per characteristic (n subjects and the series they contributed,
age, sex, every covariate of the manifest) of the subjects the aging study analysed, each once, and one
column per age group plus ``all``: numbers as ``n (%)`` or ``mean (SD)`` / ``median [Q1, Q3]``, ready to
paste. :func:`exclusions_by_group` counts series-level exclusions (the participant flow's reasons) and
measurement-level QC statuses (and rejections in review) by age group and by sex, so a reader sees whether
losses are spread evenly; it counts series and measurements, not subjects.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from cohort.stats.cohort_table import PHASE, AgeGroups, StudyTable, study_status
from cohort.stats.flow import ANALYSED
from cohort.stats.review import rejected, sort_decisions

NO_AGE = "no age"
ALL = "all"
MAX_LEVELS = 6


def age_group_column(series: pd.DataFrame, groups: AgeGroups) -> pd.Series:
    """Each series' age-group label (``no age`` where age is missing), ordered as the groups.

    >>> groups = AgeGroups.from_edges((41, 59, 78))
    >>> age_group_column(pd.DataFrame({"age": [20.0, 41.0, None]}), groups).tolist()
    ['<41', '41-59', 'no age']
    """
    age = pd.to_numeric(series["age"], errors="coerce")
    labels = np.asarray(groups.labels, dtype=object)[np.clip(groups.assign(age.fillna(0).to_numpy()) - 1, 0, 3)]
    labels = np.where(age.isna(), NO_AGE, labels)
    return pd.Series(pd.Categorical(labels, categories=[*groups.labels, NO_AGE]), index=series.index, name="age_group")


def in_manifest(series: pd.DataFrame) -> pd.DataFrame:
    """The series the run's manifest still lists (``in_manifest`` not false): a series a later manifest
    dropped is kept by ``cohort run`` but is no longer part of the cohort.

    >>> in_manifest(pd.DataFrame({"series_id": ["a", "b", "c"], "in_manifest": [True, False, None]}))["series_id"].tolist()
    ['a', 'c']
    """
    if "in_manifest" not in series.columns:
        return series
    return series[series["in_manifest"].ne(False)]


def analysed_subjects(series: pd.DataFrame, table: StudyTable) -> pd.DataFrame:
    """One row per subject the study analysed (:meth:`StudyTable.n_subjects`), as Table 1 describes it.

    Sex and contrast phase are the study's (its first row of the subject, as ``summary.md`` counts them), the
    manifest's other columns those of the scan behind that row. ``age`` is the mean age of the subject's
    analysed scans (``table.scans``): the one scan's age with ``repeated_scans: first`` or ``last``, the scans
    averaged into its values with ``mean``; ``n_series`` counts those scans.
    """
    first = table.values.drop_duplicates("subject_id")[["subject_id", "series_id", "sex", PHASE]]
    ages = table.scans.merge(series[["series_id", "age"]], on="series_id")
    per_subject = ages.assign(age=pd.to_numeric(ages["age"], errors="coerce")).groupby("subject_id").agg(
        age=("age", "mean"), n_series=("series_id", "size"))
    manifest = series.drop(columns=["subject_id", "age", "sex"], errors="ignore")
    return first.merge(per_subject, on="subject_id").merge(manifest, on="series_id", how="left")


def characteristics(series: pd.DataFrame, table: StudyTable, contrast_column: str = "contrast") -> pd.DataFrame:
    """Table 1: ``characteristic`` then one column per age group of ``table`` and ``all``, of the subjects the
    study analysed (:func:`analysed_subjects`: each subject once, at the age the analysis uses for it, so ``n``
    is the subjects of ``summary.md`` and ``methods.md``), with the series they contributed. ``series`` is the
    run's ``series/`` table, ``table`` the study table built from it. The manifest's ``contrast_column`` (the
    study's ``contrast.column``) is shown as the study reads it (with, without, unknown), not as its raw text,
    where ``yes`` and ``YES`` would be two rows and ``venous`` a phase."""
    subjects = analysed_subjects(series, table)
    frame = subjects.assign(age_group=age_group_column(subjects, table.age_groups))
    covariates = _covariates(frame)
    if contrast_column and (contrast_column in covariates.columns or contrast_column in frame.columns):
        covariates = covariates.drop(columns=contrast_column, errors="ignore").assign(
            **{"contrast phase": frame[PHASE].fillna("unknown")})
    columns = {label: frame.index[frame["age_group"] == label] for label in table.age_groups.labels}
    columns[ALL] = frame.index
    rows: list[tuple[str, dict[str, str]]] = [
        ("n (subjects)", {k: str(len(v)) for k, v in columns.items()}),
        ("n (series of these subjects)", {k: str(int(frame.loc[v, "n_series"].sum())) for k, v in columns.items()})]
    rows += _numeric_rows("age (years)", frame["age"], columns)
    rows += _categorical_rows("sex", frame["sex"].fillna("unknown"), columns)
    for name in covariates.columns:
        values = covariates[name]
        numeric = pd.to_numeric(values, errors="coerce")
        if numeric.notna().sum() >= 0.9 * values.notna().sum() > 0:
            rows += _numeric_rows(name, numeric, columns)
        else:
            rows += _categorical_rows(name, values.fillna("missing"), columns)
    return pd.DataFrame([{"characteristic": name, **cells} for name, cells in rows])


def exclusions_by_group(series: pd.DataFrame, features: pd.DataFrame, study: StudyTable,
                        review: pd.DataFrame | None = None) -> pd.DataFrame:
    """Counts per ``reason`` and ``level`` (series or measurement), by age group and by sex; ``counted`` says
    what a count counts (``series``, or ``series x structure`` measurements): never subjects, unlike Table 1.

    Series level: each series the study left out, once, with the reason of the participant flow
    (``study.fates``, ``stats/flow.py``: failed, no age, outside the age range, a repeated scan, rejected
    whole in review, no measurement passed QC and review), so the series the manifest lists minus these
    are the series Table 1 describes. Measurement level: every QC status of the ``features`` rows (``ok``
    included, for the denominators), as the study applies it: ``rejected_in_review`` where the newest
    decision of ``review`` (every reviewer decision, ``review.parquet``; those made on an earlier label map
    of their series are stale and left out, :func:`sort_decisions`) that applies to the row is
    ``reject`` (:func:`rejected`, ahead of QC), else a row below its lower bound counts as
    ``below_lower_bound`` (:func:`study_status`).
    Series the manifest no longer lists are left out (:func:`in_manifest`).
    """
    review = sort_decisions(review, series).applied
    series = in_manifest(series)
    frame = series.assign(age_group=age_group_column(series, study.age_groups), sex=series["sex"].fillna("unknown"))
    fates = frame[["series_id"]].merge(study.fates[["series_id", "reason"]], on="series_id", how="left")
    reasons = fates["reason"].where(fates["reason"] != ANALYSED).set_axis(frame.index)
    series_level = frame.assign(reason=reasons, level="series").dropna(subset=["reason"])
    keys = frame[["series_id", "age_group", "sex"]]
    status = study_status(features).where(~rejected(review, features), "rejected_in_review")
    measured = features[["series_id"]].assign(reason=status).merge(keys, on="series_id")
    rows = pd.concat([series_level[["reason", "level", "age_group", "sex"]], measured.assign(level="measurement")])
    by_group = pd.crosstab([rows["level"], rows["reason"]], rows["age_group"])
    by_sex = pd.crosstab([rows["level"], rows["reason"]], rows["sex"]).add_prefix("sex ")
    table = by_group.join(by_sex).assign(total=by_group.sum(axis=1)).reset_index()
    table.insert(1, "counted", table["level"].map({"series": "series", "measurement": "series x structure"}))
    return table.sort_values(["level", "total"], ascending=[False, False], ignore_index=True)


def _covariates(frame: pd.DataFrame) -> pd.DataFrame:
    """The ``covariates`` map column (list of (name, value) pairs) as one column per name."""
    if "covariates" not in frame:
        return pd.DataFrame(index=frame.index)
    records = [dict(pairs) if pairs is not None else {} for pairs in frame["covariates"]]
    table = pd.DataFrame.from_records(records, index=frame.index)
    return table.replace("", np.nan)


def _numeric_rows(name: str, values: pd.Series, columns: dict[str, pd.Index]) -> list[tuple[str, dict[str, str]]]:
    values = pd.to_numeric(values, errors="coerce")
    mean_sd, median_iqr = {}, {}
    for key, index in columns.items():
        part = values.loc[index].dropna()
        mean_sd[key] = f"{part.mean():.1f} ({part.std():.1f})" if len(part) > 1 else ("" if part.empty else f"{part.iloc[0]:.1f}")
        q1, median, q3 = part.quantile([0.25, 0.5, 0.75]) if len(part) else (np.nan,) * 3
        median_iqr[key] = "" if part.empty else f"{median:.1f} [{q1:.1f}, {q3:.1f}]"
    return [(f"{name}, mean (SD)", mean_sd), (f"{name}, median [Q1, Q3]", median_iqr)]


def _categorical_rows(name: str, values: pd.Series, columns: dict[str, pd.Index]) -> list[tuple[str, dict[str, str]]]:
    levels = values.astype(str).value_counts()
    shown = list(levels.index[:MAX_LEVELS])
    collapsed = values.astype(str).where(values.astype(str).isin(shown), "other")
    order = shown + (["other"] if len(levels) > MAX_LEVELS else [])
    return [(f"{name}: {level}, n (%)", {k: _n_pct(collapsed.loc[v] == level) for k, v in columns.items()})
            for level in order]


def _n_pct(flags: pd.Series) -> str:
    return f"{int(flags.sum())} ({100 * flags.mean():.1f} %)" if len(flags) else "0"
