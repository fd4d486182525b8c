"""One series from manifest row to table rows: plain functions, no Prefect or Dask inside.

``process_series`` chains the stages (ingest -> segment or read labels -> measure -> QC ->
store the label map) and never raises for a bad series: it returns a ``failed`` row with a
one-line reason instead, so a cohort run goes on. The caller writes the rows.
"""

from __future__ import annotations

import logging
import socket
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa

import cohort
from cohort.config import ClassMap, RunConfig, load_class_map, load_lower_bounds
from cohort.errors import SeriesError
from cohort.ingest import LabelMap, Volume, align_labels, load_ct, load_label_nifti
from cohort.manifest import SeriesSpec, Subject, subject_or_empty, validate_subject
from cohort.measure import StructureMeasurements, measure_structures, qc_status
from cohort.measure.qc import OK
from cohort.store.tables import FEATURES_SCHEMA, SERIES_SCHEMA
from cohort.store.zarr_labels import write_label_map

log = logging.getLogger(__name__)
LABELS_MODEL = "labels"
STAGES = ("ingest", "load_model", "segment", "measure", "store")


@dataclass(frozen=True)
class MeasureSettings:
    """Everything measurement needs, loaded once in the driver and shipped to workers."""

    class_map: ClassMap
    lower_bounds_ml: np.ndarray
    border_voxels: int

    @classmethod
    def from_config(cls, config: RunConfig) -> "MeasureSettings":
        class_map = load_class_map(config.measure.class_map)
        return cls(class_map, load_lower_bounds(config.measure.lower_bounds, class_map), config.measure.border_voxels)


@dataclass(frozen=True)
class RunContext:
    """What every series of a run shares: the model for unlabelled rows and where to store."""

    model: str
    weights_dir: Path | None
    labels_zarr: Path
    measure: MeasureSettings
    device: str = "auto"


@dataclass(frozen=True)
class SeriesResult:
    """The outcome of one series: its ``series/`` row and, when done, its ``features/`` rows."""

    series_id: str
    row: dict
    features: pa.Table | None = None

    @property
    def done(self) -> bool:
        return self.row["status"] == "done"


@dataclass
class StageTimer:
    seconds: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


def process_series(spec: SeriesSpec, context: RunContext, attempt: int = 1) -> SeriesResult:
    """Process one manifest row end to end; a problem with the series gives a ``failed`` row."""
    timer = StageTimer()
    started = time.perf_counter()
    try:
        subject = validate_subject(spec)
        with timer.stage("ingest"):
            volume = load_ct(spec.path)
            label_map = align_labels(volume, load_label_nifti(spec.labels)) if spec.labels else None
        model = LABELS_MODEL if label_map is not None else context.model
        if label_map is None:
            with timer.stage("load_model"):
                segmenter = load_segmenter(context)
            with timer.stage("segment"):
                label_map = segmenter.segment(volume).label_map
        with timer.stage("measure"):
            features = measure_series(spec.series_id, volume, label_map, model, context.measure)
        with timer.stage("store"):
            write_label_map(context.labels_zarr, spec.series_id, label_map,
                            {"series_id": spec.series_id, "model": model, "class_map": context.measure.class_map.source})
    except SeriesError as error:
        return failed_result(spec, str(error), attempt, timer, started)
    except Exception as error:  # a bug or an environment fault must not stop the cohort
        log.exception("unexpected error in %s", spec.where)
        return failed_result(spec, f"{spec.where}: unexpected {type(error).__name__}: {error}", attempt, timer, started)
    row = _series_row(spec, subject, "done", None, timer, started, attempt)
    row.update(model=model, shape=list(volume.hu.shape), spacing_mm=list(volume.grid.spacing),
               orientation=volume.grid.orientation, measure_spacing_mm=spacing_text(volume.grid.spacing),
               n_structures_ok=int(sum(status == OK for status in features["status"].to_pylist())))
    return SeriesResult(spec.series_id, row, features)


def load_segmenter(context: RunContext):
    """The run's model; loaded on a worker's first series, then reused (a cached instance)."""
    from cohort.segment import get_segmenter, load_model_spec, resolve_weights_dir

    return get_segmenter(load_model_spec(context.model), resolve_weights_dir(context.weights_dir), context.device)


