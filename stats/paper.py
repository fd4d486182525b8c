"""Reference numbers from the TotalSegmentator paper's aging study (Wasserthal et al. 2023).

Headline Spearman correlations with age, per v2 structure and metric, for comparing the
directions and rough sizes a cohort finds. The paper reports some structures once for both
sides (e.g. "gluteus minimus", "kidney"); that value belongs to the pooled row of both sides
(``pooled.py``), and only a study without that pooled row compares each side with it. The Kruskal-Wallis p-values of
the paper's Table S1 come from cohort's ``configs/lower_bounds_v2.csv`` (mapped to v2 names).
"""

from __future__ import annotations

from collections.abc import Collection

import pandas as pd

from cohort.config import config_file

TABLE_S1 = "lower_bounds_v2.csv"
_TABLE_S1_COLUMNS = {"paper_volume_p_quartiles": "volume_ml", "paper_hu_p_quartiles": "mean_hu"}

_BOTH_SIDES = {
    ("autochthon", "mean_hu"): -0.74,
    ("gluteus_minimus", "mean_hu"): -0.79,
    ("gluteus_medius", "mean_hu"): -0.61,
    ("gluteus_maximus", "mean_hu"): -0.51,
    ("iliopsoas", "mean_hu"): -0.57,
    ("iliopsoas", "volume_ml"): -0.61,
    ("hip", "mean_hu"): -0.61,
    ("clavicula", "mean_hu"): -0.53,
    ("kidney", "volume_ml"): -0.49,
    ("iliac_artery", "volume_ml"): 0.33,
}

_ONE_STRUCTURE = {
    ("aorta", "volume_ml"): 0.64,
    ("vertebrae_L4", "mean_hu"): -0.55,
    ("pancreas", "volume_ml"): -0.49,
}


def paper_spearman(structures: Collection[str]) -> dict[tuple[str, str], float]:
    """The paper's headline r_s by (structure, metric) for a study of ``structures``.

    A both-sides value goes on the pooled row (``kidney``) when the study has it, not on the
    sides: a side's r_s is a different quantity. Without the pooled row (``pooled_structures: ""``)
    each side carries it, as the nearest comparison there is.

    >>> paper_spearman({"kidney", "kidney_left", "kidney_right"})["kidney", "volume_ml"]
    -0.49
    >>> ("kidney_left", "volume_ml") in paper_spearman({"kidney", "kidney_left"})
    False
    >>> paper_spearman({"kidney_left", "kidney_right"})["kidney_left", "volume_ml"]
    -0.49
    """
    values = dict(_ONE_STRUCTURE)
    for (name, metric), r in _BOTH_SIDES.items():
        names = [name] if name in structures else [f"{name}_{side}" for side in ("left", "right")]
        values.update({(each, metric): r for each in names})
    return values


def paper_kruskal_p() -> pd.DataFrame:
    """Table S1's Kruskal-Wallis p across age quartiles: ``structure, metric, paper_kruskal_p, paper_significant``.

    ``paper_kruskal_p`` is the text as printed (``"< 0.0001"`` or a number); v2 structures
    the paper did not have are left out.
    """
    table = pd.read_csv(config_file(TABLE_S1), dtype=str)
    long = table.melt(id_vars="structure", value_vars=list(_TABLE_S1_COLUMNS), var_name="metric",
                      value_name="paper_kruskal_p").dropna(subset=["paper_kruskal_p"])
    long["metric"] = long["metric"].map(_TABLE_S1_COLUMNS)
    long["paper_kruskal_p"] = long["paper_kruskal_p"].str.strip()
    return long.assign(paper_significant=long["paper_kruskal_p"].str.startswith("<")).reset_index(drop=True)
