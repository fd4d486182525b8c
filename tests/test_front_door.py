"""The README's first command works as written: ``cohort run`` owns its Prefect server (no
PREFECT_API_URL), whatever ``argparse.py`` lies in site-packages or the working folder, and
that server never outlives the run, even one killed with SIGKILL."""

from __future__ import annotations

import json
import os
import re
import signal
import site
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

from cohort.flows.prefect_api import PrefectApi
from cohort.flows.prefect_server import reap_left_servers, server_command, start_server
from testkit import cli_env, wait_for_health, write_manifest

COHORT = Path(sys.executable).parent / "cohort"  # the console script: its folder, not the cwd, is sys.path[0]
BROKEN_ARGPARSE = "raise ImportError('a stray argparse.py shadowed the standard library')\n"


def _running(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting for its parent does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _wait_gone(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while _running(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not _running(pid)


@pytest.fixture()
def shadowing_folder(tmp_path: Path) -> Path:
    """A working folder holding a broken ``argparse.py``, as site-packages does with the old backport."""
    folder = tmp_path / "work"
    folder.mkdir()
    (folder / "argparse.py").write_text(BROKEN_ARGPARSE)
    shadowed = subprocess.run([sys.executable, "-c", "import argparse"], cwd=folder, capture_output=True, text=True)
    assert shadowed.returncode != 0 and "shadowed the standard library" in shadowed.stderr  # the trap is armed
    return folder


def test_readme_run_works_with_argparse_shadows(shadowing_folder: Path, examples: Path) -> None:
    """No ``pip uninstall argparse``: the backport in site-packages (when installed, as nnunetv2 does)
    and an ``argparse.py`` in the working folder are both in front of the standard library for a
    process started the way Prefect's ephemeral server is."""
    out = shadowing_folder / "results"
    result = subprocess.run([str(COHORT), "run", "--manifest", str(examples / "manifest.csv"), "--out", str(out)],
                            cwd=shadowing_folder, env=cli_env(None), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert re.search(r"Prefect: local server \(pid \d+\)", result.stderr.replace("\n", " ")), result.stderr
    assert "Error logging to API" not in result.stderr  # Prefect's logs were sent before the server stopped
    assert sorted(pd.read_parquet(out / "series")["series_id"]) == ["example_dicom", "example_fast", "example_full"]


def test_the_backport_is_what_this_guards_against() -> None:
    """Where nnunetv2's dependencies installed the backport, the run above passed with it in place."""
    backports = [Path(folder) / "argparse.py" for folder in site.getsitepackages()
                 if (Path(folder) / "argparse.py").exists()]
    if not backports:
        pytest.skip("no argparse.py in site-packages here (the backport is not installed)")
    broken = subprocess.run([sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]); "
                             "from pydantic_settings import SettingsConfigDict", str(backports[0].parent)],
                            capture_output=True, text=True)
    assert broken.returncode != 0 and "argparse" in broken.stderr  # what `uvicorn --app-dir <site-packages>` does


def test_owned_server_is_where_prefect_reports(shadowing_folder: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Started from a folder holding a broken argparse.py, the server still answers, and a flow run
    inside :meth:`PrefectApi.connected` is recorded there (not in an ephemeral server)."""
    from prefect import flow
    from prefect.server.api.server import SubprocessASGIServer

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.chdir(shadowing_folder)
    server = start_server(tmp_path / "runtime")
    try:
        name = f"front-door-{os.getpid()}-{time.time_ns()}"

        @flow(name=name)
        def probe() -> int:
            return 7

        with PrefectApi(f"local server (pid {server.pid})", server).connected() as url:
            assert url == server.url and os.environ["PREFECT_API_URL"] == server.url
            assert probe() == 7
        assert "PREFECT_API_URL" not in os.environ
        request = urllib.request.Request(server.url + "/flows/filter", data=json.dumps({}).encode(),
                                         headers={"Content-Type": "application/json"})
        names = [item["name"] for item in json.load(urllib.request.urlopen(request, timeout=10))]
        assert name in names
        assert not any(instance.running for instance in SubprocessASGIServer._instances.values())
    finally:
        server.stop()
    assert _wait_gone(server.pid, 1) and not server.pid_file.exists()


def test_sigkill_of_the_driver_takes_its_prefect_server_along(tmp_path: Path, examples: Path) -> None:
    rows = [{"series_id": f"s{i:03d}", "path": str(examples / "example_ct_sm.nii.gz"),
             "labels": str(examples / "example_seg_fast.nii.gz")} for i in range(200)]
    manifest = write_manifest(tmp_path / "scans.csv", rows)
    driver = subprocess.Popen([sys.executable, "-m", "cohort.cli", "run", "--manifest", str(manifest), "--out",
                               str(tmp_path / "results"), "--workers", "1"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True, env=cli_env(None), start_new_session=True)
    try:
        first_line = driver.stderr.readline()
        server = re.search(r"local server \(pid (\d+)\)", first_line)
        assert server, first_line + driver.stderr.read()
        server_pid = int(server.group(1))
        assert _running(server_pid)
        deadline = time.monotonic() + 120
        while not list((tmp_path / "results" / "series").glob("*.parquet")) and time.monotonic() < deadline:
            time.sleep(0.05)  # the flow is running: the server is in use
        os.kill(driver.pid, signal.SIGKILL)  # the driver only; the server is in a session of its own
        driver.wait()
        assert _wait_gone(server_pid, 10), f"Prefect server {server_pid} outlived its SIGKILLed driver"
    finally:
        os.killpg(driver.pid, signal.SIGKILL)  # its Dask workers
        driver.stderr.close()


def test_next_start_reaps_servers_whose_driver_is_gone(tmp_path: Path) -> None:
    """A server left behind (no PDEATHSIG) is killed by the next start; a reused pid is not touched."""
    folder = tmp_path / "runtime"
    folder.mkdir()
    gone_driver = subprocess.Popen(["true"])
    gone_driver.wait()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**cli_env(None), "PREFECT_HOME": str(tmp_path / "prefect-home")}  # its own database: no lock contention
    left = subprocess.Popen(server_command(port), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, env=env)
    reused = subprocess.Popen(["sleep", "60"])
    try:
        wait_for_health(f"http://127.0.0.1:{port}/api", left, left.stderr.read)
        for process in (left, reused):
            record = {"server": process.pid, "driver": gone_driver.pid, "port": port}
            (folder / f"{process.pid}.json").write_text(json.dumps(record))
        assert reap_left_servers(folder) == [left.pid]
        assert left.wait(timeout=10) is not None
        assert reused.poll() is None
        assert not list(folder.glob("*.json"))
    finally:
        for process in (left, reused):
            process.kill()
            process.wait()


def test_python_dash_m_cohort_is_the_cohort_command(examples: Path) -> None:
    """Job scripts often name an environment's interpreter without activating it (no console script
    on PATH): ``python -m cohort`` must be the same command, with its exit codes."""
    import subprocess
    import sys

    checked = subprocess.run([sys.executable, "-m", "cohort", "check", "--manifest", str(examples / "manifest.csv")],
                             capture_output=True, text=True, timeout=120)
    assert checked.returncode == 0 and "no problems found" in checked.stdout, checked.stdout + checked.stderr
    missing = subprocess.run([sys.executable, "-m", "cohort", "check", "--manifest", "no_such.csv"],
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2
