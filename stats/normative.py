"""Normative centiles over age and every measurement's z-score, per structure, metric and sex.

Model (LMS-style location-scale with robust quantile-regression fits, statsmodels ``QuantReg``):

* ``y`` is the metric on its natural scale for attenuation and on the log scale for volumes
  (organ volumes are right-skewed and vary multiplicatively; the log makes them nearly
  symmetric: the LMS method's L = 0);
* the median ``m(age)`` is a quantile regression (q = 0.5) on a natural cubic spline of age
  (``cr(age, df)``, centred), so a failed segmentation does not pull the curve;
* the scale ``s(age)`` is 1.4826 x the median absolute residual, again as a q = 0.5 spline
  regression, so the spread may change with age (it does for most organs);
* ``z = (y - m(age)) / s(age)`` and the centile ``c`` at an age is ``m + Phi^-1(c) s``,
  transformed back. ``outlier`` is ``|z| > normative.outlier_z``.

Why not quantile regression per centile: separate fits cross at the extremes and give no
z-score; why not a full GAMLSS: no maintained Python implementation, and with thousands of
subjects per sex the median-and-MAD model is stable where a fitted skewness is not.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import patsy
import statsmodels.api as sm
from scipy import stats as sps

from cohort.stats.config import NormativeConfig

MAD_TO_SD = 1.4826
CENTILES = (0.03, 0.10, 0.25, 0.50, 0.75, 0.90, 0.97)
LOG_METRICS = ("volume_ml",)
# IRLS stops when coefficients move less than this: statsmodels' default, at which the fits equal the
# exact least-absolute-deviation solution (scipy's linprog, HiGHS) to about 1e-5 in the fitted median
# at n = 150 and n = 2,000. A looser 1e-4, used before for speed (about 2x per fit), moved z-scores by
# up to 0.25 at n = 1,300-2,500 per sex and about 1 at n = 100-200, enough to flip `outlier` flags
# (155 of ~870,000 values at n = 4,004).
P_TOLERANCE = 1e-6


@dataclass(frozen=True)
class NormativeFit:
    """Median and scale curves of one structure, metric and sex, on the transformed scale."""

    design: patsy.DesignInfo
    median_coef: np.ndarray
    scale_coef: np.ndarray
    scale_floor: float
    log_scale: bool
    age_range: tuple[float, float]

    def _basis(self, age: np.ndarray) -> np.ndarray:
        clipped = np.clip(age, *self.age_range)  # no extrapolation of the spline beyond the fitted ages
        return np.asarray(patsy.build_design_matrices([self.design], {"age": clipped})[0])

    def median_and_scale(self, age: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        basis = self._basis(age)
        return basis @ self.median_coef, np.maximum(basis @ self.scale_coef, self.scale_floor)

    def transform(self, values: np.ndarray) -> np.ndarray:
        if not self.log_scale:
            return values
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(values > 0, np.log(values), np.nan)

    def z(self, age: np.ndarray, values: np.ndarray) -> np.ndarray:
        """z-score of each value at its age."""
        median, scale = self.median_and_scale(age)
        return (self.transform(values) - median) / scale

    def centiles(self, age: np.ndarray) -> dict[float, np.ndarray]:
        """Centile curves at ``age`` on the metric's own scale."""
        median, scale = self.median_and_scale(age)
        curves = {c: median + sps.norm.ppf(c) * scale for c in CENTILES}
        return {c: np.exp(v) if self.log_scale else v for c, v in curves.items()}


def fit_normative(age: np.ndarray, values: np.ndarray, metric: str, config: NormativeConfig) -> NormativeFit | None:
    """Fit the median and scale curves (None when fewer than ``min_n`` usable values or no age spread)."""
    log_scale = metric in LOG_METRICS
    keep = np.isfinite(age) & (values > 0 if log_scale else np.isfinite(values))
    age, y = age[keep], np.log(values[keep]) if log_scale else values[keep]
    if len(y) < config.min_n or len(np.unique(age)) <= config.spline_df:
        return None
    basis = patsy.dmatrix(f"cr(age, df={config.spline_df}, constraints='center')", {"age": age})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # QuantReg's iteration-limit and rank notes; the fit is still used
        median_coef = sm.QuantReg(y, np.asarray(basis)).fit(q=0.5, p_tol=P_TOLERANCE).params
        absolute = np.abs(y - np.asarray(basis) @ median_coef)
        scale_coef = sm.QuantReg(MAD_TO_SD * absolute, np.asarray(basis)).fit(q=0.5, p_tol=P_TOLERANCE).params
    floor = 0.1 * MAD_TO_SD * float(np.median(absolute)) or np.finfo(float).eps
    return NormativeFit(basis.design_info, median_coef, scale_coef, floor, log_scale, (float(age.min()), float(age.max())))
