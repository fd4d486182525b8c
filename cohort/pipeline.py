"""One series from manifest row to table rows: plain functions, no Prefect or Dask inside.

``process_series`` chains the stages (ingest -> segment or read labels -> measure -> QC ->
store the label map) and never raises for a bad series: it returns a ``failed`` row with a
one-line reason instead, so a cohort run goes on. The caller writes the rows.
"""

from __future__ import annotations

import dataclasses
import logging
import socket
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np
import pyarrow as pa

import cohort
from cohort.config import ClassMap, IngestConfig, RunConfig, config_file, load_class_map, load_lower_bounds
from cohort.errors import OutOfMemory, RunCannotStart, SeriesError, is_out_of_memory
from cohort.ingest import InputName, LabelMap, Volume, align_image, check_dixon_scaling, load_ct, load_labels
from cohort.ingest.dicom import learn_from_crawl
from cohort.ingest.series_of_files import crawl_cache_path
from cohort.manifest import (INPUT_COLUMNS, SERIES_UID_COLUMNS, SeriesSpec, Subject, dixon_problem, subject_or_empty,
                             validate_subject)
from cohort.measurement import StructureMeasurements, measure_structures, qc_status
from cohort.measurement.fat_fraction import fat_fractions
from cohort.measurement.qc import OK
from cohort.provenance import (LABELS_MODEL, MR_MEASUREMENT_RULES, ContentKey, InputStats, RunKey, SourceFiles,
                               content_digest, digest, measurement_digest, series_uid_digest, source_files,
                               source_key)
from cohort.segmentation.device import DeviceSettings
from cohort.store.records import DONE, FAILED, SeriesRecord
from cohort.store.tables import FEATURES_SCHEMA
from cohort.store.zarr_labels import complete_label_map, write_label_map

if TYPE_CHECKING:
    import torch

    from cohort.segmentation import ModelSpec

log = logging.getLogger(__name__)
STAGES = ("ingest", "load_model", "segment", "measure", "store")
DEFAULT_MODEL = "fast"
NO_LOWER_BOUNDS = "lower_bounds_none.csv"  # an empty bounds file: every lower_bound_ml is null
STATISTICS = ("mean", "std", "median", "p05", "p95")


@dataclass(frozen=True)
class MeasureSettings:
    """Everything measurement needs, loaded once in the driver and shipped to workers."""

    class_map: ClassMap
    lower_bounds_ml: np.ndarray
    border_voxels: int
    digest: str = ""
    modality: str = "CT"
    padding_is_edge: bool = True  # measure.fov_edge: faces_and_padding

    @classmethod
    def from_config(cls, config: RunConfig, model: "ModelSpec | None" = None) -> "MeasureSettings":
        """The config's ``measure`` keys; where it leaves ``class_map`` unset, the model's class map
        and lower bounds (``model`` None: the default model's). A model without bounds measures
        against :data:`NO_LOWER_BOUNDS` (QC: absent / fov_truncated only)."""
        if model is None:
            from cohort.segmentation.registry import load_model_spec

            model = load_model_spec(DEFAULT_MODEL)
        class_map_name = config.measure.class_map or model.class_map
        bounds_name = config.measure.lower_bounds or (None if config.measure.class_map else model.lower_bounds)
        bounds_name = bounds_name or NO_LOWER_BOUNDS
        class_map = load_class_map(class_map_name)
        key = measurement_digest(config_file(class_map_name), config_file(bounds_name), config.measure.border_voxels,
                                 config.measure.fov_edge)
        return cls(class_map, load_lower_bounds(bounds_name, class_map), config.measure.border_voxels,
                   key if model.is_ct else digest([key, model.modality, MR_MEASUREMENT_RULES]), model.modality,
                   config.measure.fov_edge == "faces_and_padding")


