"""Write nnU-Net model folders with random weights, in TotalSegmentator's exact layout.

Real weights cannot be downloaded everywhere (CI, these machines), yet the real nnU-Net
predictor must run in tests, parity checks and benchmarks. This builder writes, for every
network of a :class:`ModelSpec`::

    <weights>/<dataset>/<trainer>__<plans>__<configuration>/plans.json      (old plans format, as released)
                                                            /dataset.json   (the real class names)
                                                            /fold_0/checkpoint_final.pth

``small`` builds a tiny PlainConvUNet (fast tests); ``real`` the size TotalSegmentator ships
(PlainConvUNet, 32…320 features, patch 112×112×128 at 3 mm and 128³ at 1.5 mm, ~30 M
parameters), for parity and benchmarks. Both TotalSegmentator and cohort load these folders.

>>> from cohort.segmentation.registry import load_model_spec
>>> import tempfile; folder = Path(tempfile.mkdtemp())
>>> build_weights(load_model_spec("fast"), folder, "small")[0].name
'nnUNetTrainer_4000epochs_NoMirroring__nnUNetPlans__3d_fullres'
"""

from __future__ import annotations

import copy
import fnmatch
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from cohort.segmentation.nnunet_folder import find_trainer_class, plans_manager
from cohort.segmentation.registry import ModelSpec, NetworkSpec, network_classes
from cohort.segmentation.weights import network_folder


@dataclass(frozen=True)
class Architecture:
    """A PlainConvUNet in nnU-Net's old plans terms; sizes in nnU-Net's (z, y, x) order."""

    patch_size: tuple[int, int, int]
    strides: tuple[tuple[int, int, int], ...]
    base_features: int
    max_features: int


def architecture(spec: ModelSpec, size: str) -> Architecture:
    """``small`` (tests) or ``real`` (TotalSegmentator's sizes for the model's spacing)."""
    if size == "small":
        return Architecture((48, 48, 48), ((1, 1, 1), (2, 2, 2), (2, 2, 2)), 4, 16)
    if size != "real":
        raise ValueError(f"size must be 'small' or 'real', got {size!r}")
    if min(spec.spacing_mm or PLANS_SPACING_MM) >= 3.0:
        return Architecture((112, 112, 128), ((1, 1, 1),) + ((2, 2, 2),) * 4 + ((1, 1, 2),), 32, 320)
    return Architecture((128, 128, 128), ((1, 1, 1),) + ((2, 2, 2),) * 5, 32, 320)


# A model that takes its spacing from plans.json (VIBESegmentator) gets dataset 100's, on the axes of
# TEST_ORIENTATION (P, I, R): axial slices 3 mm apart along I. As nnU-Net plans an anisotropic dataset,
# plans.json holds it transposed, the coarsest axis first (see _transposes).
PLANS_SPACING_MM = (1.40625, 3.0, 1.40625)
# A model that reads its orientation from dataset.json gets a non-RAS one, so tests exercise it.
TEST_ORIENTATION = "PIR"
ENSEMBLE_FOLDS = (0, 1)


def build_weights(spec: ModelSpec, weights_dir: Path, size: str, seed: int = 0) -> list[Path]:
    """Write a random-weight folder for every network of ``spec``; return the folders.

    The layout follows the model file: a dataset pattern (``Dataset100*``) gets a concrete name, a
    model found by ``model_folder_patterns`` gets ``<trainer>__<plans>__<configuration>`` (which
    must match the first pattern), ``ensemble_folds`` gets folds 0 and 1, and an orientation read
    from ``dataset.json`` gets ``"PIR"``.
    """
    arch = architecture(spec, size)
    folders = []
    for index, network in enumerate(spec.networks):
        folder = _folder(spec, network, Path(weights_dir))
        plans = _plans(spec, network, arch)
        dataset = _dataset_json(spec, network)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "plans.json").write_text(json.dumps(plans, indent=2))
        (folder / "dataset.json").write_text(json.dumps(dataset, indent=2))
        for fold_index, fold in enumerate(ENSEMBLE_FOLDS if spec.ensemble_folds else (spec.fold,)):
            weights = _random_weights(spec, plans, dataset, seed + index + 100 * fold_index)
            (folder / f"fold_{fold}").mkdir(exist_ok=True)
            torch.save(_checkpoint(spec, plans, dataset, weights), folder / f"fold_{fold}" / spec.checkpoint)
        folders.append(folder)
    return folders


