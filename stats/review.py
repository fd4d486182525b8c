"""Reviewers' decisions as the aging study reads them: which rows a reviewer rejected.

``results/review.parquet`` (written by ``cohort review``, see ``review_store``) holds one row per
decision: ``series_id``, ``structure`` (null: the whole series), ``decision`` (``accept`` or
``reject``), ``reviewer``, ``comment``, ``decided_at``. A measurement (series, structure) is
rejected when the newest decision that applies to it, one about that structure or one about
the whole series, is ``reject``: a later ``accept`` undoes an earlier ``reject``.

A decision judges one segmentation: the label map its series had when the reviewer looked
(``label_map_key``, the map's ``source_key``). Once ``cohort run`` makes the series' label map
anew (other model or weights, changed input files), the decision says nothing about the new one:
:func:`sort_decisions` applies only decisions on the label map each ``series/`` row was measured
on, and lists the others as stale, to be reviewed again. A decision of a file written before
cohort recorded ``label_map_key`` applies unless its series row finished after it (the series was
made anew since; ``finished_at``), the one thing such a file still tells.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cohort.provenance import series_label_map_key
from cohort.stats.review_store import REVIEW_FILE, REVIEW_SCHEMA, latest_decisions, read_decisions


@dataclass(frozen=True)
class SortedDecisions:
    """A run's review decisions sorted by the segmentation they judged.

    ``applied``: every decision made on the label map its series has now, the ones the study
    applies; ``stale``: per series and structure, the newest decision made on an earlier label
    map of the series that no applied decision answers: to be reviewed again, never applied.
    """

    applied: pd.DataFrame
    stale: pd.DataFrame

    def verdicts(self, pairs: list[tuple[str, str | None]]) -> dict[tuple[str, str | None], str]:
        """What was decided on each (series, structure) of ``pairs`` (None: the whole series), in words:
        ``rejected in review`` (the newest applied decision, as the study applies it), or
        ``rejected on an earlier segmentation; review again`` (only a stale one); pairs without either are left out.

        >>> at = pd.to_datetime(["2026-01-01"], utc=True)
        >>> stale = pd.DataFrame({"series_id": ["a"], "structure": ["liver"], "decision": ["reject"], "decided_at": at})
        >>> applied = stale.assign(series_id="b", decision="accept")
        >>> SortedDecisions(applied, stale).verdicts([("a", "liver"), ("b", "liver"), ("b", None)])
        {('a', 'liver'): 'rejected on an earlier segmentation; review again', ('b', 'liver'): 'accepted in review'}
        """
        listed = pd.DataFrame(pairs, columns=["series_id", "structure"])
        applied, stale = newest_decisions(self.applied, listed), newest_decisions(self.stale, listed)
        words = {}
        for pair, now, before in zip(pairs, applied, stale):
            if isinstance(now, str):
                words[pair] = f"{now}ed in review"
            elif isinstance(before, str):
                words[pair] = f"{before}ed on an earlier segmentation; review again"
        return words


def load_review(results_dir: Path) -> pd.DataFrame | None:
    """Every decision of ``results_dir/review.parquet``, or ``None`` when nobody reviewed yet."""
    if not (Path(results_dir) / REVIEW_FILE).exists():
        return None
    return read_decisions(results_dir)


def rejected(review: pd.DataFrame | None, rows: pd.DataFrame) -> np.ndarray:
    """Per row of ``rows`` (``series_id``, ``structure``): is its newest applicable decision ``reject``?

    >>> review = pd.DataFrame({"series_id": ["a", "a", "b"], "structure": [None, "liver", "liver"],
    ...     "decision": ["reject", "accept", "reject"],
    ...     "decided_at": pd.to_datetime(["2026-01-01", "2026-01-02", "2026-01-01"], utc=True)})
    >>> rows = pd.DataFrame({"series_id": ["a", "a", "b", "b"], "structure": ["liver", "aorta", "liver", "aorta"]})
    >>> rejected(review, rows).tolist()
    [False, True, True, False]
    """
    return (newest_decisions(review, rows) == "reject").to_numpy()


def newest_decisions(review: pd.DataFrame | None, rows: pd.DataFrame) -> pd.Series:
    """Per row of ``rows`` (``series_id``, ``structure``; a null structure is the whole series): the newest
    decision that applies to it, one about that structure or one about the whole series; NaN where none.

    >>> review = pd.DataFrame({"series_id": ["a", "a"], "structure": ["liver", None], "decision": ["accept", "reject"],
    ...     "decided_at": pd.to_datetime(["2026-01-01", "2026-01-02"], utc=True)})
    >>> newest_decisions(review, pd.DataFrame({"series_id": ["a", "a", "b"], "structure": ["liver", None, None]})).tolist()
    ['reject', 'reject', nan]
    """
    keys = rows[["series_id", "structure"]].reset_index(drop=True)
    if review is None or review.empty:
        return pd.Series(np.nan, index=keys.index, dtype=object)
    ordered = review.sort_values("decided_at", kind="stable")
    whole = ordered[ordered["structure"].isna()].drop_duplicates("series_id", keep="last")
    single = ordered[ordered["structure"].notna()].drop_duplicates(["series_id", "structure"], keep="last")
    on_series = keys.merge(whole[["series_id", "decision", "decided_at"]], on="series_id", how="left")
    on_structure = keys.merge(single[["series_id", "structure", "decision", "decided_at"]],
                              on=["series_id", "structure"], how="left")
    structure_newer = on_structure["decided_at"].notna() & ~(on_series["decided_at"] > on_structure["decided_at"])
    return on_structure["decision"].where(structure_newer, on_series["decision"])


def sort_decisions(review: pd.DataFrame | None, series: pd.DataFrame) -> SortedDecisions:
    """``review`` (every decision; None: nobody reviewed) split by :func:`on_current_label_maps` of ``series``.

    >>> from cohort.provenance import RunKey
    >>> series = pd.DataFrame({"series_id": ["a"], "run_settings": [RunKey("fast", weights="w2").to_json()],
    ...     "input_content": ["c"], "finished_at": pd.to_datetime(["2026-01-05"], utc=True)})
    >>> review = pd.DataFrame({"series_id": ["a"], "structure": ["liver"], "decision": ["reject"],
    ...     "decided_at": pd.to_datetime(["2026-01-02"], utc=True), "label_map_key": ["made with w1"]})
    >>> decisions = sort_decisions(review, series)
    >>> len(decisions.applied), decisions.stale[["series_id", "structure", "decision"]].values.tolist()
    (0, [['a', 'liver', 'reject']])
    """
    if review is None or review.empty:
        empty = REVIEW_SCHEMA.empty_table().to_pandas()
        return SortedDecisions(empty, empty)
    current = on_current_label_maps(review, series)
    applied = review[current].reset_index(drop=True)
    earlier = latest_decisions(review[~current])
    answered = newest_decisions(applied, earlier).notna().to_numpy()
    return SortedDecisions(applied, earlier[~answered].reset_index(drop=True))


def on_current_label_maps(review: pd.DataFrame, series: pd.DataFrame) -> np.ndarray:
    """Per decision of ``review``: was it made on the label map its series' ``series/`` row was measured on?

    A decision with a ``label_map_key`` was when that key is the row's (:func:`series_label_map_key`);
    one without (a file of an earlier cohort version) was unless the row finished after the decision.
    A ``series`` frame without ``run_settings`` (made in memory) knows one segmentation per series only.
    """
    if "run_settings" not in series.columns:
        return np.ones(len(review), dtype=bool)
    rows = series.drop_duplicates("series_id", keep="last")
    contents = rows["input_content"] if "input_content" in rows else pd.Series(None, index=rows.index)
    finished = rows["finished_at"] if "finished_at" in rows else pd.Series(pd.NaT, index=rows.index)
    now = pd.DataFrame({"series_id": rows["series_id"].to_numpy(), "finished_at": pd.to_datetime(finished, utc=True),
                        "key_now": [series_label_map_key(settings, content)
                                    for settings, content in zip(rows["run_settings"], contents)]})
    joined = review[["series_id"]].merge(now, on="series_id", how="left")  # a left merge keeps review's order
    key = review["label_map_key"] if "label_map_key" in review else pd.Series(None, index=review.index, dtype=object)
    same_map = key.to_numpy(dtype=object) == joined["key_now"].to_numpy(dtype=object)
    decided_at = pd.to_datetime(review["decided_at"], utc=True).reset_index(drop=True)
    remade_since = (joined["finished_at"] > decided_at).to_numpy()
    return np.where(key.notna().to_numpy(), same_map, ~remade_since)
