"""Stage 4: keep results: Parquet tables (features, series), Zarr label maps, the ledger."""

from cohort.store.layout import OutputLayout
from cohort.store.ledger import Plan, drop_superseded_rows, plan_run, repair
from cohort.store.lock import exclusive_output
from cohort.store.tables import FEATURES_SCHEMA, SERIES_SCHEMA, read_dataset, write_part
from cohort.store.zarr_labels import read_label_map, write_label_map

__all__ = [
    "FEATURES_SCHEMA", "SERIES_SCHEMA", "OutputLayout", "Plan", "drop_superseded_rows", "exclusive_output",
    "plan_run", "read_dataset", "read_label_map", "repair", "write_label_map", "write_part",
]
