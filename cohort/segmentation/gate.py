"""How the forward passes of one worker's series slots share its device.

On a GPU they take turns: one pass at a time keeps the device's memory to one series' logits,
and the other slots read, restore, measure and store meanwhile (``execution.gpu_prefetch``).

On a CPU a small network's forward pass on ``t`` threads may run well below ``t`` times its
one-thread speed: every layer ends at a barrier where the threads wait for the slowest (the small
test network on two threads: 1.5 times one thread). A worker with several series slots
(``execution.prefetch``) may then run up to ``execution.network_passes`` passes at once, each on
an equal share of its threads, so that the cores compute instead of waiting (1.3x for that
network on 2 cores). Networks of TotalSegmentator's size run 1.94x faster on two threads than on
one, leaving nothing to win back (0.9x), so one pass at a time is the default
(docs/performance.md; ``benchmarks/bench_passes.py`` measures a network on a machine). The cluster
decides how many passes a worker's threads and memory allow (cohort.flows.resources) and says so
in ``COHORT_NETWORK_PASSES``; without it, one at a time. Labels do not depend on the thread count
(tests/segment/test_gate.py).

>>> before = torch.get_num_threads()
>>> with NetworkGate(passes=2, threads_each=1):
...     torch.get_num_threads()
1
>>> torch.get_num_threads() == before
True
"""

from __future__ import annotations

import os
import threading

import torch


class NetworkGate:
    """Admits at most ``passes`` forward passes at once, each on ``threads_each`` torch threads
    (``None``: the thread count as it is)."""

    def __init__(self, passes: int = 1, threads_each: int | None = None) -> None:
        if passes < 1:
            raise ValueError(f"passes must be at least 1, got {passes}")
        self.passes = passes
        self.threads_each = threads_each
        self._free = threading.BoundedSemaphore(passes)
        self._local = threading.local()  # each thread's own count, put back when its pass ends

    @classmethod
    def for_device(cls, device: torch.device) -> NetworkGate:
        """One pass at a time on a GPU; on a CPU the passes the worker's cluster allows
        (``COHORT_NETWORK_PASSES``), splitting this process's torch threads among them."""
        allowed = os.environ.get("COHORT_NETWORK_PASSES", "")
        passes = int(allowed) if allowed.isdigit() and int(allowed) > 0 else 1
        if device.type != "cpu" or passes == 1:
            return cls()
        return cls(passes, max(1, torch.get_num_threads() // passes))

    def __enter__(self) -> NetworkGate:
        self._free.acquire()
        if self.threads_each is not None:
            # torch gives a thread the process-wide count on its first parallel call and keeps it
            # per thread afterwards: that first call must come before this thread's own setting.
            self._local.before = torch.get_num_threads()
            torch.set_num_threads(self.threads_each)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.threads_each is not None:
            torch.set_num_threads(self._local.before)
        self._free.release()

    def __repr__(self) -> str:
        return f"NetworkGate(passes={self.passes}, threads_each={self.threads_each})"
