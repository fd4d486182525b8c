"""Multiple testing across a table's family: Bonferroni and Benjamini-Hochberg (statsmodels).

The family of a test table is every test of that kind in one stratum: structures x metrics
for correlations, quartile tests and adjusted correlations, structures x metrics x the six
age-group pairs for the pairwise tests. ``family_size`` in each row says how many tests it was
corrected with; untested rows (NaN p) are not counted. ``significant`` compares the p-value
the ``multiplicity`` key names (``none``: the table's own p) with ``alpha``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from statsmodels.stats.multitest import multipletests

ADJUSTED_COLUMN = {"bonferroni": "p_bonferroni", "fdr_bh": "p_fdr"}


def with_multiplicity(frame: pd.DataFrame, p_column: str, alpha: float, method: str) -> pd.DataFrame:
    """``frame`` plus ``family_size``, ``p_bonferroni``, ``p_fdr`` and ``significant``, per stratum.

    >>> table = pd.DataFrame({"stratum": ["all"] * 3, "p": [0.01, 0.02, np.nan]})
    >>> with_multiplicity(table, "p", 0.05, "bonferroni")[["family_size", "p_bonferroni", "significant"]].values.tolist()
    [[2, 0.02, True], [2, 0.04, True], [2, nan, False]]
    """
    family = np.zeros(len(frame), dtype=np.int64)
    bonferroni, fdr = np.full(len(frame), np.nan), np.full(len(frame), np.nan)
    p = frame[p_column].to_numpy(dtype=float)
    for index in frame.groupby("stratum", sort=False).indices.values():
        tested = index[~np.isnan(p[index])]
        family[index] = len(tested)
        if len(tested):
            bonferroni[tested] = multipletests(p[tested], method="bonferroni")[1]
            fdr[tested] = multipletests(p[tested], method="fdr_bh")[1]
    frame = frame.assign(family_size=family, p_bonferroni=bonferroni, p_fdr=fdr)
    deciding = frame[ADJUSTED_COLUMN.get(method, p_column)]
    return frame.assign(significant=deciding.lt(alpha).fillna(False).astype(bool))
