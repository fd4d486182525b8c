"""Fixtures of the scale-out tests: a slow real series, process lookup, SLURM availability."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Callable

import nibabel as nib
import numpy as np
import pytest

SLURM_CI_YAML = """\
cores: 1
processes: 1
memory: 2GB
walltime: "00:10:00"
job_name: {job_name}
interface: lo
dashboard_address: "127.0.0.1:0"
log_directory: {logs}
death_timeout_s: 30
worker_start_timeout_s: 90
adapt: {{minimum_jobs: 2, maximum_jobs: 2}}
"""


def slurm_answers() -> bool:
    if not shutil.which("scontrol") or not shutil.which("sinfo"):
        return False
    return subprocess.run(["scontrol", "ping"], capture_output=True, timeout=20).returncode == 0


@pytest.fixture()
def slurm_run_config(tmp_path: Path) -> tuple[Path, str, Path]:
    """(run config pointing at a loopback SLURM config, job name, log folder); skips without SLURM."""
    if not slurm_answers():
        pytest.skip("no SLURM controller answers `scontrol ping` (CI starts one with .ci/slurm-up)")
    job_name = f"cohort-test-{os.getpid()}-{tmp_path.name[-12:]}"
    logs = tmp_path / "slurm-logs"
    slurm_yaml = tmp_path / "slurm.yaml"
    slurm_yaml.write_text(SLURM_CI_YAML.format(job_name=job_name, logs=logs))
    run_yaml = tmp_path / "run.yaml"
    run_yaml.write_text(f"execution:\n  slurm_config: {slurm_yaml}\n  batch_size: 2\n  flush_interval_s: 1\n"
                        "  retries: 1\n")
    return run_yaml, job_name, logs


@pytest.fixture(scope="session")
def slow_series(tmp_path_factory) -> tuple[Path, Path]:
    """A real CT and label map large enough that one series takes seconds: 4.1-4.5 s alone on
    one worker of the 2-core machine (ingest 2.5-2.8 s), well past the 1.5 s timeout that
    test_scale_faults gives it. At 400 slices it took 2.0-2.2 s, and a retry that ran alone
    sometimes finished inside the timeout.

    Kill and timeout tests act on it while it runs: no test hook in cohort's code.
    """
    folder = tmp_path_factory.mktemp("slow")
    shape = (512, 512, 800)
    ct = np.full(shape, -1000, np.int16)
    ct[100:400, 100:400, 50:350] = 40
    labels = np.zeros(shape, np.uint8)
    labels[150:350, 150:350, 100:300] = 5
    labels[120:200, 120:200, 60:120] = 1
    affine = np.diag([0.8, 0.8, 1.5, 1.0])
    nib.save(nib.Nifti1Image(ct, affine), folder / "slow_ct.nii.gz")
    nib.save(nib.Nifti1Image(labels, affine), folder / "slow_seg.nii.gz")
    return folder / "slow_ct.nii.gz", folder / "slow_seg.nii.gz"


def processes_holding(path: Path) -> list[int]:
    """PIDs of the processes that have ``path`` open (read from /proc)."""
    target = str(path.resolve())
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            if any(os.readlink(f"/proc/{entry}/fd/{fd}") == target for fd in os.listdir(f"/proc/{entry}/fd")):
                pids.append(int(entry))
        except OSError:
            continue
    return pids


@pytest.fixture()
def holders() -> Callable[[Path], list[int]]:
    return processes_holding


def slurm_job_of(pid: int) -> str | None:
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    for item in environ:
        if item.startswith(b"SLURM_JOB_ID="):
            return item.split(b"=", 1)[1].decode()
    return None


@pytest.fixture()
def job_of() -> Callable[[int], str | None]:
    return slurm_job_of
