"""The aging study over in-memory tables: descriptives, tests, intervals, adjustment, trends, z-scores.

``run_study(features, series)`` is the notebook entry point: it takes the two tables
``cohort run`` writes (as pandas DataFrames) and returns every result table in memory.
The per-sample work is independent, so it is split over ``config.workers`` forked
processes; scipy's per-call overhead and the bootstrap arithmetic are what cost time.
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

from cohort.stats import age_tests, bootstrap
from cohort.stats.adjusted import PartialCorrelation, encode_covariates, partial_spearman
from cohort.stats.cohort_table import (PHASE, PHASES, AgeGroups, StudyTable, build_study_table, is_intensity,
                                       metric_age, metrics_of_the_model)
from cohort.stats.config import AgingConfig, load_aging_config
from cohort.stats.descriptives import Description, Normality, describe, ks_normality
from cohort.stats.multiplicity import with_multiplicity
from cohort.stats.normative import fit_normative
from cohort.stats.trends import Trend, is_ratio_scale, theil_sen_trend

log = logging.getLogger(__name__)
KEYS = ["stratum", "structure", "metric"]
ALL = "all"
SEXES = ("F", "M")
PHASE_STRATA = {"with": "with_contrast", "without": "without_contrast"}  # per-phase strata (contrast.stratify)
MIN_SAMPLES_PER_WORKER = 32
UNITS = {"volume_ml": "ml", "fat_fraction": "fraction"}
ZSCORE_COLUMNS = {"series_id": "string", "structure": "string", "metric": "string", "sex": "string", "age": "float64",
                  "value": "float64", "z": "float64", "outlier": "bool"}
CENTILE_COLUMNS = {"structure": "string", "metric": "string", "sex": "string", "age": "float64", "centile": "float64",
                   "value": "float64"}


@dataclass(frozen=True)
class AgingResults:
    """The study's tables (tidy: one row per stratum, structure, metric and more) and its input."""

    descriptives: pd.DataFrame
    correlations: pd.DataFrame
    quartile_tests: pd.DataFrame
    pairwise_tests: pd.DataFrame
    adjusted: pd.DataFrame
    trends: pd.DataFrame
    zscores: pd.DataFrame
    centiles: pd.DataFrame
    exclusions: pd.DataFrame
    selection: pd.DataFrame
    flow: pd.DataFrame
    age_groups: AgeGroups
    config: AgingConfig
    table: StudyTable

    def tables(self) -> dict[str, pd.DataFrame]:
        """The tables by their output file name."""
        names = ("correlations", "quartile_tests", "pairwise_tests", "descriptives", "adjusted", "trends",
                 "zscores", "centiles", "exclusions", "selection", "flow")
        return {name: getattr(self, name) for name in names}


@dataclass(frozen=True)
class Sample:
    """One stratum, structure and metric: the values with their subjects' age, group, sex and covariates."""

    stratum: str
    structure: str
    metric: str
    age: np.ndarray
    values: np.ndarray
    group: np.ndarray
    series_id: np.ndarray
    sex: np.ndarray
    design: np.ndarray
    design_names: str

    @property
    def key(self) -> dict[str, str]:
        return {"stratum": self.stratum, "structure": self.structure, "metric": self.metric}


@dataclass
class _Rows:
    """Result rows of a batch of samples, one list per output table (frames for the per-subject ones)."""

    descriptives: list[dict[str, Any]] = field(default_factory=list)
    correlations: list[dict[str, Any]] = field(default_factory=list)
    quartile_tests: list[dict[str, Any]] = field(default_factory=list)
    pairwise_tests: list[dict[str, Any]] = field(default_factory=list)
    adjusted: list[dict[str, Any]] = field(default_factory=list)
    trends: list[dict[str, Any]] = field(default_factory=list)
    zscores: list[pd.DataFrame] = field(default_factory=list)
    centiles: list[pd.DataFrame] = field(default_factory=list)

    def extend(self, other: _Rows) -> None:
        for f in dataclasses.fields(self):
            getattr(self, f.name).extend(getattr(other, f.name))


