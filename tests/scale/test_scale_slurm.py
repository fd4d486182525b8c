"""``cohort run --cluster slurm`` against a real SLURM controller (CI: .ci/slurm-up).

Skipped where no controller answers. The workers are SLURM jobs submitted by dask-jobqueue;
the tables must equal those of ``--cluster local``, and a job cancelled mid-series loses nothing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from testkit import cli_env, cohort_cli, write_manifest

pytestmark = pytest.mark.slurm
STABLE = ["series_id", "age", "sex", "status", "error", "manifest_line", "model", "measure_spacing_mm",
          "n_structures_ok"]


def _tables(out: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    features = pd.read_parquet(out / "features").sort_values(["series_id", "label"]).reset_index(drop=True)
    series = pd.read_parquet(out / "series")[STABLE].sort_values("series_id").reset_index(drop=True)
    return features, series


def _rows(examples: Path, n: int) -> list[dict]:
    rows = [{"series_id": f"nii{i}", "path": str(examples / "example_ct_sm.nii.gz"), "age": 40 + i, "sex": "M",
             "labels": str(examples / "example_seg_fast.nii.gz")} for i in range(n)]
    rows.append({"series_id": "dcm", "path": str(examples / "example_ct_dicom"), "age": 57, "sex": "F",
                 "labels": str(examples / "example_seg_dicom.nii.gz")})
    rows.append({"series_id": "broken", "path": str(examples / "missing.nii.gz"), "age": 50, "sex": "F",
                 "labels": str(examples / "example_seg_fast.nii.gz")})
    return rows


def _jobs(job_name: str) -> list[str]:
    listing = subprocess.run(["squeue", "-h", "-t", "all", "-n", job_name, "-o", "%i"], capture_output=True,
                             text=True, timeout=30).stdout
    return listing.split()


def test_slurm_run_gives_the_local_tables(tmp_path: Path, examples: Path, slurm_run_config, prefect_server: str
                                          ) -> None:
    run_yaml, job_name, logs = slurm_run_config
    manifest = write_manifest(tmp_path / "scans.csv", _rows(examples, 5))
    local = cohort_cli("run", "--manifest", str(manifest), "--out", str(tmp_path / "local"), "--config",
                       str(run_yaml), "--workers", "2", api=prefect_server)
    slurm = cohort_cli("run", "--manifest", str(manifest), "--out", str(tmp_path / "slurm"), "--config",
                       str(run_yaml), "--cluster", "slurm", api=prefect_server, timeout=240)
    assert local.returncode == 1 and slurm.returncode == 1, slurm.stderr
    assert "failed line 8 (broken): <path of line 8>: file not found" in slurm.stderr  # no absolute input path
    for mine, reference in zip(_tables(tmp_path / "slurm"), _tables(tmp_path / "local")):
        pd.testing.assert_frame_equal(mine, reference)
    jobs = _jobs(job_name)
    assert len(jobs) >= 2, "the workers should have been SLURM jobs"
    assert {f"dask-worker-{job}.err" for job in jobs} <= {p.name for p in logs.iterdir()}
    assert not subprocess.run(["squeue", "-h", "-n", job_name, "-t", "running,pending"], capture_output=True,
                              text=True).stdout.strip(), "cohort run must cancel its jobs when it ends"


def test_scancel_mid_series_retries_it_on_another_job(tmp_path: Path, examples: Path, slurm_run_config,
                                                      slow_series, holders, job_of, prefect_server: str) -> None:
    run_yaml, job_name, _ = slurm_run_config
    slow_ct, slow_seg = slow_series
    rows = _rows(examples, 3)[:-1] + [{"series_id": "slow", "path": str(slow_ct), "age": 70, "sex": "M",
                                       "labels": str(slow_seg)}]
    manifest = write_manifest(tmp_path / "scans.csv", rows)
    out = tmp_path / "results"
    process = subprocess.Popen([sys.executable, "-m", "cohort.cli", "run", "--manifest", str(manifest), "--out",
                                str(out), "--config", str(run_yaml), "--cluster", "slurm"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env=cli_env(prefect_server), start_new_session=True)
    try:
        cancelled = None
        deadline = time.monotonic() + 150
        while cancelled is None and time.monotonic() < deadline and process.poll() is None:
            for pid in holders(slow_ct) + holders(slow_seg):
                job = job_of(pid)
                if job:
                    assert subprocess.run(["scancel", job], timeout=30).returncode == 0
                    cancelled = job
                    break
            time.sleep(0.05)
        assert cancelled, "the slow series never started in a SLURM job"
        output, _ = process.communicate(timeout=200)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 0, output
    series = pd.read_parquet(out / "series").set_index("series_id")
    assert (series["status"] == "done").all() and len(series) == 5
    state = subprocess.run(["scontrol", "show", "job", cancelled], capture_output=True, text=True).stdout
    assert "JobState=CANCELLED" in state


def test_a_slurm_worker_runs_as_many_series_as_its_slots(slurm_run_config) -> None:
    """A job's worker takes ``1 + prefetch`` series at once, not dask-jobqueue's one per thread,
    and learns how many forward passes it may run at once."""
    from distributed import Client

    from cohort.flows.slurm import WorkerNeeds, load_slurm_config, slurm_cluster
    from cohort.segmentation.passes import PassPolicy

    run_yaml, _, _ = slurm_run_config
    slurm_yaml = run_yaml.parent / "slurm.yaml"
    config = load_slurm_config(str(slurm_yaml))
    with slurm_cluster(config, workers=1, needs=WorkerNeeds(2, PassPolicy(2), model_memory_gb=0.5)) as cluster, \
            Client(cluster) as client:
        client.wait_for_workers(1, timeout=90)
        assert list(client.nthreads().values()) == [2]
        (passes,) = client.run(lambda: os.environ["COHORT_NETWORK_PASSES"]).values()
        assert passes == "1"  # one thread (cores 1): one pass at a time
