"""Stage 3: measure every structure of a label map and decide whether the study may use it."""

from cohort.measurement.features import StructureMeasurements, measure_structures
from cohort.measurement.qc import STATUSES, qc_status

__all__ = ["STATUSES", "StructureMeasurements", "measure_structures", "qc_status"]
