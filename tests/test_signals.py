"""Ctrl-C (SIGINT to the whole process group) and SIGTERM on a real ``cohort run``: it stops
within seconds with exit 130/143 and one line, keeps every finished row, and a rerun
completes the rest with tables equal to an uninterrupted run. No PREFECT_API_URL: each run
owns its Prefect server."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from testkit import cli_env, cohort_cli, result_tables, write_manifest

N_SERIES = 60
STOP_WITHIN_S = 15.0


@pytest.fixture(scope="module")
def cohort_inputs(tmp_path_factory, examples: Path) -> tuple[Path, Path]:
    """A manifest of ``N_SERIES`` labelled copies of the example CT, and small batches (parts appear early)."""
    folder = tmp_path_factory.mktemp("signals")
    rows = [{"series_id": f"s{i:03d}", "path": str(examples / "example_ct_sm.nii.gz"), "age": 30 + i % 50,
             "sex": "MF"[i % 2], "labels": str(examples / "example_seg_fast.nii.gz")} for i in range(N_SERIES)]
    config = folder / "run.yaml"
    config.write_text("execution:\n  batch_size: 2\n  flush_interval_s: 1\n")
    return write_manifest(folder / "scans.csv", rows), config


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, cohort_inputs) -> Path:
    manifest, config = cohort_inputs
    out = tmp_path_factory.mktemp("uninterrupted") / "results"
    result = cohort_cli("run", "--manifest", str(manifest), "--out", str(out), "--config", str(config),
                        "--workers", "2")
    assert result.returncode == 0, result.stderr
    return out


@pytest.mark.parametrize(("stop_signal", "exit_code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_to_the_process_group_stops_saves_and_resumes(stop_signal: signal.Signals, exit_code: int,
                                                             cohort_inputs, uninterrupted: Path,
                                                             tmp_path: Path) -> None:
    manifest, config = cohort_inputs
    out = tmp_path / "results"
    args = ["run", "--manifest", str(manifest), "--out", str(out), "--config", str(config), "--workers", "2"]
    process = subprocess.Popen([sys.executable, "-m", "cohort.cli", "-v", *args], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=cli_env(None), start_new_session=True)
    deadline = time.monotonic() + 180
    while not list((out / "series").glob("*.parquet")) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert process.poll() is None, process.communicate()[1]
    os.killpg(process.pid, stop_signal)  # what a terminal's Ctrl-C does: the driver and its Dask workers
    sent = time.monotonic()
    try:
        _, stderr = process.communicate(timeout=STOP_WITHIN_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        pytest.fail(f"{stop_signal.name}: still running {STOP_WITHIN_S:g} s later: {process.communicate()[1]}")
    stopped_in = time.monotonic() - sent

    assert process.returncode == exit_code, stderr
    assert "Traceback" not in stderr, stderr
    assert re.search(r"prefect\.flow_runs: Finished in state Cancelled\(.interrupted", stderr), stderr
    assert not re.search(r"prefect\.flow_runs: Finished in state Completed", stderr), stderr
    stopped = re.search(rf"interrupted \({stop_signal.name}\); (\d+) series done and saved, (\d+) in flight dropped; "
                        "rerun the same command to resume", stderr.replace("\n", " "))
    assert stopped, stderr
    saved = pd.read_parquet(out / "series")
    assert 0 < len(saved) < N_SERIES and len(saved) == int(stopped.group(1)), (stderr, stopped_in)
    assert (saved["status"] == "done").all()

    rerun = cohort_cli(*args)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{N_SERIES - len(saved)} series to process, {len(saved)} already done" in rerun.stderr.replace("\n", " ")
    for resumed, reference in zip(result_tables(out), result_tables(uninterrupted)):
        pd.testing.assert_frame_equal(resumed, reference)


def test_a_lost_heartbeat_is_one_line_not_a_traceback() -> None:
    """A worker whose scheduler closed first at the end of a stopped run printed a traceback under
    the driver's one-line message (seen in about 1 of 3 Ctrl-Cs to the process group)."""
    import io
    import logging

    from cohort.signals import HeartbeatLossInOneLine

    logger, stream = logging.getLogger("distributed.worker"), io.StringIO()
    handler, quiet = logging.StreamHandler(stream), HeartbeatLossInOneLine()
    logger.addHandler(handler)
    logger.addFilter(quiet)
    try:
        try:
            raise OSError("Timed out trying to connect to tcp://127.0.0.1:1 after 30 s")
        except OSError:
            logger.exception("Failed to communicate with scheduler during heartbeat.")
            logger.exception("Unexpected exception during heartbeat. Closing worker.")
    finally:
        logger.removeHandler(handler)
        logger.removeFilter(quiet)
    lines = stream.getvalue().splitlines()
    assert lines[0] == ("Failed to communicate with scheduler during heartbeat. (OSError: Timed out trying to connect "
                        "to tcp://127.0.0.1:1 after 30 s)")
    assert lines[1] == "Unexpected exception during heartbeat. Closing worker." and "Traceback" in lines[2]
