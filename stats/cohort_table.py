"""Which measurements enter the aging study, and why the others do not.

The unit of exclusion is one subject (series) and one structure, as in the paper: a
segmentation that failed QC drops that structure for that subject only. Every manifest row
is accounted for per structure, with one reason, the first that applies:

1. ``not_in_manifest``: a later manifest no longer lists the series (kept by ``cohort run``);
2. ``series_failed``: the series did not finish (``series.status != "done"``);
3. ``no_age``: the series has no age, so it cannot be placed on the age axis;
4. ``outside_age_range``: the age lies outside ``age_range`` (adults 18-100 by default);
5. ``repeated_scan``: another scan of the same ``subject_id`` represents the subject
   (``repeated_scans: first | last``; with ``mean`` the later scans' included rows are
   averaged into the first and counted here);
6. ``not_measured``: the series finished but has no row for this structure;
7. ``rejected_in_review``: the newest reviewer decision for the row is ``reject`` (``review.py``), or,
   for a pooled row, for one of its parts; only decisions made on the label map the row was measured
   on count (a decision on an earlier segmentation of the series is stale, logged, never applied);
8. the QC status of the row when it is not in ``include_statuses`` (``absent``,
   ``fov_truncated``, ``below_lower_bound``), where a measured row whose ``volume_ml`` is
   below its ``lower_bound_ml`` counts as ``below_lower_bound`` whatever its status says
   (:func:`study_status`);
9. otherwise ``included``.
"""

from __future__ import annotations

import dataclasses

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cohort.errors import RunCannotStart
from cohort.provenance import RunKey
from cohort.stats.config import STATUSES, AgingConfig
from cohort.stats.flow import participant_flow, series_fates
from cohort.stats.reasons import (BELOW_LOWER_BOUND, INCLUDED, NO_AGE, NOT_IN_MANIFEST, NOT_MEASURED,
                                   OUTSIDE_AGE_RANGE, REJECTED_IN_REVIEW, REPEATED_SCAN, SERIES_FAILED,
                                   SERIES_REASONS)
from cohort.stats.pooled import add_pooled_rows, applicable_definitions, load_pooled_definitions
from cohort.stats.review import load_review, rejected, sort_decisions

log = logging.getLogger(__name__)

FEATURE_COLUMNS = ("series_id", "structure", "status")
SERIES_COLUMNS = ("series_id", "age", "sex", "status")
PHASE = "contrast_phase"  # the study table's column of the judged contrast phase: with, without or missing
PHASES = ("with", "without")
PHASE_WORDS = {"yes": "with", "no": "without", "with": "with", "without": "without", "true": "with", "false": "without"}


class ResultsTableError(RunCannotStart):
    """A results table is missing or malformed; the message names it and says what to run."""


@dataclass(frozen=True)
class ResultTables:
    """The tables ``cohort run`` writes that the study reads, and the reviewers' decisions."""

    features: pd.DataFrame
    series: pd.DataFrame
    review: pd.DataFrame | None = None


@dataclass(frozen=True)
class AgeGroups:
    """Four age groups cut at ``edges``; ``to_older[i]``: an age equal to ``edges[i]`` joins the older group."""

    edges: tuple[float, float, float]
    labels: tuple[str, str, str, str]
    to_older: tuple[bool, bool, bool] = (True, True, True)

    @classmethod
    def from_edges(cls, edges: tuple[float, ...], to_older: tuple[bool, ...] = (True, True, True)) -> AgeGroups:
        """Groups with labels in the paper's style: ``<41, 41-59, 59-78, >78`` (``<=`` / ``>=`` where closed).

        >>> AgeGroups.from_edges((41, 59, 78), (True, True, False)).labels
        ('<41', '41-59', '59-78', '>78')
        """
        a, b, c = (float(e) for e in edges)
        first = f"<{a:g}" if to_older[0] else f"<={a:g}"
        last = f">={c:g}" if to_older[2] else f">{c:g}"
        return cls((a, b, c), (first, f"{a:g}-{b:g}", f"{b:g}-{c:g}", last), tuple(bool(t) for t in to_older))

    def assign(self, age: np.ndarray) -> np.ndarray:
        """Group number 1..4 per age: one step up for every cut point passed (or reached, when it goes older)."""
        age = np.asarray(age, dtype=float)
        steps = [age >= edge if older else age > edge for edge, older in zip(self.edges, self.to_older)]
        return (np.sum(steps, axis=0) + 1).astype(np.int8)


