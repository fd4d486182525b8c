"""The participant flow: from every series in the results to the series and subjects the study analysed.

A reader of a population study asks first how many were scanned and why the others are not in
the analysis (STROBE's flow diagram). Each series gets exactly one fate, the first that applies, in
the order the study applies them (``cohort_table``):

1. ``not_in_manifest``, ``series_failed``, ``no_age``, ``outside_age_range``, ``repeated_scan``
   (another scan of the subject stands for it; with ``repeated_scans: mean`` no series is left out
   here, its scans are averaged);
2. ``rejected_in_review``: no measurement entered and the newest decision on the whole series is
   ``reject``;
3. ``no_included_measurement``: no measurement entered (QC, a reviewer's reject of each structure,
   or nothing measured; the ``exclusions`` table says which, per structure);
4. otherwise ``analysed``.

So the series in the results minus the excluded ones are the analysed series, which are Table 1's
"series of these subjects", and the subjects left are Table 1's and ``summary.md``'s subjects.

>>> reasons = pd.DataFrame({"series_id": ["a1", "a2", "b1", "c1"], "subject_id": ["a", "a", "b", "c"],
...                         "reason": ["analysed", "repeated_scan", "series_failed", "analysed"]})
>>> flow = participant_flow(reasons).set_index("reason")
>>> flow.loc[["in_results", "series_failed", "repeated_scan", "analysed"], ["series", "subjects"]].values.tolist()
[[4, 3], [3, 2], [2, 2], [2, 2]]
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from cohort.stats.reasons import (NO_AGE, NOT_IN_MANIFEST, OUTSIDE_AGE_RANGE, REJECTED_IN_REVIEW, REPEATED_SCAN,
                                   SERIES_FAILED, SERIES_REASONS)
from cohort.stats.review import newest_decisions

IN_RESULTS, ANALYSED, NO_INCLUDED_MEASUREMENT = "in_results", "analysed", "no_included_measurement"
EXCLUSION_STEPS = (*SERIES_REASONS, REJECTED_IN_REVIEW, NO_INCLUDED_MEASUREMENT)
STEP_WORDS = {
    IN_RESULTS: "series in the results",
    NOT_IN_MANIFEST: "no longer in the manifest",
    SERIES_FAILED: "series failed processing",
    NO_AGE: "no age",
    OUTSIDE_AGE_RANGE: "age outside the range",
    REPEATED_SCAN: "repeated scan",
    REJECTED_IN_REVIEW: "whole series rejected in review",
    NO_INCLUDED_MEASUREMENT: "no measurement passed QC and review",
    ANALYSED: "analysed",
}


def series_fates(series: pd.DataFrame, analysed: pd.Series, review: pd.DataFrame | None) -> pd.DataFrame:
    """``series_id, subject_id, reason`` for every series: ``series`` with its series-level ``reason``
    (``included`` where none applies), ``analysed`` the series ids with an included measurement,
    ``review`` the decisions the study applies."""
    fates = series[["series_id", "subject_id", "reason"]].reset_index(drop=True)
    eligible = ~fates["reason"].isin(SERIES_REASONS)
    whole = pd.DataFrame({"series_id": fates["series_id"], "structure": None})
    rejected_whole = (newest_decisions(review, whole) == "reject").to_numpy()
    fates["reason"] = np.select(
        [~eligible, fates["series_id"].isin(analysed).to_numpy(), rejected_whole],
        [fates["reason"], ANALYSED, REJECTED_IN_REVIEW], NO_INCLUDED_MEASUREMENT)
    return fates


def participant_flow(fates: pd.DataFrame) -> pd.DataFrame:
    """One row per step (``in_results``, each exclusion of :data:`EXCLUSION_STEPS`, ``analysed``):
    ``excluded_series`` left out at the step, ``excluded_subjects`` whose last series it took, and the
    ``series`` and ``subjects`` still in after it; ``description`` says the step in words."""
    rows, remaining = [], fates
    for step in (IN_RESULTS, *EXCLUSION_STEPS, ANALYSED):
        out = remaining["reason"] == step if step in EXCLUSION_STEPS else pd.Series(False, remaining.index)
        left = remaining[~out]
        rows.append({"step": len(rows), "reason": step, "description": STEP_WORDS[step],
                     "excluded_series": int(out.sum()),
                     "excluded_subjects": remaining["subject_id"].nunique() - left["subject_id"].nunique(),
                     "series": len(left), "subjects": left["subject_id"].nunique()})
        remaining = left
    return pd.DataFrame(rows).astype({c: "int64" for c in ("step", "excluded_series", "excluded_subjects",
                                                            "series", "subjects")})


def flow_sentence(flow: pd.DataFrame) -> str:
    """The flow in one sentence (no full stop) for ``methods.md`` and ``summary.md``: the exclusions that
    took a series, and what was analysed.

    >>> flow = participant_flow(pd.DataFrame({"series_id": ["a1", "b1", "b2"], "subject_id": ["a", "b", "b"],
    ...                                       "reason": ["analysed", "no_age", "series_failed"]}))
    >>> flow_sentence(flow)
    'Of 3 series of 2 subjects, 2 were left out (series failed processing: 1; no age: 1); 1 series of 1 subject was analysed'
    """
    steps = flow.set_index("reason")
    losses = [f"{STEP_WORDS[step]}: {steps.loc[step, 'excluded_series']}" for step in EXCLUSION_STEPS
              if steps.loc[step, "excluded_series"]]
    n_out = sum(int(steps.loc[s, "excluded_series"]) for s in EXCLUSION_STEPS)
    left_out = f"{n_out} {'was' if n_out == 1 else 'were'} left out ({'; '.join(losses)})" if losses else (
        "none was left out")
    n_series = int(steps.loc[ANALYSED, "series"])
    return (f"Of {_counted(steps.loc[IN_RESULTS], 'series')}, {left_out}; {_counted(steps.loc[ANALYSED], 'series')} "
            f"{'was' if n_series == 1 else 'were'} analysed")


def _counted(step: pd.Series, what: str) -> str:
    subjects = int(step["subjects"])
    return f"{int(step[what])} series of {subjects} subject{'' if subjects == 1 else 's'}"
