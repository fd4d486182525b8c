"""Tests of an age effect on one metric: Spearman, Kruskal-Wallis and pairwise Mann-Whitney U.

Every p-value and test statistic comes from ``scipy.stats``; multiple-testing correction
from ``statsmodels``. Effect sizes are derived from scipy's statistics:

* Kruskal-Wallis epsilon squared, ``H / (n - 1)`` (Tomczak & Tomczak 2014), 0 to 1;
* rank-biserial correlation of a pair, ``2 U / (n_young * n_old) - 1`` with ``U`` the
  statistic of the older group: +1 when every older subject has the larger value.
"""

from __future__ import annotations

import contextlib
import itertools
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps
from statsmodels.stats.multitest import multipletests

MIN_N = 3
N_GROUPS = 4


@dataclass(frozen=True)
class Correlation:
    """Spearman rank correlation between age and the metric."""

    n: int
    spearman_r: float
    p: float


@dataclass(frozen=True)
class GroupTest:
    """Kruskal-Wallis test across the age groups that hold data."""

    n: int
    n_groups: int
    h_statistic: float
    p: float
    epsilon_squared: float


@dataclass(frozen=True)
class PairTest:
    """Mann-Whitney U (Wilcoxon rank-sum) between a younger and an older age group."""

    group_young: int
    group_old: int
    n_young: int
    n_old: int
    u_statistic: float
    p: float
    p_adjusted: float
    rank_biserial: float
    median_difference: float


def spearman(age: np.ndarray, values: np.ndarray) -> Correlation:
    """Spearman r_s and two-sided p of ``values`` against ``age`` (NaN when undefined)."""
    n = len(values)
    if n < MIN_N or np.ptp(values) == 0 or np.ptp(age) == 0:
        return Correlation(n, np.nan, np.nan)
    result = sps.spearmanr(age, values)
    return Correlation(n, float(result.statistic), float(result.pvalue))


def kruskal(samples: list[np.ndarray]) -> GroupTest:
    """Kruskal-Wallis H across the non-empty ``samples``, with epsilon squared."""
    present = [s for s in samples if len(s) > 0]
    n = sum(len(s) for s in present)
    if len(present) < 2 or n < MIN_N or np.ptp(np.concatenate(present)) == 0:
        return GroupTest(n, len(present), np.nan, np.nan, np.nan)
    result = sps.kruskal(*present)
    h = float(result.statistic)
    return GroupTest(n, len(present), h, float(result.pvalue), h / (n - 1))


def pairwise(samples: list[np.ndarray], correction: str) -> list[PairTest]:
    """Mann-Whitney U for every pair of groups (six for four groups), p corrected over the pairs.

    ``correction`` is a ``statsmodels`` ``multipletests`` method, or ``none``: ``p_adjusted`` is the
    raw p, judged at the study's threshold (the paper preset: cohort's reading of the paper's
    p < 0.0001, docs/aging-study.md, which names ``bonferroni`` as the other reading).
    """
    raw = [_mann_whitney(samples, a, b) for a, b in itertools.combinations(range(len(samples)), 2)]
    tested = [i for i, t in enumerate(raw) if not np.isnan(t[1])]
    adjusted = np.full(len(raw), np.nan)
    if tested and correction == "none":
        adjusted[tested] = [raw[i][1] for i in tested]
    elif tested:
        adjusted[tested] = multipletests([raw[i][1] for i in tested], method=correction)[1]
    pairs = itertools.combinations(range(len(samples)), 2)
    return [
        PairTest(a + 1, b + 1, len(samples[a]), len(samples[b]), u, p, float(adj), rb, md)
        for (a, b), (u, p, rb, md), adj in zip(pairs, raw, adjusted)
    ]


def _mann_whitney(samples: list[np.ndarray], young: int, old: int) -> tuple[float, float, float, float]:
    """(U of the older group, two-sided p, rank-biserial, median old - median young)."""
    x, y = samples[old], samples[young]
    if len(x) == 0 or len(y) == 0:
        return np.nan, np.nan, np.nan, np.nan
    median_difference = float(np.median(x) - np.median(y))
    if np.ptp(np.concatenate([x, y])) == 0:
        return np.nan, np.nan, np.nan, median_difference
    result = sps.mannwhitneyu(x, y, alternative="two-sided")
    u = float(result.statistic)
    return u, float(result.pvalue), 2.0 * u / (len(x) * len(y)) - 1.0, median_difference


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence scipy's near-constant-input warnings; the results they announce are kept."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sps.ConstantInputWarning)
        warnings.simplefilter("ignore", sps.NearConstantInputWarning)
        yield