@dataclass(frozen=True)
class StudyTable:
    """The study's input: one row per included subject and structure, a column per metric."""

    values: pd.DataFrame
    exclusions: pd.DataFrame
    selection: pd.DataFrame
    age_groups: AgeGroups
    scans: pd.DataFrame  # the analysed scans: series_id, subject_id of every series with an included measurement
    fates: pd.DataFrame  # series_id, subject_id and the one reason each series is analysed or left out
    covariates: tuple[str, ...] = ()
    modality: str = "CT"  # of the run's model: MR has no Hounsfield units and no lower bounds (Table S1 is of CTs)

    @property
    def is_mr(self) -> bool:
        return self.modality == "MR"

    @property
    def flow(self) -> pd.DataFrame:
        """The participant flow from every series in the results to the analysed ones (``stats/flow.py``)."""
        return participant_flow(self.fates)

    def n_subjects(self) -> int:
        """Analysed subjects: those with an included measurement, each once (with ``repeated_scans: mean``
        a subject's structures may stand in different scans' rows, so series would count it twice)."""
        return int(self.values["subject_id"].nunique())

    def phase_counts(self) -> pd.Series:
        """Analysed subjects (each once, :meth:`n_subjects`) per contrast phase: ``with``,
        ``without`` and ``unknown`` (an empty or unreadable cell, or no contrast column)."""
        subjects = self.values.drop_duplicates("subject_id")
        phase = subjects[PHASE].fillna("unknown") if PHASE in subjects else pd.Series("unknown", subjects.index)
        return phase.value_counts().reindex([*PHASES, "unknown"], fill_value=0)

    def phases_mixed(self) -> bool:
        """Whether the analysed subjects hold both contrast phases (the only case the study acts on)."""
        counts = self.phase_counts()
        return bool(counts["with"] > 0 and counts["without"] > 0)


def load_results(results_dir: Path) -> ResultTables:
    """Read ``features/``, ``series/`` and (when present) ``review.parquet`` from a ``cohort run`` folder."""
    features = _read_dataset(Path(results_dir) / "features", FEATURE_COLUMNS)
    series = _read_dataset(Path(results_dir) / "series", SERIES_COLUMNS)
    _check_measured_alike(series, Path(results_dir))
    return ResultTables(features=features, series=series, review=load_review(Path(results_dir)))


def _check_measured_alike(series: pd.DataFrame, results_dir: Path) -> None:
    """Refuse rows of the study measured by different settings or rules: left by a ``--recompute
    changed`` that was stopped, or a folder of an earlier cohort version not yet recomputed (their
    volumes and statuses would be pooled as if measured alike)."""
    if "run_settings" not in series.columns:
        return
    studied = series[(series["status"] == "done") & series.get("in_manifest", True)]
    keys = {key.measurement for key in map(RunKey.from_json, studied["run_settings"].dropna()) if key is not None}
    if len(keys) > 1:
        raise ResultsTableError(f"series: the done rows were measured by {len(keys)} different measurement settings "
                                "or rules (a stopped `cohort run --recompute changed`, or an earlier cohort version); "
                                f"rerun `cohort run --manifest ... --out {results_dir} --recompute changed` so that "
                                "every row is measured alike")


def features_modality(features: pd.DataFrame) -> str:
    """The one modality of ``features`` (``CT`` for a table without the column, or without rows);
    rows of several are refused: HU and arbitrary MR units are different quantities."""
    modalities = set(features["modality"].dropna()) if "modality" in features.columns else set()
    if len(modalities) > 1:
        raise ResultsTableError(f"features: rows of several modalities ({', '.join(sorted(modalities))}); "
                                "run the study on one model's results at a time (one --out per model)")
    return modalities.pop() if modalities else "CT"


