"""Stage 2: segment a CT with TotalSegmentator's nnU-Net networks (or any registered nnU-Net model).

    spec = load_model_spec("fast")                 # configs/models/fast.yaml, validated
    weights = resolve_weights_dir(None)            # where TotalSegmentator keeps its weights
    check_model_ready(spec, weights)               # RunCannotStart with the fix, before any work
    segmenter = get_segmenter(spec, weights)       # loaded once per process
    segmentation = segmenter.segment(volume)       # label map on the CT's own grid

Inference follows TotalSegmentator (Wasserthal et al. 2023, Apache-2.0); see docs/models.md.
"""

from cohort.segment.registry import ModelSpec, NetworkSpec, known_models, load_model_spec
from cohort.segment.report import models_report
from cohort.segment.segmenter import Segmentation, Segmenter, get_segmenter
from cohort.segment.weights import check_model_ready, resolve_weights_dir

__all__ = [
    "ModelSpec", "NetworkSpec", "Segmentation", "Segmenter", "check_model_ready", "get_segmenter",
    "known_models", "load_model_spec", "models_report", "resolve_weights_dir",
]
