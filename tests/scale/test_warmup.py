"""cohort.flows.warmup: every worker, those that join later included, loads the run's model as
soon as it joins; a failed load only logs; a run whose rows all have labels loads nothing.
Real worker processes of a real local Dask cluster, real nnU-Net predictors on random weights."""

from __future__ import annotations

from pathlib import Path

import pytest
from distributed import Client, LocalCluster

from cohort.config import RunConfig
from cohort.manifest import SeriesSpec
from cohort.pipeline import MeasureSettings, ResolvedModel, RunContext
from cohort.provenance import RunKey, load_content_key
from cohort.segmentation import load_model_spec
from cohort.testing.weights import build_weights
from cohort.flows.warmup import ModelWarmup, wait_for_warmup, warm_up_workers


def loaded_models() -> list[str]:
    """On a worker: the models its segmenter cache holds."""
    from cohort.segmentation.segmenter import _CACHE

    return sorted(segmenter.spec.name for segmenter in _CACHE.values())


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> ResolvedModel:
    weights = tmp_path_factory.mktemp("weights")
    build_weights(load_model_spec("fast"), weights, "small", seed=1)
    return ResolvedModel(load_model_spec("fast"), weights, RunKey("fast"))


@pytest.fixture()
def client():
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        yield client


def _context(model: ResolvedModel | None, tmp_path: Path) -> RunContext:
    measure = MeasureSettings.from_config(RunConfig(), load_model_spec("fast"))
    return RunContext(labels_zarr=tmp_path / "labels.zarr", measure=measure,
                      content_key=load_content_key(tmp_path / ".cohort.content_key"), model=model)


def _spec(tmp_path: Path, labels: Path | None) -> SeriesSpec:
    return SeriesSpec(series_id="a", path=tmp_path / "a.nii.gz", line=2, manifest=tmp_path / "scans.csv", labels=labels)


def test_workers_load_the_model_when_they_join_later_ones_too(client: Client, model: ResolvedModel,
                                                                tmp_path: Path) -> None:
    warmup = warm_up_workers(client, _context(model, tmp_path), [_spec(tmp_path, None)])
    assert isinstance(warmup, ModelWarmup)
    assert list(client.run(wait_for_warmup, warmup.name, 120).values()) == [True]
    assert list(client.run(loaded_models).values()) == [["fast"]]
    client.cluster.scale(2)
    client.wait_for_workers(2, timeout=60)
    assert list(client.run(wait_for_warmup, warmup.name, 120).values()) == [True, True]
    assert list(client.run(loaded_models).values()) == [["fast"], ["fast"]]


def test_a_failed_load_only_logs_and_the_worker_keeps_serving(client: Client, model: ResolvedModel,
                                                              tmp_path: Path) -> None:
    empty = tmp_path / "no_weights"
    empty.mkdir()
    broken = ResolvedModel(model.spec, empty, RunKey("fast", weights="none"))
    warmup = warm_up_workers(client, _context(broken, tmp_path), [_spec(tmp_path, None)])
    assert list(client.run(wait_for_warmup, warmup.name, 60).values()) == [True]
    assert list(client.run(loaded_models).values()) == [[]]
    assert client.submit(lambda: 41 + 1).result(timeout=30) == 42


def test_nothing_is_loaded_when_every_row_has_its_labels(client: Client, model: ResolvedModel, tmp_path: Path) -> None:
    labelled = [_spec(tmp_path, tmp_path / "a_labels.nii.gz")]
    assert warm_up_workers(client, _context(model, tmp_path), labelled) is None
    assert warm_up_workers(client, _context(None, tmp_path), [_spec(tmp_path, None)]) is None
    assert list(client.run(loaded_models).values()) == [[]]
