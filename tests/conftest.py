"""Shared fixtures: the shipped example data and helpers to build manifests and run the CLI."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from testkit import wait_for_health

EXAMPLES = Path(__file__).resolve().parents[1] / "cohort" / "examples"
REPO = EXAMPLES.parents[1]


@pytest.fixture(scope="session")
def examples() -> Path:
    return EXAMPLES


@pytest.fixture()
def example_copy(tmp_path: Path) -> Path:
    """A writable copy of the examples folder (for tests that damage files)."""
    target = tmp_path / "examples"
    shutil.copytree(EXAMPLES, target)
    return target


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory) -> str:
    """A real Prefect server on 127.0.0.1 for this test session; yields its API URL.

    Runs against it skip the ~3 s start of the server cohort otherwise starts per run; that path
    (the README's default) has its own tests.
    """
    home = tmp_path_factory.mktemp("prefect-home")
    port = _free_port()
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}
    env.pop("PREFECT_API_URL", None)
    log = (home / "server.log").open("w")
    server = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port",
                               str(port)], stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/api"
    wait_for_health(url, server, lambda: (home / "server.log").read_text())
    yield url
    server.terminate()
    try:
        server.wait(timeout=15)
    except subprocess.TimeoutExpired:
        server.kill()

