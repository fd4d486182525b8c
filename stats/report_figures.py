"""The report's overview figures, drawn to be pasted into a manuscript.

* :func:`correlation_heatmap`: r_s of every structure (rows, grouped by organ system) for each
  metric and sex stratum (columns), diverging colours, ``*`` where significant, n per column;
* :func:`qc_by_system`: the share of each QC status per organ system, one bar each.

Organ systems are the five parts TotalSegmentator's ``total`` task is trained in (organs,
vertebrae, cardiac, muscles, ribs; ``configs/class_map_total_v2_parts.csv``, then the v3 and
MR parts files for structures v2 lacks, e.g. ``vertebrae_L6`` and the MR model's
``intervertebral_discs``), a pooled row (``kidney``) in its parts' system; a structure in none
of them (e.g. VIBESegmentator's fat compartments) is ``other``. :func:`save` writes 300 dpi PNG
and any of SVG/PDF asked for.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from cohort.config import config_file
from cohort.store.tables import write_replacing
from cohort.stats.pooled import DEFAULT_DEFINITIONS, load_pooled_definitions

READABLE_METRICS = {"volume_ml": "volume", "mean_hu": "mean HU", "std_hu": "SD of HU", "median_hu": "median HU",
                    "mean_intensity": "mean intensity", "fat_fraction": "fat fraction"}
STATUS_COLORS = {"ok": "#1f5fa8", "absent": "#b8c4d0", "fov_truncated": "#e6a23c", "below_lower_bound": "#c0392b"}
STRATUM_NAMES = {"all": "all", "F": "female", "M": "male"}
PAPER_DPI = 300
FORMATS = ("png", "svg", "pdf")


PARTS_FILES = ("class_map_total_v2_parts.csv", "class_map_total_v3_parts.csv", "class_map_total_mr_parts.csv")


def organ_systems() -> pd.Series:
    """Structure name -> organ system (the TotalSegmentator model part it belongs to; the first
    of :data:`PARTS_FILES` that has it, so the heart stays ``cardiac`` in an MR report although
    the MR model trains it with the organs). A structure the study pools from parts (``kidney``
    from ``kidney_left`` and ``kidney_right``, the default pooled definitions) is in its parts' system."""
    parts = pd.concat([pd.read_csv(config_file(name)) for name in PARTS_FILES]).drop_duplicates("structure")
    systems = pd.Series(parts["part"].str.removeprefix("class_map_part_").to_numpy(), index=parts["structure"])
    pooled = load_pooled_definitions(DEFAULT_DEFINITIONS).assign(system=lambda d: d["structure"].map(systems))
    pooled = pooled.dropna(subset=["system"]).drop_duplicates("pooled").set_index("pooled")["system"]
    return pd.concat([systems, pooled[~pooled.index.isin(systems.index)]])


def readable(structure: str) -> str:
    """``vertebrae_L4`` -> ``vertebrae L4``: names as a reader writes them."""
    return structure.replace("_", " ")


def correlation_heatmap(correlations: pd.DataFrame) -> Figure:
    """Rows: structures grouped by organ system; columns: metric x stratum; cells: r_s; ``*``: significant."""
    systems = organ_systems()
    table = correlations.assign(system=correlations["structure"].map(systems).fillna("other"))
    table["column"] = (table["metric"].map(READABLE_METRICS).fillna(table["metric"]) + "\n"
                       + table["stratum"].map(STRATUM_NAMES).fillna(table["stratum"]))
    stratum_order = table["stratum"].map({name: i for i, name in enumerate(STRATUM_NAMES)}).fillna(len(STRATUM_NAMES))
    columns = list(dict.fromkeys(table.assign(order=stratum_order).sort_values(["metric", "order"])["column"]))
    order = table.drop_duplicates("structure").sort_values(["system", "structure"])
    rows = order["structure"].tolist()
    r = table.pivot_table(index="structure", columns="column", values="spearman_r").reindex(index=rows, columns=columns)
    significant = table.pivot_table(index="structure", columns="column", values="significant",
                                    aggfunc="max").reindex(index=rows, columns=columns).fillna(False).astype(bool)
    n = table.groupby("column")["n"].median().reindex(columns)
    height = 1.6 + 0.12 * len(rows)
    fig = Figure(figsize=(3.2 + 0.9 * len(columns), height))
    axis = fig.subplots()
    fig.subplots_adjust(left=2.4 / fig.get_figwidth(), right=1 - 1.0 / fig.get_figwidth(), top=1 - 0.9 / height,
                        bottom=0.3 / height)
    image = axis.imshow(r.to_numpy(dtype=float), cmap="RdBu_r", vmin=-1, vmax=1, aspect="auto", interpolation="none")
    for y, x in zip(*np.nonzero(significant.to_numpy())):
        axis.text(x, y, "*", ha="center", va="center", fontsize=7, color="black")
    axis.set_yticks(range(len(rows)), [readable(s) for s in rows], fontsize=6)
    axis.set_xticks(range(len(columns)), [f"{c}\nn≈{n[c]:.0f}" for c in columns], fontsize=7)
    axis.xaxis.tick_top()
    boundaries = np.flatnonzero(order["system"].to_numpy()[1:] != order["system"].to_numpy()[:-1])
    for b in boundaries:
        axis.axhline(b + 0.5, color="black", lw=0.8)
    starts = np.r_[0, boundaries + 1]
    for start, system in zip(starts, order["system"].to_numpy()[starts]):
        axis.text(len(columns) - 0.4, start, system, fontsize=8, fontweight="bold", va="top", ha="left")
    bar = fig.colorbar(image, ax=axis, fraction=0.04, pad=0.12)
    bar.set_label("Spearman r_s with age (* significant)", fontsize=8)
    return fig


def qc_by_system(features: pd.DataFrame) -> Figure:
    """Stacked horizontal bars: share of each QC status per organ system, with n measurements."""
    system = features["structure"].map(organ_systems()).fillna("other")
    counts = pd.crosstab(system, features["status"])
    counts = counts.reindex(columns=[*[s for s in STATUS_COLORS if s in counts], *[s for s in counts if s not in STATUS_COLORS]])
    shares = counts.div(counts.sum(axis=1), axis=0)
    fig = Figure(figsize=(7, 0.45 * len(shares) + 1.3))
    axis = fig.subplots()
    left = np.zeros(len(shares))
    for status in shares.columns:
        axis.barh(range(len(shares)), shares[status], left=left, color=STATUS_COLORS.get(status, "#888"),
                  label=status.replace("_", " "))
        left += shares[status].to_numpy()
    axis.set_yticks(range(len(shares)), [f"{s} (n = {n:,})" for s, n in counts.sum(axis=1).items()])
    axis.set(xlim=(0, 1), xlabel="share of measurements (series x structure)")
    axis.legend(loc="lower left", bbox_to_anchor=(0, 1.0), ncols=4, fontsize=8, frameon=False)
    fig.tight_layout()
    return fig


def save(fig: Figure, stem: Path, formats: tuple[str, ...]) -> list[Path]:
    """Write ``stem.<format>`` for each of ``formats`` (PNG at 300 dpi), each whole or not at all
    (:func:`write_replacing`); returns the paths."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    for name in formats:
        write_replacing(stem.with_suffix(f".{name}"),
                        lambda temporary, name=name: fig.savefig(temporary, format=name, dpi=PAPER_DPI))
    return [stem.with_suffix(f".{name}") for name in formats]


def png_bytes(fig: Figure, dpi: int = 90) -> bytes:
    """The figure as PNG bytes at screen resolution, for embedding in the page."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()
