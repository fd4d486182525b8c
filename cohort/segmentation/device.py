"""How a worker's GPU runs the network: precision and memory layout (``execution.precision``,
``execution.channels_last``). Plain data, importable without torch, shipped to every worker."""

from __future__ import annotations

from dataclasses import dataclass

from cohort.config import PRECISIONS


@dataclass(frozen=True)
class DeviceSettings:
    """How a CUDA device runs the network; ignored on a CPU (nnU-Net computes in float32 there).

    ``precision``: the autocast type of the forward pass. ``fp16`` is what nnU-Net and
    TotalSegmentator use on a GPU; ``bf16``; ``fp32`` computes in float32 (convolutions may still
    use TF32 tensor cores, PyTorch's default). ``channels_last``: weights and tiles in the NDHWC
    layout that cuDNN's tensor-core kernels prefer; it changes speed, not results beyond float
    rounding.
    """

    precision: str = "fp16"
    channels_last: bool = False

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
