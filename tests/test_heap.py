"""The heap settings of worker processes (cohort.heap): page faults of a real allocation pattern
counted by the kernel, in fresh processes with and without the settings."""

from __future__ import annotations

import os
import subprocess
import sys

import psutil
import pytest

from cohort.heap import MIN_RETAINED_BYTES, reuse_environment, trim_when_above

GIB = 1024 ** 3
ALLOCATE_AND_FREE = """
import resource, threading, torch
faults = []
def layers():
    for _ in range(30):  # what a CPU forward pass does: a 128 MB activation per layer, freed after it
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        torch.ones(32 * 1024 * 1024)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
thread = threading.Thread(target=layers)  # series run in threads of their own
thread.start(); thread.join()
print(sum(faults[-10:]))
"""


def page_faults(environment: dict[str, str]) -> int:
    clean = {name: value for name, value in os.environ.items() if not name.startswith("MALLOC_")}
    result = subprocess.run([sys.executable, "-c", ALLOCATE_AND_FREE], env={**clean, **environment},
                            capture_output=True, text=True, check=True, timeout=120)
    return int(result.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc settings")
def test_freed_blocks_are_reused_instead_of_faulted_in_again() -> None:
    """Page faults of the last 10 of 30 layers: the heap has reached its working size."""
    default = page_faults({})
    reused = page_faults(reuse_environment(4 * GIB))
    block_pages = 128 * 1024 ** 2 // 4096
    assert default >= 10 * block_pages  # every layer faults its block in again
    assert reused < block_pages // 10   # the blocks' pages are reused


def test_memory_kept_is_a_quarter_of_the_limit() -> None:
    environment = reuse_environment(16 * GIB)
    assert environment["MALLOC_TRIM_THRESHOLD_"] == str(4 * GIB)
    assert environment["MALLOC_ARENA_MAX"] == "1" and environment["MALLOC_MMAP_MAX_"] == "0"
    assert reuse_environment(GIB)["MALLOC_TRIM_THRESHOLD_"] == str(MIN_RETAINED_BYTES)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_trims_only_above_the_limit() -> None:
    resident = psutil.Process().memory_info().rss
    assert trim_when_above(resident * 100) is False
    assert trim_when_above(0) is True