@dataclass(frozen=True)
class ResolvedModel:
    """The model for rows without labels, resolved once in the driver: spec, weights folder and
    the part of the run key they make (workers never read config files or the environment)."""

    spec: "ModelSpec"
    weights_dir: Path
    key: RunKey


@dataclass(frozen=True)
class RunContext:
    """What every series of a run shares: the model for unlabelled rows and where to store."""

    labels_zarr: Path
    measure: MeasureSettings
    content_key: ContentKey
    model: ResolvedModel | None = None
    ingest: IngestConfig = IngestConfig()
    device: str = "auto"
    device_settings: DeviceSettings = DeviceSettings()

    def run_key(self, spec: SeriesSpec) -> RunKey:
        """The key a row of ``spec`` gets in this run (``labels`` rows do not depend on the model)."""
        if spec.labels is not None:
            return RunKey(LABELS_MODEL, measurement=self.measure.digest)
        if self.model is None:
            raise SeriesError(f"{spec.where}: no labels and no model in this run")
        return dataclasses.replace(self.model.key, measurement=self.measure.digest)


@dataclass(frozen=True)
class SeriesResult:
    """The outcome of one series: its ``series/`` record and, when done, its ``features/`` rows."""

    record: SeriesRecord
    features: pa.Table | None = None
    output_failed: bool = False
    out_of_memory: bool = False
    model_failed: bool = False  # the model could not be loaded: every series would fail alike

    @property
    def series_id(self) -> str:
        return self.record.series_id

    @property
    def done(self) -> bool:
        return self.record.done


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


def recorded_content(context: RunContext, series_id: str, key: RunKey, plain: str | None,
                     shape: tuple[int, ...]) -> tuple[str | None, LabelMap | None]:
    """The content the row records (keyed with the folder's :class:`ContentKey`), and the stored
    label map made by ``key``'s model from these bytes, if complete. A label map an earlier version
    stored was made from the plain digest: the row then records that form, so that the row and
    its label map still name the same bytes alike."""
    forms = context.content_key.recorded_forms(plain)
    for content in forms:
        label_map = complete_label_map(context.labels_zarr, series_id, source_key(key, content), shape)
        if label_map is not None:
            return content, label_map
    return forms[0], None


def label_map_attributes(series_id: str, model: str, settings: MeasureSettings) -> dict:
    """What a stored label map says of itself: its series and model, the structure of each id
    (so that a reader needs no class-map file) and the image's modality."""
    return {"series_id": series_id, "model": model, "class_map": Path(settings.class_map.source).name,
            "structures": {str(label): name for label, name in settings.class_map.names.items()},
            "modality": settings.modality}


