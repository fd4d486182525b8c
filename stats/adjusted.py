"""Partial Spearman correlation of a metric with age, adjusted for sex and configured covariates.

All variables are rank-transformed (dummies of categorical covariates stay dummies: ranking a
0/1 column only rescales it), the ranks of age and of the metric are regressed on the
covariates by least squares, and the residuals are correlated (Conover 1999, partial rank
correlation). The p-value is the t-test of a partial correlation with ``n - 2 - k`` degrees of
freedom, ``k`` covariate columns: the same t and p as the age coefficient of an OLS of the
metric's ranks on age and the covariates (statsmodels), which the tests check. The interval
uses Fisher's z with the Spearman variance 1.06 / (n - 3 - k) (Fieller, Hartley & Pearson 1957).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats as sps

MIN_N = 10


@dataclass(frozen=True)
class PartialCorrelation:
    """Partial Spearman r of age and the metric given the covariates, with CI and two-sided p."""

    n: int
    partial_r: float
    ci_low: float
    ci_high: float
    p: float


def encode_covariates(frame: pd.DataFrame, names: tuple[str, ...]) -> np.ndarray:
    """Columns of ``frame`` as a numeric design (NaN where missing): numbers as they are, text as dummies.

    An empty manifest cell (``""``, as ``cohort run`` stores it) is missing, not a category of its own.

    >>> encode_covariates(pd.DataFrame({"sex": ["F", "M", None], "kvp": ["100", "120", " "]}), ("sex", "kvp")).tolist()
    [[0.0, 100.0], [1.0, 120.0], [nan, nan]]
    >>> encode_covariates(pd.DataFrame({"sex": ["F", None, "F"]}), ("sex",)).tolist()
    [[0.0], [nan], [0.0]]
    """
    columns = []
    for name in names:
        column = _blank_as_missing(frame[name])
        numeric = pd.to_numeric(column, errors="coerce")
        if numeric.notna().sum() == column.notna().sum():
            columns.append(numeric.to_numpy(dtype=float)[:, None])
            continue
        levels = sorted(column.dropna().astype(str).unique())
        # one level: a constant column (no information, absorbed by the intercept) that still marks the missing rows
        dummies = np.stack([column.astype(str).eq(level).to_numpy(float) for level in levels[1:]]
                           or [np.zeros(len(column))], axis=1)
        dummies[column.isna().to_numpy()] = np.nan
        columns.append(dummies)
    return np.hstack(columns) if columns else np.empty((len(frame), 0))


def _blank_as_missing(column: pd.Series) -> pd.Series:
    """``column`` with empty or blank text cells as missing values."""
    blank = column.astype("string").str.strip().eq("").fillna(False).astype(bool)
    return column.mask(blank)


def partial_spearman(age: np.ndarray, values: np.ndarray, design: np.ndarray, confidence: float) -> PartialCorrelation:
    """Partial Spearman correlation of ``age`` and ``values`` given the columns of ``design`` (rows with NaN dropped)."""
    keep = ~(np.isnan(age) | np.isnan(values) | np.isnan(design).any(axis=1))
    age, values, design = age[keep], values[keep], design[keep]
    n = len(values)
    covariates = np.column_stack([np.ones(n), *(sps.rankdata(c) for c in design.T)])
    k = int(np.linalg.matrix_rank(covariates)) - 1 if n else 0
    if n - 3 - k < MIN_N or np.ptp(values) == 0 or np.ptp(age) == 0:
        return PartialCorrelation(n, np.nan, np.nan, np.nan, np.nan)
    ranks = np.column_stack([sps.rankdata(age), sps.rankdata(values)])
    residuals = ranks - covariates @ np.linalg.lstsq(covariates, ranks, rcond=None)[0]
    r = float(np.corrcoef(residuals.T)[0, 1])
    df = n - 2 - k
    t = r * np.sqrt(df / max(1.0 - r * r, np.finfo(float).tiny))
    p = float(2.0 * sps.t.sf(abs(t), df))
    half = sps.norm.ppf(0.5 + confidence / 2.0) * np.sqrt(1.06 / (n - 3 - k))
    z = np.arctanh(np.clip(r, -0.999999, 0.999999))
    return PartialCorrelation(n, r, float(np.tanh(z - half)), float(np.tanh(z + half)), p)
