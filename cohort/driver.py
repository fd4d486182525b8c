"""A cohort run as plain steps, called by the Prefect flow: prepare, write batches, summarise.

Nothing here knows about Prefect or Dask; ``flows/`` decides where ``process_series`` runs
and hands each finished result to a :class:`BatchWriter`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import cohort
from cohort.config import RunConfig, load_run_config
from cohort.errors import WRITE_ERRORS, OutputWriteFailed, RunCannotStart
from cohort.manifest import SeriesSpec, load_manifest
from cohort.pipeline import MeasureSettings, ResolvedModel, RunContext, SeriesResult, features_table
from cohort.provenance import RunKey, load_content_key
from cohort.segmentation.device import DeviceSettings
from cohort.segmentation.registry import ModelSpec, load_model_spec, model_class_map
from cohort.store.records import SeriesRecord, series_table
from cohort.store import (OutputLayout, Plan, drop_superseded_rows, new_run_id, plan_run, refuse_changed, repair,
                          write_metadata_updates, write_part)
from cohort.store.tables import write_replacing

log = logging.getLogger(__name__)
RECOMPUTE_CHOICES = ("changed",)


@dataclass(frozen=True)
class RunRequest:
    """The arguments of ``cohort run``, as given (``str`` or ``Path`` alike)."""

    manifest: Path
    out: Path
    model: str = "fast"
    weights: Path | None = None
    config: Path | None = None
    cluster: str = "local"
    workers: int | None = None
    recompute: str | None = None

    def __post_init__(self) -> None:
        for name in ("manifest", "out", "weights", "config"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                object.__setattr__(self, name, Path(value))
        # absolute: the run's record names it, and `cohort report` finds the images through it from any folder
        object.__setattr__(self, "manifest", self.manifest.absolute())
        if self.workers is not None and self.workers < 1:
            raise RunCannotStart(f"--workers {self.workers}: give a number of Dask workers >= 1")
        if self.recompute is not None and self.recompute not in RECOMPUTE_CHOICES:
            raise RunCannotStart(f"--recompute {self.recompute!r}: choose one of {', '.join(RECOMPUTE_CHOICES)}")


@dataclass(frozen=True)
class PreparedRun:
    """A run that can start: validated inputs, resolved config and the plan."""

    request: RunRequest
    config: RunConfig
    layout: OutputLayout
    context: RunContext
    plan: Plan
    run_id: str


def prepare_run(request: RunRequest) -> PreparedRun:
    """Validate everything that can stop a run (exit code 2) before any series is touched.

    The caller holds the output folder's lock. Edited manifest fields of done rows and rows
    that left the manifest are rewritten here (cheap); nothing is recomputed.
    """
    specs = load_manifest(request.manifest)
    config = load_run_config(request.config)
    model_spec = load_model_spec(request.model)
    measure = MeasureSettings.from_config(config, model_spec)
    check_class_maps_agree(model_class_map(model_spec).names, measure, model_spec.source)
    needs_weights = any(spec.labels is None for spec in specs)
    device_settings = DeviceSettings(config.execution.precision, config.execution.channels_last)
    model = resolve_model(model_spec, request.weights, device_settings) if needs_weights else None
    layout = OutputLayout(request.out.resolve())
    layout.check_writable(config.execution.min_free_gb)
    with stop_on_write_errors(layout, committed=0):
        layout.create()
        for path in repair(layout):
            log.warning("a features part could not be read; set aside as %s, its series are processed again", path)
        drop_superseded_rows(layout)
        content_key = load_content_key(layout.content_key)
    context = RunContext(labels_zarr=layout.labels_zarr, measure=measure, content_key=content_key, model=model,
                         ingest=config.ingest, device_settings=device_settings)
    plan = plan_run(specs, layout, context, recompute_changed=request.recompute == "changed")
    refuse_changed(plan, layout.root, recompute_changed=request.recompute == "changed")
    run_id = new_run_id(layout)
    prepared = PreparedRun(request, config, layout, context, plan, run_id)
    with stop_on_write_errors(layout, committed=0):
        write_metadata_updates(layout, run_id, plan.metadata_updates)
        _record_run(prepared, specs)
    return prepared


def output_write_failed(reason: str, committed: int) -> OutputWriteFailed:
    """The one-line stop of a run that could not write under ``--out``, after ``committed`` batches."""
    return OutputWriteFailed(f"{reason}; stopped. {committed} batch(es) were committed before; free space "
                             "or fix the folder, then rerun the same command to resume")


@contextmanager
def stop_on_write_errors(layout: OutputLayout, committed: int) -> Iterator[None]:
    """Turn a failure to write under ``--out`` (disk full, quota, read-only, permissions) in the
    run's own bookkeeping (start-up repair and compaction, manifest edits, the run record, the
    final compaction) into :class:`OutputWriteFailed`: exit 2 and one line, as for a batch. Left
    to propagate, the ``OSError`` is a traceback with exit 1, which reads as "some series failed".
    What was committed stays; every step here is redone by the next run."""
    try:
        yield
    except OSError as error:
        if error.errno not in WRITE_ERRORS:
            raise
        raise output_write_failed(f"cannot write {error.filename or layout.root}: {error.strerror or error}",
                                  committed) from None


def resolve_model(spec: ModelSpec, weights: Path | None, settings: DeviceSettings = DeviceSettings()
                  ) -> ResolvedModel:
    """The model with its weights (``weights``, else where its tool keeps them), which must
    be complete, and its part of the run key. Resolved once, in the driver, for every worker.

    The run key's config digest covers the model file (pre- and post-processing, body crop), its
    class map and network class files (:func:`model_config_digest`); a GPU precision other than
    nnU-Net's fp16 is part of the key too."""
    from cohort.segmentation import check_model_ready, resolve_weights_dir
    from cohort.segmentation.registry import model_config_digest
    from cohort.segmentation.weights import weights_fingerprint

    weights_dir = resolve_weights_dir(weights, spec).resolve()
    check_model_ready(spec, weights_dir)
    precision = "" if settings.precision == DeviceSettings().precision else settings.precision
    key = RunKey(spec.name, model_config_digest(spec), weights_fingerprint(spec, weights_dir), precision=precision)
    return ResolvedModel(spec, weights_dir, key)


