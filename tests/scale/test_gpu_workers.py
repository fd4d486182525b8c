"""``--cluster cuda`` with several worker processes per GPU (``execution.workers_per_gpu``).

No GPU is needed to check what cohort itself does: which worker sees which GPU, the threads and
signals each worker gets, and a whole run through such a cluster. Only the GPU count is given
(``visible_gpus``); the workers are real processes of a real Dask cluster, and on a machine
without CUDA their segmenter computes on the CPU.
"""

from __future__ import annotations

import signal
from pathlib import Path

import nibabel as nib
import pandas as pd
import pytest

import cohort
from cohort.config import ExecutionConfig
from cohort.errors import RunCannotStart
from cohort.flows import cuda
from cohort.flows.clusters import open_client, preserved_environment
from cohort.flows.cuda import check_pinning
from cohort.segmentation import load_model_spec
from cohort.testing.faults import FORWARD_LOG_ENV, OutOfMemoryUnlessAlone, use_network_class
from cohort.testing.weights import build_weights
from testkit import write_manifest


def _worker_view() -> tuple[str, str, bool]:
    import os

    return (os.environ["CUDA_VISIBLE_DEVICES"], os.environ["OMP_NUM_THREADS"],
            signal.getsignal(signal.SIGINT) == signal.SIG_IGN)


@pytest.fixture()
def two_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cuda, "visible_gpus", lambda: 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")


