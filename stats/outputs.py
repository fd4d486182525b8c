"""Writing the study's results: tidy Parquet and CSV tables and a Markdown summary.

Each Parquet file carries the resolved configuration and the age-group edges in its
schema metadata (key ``cohort.aging``), so a table found alone still says how it was made.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from scipy import stats as sps

from cohort.stats.cohort_table import PHASE, PHASES
from cohort.stats.config import AgingConfig
from cohort.stats.flow import flow_sentence
from cohort.stats.paper import paper_kruskal_p, paper_spearman
from cohort.stats.study import ALL, PHASE_STRATA, AgingResults, is_intensity, phase_adjustment

log = logging.getLogger(__name__)
METADATA_KEY = b"cohort.aging"
NOT_TESTABLE = "not testable here (too few series, age groups or distinct values)"


def provenance(results: AgingResults, inputs: dict[str, str] | None = None) -> dict[str, object]:
    """What produced the tables: configuration, its file, the age-group edges used and the state of
    the run's tables they were computed from (``cohort.stats.freshness.input_state``)."""
    return {"config": dataclasses.asdict(results.config), "age_group_edges": list(results.age_groups.edges),
            "age_group_labels": list(results.age_groups.labels),
            "age_group_to_older": list(results.age_groups.to_older), "inputs": inputs or {}}


