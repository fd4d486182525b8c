"""Cases from a hostile review, each through the real CLI: writes that fail mid-run stop the run
with one message, and a run whose every row failed is explained by `cohort stats`/`report`;
outputs on a read-only or full file system (real tmpfs mounts, as root) and config files that
name a missing file stop with exit 2 and the reason, never a traceback."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from testkit import cli_env, cohort_cli, mounted_tmpfs, result_tables, write_manifest


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


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, examples: Path) -> Path:
    folder = tmp_path_factory.mktemp("finished")
    manifest = write_manifest(folder / "scans.csv", [
        {"series_id": f"s{i}", "path": str(examples / "example_ct_sm.nii.gz"), "age": 40 + 15 * i,
         "sex": "MF"[i % 2], "labels": str(examples / "example_seg_fast.nii.gz")} for i in range(3)])
    assert cohort_cli("run", "--manifest", str(manifest), "--out", str(folder / "results")).returncode == 0
    return folder / "results"


@pytest.mark.parametrize("mount", ["ro", "size=200k"])
def test_stats_report_and_manifest_on_an_unwritable_or_full_file_system_exit_2(
        mount: str, finished_run: Path, tmp_path: Path, examples: Path) -> None:
    with mounted_tmpfs(tmp_path / "mnt", mount) as target:
        commands = {"stats": ["stats", "--results", str(finished_run), "--out", str(target / "aging")],
                    "report": ["report", "--results", str(finished_run), "--out", str(target / "report.html")]}
        if mount == "ro":  # a manifest is a few hundred bytes: it fits a small file system
            commands["manifest"] = ["manifest", "--dicom", str(examples / "example_ct_dicom"),
                                    "--out", str(target / "scans.csv")]
        for name, command in commands.items():
            result = cohort_cli(*command)
            message = " ".join(result.stderr.split())
            assert result.returncode == 2 and "Traceback" not in result.stderr, (name, result.stderr)
            expected = "(a read-only file system)" if mount == "ro" else "No space left on device while writing"
            assert f"cohort {name}:" in message and expected in message and str(target) in message, message


def test_a_config_naming_a_missing_file_stops_with_the_key_and_a_file_beside_it_is_found(
        tmp_path: Path, finished_run: Path) -> None:
    from cohort.config import CONFIG_DIR

    manifest = tmp_path / "scans.csv"
    shutil.copy(finished_run.parent / "scans.csv", manifest)
    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "missing.yaml").write_text("measure:\n  lower_bounds: nope.csv\n")
    result = cohort_cli("run", "--manifest", str(manifest), "--out", str(tmp_path / "out"), "--config",
                        str(configs / "missing.yaml"))
    message = " ".join(result.stderr.split())
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "key 'measure.lower_bounds': file 'nope.csv' not found" in message
    measured = pd.read_parquet(finished_run / "features")
    bounds = pd.read_csv(CONFIG_DIR / "lower_bounds_v2.csv")
    whole = bounds[bounds["structure"].isin(measured.query("status == 'ok'")["structure"])]["structure"].iloc[0]
    bounds.loc[bounds["structure"] == whole, "lower_bound_ml"] = 100_000  # now below its bound in every series
    bounds.to_csv(configs / "strict_bounds.csv", index=False)
    (configs / "beside.yaml").write_text("measure:\n  lower_bounds: strict_bounds.csv\n")
    result = cohort_cli("run", "--manifest", str(manifest), "--out", str(tmp_path / "out"), "--config",
                        str(configs / "beside.yaml"), cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr
    features = pd.read_parquet(tmp_path / "out" / "features")
    assert (features[features["structure"] == whole]["status"] == "below_lower_bound").all()


def test_a_report_made_from_another_folder_finds_the_images_of_a_run_started_with_a_relative_manifest(
        tmp_path: Path, examples: Path) -> None:
    import json

    inputs, elsewhere = tmp_path / "inputs", tmp_path / "elsewhere"
    inputs.mkdir()
    elsewhere.mkdir()
    write_manifest(inputs / "scans.csv", [{"series_id": "a", "path": str(examples / "example_ct_sm.nii.gz"), "age": 50,
                                           "sex": "F", "labels": str(examples / "example_seg_fast.nii.gz")}])
    results = tmp_path / "results"
    assert cohort_cli("run", "--manifest", "scans.csv", "--out", str(results), cwd=str(inputs)).returncode == 0
    record, = (results / "runs").glob("*.json")
    assert json.loads(record.read_text())["request"]["manifest"] == str(inputs / "scans.csv")
    report = cohort_cli("report", "--results", str(results), cwd=str(elsewhere))
    assert report.returncode == 0, report.stderr
    assert "not in the manifest of any recorded run" not in (results / "report.html").read_text()


def _fill_leaving(folder: Path, pages: int) -> Path:
    """A file that fills ``folder``'s file system up to ``pages`` free pages of 4 KiB."""
    import os

    filler = folder / "filler"
    stat = os.statvfs(folder)
    filler.write_bytes(b"\0" * max(stat.f_bavail * stat.f_frsize - pages * 4096, 0))
    return filler


def test_a_full_file_system_at_the_start_of_a_rerun_stops_with_one_message_and_loses_nothing(
        tmp_path: Path, examples: Path, prefect_server: str) -> None:
    """The rerun's own writes before any series (a part of manifest edits, the run record) on a full
    disk: exit 2 with the reason, no traceback, no half-written run record for `cohort status`;
    with the space back, the tables equal those of a run that never met a full disk."""
    import json

    rows = [{"series_id": f"s{i}", "path": str(examples / "example_ct_sm.nii.gz"), "age": 40 + i, "sex": "MF"[i % 2],
             "labels": str(examples / "example_seg_fast.nii.gz")} for i in range(3)]
    manifest = write_manifest(tmp_path / "scans.csv", rows)
    config = tmp_path / "tiny_margin.yaml"
    config.write_text("execution:\n  min_free_gb: 0.000001\n")
    edited = write_manifest(tmp_path / "edited.csv", [{**row, "age": 70} if row["series_id"] == "s1" else row
                                                      for row in rows])
    reference = tmp_path / "reference"
    assert cohort_cli("run", "--manifest", str(edited), "--out", str(reference), api=prefect_server).returncode == 0
    with mounted_tmpfs(tmp_path / "mnt", "size=2m") as target:
        out = target / "results"
        run = ["run", "--manifest", str(edited), "--out", str(out), "--config", str(config)]
        first = cohort_cli("run", "--manifest", str(manifest), "--out", str(out), "--config", str(config),
                           api=prefect_server)
        assert first.returncode == 0, first.stderr
        stopped = 0
        for pages in (1, 2, 3):
            filler = _fill_leaving(target, pages)
            result = cohort_cli(*run, api=prefect_server)
            filler.unlink()
            message = " ".join(result.stderr.split())
            assert "Traceback" not in result.stderr, result.stderr
            assert result.returncode in (0, 2), result.stderr
            if result.returncode == 2:
                stopped += 1
                assert "No space left on device" in message and "rerun the same command" in message, message
            for record in (out / "runs").glob("*.json"):
                assert json.loads(record.read_text())["run_id"] == record.stem
        assert stopped, "the file system was never full enough to stop a rerun"
        again = cohort_cli(*run, api=prefect_server)
        assert again.returncode == 0, again.stderr
        for mine, theirs in zip(result_tables(out), result_tables(reference)):
            pd.testing.assert_frame_equal(mine, theirs)
