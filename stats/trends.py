"""Change per decade (Theil-Sen) and the smooth age curve of one metric.

The Theil-Sen slope (the median of all pairwise slopes) is robust to outliers and needs no
linearity beyond the question "how much per year, typically"; ``scipy.stats.theilslopes``
gives it with Sen's confidence interval. Its cost grows with the square of ``n``, so above
``trends.max_subjects`` a seeded random subsample of that size is used: the slope stays
unbiased and the interval widens honestly (``n_used`` says how many values the slope came from).
``pct_per_decade`` relates the slope to the median of young adults (``trends.reference_ages``),
which only means something on a ratio scale (see ``RATIO_SCALE_METRICS``). The smooth curve is
statsmodels' LOWESS, which shows non-monotone trajectories that r_s and a slope summarise away.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats as sps
from statsmodels.nonparametric.smoothers_lowess import lowess

from cohort.stats.config import TrendConfig

MIN_N = 10
LOWESS_FRACTION = 0.3
# Metrics whose zero means "none", so that a change relative to a median is a proportion: volume,
# fat fraction (fat / (water + fat), 0 = no fat) and the SD of HU (a spread: 0 = homogeneous).
# Mean, median and percentile HU are an interval scale (0 = water by convention: a median of -40 HU
# turns +0.3 HU/decade into -0.7 %), and MR intensities have no calibrated zero or unit.
RATIO_SCALE_METRICS = ("volume_ml", "fat_fraction", "std_hu")


@dataclass(frozen=True)
class Trend:
    """Theil-Sen slope per decade with its CI, the young-adult median and the slope relative to it.

    ``n`` is the sample, ``n_used`` the values the slope was computed from (at most
    ``trends.max_subjects``; 0 when no slope); ``reference_median`` is of the whole sample's young adults.
    """

    n: int
    n_used: int
    slope_per_decade: float
    slope_ci_low: float
    slope_ci_high: float
    reference_median: float
    pct_per_decade: float


def theil_sen_trend(age: np.ndarray, values: np.ndarray, config: TrendConfig, confidence: float,
                    rng: np.random.Generator, ratio_scale: bool = True) -> Trend:
    """Theil-Sen slope of ``values`` on ``age`` in units per decade (NaN when fewer than 10 values).

    ``pct_per_decade`` is NaN unless ``ratio_scale`` (:func:`is_ratio_scale` of the metric).
    """
    n = len(values)
    low, high = config.reference_ages
    young = values[(age >= low) & (age < high)]
    reference = float(np.median(young)) if len(young) else np.nan
    if n < MIN_N or np.ptp(age) == 0:
        return Trend(n, 0, np.nan, np.nan, np.nan, reference, np.nan)
    if n > config.max_subjects:
        chosen = np.sort(rng.choice(n, config.max_subjects, replace=False))
        age, values = age[chosen], values[chosen]
    fit = sps.theilslopes(values, age, alpha=confidence)
    slope = 10.0 * float(fit.slope)
    pct = 100.0 * slope / reference if ratio_scale and reference and np.isfinite(reference) else np.nan
    return Trend(n, len(values), slope, 10.0 * float(fit.low_slope), 10.0 * float(fit.high_slope), reference, pct)


def is_ratio_scale(metric: str) -> bool:
    """Whether a change of ``metric`` relative to a median is meaningful (a true zero; ``RATIO_SCALE_METRICS``).

    >>> is_ratio_scale("volume_ml"), is_ratio_scale("mean_hu")
    (True, False)
    """
    return metric in RATIO_SCALE_METRICS


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