def process_series(spec: SeriesSpec, context: RunContext, attempt: int = 1) -> SeriesResult:
    """Process one manifest row end to end; a problem with the series gives a ``failed`` row.

    The label map is stored (and marked complete) before it is measured, so that a kill
    during measurement costs a cheap re-measurement, not a second segmentation.
    """
    timer = StageTimer()
    started = time.perf_counter()
    try:
        subject = validate_subject(spec)
        with timer.stage("ingest"):
            inputs = InputStats.of(spec.path, spec.companions)
            fingerprint = inputs.fingerprint
            learn_crawled_series(spec)
            volume = load_ct(InputName.in_manifest(spec.path, spec.line), context.ingest,
                             spec.series_uid, context.measure.modality)
            dixon = load_dixon(spec, volume, context.ingest)
            groups = input_groups(spec, volume, dixon)
            key = context.run_key(spec)
            content, label_map = recorded_content(context, spec.series_id, key, content_digest(groups),
                                                  volume.hu.shape)
            made_from = source_key(key, content)
            reused = label_map is not None
            if label_map is None and spec.labels is not None:
                label_map = load_labels(InputName.in_manifest(spec.labels, spec.line, column="labels"), volume,
                                        context.measure.class_map, context.ingest)
            check_unchanged_while_read(spec, inputs, groups)
        counting_device = None  # the CPU
        if label_map is None:
            with timer.stage("load_model"):
                try:
                    segmenter = load_segmenter(context.model, context.device, context.device_settings)
                except RunCannotStart as error:  # weights that do not fit: not this series' failure
                    if is_out_of_memory(error):
                        raise  # a crowded GPU at load: retried as out of memory, below
                    return dataclasses.replace(failed_result(spec, str(error), attempt, timer, started),
                                               model_failed=True)
            with timer.stage("segment"):
                label_map = segmenter.segment(volume).label_map
            if segmenter.device.type == "cuda":
                counting_device = segmenter.device
        if not reused:
            with timer.stage("store"):
                try:
                    write_label_map(context.labels_zarr, spec.series_id, label_map,
                                    label_map_attributes(spec.series_id, key.model, context.measure), made_from)
                except OSError as error:
                    result = failed_result(spec, f"{spec.where}: cannot write its label map to "
                                                 f"{context.labels_zarr}: {error.strerror or error}", attempt, timer,
                                           started)
                    return dataclasses.replace(result, output_failed=True)
        with timer.stage("measure"):
            features = measure_series(spec.series_id, volume, label_map, key.model, context.measure, dixon,
                                      counting_device)
    except OutOfMemory as error:
        return dataclasses.replace(failed_result(spec, str(error), attempt, timer, started), out_of_memory=True)
    except SeriesError as error:
        return failed_result(spec, str(error), attempt, timer, started)
    except Exception as error:  # a bug or an environment fault must not stop the cohort
        problem = scrub_input_paths(spec, f"{type(error).__name__}: {error}")  # an OSError names its file
        if is_out_of_memory(error):
            reason = f"{spec.where}: out of memory ({problem}); give each worker more memory"
            return dataclasses.replace(failed_result(spec, reason, attempt, timer, started), out_of_memory=True)
        log.error("unexpected error in %s: %s", spec.where, problem)
        log.debug("traceback of the unexpected error in %s", spec.where, exc_info=True)  # may name input paths
        return failed_result(spec, f"{spec.where}: unexpected {problem}", attempt, timer, started)
    record = _series_record(spec, subject, DONE, None, timer, started, attempt).replace(
        model=key.model, shape=tuple(volume.hu.shape), spacing_mm=tuple(volume.grid.spacing),
        orientation=volume.grid.orientation, measure_spacing_mm=spacing_text(volume.grid.spacing),
        n_structures_ok=int(sum(status == OK for status in features["status"].to_pylist())),
        reused_label_map=reused, seconds_segment=0.0 if reused else timer.seconds.get("segment"),
        run_key=key.digest, run_settings=key.to_json(), input_fingerprint=fingerprint,
        input_content=content, **{column: series_uid_digest(getattr(spec, column), content)
                                   for column in SERIES_UID_COLUMNS})
    return SeriesResult(record, features)


def learn_crawled_series(spec: SeriesSpec) -> None:
    """Where ``cohort manifest`` crawled the row's DICOM folders (its crawl cache lies beside the
    manifest), this process learns which series their files are of, so that it reads the headers
    of the row's own series only, not of every series in the folder (cohort.ingest.series_of_files)."""
    cache = crawl_cache_path(spec.manifest)
    if not cache.is_file():
        return
    for source in spec.sources:
        if source.series_uid and source.path.is_dir():
            learn_from_crawl(cache, source.path)


def check_unchanged_while_read(spec: SeriesSpec, inputs: InputStats, groups: list[SourceFiles]) -> None:
    """Raise when a file the row read (its image, or its DICOM series' files, label map, Dixon images)
    changed between the stats taken before reading and the end of reading and digesting (a file still
    being written or copied into the export): the voxels read, the bytes digested and the label map
    could then be of different versions, and the row would record content it was not computed from.
    Other files of its folders (another series being copied in beside it) do not count. A failed row
    is tried again by a rerun."""
    changed = inputs.changed_since(file for group in groups for file in group.files)
    if changed:
        raise SeriesError(f"{spec.where}: {len(changed)} of its files changed while they were being read (still being "
                          "written or copied?); rerun when they are complete")