def run_study(features: pd.DataFrame, series: pd.DataFrame, config: AgingConfig | None = None,
              review: pd.DataFrame | None = None) -> AgingResults:
    """Run every test of the aging study on ``features`` and ``series`` (``review``: reviewers' decisions).

    The configured metrics become those the run's model measured (MR: intensities, never HU), and
    a table of several modalities is refused (:func:`metrics_of_the_model`), from a notebook as from
    ``cohort stats``.

    >>> from cohort.testing.cohorts import make_cohort
    >>> cohort = make_cohort(n_subjects=400, n_structures=8, seed=1)
    >>> results = run_study(cohort.features, cohort.series, load_aging_config(preset="paper"))
    >>> aorta = results.correlations.query("structure == 'aorta' and metric == 'volume_ml'")
    >>> bool(aorta.spearman_r.iloc[0] > 0.4)
    True
    """
    config = metrics_of_the_model(features, config or load_aging_config())
    table = build_study_table(features, series, config, review)
    rows = _analyse_all(samples(table, config), table.age_groups, config)
    log.info("aging study: %d stratum-structure-metric samples", len(rows.correlations))
    alpha, method = config.alpha, config.multiplicity
    pairs = _frame(rows.pairwise_tests, ["group_young", "group_old"], [age_tests.PairTest],
                   ["median_difference_ci_low", "median_difference_ci_high"])
    return AgingResults(
        descriptives=_frame(rows.descriptives, ["age_group"], [Description, Normality]),
        correlations=with_multiplicity(_frame(rows.correlations, [], [age_tests.Correlation], ["ci_low", "ci_high"]),
                                       "p", alpha, method),
        quartile_tests=with_multiplicity(_frame(rows.quartile_tests, [], [age_tests.GroupTest],
                                                ["epsilon_squared_ci_low", "epsilon_squared_ci_high"]), "p", alpha, method),
        pairwise_tests=with_multiplicity(pairs, "p_adjusted", alpha, method),
        adjusted=with_multiplicity(_frame(rows.adjusted, ["covariates"], [PartialCorrelation]), "p", alpha, method),
        trends=_frame(rows.trends, ["unit"], [Trend]),
        zscores=_concat(rows.zscores, ZSCORE_COLUMNS, ["structure", "metric", "series_id"]),
        centiles=_concat(rows.centiles, CENTILE_COLUMNS, ["structure", "metric", "sex", "centile", "age"]),
        exclusions=table.exclusions,
        selection=table.selection,
        flow=table.flow,
        age_groups=table.age_groups,
        config=config,
        table=table,
    )


def samples(table: StudyTable, config: AgingConfig) -> list[Sample]:
    """Cut the study table into samples per stratum, structure and metric (NaN values dropped).

    When the analysed subjects hold both contrast phases, HU (MR: intensity) metrics of the ``all``
    stratum are also adjusted for the phase (``contrast.adjust: intensity``) and tested within each
    phase (``contrast.stratify``); with one phase or none the samples are those of a study without it.
    """
    values, metrics = table.values, config.metrics
    strata = [(ALL, values, ("sex", *table.covariates), metrics)]
    if config.stratify_by_sex:
        strata += [(sex, values[values["sex"] == sex], table.covariates, metrics) for sex in SEXES]
    intensity = tuple(m for m in metrics if is_intensity(m))
    if config.contrast.stratify and intensity and table.phases_mixed():
        strata += [(PHASE_STRATA[p], values[values[PHASE] == p], table.covariates, intensity) for p in PHASES]
    phase = phase_adjustment(table, config)
    return [sample for stratum, frame, adjust_for, chosen in strata
            for sample in _stratum_samples(stratum, frame, chosen, adjust_for, table.age_groups,
                                           phase if stratum == ALL else None)]


def phase_adjustment(table: StudyTable, config: AgingConfig) -> str | None:
    """The covariate name under which ``adjusted`` adjusts intensity metrics for contrast phase, or None:
    only with ``contrast.adjust: intensity``, both phases among the analysed subjects, and the column
    not already among ``covariates`` (then every metric is adjusted for it as configured)."""
    column = config.contrast.column
    if config.contrast.adjust != "intensity" or column in table.covariates or not table.phases_mixed():
        return None
    return column


def _stratum_samples(stratum: str, frame: pd.DataFrame, metrics: tuple[str, ...], adjust_for: tuple[str, ...],
                     groups: AgeGroups, phase: str | None = None) -> list[Sample]:
    """Samples of one stratum; ``phase`` (a covariate name): intensity metrics are adjusted for contrast phase too.
    Each metric's values go with their own ages (:func:`metric_age`) and the age groups of those."""
    series_id, sex = frame["series_id"].to_numpy(dtype=object), frame["sex"].to_numpy(dtype=object)
    design = encode_covariates(frame, adjust_for)
    names = ",".join(adjust_for)
    with_phase = (np.column_stack([design, encode_covariates(frame, (PHASE,))]), ",".join([*adjust_for, phase])
                  ) if phase else (design, names)
    columns = {metric: frame[metric].to_numpy(dtype=float) for metric in metrics}
    ages = {metric: frame[metric_age(metric)].to_numpy(dtype=float) for metric in metrics}
    out = []
    for structure, index in sorted(frame.groupby("structure").indices.items()):
        for metric, column in columns.items():
            keep = index[~np.isnan(column[index])]
            age = ages[metric][keep]
            chosen, chosen_names = with_phase if is_intensity(metric) else (design, names)
            out.append(Sample(stratum, str(structure), metric, age, column[keep], groups.assign(age), series_id[keep],
                              sex[keep], chosen[keep], chosen_names))
    return out


