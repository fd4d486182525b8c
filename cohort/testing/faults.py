"""Networks that run out of memory on purpose, for the tests of what a run does then.

A CPU does not raise an out-of-memory error the way a GPU does when the series on a worker
together need more than the device has; these networks raise torch's own ``OutOfMemoryError``
(the exception CUDA's allocator raises) in a real nnU-Net forward pass instead. A model folder
uses one through its plans, as nnU-Net names any architecture: :func:`use_network_class`.
With :data:`FORWARD_LOG_ENV` set, :class:`OutOfMemoryUnlessAlone` appends each forward pass to
that file, so a test can check what ran beside what, across processes.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from pathlib import Path

import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet

from cohort.flows.alone import worker_admission

FORWARD_LOG_ENV = "COHORT_TEST_FORWARD_LOG"


class OutOfMemoryBesideOthers(PlainConvUNet):
    """The test network on a device with room for one series: out of memory whenever another
    series is running on its worker."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if worker_admission().sharing > 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB "
                                         "(test network: another series runs on this worker)")
        return super().forward(x)


class OutOfMemoryAlways(PlainConvUNet):
    """The test network on a device too small for any series."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (test network: always)")


class OutOfMemoryUnlessAlone(PlainConvUNet):
    """The test network on a GPU with room for one series: out of memory unless the series runs
    alone. Each pass, failed or not, is a line ``pid start end alone`` (monotonic clock, the same in
    every process) of the file named by :data:`FORWARD_LOG_ENV`, if set."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        alone, start = worker_admission().running_alone, time.monotonic()
        try:
            if not alone:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB "
                                             "(test network: the series does not run alone)")
            return super().forward(x)
        finally:
            if os.environ.get(FORWARD_LOG_ENV):
                with open(os.environ[FORWARD_LOG_ENV], "a") as log:
                    log.write(f"{os.getpid()} {start} {time.monotonic()} {int(alone)}\n")


def use_network_class(folders: list[Path], network_class: type[PlainConvUNet]) -> None:
    """Make the model folders built by ``cohort.testing.weights`` name ``network_class`` as their
    architecture (same parameters, so their checkpoints still load)."""
    from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager

    for folder in folders:
        plans_file = Path(folder) / "plans.json"
        plans = json.loads(plans_file.read_text())
        for configuration in plans["configurations"].values():
            with warnings.catch_warnings():  # "Detected old nnU-Net plans format": converting it is the point
                warnings.simplefilter("ignore", UserWarning)
                ConfigurationManager(configuration)  # writes the "architecture" entry of the new plans format
            configuration["architecture"]["network_class_name"] = f"{network_class.__module__}.{network_class.__name__}"
        plans_file.write_text(json.dumps(plans, indent=2))
