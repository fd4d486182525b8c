"""The names of the reasons a series or a measurement is analysed or left out, shared by the study
table (``cohort_table``), its participant flow (``flow``) and the report; the order of
:data:`SERIES_REASONS` is the order in which the study applies them."""

INCLUDED, SERIES_FAILED, NO_AGE, NOT_MEASURED = "included", "series_failed", "no_age", "not_measured"
NOT_IN_MANIFEST, OUTSIDE_AGE_RANGE, REPEATED_SCAN = "not_in_manifest", "outside_age_range", "repeated_scan"
REJECTED_IN_REVIEW, BELOW_LOWER_BOUND = "rejected_in_review", "below_lower_bound"
SERIES_REASONS = (NOT_IN_MANIFEST, SERIES_FAILED, NO_AGE, OUTSIDE_AGE_RANGE, REPEATED_SCAN)
