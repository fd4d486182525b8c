"""Quality control of each measured structure: may the aging study use it?

One status per structure, first match wins: ``absent`` (no voxel), ``fov_truncated``
(cut off by the field of view), ``below_lower_bound`` (smaller than the anatomical lower
bound of the TotalSegmentator paper's Table S1, so the segmentation failed), else ``ok``.
"""

from __future__ import annotations

import numpy as np

from cohort.measurement.features import StructureMeasurements

OK, ABSENT, FOV_TRUNCATED, BELOW_LOWER_BOUND = "ok", "absent", "fov_truncated", "below_lower_bound"
STATUSES = (OK, ABSENT, FOV_TRUNCATED, BELOW_LOWER_BOUND)


def qc_status(measurements: StructureMeasurements, lower_bound_ml: np.ndarray) -> np.ndarray:
    """Status per label id; ``lower_bound_ml`` is NaN where no bound exists."""
    below = np.zeros(len(lower_bound_ml), dtype=bool)
    known = ~np.isnan(lower_bound_ml)
    below[known] = measurements.volume_ml[known] < lower_bound_ml[known]
    return np.select(
        [measurements.n_voxels == 0, measurements.touches_border, below],
        [ABSENT, FOV_TRUNCATED, BELOW_LOWER_BOUND],
        default=OK,
    ).astype(object)
