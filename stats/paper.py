"""Reference numbers from the TotalSegmentator paper's aging study (Wasserthal et al. 2023).

Headline Spearman correlations with age, per v2 structure and metric, for comparing the
directions and rough sizes a cohort finds. The paper reports some structures once for both
sides (e.g. "gluteus minimus"); both v2 sides get that value.
"""

from __future__ import annotations

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

PAPER_SPEARMAN: dict[tuple[str, str], float] = {
    ("aorta", "volume_ml"): 0.64,
    ("vertebrae_L4", "mean_hu"): -0.55,
    ("pancreas", "volume_ml"): -0.49,
    **{(f"{name}_{side}", metric): r for (name, metric), r in _BOTH_SIDES.items() for side in ("left", "right")},
}
