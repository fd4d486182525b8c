"""``cohort run`` on rows without labels: real nnU-Net predictors on random-weight folders in
TotalSegmentator's layout, through the CLI, the Prefect flow and a Dask worker."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from cohort.ingest import load_ct
from cohort.segmentation import load_model_spec
from cohort.testing.weights import build_weights
from cohort.store import read_label_map
from testkit import cohort_cli, write_manifest


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("weights")
    for model in ("fast", "full"):
        build_weights(load_model_spec(model), folder, "small", seed=3)
    return folder


def _manifest(folder: Path, examples: Path, with_dicom: bool) -> Path:
    """A crop of the example CT (keeps the 1.5 mm full model quick on a CPU), its LAS mirror,
    optionally the LPS DICOM series, and one row with precomputed labels."""
    ct = nib.load(str(examples / "example_ct_sm.nii.gz")).slicer[30:90, 20:80, :]
    nib.save(ct, str(folder / "crop.nii.gz"))
    nib.save(ct.slicer[::-1, :, :], str(folder / "las.nii.gz"))  # LAS: a non-RAS NIfTI input
    rows = [
        {"series_id": "sm", "path": str(folder / "crop.nii.gz"), "age": 64, "sex": "M"},
        {"series_id": "sm_las", "path": str(folder / "las.nii.gz"), "age": 64, "sex": "M"},
        {"series_id": "labelled", "path": str(examples / "example_ct_sm.nii.gz"), "age": 64, "sex": "M",
         "labels": str(examples / "example_seg_fast.nii.gz")},
    ]
    if with_dicom:
        rows.append({"series_id": "dicom", "path": str(examples / "example_ct_dicom"), "age": 57, "sex": "F"})
    return write_manifest(folder / "scans.csv", rows)


@pytest.mark.parametrize("model", ["fast", "full"])
def test_segmented_rows_get_label_maps_on_their_own_grid(model: str, weights: Path, tmp_path: Path,
                                                         examples: Path, prefect_server: str) -> None:
    manifest = _manifest(tmp_path, examples, with_dicom=model == "fast")
    out = tmp_path / "results"
    result = cohort_cli("run", "--manifest", str(manifest), "--out", str(out), "--model", model,
                        "--weights", str(weights), "--workers", "1", api=prefect_server)
    assert result.returncode == 0, result.stderr
    features = pd.read_parquet(out / "features")
    series = pd.read_parquet(out / "series").set_index("series_id")
    segmented = ["sm", "sm_las"] + (["dicom"] if model == "fast" else [])
    assert features.groupby("series_id")["model"].first().to_dict() == {
        **{series_id: model for series_id in segmented}, "labelled": "labels"}
    for series_id in segmented:
        volume = load_ct(_path(manifest, series_id))
        stored = read_label_map(out / "labels.zarr", series_id)
        assert stored.labels.shape == volume.hu.shape
        np.testing.assert_allclose(stored.affine, volume.affine, atol=1e-4)
        assert series.loc[series_id, "measure_spacing_mm"] == features[features.series_id == series_id][
            "measure_spacing_mm"].iloc[0]
    # The LAS copy is the same voxels mirrored: its prediction must be the mirrored prediction.
    plain = read_label_map(out / "labels.zarr", "sm").labels
    mirrored = read_label_map(out / "labels.zarr", "sm_las").labels
    assert (plain == mirrored[::-1]).mean() > 0.999
    # One worker, which loads the networks once, as it joins (cohort.flows.warmup): only the first
    # segmented series can have waited for them.
    load = series.loc[segmented, "seconds_load_model"].sort_values()
    assert load.iloc[:-1].max() < 0.05, load.to_dict()


def _path(manifest: Path, series_id: str) -> Path:
    rows = pd.read_csv(manifest).set_index("series_id")
    return Path(rows.loc[series_id, "path"])


def test_missing_weights_stop_the_run_with_instructions(tmp_path: Path, examples: Path) -> None:
    manifest = _manifest(tmp_path, examples, with_dicom=False)
    empty = tmp_path / "no_weights"
    empty.mkdir()
    result = cohort_cli("run", "--manifest", str(manifest), "--out", str(tmp_path / "r"), "--weights", str(empty))
    assert result.returncode == 2
    message = " ".join(result.stderr.split())
    assert "Dataset297_TotalSegmentator_total_3mm_1559subj" in message and "totalseg_download_weights" in message
    assert not (tmp_path / "r" / "series").exists() or not any((tmp_path / "r" / "series").iterdir())


def test_weights_that_do_not_fit_the_network_stop_the_run_and_keep_finished_rows(
        weights: Path, tmp_path: Path, examples: Path, prefect_server: str) -> None:
    """A checkpoint of another network passes the folder check (its files are all there) and fails
    only where the network is built: the run stops (exit 2) naming it, rather than failing every
    series with the same error, and rows finished before the stop are kept."""
    import shutil

    from cohort.segmentation.weights import network_folder

    spec = load_model_spec("fast")
    copy = tmp_path / "weights"
    build_weights(spec, copy, "small", seed=3)
    build_weights(load_model_spec("total_mr_fast"), tmp_path / "other", "small", seed=3)
    checkpoint = network_folder(spec, spec.networks[0], copy) / "fold_0" / spec.checkpoint
    shutil.copyfile(next((tmp_path / "other").rglob(spec.checkpoint)), checkpoint)
    manifest = write_manifest(tmp_path / "scans.csv", [
        {"series_id": "labelled", "path": str(examples / "example_ct_sm.nii.gz"), "age": 64, "sex": "M",
         "labels": str(examples / "example_seg_fast.nii.gz")},
        *({"series_id": f"ct{i}", "path": str(examples / "example_ct_sm.nii.gz"), "age": 64, "sex": "M"}
          for i in range(3))])
    out = tmp_path / "results"
    config = tmp_path / "one_at_a_time.yaml"  # one series at a time, in manifest order: the labelled row first
    config.write_text("execution:\n  threads_per_worker: 1\n  batch_size: 100\n  flush_interval_s: 3600\n")
    result = cohort_cli("run", "--manifest", str(manifest), "--out", str(out), "--weights", str(copy),
                        "--workers", "1", "--config", str(config), api=prefect_server)
    message = " ".join(result.stderr.split())
    assert result.returncode == 2, result.stderr
    assert "the model could not be loaded on a worker" in message and "stopped before failing every series" in message
    statuses = pd.read_parquet(out / "series").set_index("series_id")["status"].to_dict()
    assert statuses == {"labelled": "done"}, statuses  # written at the stop; no series failed for the model
