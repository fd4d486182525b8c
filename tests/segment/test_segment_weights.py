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


def _truncate_checkpoint(spec, weights):
    path = checkpoint_path(spec, spec.networks[0], weights)
    path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])


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
    (_truncate_checkpoint, "fold_0/checkpoint_final.pth is not a complete PyTorch checkpoint"),
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


@pytest.mark.parametrize("trainer, as_base", [
    ("nnUNetTrainer", True), ("nnUNetTrainerNoMirroring", True), ("nnUNetTrainer_4000epochs_NoMirroring", True),
    ("nnUNetTrainer_2000epochs_NoMirroring", True),
    ("nnUNetTrainerBN", False),          # its own build_network_architecture (batch norm)
    ("nnUNetTrainer_Primus_M", False),   # likewise (a transformer)
    ("NoSuchTrainer", False)])
def test_trainers_that_build_their_network_as_the_base_trainer_are_read_from_source(trainer: str, as_base: bool) -> None:
    from cohort.segmentation.nnunet_folder import builds_network_as_base_trainer

    assert builds_network_as_base_trainer(trainer) is as_base


def test_the_network_built_without_the_trainer_is_the_trainers_own(fast_spec, fast_weights) -> None:
    """Same modules, same parameters, same output as ``build_network_architecture`` of the
    folder's trainer class (imported here, as nnU-Net would)."""
    import torch

    from cohort.segmentation.nnunet_folder import build_network, find_trainer_class, plans_manager
    from cohort.segmentation.weights import network_folder

    folder = network_folder(fast_spec, fast_spec.networks[0], fast_weights)
    checkpoint = torch.load(folder / "fold_0" / fast_spec.checkpoint, map_location="cpu", weights_only=False)
    manager, configuration = plans_manager(json.loads((folder / "plans.json").read_text()),
                                           checkpoint["init_args"]["configuration"])
    heads = len(json.loads((folder / "dataset.json").read_text())["labels"])
    ours = build_network(checkpoint["trainer_name"], manager, configuration, 1, heads)
    theirs = find_trainer_class(checkpoint["trainer_name"]).build_network_architecture(
        manager, configuration, 1, heads, enable_deep_supervision=False)
    assert repr(ours) == repr(theirs)
    ours.load_state_dict(checkpoint["network_weights"])
    theirs.load_state_dict(checkpoint["network_weights"])
    image = torch.randn(1, 1, *configuration.patch_size)
    with torch.no_grad():
        assert torch.equal(ours.eval()(image), theirs.eval()(image))


def test_a_worker_loads_a_model_without_nnunets_training_stack(fast_spec, fast_weights) -> None:
    """A new process that loads the fast model never imports nnU-Net's trainer module (plotting,
    data loading, evaluation), which took about 2 s of a worker's first load."""
    import subprocess
    import sys

    code = ("import sys; from cohort.segmentation import get_segmenter, load_model_spec; "
            f"get_segmenter(load_model_spec('fast'), {str(fast_weights)!r}, 'cpu'); "
            "print(sorted(m for m in sys.modules if m.startswith('nnunetv2.training.nnUNetTrainer.') or m == 'seaborn'))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_an_anisotropic_model_spacing_is_checked_on_the_image_axes_not_the_transposed_ones(tmp_path):
    """nnU-Net's plans hold an anisotropic spacing with the coarsest axis first; a model file's
    ``spacing_mm`` (x, y, z) is compared after ``transpose_backward`` puts it back."""
    import dataclasses

    from cohort.segmentation import load_model_spec
    from cohort.testing.weights import build_weights

    spec = dataclasses.replace(load_model_spec("total_mr_fast"), spacing_mm=(3.0, 1.5, 1.5))
    folder = build_weights(spec, tmp_path, "small")[0]
    assert json.loads((folder / "plans.json").read_text())["transpose_forward"] == [2, 0, 1]
    check_model_ready(spec, tmp_path)
