"""Reviewers' decisions as the aging study reads them: which rows a reviewer rejected.

``results/review.parquet`` (written by ``cohort review``, see ``review_store``) holds one row per
decision: ``series_id``, ``structure`` (null: the whole series), ``decision`` (``accept`` or
``reject``), ``reviewer``, ``comment``, ``decided_at``. A measurement (series, structure) is
rejected when the newest decision that applies to it, one about that structure or one about
the whole series, is ``reject``: a later ``accept`` undoes an earlier ``reject``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cohort.stats.review_store import REVIEW_FILE, read_decisions


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