def metrics_of_the_model(features: pd.DataFrame, config: AgingConfig) -> AgingConfig:
    """The configured metrics that the run's model measured: MR rows have intensities, never HU.

    A study never pools modalities (HU and arbitrary MR units are different quantities): a table
    holding both is refused. For an MR run each configured ``*_hu`` metric becomes its
    ``*_intensity`` counterpart, and ``fat_fraction`` is added when Dixon images gave one.
    """
    metrics = list(config.metrics)
    if features_modality(features) == "MR":
        metrics = list(dict.fromkeys(m.replace("_hu", "_intensity") for m in metrics))
    if "fat_fraction" in features.columns and features["fat_fraction"].notna().any():
        metrics = list(dict.fromkeys([*metrics, "fat_fraction"]))
    measured = [m for m in metrics if m in features.columns and features[m].notna().any()]
    if not measured:
        raise ResultsTableError(f"features: none of the metrics {', '.join(metrics)} was measured")
    if tuple(measured) != config.metrics:
        log.info("metrics of this run's model: %s (configured: %s)", ", ".join(measured), ", ".join(config.metrics))
    return dataclasses.replace(config, metrics=tuple(measured))


def _read_dataset(path: Path, required: tuple[str, ...]) -> pd.DataFrame:
    if not path.exists():
        raise ResultsTableError(f"{path}: not found; run `cohort run --out {path.parent}` first")
    table = pd.read_parquet(path)
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise ResultsTableError(f"{path}: required column '{missing[0]}' is missing (has: {', '.join(table.columns)})")
    return table


def below_lower_bound(features: pd.DataFrame) -> pd.Series:
    """Whether each row is a failed segmentation by the paper's rule: measured, with a volume below its bound.

    The features' ``status`` cannot say so alone: QC checks the image border first, so a
    structure both cut by the field of view and below its bound is ``fov_truncated`` there.
    Rows without a bound (null ``lower_bound_ml``, or no such column) and ``absent`` rows are
    never below it.

    >>> below_lower_bound(pd.DataFrame({"status": ["fov_truncated", "ok", "absent", "ok"],
    ...     "volume_ml": [1.0, 9.0, 0.0, 1.0], "lower_bound_ml": [5.0, 5.0, 5.0, None]})).tolist()
    [True, False, False, False]
    """
    if "lower_bound_ml" not in features.columns:
        return pd.Series(False, index=features.index)
    volume = pd.to_numeric(features["volume_ml"], errors="coerce")
    bound = pd.to_numeric(features["lower_bound_ml"], errors="coerce")
    return volume.lt(bound).fillna(False).astype(bool) & (features["status"] != "absent")


def study_status(features: pd.DataFrame) -> pd.Series:
    """The QC status the study applies: the features' ``status``, ``below_lower_bound`` where :func:`below_lower_bound`.

    Applied before pooling, so a pooled row (worst status of its parts) fails with a failed part.
    """
    return features["status"].where(~below_lower_bound(features), BELOW_LOWER_BOUND)


def build_study_table(features: pd.DataFrame, series: pd.DataFrame, config: AgingConfig,
                      review: pd.DataFrame | None = None) -> StudyTable:
    """Join features with age, sex and covariates, apply the exclusions and cut the age groups."""
    review = applied_decisions(review, series)
    series = _prepared_series(series, config)
    features = features.assign(status=study_status(features))
    pooled = applicable_definitions(load_pooled_definitions(config.pooled_structures), set(features["structure"]))
    features = add_pooled_rows(features, pooled)
    orphans = ~features["series_id"].isin(series["series_id"])
    if orphans.any():
        log.warning("features: %d rows of series missing from series/ are ignored", int(orphans.sum()))
    usable = series[series["reason"] == INCLUDED]
    columns = ["series_id", "subject_id", "age", "sex", "order", *config.covariates, PHASE]
    rows = features.merge(usable[columns], on="series_id", how="inner", validate="many_to_one")
    if rows.duplicated(["series_id", "structure"]).any():
        raise ResultsTableError("features: several rows for one series_id and structure; "
                                "the table is corrupt, rerun `cohort run`")
    rows["reason"] = _row_reasons(rows, config, review, pooled)
    scans = rows.loc[rows["reason"] == INCLUDED, ["series_id", "subject_id"]].drop_duplicates(ignore_index=True)
    groups = _age_groups(_subject_ages(series), config)
    rows, values = _one_row_per_subject(rows, config)
    structures = sorted(features["structure"].unique())
    exclusions = _exclusions(rows, series, structures, config)
    fates = series_fates(series, scans["series_id"], review)
    selection = _selection(rows, series, structures, groups, config.age_range)
    values = values[["series_id", "subject_id", "structure", "age", "sex", *config.covariates, PHASE, *config.metrics,
                     *map(metric_age, config.metrics)]]
    values = values.reset_index(drop=True).assign(age_group=groups.assign(values["age"].to_numpy(dtype=float)))
    return StudyTable(values=values, exclusions=exclusions, selection=selection, age_groups=groups,
                      covariates=config.covariates, modality=features_modality(features), scans=scans,
                      fates=fates)


