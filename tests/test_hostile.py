"""Cases from a hostile review, each through the real CLI: writes that fail mid-run stop the run
with one message, and a run whose every row failed is explained by `cohort stats`/`report`."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from testkit import cli_env, cohort_cli, write_manifest


def test_writes_failing_mid_run_stop_with_one_message(tmp_path: Path, examples: Path, prefect_server: str) -> None:
    rows = [{"series_id": f"s{i:02d}", "path": str(examples / "example_ct_sm.nii.gz"), "age": 50, "sex": "M",
             "labels": str(examples / "example_seg_fast.nii.gz")} for i in range(40)]
    manifest = write_manifest(tmp_path / "scans.csv", rows)
    config = tmp_path / "small.yaml"
    config.write_text("execution:\n  batch_size: 2\n  flush_interval_s: 1\n")
    out = tmp_path / "results"
    process = subprocess.Popen([sys.executable, "-m", "cohort.cli", "run", "--manifest", str(manifest), "--out",
                                str(out), "--config", str(config), "--workers", "1"], stderr=subprocess.PIPE,
                               stdout=subprocess.DEVNULL, text=True, env=cli_env(prefect_server))
    deadline = time.monotonic() + 120
    while not list((out / "series").glob("*.parquet")) and time.monotonic() < deadline:
        time.sleep(0.02)
    shutil.rmtree(out / "series")  # the folder goes away under the run (unmounted, deleted, full...)
    stopped_at = time.monotonic()
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 2, stderr
    assert time.monotonic() - stopped_at < 60
    message = " ".join(stderr.split())
    assert "Traceback" not in stderr and "cannot write" in message and "rerun the same command" in message
    assert message.count("cannot write") == 1


def test_stats_and_report_explain_a_run_whose_rows_all_failed(tmp_path: Path, prefect_server: str) -> None:
    manifest = write_manifest(tmp_path / "scans.csv", [
        {"series_id": "a", "path": "missing_a.nii.gz", "age": 50, "sex": "M", "labels": "missing_seg.nii.gz"},
        {"series_id": "b", "path": "missing_b.nii.gz", "age": 60, "sex": "F",
         "labels": "missing_seg.nii.gz"}])
    out = tmp_path / "results"
    assert cohort_cli("run", "--manifest", str(manifest), "--out", str(out), api=prefect_server).returncode == 1
    assert (pd.read_parquet(out / "series")["status"] == "failed").all()
    for command in (["stats", "--results", str(out)], ["report", "--results", str(out)]):
        result = cohort_cli(*command)
        message = " ".join(result.stderr.split())
        assert result.returncode == 2, result.stderr
        assert "no series in" in message and "2 failed" in message and "file not found" in message
        assert "run `cohort run" not in message.split("Fix the inputs")[0]
