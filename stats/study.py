"""The aging study over in-memory tables: descriptives, correlations and group tests.

``run_study(features, series)`` is the notebook entry point: it takes the two tables
``cohort run`` writes (as pandas DataFrames) and returns every result table in memory.
The per-structure tests are independent, so they are split over ``config.workers``
forked processes; scipy's per-call overhead, not arithmetic, is what costs time.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from cohort.stats import age_tests
from cohort.stats.cohort_table import AgeGroups, StudyTable, build_study_table
from cohort.stats.config import AgingConfig, load_aging_config
from cohort.stats.descriptives import Description, Normality, describe, ks_normality

log = logging.getLogger(__name__)
KEYS = ["stratum", "structure", "metric"]
ALL = "all"
MIN_SAMPLES_PER_WORKER = 32


@dataclass(frozen=True)
class AgingResults:
    """The study's tables (tidy: one row per stratum, structure, metric and more) and its input."""

    descriptives: pd.DataFrame
    correlations: pd.DataFrame
    quartile_tests: pd.DataFrame
    pairwise_tests: pd.DataFrame
    exclusions: pd.DataFrame
    age_groups: AgeGroups
    config: AgingConfig
    table: StudyTable

    def tables(self) -> dict[str, pd.DataFrame]:
        """The tables by their output file name."""
        names = ("correlations", "quartile_tests", "pairwise_tests", "descriptives", "exclusions")
        return {name: getattr(self, name) for name in names}


@dataclass(frozen=True)
class Sample:
    """One stratum, structure and metric: the values with their subjects' age and age group."""

    stratum: str
    structure: str
    metric: str
    age: np.ndarray
    values: np.ndarray
    group: np.ndarray

    @property
    def key(self) -> dict[str, str]:
        return {"stratum": self.stratum, "structure": self.structure, "metric": self.metric}


@dataclass
class _Rows:
    """Result rows of a batch of samples, one list per output table."""

    descriptives: list[dict[str, Any]] = field(default_factory=list)
    correlations: list[dict[str, Any]] = field(default_factory=list)
    quartile_tests: list[dict[str, Any]] = field(default_factory=list)
    pairwise_tests: list[dict[str, Any]] = field(default_factory=list)

    def extend(self, other: _Rows) -> None:
        for f in dataclasses.fields(self):
            getattr(self, f.name).extend(getattr(other, f.name))


def run_study(features: pd.DataFrame, series: pd.DataFrame, config: AgingConfig | None = None) -> AgingResults:
    """Run every test of the aging study on ``features`` and ``series``.

    >>> from cohort.testing.cohorts import make_cohort
    >>> cohort = make_cohort(n_subjects=400, seed=1)
    >>> results = run_study(cohort.features, cohort.series)
    >>> aorta = results.correlations.query("structure == 'aorta' and metric == 'volume_ml'")
    >>> bool(aorta.spearman_r.iloc[0] > 0.4)
    True
    """
    config = config or load_aging_config()
    table = build_study_table(features, series, config)
    rows = _analyse_all(samples(table, config), table.age_groups, config)
    log.info("aging study: %d stratum-structure-metric samples", len(rows.correlations))
    return AgingResults(
        descriptives=_frame(rows.descriptives, ["age_group"], [Description, Normality]),
        correlations=_significance(_frame(rows.correlations, [], [age_tests.Correlation]), "p", config.alpha),
        quartile_tests=_significance(_frame(rows.quartile_tests, [], [age_tests.GroupTest]), "p", config.alpha),
        pairwise_tests=_significance(_frame(rows.pairwise_tests, ["group_young", "group_old"], [age_tests.PairTest]),
                                     "p_adjusted", config.alpha),
        exclusions=table.exclusions,
        age_groups=table.age_groups,
        config=config,
        table=table,
    )