def write_tables(results: AgingResults, out_dir: Path, inputs: dict[str, str] | None = None) -> list[Path]:
    """Write every table as ``<name>.parquet`` and ``<name>.csv`` (same rows and columns); returns the Parquet paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    metadata = json.dumps(provenance(results, inputs)).encode()
    paths = []
    for name, frame in results.tables().items():
        table = pa.Table.from_pandas(frame, preserve_index=False)
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), METADATA_KEY: metadata})
        pq.write_table(table, out_dir / f"{name}.parquet")
        frame.to_csv(out_dir / f"{name}.csv", index=False)
        paths.append(out_dir / f"{name}.parquet")
    (out_dir / "provenance.json").write_text(json.dumps(provenance(results, inputs), indent=2) + "\n")
    log.info("tables: %s", ", ".join(p.stem for p in paths))
    return paths


def strongest_effects(results: AgingResults, top_n: int) -> pd.DataFrame:
    """The ``top_n`` significant Spearman correlations by |r_s|, with the group test and medians."""
    corr = results.correlations
    corr = corr[(corr["stratum"] == ALL) & corr["significant"]]
    corr = corr.assign(abs_r=corr["spearman_r"].abs()).nlargest(top_n, "abs_r")
    keys = ["stratum", "structure", "metric"]
    kw = results.quartile_tests[keys + ["p", "epsilon_squared"]].rename(columns={"p": "kruskal_p"})
    medians = results.descriptives.pivot_table(index=keys, columns="age_group", values="median", observed=True)
    first, last = results.age_groups.labels[0], results.age_groups.labels[-1]
    medians = medians[[first, last]].rename(columns={first: "median_youngest", last: "median_oldest"}).reset_index()
    table = corr.merge(kw, on=keys, how="left").merge(medians, on=keys, how="left")
    reference = paper_spearman(set(results.correlations["structure"].astype(str)))
    paper = [reference.get((s, m), np.nan) for s, m in zip(table["structure"], table["metric"])]
    table = table.assign(paper_r=paper).merge(paper_kruskal_p(), on=["structure", "metric"], how="left")
    return table[["structure", "metric", "n", "spearman_r", "p", "paper_r", "kruskal_p", "paper_kruskal_p",
                  "epsilon_squared", "median_youngest", "median_oldest"]]


def testable(tests: pd.DataFrame) -> pd.Series:
    """Whether each test could be computed: its ``p`` is a number.

    With too few series, one age group or constant values ``p`` is NaN and ``significant`` False,
    which says nothing either way, so counts of agreement must leave such rows out.
    """
    return tests["p"].notna()


def agreement_with_paper(quartile_tests: pd.DataFrame) -> pd.DataFrame:
    """Kruskal-Wallis significance here vs in the paper's Table S1, for pairs both have.

    One row per combination of ``testable``, ``paper_significant`` and ``significant`` with its
    count; a pair not ``testable`` here (see :func:`testable`) is neither agreement nor disagreement.
    """
    tests = quartile_tests[quartile_tests["stratum"] == ALL]
    tests = tests.assign(testable=testable(tests))[["structure", "metric", "testable", "significant"]]
    both = tests.astype({"structure": str, "metric": str}).merge(paper_kruskal_p(), on=["structure", "metric"])
    return both.groupby(["testable", "paper_significant", "significant"]).size().rename("n").reset_index()


def write_summary(results: AgingResults, out_dir: Path) -> Path:
    """``summary.md``: what was tested, how many effects are significant, the strongest ones."""
    path = out_dir / "summary.md"
    path.write_text("\n".join(summary_lines(results)) + "\n")
    return path


def summary_lines(results: AgingResults) -> list[str]:
    """The Markdown lines of ``summary.md``."""
    config, groups = results.config, results.age_groups
    corr = results.correlations[results.correlations["stratum"] == ALL] if len(results.correlations) else None
    kw = results.quartile_tests[results.quartile_tests["stratum"] == ALL] if len(results.quartile_tests) else None
    n_corr = 0 if corr is None else int(corr["significant"].sum())
    effects = strongest_effects(results, config.summary_top_n) if n_corr else pd.DataFrame()
    return [
        "# Aging study: summary",
        "",
        (f"- Subjects with an included measurement: {results.table.n_subjects()}. {flow_sentence(results.flow)} "
         "(per step in `flow`, per structure in `exclusions`)."),
        (f"- Included QC statuses: {', '.join(config.include_statuses)}{_bound_note(results)}; "
         f"alpha = {config.alpha:g}; "
         f"configuration: `{Path(config.source).name}`."),
        (f"- Preset `{config.preset}`; adults {config.age_range[0]:g}-{config.age_range[1]:g} years; "
         f"one scan per subject ({config.repeated_scans}); age groups ({config.age_groups.method}): "
         f"{', '.join(groups.labels)} years."),
        *contrast_lines(results),
        _significance_line(corr, kw),
        f"- Multiplicity: {family_text(config)}",
        *(_agreement_lines(results.quartile_tests, config)
          if kw is not None and not results.table.is_mr else []),  # Table S1: CT
        *selection_lines(results.selection),
        "",
        f"## Strongest age effects (top {config.summary_top_n} by |r_s|, significant only)",
        "",
        *(_markdown_table(effects) if len(effects) else ["No significant age effect."]),
        *_stratified_lines(results, effects),
    ]


def phase_by_age_group(results: AgingResults) -> pd.DataFrame:
    """Analysed subjects per age group (rows, in order) and contrast phase (columns ``with``, ``without``,
    ``unknown``), one row per subject: the table a confounding of age by contrast phase shows in."""
    subjects = results.table.values.drop_duplicates("subject_id")
    labels = np.asarray(results.age_groups.labels)[subjects["age_group"].to_numpy(int) - 1]
    phase = subjects[PHASE].fillna("unknown").to_numpy(object)
    table = pd.crosstab(pd.Series(labels, name="age_group"), pd.Series(phase, name="phase"))
    return table.reindex(index=list(results.age_groups.labels), columns=[*PHASES, "unknown"], fill_value=0)


def phase_association_p(by_group: pd.DataFrame) -> float:
    """Chi-square test of independence of contrast phase (with, without) and age group, subjects of a
    known phase in groups that hold any (``scipy.stats.chi2_contingency``); NaN when it cannot be computed."""
    known = by_group[list(PHASES)]
    known = known[known.sum(axis=1) > 0]
    if known.shape[0] < 2 or (known.sum(axis=0) == 0).any():
        return float("nan")
    return float(sps.chi2_contingency(known.to_numpy()).pvalue)


def p_statement(p: float) -> str:
    """``p = 3.2e-12`` for a sentence; ``p < 1e-300`` where the p-value underflowed to 0 (it is never 0).

    >>> p_statement(3.2e-12), p_statement(0.0)
    ('p = 3.2e-12', 'p < 1e-300')
    """
    return "p < 1e-300" if p == 0 else f"p = {p:.1e}"


def contrast_lines(results: AgingResults) -> list[str]:
    """What ``summary.md`` says when the analysed subjects hold both contrast phases (else nothing):
    counts per phase and per age group, that intensity metrics pool both, what adjusts or stratifies
    for it, and how to study one phase."""
    table, config = results.table, results.config
    if not table.phases_mixed():
        return []
    counts, by_group = table.phase_counts(), phase_by_age_group(results)
    groups = ", ".join(_share(label, int(row["with"]), int(row["with"] + row["without"]))
                       for label, row in by_group.iterrows())
    p = phase_association_p(by_group)
    test = f"; chi-square test of phase by age group {p_statement(p)}" if not np.isnan(p) else ""
    lines = [(f"- Contrast phase (manifest column `{config.contrast.column}`) is mixed: of {int(counts.sum())} "
              f"analysed subjects {counts['with']} with contrast, {counts['without']} without, "
              f"{counts['unknown']} unknown. With contrast, by age group: {groups}{test}.")]
    intensity = [m for m in config.metrics if is_intensity(m)]
    if intensity:
        differs = ("signal intensity differs between native and contrast-enhanced scans"
                   if results.table.is_mr else
                   "attenuation differs by tens to hundreds of HU between native and contrast-enhanced scans")
        kind = "Intensity" if results.table.is_mr else "HU"
        lines.append(f"- {kind} metrics ({', '.join(intensity)}) pool both phases: {differs}, "
                     "so where the share with contrast changes with age, r_s, the "
                     f"age-group tests, trends and z-scores of {', '.join(intensity)} mix phase with age. "
                     f"{_phase_handling(results, intensity)}To study one phase, as the paper did "
                     "(contrast-enhanced CTs of one protocol), set `contrast: with` in the `cohort manifest` policy "
                     "and rerun `cohort manifest` and `cohort run` (docs/manifest.md, \"Contrast phase\").")
    return lines


def _share(label: str, part: int, whole: int) -> str:
    """``<41 120 of 150 (80 %)``; no percentage of an empty group."""
    return f"{label} {part} of {whole}" + (f" ({100 * part / whole:.0f} %)" if whole else "")


def _phase_handling(results: AgingResults, intensity: list[str]) -> str:
    """Which analyses of this run take contrast phase into account, in a sentence or two."""
    config, column = results.config, results.config.contrast.column
    if not config.runs("adjusted"):
        adjusted = "No analysis adjusts for it (`adjusted` is not among `analyses`). "
    elif column in config.covariates:
        adjusted = f"The `adjusted` table adjusts every metric for it (`covariates` lists `{column}`). "
    elif phase_adjustment(results.table, config):
        adjusted = (f"The `adjusted` table adjusts {', '.join(intensity)} for it besides sex "
                    f"(`covariates` column `{','.join(['sex', *config.covariates, column])}`). ")
    else:
        adjusted = "The `adjusted` table does not adjust for it (`contrast.adjust: none`). "
    strata = set(results.correlations["stratum"].astype(str)) if len(results.correlations) else set()
    within = [PHASE_STRATA[p] for p in PHASES if PHASE_STRATA[p] in strata]
    stratified = (f"Within each phase: strata {' and '.join(f'`{s}`' for s in within)} of {', '.join(intensity)} in "
                  "`correlations`, `quartile_tests`, `pairwise_tests`, `descriptives` and `trends`. "
                  if within else "")
    return adjusted + stratified


def _bound_note(results: AgingResults) -> str:
    """Why an included status can still be excluded: a volume below the lower bound fails whatever the
    status (not in an MR study: no lower bounds)."""
    if "below_lower_bound" in results.config.include_statuses or results.table.is_mr:
        return ""
    return " (a volume below its lower bound is excluded whatever its status)"


DECIDING_P = {"none": "the raw p-value", "bonferroni": "the Bonferroni-adjusted p (`p_bonferroni`)",
              "fdr_bh": "the Benjamini-Hochberg FDR-adjusted p (`p_fdr`)"}
"""The p-value that decides ``significant``, by ``multiplicity`` setting."""


def family_text(config: AgingConfig) -> str:
    """One sentence naming the family of tests and the p-value that decides significance."""
    deciding = DECIDING_P[config.multiplicity]
    pairs = ("" if config.pairwise_correction == "none" else
             f"; the six age-group pairs are first corrected together ({config.pairwise_correction}, `p_adjusted`)")
    return (f"significance is {deciding} < {config.alpha:g}; the family is every test of one table within one stratum "
            f"(structures x metrics; x 6 pairs for `pairwise_tests`; `family_size` in each row){pairs}. "
            "`p_bonferroni` and `p_fdr` are reported for every test.")


def selection_lines(selection: pd.DataFrame) -> list[str]:
    """Share of structure measurements excluded per age group (both sexes)."""
    if selection.empty:
        return []
    by_group = selection.assign(excluded=selection["reason"] != "included").groupby(["age_group", "excluded"],
                                                                                      sort=False)["n"].sum()
    table = by_group.unstack(fill_value=0)
    if table.shape[0] < 2 or table.shape[1] < 2:
        return []
    shares = ", ".join(f"{g} {100 * row[True] / row.sum():.1f} %" for g, row in table.iterrows())
    return [(f"- Selection: structure measurements excluded, by age group: {shares} (by sex and reason in "
             "`selection`; no test is given because the measurements of one series are not independent).")]


def _stratified_lines(results: AgingResults, effects: pd.DataFrame) -> list[str]:
    """The strongest effects side by side: pooled r_s, sex-adjusted partial r, and r_s within F and within M
    (and within each contrast phase, where the study has those strata)."""
    if effects.empty or not results.config.stratify_by_sex:
        return []
    keys = ["structure", "metric"]
    corr = results.correlations.pivot_table(index=keys, columns="stratum", values="spearman_r", observed=True)
    by = "by sex and contrast phase" if set(PHASE_STRATA.values()) & set(map(str, corr.columns)) else "by sex"
    table = effects[keys].merge(corr.reset_index(), on=keys, how="left")
    if not results.adjusted.empty:
        table = table.merge(results.adjusted[[*keys, "partial_r", "ci_low", "ci_high"]], on=keys, how="left")
    if not results.trends.empty:
        trend = results.trends[results.trends["stratum"] == ALL][[*keys, "slope_per_decade", "unit", "pct_per_decade"]]
        table = table.merge(trend, on=keys, how="left")
    return ["", f"## The same effects {by}, adjusted for sex, and per decade", "", *_markdown_table(table)]


def _significance_line(corr: pd.DataFrame | None, kw: pd.DataFrame | None) -> str:
    """Spearman and Kruskal-Wallis significant among the testable pairs, and how many pairs were not testable."""
    (r_significant, r_tested, r_untested), (kw_significant, kw_tested, kw_untested) = _counts(corr), _counts(kw)
    return (f"- Spearman significant: {r_significant} of {r_tested} testable structure-metric pairs; "
            f"Kruskal-Wallis significant: {kw_significant} of {kw_tested}; "
            f"{NOT_TESTABLE}: Spearman {r_untested}, Kruskal-Wallis {kw_untested}.")


def _counts(tests: pd.DataFrame | None) -> tuple[int, int, int]:
    """Significant, testable and not testable rows of ``tests`` (all 0 when there is no table)."""
    if tests is None:
        return 0, 0, 0
    tested = testable(tests)
    return int(tests["significant"].sum()), int(tested.sum()), int((~tested).sum())


def _agreement_lines(quartile_tests: pd.DataFrame, config: AgingConfig) -> list[str]:
    """One line comparing Kruskal-Wallis significance with the paper's Table S1 (p < 0.0001 there);
    pairs not testable here are counted apart, the four agreement counts are of testable pairs only."""
    agreement = agreement_with_paper(quartile_tests)
    if agreement.empty:
        return []
    n_untestable = int(agreement.loc[~agreement["testable"], "n"].sum())
    counts = agreement[agreement["testable"]].set_index(["paper_significant", "significant"])["n"]
    n = {key: int(counts.get(key, 0)) for key in [(True, True), (True, False), (False, True), (False, False)]}
    line = (f"- Kruskal-Wallis vs the paper's Table S1 (paper: p < 0.0001; here: {DECIDING_P[config.multiplicity]} "
            f"< {config.alpha:g}), "
            f"{sum(n.values()) + n_untestable} structure-metric pairs in both: {NOT_TESTABLE} {n_untestable}; "
            f"of the {sum(n.values())} testable: significant in both {n[True, True]}, "
            f"only in the paper {n[True, False]}, only here {n[False, True]}, in neither {n[False, False]}.")
    return [line]


def _markdown_table(frame: pd.DataFrame) -> list[str]:
    """A pipe table with p-values in scientific notation and other numbers to 3 significant digits."""
    header = "| " + " | ".join(frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(_cell(c, v) for c, v in row.items()) + " |" for _, row in frame.iterrows()]
    return [header, rule, *body]


def _cell(column: str, value: object) -> str:
    if isinstance(value, (float, np.floating)):
        if np.isnan(value):
            return ""
        if column.endswith("_p") or column == "p":
            return "< 1e-300" if value == 0 else f"{value:.1e}"
        return f"{value:.3g}"
    return str(value)
