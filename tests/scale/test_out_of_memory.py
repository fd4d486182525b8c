"""Out of memory on a worker with two series slots (``prefetch: 1``), with real nnU-Net networks
that raise torch's own ``OutOfMemoryError`` (``cohort.testing.faults``): a series out of memory
beside another is retried alone, not counted, and gives the tables of a run without the fault;
one out of memory alone fails with the reason while the rest of the cohort is done."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from cohort.errors import is_out_of_memory
from cohort.segmentation import load_model_spec
from cohort.testing.faults import OutOfMemoryAlways, OutOfMemoryBesideOthers, use_network_class
from cohort.testing.weights import build_weights
from testkit import cohort_cli, write_manifest


@pytest.fixture(scope="module")
def crops(tmp_path_factory, examples: Path) -> tuple[Path, list[dict]]:
    """Four small crops of the example CT to segment and one series with its label map given."""
    folder = tmp_path_factory.mktemp("out_of_memory")
    ct = nib.load(str(examples / "example_ct_sm.nii.gz"))
    rows = []
    for index, (x, y) in enumerate([(30, 20), (20, 30), (25, 25), (35, 15)]):
        nib.save(ct.slicer[x:x + 60, y:y + 60, :], str(folder / f"crop{index}.nii.gz"))
        rows.append({"series_id": f"crop{index}", "path": f"crop{index}.nii.gz", "age": 50 + index, "sex": "F"})
    shutil.copy(examples / "example_ct_sm.nii.gz", folder / "ct.nii.gz")
    shutil.copy(examples / "example_seg_fast.nii.gz", folder / "seg.nii.gz")
    rows.append({"series_id": "labelled", "path": "ct.nii.gz", "labels": "seg.nii.gz", "age": 60, "sex": "M"})
    return folder, rows


def _run(folder: Path, name: str, rows: list[dict], network_class: type | None, api: str):
    weights = folder / f"weights_{name}"
    built = build_weights(load_model_spec("fast"), weights, "small", seed=3)
    if network_class is not None:
        use_network_class(built, network_class)
    manifest = write_manifest(folder / f"{name}.csv", rows)
    config = folder / f"{name}.yaml"
    config.write_text("execution:\n  prefetch: 1\n  retries: 1\n")
    out = folder / name
    result = cohort_cli("run", "--manifest", str(manifest), "--out", str(out), "--weights", str(weights),
                        "--config", str(config), "--workers", "1", api=api, timeout=240)
    return result, out


def _measurements(out: Path) -> pd.DataFrame:
    features = pd.read_parquet(out / "features")
    return features.sort_values(["series_id", "label"]).reset_index(drop=True)


def test_out_of_memory_beside_another_series_is_retried_alone(crops, prefect_server: str) -> None:
    folder, rows = crops
    reference, reference_out = _run(folder, "reference", rows[:4], None, prefect_server)
    assert reference.returncode == 0, reference.stderr
    result, out = _run(folder, "beside", rows[:4], OutOfMemoryBesideOthers, prefect_server)
    assert result.returncode == 0, result.stderr
    output = " ".join(result.stderr.split())
    assert "beside other series; retrying it alone (not counted as an attempt)" in output, output
    series = pd.read_parquet(out / "series")
    assert (series["status"] == "done").all() and (series["attempts"] == 1).all() and len(series) == 4
    pd.testing.assert_frame_equal(_measurements(out), _measurements(reference_out))


def test_out_of_memory_alone_fails_that_series_only(crops, prefect_server: str) -> None:
    folder, rows = crops
    result, out = _run(folder, "always", [rows[0], rows[4]], OutOfMemoryAlways, prefect_server)
    assert result.returncode == 1, result.stderr
    series = pd.read_parquet(out / "series").set_index("series_id")
    assert series.loc["labelled", "status"] == "done"
    assert series.loc["crop0", "status"] == "failed" and series.loc["crop0", "attempts"] == 1
    assert "<path of line 2>: out of memory predicting" in series.loc["crop0", "error"]
    assert "lower chunking.max_voxels" in series.loc["crop0", "error"]


def _raised(allocate) -> BaseException:
    with pytest.raises(BaseException) as raised:
        allocate()
    return raised.value


def test_allocation_failures_are_told_from_other_errors() -> None:
    """Real failures of numpy and of torch's CPU allocator (32 TiB, more than any node here), and
    the exception CUDA raises."""
    assert is_out_of_memory(_raised(lambda: np.empty(2 ** 45, dtype=np.uint8)))
    assert is_out_of_memory(_raised(lambda: torch.empty(2 ** 45, dtype=torch.uint8)))
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert not is_out_of_memory(_raised(lambda: torch.zeros(2, 3) @ torch.zeros(2, 3)))
    assert not is_out_of_memory(ValueError("bad spacing"))
