"""Cluster settings without a cluster: SLURM config validation, the generated job script,
``--cluster cuda`` where no GPU is, and the GPU run itself where one is."""

from __future__ import annotations

from pathlib import Path

import pytest

from cohort.errors import ConfigError
from cohort.flows.cuda import visible_gpus
from cohort.flows.slurm import WorkerNeeds, cluster_kwargs, job_counts, load_slurm_config
from cohort.segmentation.passes import PassPolicy
from testkit import cohort_cli


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "slurm.yaml"
    path.write_text(text)
    return path


def test_shipped_slurm_config_loads() -> None:
    """The shipped jobs give each worker what the default model asks for (threads and memory)."""
    from cohort.flows.resources import GIB
    from cohort.flows.slurm import job_share
    from cohort.segmentation import load_model_spec

    config = load_slurm_config()
    assert config.cores % config.processes == 0 and config.adapt.maximum_jobs >= 1
    share, fast = job_share(config), load_model_spec("fast")
    assert share.threads_per_worker >= fast.worker_threads
    assert share.memory_limit_bytes >= fast.worker_memory_gb * GIB


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("cores: 4\nprocesess: 2\n", ["unknown key 'procesess'"]),
        ("cores: four\n", ["key 'cores'", "must be int"]),
        ("cores: 4\nprocesses: 3\n", ["key 'processes'", "must divide 'cores'"]),
        ("adapt:\n  minimum_jobs: 5\n  maximum_jobs: 2\n", ["adapt.minimum_jobs", "adapt.maximum_jobs"]),
        ("adapt:\n  minimum_jobs: 0\n  maximum_jobs: 2\n", ["adapt.minimum_jobs", "1 <= minimum_jobs",
                                                            "no worker ever starts"]),
        ("adapt:\n  maximum_job: 2\n", ["unknown key 'adapt.maximum_job'"]),
        ("memory: lots\n", ["key 'memory'", "16GiB", "'lots'"]),
        ("memory: 0GB\n", ["key 'memory'", "'0GB'"]),
        ("cores: 4\nprocesses: 2\ngpus_per_job: 4\n", ["key 'gpus_per_job' (4)", "2 GPU(s) of every job would sit idle"]),
    ],
)
def test_bad_slurm_config_names_file_and_key(tmp_path: Path, text: str, words: list[str]) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as error:
        load_slurm_config(str(path))
    message = str(error.value)
    assert str(path) in message
    for word in words:
        assert word in message, message


def test_job_script_carries_partition_account_gpus_and_prologue(tmp_path: Path) -> None:
    dask_jobqueue = pytest.importorskip("dask_jobqueue")
    config = load_slurm_config(str(_write(tmp_path, """
queue: gpu
account: aging-study
cores: 8
processes: 2
memory: 64GB
gpus_per_job: 2
walltime: "12:00:00"
job_script_prologue: ["module load cuda/12.4", "source ~/venvs/cohort/bin/activate"]
job_extra_directives: ["--qos=long"]
log_directory: null
dashboard_address: "127.0.0.1:0"
interface: lo
""")))
    kwargs = cluster_kwargs(config)
    with dask_jobqueue.SLURMCluster(**kwargs) as cluster:
        script = cluster.job_script()
    for line in ("#SBATCH -p gpu", "#SBATCH -A aging-study", "#SBATCH --cpus-per-task=8", "#SBATCH --mem=60G",
                 "#SBATCH -t 12:00:00", "#SBATCH --gres=gpu:2", "#SBATCH --qos=long",
                 "#SBATCH --job-name=cohort-worker", "module load cuda/12.4", "--nworkers 2",
                 "export OMP_NUM_THREADS=4", "export COHORT_TORCH_THREADS=4", "export MALLOC_ARENA_MAX=1",
                 "export COHORT_JOB_PROCESSES=2", "--preload cohort.flows.job_gpus",
                 f"export MALLOC_TRIM_THRESHOLD_={64 * 10 ** 9 // 2 // 4}"):
        assert line in script, (line, script)
    assert script.index("export OMP_NUM_THREADS") < script.index("module load cuda/12.4")
    assert script.index("--nthreads 4") < script.index("--nthreads 1")  # the last one is what the worker takes
    no_heap = "\n".join(cluster_kwargs(config, WorkerNeeds(reuse_freed_memory=False))["job_script_prologue"])
    assert "OMP_NUM_THREADS=4" in no_heap and "MALLOC" not in no_heap
    assert kwargs["worker_extra_args"][:2] == ["--nthreads", "1"]  # one series slot (prefetch 0), not 4 threads' worth
    cpu_config = load_slurm_config(str(_write(tmp_path, "cores: 8\nprocesses: 2\nmemory: 64GB\n")))
    cpu_only = cluster_kwargs(cpu_config)
    assert cpu_only["worker_extra_args"] == ["--nthreads", "1"] and "COHORT_JOB_PROCESSES" not in str(cpu_only)
    # network_passes 2 on 4-thread workers: two forward passes at once, when 32 GB per worker holds two of 8 GB ...
    wide = cluster_kwargs(cpu_config, WorkerNeeds(series_slots=2, passes=PassPolicy(2), model_memory_gb=8))
    assert wide["worker_extra_args"] == ["--nthreads", "2"]
    assert "export COHORT_NETWORK_PASSES=2" in wide["job_script_prologue"]
    # prefetch and network_passes auto (the defaults): the worker times its network and its series follow its passes
    auto = cluster_kwargs(cpu_config, WorkerNeeds(2, PassPolicy(2, choose=True, series_follow_passes=True), 8))
    for line in ("COHORT_NETWORK_PASSES=2", "COHORT_CHOOSE_PASSES=1", "COHORT_SERIES_FOLLOW_PASSES=1"):
        assert f"export {line}" in auto["job_script_prologue"]
    # ... one at a time when it does not, and always one on a GPU
    assert "export COHORT_NETWORK_PASSES=1" in cluster_kwargs(cpu_config, WorkerNeeds(2, PassPolicy(2), model_memory_gb=20))["job_script_prologue"]
    assert "export COHORT_NETWORK_PASSES=1" in cluster_kwargs(config, WorkerNeeds(4, PassPolicy(4), model_memory_gb=8))["job_script_prologue"]
    assert job_counts(config, None) == (1, 4) and job_counts(config, 5) == (3, 3)