def _folder(spec: ModelSpec, network: NetworkSpec, weights_dir: Path) -> Path:
    if not network.is_pattern and not spec.model_folder_patterns:
        return network_folder(spec, network, weights_dir)
    dataset = f"{network.unpacked_name}_cohort_test" if network.is_pattern else network.dataset
    if spec.model_folder_patterns and not fnmatch.fnmatch(spec.model_folder_name, spec.model_folder_patterns[0]):
        raise ValueError(f"{spec.model_folder_name} does not match {spec.model_folder_patterns[0]}: "
                         "set trainer/plans/configuration so that it does")
    return weights_dir / dataset / spec.model_folder_name


def _dataset_json(spec: ModelSpec, network: NetworkSpec) -> dict:
    labels = {"background": 0} | {name: label for label, name in sorted(network_classes(network).items())}
    dataset = {"channel_names": {"0": spec.modality}, "labels": labels, "numTraining": 1, "file_ending": ".nii.gz"}
    if spec.preprocess.orientation == "dataset_json":
        dataset["orientation"] = TEST_ORIENTATION
    return dataset


def _plans(spec: ModelSpec, network: NetworkSpec, arch: Architecture) -> dict:
    stages = len(arch.strides)
    image_spacing_zyx = list(reversed(spec.spacing_mm or PLANS_SPACING_MM))
    forward, backward = _transposes(image_spacing_zyx)
    spacing_zyx = [image_spacing_zyx[axis] for axis in forward]  # as plans hold it: transposed
    configuration = {
        "data_identifier": f"{spec.plans}_{spec.configuration}", "preprocessor_name": "DefaultPreprocessor",
        "batch_size": 2, "patch_size": list(arch.patch_size), "median_image_size_in_voxels": list(arch.patch_size),
        "spacing": spacing_zyx,
        "normalization_schemes": ["CTNormalization" if spec.is_ct else "ZScoreNormalization"], "use_mask_for_norm": [False],
        "UNet_class_name": "PlainConvUNet", "UNet_base_num_features": arch.base_features,
        "unet_max_num_features": arch.max_features,
        "n_conv_per_stage_encoder": [2] * stages, "n_conv_per_stage_decoder": [2] * (stages - 1),
        "num_pool_per_axis": [sum(s[axis] == 2 for s in arch.strides) for axis in range(3)],
        "pool_op_kernel_sizes": [list(s) for s in arch.strides], "conv_kernel_sizes": [[3, 3, 3]] * stages,
        "resampling_fn_data": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
        "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None},
        "batch_dice": False,
    }
    intensity = {"max": 3071.0, "mean": 80.0, "median": 60.0, "min": -1024.0,
                 "percentile_00_5": -1000.0, "percentile_99_5": 1500.0, "std": 250.0}
    return {
        "dataset_name": network.dataset, "plans_name": spec.plans,
        "original_median_spacing_after_transp": spacing_zyx,
        "original_median_shape_after_transp": list(arch.patch_size),
        "image_reader_writer": "NibabelIOWithReorient", "transpose_forward": forward,
        "transpose_backward": backward, "configurations": {spec.configuration: configuration},
        "experiment_planner_used": "ExperimentPlanner", "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {"0": intensity},
    }


def _transposes(spacing_zyx: list[float]) -> tuple[list[int], list[int]]:
    """nnU-Net's planner's ``transpose_forward`` (the coarsest axis first, the others in order; the
    identity for an isotropic spacing) and its inverse ``transpose_backward``."""
    coarsest = max(range(3), key=lambda axis: (spacing_zyx[axis], -axis))
    forward = [coarsest] + [axis for axis in range(3) if axis != coarsest]
    return forward, [forward.index(axis) for axis in range(3)]


def _random_weights(spec: ModelSpec, plans: dict, dataset: dict, seed: int) -> dict:
    """He-initialised weights of the network nnU-Net itself builds from these plans."""
    manager, configuration = plans_manager(copy.deepcopy(plans), spec.configuration)
    heads = manager.get_label_manager(dataset).num_segmentation_heads
    trainer = find_trainer_class(spec.trainer)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        network = trainer.build_network_architecture(manager, configuration, 1, heads, enable_deep_supervision=True)
    return network.state_dict()


def _checkpoint(spec: ModelSpec, plans: dict, dataset: dict, weights: dict) -> dict:
    return {
        "network_weights": weights, "optimizer_state": None, "grad_scaler_state": None,
        "logging": {}, "_best_ema": None, "current_epoch": 0, "trainer_name": spec.trainer,
        "inference_allowed_mirroring_axes": None,
        "init_args": {"plans": plans, "configuration": spec.configuration, "fold": spec.fold,
                      "dataset_json": dataset, "device": "cpu"},
    }