def test_each_gpu_gets_its_share_of_workers_that_see_only_it(two_gpus: None, caplog) -> None:
    with caplog.at_level("WARNING", logger="cohort.flows"), \
            open_client("cuda", None, ExecutionConfig(workers_per_gpu=2), model_memory_gb=10_000) as client:
        views = sorted(client.run(_worker_view).values())
        assert [view[0] for view in views] == ["3", "3", "5", "5"]
        assert {view[1] for view in views} == {str(max(1, cuda.usable_cpus() // 4))}
        assert all(view[2] for view in views)  # Ctrl-C stops the run through the driver, not the workers
        assert sorted(client.nthreads().values()) == [4] * 4  # 1 + gpu_prefetch series slots
        with pytest.raises(RunCannotStart, match="not 1 per GPU"):
            check_pinning(client, ["3", "5"])
        with pytest.raises(RunCannotStart, match="not 2 per GPU"):
            check_pinning(client, ["3", "4"], 2)
    assert "less than the 10000 GB the model needs" in caplog.text and "workers_per_gpu" in caplog.text


def test_workers_flag_picks_the_gpus(two_gpus: None) -> None:
    with open_client("cuda", 1, ExecutionConfig(workers_per_gpu=3, gpu_prefetch=0)) as client:
        assert sorted(view[0] for view in client.run(_worker_view).values()) == ["3", "3", "3"]


def test_a_run_on_shared_gpu_workers_gives_the_tables_of_a_local_run(
        tmp_path: Path, examples: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """In this process (``visible_gpus`` is replaced here), with cohort's own Prefect server."""
    monkeypatch.setattr(cuda, "visible_gpus", lambda: 1)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    weights = tmp_path / "weights"
    build_weights(load_model_spec("fast"), weights, "small", seed=5)
    ct = nib.load(str(examples / "example_ct_sm.nii.gz")).slicer[30:90, 20:80, :]
    rows = []
    for index in range(3):
        nib.save(ct.slicer[:, :, index * 4:], str(tmp_path / f"ct{index}.nii.gz"))
        rows.append({"series_id": f"s{index}", "path": str(tmp_path / f"ct{index}.nii.gz"), "age": 60 + index,
                     "sex": "F"})
    manifest = write_manifest(tmp_path / "scans.csv", rows)
    config = tmp_path / "run.yaml"
    config.write_text("execution:\n  workers_per_gpu: 2\n  gpu_prefetch: 1\n")

    shared = cohort.run(manifest, tmp_path / "shared", weights=weights, config=config, cluster="cuda")
    local = cohort.run(manifest, tmp_path / "local", weights=weights, config=config, workers=1)

    assert (shared.exit_code, shared.n_done, local.n_done) == (0, 3, 3)
    columns = ["series_id", "structure", "label", "volume_ml", "mean_hu", "p95_hu", "n_voxels", "status"]
    tables = [pd.read_parquet(tmp_path / name / "features").sort_values(["series_id", "structure"])
              .reset_index(drop=True) for name in ("shared", "local")]
    pd.testing.assert_frame_equal(tables[0][columns], tables[1][columns])


def test_a_series_out_of_memory_on_a_shared_gpu_is_retried_alone_on_the_whole_gpu(
        tmp_path: Path, examples: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two worker processes on one GPU, two series slots each, and a network with room for one series
    on the GPU (out of memory unless alone): every series is retried alone once, not counted, and
    nothing runs beside it on the other worker either (each forward pass logs when it ran)."""
    monkeypatch.setattr(cuda, "visible_gpus", lambda: 1)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setenv(FORWARD_LOG_ENV, str(tmp_path / "forward.txt"))  # the workers inherit it
    ct = nib.load(str(examples / "example_ct_sm.nii.gz"))
    rows = []
    for index, (x, y) in enumerate([(30, 20), (20, 30), (25, 25), (35, 15)]):
        nib.save(ct.slicer[x:x + 60, y:y + 60, :], str(tmp_path / f"crop{index}.nii.gz"))
        rows.append({"series_id": f"crop{index}", "path": str(tmp_path / f"crop{index}.nii.gz"), "age": 50 + index,
                     "sex": "F"})
    manifest = write_manifest(tmp_path / "scans.csv", rows)
    config = tmp_path / "run.yaml"
    config.write_text("execution:\n  workers_per_gpu: 2\n  gpu_prefetch: 1\n  retries: 0\n")
    build_weights(load_model_spec("fast"), tmp_path / "weights", "small", seed=3)
    use_network_class(build_weights(load_model_spec("fast"), tmp_path / "tight", "small", seed=3),
                      OutOfMemoryUnlessAlone)

    tight = cohort.run(manifest, tmp_path / "tight_out", weights=tmp_path / "tight", config=config, cluster="cuda")
    roomy = cohort.run(manifest, tmp_path / "roomy_out", weights=tmp_path / "weights", workers=1)

    assert (tight.exit_code, tight.n_done, roomy.n_done) == (0, 4, 4)
    series = pd.read_parquet(tmp_path / "tight_out" / "series")
    assert (series["attempts"] == 1).all()
    columns = ["series_id", "structure", "label", "volume_ml", "mean_hu", "p95_hu", "n_voxels", "status"]
    tables = [pd.read_parquet(tmp_path / name / "features").sort_values(["series_id", "structure"])
              .reset_index(drop=True)[columns] for name in ("tight_out", "roomy_out")]
    pd.testing.assert_frame_equal(tables[0], tables[1])
    passes = [line.split() for line in (tmp_path / "forward.txt").read_text().splitlines()]
    passes = [(int(pid), float(start), float(end), alone == "1") for pid, start, end, alone in passes]
    alone = [one for one in passes if one[3]]
    assert len({pid for pid, *_ in passes}) == 2 and alone
    for one in alone:
        beside = [other for other in passes if other is not one and other[1] < one[2] and one[1] < other[2]]
        assert not beside, f"a forward pass ran beside a series alone on the GPU: {one} and {beside}"


def _gpu_and_lock() -> tuple[str, str | None]:
    import os

    from cohort.flows.alone import SHARED_GPU_ENV

    return os.environ["CUDA_VISIBLE_DEVICES"], os.environ.get(SHARED_GPU_ENV)


@pytest.mark.parametrize(("visible", "expected"), [
    ("4,7", {"cohort-worker-9-0": ("4", None), "cohort-worker-9-1": ("7", None)}),
    ("4", {"cohort-worker-9-0": ("4", "gpu-4"), "cohort-worker-9-1": ("4", "gpu-4")})])
def test_each_worker_of_a_slurm_gpu_job_takes_its_own_gpu(visible: str, expected: dict) -> None:
    """The job script's preload, in real worker processes named as Dask's worker command names a
    job's processes, with the CUDA_VISIBLE_DEVICES SLURM gives a job of 2 GPUs, or of 1 GPU for its
    2 processes: then both hold the same lock of that GPU, in a directory of the job."""
    from distributed import Client, Nanny, Scheduler, SpecCluster

    from cohort.flows.job_gpus import PROCESSES_ENV, job_lock_directory
    from cohort.flows.slurm import GPU_PRELOAD

    env = {"CUDA_VISIBLE_DEVICES": visible, PROCESSES_ENV: "2", "SLURM_JOB_ID": "9"}
    workers = {f"cohort-worker-9-{i}": {"cls": Nanny, "options": {"nthreads": 1, "env": env, "preload": [GPU_PRELOAD],
                                                                  "host": "127.0.0.1"}} for i in range(2)}
    scheduler = {"cls": Scheduler, "options": {"host": "127.0.0.1", "dashboard_address": "127.0.0.1:0"}}
    # preserved_environment: nannies write their workers' variables into this process's environment
    with preserved_environment(), SpecCluster(workers=workers, scheduler=scheduler) as cluster, Client(cluster) as client:
        client.wait_for_workers(2, timeout=60)
        named = {client.scheduler_info()["workers"][address]["name"]: view
                 for address, view in client.run(_gpu_and_lock).items()}
    locks = {name: (gpu, lock and str(Path(lock).relative_to(job_lock_directory("9")))) for name, (gpu, lock) in named.items()}
    assert locks == expected
