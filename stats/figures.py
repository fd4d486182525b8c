"""PNG figures of the aging study, drawn on matplotlib ``Figure`` objects (no pyplot state, no display).

* ``overview.png``: Spearman r_s of every structure, volume and HU side by side, sorted;
* ``<structure>__<metric>.png``: the paper's Figure 6 for one structure and metric, a
  scatter against age with r_s and a smooth curve (``figures.curve``: LOWESS overall and per
  sex, so non-monotone trajectories show; or the preprint's quadratic fit), and box plots per
  age group (whiskers at 1.5 IQR, outliers not drawn).
"""

from __future__ import annotations

import functools
import logging
import multiprocessing
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from cohort.stats.cohort_table import AgeGroups
from cohort.stats.study import ALL, KEYS, SEXES, AgingResults, Sample, samples
from cohort.stats.trends import age_curve

log = logging.getLogger(__name__)
METRIC_LABELS = {"volume_ml": "volume (ml)", "mean_hu": "mean attenuation (HU)",
                 "mean_intensity": "mean intensity (a.u.)", "fat_fraction": "fat fraction"}
SIGNIFICANT, NOT_SIGNIFICANT = "#1f5fa8", "#b8c4d0"
SEX_COLORS = {"F": "#c0392b", "M": "#2e7d32"}
MIN_CURVE_N = 30


def draw_figures(results: AgingResults, out_dir: Path) -> list[Path]:
    """Draw the figures ``results.config.figures.which`` asks for into ``out_dir``, in parallel."""
    choice = results.config.figures
    if choice.which == "none" or results.correlations.empty:
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    overview = functools.partial(overview_figure, results.correlations, out_dir / "overview.png", choice.dpi)
    jobs: list[Callable[[], Path]] = [overview]
    if choice.which in ("top", "all"):
        chosen = _chosen_samples(results.correlations, None if choice.which == "all" else choice.top_n)
        batch = [s for s in samples(results.table, results.config) if (s.stratum, s.structure, s.metric) in chosen]
        jobs += _structure_jobs(batch, results, out_dir)
    paths = _run(jobs, results.config.workers)
    log.info("figures: %d PNG files in %s", len(paths), out_dir)
    return paths


def _chosen_samples(correlations: pd.DataFrame, top_n: int | None) -> set[tuple[str, str, str]]:
    """Keys of all structure-metric samples, or of the ``top_n`` with the strongest |r_s|."""
    rows = correlations[correlations["stratum"] == ALL]
    if top_n is not None:
        rows = rows.assign(a=rows["spearman_r"].abs()).nlargest(top_n, "a")
    return set(zip(rows["stratum"], rows["structure"], rows["metric"]))


def _structure_jobs(batch: list[Sample], results: AgingResults, out_dir: Path) -> list[Callable[[], Path]]:
    correlations = results.correlations.set_index(KEYS)
    jobs: list[Callable[[], Path]] = []
    for s in batch:
        row = correlations.loc[(s.stratum, s.structure, s.metric)]
        jobs.append(functools.partial(structure_figure, s, float(row["spearman_r"]), float(row["p"]),
                                      results.age_groups, out_dir / f"{s.structure}__{s.metric}.png",
                                      results.config.figures.dpi, results.config.figures.curve))
    return jobs


def _run(jobs: list[Callable[[], Path]], workers: int) -> list[Path]:
    """Call every job, in ``workers`` forked processes when there are several jobs."""
    workers = min(workers, len(jobs))
    if workers <= 1:
        return [job() for job in jobs]
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
        futures = [pool.submit(job) for job in jobs]
        return [future.result() for future in futures]


