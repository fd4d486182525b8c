"""Stage 4: keep results: Parquet tables (features, series), Zarr label maps, the ledger."""

from cohort.store.layout import OutputLayout
from cohort.store.ledger import (ChangedRow, Plan, drop_superseded_rows, new_run_id, plan_run, read_ledger, refuse_changed, repair,
                                  write_metadata_updates)
from cohort.store.lock import exclusive_output
from cohort.store.tables import FEATURES_SCHEMA, SERIES_SCHEMA, read_dataset, write_part
from cohort.store.zarr_labels import complete_label_map, label_map_attributes, read_label_map, write_label_map

__all__ = [
    "FEATURES_SCHEMA", "SERIES_SCHEMA", "ChangedRow", "OutputLayout", "Plan", "complete_label_map",
    "label_map_attributes",
    "drop_superseded_rows", "new_run_id", "exclusive_output", "plan_run", "read_dataset", "read_ledger", "read_label_map",
    "refuse_changed", "repair", "write_label_map", "write_metadata_updates", "write_part",
]