@pytest.mark.skipif(visible_gpus() > 0, reason="this check is for machines without a GPU")
def test_cuda_cluster_without_gpu_stops_with_a_clear_message(tmp_path: Path, examples: Path) -> None:
    result = cohort_cli("run", "--manifest", str(examples / "manifest.csv"), "--out", str(tmp_path / "r"),
                        "--cluster", "cuda")
    assert result.returncode == 2
    message = " ".join(result.stderr.split())
    assert "--cluster cuda" in message and ("dask-cuda" in message or "no CUDA GPU" in message)


@pytest.mark.gpu
@pytest.mark.skipif(visible_gpus() == 0, reason="needs a CUDA GPU")
@pytest.mark.parametrize("workers_per_gpu", [1, 2])
def test_cuda_cluster_runs_the_example(tmp_path: Path, examples: Path, workers_per_gpu: int) -> None:
    if workers_per_gpu == 1:
        pytest.importorskip("dask_cuda")  # one worker per GPU is dask-cuda's LocalCUDACluster
    config = tmp_path / "run.yaml"
    config.write_text(f"execution:\n  workers_per_gpu: {workers_per_gpu}\n")
    out = tmp_path / "r"
    result = cohort_cli("run", "--manifest", str(examples / "manifest.csv"), "--out", str(out), "--cluster", "cuda",
                        "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert len(list((out / "series").glob("*.parquet"))) >= 1


def test_a_slurm_file_that_leaves_keys_out_gets_the_shipped_files_values(tmp_path: Path) -> None:
    """A user's file with only ``queue`` must not silently get 4 one-thread workers per job."""
    import dataclasses

    path = tmp_path / "mine.yaml"
    path.write_text("queue: gpu\n")
    shipped = dataclasses.replace(load_slurm_config(), queue="gpu", source=str(path))
    assert load_slurm_config(str(path)) == shipped


@pytest.mark.gpu
@pytest.mark.skipif(visible_gpus() == 0, reason="needs a CUDA GPU")
def test_dask_cuda_workers_leave_ctrl_c_to_the_driver() -> None:
    """dask-cuda gives its workers an explicit preload list, which hides the config's: the one
    worker per GPU must still ignore SIGINT and SIGTERM (the driver stops them)."""
    pytest.importorskip("dask_cuda")
    import signal

    from cohort.config import ExecutionConfig
    from cohort.flows.clusters import open_client

    with open_client("cuda", None, ExecutionConfig(workers_per_gpu=1)) as client:
        ignored = client.run(lambda: all(signal.getsignal(s) == signal.SIG_IGN for s in (signal.SIGINT, signal.SIGTERM)))
    assert ignored and all(ignored.values()), ignored
