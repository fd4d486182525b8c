"""From a DICOM export to a manifest (``cohort manifest``), one concept per module:

- ``crawl``: one header row per file, parallel, cached by size and mtime;
- ``series``: files grouped by SeriesInstanceUID into series summaries, images without one by folder
  (geometry judged as ingest does);
- ``policy``: selection as data (``configs/selection.yaml``), a ``selected`` and ``reason`` per series;
- ``pseudonyms``: keyed HMAC pseudonyms with a secret kept outside the outputs;
- ``writing``: ``scans.csv``, ``scans.index.parquet``, ``scans.unreadable.parquet``;
- ``build``: the four in order.

See docs/manifest.md.
"""

from cohort.export.build import ManifestSummary, build_manifest

__all__ = ["ManifestSummary", "build_manifest"]
