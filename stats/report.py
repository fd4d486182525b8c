"""``write_report``: one self-contained HTML page over a ``cohort run`` output folder.

The page holds the run summary (series done and failed, with reasons), the QC overview
(per structure, how many rows are ok, absent, FOV-truncated or below the lower bound), the
aging tables and figures. Images are inlined as base64 PNG, so the single file can be
mailed or archived; nothing is fetched when it is opened.
"""

from __future__ import annotations

import base64
import html
import io
import logging
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from cohort.stats.cohort_table import load_results
from cohort.stats.config import STATUSES
from cohort.stats.run import run_stats

log = logging.getLogger(__name__)
AGING_TABLES = ("correlations", "quartile_tests", "pairwise_tests", "descriptives", "exclusions")
STATUS_COLORS = {"ok": "#1f5fa8", "absent": "#b8c4d0", "fov_truncated": "#e6a23c", "below_lower_bound": "#c0392b"}
STYLE = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222}
table{border-collapse:collapse;font-size:12px;margin:.5em 0}
td,th{padding:2px 8px;border-bottom:1px solid #ddd;text-align:right}th{background:#f3f5f8}
img{max-width:100%;display:block;margin:.5em 0}details{margin:.5em 0}
summary{cursor:pointer;font-weight:600}pre{background:#f6f8fa;padding:1em;overflow-x:auto;font-size:12px}"""


def write_report(results_dir: Path, out_path: Path | None = None) -> Path:
    """Write ``out_path`` (default ``results_dir/report.html``) and return its path.

    Runs the aging study with the default configuration first when ``results_dir/aging``
    holds no tables yet.
    """
    results_dir = Path(results_dir)
    out_path = Path(out_path) if out_path else results_dir / "report.html"
    tables = load_results(results_dir)
    aging_dir = results_dir / "aging"
    if not (aging_dir / "correlations.parquet").exists():
        log.info("no aging tables in %s: running the aging study first", aging_dir)
        run_stats(results_dir)
    qc = qc_counts(tables.features)
    qc_png = qc_figure(qc)
    (aging_dir / "figures").mkdir(parents=True, exist_ok=True)
    (aging_dir / "figures" / "qc_overview.png").write_bytes(qc_png)
    body = [run_summary_html(tables.series), qc_html(qc, qc_png), aging_html(aging_dir)]
    out_path.write_text(_page("cohort report", body), encoding="utf-8")
    log.info("report: %s", out_path)
    return out_path


def qc_counts(features: pd.DataFrame) -> pd.DataFrame:
    """Rows per structure and QC status (a column per status, in the contract's order)."""
    counts = pd.crosstab(features["structure"], features["status"])
    return counts.reindex(columns=list(dict.fromkeys([*STATUSES, *counts.columns])), fill_value=0)


def qc_figure(counts: pd.DataFrame) -> bytes:
    """Stacked horizontal bars of the QC statuses per structure, as PNG bytes."""
    shares = counts.div(counts.sum(axis=1).clip(lower=1), axis=0).sort_values("ok")
    fig = Figure(figsize=(8, max(3.0, 0.13 * len(shares) + 1.0)))
    axis = fig.subplots()
    left = pd.Series(0.0, index=shares.index)
    for status in shares.columns:
        axis.barh(shares.index, shares[status], left=left, color=STATUS_COLORS.get(status, "#888"), label=status)
        left += shares[status]
    axis.set(xlim=(0, 1), xlabel="share of measured series", ylim=(-0.7, len(shares) - 0.3),
             title="QC status per structure")
    axis.tick_params(axis="y", labelsize=6)
    axis.legend(loc="lower left", fontsize=8, ncols=4, bbox_to_anchor=(0, 1.02), frameon=False)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()


def run_summary_html(series: pd.DataFrame) -> str:
    """Series done and failed, the age and sex of the cohort, and every failure's reason."""
    status = series["status"].value_counts()
    age = pd.to_numeric(series["age"], errors="coerce")
    facts = pd.DataFrame({"": ["series", "done", "failed", "with age", "age range", "male / female"], "value": [
        len(series), int(status.get("done", 0)), int(status.get("failed", 0)), int(age.notna().sum()),
        f"{age.min():g}-{age.max():g}" if age.notna().any() else "n/a",
        f"{int((series['sex'] == 'M').sum())} / {int((series['sex'] == 'F').sum())}"]})
    failed = series.loc[series["status"] != "done", ["series_id", "error"]]
    reasons = failed["error"].fillna("no reason given").str.split(": ", n=1).str[-1].value_counts()
    parts = ["<h2>Run summary</h2>", _table(facts)]
    if len(failed):
        parts += ["<h3>Failure reasons</h3>", _table(reasons.rename_axis("reason").rename("series").reset_index()),
                  _details(f"Failed series ({len(failed)})", _table(failed))]
    return "\n".join(parts)


def qc_html(counts: pd.DataFrame, png: bytes) -> str:
    """The QC figure and the counts per structure and status."""
    return "\n".join(["<h2>QC overview</h2>", _image(png, "QC status per structure"),
                      _details("Counts per structure and status", _table(counts.reset_index()))])


def aging_html(aging_dir: Path) -> str:
    """summary.md, the figures and the five tables of ``cohort stats``."""
    parts = ["<h2>Aging study</h2>"]
    summary = aging_dir / "summary.md"
    if summary.exists():
        parts.append(f"<pre>{html.escape(summary.read_text())}</pre>")
    figures = sorted((aging_dir / "figures").glob("*.png"), key=lambda p: (p.stem != "overview", p.stem))
    parts += [_image(p.read_bytes(), p.stem) for p in figures if p.stem != "qc_overview"]
    for name in AGING_TABLES:
        table = pd.read_parquet(aging_dir / f"{name}.parquet")
        parts.append(_details(f"{name} ({len(table)} rows)", _table(table)))
    return "\n".join(parts)


def _table(frame: pd.DataFrame) -> str:
    return frame.to_html(index=False, border=0, na_rep="", float_format=lambda v: f"{v:.4g}")


def _details(title: str, content: str) -> str:
    return f"<details><summary>{html.escape(title)}</summary>{content}</details>"


def _image(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _page(title: str, body: list[str]) -> str:
    head = f'<meta charset="utf-8"><title>{html.escape(title)}</title><style>{STYLE}</style>'
    content = "\n".join([f"<h1>{html.escape(title)}</h1>", *body])
    return f'<!DOCTYPE html>\n<html lang="en"><head>{head}</head><body>\n{content}\n</body></html>\n'