def scrub_input_paths(spec: SeriesSpec, text: str) -> str:
    """``text`` with the row's input paths replaced by their names in the manifest (``<path of line N>``)."""
    for column in INPUT_COLUMNS:
        if getattr(spec, column) is not None:
            text = InputName.in_manifest(getattr(spec, column), spec.line, column).scrub(text)
    return text


def load_segmenter(model: ResolvedModel | None, device: str, settings: DeviceSettings):
    """The run's model; loaded on a worker's first series, then reused (a cached instance)."""
    from cohort.segmentation import get_segmenter

    if model is None:
        raise SeriesError("no model was resolved for this run")
    return get_segmenter(model.spec, model.weights_dir, device, settings)


def check_label_ids(label_map: LabelMap, measured: StructureMeasurements, class_map: ClassMap) -> None:
    """Every id in the label map must be a class of the map (from the counts already measured)."""
    unknown = [int(i) for i in np.flatnonzero(measured.n_voxels[1:]) + 1 if i not in class_map.names]
    if measured.largest_label >= class_map.n_labels:
        unknown.append(measured.largest_label)
    if unknown:
        raise SeriesError(f"{label_map.name}: label ids {unknown[:5]} are not in the class map "
                          f"{Path(class_map.source).name}; was it made with another model's classes? "
                          "(--model picks the class map)")


@dataclass(frozen=True)
class Dixon:
    """Fat and water images of a series, on its grid, and the files each was read from."""

    fat: np.ndarray
    water: np.ndarray
    fat_files: tuple[Path, ...] = ()
    water_files: tuple[Path, ...] = ()


def load_dixon(spec: SeriesSpec, volume: Volume, limits: IngestConfig) -> Dixon | None:
    """The row's ``fat`` and ``water`` images on the series' grid; None when the row gives neither."""
    if spec.fat is None and spec.water is None:
        return None
    problem = dixon_problem(spec)
    if problem:
        raise SeriesError(f"{spec.where}: {problem}")
    images = {column: load_ct(InputName.in_manifest(path, spec.line, column=column), limits,
                              getattr(spec, f"{column}_series_uid"), modality=None)
              for column, path in (("fat", spec.fat), ("water", spec.water))}
    check_dixon_scaling(*((images[column].name, images[column].precise_scales) for column in ("fat", "water")))
    fat, water = (align_image(volume, images[column], column) for column in ("fat", "water"))
    return Dixon(fat, water, images["fat"].files, images["water"].files)


def input_groups(spec: SeriesSpec, volume: Volume, dixon: Dixon | None) -> list[SourceFiles]:
    """The files of each of the row's sources (:attr:`SeriesSpec.sources` order) as ingest read
    them, for :func:`cohort.provenance.content_digest`: a DICOM series is found once per row (the
    label map, a file or a folder of masks, is listed, not read, to be found)."""
    read = {"path": volume.files, "fat": dixon.fat_files if dixon else (), "water": dixon.water_files if dixon else ()}
    columns = [column for column in INPUT_COLUMNS if getattr(spec, column) is not None]
    return [SourceFiles(tuple(read[column])) if column in read else source_files(*source)
            for column, source in zip(columns, spec.sources)]


