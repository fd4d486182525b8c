"""cohort: from a manifest of CT series to organ volume and density tables and the aging study.

The public Python API (:mod:`cohort.api`), the same as the command line::

    import cohort

    summary = cohort.run("scans.csv", "results/")          # cohort run (lock, resume, run key)
    features = cohort.measure("ct.nii.gz", "seg.nii.gz")    # one image pair -> feature rows
    label_map = cohort.segment("ct.nii.gz", model="fast")   # one CT -> label map on its grid
    results = cohort.open_results("results/")               # pandas tables + DuckDB views

A series flows through the stages named by the subpackages::

    manifest row -> ingest (Volume) -> segmentation | read labels (LabelMap)
                 -> store the label map (Zarr) -> measurement (features + QC) -> Parquet rows

``cohort.pipeline.process_series`` chains them for one series; ``cohort.flows`` schedules it.
"""

from typing import Any

__version__ = "0.1.0"
__all__ = ["measure", "open_results", "run", "segment"]


def __getattr__(name: str) -> Any:
    """The API functions, imported on first use so that ``import cohort`` stays light."""
    if name in __all__:
        from cohort import api

        return getattr(api, name)
    raise AttributeError(f"module 'cohort' has no attribute {name!r}")
