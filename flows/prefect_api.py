"""The Prefect API of a run: the server ``PREFECT_API_URL`` names, or one cohort starts and owns.

Checked before the run starts: without it a missing server shows up as a long traceback from
inside Prefect, after the manifest was already read and the cluster started.
"""

from __future__ import annotations

import os
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

from cohort.errors import RunCannotStart
from cohort.flows.prefect_server import OwnedServer, start_server

DRAIN_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class PrefectApi:
    """Where the run's flow reports: ``description`` is shown in the run's first line."""

    description: str
    server: OwnedServer | None = None

    @contextmanager
    def connected(self) -> Iterator[str]:
        """Wait for an owned server, point Prefect (settings and environment) at it; yield the URL."""
        if self.server is None:
            yield os.environ["PREFECT_API_URL"]
            return
        from prefect.settings import PREFECT_API_URL, temporary_settings

        self.server.wait_ready()
        before = os.environ.get("PREFECT_API_URL")
        os.environ["PREFECT_API_URL"] = self.server.url
        try:
            with temporary_settings(updates={PREFECT_API_URL: self.server.url}):
                try:
                    yield self.server.url
                finally:
                    _drain_prefect_workers()
        finally:
            if before is None:
                os.environ.pop("PREFECT_API_URL", None)
            else:
                os.environ["PREFECT_API_URL"] = before


@contextmanager
def prefect_api() -> Iterator[PrefectApi]:
    """The server of ``PREFECT_API_URL`` (checked now), else an owned server started now, stopped on exit."""
    url = os.environ.get("PREFECT_API_URL")
    if url:
        try:
            urllib.request.urlopen(url.rstrip("/") + "/health", timeout=10)
        except OSError as error:
            raise RunCannotStart(
                f"PREFECT_API_URL={url} does not answer ({error}); start the server "
                "(`prefect server start`) or unset PREFECT_API_URL and cohort starts its own"
            ) from None
        yield PrefectApi(f"server {url}")
        return
    server = start_server()
    try:
        yield PrefectApi(f"local server (pid {server.pid})", server)
    finally:
        server.stop()


def _drain_prefect_workers(timeout_s: float = DRAIN_TIMEOUT_S) -> None:
    """Send Prefect's queued logs and events now, while the owned server still answers.

    Prefect sends them at interpreter exit otherwise, after the server was stopped, and then
    retries for about a minute and prints "Error logging to API".
    """
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        worker.drain_all(timeout=timeout_s)
