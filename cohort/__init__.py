"""cohort: from a manifest of CT series to organ volume and density tables and the aging study.

A series flows through the stages named by the subpackages::

    manifest row -> ingest (Volume) -> segment | read labels (LabelMap)
                 -> measure (features + QC) -> store (Parquet rows, Zarr label map)

``cohort.pipeline.process_series`` chains them for one series; ``flows`` schedules it.
"""

__version__ = "0.1.0"