def structure_figure(sample: Sample, r_s: float, p: float, groups: AgeGroups, path: Path, dpi: int,
                     curve: str = "lowess") -> Path:
    """Scatter with r_s and a smooth curve (left) and box plots per age group (right)."""
    fig = Figure(figsize=(9, 3.6))
    scatter, boxes = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.14, top=0.9, wspace=0.22)
    scatter.scatter(sample.age, sample.values, s=4, alpha=0.3, color=SIGNIFICANT, linewidths=0)
    if len(sample.values) >= MIN_CURVE_N:
        _draw_curves(scatter, sample, curve)
        scatter.legend(loc="best", fontsize=8, frameon=False)
    scatter.set(xlabel="age (years)", ylabel=METRIC_LABELS.get(sample.metric, sample.metric),
                title=f"{sample.structure}: r_s = {r_s:.2f}, {_p_text(p)}, n = {len(sample.values)}")
    by_group = [sample.values[sample.group == g] for g in range(1, len(groups.labels) + 1)]
    boxes.boxplot(by_group, whis=1.5, showfliers=False, tick_labels=list(groups.labels), patch_artist=True,
                  boxprops={"facecolor": NOT_SIGNIFICANT}, medianprops={"color": "#c0392b"})
    boxes.set(xlabel="age group (years)", title="per age group")
    for axis in (scatter, boxes):
        axis.title.set_fontsize(10)
        axis.grid(alpha=0.3)
    fig.savefig(path, dpi=dpi)
    return path


def _draw_curves(axis, sample: Sample, curve: str) -> None:  # type: ignore[no-untyped-def]
    """The preprint's quadratic least-squares fit, or LOWESS curves overall and within each sex."""
    if curve == "quadratic":
        grid = np.linspace(sample.age.min(), sample.age.max(), 100)
        axis.plot(grid, np.polyval(np.polyfit(sample.age, sample.values, 2), grid), color="#c0392b", lw=2,
                  label="quadratic fit")
        return
    axis.plot(*age_curve(sample.age, sample.values), color="black", lw=2, label="LOWESS, all")
    for sex in SEXES:
        members = sample.sex == sex
        if members.sum() >= MIN_CURVE_N:
            axis.plot(*age_curve(sample.age[members], sample.values[members]), color=SEX_COLORS[sex], lw=1.5,
                      label=f"LOWESS, {sex}")


def overview_figure(correlations: pd.DataFrame, path: Path, dpi: int) -> Path:
    """Horizontal bars of r_s per structure, one panel per metric, each sorted by r_s.

    Margins are fixed in inches rather than computed by a layout engine: measuring 234
    tick labels is what made this figure slow.
    """
    rows = correlations[correlations["stratum"] == ALL]
    metrics = list(dict.fromkeys(rows["metric"]))
    n = rows["structure"].nunique()
    width, height = 5.5 * len(metrics), max(3.0, 0.13 * n + 1.2)
    fig = Figure(figsize=(width, height))
    axes = fig.subplots(1, len(metrics), squeeze=False)
    fig.subplots_adjust(left=1.9 / width, right=1 - 0.2 / width, bottom=0.6 / height, top=1 - 0.6 / height,
                        wspace=2.1 / 3.4)
    for axis, metric in zip(axes[0], metrics):
        part = rows[rows["metric"] == metric].sort_values("spearman_r", na_position="first")
        colors = np.where(part["significant"], SIGNIFICANT, NOT_SIGNIFICANT)
        axis.barh(np.arange(len(part)), part["spearman_r"].fillna(0.0), color=colors)
        axis.set_yticks(np.arange(len(part)), part["structure"].tolist(), fontsize=6)
        axis.set(xlim=(-1, 1), ylim=(-0.7, len(part) - 0.3), xlabel="Spearman r_s with age",
                 title=METRIC_LABELS.get(metric, metric))
        axis.axvline(0.0, color="black", lw=0.8)
        axis.grid(axis="x", alpha=0.3)
    fig.suptitle("Age correlation per structure (dark: significant)", fontsize=11, y=1 - 0.15 / height)
    fig.savefig(path, dpi=dpi)
    return path


def _p_text(p: float) -> str:
    return "p = n/a" if np.isnan(p) else ("p < 1e-300" if p == 0 else f"p = {p:.1e}")
