"""Cluster sizing (usable CPUs, threads, memory), GPU pinning and SLURM jobs that can never start.

CPU sources are read from real files and real environment variables; affinity is proven with
``taskset`` on a real subprocess; the thread share is read back from real Dask worker processes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cohort.config import ExecutionConfig
from cohort.errors import RunCannotStart
from cohort.heap import reuse_environment
from cohort.segmentation import load_model_spec
from cohort.flows.clusters import local_resources, open_client
from cohort.flows.cuda import check_pinning, gpu_devices, owned_device, worker_visible_devices
from cohort.flows.resources import (GIB, Resources, cgroup_cpus, cgroup_v1_cpus, cgroup_v2_cpus, slurm_cpus,
                                    usable_cpus, usable_memory_bytes)
from cohort.flows.slurm import keys_for_reason, keys_for_submit_error, pending_reasons
from testkit import cli_env, cohort_cli

PRINT_RESOURCES = ("from cohort.flows.resources import Resources, usable_cpus; r = Resources.for_this_process(); "
                   "print(usable_cpus(), r.workers, r.threads_per_worker)")


def test_cgroup_quota_lines() -> None:
    assert cgroup_v2_cpus("max 100000\n") is None
    assert cgroup_v2_cpus("200000 100000\n") == 2
    assert cgroup_v2_cpus("150000 100000") == 2
    assert cgroup_v1_cpus("-1\n", "100000\n") is None
    assert cgroup_v1_cpus("300000", "100000") == 3


def test_slurm_allocation_from_environment() -> None:
    assert slurm_cpus({"SLURM_CPUS_PER_TASK": "3", "SLURM_CPUS_ON_NODE": "8"}) == 3
    assert slurm_cpus({"SLURM_CPUS_ON_NODE": "8"}) == 8
    assert slurm_cpus({"PATH": "/bin"}) is None


def test_cgroup_v2_limit_on_an_ancestor_counts(tmp_path: Path) -> None:
    (tmp_path / "jobs" / "job1").mkdir(parents=True)
    (tmp_path / "cpu.max").write_text("max 100000\n")
    (tmp_path / "jobs" / "cpu.max").write_text("200000 100000\n")
    (tmp_path / "jobs" / "job1" / "cpu.max").write_text("400000 100000\n")
    proc = tmp_path / "proc_cgroup"
    proc.write_text("0::/jobs/job1\n")
    assert cgroup_cpus(tmp_path, proc) == 2
    (tmp_path / "jobs" / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpus(tmp_path, proc) == 4


def test_cgroup_v1_quota(tmp_path: Path) -> None:
    group = tmp_path / "cpu,cpuacct" / "docker" / "abc"
    group.mkdir(parents=True)
    (group / "cpu.cfs_quota_us").write_text("300000\n")
    (group / "cpu.cfs_period_us").write_text("100000\n")
    proc = tmp_path / "proc_cgroup"
    proc.write_text("4:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n")
    assert cgroup_cpus(tmp_path, proc) == 3
    proc.write_text("4:memory:/docker/abc\n")
    assert cgroup_cpus(tmp_path, proc) is None


def test_usable_cpus_of_this_machine_takes_the_smallest_source() -> None:
    expected = min(value for value in (len(os.sched_getaffinity(0)), cgroup_cpus(), slurm_cpus(os.environ))
                   if value is not None)
    assert usable_cpus() == expected
    assert usable_cpus({"SLURM_CPUS_PER_TASK": "1"}) == 1


@pytest.mark.skipif(not shutil.which("taskset"), reason="needs taskset (util-linux)")
def test_taskset_affinity_is_honoured_in_a_real_process() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    pinned = subprocess.run(["taskset", "-c", "0", sys.executable, "-c", PRINT_RESOURCES], capture_output=True,
                            text=True, env=env, timeout=120, check=True)
    assert pinned.stdout.split() == ["1", "1", "1"]


def test_slurm_cpus_per_task_in_the_environment_sizes_the_cluster() -> None:
    env = {**os.environ, "SLURM_CPUS_PER_TASK": "1", "SLURM_CPUS_ON_NODE": "64"}
    result = subprocess.run([sys.executable, "-c", PRINT_RESOURCES], capture_output=True, text=True, env=env,
                            timeout=120, check=True)
    assert result.stdout.split() == ["1", "1", "1"]


def test_plan_shares_cpus_and_memory() -> None:
    memory = 32 * GIB
    assert Resources.plan(8, memory) == Resources(8, 8, 1, memory // 8)
    assert Resources.plan(8, memory, threads_per_worker=2) == Resources(8, 4, 2, memory // 4)
    assert Resources.plan(8, memory, workers=3) == Resources(8, 3, 2, memory // 3)
    assert Resources.plan(8, memory, worker_memory_gb=10) == Resources(8, 3, 2, 10 * GIB)
    assert Resources.plan(8, memory, worker_memory_gb=100) == Resources(8, 1, 8, memory)
    assert Resources.plan(2, memory, workers=6).threads_per_worker == 1
    with pytest.raises(RunCannotStart, match="at least 1"):
        Resources.plan(8, memory, workers=0)


def test_explicit_workers_never_get_more_memory_than_there_is(caplog) -> None:
    """``--workers 4`` with ``worker_memory_gb: 8`` on 16 GiB: the limits summed to 32 GiB, so
    the kernel's OOM killer, not Dask's restart at 95 %, ended workers. Each gets the equal share."""
    with caplog.at_level("WARNING", logger="cohort.flows"):
        resources = Resources.plan(16, 16 * GIB, workers=4, worker_memory_gb=8)
    assert resources == Resources(16, 4, 4, 4 * GIB)
    assert "do not fit in 16.0 GiB" in caplog.text
    assert Resources.plan(16, 16 * GIB, workers=2, worker_memory_gb=8) == Resources(16, 2, 8, 8 * GIB)
    assert Resources.plan(16, 16 * GIB, workers=2, worker_memory_gb=3) == Resources(16, 2, 8, 3 * GIB)


def test_the_models_need_caps_the_worker_count_not_the_memory_limit() -> None:
    """64 cores and 128 GB with a model that needs 12 GB: 10 workers of 6 threads, each with an
    equal share (12.8 GB) as its limit; an explicit ``worker_memory_gb`` or ``--workers`` wins."""
    memory = 128 * GIB
    assert Resources.plan(64, memory, model_memory_gb=12) == Resources(64, 10, 6, memory // 10)
    assert Resources.plan(64, memory, worker_memory_gb=4, model_memory_gb=12) == Resources(64, 32, 2, 4 * GIB)
    assert Resources.plan(64, memory, workers=32, model_memory_gb=12).workers == 32
    assert Resources.plan(2, 24 * GIB, model_memory_gb=load_model_spec("fast").worker_memory_gb).workers == 2
    assert Resources.plan(4, 8 * GIB, model_memory_gb=100) == Resources(4, 1, 4, 8 * GIB)


def test_a_local_cluster_too_small_for_the_model_says_so(caplog) -> None:
    with caplog.at_level("WARNING", logger="cohort.flows"):
        with open_client("local", None, ExecutionConfig(), model_memory_gb=10_000) as client:
            assert len(client.scheduler_info()["workers"]) == 1
    assert "less than the 10000 GB the model needs" in caplog.text


def test_slurm_memory_allocation_caps_memory() -> None:
    assert usable_memory_bytes({"SLURM_MEM_PER_NODE": "1024"}) == 1024 ** 3
    assert usable_memory_bytes({"SLURM_MEM_PER_CPU": "512"}, cpus=2) == 1024 ** 3
    assert usable_memory_bytes({}) > 1024 ** 3


def _worker_threads() -> tuple[str, str, int]:
    import torch

    from cohort.segmentation.segmenter import use_thread_share

    use_thread_share()
    return os.environ["OMP_NUM_THREADS"], os.environ["COHORT_TORCH_THREADS"], torch.get_num_threads()


def _worker_heap() -> dict[str, str]:
    return {name: value for name, value in os.environ.items() if name.startswith("MALLOC_")}


def test_local_workers_get_their_share_of_threads_and_memory() -> None:
    cpus = usable_cpus()
    expected = Resources.for_this_process(workers=1)
    with open_client("local", 1, ExecutionConfig()) as client:
        seen = list(client.run(_worker_threads).values())
        heaps = list(client.run(_worker_heap).values())
        limits = [w["memory_limit"] for w in client.scheduler_info()["workers"].values()]
    assert seen == [(str(cpus), str(cpus), cpus)]
    assert limits == [expected.memory_limit_bytes]
    assert heaps == [reuse_environment(expected.memory_limit_bytes)]
    assert heaps[0]["MALLOC_MMAP_MAX_"] == "0"


def test_workers_can_keep_the_c_librarys_heap_defaults() -> None:
    with open_client("local", 1, ExecutionConfig(reuse_freed_memory=False)) as client:
        heaps = list(client.run(_worker_heap).values())
    assert heaps == [{"MALLOC_TRIM_THRESHOLD_": "65536"}]  # Dask's own default


@pytest.mark.parametrize("value", ["-1", "0", "two"])
def test_workers_below_one_is_a_clear_usage_error(tmp_path: Path, examples: Path, value: str) -> None:
    result = cohort_cli("run", "--manifest", str(examples / "manifest.csv"), "--out", str(tmp_path / "r"),
                        "--workers", value, timeout=120)
    assert result.returncode == 2
    assert "--workers" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "r").exists()


def test_each_gpu_worker_owns_a_different_device_first() -> None:
    devices = gpu_devices("2,3", gpus=2, workers=None)
    assert devices == ["2", "3"]
    assert worker_visible_devices(devices) == ["2,3", "3,2"]
    assert [owned_device(v) for v in worker_visible_devices(["GPU-a", "GPU-b", "GPU-c"])] == ["GPU-a", "GPU-b",
                                                                                              "GPU-c"]
    assert gpu_devices(None, gpus=4, workers=2) == ["0", "1"]
    with pytest.raises(RunCannotStart, match="only 2 GPU"):
        gpu_devices("0,1", gpus=2, workers=3)


def test_rotation_matches_dask_cuda() -> None:
    utils = pytest.importorskip("dask_cuda.utils")
    devices = ["0", "1", "2", "3"]
    assert worker_visible_devices(devices) == [utils.cuda_visible_devices(i, devices) for i in range(4)]


def test_pinning_check_reads_real_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers started with the same CUDA_VISIBLE_DEVICES would all compute on one GPU: refused."""
    from distributed import Client, LocalCluster

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address="127.0.0.1:0") as cluster:
        with Client(cluster) as client:
            with pytest.raises(RunCannotStart, match="not 1 per GPU"):
                check_pinning(client, ["0", "1"])
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,0")
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address="127.0.0.1:0") as cluster:
        with Client(cluster) as client:
            check_pinning(client, ["1"])


