"""Stage 2: segment a CT with TotalSegmentator's nnU-Net networks (or any registered nnU-Net model).

    spec = load_model_spec("fast")                 # configs/models/fast.yaml, validated
    weights = resolve_weights_dir(None)            # where TotalSegmentator keeps its weights
    check_model_ready(spec, weights)               # RunCannotStart with the fix, before any work
    segmenter = get_segmenter(spec, weights)       # loaded once per process
    segmentation = segmenter.segment(volume)       # label map on the CT's own grid

Inference follows TotalSegmentator (Wasserthal et al. 2023, Apache-2.0); see docs/models.md.
"""

from typing import Any

from cohort.segmentation.device import DeviceSettings
from cohort.segmentation.registry import ModelSpec, NetworkSpec, known_models, load_model_spec
from cohort.segmentation.report import models_report
from cohort.segmentation.weights import check_model_ready, resolve_weights_dir

_NEEDS_TORCH = ("Segmentation", "Segmenter", "get_segmenter")


def __getattr__(name: str) -> Any:
    """Import the segmenter (torch, nnU-Net) only when it is used, not to check a model name."""
    if name in _NEEDS_TORCH:
        from cohort.segmentation import segmenter

        return getattr(segmenter, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "DeviceSettings", "ModelSpec", "NetworkSpec", "Segmentation", "Segmenter", "check_model_ready", "get_segmenter",
    "known_models", "load_model_spec", "models_report", "resolve_weights_dir",
]