def check_label_ids(label_map: LabelMap, measured: StructureMeasurements, class_map: ClassMap) -> None:
    """Every id in the label map must be a class of the map (from the counts already measured)."""
    unknown = [int(i) for i in np.flatnonzero(measured.n_voxels[1:]) + 1 if i not in class_map.names]
    if measured.largest_label >= class_map.n_labels:
        unknown.append(measured.largest_label)
    if unknown:
        raise SeriesError(f"{label_map.source}: label ids {unknown[:5]} are not in the class map "
                          f"{Path(class_map.source).name}; is this a TotalSegmentator v2 'total' label map?")


def measure_series(series_id: str, volume: Volume, label_map: LabelMap, model: str,
                   settings: MeasureSettings) -> pa.Table:
    """The ``features/`` rows of one series: one per structure of the class map."""
    measured = measure_structures(volume.hu, label_map.labels, volume.grid.voxel_volume_ml,
                                  settings.class_map.n_labels, settings.border_voxels)
    check_label_ids(label_map, measured, settings.class_map)
    status = qc_status(measured, settings.lower_bounds_ml)
    ids = np.array(sorted(settings.class_map.names))
    present = measured.n_voxels[ids] > 0
    columns = {
        "series_id": [series_id] * len(ids),
        "structure": [settings.class_map.names[i] for i in ids],
        "label": ids.astype(np.int32),
        "volume_ml": measured.volume_ml[ids].astype(np.float64),
        **{name: np.where(present, getattr(measured, name)[ids], np.nan)
           for name in ("mean_hu", "std_hu", "median_hu", "p05_hu", "p95_hu")},
        "n_voxels": measured.n_voxels[ids],
        "status": status[ids].tolist(),
        "lower_bound_ml": settings.lower_bounds_ml[ids],
        "model": [model] * len(ids),
        "measure_spacing_mm": [spacing_text(volume.grid.spacing)] * len(ids),
    }
    arrays = [pa.array(columns[f.name], type=f.type, from_pandas=True) for f in FEATURES_SCHEMA]
    return pa.Table.from_arrays(arrays, schema=FEATURES_SCHEMA)


def spacing_text(spacing: tuple[float, ...]) -> str:
    """Spacing as ``"0.977x0.977x2"``: readable, and groupable in SQL."""
    return "x".join(f"{s:.4g}" for s in spacing)


def failed_result(spec: SeriesSpec, reason: str, attempt: int = 1, timer: StageTimer | None = None,
                  started: float | None = None) -> SeriesResult:
    """The ``failed`` row of a series, with ``reason`` folded onto one line."""
    reason = " ".join(reason.split())
    row = _series_row(spec, subject_or_empty(spec), "failed", reason, timer or StageTimer(),
                      time.perf_counter() if started is None else started, attempt)
    return SeriesResult(spec.series_id, row)


def _series_row(spec: SeriesSpec, subject: Subject, status: str, error: str | None, timer: StageTimer,
                started: float, attempt: int) -> dict:
    row = {name: None for name in SERIES_SCHEMA.names}
    row.update(
        series_id=spec.series_id, age=subject.age, sex=subject.sex, status=status, error=error,
        manifest_line=spec.line, attempts=attempt, worker=socket.gethostname(),
        cohort_version=cohort.__version__, nnunet_version=_nnunet_version(),
        finished_at=datetime.now(timezone.utc).replace(microsecond=0),
        seconds_total=time.perf_counter() - started,
        **{f"seconds_{stage}": timer.seconds.get(stage) for stage in STAGES},
    )
    return row


def _nnunet_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("nnunetv2")
    except PackageNotFoundError:
        return None


def series_table(results: list[SeriesResult]) -> pa.Table:
    return pa.Table.from_pylist([r.row for r in results], schema=SERIES_SCHEMA)


def features_table(results: list[SeriesResult]) -> pa.Table | None:
    tables = [r.features for r in results if r.features is not None]
    return pa.concat_tables(tables) if tables else None