SQUEUE_OUTPUT = """\
4101 PartitionTimeLimit
4102 Resources
4103 ReqNodeNotAvail, UnavailableNodes:node[01-02]
4104 (null)
4105 Priority
4106 PartitionConfig
"""


def test_squeue_pending_reasons_and_the_keys_to_change() -> None:
    reasons = pending_reasons(SQUEUE_OUTPUT)
    assert reasons == {"4101": "PartitionTimeLimit", "4102": "Resources", "4103": "ReqNodeNotAvail",
                       "4104": "null", "4105": "Priority", "4106": "PartitionConfig"}
    assert keys_for_reason("PartitionTimeLimit") == ("walltime",)
    assert "memory" in keys_for_reason("PartitionConfig") and "cores" in keys_for_reason("PartitionNodeLimit")
    assert keys_for_reason("BadConstraints") == ("job_extra_directives",)
    for waiting in ("Resources", "Priority", "None", "null", "BeginTime", "Dependency"):
        assert keys_for_reason(waiting) == ()


def test_sbatch_refusals_name_the_key() -> None:
    memory = ("sbatch: error: Memory specification can not be satisfied\n"
              "sbatch: error: Batch job submission failed: Requested node configuration is not available")
    assert keys_for_submit_error(memory) == ("memory",)
    assert keys_for_submit_error("sbatch: error: Batch job submission failed: Requested time limit is invalid "
                                 "(missing or exceeds some limit)") == ("walltime",)
    assert keys_for_submit_error("sbatch: error: Batch job submission failed: Invalid account or "
                                 "account/partition combination specified") == ("account",)
    assert "memory" in keys_for_submit_error("allocation failure: Requested node configuration is not available")
    assert keys_for_submit_error("allocation failure: Invalid feature specification") == ("job_extra_directives",)
    assert keys_for_submit_error("sbatch: error: something new") == ()


