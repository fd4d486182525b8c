"""cohort from Python: what the command line does, as functions for notebooks and scripts.

Paths may be given as ``str`` or :class:`~pathlib.Path`. The command line is a thin layer over
these functions, so a notebook run and a ``cohort run`` are the same run (lock, resume, run
key, exit code).

Measure one CT with its TotalSegmentator label map (no model needed):

>>> from cohort import api
>>> from cohort.manifest import example_manifest
>>> examples = example_manifest().parent
>>> features = api.measure(examples / "example_ct_sm.nii.gz", str(examples / "example_seg_fast.nii.gz"))
>>> liver = features.set_index("structure").loc["liver"]
>>> float(round(liver.volume_ml, 1)), liver.status
(1062.4, 'fov_truncated')
>>> len(features)
117

Run a manifest and read the results back (tables as pandas, and DuckDB views):

>>> import tempfile
>>> out = Path(tempfile.mkdtemp()) / "results"
>>> summary = api.run(example_manifest(), out, workers=1)  # doctest: +SKIP
>>> results = api.open_results(out)  # doctest: +SKIP
>>> results.sql("SELECT count(*) FROM features WHERE status = 'ok'").fetchall()  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import pandas as pd

from cohort.config import load_run_config
from cohort.ingest import LabelMap, load_ct, load_labels
from cohort.pipeline import MeasureSettings, measure_series
from cohort.provenance import LABELS_MODEL
from cohort.store.layout import missing_table

if TYPE_CHECKING:
    import duckdb

    from cohort.pipeline import SeriesResult
    from cohort.driver import PreparedRun, RunRequest, RunSummary
    from cohort.flows.prefect_api import PrefectApi
    from cohort.signals import StopRequest

PathLike = str | Path
AGING_FOLDER = "aging"


def run(manifest: PathLike, out: PathLike, model: str = "fast", weights: PathLike | None = None,
        config: PathLike | None = None, cluster: str = "local", workers: int | None = None,
        recompute: str | None = None, on_start: Callable[["PreparedRun", str], None] | None = None,
        on_result: Callable[["SeriesResult"], None] | None = None) -> "RunSummary":
    """Segment and measure every series of ``manifest`` into ``out``: exactly ``cohort run``.

    One run per output folder at a time (a second raises ``OutputLocked``), done rows are
    skipped, and rows made with other settings or from changed files are refused unless
    ``recompute="changed"``. Everything that stops a run before it starts raises
    :class:`~cohort.errors.RunCannotStart` (the CLI's exit code 2). ``summary.exit_code`` is
    the CLI's: 0 all done, 1 some rows failed (``summary.failures``), 130/143 when SIGINT or
    SIGTERM (Ctrl-C, a notebook's interrupt) stopped it, finished rows saved.

    ``on_start(prepared_run, prefect_description)`` is called once the plan is known (before
    any series runs) and ``on_result(series_result)`` as each series finishes: the CLI draws its
    progress with them.
    """
    from cohort.flows.prefect_api import prefect_api

    with _stop_requests() as stop, prefect_api() as prefect:
        from cohort.driver import BatchWriter, RunRequest, finish_run, prepare_run
        from cohort.store import OutputLayout, exclusive_output

        request = RunRequest(manifest=manifest, out=out, model=model, weights=weights, config=config,
                             cluster=cluster, workers=workers, recompute=recompute)
        with exclusive_output(OutputLayout(request.out.resolve()).lock, _command_line()):
            prepared = prepare_run(request)
            if on_start is not None:
                on_start(prepared, prefect.description)
            if prepared.plan.todo and not stop.is_set():
                summary = _run_flow_on_cluster(prepared, request, prefect, on_result, stop)
            else:  # nothing left: no Prefect, no cluster, so a finished manifest reruns in seconds
                summary = finish_run(prepared, BatchWriter.for_run(prepared), time.perf_counter())
    if stop.is_set():
        return dataclasses.replace(summary, stopped_by=int(stop.signal), in_flight_dropped=stop.in_flight_dropped)
    return summary


def _run_flow_on_cluster(prepared: "PreparedRun", request: "RunRequest", prefect: "PrefectApi",
                         on_result: Callable[["SeriesResult"], None] | None, stop: "StopRequest") -> "RunSummary":
    """Start the cluster (while the Prefect server started by :func:`run` boots), then run the flow.

    Prefect, Dask and the flow are imported here (about 1.5 s on the 2-core machine), once the plan
    says there is work: the server's boot is longer, so a run with work waits no longer for them."""
    from cohort.flows.clusters import open_client, with_model_threads
    from cohort.flows.run_flow import run_cohort_flow
    from cohort.flows.warmup import warm_up_workers

    model = prepared.context.model
    execution = with_model_threads(prepared.config.execution, model.spec.worker_threads if model else None)
    with open_client(request.cluster, request.workers, execution, model.spec.worker_memory_gb if model else None,
                     series=len(prepared.plan.todo)) as client:
        if prepared.config.execution.load_model_at_start:
            warm_up_workers(client, prepared.context, prepared.plan.todo)
        with prefect.connected():
            return run_cohort_flow(prepared, client, on_result, stop)


@contextmanager
def _stop_requests() -> Iterator["StopRequest"]:
    """SIGINT/SIGTERM stop the run cleanly when it runs in the main thread (CLI, notebook)."""
    from cohort.signals import StopRequest, stop_on_signals

    if threading.current_thread() is threading.main_thread():
        with stop_on_signals() as stop:
            yield stop
    else:
        yield StopRequest()


def _command_line() -> str:
    """What the lock file shows to a second run: the command, or the Python caller."""
    if Path(sys.argv[0]).name in ("cohort", "cli.py", "__main__.py"):
        return "cohort " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    return f"cohort.run() from {sys.argv[0] or 'python'} (pid {os.getpid()})"


def measure(ct: PathLike, labels: PathLike, config: PathLike | None = None, series_id: str | None = None,
            model: str = "fast") -> pd.DataFrame:
    """Measure every structure of one image with its label map: the ``features/`` rows of that pair.

    ``ct`` is a NIfTI file or a DICOM series folder, ``labels`` a label map of it (same grid, any
    axis order): a NIfTI file numbered as ``model``'s class map (the default, a TotalSegmentator v2
    ``total`` map; ``model="total_mr"`` for an MR image and its map), or a folder of one binary mask
    per structure of that map, named after it (TotalSegmentator's output without ``--ml``);
    ``config`` a run configuration (its ``measure`` section is used). The rows are exactly those ``cohort run --model model`` writes
    for a manifest row with that ``labels`` column.
    """
    from cohort.segmentation.registry import load_model_spec

    spec = load_model_spec(model)
    settings = MeasureSettings.from_config(load_run_config(Path(config) if config else None), spec)
    volume = load_ct(Path(ct), modality=spec.modality)
    label_map = load_labels(Path(labels), volume, settings.class_map)
    name = series_id or _stem(Path(ct))
    return measure_series(name, volume, label_map, LABELS_MODEL, settings).to_pandas()


def segment(ct: PathLike, model: str = "fast", weights: PathLike | None = None, device: str = "auto") -> LabelMap:
    """Segment one CT with a registered model: a :class:`~cohort.ingest.LabelMap` on the CT's own grid.

    ``weights`` is the folder holding the ``Dataset…`` folders (default: where TotalSegmentator
    keeps them). The networks are loaded on the first call and reused by later calls with the
    same model, weights and device. ``label_map.to_nifti()`` gives a nibabel image to save.

    >>> import tempfile
    >>> from cohort.testing.weights import build_weights
    >>> from cohort.segmentation import load_model_spec
    >>> from cohort.manifest import example_manifest
    >>> weights = Path(tempfile.mkdtemp())
    >>> _ = build_weights(load_model_spec("fast"), weights, "small", seed=0)  # random weights, for the example
    >>> label_map = segment(example_manifest().parent / "example_ct_sm.nii.gz", weights=weights, device="cpu")
    >>> label_map.labels.shape, label_map.labels.dtype.name
    ((122, 101, 30), 'uint8')
    """
    from cohort.driver import resolve_model
    from cohort.segmentation import get_segmenter
    from cohort.segmentation.registry import load_model_spec

    resolved = resolve_model(load_model_spec(model), Path(weights) if weights is not None else None)

    segmenter = get_segmenter(resolved.spec, resolved.weights_dir, device)
    return segmenter.segment(load_ct(Path(ct), modality=resolved.spec.modality)).label_map


@dataclass
class Results:
    """The tables of a results folder: ``features``, ``series`` (covariates as columns), the
    aging-study tables of ``cohort stats`` when present, and a DuckDB connection whose views
    have the same names (``aging_<table>`` for the study's)."""

    out: Path
    features: pd.DataFrame
    series: pd.DataFrame
    aging: dict[str, pd.DataFrame] = field(default_factory=dict)
    connection: "duckdb.DuckDBPyConnection | None" = None

    def sql(self, query: str) -> "duckdb.DuckDBPyRelation":
        """Run ``query`` over the views ``features``, ``series`` and ``aging_*``."""
        return self.connection.sql(query)


def open_results(out: PathLike, aging: PathLike | None = None) -> Results:
    """Read a results folder written by ``cohort run`` (and ``cohort stats``).

    Series no longer in the run's manifest are kept in ``series`` (``in_manifest`` false);
    ``aging`` defaults to ``<out>/aging``.
    """
    out = Path(out)
    if missing := missing_table(out, "features", "series"):
        raise FileNotFoundError(missing)
    features = pd.read_parquet(out / "features")
    series = _with_covariate_columns(pd.read_parquet(out / "series"))
    aging_dir = Path(aging) if aging is not None else out / AGING_FOLDER
    aging_tables = {path.stem: pd.read_parquet(path) for path in sorted(aging_dir.glob("*.parquet"))}
    return Results(out, features, series, aging_tables, _duckdb_views(features, series, aging_tables))


def _with_covariate_columns(series: pd.DataFrame) -> pd.DataFrame:
    """The manifest's extra columns, stored as one map column, as columns of their own."""
    if "covariates" not in series.columns:
        return series
    expanded = pd.DataFrame([dict(pairs) if pairs is not None else {} for pairs in series["covariates"]],
                            index=series.index)
    new = [column for column in expanded.columns if column not in series.columns]
    return pd.concat([series.drop(columns="covariates"), expanded[new]], axis=1)


def _duckdb_views(features: pd.DataFrame, series: pd.DataFrame, aging: dict[str, pd.DataFrame]
                  ) -> "duckdb.DuckDBPyConnection":
    import duckdb

    connection = duckdb.connect()
    for name, frame in {"features": features, "series": series,
                        **{f"aging_{key}": value for key, value in aging.items()}}.items():
        connection.register(name, frame)
    return connection


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name
