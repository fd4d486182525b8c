"""The model registry: shipped entries load, bad files fail naming file and key."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from cohort.errors import ConfigError
from cohort.segmentation import known_models, load_model_spec
from cohort.segmentation.merge import label_lookup, merge_into
from cohort.segmentation.registry import MODELS_DIR, model_class_map, network_classes


def test_shipped_models_load():
    assert {"fast", "full"} <= set(known_models())
    fast, full = load_model_spec("fast"), load_model_spec("full")
    assert fast.class_map == full.class_map == "class_map_total_v2.csv"
    assert fast.spacing_mm == (3.0, 3.0, 3.0) and full.spacing_mm == (1.5, 1.5, 1.5)
    assert [n.dataset[:10] for n in full.networks] == [f"Dataset29{i}" for i in range(1, 6)]
    assert fast.model_folder_name == "nnUNetTrainer_4000epochs_NoMirroring__nnUNetPlans__3d_fullres"


def test_full_parts_cover_all_117_classes_once(full_spec):
    classes = model_class_map(full_spec)
    covered = [lut[1:] for lut in (label_lookup(n, classes) for n in full_spec.networks)]
    ids = np.concatenate(covered)
    assert sorted(ids.tolist()) == sorted(classes.names)
    assert len(network_classes(full_spec.networks[1])) == 26  # vertebrae part


def test_unknown_model_lists_known():
    with pytest.raises(ConfigError, match="known models: .*fast.*full"):
        load_model_spec("no_such_model")


def _write(tmp_path: Path, name: str, **changes) -> Path:
    data = yaml.safe_load((MODELS_DIR / "fast.yaml").read_text()) | {"name": name} | changes
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("changes, key", [
    ({"spacing_mm": [3.0, 3.0]}, "spacing_mm"),
    ({"tile_step_size": 0}, "tile_step_size"),
    ({"trainer": 5}, "trainer"),
    ({"networks": [{"dataset": "297_total", "classes": "class_map_total_v2.csv"}]}, "networks[0].dataset"),
    ({"chunking": {"max_voxels": 10, "overlap": 5}}, "chunking.overlap"),
    ({"tile_size": 0.5}, "tile_size"),
    ({"worker_memory_gb": 0}, "worker_memory_gb"),
    ({"worker_memory_gb": "lots"}, "worker_memory_gb"),
    ({"weights_env": "MY-WEIGHTS"}, "weights_env"),
])
def test_bad_entries_name_file_and_key(tmp_path, changes, key):
    path = _write(tmp_path, "mine", **changes)
    with pytest.raises(ConfigError, match=rf"{path.name}.*'{key.replace('[', '.').replace(']', '.')}"):
        load_model_spec(str(path))


def test_name_must_match_file(tmp_path):
    path = _write(tmp_path, "mine")
    path.rename(tmp_path / "other.yaml")
    with pytest.raises(ConfigError, match="'name' must equal the file name 'other'"):
        load_model_spec(str(tmp_path / "other.yaml"))


def test_network_class_not_in_model_map(tmp_path):
    classes = tmp_path / "classes.csv"
    classes.write_text("label,structure\n1,liver\n2,left_kidney_typo\n")
    path = _write(tmp_path, "mine", networks=[{"dataset": "Dataset900_Mine", "classes": str(classes)}])
    with pytest.raises(ConfigError, match="left_kidney_typo"):
        load_model_spec(str(path))


def test_later_parts_overwrite_earlier_but_background_never_does():
    merged = torch.tensor([0, 5, 5, 0], dtype=torch.uint8)
    merge_into(merged, torch.tensor([0, 0, 1, 1], dtype=torch.uint8), torch.tensor([0, 9], dtype=torch.uint8))
    assert merged.tolist() == [0, 5, 9, 9]
    with pytest.raises(ValueError, match="label 2, its class map ends at 1"):
        merge_into(merged, torch.tensor([0, 2, 1, 1], dtype=torch.uint8), torch.tensor([0, 9], dtype=torch.uint8))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_merging_on_the_gpu_equals_the_cpu():
    rng = np.random.default_rng(0)
    lut = torch.from_numpy(rng.permutation(np.arange(1, 31)).astype(np.uint8))
    lut = torch.cat([torch.zeros(1, dtype=torch.uint8), lut])
    merged = torch.from_numpy(rng.integers(0, 118, (40, 30, 20), dtype=np.uint8))
    labels = torch.from_numpy(rng.integers(0, 31, (40, 30, 20), dtype=np.uint8))
    on_gpu = merged.cuda()
    merge_into(on_gpu, labels.cuda(), lut.cuda())
    merge_into(merged, labels, lut)
    assert torch.equal(on_gpu.cpu(), merged)