@pytest.mark.slurm
def test_job_larger_than_any_node_fails_fast(tmp_path: Path, examples: Path, slurm_run_config,
                                             prefect_server: str) -> None:
    """A worker job asking for more memory than the node has stops the run in seconds, naming
    ``memory`` in the SLURM config, instead of waiting out worker_start_timeout_s."""
    run_yaml, job_name, _ = slurm_run_config
    slurm_yaml = tmp_path / "slurm.yaml"
    slurm_yaml.write_text(slurm_yaml.read_text().replace("memory: 2GB", "memory: 100000GB")
                          .replace("worker_start_timeout_s: 90", "worker_start_timeout_s: 600"))
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "cohort.cli", "run", "--manifest", str(examples / "manifest.csv"),
                             "--out", str(tmp_path / "r"), "--config", str(run_yaml), "--cluster", "slurm"],
                            capture_output=True, text=True, env=cli_env(prefect_server), timeout=300)
    elapsed = time.monotonic() - started
    assert result.returncode == 2, result.stderr
    message = " ".join(result.stderr.split())
    assert "'memory'" in message and str(slurm_yaml) in message, message
    assert elapsed < 60, f"took {elapsed:.0f} s"
    left = subprocess.run(["squeue", "-h", "-n", job_name, "-t", "pending,running"], capture_output=True,
                          text=True, timeout=30).stdout
    assert not left.strip(), left