def samples(table: StudyTable, config: AgingConfig) -> list[Sample]:
    """Cut the study table into samples per stratum, structure and metric (NaN values dropped)."""
    values = table.values
    strata = [(ALL, values)]
    if config.stratify_by_sex:
        strata += [(sex, values[values["sex"] == sex]) for sex in ("F", "M")]
    return [sample for stratum, frame in strata for sample in _stratum_samples(stratum, frame, config.metrics)]


def _stratum_samples(stratum: str, frame: pd.DataFrame, metrics: tuple[str, ...]) -> list[Sample]:
    age, group = frame["age"].to_numpy(dtype=float), frame["age_group"].to_numpy()
    columns = {metric: frame[metric].to_numpy(dtype=float) for metric in metrics}
    out = []
    for structure, index in sorted(frame.groupby("structure").indices.items()):
        for metric, column in columns.items():
            keep = index[~np.isnan(column[index])]
            out.append(Sample(stratum, str(structure), metric, age[keep], column[keep], group[keep]))
    return out


def _analyse_all(batch: list[Sample], groups: AgeGroups, config: AgingConfig) -> _Rows:
    """Analyse every sample, in ``config.workers`` forked processes when there are enough."""
    workers = min(config.workers, max(1, len(batch) // MIN_SAMPLES_PER_WORKER))
    if workers == 1:
        return _analyse_batch(batch, groups, config.pairwise_correction)
    chunks = [batch[i::workers] for i in range(workers)]
    rows = _Rows()
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
        for part in pool.map(_analyse_batch, chunks, [groups] * workers, [config.pairwise_correction] * workers):
            rows.extend(part)
    return rows


def _analyse_batch(batch: list[Sample], groups: AgeGroups, correction: str) -> _Rows:
    rows = _Rows()
    with age_tests.quiet():
        for sample in batch:
            _analyse(rows, sample, groups, correction)
    return rows


def _analyse(rows: _Rows, sample: Sample, groups: AgeGroups, correction: str) -> None:
    """All tests of one sample, appended to ``rows``."""
    key, values = sample.key, sample.values
    by_group = [values[sample.group == g] for g in range(1, len(groups.labels) + 1)]
    normality = dataclasses.asdict(ks_normality(values))
    rows.descriptives.append({**key, "age_group": ALL, **dataclasses.asdict(describe(values)), **normality})
    for label, part in zip(groups.labels, by_group):
        rows.descriptives.append({**key, "age_group": label, **dataclasses.asdict(describe(part))})
    rows.correlations.append({**key, **dataclasses.asdict(age_tests.spearman(sample.age, values))})
    rows.quartile_tests.append({**key, **dataclasses.asdict(age_tests.kruskal(by_group))})
    for pair in age_tests.pairwise(by_group, correction):
        row = dataclasses.asdict(pair)
        row["group_young"], row["group_old"] = groups.labels[pair.group_young - 1], groups.labels[pair.group_old - 1]
        rows.pairwise_tests.append({**key, **row})


def _frame(rows: list[dict[str, Any]], extra_keys: list[str], kinds: list[type]) -> pd.DataFrame:
    """Rows as a table sorted by its keys (workers return them interleaved); same columns when empty."""
    keys = KEYS + extra_keys
    dtypes: dict[str, str] = {c: "string" for c in keys}
    for kind in kinds:  # field types are the strings "int" or "float" (postponed annotations)
        dtypes |= {f.name: "int64" if f.type == "int" else "float64" for f in dataclasses.fields(kind) if f.name not in keys}
    frame = pd.DataFrame(rows, columns=list(dtypes)).astype(dtypes)
    return frame.sort_values(KEYS, kind="stable", ignore_index=True)


def _significance(frame: pd.DataFrame, column: str, alpha: float) -> pd.DataFrame:
    """Add ``significant``: the p-value in ``column`` is below ``alpha`` (False where untested)."""
    return frame.assign(significant=frame[column].lt(alpha).fillna(False).astype(bool))
