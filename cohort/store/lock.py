"""One writer per output folder: an advisory ``flock`` that the kernel releases when the
holder dies, so a killed run never leaves the folder stuck."""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator

from cohort.errors import OutputLocked, RunCannotStart

HOLDER_WAIT_S = 2.0


@contextmanager
def exclusive_output(lock_path: Path, command: str) -> Iterator[None]:
    """Hold the lock on ``lock_path`` for the body, or raise :class:`OutputLocked` at once."""
    if lock_path.parent.exists() and not lock_path.parent.is_dir():
        raise RunCannotStart(f"--out {lock_path.parent} is a file, not a folder; give a folder for the results")
    try:
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(lock_path, "a+")
    except OSError as error:
        raise RunCannotStart(f"--out {lock_path.parent}: cannot create or write there "
                             f"({error.strerror or error}); choose a folder you can write to") from None
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutputLocked(f"{lock_path.parent} is in use by another cohort run ({describe_holder(read_holder(handle))}); "
                               "wait for it to finish or stop it, then run again") from None
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "started": time.strftime("%Y-%m-%d %H:%M:%S"), "command": command}))
        handle.flush()
        yield
    finally:
        handle.close()


def read_holder(handle: IO[str], wait_s: float = HOLDER_WAIT_S) -> str:
    """The holder's record, waited for up to ``wait_s``: a run writes it just after it takes the lock,
    and until then the file holds nothing or the record of the run before, which may be one killed
    long ago (a refusal naming a dead process reads as a stale lock to be removed by hand)."""
    deadline = time.monotonic() + wait_s
    while True:
        handle.seek(0)
        text = handle.read()
        if _names_a_live_holder(text) or time.monotonic() >= deadline:
            return text
        time.sleep(0.05)


def _names_a_live_holder(text: str) -> bool:
    """Whether ``text`` is a holder's record whose process runs (on another host: cannot be told, so yes)."""
    try:
        holder = json.loads(text)
        pid, host = int(holder["pid"]), holder["host"]
    except (ValueError, KeyError, TypeError):
        return False
    if host != socket.gethostname():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it runs, as another user
    return True


def describe_holder(text: str) -> str:
    """The lock file's JSON in words: pid, host, start time and command of the holder."""
    try:
        holder = json.loads(text)
        return f"pid {holder['pid']} on {holder['host']} since {holder['started']}: {holder['command']}"
    except (ValueError, KeyError, TypeError):
        return "holder unknown"
