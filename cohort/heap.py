"""A worker's C heap keeps the memory one layer or series frees for the next one.

nnU-Net's forward pass on the CPU allocates and frees blocks of hundreds of MB in every layer.
glibc serves each block above 32 MB with a fresh ``mmap`` and unmaps it on ``free``, so the next
layer faults every page in again: about 2.5 million page faults per forward pass of the fast
model on a 39 M-voxel CT, half of its CPU time (docs/performance.md). Kept in one heap, the pages
are reused and the forward pass takes half the time.

glibc reads these settings once, when a process starts, so a cluster puts them in its workers'
environment (:func:`reuse_environment`). Freed memory then stays in the process up to a quarter
of the worker's memory limit; :func:`trim_when_above` returns it to the system when a worker
holds more than it should, so that Dask never pauses a worker for memory it has already freed.
Other C libraries (musl, macOS) ignore the variables, and :func:`trim_when_above` does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

import psutil

MIB = 1024 ** 2
TOP_PAD_BYTES = 64 * MIB
MIN_RETAINED_BYTES = 256 * MIB


def reuse_environment(memory_limit_bytes: int) -> dict[str, str]:
    """glibc's variables for a worker with ``memory_limit_bytes``: one arena for all threads
    (series run in threads of their own), no ``mmap`` for large blocks, and the free top of the
    heap returned to the system only beyond a quarter of the memory limit (at least 256 MB)."""
    retained = max(MIN_RETAINED_BYTES, memory_limit_bytes // 4)
    return {
        "MALLOC_ARENA_MAX": "1",
        "MALLOC_MMAP_MAX_": "0",
        "MALLOC_TRIM_THRESHOLD_": str(retained),
        "MALLOC_TOP_PAD_": str(TOP_PAD_BYTES),
    }


@functools.cache
def _malloc_trim():
    library = ctypes.util.find_library("c")
    trim = getattr(ctypes.CDLL(library), "malloc_trim", None) if library else None
    if trim is not None:
        trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


def trim_when_above(limit_bytes: int) -> bool:
    """Return the heap's free pages to the system if this process's resident memory exceeds
    ``limit_bytes``; True when it did (glibc only)."""
    trim = _malloc_trim()
    if trim is None or psutil.Process().memory_info().rss <= limit_bytes:
        return False
    trim(0)
    return True
