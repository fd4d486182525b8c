"""Finding weights as TotalSegmentator does, and clear messages for missing or broken folders."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from cohort.errors import RunCannotStart
from cohort.segmentation import check_model_ready, models_report, resolve_weights_dir
from cohort.segmentation.weights import checkpoint_path, network_folder


def test_resolution_order(monkeypatch, tmp_path):
    for variable in ("TOTALSEG_WEIGHTS_PATH", "TOTALSEG_HOME_DIR"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert resolve_weights_dir(None) == tmp_path / "home" / ".totalsegmentator" / "nnunet" / "results"
    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(tmp_path / "ts"))
    assert resolve_weights_dir(None) == tmp_path / "ts" / "nnunet" / "results"
    monkeypatch.setenv("TOTALSEG_WEIGHTS_PATH", str(tmp_path / "w"))
    assert resolve_weights_dir(None) == tmp_path / "w"
    assert resolve_weights_dir(tmp_path / "explicit") == tmp_path / "explicit"


def test_missing_model_says_how_to_get_it(fast_spec, tmp_path):
    with pytest.raises(RunCannotStart) as info:
        check_model_ready(fast_spec, tmp_path)
    message = str(info.value)
    assert "missing: Dataset297_TotalSegmentator_total_3mm_1559subj" in message
    assert f"TOTALSEG_WEIGHTS_PATH={tmp_path} totalseg_download_weights -t total_fast" in message
    assert "v2.0.0-weights/Dataset297_TotalSegmentator_total_3mm_1559subj.zip" in message


def test_present_model_is_ready(fast_spec, fast_weights):
    check_model_ready(fast_spec, fast_weights)


@pytest.fixture()
def broken_copy(fast_spec, fast_weights, tmp_path) -> Path:
    target = tmp_path / "weights"
    shutil.copytree(fast_weights, target)
    return target


def _break_checkpoint(spec, weights):
    checkpoint_path(spec, spec.networks[0], weights).unlink()


def _break_classes(spec, weights):
    path = network_folder(spec, spec.networks[0], weights) / "dataset.json"
    data = json.loads(path.read_text())
    data["labels"] = {"background": 0, "liver": 1, "spleen": 2}
    path.write_text(json.dumps(data))


def _break_plans(spec, weights):
    (network_folder(spec, spec.networks[0], weights) / "plans.json").write_text("{not json")


def _break_trainer_folder(spec, weights):
    folder = network_folder(spec, spec.networks[0], weights)
    folder.rename(folder.with_name("nnUNetTrainer__nnUNetPlans__3d_fullres"))


@pytest.mark.parametrize("damage, expected", [
    (_break_checkpoint, "no checkpoint .*fold_0/checkpoint_final.pth"),
    (_break_classes, "dataset.json labels differ from class_map_total_v2.csv"),
    (_break_plans, "cannot read .*plans.json"),
    (_break_trainer_folder, "no folder nnUNetTrainer_4000epochs_NoMirroring__nnUNetPlans__3d_fullres"),
])
def test_broken_folder_is_named_with_fix(fast_spec, broken_copy, damage, expected):
    damage(fast_spec, broken_copy)
    with pytest.raises(RunCannotStart, match=expected) as info:
        check_model_ready(fast_spec, broken_copy)
    assert f"rm -r {broken_copy / fast_spec.networks[0].dataset}" in str(info.value)
    assert "broken" in models_report(broken_copy)


def test_models_report(fast_weights):
    report = models_report(fast_weights)
    assert f"weights folder: {fast_weights} (from --weights)" in report
    assert "fast: present" in report
    assert "full: missing" in report and "totalseg_download_weights -t total" in report