@pytest.mark.skipif(usable_cpus() < 2, reason="needs 2 usable CPUs to tell 1 thread per worker from 2")
def test_a_run_that_segments_gives_each_worker_the_models_threads(tmp_path: Path, examples: Path) -> None:
    """Without ``execution.threads_per_worker``, workers that segment get the model's
    ``worker_threads`` (2 for the shipped models); a run of label maps only, one thread each
    (as many series as CPUs: a local cluster starts no more workers than series)."""
    import logging

    import cohort
    from cohort.testing.weights import build_weights
    from testkit import write_manifest

    class Plans(logging.Handler):
        def __init__(self) -> None:
            super().__init__(logging.INFO)
            self.lines: list[str] = []

        def emit(self, record: logging.LogRecord) -> None:
            self.lines.append(record.getMessage())

    build_weights(load_model_spec("fast"), tmp_path / "weights", "small", seed=0)
    row = {"series_id": "a", "path": str(examples / "example_ct_sm.nii.gz"), "age": 60, "sex": "F"}
    plans, logger, handler = {}, logging.getLogger("cohort.flows.clusters"), Plans()
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        for name, extra in (("segments", {}), ("labelled", {"labels": str(examples / "example_seg_fast.nii.gz")})):
            manifest = write_manifest(tmp_path / f"{name}.csv", [{**row, **extra, "series_id": f"s{index}"}
                                                                  for index in range(usable_cpus())])
            handler.lines.clear()
            assert cohort.run(str(manifest), tmp_path / name, weights=tmp_path / "weights").exit_code == 0
            plans[name] = next(line for line in handler.lines if line.startswith("local cluster:"))
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    cpus = usable_cpus()
    assert f"{cpus // 2} worker(s) x 2 thread(s)" in plans["segments"], plans
    assert f"{cpus} worker(s) x 1 thread(s)" in plans["labelled"], plans


def test_a_local_cluster_starts_no_more_workers_than_cpus_or_series(caplog) -> None:
    cpus = usable_cpus()
    with caplog.at_level("WARNING", logger="cohort.flows"):
        many = local_resources(64 * cpus, ExecutionConfig(), None, None)
    assert many.workers == cpus and f"this process may use {cpus} CPU(s)" in caplog.text
    assert local_resources(None, ExecutionConfig(), None, 1).workers == 1
    assert local_resources(64 * cpus, ExecutionConfig(), None, 1).workers == 1
    assert local_resources(None, ExecutionConfig(), None, 10_000).workers == cpus  # threads_per_worker 1
