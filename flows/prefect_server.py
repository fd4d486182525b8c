"""A Prefect API server owned by one ``cohort run``: started early, stopped on every exit.

Why not Prefect's ephemeral mode: it starts its API as ``python -m uvicorn --app-dir
<site-packages>``, which puts site-packages first on ``sys.path``; the obsolete ``argparse``
backport that nnU-Net's dependencies install there (``argparse.py``) then shadows the
standard library inside that server and it dies. This server runs the same app with the
same settings (no UI, no background services) but with ``python -P``, so nothing is put in
front of the standard library.

The server must not outlive its driver, even one killed with SIGKILL:

- Linux sends it SIGTERM when the driver dies (``PR_SET_PDEATHSIG``); the signal follows
  the *thread* that started it, so :func:`start_server` is called from the main thread
  (``Popen`` returns in milliseconds; the server boots while the driver reads the manifest
  and starts its cluster, and :meth:`OwnedServer.wait_ready` waits only when the flow starts);
- each server writes a pid file; the next start kills servers whose driver is gone
  (:func:`reap_left_servers`), checking the process's command line before it does;
- it runs in its own session, so a Ctrl-C sent to the terminal's process group leaves it
  answering while the driver saves its results; the driver stops it.
"""

from __future__ import annotations

import ctypes
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from cohort.errors import RunCannotStart

APP = "prefect.server.api.server:create_app"
READY_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 5.0
LOG_TAIL_CHARS = 2000
PR_SET_PDEATHSIG = 1
# What Prefect's own ephemeral server sets (prefect/server/api/server.py, SubprocessASGIServer).
SERVER_ENV = {"PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}


def runtime_dir() -> Path:
    """Where pid files and logs of owned servers live: ``$XDG_RUNTIME_DIR/cohort`` or the temp folder."""
    base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    return Path(base) / f"cohort-{os.getuid()}" / "prefect-servers"


def server_command(port: int) -> list[str]:
    """``python -P``: no script folder or cwd in front of ``sys.path``; uvicorn adds no ``--app-dir``."""
    code = (f"import uvicorn; uvicorn.run({APP!r}, factory=True, host='127.0.0.1', port={port}, "
            "log_level='error', lifespan='on')")
    return [sys.executable, "-P", "-c", code]


@dataclass(frozen=True)
class OwnedServer:
    """A running server process, its API URL and the files that record it."""

    process: subprocess.Popen
    url: str
    pid_file: Path
    log_file: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Return once ``/api/health`` answers; :class:`RunCannotStart` with the server's log otherwise."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                urllib.request.urlopen(self.url + "/health", timeout=2)
                return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    state = (f"exited with code {self.process.returncode}" if self.process.poll() is not None
                             else f"did not answer within {timeout_s:g} s")
                    tail = self.log_file.read_text(errors="replace")[-LOG_TAIL_CHARS:].strip()
                    self.stop()
                    raise RunCannotStart(f"cohort's Prefect server ({' '.join(self.process.args[:2])}) {state}; "
                                         f"its log: {tail or '(empty)'}") from None
                time.sleep(0.1)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after ``STOP_TIMEOUT_S``; remove the pid file and the log."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.pid_file.unlink(missing_ok=True)
        self.log_file.unlink(missing_ok=True)


def start_server(folder: Path | None = None) -> OwnedServer:
    """Reap servers left by killed runs, then start one on a free port of 127.0.0.1 (not waiting for it).

    Call from the main thread: the server gets SIGTERM when the thread that started it ends.
    """
    folder = folder or runtime_dir()
    folder.mkdir(parents=True, exist_ok=True)
    reap_left_servers(folder)
    port = _free_port()
    log_file = _log_file(folder, os.getpid(), port)
    env = {key: value for key, value in os.environ.items() if key != "PREFECT_API_URL"}
    with log_file.open("wb") as log:
        process = subprocess.Popen(server_command(port), env={**env, **SERVER_ENV}, stdin=subprocess.DEVNULL,
                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                   preexec_fn=_die_with_parent(os.getpid()))
    pid_file = folder / f"{process.pid}.json"
    partial = pid_file.with_suffix(".partial")  # renamed whole: another start never reads half a record
    partial.write_text(json.dumps({"server": process.pid, "driver": os.getpid(), "port": port}))
    partial.replace(pid_file)
    return OwnedServer(process, f"http://127.0.0.1:{port}/api", pid_file, log_file)


def reap_left_servers(folder: Path) -> list[int]:
    """SIGTERM the servers of ``folder`` whose driver is gone; return their pids.

    A pid is killed only if its command line is still an owned server's on the recorded
    port (the pid may have been reused since).
    """
    reaped = []
    for pid_file in folder.glob("*.json"):
        try:
            record = json.loads(pid_file.read_text())
            server, driver, port = int(record["server"]), int(record["driver"]), int(record["port"])
        except (OSError, ValueError, KeyError, TypeError):
            pid_file.unlink(missing_ok=True)
            continue
        if _alive(driver):
            continue  # another cohort run, still going
        if _cmdline(server) == server_command(port)[1:]:
            try:
                os.kill(server, signal.SIGTERM)
                reaped.append(server)
            except ProcessLookupError:
                pass
        pid_file.unlink(missing_ok=True)
        _log_file(folder, driver, port).unlink(missing_ok=True)
    return reaped


def _log_file(folder: Path, driver: int, port: int) -> Path:
    return folder / f"server-{driver}-{port}.log"


def _die_with_parent(parent: int):
    """A ``preexec_fn``: SIGTERM this child when the thread that forked it dies (Linux)."""
    def preexec() -> None:
        if sys.platform.startswith("linux"):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the driver died before prctl took effect
            os._exit(1)
    return preexec


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie, killed but not yet collected by its parent, is not running)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _cmdline(pid: int) -> list[str]:
    """The process's arguments after the executable ([] if it is gone or a zombie)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0")[1:-1]]


def _free_port(port_range: Path = Path("/proc/sys/net/ipv4/ip_local_port_range")) -> int:
    """A free port of 127.0.0.1 below the kernel's ephemeral range. The server binds it a second
    or two later, while the Dask cluster starts; a port from the ephemeral range could be handed
    to one of Dask's sockets meanwhile (seen once in CI: "address already in use")."""
    try:
        low = int(port_range.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    below_ephemeral = range(max(1024, low - 12000), low)
    for port in random.Random().sample(below_ephemeral, min(200, len(below_ephemeral))):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
