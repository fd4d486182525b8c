"""Load the run's model on every worker as soon as it joins, not when its first series asks.

Without this, a worker's first series (and every series queued behind it in the worker's other
slots) waits for the worker to import nnU-Net, create its CUDA context and load the weights,
after the Prefect server has booted and the flow has started. With it, that load starts the
moment the cluster is up, beside the Prefect server's boot and the first series' reading.

A :class:`ModelWarmup` is a Dask worker plugin: Dask gives it to the workers running now and to
every worker that joins later (a SLURM job that starts late, a worker restarted after a timeout).
Its ``setup`` only starts a thread, so the worker's event loop never waits for the load. The
segmenter cache (:func:`cohort.segmentation.get_segmenter`) does the rest: a series that arrives
during the load waits for that one load instead of starting another. A load that fails is only
logged here; the first series then loads the model itself and reports the error as its own.

Example (a local cluster, the small random test weights)::

    >>> import tempfile
    >>> from pathlib import Path
    >>> from distributed import Client, LocalCluster
    >>> from cohort.pipeline import ResolvedModel
    >>> from cohort.provenance import RunKey
    >>> from cohort.segmentation import load_model_spec
    >>> from cohort.testing.weights import build_weights
    >>> weights = Path(tempfile.mkdtemp()) / "weights"
    >>> _ = build_weights(load_model_spec("fast"), weights, "small", seed=0)
    >>> model = ResolvedModel(load_model_spec("fast"), weights, RunKey("fast"))
    >>> with LocalCluster(n_workers=1, threads_per_worker=1, processes=False) as cluster, Client(cluster) as client:
    ...     warmup = ModelWarmup(model)
    ...     client.register_plugin(warmup)
    ...     client.run(wait_for_warmup, warmup.name)
    {'inproc://...': True}
"""

from __future__ import annotations

import logging
import threading
from typing import Sequence

from distributed import Client
from distributed.diagnostics.plugin import WorkerPlugin

from cohort.manifest import SeriesSpec
from cohort.pipeline import ResolvedModel, RunContext, load_segmenter
from cohort.segmentation.device import DeviceSettings

log = logging.getLogger(__name__)


class ModelWarmup(WorkerPlugin):
    """Start loading ``model`` in a background thread of each worker when the plugin reaches it."""

    def __init__(self, model: ResolvedModel, device: str = "auto", settings: DeviceSettings = DeviceSettings()) -> None:
        self.model = model
        self.device = device
        self.settings = settings
        self.name = f"cohort-model-warmup-{model.key.digest}"

    def setup(self, worker) -> None:
        thread = threading.Thread(target=self._load, name=self.name, daemon=True)
        worker.extensions[self.name] = thread
        thread.start()

    def _load(self) -> None:
        try:
            load_segmenter(self.model, self.device, self.settings)
        except Exception as error:  # the first series loads it again and fails with this error as its own
            log.warning("loading model %s ahead of the first series failed (%s: %s)",
                        self.model.spec.name, type(error).__name__, error)


def wait_for_warmup(name: str, timeout_s: float | None = None, dask_worker=None) -> bool:
    """On a worker (``client.run`` passes ``dask_worker``): wait for its warm-up thread ``name``;
    True when it ended."""
    thread = dask_worker.extensions.get(name)
    if thread is None:
        return False
    thread.join(timeout_s)
    return not thread.is_alive()


def warm_up_workers(client: Client, context: RunContext, todo: Sequence[SeriesSpec]) -> ModelWarmup | None:
    """Start loading the run's model on ``client``'s workers (and on those that join later) when
    some series of ``todo`` will be segmented; None when none will (every row has its labels)."""
    if context.model is None or all(spec.labels is not None for spec in todo):
        return None
    warmup = ModelWarmup(context.model, context.device, context.device_settings)
    client.register_plugin(warmup)
    return warmup
