"""Change per decade (Theil-Sen) and the smooth age curve of one metric.

The Theil-Sen slope (the median of all pairwise slopes) is robust to outliers and needs no
linearity beyond the question "how much per year, typically"; ``scipy.stats.theilslopes``
gives it with Sen's confidence interval. Its cost grows with the square of ``n``, so above
``trends.max_subjects`` a seeded random subsample of that size is used: the slope stays
unbiased and the interval widens honestly. ``pct_per_decade`` relates the slope to the median
of young adults (``trends.reference_ages``). The smooth curve is statsmodels' LOWESS, which
shows non-monotone trajectories that r_s and a slope summarise away.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats as sps
from statsmodels.nonparametric.smoothers_lowess import lowess

from cohort.stats.config import TrendConfig

MIN_N = 10
LOWESS_FRACTION = 0.3


@dataclass(frozen=True)
class Trend:
    """Theil-Sen slope per decade with its CI, the young-adult median and the slope relative to it."""

    n: int
    slope_per_decade: float
    slope_ci_low: float
    slope_ci_high: float
    reference_median: float
    pct_per_decade: float


def theil_sen_trend(age: np.ndarray, values: np.ndarray, config: TrendConfig, confidence: float,
                    rng: np.random.Generator) -> Trend:
    """Theil-Sen slope of ``values`` on ``age`` in units per decade (NaN when fewer than 10 values)."""
    n = len(values)
    low, high = config.reference_ages
    young = values[(age >= low) & (age < high)]
    reference = float(np.median(young)) if len(young) else np.nan
    if n < MIN_N or np.ptp(age) == 0:
        return Trend(n, np.nan, np.nan, np.nan, reference, np.nan)
    if n > config.max_subjects:
        chosen = np.sort(rng.choice(n, config.max_subjects, replace=False))
        age, values = age[chosen], values[chosen]
    fit = sps.theilslopes(values, age, alpha=confidence)
    slope = 10.0 * float(fit.slope)
    pct = 100.0 * slope / reference if reference and np.isfinite(reference) else np.nan
    return Trend(n, slope, 10.0 * float(fit.low_slope), 10.0 * float(fit.high_slope), reference, pct)


def age_curve(age: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """LOWESS curve of ``values`` over ``age``: (sorted unique ages, smoothed values).

    >>> ages = np.repeat(np.arange(20.0, 90.0), 5)
    >>> x, y = age_curve(ages, (ages - 55.0) ** 2)
    >>> int(x[np.argmin(y)])
    55
    """
    fitted = lowess(values, age, frac=LOWESS_FRACTION, it=1, delta=0.01 * float(np.ptp(age)), return_sorted=True)
    x, index = np.unique(fitted[:, 0], return_index=True)
    return x, fitted[index, 1]