def applied_decisions(review: pd.DataFrame | None, series: pd.DataFrame) -> pd.DataFrame:
    """The decisions of ``review`` made on the label maps ``series`` was measured on; the others are stale,
    and a warning counts them: a reviewer's verdict on a segmentation made anew since must be given again."""
    decisions = sort_decisions(review, series)
    if len(decisions.stale):
        log.warning("review: %d decisions were made on an earlier segmentation of their series (run again since) "
                    "and are not applied; review them again with `cohort review`", len(decisions.stale))
    return decisions.applied


def _prepared_series(series: pd.DataFrame, config: AgingConfig) -> pd.DataFrame:
    """Series with numeric age, a subject, the configured covariates and a series-level ``reason``."""
    if series["series_id"].duplicated().any():
        raise ResultsTableError("series: duplicate series_id rows; the table is corrupt, rerun `cohort run`")
    series = _with_covariates(series.reset_index(drop=True), config.covariates)
    series = series.assign(**{PHASE: contrast_phase(series, config.contrast.column)})
    if config.contrast.column in config.covariates:  # adjusted for the phase as counted: `YES` is `yes`, `venous` unknown
        series[config.contrast.column] = series[PHASE]
    age = pd.to_numeric(series["age"], errors="coerce")
    subject = series["subject_id"] if "subject_id" in series.columns else pd.Series(np.nan, index=series.index)
    line = series["manifest_line"] if "manifest_line" in series.columns else pd.Series(0, index=series.index)
    series = series.assign(age=age, subject_id=subject.fillna(series["series_id"]).astype(str),
                           manifest_line=pd.to_numeric(line, errors="coerce"))
    low, high = config.age_range
    removed = series["in_manifest"].eq(False) if "in_manifest" in series.columns else pd.Series(False, series.index)
    reason = np.select(
        [removed, series["status"] != "done", age.isna(), (age < low) | (age > high)],
        [NOT_IN_MANIFEST, SERIES_FAILED, NO_AGE, OUTSIDE_AGE_RANGE], INCLUDED)
    series = series.assign(reason=reason)
    if (series["reason"] == NOT_IN_MANIFEST).any():
        log.warning("series: %d series are no longer in the run's manifest and are left out",
                    int((series["reason"] == NOT_IN_MANIFEST).sum()))
    eligible = series[series["reason"] == INCLUDED].sort_values(["age", "manifest_line", "series_id"], kind="stable")
    order = eligible.groupby("subject_id").cumcount()
    series["order"] = order.reindex(series.index)
    if config.repeated_scans in ("first", "last"):
        keep = order == 0 if config.repeated_scans == "first" else (
            order == eligible.groupby("subject_id")["series_id"].transform("size") - 1)
        series.loc[keep[~keep].index, "reason"] = REPEATED_SCAN
    return series