def measure_series(series_id: str, volume: Volume, label_map: LabelMap, model: str,
                   settings: MeasureSettings, dixon: Dixon | None = None,
                   counting_device: "torch.device | None" = None) -> pa.Table:
    """The ``features/`` rows of one series: one per structure of the class map.

    CT values go to the ``*_hu`` columns, MR values (arbitrary units) to ``*_intensity``; with
    Dixon images each structure gets its ``fat_fraction``. ``counting_device``: the GPU the
    series was segmented on, to count its histograms there (the same rows), None for the CPU.
    """
    measured = measure_structures(volume.hu, label_map.labels, volume.grid.voxel_volume_ml,
                                  settings.class_map.n_labels, settings.border_voxels,
                                  volume.outside_fov if settings.padding_is_edge else None, counting_device)
    check_label_ids(label_map, measured, settings.class_map)
    status = qc_status(measured, settings.lower_bounds_ml)
    ids = np.array(sorted(settings.class_map.names))
    present = measured.n_voxels[ids] > 0
    columns = {
        "series_id": [series_id] * len(ids),
        "structure": [settings.class_map.names[i] for i in ids],
        "label": ids.astype(np.int32),
        "volume_ml": measured.volume_ml[ids].astype(np.float64),
        "n_voxels": measured.n_voxels[ids],
        "status": status[ids].tolist(),
        "lower_bound_ml": settings.lower_bounds_ml[ids],
        "model": [model] * len(ids),
        "measure_spacing_mm": [spacing_text(volume.grid.spacing)] * len(ids),
        "modality": [settings.modality] * len(ids),
        "fat_fraction": (np.full(len(ids), np.nan) if dixon is None else
                         fat_fractions(dixon.fat, dixon.water, label_map.labels, settings.class_map.n_labels)[ids]),
    }
    unit, other = ("hu", "intensity") if settings.modality == "CT" else ("intensity", "hu")
    for statistic in STATISTICS:
        columns[f"{statistic}_{unit}"] = np.where(present, getattr(measured, f"{statistic}_hu")[ids], np.nan)
        columns[f"{statistic}_{other}"] = np.full(len(ids), np.nan)
    arrays = [pa.array(columns[f.name], type=f.type, from_pandas=True) for f in FEATURES_SCHEMA]
    return pa.Table.from_arrays(arrays, schema=FEATURES_SCHEMA)


def spacing_text(spacing: tuple[float, ...]) -> str:
    """Spacing as ``"0.977x0.977x2"``: readable, and groupable in SQL."""
    return "x".join(f"{s:.4g}" for s in spacing)


def failed_result(spec: SeriesSpec, reason: str, attempt: int = 1, timer: StageTimer | None = None,
                  started: float | None = None) -> SeriesResult:
    """The ``failed`` row of a series, with ``reason`` folded onto one line."""
    reason = " ".join(reason.split())
    record = _series_record(spec, subject_or_empty(spec), FAILED, reason, timer or StageTimer(),
                            time.perf_counter() if started is None else started, attempt)
    return SeriesResult(record)


def _series_record(spec: SeriesSpec, subject: Subject, status: str, error: str | None, timer: StageTimer,
                   started: float, attempt: int) -> SeriesRecord:
    return SeriesRecord(
        series_id=spec.series_id, status=status, error=error, attempts=attempt,
        **manifest_fields(spec, subject),
        worker=socket.gethostname(), cohort_version=cohort.__version__, nnunet_version=_nnunet_version(),
        finished_at=datetime.now(timezone.utc).replace(microsecond=0),
        seconds_total=time.perf_counter() - started,
        **{f"seconds_{stage}": timer.seconds.get(stage) for stage in STAGES},
    )


def manifest_fields(spec: SeriesSpec, subject: Subject) -> dict[str, object]:
    """The ``series/`` fields that come from the manifest row and are rewritten in place when edited
    (not ``series_uid``: another series is another input, :func:`cohort.store.ledger.plan_run`)."""
    return {"subject_id": spec.subject_id, "age": subject.age, "sex": subject.sex, "manifest_line": spec.line,
            "covariates": spec.covariates, "in_manifest": True}


def _nnunet_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("nnunetv2")
    except PackageNotFoundError:
        return None


def features_table(results: list[SeriesResult]) -> pa.Table | None:
    tables = [r.features for r in results if r.features is not None]
    return pa.concat_tables(tables) if tables else None
