"""What a cluster tells each CPU worker about running its series side by side.

A worker with several series slots (``execution.prefetch``) can run up to as many forward passes
at once, each on a share of its threads (:mod:`cohort.segmentation.gate`). Whether that pays
depends on the network and the CPU: the small test network ran 1.3-1.46x faster with two passes of
one thread than one pass of two (its layers end at barriers where threads wait), networks of
TotalSegmentator's size 0.87-0.93x (they keep both threads busy, and a second series' reading and
measuring only take cycles from them). So with ``network_passes: auto`` a worker times its loaded
network both ways and keeps what pays, and with ``prefetch: auto`` its series run side by side
only while its passes do; otherwise one series at a time, as with ``prefetch: 0``.

The cluster decides the most passes a worker's threads and memory allow
(``Resources.network_passes``); this policy travels to the worker process in its environment, which
is all a Dask nanny or a SLURM job script can give it.

>>> policy = PassPolicy(most=2, choose=True, series_follow_passes=True)
>>> policy.environment()
{'COHORT_NETWORK_PASSES': '2', 'COHORT_CHOOSE_PASSES': '1', 'COHORT_SERIES_FOLLOW_PASSES': '1'}
>>> PassPolicy.from_environment(policy.environment()) == policy
True
>>> PassPolicy.from_environment({})
PassPolicy(most=1, choose=False, series_follow_passes=False)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping

NETWORK_PASSES_ENV = "COHORT_NETWORK_PASSES"
"""Forward passes a worker may run at once on a CPU (its threads and memory allow no more)."""
CHOOSE_PASSES_ENV = "COHORT_CHOOSE_PASSES"
"""``1``: time the loaded network alone and side by side, and run side by side only where it pays."""
SERIES_FOLLOW_PASSES_ENV = "COHORT_SERIES_FOLLOW_PASSES"
"""``1``: the worker's series slots run side by side only while its forward passes do."""


@dataclass(frozen=True)
class PassPolicy:
    """``most`` forward passes at once on a CPU worker; with ``choose``, as many as its timing of
    the loaded network says pay (one or ``most``); with ``series_follow_passes``, series run side
    by side only when passes do (one at a time until the model is loaded and timed)."""

    most: int = 1
    choose: bool = False
    series_follow_passes: bool = False

    def describe(self) -> str:
        """How a log line says it.

        >>> PassPolicy(2, choose=True).describe()
        'up to 2, as timing the network decides'
        """
        if self.most == 1:
            return "1"
        return f"up to {self.most}, as timing the network decides" if self.choose else str(self.most)

    def environment(self) -> dict[str, str]:
        """The worker process's variables that carry this policy."""
        return {NETWORK_PASSES_ENV: str(self.most), CHOOSE_PASSES_ENV: "1" if self.choose else "0",
                SERIES_FOLLOW_PASSES_ENV: "1" if self.series_follow_passes else "0"}

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] = os.environ) -> PassPolicy:
        """The policy this worker process was started with (one pass at a time without one)."""
        most = environ.get(NETWORK_PASSES_ENV, "")
        return cls(int(most) if most.isdigit() and int(most) > 0 else 1, environ.get(CHOOSE_PASSES_ENV) == "1",
                   environ.get(SERIES_FOLLOW_PASSES_ENV) == "1")