def check_class_maps_agree(model_names: dict[int, str], measure: MeasureSettings, model_source: str) -> None:
    """Every id the model writes must mean the same structure in the measurement class map."""
    measured = measure.class_map.names
    disagree = sorted(i for i, name in model_names.items() if measured.get(i) != name)
    if disagree:
        examples = ", ".join(f"{i}: {model_names[i]!r} vs {measured.get(i)!r}" for i in disagree[:3])
        raise RunCannotStart(f"the class map of model {model_source} and the measurement class map "
                             f"{measure.class_map.source} disagree on {len(disagree)} label id(s) ({examples}); "
                             "leave measure.class_map unset in --config (the model's own is used) or set it to the "
                             "model's class map")


def _record_run(run: PreparedRun, specs: list[SeriesSpec]) -> None:
    """Provenance beside the outputs: arguments, resolved config, run key, versions, manifest hash."""
    model = run.context.model
    record = {
        "run_id": run.run_id,
        "request": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(run.request).items()},
        "config": asdict(run.config),
        "model_key": model.key.to_json() if model else None,
        "weights_dir": str(model.weights_dir) if model else None,
        "measurement_key": run.context.measure.digest,
        "cohort_version": cohort.__version__,
        "manifest_sha256": hashlib.sha256(run.request.manifest.read_bytes()).hexdigest(),
        "n_series": len(specs),
        "n_todo": len(run.plan.todo),
        "n_recomputed": len(run.plan.changed) if run.request.recompute else 0,
        "n_redone": len(run.plan.redo),
        "n_metadata_updates": len(run.plan.metadata_updates),
        "n_moved": len(run.plan.moved),
        "n_inputs_gone": len(run.plan.inputs_gone),
        "not_in_manifest": len(run.plan.not_in_manifest),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    # whole or absent (temporary name, then rename): `cohort status` reads the newest record
    write_replacing(run.layout.runs / f"{run.run_id}.json",
                    lambda temporary: temporary.write_text(json.dumps(record, indent=2, default=str)))