def _with_covariates(series: pd.DataFrame, names: tuple[str, ...]) -> pd.DataFrame:
    """The configured covariates as columns, from the ``covariates`` map column (the manifest's extra columns)."""
    if not names:
        return series
    if "covariates" in series.columns:
        expanded = pd.DataFrame([dict(pairs) if pairs is not None else {} for pairs in series["covariates"]],
                                index=series.index)
        series = series.assign(**{n: expanded[n] for n in names if n in expanded.columns and n not in series})
    missing = [n for n in names if n not in series.columns]
    if missing:
        raise ResultsTableError(f"series: covariate '{missing[0]}' (config key 'covariates') is not a manifest "
                                "column of this run; add it to the manifest or remove it from the config")
    return series


def contrast_phase(series: pd.DataFrame, column: str) -> pd.Series:
    """The contrast phase of each series (``with``, ``without``, missing) from the manifest column
    ``column`` (a column of ``series`` or a key of its ``covariates`` map): ``yes``/``no`` as
    ``cohort manifest`` writes it, also ``with``/``without`` and ``true``/``false``, in any case.
    An empty cell is missing; another value is missing too, with a warning naming it.

    >>> contrast_phase(pd.DataFrame({"covariates": [[("contrast", "yes")], [("contrast", "No")], [], None]}),
    ...                "contrast").tolist()
    ['with', 'without', nan, nan]
    """
    if not column:
        return pd.Series(np.nan, index=series.index, dtype=object)
    if column in series.columns:
        cells = series[column]
    elif "covariates" in series.columns:
        cells = pd.Series([dict(pairs).get(column) if pairs is not None else None for pairs in series["covariates"]],
                          index=series.index, dtype=object)
    else:
        return pd.Series(np.nan, index=series.index, dtype=object)
    text = cells.astype("string").str.strip().str.lower()
    phase = text.map(PHASE_WORDS).astype(object)
    unreadable = text.notna() & text.ne("") & phase.isna()
    if unreadable.any():
        log.warning("series: %d series have a %s value that is not yes or no (e.g. %r); their contrast phase is "
                    "taken as unknown", int(unreadable.sum()), column, str(cells[unreadable].iloc[0]))
    return phase.where(phase.notna(), np.nan)


def _row_reasons(rows: pd.DataFrame, config: AgingConfig, review: pd.DataFrame | None,
                 pooled: pd.DataFrame) -> np.ndarray:
    rejected_rows = rejected(review, rows) | _part_rejected(review, rows, pooled)
    status = rows["status"].to_numpy(dtype=object)
    return np.where(rejected_rows, REJECTED_IN_REVIEW,
                    np.where(rows["status"].isin(config.include_statuses), INCLUDED, status))


def _part_rejected(review: pd.DataFrame | None, rows: pd.DataFrame, pooled: pd.DataFrame) -> np.ndarray:
    """Per row: is it a pooled row (``pooled``: ``pooled, structure`` pairs) with a part a reviewer rejected?

    A pooled kidney enters only where both kidneys would; a rejected ``kidney_left`` must not
    re-enter the study inside it.
    """
    keys = rows[["series_id", "structure"]].reset_index(drop=True).rename_axis("row").reset_index()
    parts = keys.merge(pooled.rename(columns={"structure": "part", "pooled": "structure"}), on="structure")
    hit = np.zeros(len(rows), dtype=bool)
    part_keys = parts[["series_id", "part"]].rename(columns={"part": "structure"})
    hit[parts.loc[rejected(review, part_keys), "row"].to_numpy()] = True
    return hit


