"""``write_report``: one self-contained HTML page a researcher can show, over a results folder.

Top to bottom: which run and which stats the page shows (a red banner when the stats are older
than the run's tables, see ``cohort.stats.freshness``), run details (models, weights
fingerprints, versions, dates, counts), Table 1 and exclusions by age group and sex, "who to
look at" (flagged series, suspicious structures, z-score outliers, spot checks, each with an
overlay thumbnail), failures, QC by organ system, and the aging study (summary as HTML, r_s heat
map by organ system and sex, figures, tables). A table ``cohort stats`` has not written is
shown as "not computed"; the report never runs the study itself.

Images are inlined (base64 PNG thumbnails); the full-size overlays stay in ``results/qc/`` and
the manuscript figures (300 dpi PNG, SVG/PDF on request) in ``report-figures/`` beside the page.
Each thumbnail links to its full-size overlay, each overview figure to its file, each table to its
CSV, by paths relative to the page: the folder moved or zipped whole keeps its links.
Raw input paths never appear: the manifest is named by file name, errors are pseudonymised.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import json
import logging
import os
import urllib.parse
from pathlib import Path

import numpy as np
import pandas as pd
from markdown_it import MarkdownIt

from cohort.errors import ConfigError, RunCannotStart
from cohort.store.tables import write_replacing
from cohort.stats import report_figures as figures
from cohort.config import from_mapping
from cohort.stats.cohort_table import build_study_table, metrics_of_the_model, study_status
from cohort.stats.config import AgingConfig, load_aging_config
from cohort.stats.freshness import StatsState, check_stats
from cohort.stats.overlays import OverlayRequest, ensure_overlays, overlay_alt
from cohort.stats.review import SortedDecisions, sort_decisions
from cohort.stats.review_store import read_decisions
from cohort.stats.table1 import characteristics, exclusions_by_group
from cohort.stats.triage import QueueSizes, ReviewQueue, anatomical_order, in_anatomical_order, review_queue

log = logging.getLogger(__name__)
AGING_TABLES = ("correlations", "adjusted", "trends", "quartile_tests", "pairwise_tests", "descriptives",
                "exclusions", "zscores")
TABLE1_NOTE = ('<p class="note">The subjects the aging study analysed, each once (as in <code>summary.md</code> and '
               "<code>methods.md</code>), by the age the analysis uses for them: a subject's scan as "
               "<code>repeated_scans</code> chose it, or the mean age of its averaged scans; "
               "<code>n (series of these subjects)</code>: the scans they contributed.</p>")
FLOW_NOTE = ('<p class="note">Every series in the results, once, left out at the first step that applies, in the '
             "order the study applies them; <code>series</code> and <code>subjects</code>: still in after the step. "
             "The last row is Table 1's subjects and their series. Per structure: <code>exclusions</code> of "
             "<code>cohort stats</code>.</p>")
EXCLUSIONS_NOTE = ('<p class="note">Counts of series (<code>series</code> level) and of series &times; structure '
                   "measurements (<code>measurement</code> level), not of subjects; every series the manifest "
                   "lists, by the age and sex of the series; the series-level reasons are those of the participant "
                   "flow.</p>")
MAX_STRUCTURE_FIGURES = 12
MAX_TABLE_ROWS = 2000
STYLE = """body{font-family:system-ui,sans-serif;margin:1.5em auto;max-width:1200px;color:#222;padding:0 1em}
table{border-collapse:collapse;font-size:12px;margin:.5em 0}td,th{padding:2px 8px;border-bottom:1px solid #ddd;
text-align:right;vertical-align:top}th{background:#f3f5f8}td:first-child,th:first-child{text-align:left}
img{max-width:100%;display:block;margin:.5em 0}details{margin:.5em 0}summary{cursor:pointer;font-weight:600}
.banner{padding:.8em 1em;border-radius:4px;margin:1em 0}.stale{background:#fdecea;border:1px solid #c0392b}
.missing{background:#fff8e1;border:1px solid #e6a23c}.fresh{background:#eaf4ea;border:1px solid #4a8f4a}
.cards{display:flex;flex-wrap:wrap;gap:12px}.card{width:370px;border:1px solid #ddd;padding:6px;font-size:12px}
.card img{width:360px;height:240px;object-fit:contain;background:#000}.note{color:#666;font-size:12px}"""


def write_report(results_dir: Path, out_path: Path | None = None, stats_dir: Path | None = None,
                 strict: bool = False, figure_formats: tuple[str, ...] = ("png",), workers: int = 2) -> Path:
    """Write ``out_path`` (default ``results_dir/report.html``) and return its path.

    ``stats_dir`` (default ``results_dir/aging``) is the folder ``cohort stats --out`` wrote.
    With ``strict``, stale stats (the run's tables or review decisions changed after they were
    made) raise :class:`StaleStats` instead of a page with a warning banner.
    """
    results_dir = Path(results_dir)
    out_path = Path(out_path) if out_path else results_dir / "report.html"
    stats_dir = Path(stats_dir) if stats_dir else results_dir / "aging"
    unknown = set(figure_formats) - set(figures.FORMATS)
    if unknown:
        raise RunCannotStart(f"figure format(s) {', '.join(sorted(unknown))} not one of {', '.join(figures.FORMATS)}")
    series = pd.read_parquet(results_dir / "series")
    features = pd.read_parquet(results_dir / "features")
    state, config = _study_config(check_stats(results_dir, stats_dir), features)
    if strict and state.problems:
        raise StaleStats(f"{stats_dir}: stats are stale ({'; '.join(state.problems)}); "
                         f"rerun `cohort stats --results {results_dir}`")
    aging = {name: _read_table(stats_dir / f"{name}.parquet") for name in AGING_TABLES}
    review = read_decisions(results_dir)
    study = build_study_table(features, series, config, review)
    decisions = sort_decisions(review, series)
    queue = review_queue(features, series, aging["zscores"])
    figure_dir = out_path.parent / "report-figures"
    body = [
        freshness_html(state, results_dir), run_details_html(results_dir, series, features),
        "<h2>Table 1: cohort characteristics</h2>", TABLE1_NOTE,
        _table(characteristics(series, study, config.contrast.column)),
        "<h3>Participant flow</h3>", FLOW_NOTE, _table(study.flow),
        "<h3>Exclusions by age group and sex</h3>", EXCLUSIONS_NOTE,
        _table(exclusions_by_group(series, features, study, review)),
        who_to_look_at_html(results_dir, queue, decisions, workers, out_path.parent, state.pooled_structures),
        failures_html(series), qc_html(features, figure_dir, figure_formats),
        aging_html(stats_dir, aging, state, figure_dir, figure_formats),
    ]
    page = _page("cohort report", body)
    write_replacing(out_path, lambda temporary: temporary.write_text(page, encoding="utf-8"))  # never half a page
    log.info("report: %s", out_path)
    return out_path


class StaleStats(RunCannotStart):
    """The stats folder was made before the run's tables or review decisions last changed."""


def freshness_html(state: StatsState, results_dir: Path) -> str:
    """Which stats the page shows, and a banner when they are stale or missing."""
    if not state.computed:
        return (f'<div class="banner missing">Aging study: not computed in <code>{html.escape(state.stats_dir.name)}/'
                f'</code>. Run <code>cohort stats --results {html.escape(results_dir.name)}/</code>, then this '
                "report again. Run, QC and review sections below are complete.</div>")
    config = state.provenance.get("config", {})
    source = Path(str(config.get("source", "default"))).name
    made = state.made_at.strftime("%Y-%m-%d %H:%M UTC")
    what = (f"Stats: <code>{html.escape(state.stats_dir.name)}/</code>, made {made}, configuration "
            f"<code>{html.escape(source)}</code>, alpha {config.get('alpha', 'n/a')}.")
    if state.problems:
        return (f'<div class="banner stale"><b>Stale statistics.</b> {what} '
                f"{html.escape('; '.join(state.problems))}: the aging tables below do not describe the current run. "
                f"Rerun <code>cohort stats</code>.</div>")
    return f'<div class="banner fresh">{what} Up to date with the run\'s tables and review decisions.</div>'


def run_details_html(results_dir: Path, series: pd.DataFrame, features: pd.DataFrame) -> str:
    """Models and versions, weights fingerprints (run keys), configuration, dates and counts."""
    runs = _run_records(results_dir)
    if "run_settings" in series and series["run_settings"].notna().any():
        settings = series["run_settings"].dropna().map(json.loads)
        models = pd.DataFrame({
            "model": [s.get("model") for s in settings], "weights fingerprint": [s.get("weights") or "-" for s in settings],
            "measurement settings": [s.get("measurement") for s in settings],
            "run key": series.loc[settings.index, "run_key"].tolist()}).value_counts().rename("series").reset_index()
    else:  # tables written by an older cohort (or a synthetic cohort): the model column, if any
        model = features["model"] if "model" in features else pd.Series("not recorded", features.index)
        models = features.groupby(model.rename("model"))["series_id"].nunique().rename("series").reset_index()
    status = series["status"].value_counts()
    finished = pd.to_datetime(series.get("finished_at"), utc=True).dropna() if "finished_at" in series else pd.Series()
    facts = {
        "runs": ", ".join(r.get("run_id", "?") for r in runs) or "no run record",
        "manifest": ", ".join(dict.fromkeys(f"{Path(r['request']['manifest']).name} (sha256 {r.get('manifest_sha256', '')[:12]})"
                                            for r in runs if r.get("request", {}).get("manifest"))) or "n/a",
        "run configuration": ", ".join(dict.fromkeys(Path(str(r["request"].get("config") or "default.yaml")).name
                                                     for r in runs if "request" in r)) or "n/a",
        "cohort version": _values(series, "cohort_version"), "nnU-Net version": _values(series, "nnunet_version"),
        "started": min((r.get("started_at", "") for r in runs), default="n/a"),
        "series finished": f"{finished.min():%Y-%m-%d %H:%M} to {finished.max():%Y-%m-%d %H:%M} UTC" if len(finished) else "n/a",
        "series": f"{len(series)} ({int(status.get('done', 0))} done, {int(status.get('failed', 0))} failed)",
        "measurements": f"{len(features)} (series x structure), {features['structure'].nunique()} structures",
    }
    return "\n".join(["<h2>Run details</h2>", _table(pd.DataFrame({"": list(facts), "value": list(facts.values())})),
                      "<h3>Models and settings</h3>", _table(models)])


def who_to_look_at_html(results_dir: Path, queue: ReviewQueue, decisions: SortedDecisions, workers: int,
                        page_dir: Path, pooled_structures: str) -> str:
    """The four review lists, each row with its overlay thumbnail (a link to the full-size mosaic in
    ``qc/``, relative to ``page_dir``, where the page is), reasons, values and the newest review
    decision that applies to it, as the study applies them, or the stale one made on an earlier
    segmentation of the series; and how many decisions are stale, with a table of them. A pooled structure is
    drawn from its parts in ``pooled_structures``, the definitions of the study whose z-scores are listed."""
    requests = [OverlayRequest(sid, structure, pooled_structures) for sid, structure in queue.overlay_requests()]
    overlays = {o.request: o for o in ensure_overlays(results_dir, requests, workers)}
    verdict = decisions.verdicts(queue.overlay_requests())

    def cards(rows: pd.DataFrame, structure_column: str | None, caption) -> str:
        items = []
        for row in rows.to_dict("records"):
            structure = row.get(structure_column) if structure_column else None
            overlay = overlays[OverlayRequest(row["series_id"] if "series_id" in row else row["example"], structure,
                                              pooled_structures)]
            sid = overlay.request.series_id
            picture = (f'<a href="{relative_link(overlay.path, page_dir)}">'
                       f'{_image(overlay.request.thumbnail(results_dir).read_bytes(), overlay_alt(sid, structure))}</a>'
                       if overlay.path
                       else f'<p class="note">{html.escape(overlay.problem or "")}</p>')
            decided = verdict.get((sid, structure))
            items.append(f'<div class="card" data-series="{html.escape(sid)}">{picture}<b>{html.escape(sid)}</b>'
                         f"{' (' + html.escape(decided) + ')' if decided else ''}<br>{caption(row)}</div>")
        return f'<div class="cards">{"".join(items)}</div>' if items else '<p class="note">none</p>'

    parts = ["<h2>Who to look at</h2>",
             '<p class="note">Overlays: yellow = the structure of interest; click one for full size (<code>qc/</code>). '
             "Accept or reject with <code>cohort review --results &lt;results&gt;/</code>.</p>",
             stale_decisions_html(decisions.stale),
             f"<h3>Series with the most flagged structures ({len(queue.flagged)})</h3>",
             cards(queue.flagged, "worst", lambda r: f"{r['n_flags']} flags: {html.escape(_shorten(r['reasons']))}"),
             "<h3>Structures most often below their lower bound or absent where expected</h3>",
             _table(queue.structures.assign(share=queue.structures["share"].map(lambda v: f"{100 * v:.1f} %"))),
             cards(queue.structures, "structure",
                   lambda r: f"example of {html.escape(figures.readable(r['structure']))}: "
                             f"{r['below_lower_bound']} below bound, {r['absent_unexpected']} absent"),
             "<h3>z-score outliers</h3>"]
    if queue.outliers is None:
        parts.append('<p class="note">not computed (<code>zscores</code> is not in the stats folder)</p>')
    else:
        parts.append(cards(queue.outliers, "structure",
                           lambda r: f"{html.escape(figures.readable(r['structure']))} {r['metric']} = "
                                     f"{r['value']:.4g}, z = {r['z']:.1f}"))
    parts += [f"<h3>Spot checks (random sample, seed {QueueSizes().seed})</h3>",
              cards(queue.spot_checks, None, lambda r: f"age {r['age']:g}, sex {r['sex']}")]
    return "\n".join(parts)


def stale_decisions_html(stale: pd.DataFrame) -> str:
    """How many review decisions were made on an earlier segmentation of their series (``cohort run`` made
    the label map anew since), and which: neither the study nor this page applies them."""
    if stale.empty:
        return ""
    shown = stale[["series_id", "structure", "decision", "reviewer", "decided_at", "comment"]]
    return (f"<h3>Decisions made on an earlier segmentation ({len(stale)})</h3>"
            '<p class="note">Their series was segmented anew after the decision, so it is not applied: '
            "review these again.</p>" + _table(shown.fillna({"structure": "(whole series)"})))


def failures_html(series: pd.DataFrame) -> str:
    """Failure reasons with counts and the failed series with their (pseudonymised) errors."""
    failed = series.loc[series["status"] != "done", ["series_id", "error"]]
    if failed.empty:
        return "<h2>Failures</h2><p>No series failed.</p>"
    reasons = failed["error"].fillna("no reason given").str.split(": ", n=1).str[-1].value_counts()
    return "\n".join(["<h2>Failures</h2>", _table(reasons.rename_axis("reason").rename("series").reset_index()),
                      _details(f"Failed series ({len(failed)})", _table(failed))])


def qc_html(features: pd.DataFrame, figure_dir: Path, formats: tuple[str, ...]) -> str:
    """QC statuses by organ system (figure) and per structure (collapsed table, in the class map's order), as
    the study applies them: a structure below its lower bound counts there whatever its stored status."""
    features = features.assign(status=study_status(features))
    fig = figures.qc_by_system(features)
    saved = figures.save(fig, figure_dir / "qc_by_system", formats)
    counts = pd.crosstab(features["structure"], features["status"]).reset_index()
    counts = in_anatomical_order(counts, anatomical_order(features))
    picture = _image(figures.png_bytes(fig), "QC status per organ system")
    return "\n".join(["<h2>QC overview</h2>", f'<a href="{relative_link(saved[0], figure_dir.parent)}">{picture}</a>',
                      _details(f"Counts per structure and status ({len(counts)} structures)", _table(counts))])


def aging_html(stats_dir: Path, aging: dict[str, pd.DataFrame | None], state: StatsState, figure_dir: Path,
               formats: tuple[str, ...]) -> str:
    """summary.md as HTML, the r_s heat map, the structure figures and every table (or "not computed")."""
    parts = ["<h2>Aging study</h2>"]
    if not state.computed:
        return parts[0] + '<p class="note">not computed</p>'
    summary = stats_dir / "summary.md"
    if summary.exists():
        parts.append(summary_html(summary.read_text(), state))
    correlations = aging["correlations"]
    if correlations is not None and len(correlations):
        fig = figures.correlation_heatmap(correlations)
        saved = figures.save(fig, figure_dir / "correlation_heatmap", formats)
        picture = _image(figures.png_bytes(fig, dpi=80), "Spearman r_s by organ system and sex")
        parts.append(f'<a href="{relative_link(saved[0], figure_dir.parent)}">{picture}</a>')
    pictures = strongest_first(list((stats_dir / "figures").glob("*__*.png")), correlations)
    parts += [_image(p.read_bytes(), p.stem) for p in pictures[:MAX_STRUCTURE_FIGURES]]
    if len(pictures) > MAX_STRUCTURE_FIGURES:
        parts.append(f'<p class="note">the {MAX_STRUCTURE_FIGURES} strongest by |r_s| shown; '
                     f'{len(pictures) - MAX_STRUCTURE_FIGURES} more figures in '
                     f"<code>{html.escape(stats_dir.name)}/figures/</code></p>")
    for name, table in aging.items():
        if table is None:
            parts.append(f'<p class="note">{name}: not computed</p>')
        else:
            shown = table.head(MAX_TABLE_ROWS)
            more = f", first {MAX_TABLE_ROWS} shown; all in {stats_dir.name}/{name}.csv" if len(table) > MAX_TABLE_ROWS else ""
            csv = stats_dir / f"{name}.csv"
            link = f'<p><a href="{relative_link(csv, figure_dir.parent)}">{name}.csv</a></p>' if csv.exists() else ""
            parts.append(_details(f"{name} ({len(table)} rows{more})", link + _table(shown)))
    return "\n".join(parts)


def strongest_first(pictures: list[Path], correlations: pd.DataFrame | None) -> list[Path]:
    """Structure figures (``<structure>__<metric>.png``) by |r_s| of all subjects, strongest first, then
    those without one by name: the page shows the first few, which must be the effects that matter.

    >>> r = pd.DataFrame({"stratum": "all", "structure": ["aorta", "liver"], "metric": "volume_ml",
    ...                   "spearman_r": [0.1, -0.6]})
    >>> [p.name for p in strongest_first([Path("aorta__volume_ml.png"), Path("liver__volume_ml.png")], r)]
    ['liver__volume_ml.png', 'aorta__volume_ml.png']
    """
    strength: dict[str, float] = {}
    if correlations is not None and len(correlations):
        everyone = correlations[correlations["stratum"] == "all"]
        strength = dict(zip(everyone["structure"] + "__" + everyone["metric"], everyone["spearman_r"].abs()))
    def order(picture: Path) -> tuple[bool, float, str]:
        r = strength.get(picture.stem, np.nan)
        return (bool(np.isnan(r)), -np.nan_to_num(r), picture.name)

    return sorted(pictures, key=order)


def summary_html(markdown: str, state: StatsState) -> str:
    """``summary.md`` as HTML: headings moved two levels down (under the page's own), the
    configuration named by its file name only.

    >>> print(summary_html("# Summary\\n\\n| a |\\n|---|\\n| 1 |", StatsState(Path("aging"), None, {}, ())))
    <h3>Summary</h3>
    <table>
    <thead>
    <tr>
    <th>a</th>
    </tr>
    </thead>
    <tbody>
    <tr>
    <td>1</td>
    </tr>
    </tbody>
    </table>
    <BLANKLINE>
    """
    source = str(state.provenance.get("config", {}).get("source") or "")
    if source:
        markdown = markdown.replace(source, Path(source).name)
    markdown = "\n".join("##" + line if line.startswith("#") else line for line in markdown.splitlines())
    return MarkdownIt("commonmark", {"html": False}).enable("table").render(markdown)


def format_p(value: float) -> str:
    """A p-value for a reader: ``p < 1e-300`` where it underflowed to 0.

    >>> [format_p(v) for v in (0.0, 3.2e-12, 0.0123, float("nan"))]
    ['< 1e-300', '3.2e-12', '0.012', '']
    """
    if value is None or np.isnan(value):
        return ""
    if value == 0:
        return "< 1e-300"
    return f"{value:.1e}" if value < 0.001 else f"{value:.2g}"


def relative_link(target: Path, page_dir: Path) -> str:
    """``target`` as an ``href`` of a page in ``page_dir``: relative, so that the results folder moved or
    zipped whole keeps its links, and URL-quoted (a series id may hold a space or ``#``).

    >>> relative_link(Path("/data/results/qc/S 1#2/liver.png"), Path("/data/results"))
    'qc/S%201%232/liver.png'
    >>> relative_link(Path("/data/results/aging/trends.csv"), Path("/data/pages"))
    '../results/aging/trends.csv'
    """
    return urllib.parse.quote(Path(os.path.relpath(Path(target).absolute(), Path(page_dir).absolute())).as_posix())


def _study_config(state: StatsState, features: pd.DataFrame) -> tuple[StatsState, AgingConfig]:
    """The configuration the stats were made with (the default one when none were made), so that Table 1
    describes the subjects that study analysed, each once, in its age groups (a 78-year-old in the same
    group), and its n is the subjects of ``summary.md`` and ``methods.md``.

    Stats of another cohort version may record keys this one does not know (or no longer has): the page is
    still made, on the default configuration, and ``state`` gets a problem saying so (the stale banner;
    ``--strict`` refuses it) instead of the report stopping on a configuration nobody can edit."""
    recorded = {key: value for key, value in (state.provenance.get("config") or {}).items() if key != "source"}
    if not recorded:
        return state, metrics_of_the_model(features, load_aging_config())
    try:
        return state, metrics_of_the_model(features, from_mapping(AgingConfig, recorded, state.stats_dir))
    except ConfigError as error:
        problem = (f"they were made by another version of cohort, whose configuration this one cannot read "
                   f"({error}); Table 1 and the exclusions use the default configuration")
        log.warning("report: %s", problem)
        return (dataclasses.replace(state, problems=(*state.problems, problem)),
                metrics_of_the_model(features, load_aging_config()))


def _run_records(results_dir: Path) -> list[dict]:
    records = []
    for path in sorted((results_dir / "runs").glob("*.json")):
        try:
            records.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            log.warning("%s: unreadable run record, left out of the report", path.name)
    return records


def _values(series: pd.DataFrame, column: str) -> str:
    return ", ".join(str(v) for v in series[column].dropna().unique()) if column in series else "n/a"


def _read_table(path: Path) -> pd.DataFrame | None:
    return pd.read_parquet(path) if path.exists() else None


def _shorten(text: str, limit: int = 220) -> str:
    return text if len(text) <= limit else text[:limit].rsplit(";", 1)[0] + "; ..."


def _table(frame: pd.DataFrame) -> str:
    shown = frame.copy()
    for column in shown.columns:
        if column == "p" or column.endswith("_p") or column.startswith("p_"):  # p_fdr, p_bonferroni, p_adjusted
            shown[column] = shown[column].map(format_p)
        elif column in ("structure", "worst"):  # names of structures; a series id (``example``) is shown as stored
            shown[column] = shown[column].map(lambda s: figures.readable(s) if isinstance(s, str) else s)
    return shown.to_html(index=False, border=0, na_rep="", float_format=lambda v: f"{v:.4g}")


def _details(title: str, content: str) -> str:
    return f"<details><summary>{html.escape(title)}</summary>{content}</details>"


def _image(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _page(title: str, body: list[str]) -> str:
    head = (f'<meta charset="utf-8"><meta name="viewport" content="width=device-width">'
            f"<title>{html.escape(title)}</title><style>{STYLE}</style>")
    content = "\n".join([f"<h1>{html.escape(title)}</h1>", *body])
    return f'<!DOCTYPE html>\n<html lang="en"><head>{head}</head><body>\n{content}\n</body></html>\n'
