"""Descriptive statistics and the Kolmogorov-Smirnov normality test of one sample."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

MIN_N = 3


@dataclass(frozen=True)
class Description:
    """n, mean, SD, median and interquartile range of one sample (NaN where undefined)."""

    n: int
    mean: float
    sd: float
    median: float
    q1: float
    q3: float
    iqr: float


@dataclass(frozen=True)
class Normality:
    """Kolmogorov-Smirnov test of the standardised sample against N(0, 1)."""

    ks_statistic: float
    ks_p: float


def describe(values: np.ndarray) -> Description:
    """Describe ``values``; SD with ddof=1, quartiles by linear interpolation (numpy's default).

    >>> describe(np.arange(10.0)).median
    4.5
    """
    n = len(values)
    if n == 0:
        return Description(0, *([np.nan] * 6))
    q1, median, q3 = np.percentile(values, [25, 50, 75])
    sd = float(np.std(values, ddof=1)) if n > 1 else np.nan
    return Description(n, float(np.mean(values)), sd, float(median), float(q1), float(q3), float(q3 - q1))


def ks_normality(values: np.ndarray) -> Normality:
    """KS test of ``(values - mean) / sd`` against the standard normal (NaN when n < 3 or sd = 0).

    Mean and SD are estimated from the same sample, which makes the p-value conservative
    (Lilliefors' point); the paper used this test to justify rank-based methods.
    """
    if len(values) < MIN_N or np.ptp(values) == 0:
        return Normality(np.nan, np.nan)
    result = sps.kstest((values - values.mean()) / values.std(ddof=1), "norm")
    return Normality(float(result.statistic), float(result.pvalue))
