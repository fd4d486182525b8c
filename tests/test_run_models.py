"""``cohort run`` end to end with models other than fast/full: VIBESegmentator on MR with Dixon
fat/water images (intensity columns, fat fractions, no HU, no lower bounds), a CT refused by an
MR model and an MR refused by a CT model, and a model defined only in a temporary folder."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import yaml

from cohort.segmentation import load_model_spec
from cohort.segmentation.registry import MODELS_DIR, model_class_map
from cohort.store import read_label_map
from cohort.testing.images import dixon_pair, synthetic_image
from cohort.testing.weights import build_weights
from testkit import cohort_cli

SHAPE = (36, 30, 16)
SPACING = (2.0, 2.0, 3.0)
HU_COLUMNS = ["mean_hu", "std_hu", "median_hu", "p05_hu", "p95_hu"]
INTENSITY_COLUMNS = ["mean_intensity", "std_intensity", "median_intensity", "p05_intensity", "p95_intensity"]


def _save(image: nib.Nifti1Image, path: Path) -> str:
    nib.save(image, str(path))
    return str(path)


def _manifest(path: Path, rows: list[dict]) -> Path:
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_vibeseg_on_mr_gives_intensities_and_fat_fractions(tmp_path: Path, prefect_server: str) -> None:
    weights = tmp_path / "weights"
    build_weights(load_model_spec("vibeseg"), weights, "small", seed=7)
    mr = synthetic_image("MR", SHAPE, SPACING, seed=1)
    fat, water = dixon_pair(mr)
    rows = [
        {"series_id": "mr_dixon", "path": _save(mr, tmp_path / "mr.nii.gz"), "age": 50, "sex": "F",
         "fat": _save(fat, tmp_path / "fat.nii.gz"), "water": _save(water, tmp_path / "water.nii.gz")},
        {"series_id": "mr_plain", "path": _save(synthetic_image("MR", SHAPE, SPACING, seed=2), tmp_path / "mr2.nii.gz"),
         "age": 60, "sex": "M"},
        {"series_id": "a_ct", "path": _save(synthetic_image("CT", SHAPE, SPACING), tmp_path / "ct.nii.gz"),
         "age": 70, "sex": "M"},
    ]
    manifest = _manifest(tmp_path / "scans.csv", rows)
    out = tmp_path / "results"
    result = cohort_cli("run", "--manifest", str(manifest), "--out", str(out), "--model", "vibeseg",
                        "--weights", str(weights), "--workers", "1", api=prefect_server)
    assert result.returncode == 1, result.stderr  # the CT row failed, the MR rows are done
    series = pd.read_parquet(out / "series").set_index("series_id")
    assert series.loc[["mr_dixon", "mr_plain"], "status"].tolist() == ["done", "done"]
    error = series.loc["a_ct", "error"]
    assert "this is a CT" in error and "MR model" in error and str(tmp_path) not in error

    features = pd.read_parquet(out / "features")
    assert set(features["modality"]) == {"MR"} and set(features["model"]) == {"vibeseg"}
    assert features[HU_COLUMNS].isna().all().all()  # MR values are never HU
    present = features[features["status"] != "absent"]
    assert len(present) and present["mean_intensity"].notna().all()
    assert features["lower_bound_ml"].isna().all() and "below_lower_bound" not in set(features["status"])
    assert {"subcutaneous_fat", "inner_fat", "muscle"} <= set(features["structure"])

    # Fat fraction = sum(fat) / sum(fat + water) over each stored mask; none without Dixon images.
    dixon = features[features.series_id == "mr_dixon"].set_index("label")
    labels = read_label_map(out / "labels.zarr", "mr_dixon").labels
    fat_values, water_values = np.asarray(fat.dataobj), np.asarray(water.dataobj)
    measured = dixon.loc[dixon["n_voxels"] > 0, "fat_fraction"]
    assert len(measured) > 0
    for label, value in measured.items():
        mask = labels == label
        assert value == pytest.approx(fat_values[mask].sum() / (fat_values[mask] + water_values[mask]).sum(),
                                      rel=1e-5)
    assert 0.05 <= measured.min() and measured.max() <= 0.65  # within the planted range
    assert features.loc[features.series_id == "mr_plain", "fat_fraction"].isna().all()


def test_a_model_defined_in_a_temporary_folder_runs_and_refuses_mr(tmp_path: Path, prefect_server: str) -> None:
    """docs/models.md's worked example: one YAML and a class map, beside each other, nowhere else."""
    model_dir = tmp_path / "mymodel"
    model_dir.mkdir()
    (model_dir / "class_map_mymodel.csv").write_text("label,structure\n1,liver\n2,spleen\n3,aorta\n4,muscle\n")
    config = yaml.safe_load((MODELS_DIR / "fast.yaml").read_text())
    config.update(name="mymodel", description="a 4-class test model", class_map="class_map_mymodel.csv",
                  lower_bounds=None, networks=[{"dataset": "Dataset501_MyModel", "classes": "class_map_mymodel.csv"}],
                  trainer="nnUNetTrainer", get_weights=[], weights_url="https://example.org/{dataset}.zip")
    model = model_dir / "mymodel.yaml"
    model.write_text(yaml.safe_dump(config))
    weights = tmp_path / "weights"
    build_weights(load_model_spec(str(model)), weights, "small", seed=8)
    rows = [
        {"series_id": "ct", "path": _save(synthetic_image("CT", SHAPE, SPACING), tmp_path / "ct.nii.gz"),
         "age": 64, "sex": "M"},
        {"series_id": "an_mr", "path": _save(synthetic_image("MR", SHAPE, SPACING), tmp_path / "mr.nii.gz"),
         "age": 40, "sex": "F"},
    ]
    out = tmp_path / "results"
    result = cohort_cli("run", "--manifest", str(_manifest(tmp_path / "scans.csv", rows)), "--out", str(out),
                        "--model", str(model), "--weights", str(weights), "--workers", "1", api=prefect_server)
    assert result.returncode == 1, result.stderr
    series = pd.read_parquet(out / "series").set_index("series_id")
    assert series.loc["ct", "status"] == "done"
    assert "not a CT in Hounsfield units" in series.loc["an_mr", "error"]
    assert "MR model" in series.loc["an_mr", "error"]
    features = pd.read_parquet(out / "features")
    assert sorted(features["structure"]) == ["aorta", "liver", "muscle", "spleen"]
    assert set(features["modality"]) == {"CT"} and features[INTENSITY_COLUMNS].isna().all().all()
    assert features.loc[features.status != "absent", "mean_hu"].notna().all()
    assert features["lower_bound_ml"].isna().all() and set(features["model"]) == {"mymodel"}


