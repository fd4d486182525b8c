"""Check, before a run starts, that Prefect's API will answer: a server or ephemeral mode.

Without these checks a missing server or a broken ephemeral start shows up as a long
traceback from inside Prefect, after the manifest was already read and the cluster started.
"""

from __future__ import annotations

import os
import site
import urllib.request
from pathlib import Path

from cohort.errors import RunCannotStart


def check_prefect_api() -> str:
    """Return ``"server <url>"`` or ``"ephemeral"``; raise :class:`RunCannotStart` if unusable."""
    url = os.environ.get("PREFECT_API_URL")
    if url:
        try:
            urllib.request.urlopen(url.rstrip("/") + "/health", timeout=10)
        except OSError as error:
            raise RunCannotStart(
                f"PREFECT_API_URL={url} does not answer ({error}); start the server "
                "(`prefect server start`) or unset PREFECT_API_URL to run in ephemeral mode"
            ) from None
        return f"server {url}"
    shadowing = [Path(folder) / "argparse.py" for folder in site.getsitepackages()
                 if (Path(folder) / "argparse.py").exists()]
    if shadowing:
        raise RunCannotStart(
            f"{shadowing[0]} (the old 'argparse' backport, pulled in by nnunetv2 -> batchgenerators -> unittest2) "
            "shadows Python's own argparse inside Prefect's ephemeral server; remove it with "
            "`pip uninstall -y argparse`, or set PREFECT_API_URL to a running Prefect server"
        )
    return "ephemeral"
