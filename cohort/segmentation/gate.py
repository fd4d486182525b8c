"""How the forward passes of one worker's series slots share its device.

On a GPU they take turns: one pass at a time keeps the device's memory to one series' logits,
and the other slots read, restore, measure and store meanwhile (``execution.gpu_prefetch``).

On a CPU a small network's forward pass on ``t`` threads may run well below ``t`` times its
one-thread speed: every layer ends at a barrier where the threads wait for the slowest (the small
test network on two threads: 1.5 times one thread). A worker with several series slots
(``execution.prefetch``) may then run several passes at once, each on an equal share of its
threads, so that the cores compute instead of waiting (1.3-1.46x for that network on 2 cores).
Networks of TotalSegmentator's size run 1.94x faster on two threads than on one, leaving nothing
to win back (0.9x). Which of the two a network on a CPU is, the worker finds out once, when it
loads the model (``network_passes: auto``, the default): :func:`choose_passes` counts the work of
one tile of the network (a large one keeps the threads busy: one pass at a time), else
:func:`time_passes` runs the tile alone on all threads and ``most`` tiles at once on a share
each, and the gate admits ``most`` passes at once only where that is at least
:data:`MIN_SPEEDUP` times faster (docs/performance.md; ``benchmarks/bench_passes.py`` measures a
whole series both ways). The cluster
decides the most passes a worker's threads and memory allow (:class:`PassPolicy`, in the worker's
environment); without it, one at a time. Labels do not depend on the thread count
(tests/segment/test_gate.py).

>>> before = torch.get_num_threads()
>>> with NetworkGate(passes=2, threads_each=1):
...     torch.get_num_threads()
1
>>> torch.get_num_threads() == before
True
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable, Protocol

import torch

from cohort.segmentation.passes import PassPolicy

log = logging.getLogger(__name__)
MIN_SPEEDUP = 1.1
"""Passes side by side must be this much faster than one at a time on one tile: below it, the
other stages of the series beside them eat the gain (docs/performance.md)."""
LARGE_TILE_GFLOP_PER_THREAD = 20.0
"""A tile with this much work for each of the worker's threads is not timed (one pass at a time):
its layers are large enough for the threads to seldom wait. The networks measured so far lie
three orders of magnitude apart (docs/performance.md): TotalSegmentator's fast network, 744 GFLOP
a tile (372 per thread on 2), 0.78-0.98x side by side; the small test network, 0.8 GFLOP
(0.4), 1.17-1.77x. Timing a large tile both ways would cost seconds of start-up (4.6-5.4 s
a tile on this machine), counting its work costs a fraction of one."""
LARGE_TILE_S = 1.0
"""The same in seconds, for a network whose work cannot be counted: a first tile this long alone
ends the timing (one pass at a time)."""
TIMING_ROUNDS = 3


class NetworkGate:
    """Admits at most ``passes`` forward passes at once, each on ``threads_each`` torch threads
    (``None``: the thread count as it is). ``timing``: what the choice rested on, if it was timed."""

    def __init__(self, passes: int = 1, threads_each: int | None = None, timing: PassTiming | None = None) -> None:
        if passes < 1:
            raise ValueError(f"passes must be at least 1, got {passes}")
        self.passes = passes
        self.threads_each = threads_each
        self.timing = timing
        self._free = threading.BoundedSemaphore(passes)
        self._local = threading.local()  # each thread's own count, put back when its pass ends

    @classmethod
    def for_device(cls, device: torch.device, network: TiledNetwork | None = None,
                   policy: PassPolicy | None = None) -> NetworkGate:
        """One pass at a time on a GPU; on a CPU the passes the worker's cluster allows
        (``policy``, by default this process's :class:`PassPolicy`), splitting this process's torch
        threads among them, or, when the policy says to choose, as many as :func:`choose_passes`
        finds pay for one tile of ``network`` (the loaded model's first)."""
        policy = policy or PassPolicy.from_environment()
        if device.type != "cpu" or policy.most == 1:
            gate = cls()
        else:
            threads = torch.get_num_threads()
            share = max(1, threads // policy.most)
            timing = choose_passes(network, policy.most, threads) if policy.choose and network else None
            passes = policy.most if timing is None or timing.pays else 1
            gate = cls(passes, share if passes > 1 else None, timing)
            if timing is not None:
                log.info("%s: %d forward pass(es) at once", timing.describe(), passes)
        _made.append(gate)
        return gate

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


_made: list[NetworkGate] = []  # this process's gates, in the order its models were loaded


def passes_at_once() -> int:
    """Forward passes at once of the gate this process made last (0: no model loaded yet)."""
    return _made[-1].passes if _made else 0


class TiledNetwork(Protocol):
    """A loaded network as the gate times it (cohort.segmentation.predictor.NetworkPredictor)."""

    def tile_gflop(self) -> float | None:
        """Billions of floating-point operations of one tile (None: not countable)."""

    def tile_forward(self) -> Callable[[], object]:
        """A call that runs one tile through the network."""


@dataclass(frozen=True)
class PassTiming:
    """What decided a worker's passes at once: one tile's work (``gflop``), its seconds
    ``alone_s`` alone on all ``threads``, and ``together_s`` for ``passes`` tiles at once, each on
    ``threads // passes`` threads (best of the rounds timed; None where not timed: a large tile)."""

    passes: int
    threads: int
    gflop: float | None = None
    alone_s: float | None = None
    together_s: float | None = None

    @property
    def speedup(self) -> float | None:
        """Tiles per second side by side over tiles per second one at a time."""
        if self.alone_s is None or self.together_s is None:
            return None
        return self.passes * self.alone_s / self.together_s

    @property
    def pays(self) -> bool:
        speedup = self.speedup
        return speedup is not None and speedup >= MIN_SPEEDUP

    def describe(self) -> str:
        work = "" if self.gflop is None else f" ({self.gflop:.1f} GFLOP)"
        if self.alone_s is None:
            return (f"one tile of the network{work}: at least {LARGE_TILE_GFLOP_PER_THREAD:g} GFLOP for each of "
                    f"{self.threads} thread(s), not timed side by side")
        alone = f"one tile of the network{work} {self.alone_s:.3f} s alone on {self.threads} thread(s)"
        if self.together_s is None:
            return f"{alone} (at least {LARGE_TILE_S:g} s: not timed side by side)"
        return (f"{alone}, {self.passes} at once on {max(1, self.threads // self.passes)} each "
                f"{self.together_s:.3f} s ({self.speedup:.2f}x)")


def choose_passes(network: TiledNetwork, passes: int, threads: int) -> PassTiming:
    """What :func:`time_passes` says of one tile of ``network``; a tile of
    :data:`LARGE_TILE_GFLOP_PER_THREAD` or more per thread is not timed at all (one pass at a
    time: its layers keep the threads busy, and timing it would cost seconds of start-up)."""
    gflop = network.tile_gflop()
    if gflop is not None and gflop / threads >= LARGE_TILE_GFLOP_PER_THREAD:
        return PassTiming(passes, threads, gflop)
    return time_passes(network.tile_forward(), passes, threads, gflop)


def time_passes(tile_forward: Callable[[], object], passes: int, threads: int, gflop: float | None = None
                ) -> PassTiming:
    """Time ``tile_forward`` alone on ``threads`` threads and ``passes`` at once on a share each:
    the best of :data:`TIMING_ROUNDS` rounds of both after a first call alone (which grows the
    heap and the thread pools, as a first series would). A first call of :data:`LARGE_TILE_S` or
    more ends the timing there.

    >>> timing = time_passes(lambda: torch.ones(64, 64) @ torch.ones(64, 64), 2, 2)
    >>> timing.passes, timing.threads, timing.alone_s > 0, timing.together_s > 0
    (2, 2, True, True)
    """
    alone_gate, together_gate = NetworkGate(1, threads), NetworkGate(passes, max(1, threads // passes))

    def timed(gate: NetworkGate) -> None:
        with gate, torch.inference_mode():
            tile_forward()

    def in_threads(gate: NetworkGate, count: int) -> float:
        workers = [threading.Thread(target=timed, args=(gate,), name="cohort-pass-timing") for _ in range(count)]
        start = time.perf_counter()
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        return time.perf_counter() - start

    first = in_threads(alone_gate, 1)
    if first >= LARGE_TILE_S:
        return PassTiming(passes, threads, gflop, first)
    alone, together = [], []
    for _ in range(TIMING_ROUNDS):
        alone.append(in_threads(alone_gate, 1))
        together.append(in_threads(together_gate, passes))
    return PassTiming(passes, threads, gflop, min(alone), min(together))