def test_run_on_a_missing_model_names_the_download_command(tmp_path: Path, examples: Path) -> None:
    rows = [{"series_id": "ct", "path": str(examples / "example_ct_sm.nii.gz")}]
    result = cohort_cli("run", "--manifest", str(_manifest(tmp_path / "scans.csv", rows)), "--out",
                        str(tmp_path / "out"), "--model", "total_v3_fast", "--weights", str(tmp_path / "none"))
    assert result.returncode == 2
    assert f"cohort models download total_v3_fast --weights {tmp_path / 'none'}" in " ".join(result.stderr.split())
    assert not (tmp_path / "none").exists()  # nothing was downloaded


@pytest.mark.slow
@pytest.mark.parametrize("model", ["fastest", "total_v3_fast", "total_v3", "total_mr_fast", "total_mr"])
def test_each_shipped_model_runs_end_to_end(model: str, tmp_path: Path, prefect_server: str) -> None:
    spec = load_model_spec(model)
    weights = tmp_path / "weights"
    build_weights(spec, weights, "small", seed=9)
    rows = [{"series_id": "s1", "path": _save(synthetic_image(spec.modality, SHAPE, SPACING), tmp_path / "i.nii.gz"),
             "age": 55, "sex": "F"}]
    out = tmp_path / "results"
    result = cohort_cli("run", "--manifest", str(_manifest(tmp_path / "scans.csv", rows)), "--out", str(out),
                        "--model", model, "--weights", str(weights), "--workers", "1", api=prefect_server)
    assert result.returncode == 0, result.stderr
    features = pd.read_parquet(out / "features")
    assert len(features) == len(model_class_map(spec).names) and set(features["modality"]) == {spec.modality}
    unit = HU_COLUMNS if spec.is_ct else INTENSITY_COLUMNS
    assert features.loc[features.status != "absent", unit[0]].notna().all()