@dataclass
class BatchWriter:
    """Collects finished series and writes them as one Parquet part per batch.

    The caller flushes when :meth:`should_flush` says so: a kill then loses at most one
    batch of work, which the rerun redoes.
    """

    layout: OutputLayout
    run_id: str
    batch_size: int
    flush_interval_s: float
    pending: list[SeriesResult] = field(default_factory=list)
    failures: list[SeriesResult] = field(default_factory=list)
    n_done: int = 0
    n_parts: int = 0
    oldest: float = 0.0

    def add(self, result: SeriesResult) -> None:
        if result.output_failed:
            self.stop_on_write_failure(result.record.error)
        if result.model_failed:
            raise RunCannotStart(f"the model could not be loaded on a worker: {result.record.error}; stopped "
                                 "before failing every series alike (fix the weights, then rerun to resume)")
        if not self.pending:
            self.oldest = time.monotonic()
        self.pending.append(result)
        if result.done:
            self.n_done += 1
        else:
            self.failures.append(result)
        self.publish_unflushed()

    def publish_unflushed(self) -> None:
        """Tell ``cohort status`` which series finished since the last part (``layout.unflushed``):
        at most a batch of ids, replaced atomically. Advisory: a failure to write it is ignored
        (the parts, not this file, are the results; a stopped run's file is not read)."""
        rows = [[r.record.series_id, r.record.status,
                 r.record.finished_at.isoformat() if r.record.finished_at else None] for r in self.pending]
        partial = self.layout.unflushed.with_name(self.layout.unflushed.name + ".partial")
        try:
            partial.write_text(json.dumps({"run_id": self.run_id, "series": rows}))
            os.replace(partial, self.layout.unflushed)
        except OSError:
            pass

    def stop_on_write_failure(self, reason: str | None) -> None:
        raise output_write_failed(str(reason), self.n_parts)

    @classmethod
    def for_run(cls, run: PreparedRun) -> "BatchWriter":
        execution = run.config.execution
        return cls(run.layout, run.run_id, execution.batch_size, execution.flush_interval_s)

    def should_flush(self) -> bool:
        """A full batch, or a partial one whose oldest result waited ``flush_interval_s``."""
        if not self.pending:
            return False
        return len(self.pending) >= self.batch_size or time.monotonic() - self.oldest >= self.flush_interval_s

    def flush(self) -> None:
        if not self.pending:
            return
        name = f"part-{self.run_id}-{self.n_parts:05d}"
        features = features_table(self.pending)
        metadata = {"cohort_version": cohort.__version__, "run_id": self.run_id}
        try:
            if features is not None:
                write_part(self.layout.features, name, features, metadata)
            write_part(self.layout.series, name, series_table([r.record for r in self.pending]), metadata)
        except OSError as error:
            self.stop_on_write_failure(f"cannot write {self.layout.root}: {error.strerror or error}")
        self.n_parts += 1
        self.pending = []
        self.publish_unflushed()


@dataclass(frozen=True)
class RunSummary:
    n_done: int
    n_failed: int
    n_skipped: int
    seconds: float
    out: Path
    failures: list[SeriesRecord]
    dashboard: str | None = None
    not_in_manifest: int = 0
    stopped_by: int | None = None
    in_flight_dropped: int = 0

    @property
    def exit_code(self) -> int:
        """0 every row done, 1 some failed, 128 + signal number when a signal stopped the run."""
        if self.stopped_by is not None:
            return 128 + self.stopped_by
        return 1 if self.n_failed else 0


def finish_run(run: PreparedRun, writer: BatchWriter, started: float, dashboard: str | None = None) -> RunSummary:
    """Write what is pending and drop failed rows that a retry superseded."""
    writer.flush()
    with stop_on_write_errors(run.layout, writer.n_parts):
        drop_superseded_rows(run.layout)
    return RunSummary(
        n_done=writer.n_done,
        n_failed=len(writer.failures),
        n_skipped=len(run.plan.already_done),
        seconds=time.perf_counter() - started,
        out=run.layout.root,
        failures=[r.record for r in writer.failures],
        dashboard=dashboard,
        not_in_manifest=len(run.plan.not_in_manifest),
    )