def _analyse_all(batch: list[Sample], groups: AgeGroups, config: AgingConfig) -> _Rows:
    """Analyse every sample, in ``config.workers`` forked processes when there are enough."""
    workers = min(config.workers, max(1, len(batch) // MIN_SAMPLES_PER_WORKER))
    if workers == 1:
        return _analyse_batch(batch, groups, config)
    structure_index = {key: i for i, key in enumerate(dict.fromkeys((s.stratum, s.structure) for s in batch))}
    chunks = [[s for s in batch if structure_index[s.stratum, s.structure] % workers == i] for i in range(workers)]
    rows = _Rows()
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
        for part in pool.map(_analyse_batch, chunks, [groups] * workers, [config] * workers):
            rows.extend(part)
    return rows


def _analyse_batch(batch: list[Sample], groups: AgeGroups, config: AgingConfig) -> _Rows:
    """Analyse ``batch``; the metrics of one structure share their bootstrap resamples when their subjects agree."""
    rows = _Rows()
    resampling: _Resampling | None = None
    with age_tests.quiet():
        for sample in batch:
            if config.runs("intervals") and (resampling is None or not resampling.fits(sample)):
                resampling = _Resampling.draw(sample, config)
            _analyse(rows, sample, groups, config, resampling)
    return rows


@dataclass(frozen=True)
class _Resampling:
    """Bootstrap draw counts of one stratum and structure's subjects and the age ranks within each resample."""

    stratum: str
    structure: str
    series_id: np.ndarray
    counts: np.ndarray
    age_ranks: np.ndarray

    @classmethod
    def draw(cls, sample: Sample, config: AgingConfig) -> _Resampling:
        rng = bootstrap.generator(config.bootstrap, f"{sample.stratum}|{sample.structure}|intervals")
        counts = bootstrap.resample_counts(len(sample.values), config.bootstrap.n_resamples, rng)
        age_ranks, _ = bootstrap.weighted_midranks(sample.age, counts)
        return cls(sample.stratum, sample.structure, sample.series_id, counts, age_ranks)

    def fits(self, sample: Sample) -> bool:
        return (self.stratum, self.structure) == (sample.stratum, sample.structure) and np.array_equal(
            self.series_id, sample.series_id)


def _analyse(rows: _Rows, sample: Sample, groups: AgeGroups, config: AgingConfig,
             resampling: _Resampling | None) -> None:
    """All tests of one sample, appended to ``rows``."""
    key, values = sample.key, sample.values
    by_group = [values[sample.group == g] for g in range(1, len(groups.labels) + 1)]
    normality = dataclasses.asdict(ks_normality(values))
    rows.descriptives.append({**key, "age_group": ALL, **dataclasses.asdict(describe(values)), **normality})
    for label, part in zip(groups.labels, by_group):
        rows.descriptives.append({**key, "age_group": label, **dataclasses.asdict(describe(part))})
    correlation, group_test = age_tests.spearman(sample.age, values), age_tests.kruskal(by_group)
    pairs = age_tests.pairwise(by_group, config.pairwise_correction)
    intervals = _intervals(sample, len(by_group), resampling, config.bootstrap.confidence) if (
        resampling is not None and not np.isnan(correlation.spearman_r) and len(values) >= bootstrap.MIN_N
    ) else _no_intervals(len(pairs))
    r_ci, epsilon_ci, median_cis = intervals
    rows.correlations.append({**key, **dataclasses.asdict(correlation), "ci_low": r_ci.low, "ci_high": r_ci.high})
    rows.quartile_tests.append({**key, **dataclasses.asdict(group_test), "epsilon_squared_ci_low": epsilon_ci.low,
                                "epsilon_squared_ci_high": epsilon_ci.high})
    for pair, ci in zip(pairs, median_cis):
        row = dataclasses.asdict(pair)
        row["group_young"], row["group_old"] = groups.labels[pair.group_young - 1], groups.labels[pair.group_old - 1]
        rows.pairwise_tests.append({**key, **row, "median_difference_ci_low": ci.low,
                                    "median_difference_ci_high": ci.high})
    if config.runs("trends"):
        trend = theil_sen_trend(sample.age, values, config.trends, config.bootstrap.confidence,
                                bootstrap.generator(config.bootstrap, _seed_key(sample, "trend")),
                                is_ratio_scale(sample.metric))
        rows.trends.append({**key, "unit": unit(sample.metric), **dataclasses.asdict(trend)})
    if sample.stratum == ALL and config.runs("adjusted"):
        partial = partial_spearman(sample.age, values, sample.design, config.bootstrap.confidence)
        rows.adjusted.append({**key, "covariates": sample.design_names, **dataclasses.asdict(partial)})
    if sample.stratum == ALL and config.runs("normative"):
        _normative(rows, sample, config)


def unit(metric: str) -> str:
    """The unit of ``metric``'s values: ml, fraction, HU, or arbitrary units for MR intensities (never HU).

    >>> unit("volume_ml"), unit("std_hu"), unit("mean_intensity")
    ('ml', 'HU', 'a.u.')
    """
    return UNITS.get(metric, "a.u." if metric.endswith("_intensity") else "HU")


def _seed_key(sample: Sample, purpose: str) -> str:
    return "|".join([*sample.key.values(), purpose])


def _intervals(sample: Sample, n_groups: int, resampling: _Resampling, level: float
               ) -> tuple[bootstrap.Interval, bootstrap.Interval, list[bootstrap.Interval]]:
    """Bootstrap intervals of r_s, epsilon squared and the six median differences of one sample."""
    counts = resampling.counts
    value_ranks, ties = bootstrap.weighted_midranks(sample.values, counts)
    r_ci = bootstrap.percentile_interval(bootstrap.spearman_resamples(resampling.age_ranks, value_ranks, counts), level)
    epsilon = bootstrap.epsilon_squared_resamples(value_ranks, ties, sample.group, counts, n_groups)
    medians = [bootstrap.median_resamples(sample.values[sample.group == g], counts[sample.group == g])
               for g in range(1, n_groups + 1)]
    sizes = [int(np.sum(sample.group == g)) for g in range(1, n_groups + 1)]
    pairs = [(a, b) for a in range(n_groups) for b in range(a + 1, n_groups)]
    median_cis = [bootstrap.percentile_interval(medians[b] - medians[a], level)
                  if min(sizes[a], sizes[b]) >= bootstrap.MIN_N else bootstrap.NO_INTERVAL for a, b in pairs]
    return r_ci, bootstrap.percentile_interval(epsilon, level), median_cis


def _no_intervals(n_pairs: int) -> tuple[bootstrap.Interval, bootstrap.Interval, list[bootstrap.Interval]]:
    return bootstrap.NO_INTERVAL, bootstrap.NO_INTERVAL, [bootstrap.NO_INTERVAL] * n_pairs


def _normative(rows: _Rows, sample: Sample, config: AgingConfig) -> None:
    """Centile curves and z-scores of one structure and metric, fitted within each sex."""
    for sex in SEXES:
        members = sample.sex == sex
        age, values = sample.age[members], sample.values[members]
        fit = fit_normative(age, values, sample.metric, config.normative)
        if fit is None:
            continue
        z = fit.z(age, values)
        rows.zscores.append(pd.DataFrame({
            "series_id": sample.series_id[members], "structure": sample.structure, "metric": sample.metric,
            "sex": sex, "age": age, "value": values, "z": z,
            "outlier": np.abs(np.nan_to_num(z)) > config.normative.outlier_z}))
        grid = np.arange(np.ceil(age.min()), np.floor(age.max()) + 1.0)
        curves = fit.centiles(grid)
        rows.centiles.append(pd.DataFrame({
            "structure": sample.structure, "metric": sample.metric, "sex": sex,
            "age": np.tile(grid, len(curves)), "centile": np.repeat(list(curves), len(grid)),
            "value": np.concatenate(list(curves.values()))}))


def _frame(rows: list[dict[str, Any]], extra_keys: list[str], kinds: list[type],
           extra_floats: list[str] | None = None) -> pd.DataFrame:
    """Rows as a table sorted by its keys (workers return them interleaved); same columns when empty."""
    keys = KEYS + extra_keys
    dtypes: dict[str, str] = {c: "string" for c in keys}
    for kind in kinds:  # field types are the strings "int" or "float" (postponed annotations)
        dtypes |= {f.name: "int64" if f.type == "int" else "float64" for f in dataclasses.fields(kind) if f.name not in keys}
    dtypes |= {name: "float64" for name in extra_floats or []}
    frame = pd.DataFrame(rows, columns=list(dtypes)).astype(dtypes)
    return frame.sort_values(KEYS, kind="stable", ignore_index=True)


def _concat(frames: list[pd.DataFrame], dtypes: dict[str, str], order: list[str]) -> pd.DataFrame:
    """Per-sample frames as one table sorted by ``order``; same columns when empty."""
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(dtypes))
    return frame[list(dtypes)].astype(dtypes).sort_values(order, kind="stable", ignore_index=True)
