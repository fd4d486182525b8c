"""Which measurements enter the aging study, and why the others do not.

The unit of exclusion is one subject (series) and one structure, as in the paper: a
segmentation that failed QC drops that structure for that subject only. Every manifest row
is accounted for per structure, with one reason, the first that applies:

1. ``series_failed``: the series did not finish (``series.status != "done"``);
2. ``no_age``: the series has no age, so it cannot be placed on the age axis;
3. ``not_measured``: the series finished but has no row for this structure;
4. the QC status of the row when it is not in ``include_statuses`` (``absent``,
   ``fov_truncated``, ``below_lower_bound``);
5. otherwise ``included``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cohort.errors import RunCannotStart
from cohort.stats.config import STATUSES, AgingConfig

log = logging.getLogger(__name__)

FEATURE_COLUMNS = ("series_id", "structure", "status")
SERIES_COLUMNS = ("series_id", "age", "sex", "status")
INCLUDED, SERIES_FAILED, NO_AGE, NOT_MEASURED = "included", "series_failed", "no_age", "not_measured"
NOT_IN_MANIFEST = "not_in_manifest"


class ResultsTableError(RunCannotStart):
    """A results table is missing or malformed; the message names it and says what to run."""


@dataclass(frozen=True)
class ResultTables:
    """The two tables ``cohort run`` writes that the study reads."""

    features: pd.DataFrame
    series: pd.DataFrame


@dataclass(frozen=True)
class AgeGroups:
    """Four age groups: group ``i`` (1-based) holds ``edges[i-2] <= age < edges[i-1]``."""

    edges: tuple[float, float, float]
    labels: tuple[str, str, str, str]

    @classmethod
    def from_edges(cls, edges: tuple[float, ...]) -> AgeGroups:
        a, b, c = (float(e) for e in edges)
        return cls((a, b, c), (f"<{a:g}", f"{a:g}-{b:g}", f"{b:g}-{c:g}", f">={c:g}"))

    def assign(self, age: np.ndarray) -> np.ndarray:
        """Group number 1..4 per age (left-closed bins: an age equal to a cut point goes up)."""
        return np.searchsorted(np.asarray(self.edges), age, side="right").astype(np.int8) + 1


@dataclass(frozen=True)
class StudyTable:
    """The study's input: one row per included subject and structure, a column per metric."""

    values: pd.DataFrame
    exclusions: pd.DataFrame
    age_groups: AgeGroups


def load_results(results_dir: Path) -> ResultTables:
    """Read ``features/`` and ``series/`` from a ``cohort run`` output folder."""
    features = _read_dataset(Path(results_dir) / "features", FEATURE_COLUMNS)
    series = _read_dataset(Path(results_dir) / "series", SERIES_COLUMNS)
    return ResultTables(features=features, series=series)


def _read_dataset(path: Path, required: tuple[str, ...]) -> pd.DataFrame:
    if not path.exists():
        raise ResultsTableError(f"{path}: not found; run `cohort run --out {path.parent}` first")
    table = pd.read_parquet(path)
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise ResultsTableError(f"{path}: required column '{missing[0]}' is missing (has: {', '.join(table.columns)})")
    return table


def build_study_table(features: pd.DataFrame, series: pd.DataFrame, config: AgingConfig) -> StudyTable:
    """Join features with age and sex, apply the exclusions and cut the age groups."""
    series = _unique_series(series)
    removed = _not_in_manifest(series)
    series = series[~removed]
    usable = series[(series["status"] == "done") & series["age"].notna()]
    orphans = ~features["series_id"].isin(series["series_id"])
    if orphans.any():
        log.warning("features: %d rows of series missing from series/ are ignored", int(orphans.sum()))
    rows = features.merge(usable[["series_id", "age", "sex"]], on="series_id", how="inner", validate="many_to_one")
    if rows.duplicated(["series_id", "structure"]).any():
        raise ResultsTableError("features: several rows for one series_id and structure; "
                                "the table is corrupt, rerun `cohort run`")
    exclusions = _exclusions(rows, series, sorted(features["structure"].unique()), config, int(removed.sum()))
    rows = rows[rows["status"].isin(config.include_statuses)]
    groups = _age_groups(usable["age"].to_numpy(dtype=float), config)
    return StudyTable(values=_with_groups(rows, config.metrics, groups), exclusions=exclusions, age_groups=groups)


def _unique_series(series: pd.DataFrame) -> pd.DataFrame:
    if series["series_id"].duplicated().any():
        raise ResultsTableError("series: duplicate series_id rows; the table is corrupt, rerun `cohort run`")
    return series.assign(age=pd.to_numeric(series["age"], errors="coerce"))


def _not_in_manifest(series: pd.DataFrame) -> pd.Series:
    """Series a later manifest no longer lists: kept by ``cohort run``, never studied."""
    if "in_manifest" not in series.columns:
        return pd.Series(False, index=series.index)
    removed = series["in_manifest"].eq(False)
    if removed.any():
        log.warning("series: %d series are no longer in the run's manifest and are left out", int(removed.sum()))
    return removed


def _age_groups(ages: np.ndarray, config: AgingConfig) -> AgeGroups:
    if config.age_groups.method == "paper":
        return AgeGroups.from_edges(config.age_groups.cut_points)
    if len(ages) == 0:
        raise ResultsTableError("series: no series with an age, so no age quartiles; "
                                "use age_groups.method: paper or add ages to the manifest")
    return AgeGroups.from_edges(tuple(np.quantile(ages, [0.25, 0.5, 0.75])))


def _with_groups(rows: pd.DataFrame, metrics: tuple[str, ...], groups: AgeGroups) -> pd.DataFrame:
    keep = rows[["series_id", "structure", "age", "sex", *metrics]].reset_index(drop=True)
    return keep.assign(age_group=groups.assign(keep["age"].to_numpy(dtype=float)))


def _exclusions(rows: pd.DataFrame, series: pd.DataFrame, structures: list[str], config: AgingConfig,
                n_not_in_manifest: int = 0) -> pd.DataFrame:
    """Count series per structure and reason; the counts of a structure sum to the number of series
    in the tables (those no longer in the manifest under their own reason)."""
    n_failed = int((series["status"] != "done").sum())
    n_no_age = int(((series["status"] == "done") & series["age"].isna()).sum())
    n_usable = len(series) - n_failed - n_no_age
    status = rows["status"].where(~rows["status"].isin(config.include_statuses), INCLUDED)
    reasons = [INCLUDED, *(s for s in STATUSES if s not in config.include_statuses)]
    counts = pd.crosstab(rows["structure"], status).reindex(structures, fill_value=0)
    counts = counts.reindex(columns=list(dict.fromkeys([*reasons, *counts.columns])), fill_value=0)
    counts[NOT_MEASURED] = n_usable - counts.sum(axis=1)
    counts[SERIES_FAILED], counts[NO_AGE] = n_failed, n_no_age
    if n_not_in_manifest:
        counts[NOT_IN_MANIFEST] = n_not_in_manifest
    table = counts.rename_axis(index="structure", columns="reason").stack().rename("n_series").reset_index()
    log.info("exclusions: %d series failed, %d without age, of %d", n_failed, n_no_age, len(series))
    return table.astype({"n_series": "int64"}).sort_values(["structure", "reason"], ignore_index=True)
