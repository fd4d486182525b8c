"""A cohort run as plain steps, called by the Prefect flow: prepare, write batches, summarise.

Nothing here knows about Prefect or Dask; ``flows/`` decides where ``process_series`` runs
and hands each finished result to a :class:`BatchWriter`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cohort
from cohort.config import RunConfig, load_run_config
from cohort.manifest import SeriesSpec, load_manifest
from cohort.pipeline import MeasureSettings, RunContext, SeriesResult, features_table, series_table
from cohort.store import OutputLayout, Plan, drop_superseded_rows, plan_run, repair, write_part

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunRequest:
    """The arguments of ``cohort run``, as given."""

    manifest: Path
    out: Path
    model: str = "fast"
    weights: Path | None = None
    config: Path | None = None
    cluster: str = "local"
    workers: int | None = None


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
    """Validate everything that can stop a run (exit code 2) before any series is touched."""
    specs = load_manifest(request.manifest)
    config = load_run_config(request.config)
    _check_model(request, needs_weights=any(spec.labels is None for spec in specs))
    layout = OutputLayout(request.out.resolve())
    layout.create()
    repair(layout)
    context = RunContext(model=request.model, weights_dir=request.weights, labels_zarr=layout.labels_zarr,
                         measure=MeasureSettings.from_config(config))
    run_id = time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
    prepared = PreparedRun(request, config, layout, context, plan_run(specs, layout), run_id)
    _record_run(prepared, specs)
    return prepared


def _check_model(request: RunRequest, needs_weights: bool) -> None:
    """``--model`` must name a registered model; its weights must be there if any row needs them."""
    from cohort.segment import check_model_ready, load_model_spec, resolve_weights_dir

    spec = load_model_spec(request.model)
    if needs_weights:
        check_model_ready(spec, resolve_weights_dir(request.weights))


def _record_run(run: PreparedRun, specs: list[SeriesSpec]) -> None:
    """Provenance beside the outputs: arguments, resolved config, versions, manifest hash."""
    record = {
        "run_id": run.run_id,
        "request": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(run.request).items()},
        "config": asdict(run.config),
        "cohort_version": cohort.__version__,
        "manifest_sha256": hashlib.sha256(run.request.manifest.read_bytes()).hexdigest(),
        "n_series": len(specs),
        "n_todo": len(run.plan.todo),
    }
    (run.layout.runs / f"{run.run_id}.json").write_text(json.dumps(record, indent=2, default=str))


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
        if not self.pending:
            self.oldest = time.monotonic()
        self.pending.append(result)
        if result.done:
            self.n_done += 1
        else:
            self.failures.append(result)
            log.warning("failed: %s", result.row["error"])

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
        if features is not None:
            write_part(self.layout.features, name, features, metadata)
        write_part(self.layout.series, name, series_table(self.pending), metadata)
        self.n_parts += 1
        self.pending = []


@dataclass(frozen=True)
class RunSummary:
    n_done: int
    n_failed: int
    n_skipped: int
    seconds: float
    out: Path
    failures: list[dict]
    dashboard: str | None = None

    @property
    def exit_code(self) -> int:
        return 1 if self.n_failed else 0


def finish_run(run: PreparedRun, writer: BatchWriter, started: float, dashboard: str | None = None) -> RunSummary:
    """Write what is pending and drop failed rows that a retry superseded."""
    writer.flush()
    drop_superseded_rows(run.layout)
    return RunSummary(
        n_done=writer.n_done,
        n_failed=len(writer.failures),
        n_skipped=len(run.plan.already_done),
        seconds=time.perf_counter() - started,
        out=run.layout.root,
        failures=[{k: r.row[k] for k in ("series_id", "manifest_line", "error")} for r in writer.failures],
        dashboard=dashboard,
    )
