"""Exceptions that carry a message a user can act on.

Two families: errors that stop a run before any work (exit code 2) and errors that fail one
series (its row in ``series/`` gets ``status == "failed"`` and the run goes on).
"""

from __future__ import annotations

import errno

WRITE_ERRORS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM})
"""The ``errno`` values of a failure to write outputs (disk full, quota, read-only, permissions):
the user's to fix, reported in one line, not as a traceback."""


class CohortError(Exception):
    """Base class of every error cohort raises on purpose."""


class RunCannotStart(CohortError):
    """The run cannot start at all: bad manifest, bad config, missing weights, locked output."""


class ManifestError(RunCannotStart):
    """The manifest is malformed; the message names file, row and column."""


class ConfigError(RunCannotStart):
    """A configuration file is invalid; the message names file and key."""


class OutputLocked(RunCannotStart):
    """Another ``cohort run`` holds the output folder."""


class OutputWriteFailed(RunCannotStart):
    """Writing under ``--out`` failed mid-run (disk full, read-only, removed): the run stops at once,
    keeping what was committed, instead of failing every remaining series the same way."""


class SeriesError(CohortError):
    """One series cannot be processed; the message is a one-line reason naming the file."""


class OutOfMemory(SeriesError):
    """A series ran out of memory (host or device). Beside other series on its worker it is retried
    alone (``flows/dispatch.py``); alone, it fails with this message."""


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is an allocation failure: Python's ``MemoryError`` (numpy), torch's
    ``OutOfMemoryError`` ("CUDA out of memory") or its CPU allocator's "can't allocate memory"."""
    text = str(error).lower()
    return isinstance(error, MemoryError) or type(error).__name__ == "OutOfMemoryError" or \
        "out of memory" in text or "allocate memory" in text
