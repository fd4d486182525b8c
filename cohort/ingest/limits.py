"""Header checks made before any voxel is read: an input may not claim more voxels than allowed."""

from __future__ import annotations

import math

from cohort.config import IngestConfig
from cohort.errors import SeriesError
from cohort.ingest.names import InputName


def check_voxel_count(name: InputName, shape: tuple[int, ...], limits: IngestConfig) -> None:
    """Raise when ``shape`` (from a header) holds more voxels than ``limits.max_voxels``."""
    voxels = math.prod(shape)
    if voxels > limits.max_voxels:
        raise SeriesError(
            f"{name}: header says shape {'x'.join(map(str, shape))} = {voxels:,} voxels, more than "
            f"ingest.max_voxels = {limits.max_voxels:,}; corrupt header, or raise the limit in the run config"
        )