def _one_row_per_subject(rows: pd.DataFrame, config: AgingConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(rows with final reasons, included values): with ``mean``, a subject's included scans are averaged."""
    included = rows[rows["reason"] == INCLUDED]
    if config.repeated_scans != "mean":
        return rows, included.assign(**{metric_age(m): included["age"] for m in config.metrics})
    ordered = included.sort_values(["subject_id", "structure", "order"], kind="stable")
    later = ordered.duplicated(["subject_id", "structure"])
    rows.loc[later[later].index, "reason"] = REPEATED_SCAN
    means = ordered.groupby(["subject_id", "structure"], sort=False)[["age", *config.metrics]].transform("mean")
    averaged = ordered.assign(**{c: means[c] for c in means.columns}, **{PHASE: averaged_phase(ordered, config.metrics)},
                              **averaged_metric_ages(ordered, config.metrics))
    return rows, averaged[~later]


def metric_age(metric: str) -> str:
    """The study table's column of the age that goes with ``metric``'s value (:func:`averaged_metric_ages`)."""
    return f"age:{metric}"


def averaged_metric_ages(ordered: pd.DataFrame, metrics: tuple[str, ...]) -> dict[str, pd.Series]:
    """Per metric (column :func:`metric_age`), each subject's and structure's mean age over exactly the scans
    whose value of that metric was averaged: a scan without the value (an undefined HU) adds no age, so age
    and value describe the same scans.

    >>> frame = pd.DataFrame({"subject_id": "a", "structure": "liver", "age": [30.0, 40.0, 50.0],
    ...                       "mean_hu": [10.0, 30.0, None], "volume_ml": [1.0, 2.0, 3.0]})
    >>> {k: v.tolist() for k, v in averaged_metric_ages(frame, ("volume_ml", "mean_hu")).items()}
    {'age:volume_ml': [40.0, 40.0, 40.0], 'age:mean_hu': [35.0, 35.0, 35.0]}
    """
    keys = [ordered["subject_id"], ordered["structure"]]
    return {metric_age(m): ordered["age"].where(ordered[m].notna()).groupby(keys, sort=False).transform("mean")
            for m in metrics}


def is_intensity(metric: str) -> bool:
    """An attenuation (HU) or MR signal-intensity metric: what a contrast agent shifts.

    >>> is_intensity("mean_hu"), is_intensity("p95_intensity"), is_intensity("volume_ml")
    (True, True, False)
    """
    return metric.endswith(("_hu", "_intensity"))


def averaged_phase(ordered: pd.DataFrame, metrics: tuple[str, ...] = ()) -> pd.Series:
    """The contrast phase of each subject's averaged values: the phase its averaged scans share, else
    missing (a native and a contrast scan, or one of unknown phase): an average over both phases
    belongs to neither phase's stratum, nor is it of either phase in the HU adjustment.

    Only the phase matters to the intensity ``metrics`` (HU, MR intensity), so only the scans whose
    intensities were averaged decide it: a native scan whose HU is undefined adds no HU to the mean,
    and does not make a contrast subject's mean of unknown phase.

    >>> averaged_phase(pd.DataFrame({"subject_id": ["a", "a", "b", "b", "c"], "structure": "liver",
    ...     PHASE: ["with", "with", "with", "without", "without"]})).tolist()
    ['with', 'with', nan, nan, 'without']
    >>> averaged_phase(pd.DataFrame({"subject_id": "a", "structure": "liver", PHASE: ["with", "without"],
    ...     "mean_hu": [80.0, None]}), ("volume_ml", "mean_hu")).tolist()
    ['with', 'with']
    """
    intensity = [m for m in metrics if is_intensity(m)]
    counted = ordered[intensity].notna().any(axis=1) if intensity else pd.Series(True, index=ordered.index)
    keys = [ordered["subject_id"], ordered["structure"]]
    code = ordered[PHASE].map({"with": 1.0, "without": 0.0}).astype(float).where(counted)
    scans = code.groupby(keys, sort=False)
    agree = scans.transform("min").eq(scans.transform("max")) & scans.transform("count").eq(
        counted.groupby(keys, sort=False).transform("sum"))
    disagree = ordered["subject_id"][~agree & ordered[PHASE].notna()].nunique()
    if disagree:
        log.warning("series: %d subjects have scans of different or unknown contrast phases averaged "
                    "(repeated_scans: mean); their contrast phase is taken as unknown", disagree)
    shared = scans.transform("max").map({1.0: "with", 0.0: "without"}).astype(object)
    return shared.where(agree, np.nan)


def _subject_ages(series: pd.DataFrame) -> np.ndarray:
    """One age per subject of the study: that of the scan that stands for the subject, or with
    ``repeated_scans: mean`` the mean age of its included scans, as the analysis places the
    subject (that of its first scan put subjects whose scans span a cut point in the other group).
    Cohort quartiles split subjects, not scans, so a subject scanned ten times does not move the
    cut points."""
    included = series[series["reason"] == INCLUDED]
    return included.groupby("subject_id")["age"].mean().to_numpy(float)


def _age_groups(ages: np.ndarray, config: AgingConfig) -> AgeGroups:
    to_older = tuple(side == "older" for side in config.age_groups.cut_point_goes_to)
    if config.age_groups.method == "paper":
        return AgeGroups.from_edges(config.age_groups.cut_points, to_older)
    if len(ages) == 0:
        raise ResultsTableError("series: no series with an age, so no age quartiles; "
                                "use age_groups.method: paper or add ages to the manifest")
    return AgeGroups.from_edges(tuple(np.quantile(ages, [0.25, 0.5, 0.75])), to_older)


def _exclusions(rows: pd.DataFrame, series: pd.DataFrame, structures: list[str], config: AgingConfig) -> pd.DataFrame:
    """Count series per structure and reason; the counts of a structure sum to the series in the tables."""
    n_series = series["reason"].value_counts()
    row_reasons = [INCLUDED, REJECTED_IN_REVIEW, *(s for s in STATUSES if s not in config.include_statuses)]
    counts = pd.crosstab(rows["structure"], rows["reason"]).reindex(structures, fill_value=0)
    counts = counts.reindex(columns=list(dict.fromkeys([*row_reasons, *counts.columns])), fill_value=0)
    counts[NOT_MEASURED] = int(n_series.get(INCLUDED, 0)) - counts.sum(axis=1)
    for reason in SERIES_REASONS:
        counts[reason] = counts.get(reason, 0) + int(n_series.get(reason, 0))
    table = counts.rename_axis(index="structure", columns="reason").stack().rename("n_series").reset_index()
    log.info("exclusions by series: %s", ", ".join(f"{r} {n}" for r, n in n_series.items()))
    return table.astype({"n_series": "int64"}).sort_values(["structure", "reason"], ignore_index=True)


def _selection(rows: pd.DataFrame, series: pd.DataFrame, structures: list[str], groups: AgeGroups,
               age_range: tuple[float, ...]) -> pd.DataFrame:
    """Exclusion rates by age group and sex among series with an age in ``age_range``: who did QC and review remove?

    One row per age group, sex and reason with ``n`` (series x structure slots) and ``share``
    of the group's slots; series-level reasons count every structure of the series.
    """
    low, high = age_range
    in_range = series["age"].between(low, high)  # a failed series may have no age: it belongs to no age group
    aged = series[series["reason"].isin([INCLUDED, SERIES_FAILED, REPEATED_SCAN]) & in_range]
    aged = aged.assign(age_group=np.asarray(groups.labels)[groups.assign(aged["age"].to_numpy(float)) - 1],
                       sex=aged["sex"].fillna("unknown"))
    keys = ["age_group", "sex"]
    slots = aged.groupby(keys).size() * len(structures)
    per_series = aged[aged["reason"] != INCLUDED].groupby([*keys, "reason"]).size() * len(structures)
    measured = rows[["series_id", "reason"]].merge(aged[["series_id", *keys]], on="series_id")
    per_row = measured.groupby([*keys, "reason"]).size()
    usable_slots = aged[aged["reason"] == INCLUDED].groupby(keys).size() * len(structures)
    not_measured = usable_slots - measured.groupby(keys).size().reindex(usable_slots.index, fill_value=0)
    not_measured = pd.concat({NOT_MEASURED: not_measured}, names=["reason"]).reorder_levels([*keys, "reason"])
    counts = pd.concat([per_series, per_row, not_measured[not_measured > 0]]).groupby(level=[0, 1, 2]).sum()
    table = counts.rename("n").reset_index()
    table["share"] = table["n"] / slots.reindex(pd.MultiIndex.from_frame(table[keys])).to_numpy()
    order = {label: i for i, label in enumerate(groups.labels)}
    table = table.sort_values(["age_group", "sex", "reason"], key=lambda c: c.map(order) if c.name == "age_group" else c)
    return table.astype({"n": "int64"}).reset_index(drop=True)
