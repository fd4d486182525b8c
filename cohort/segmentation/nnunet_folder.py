"""Read one nnU-Net results folder into the objects nnU-Net's predictor is initialised with.

This does what ``nnUNetPredictor.initialize_from_trained_model_folder`` does (plans, dataset,
checkpoint, network built by the checkpoint's trainer class) with one difference: nnU-Net finds
the trainer by importing every trainer module in turn and fails as soon as one optional module
cannot import (its Primus trainers import ``timm``, which imports ``torchvision``; a PyPI
torchvision beside a CPU torch wheel raises at import). Here such modules are skipped.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
import warnings
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedFolder:
    """What ``nnUNetPredictor.manual_initialization`` takes, read from one model folder."""

    network: torch.nn.Module
    plans_manager: Any
    configuration_manager: Any
    parameters: list[dict]
    dataset_json: dict
    trainer_name: str
    mirroring_axes: tuple[int, ...] | None


@cache
def find_trainer_class(name: str) -> type:
    """The nnU-Net trainer class called ``name``, skipping trainer modules that fail to import."""
    import nnunetv2.training.nnUNetTrainer as root

    for info in pkgutil.walk_packages(root.__path__, root.__name__ + ".", onerror=lambda _: None):
        try:
            module = importlib.import_module(info.name)
        except Exception as exc:  # noqa: BLE001 - optional trainers with broken extra dependencies: skip, say why in debug
            log.debug("skipping nnU-Net module %s: %s", info.name, exc)
            continue
        found = getattr(module, name, None)
        if isinstance(found, type):
            return found
    raise LookupError(f"nnU-Net {importlib.import_module('nnunetv2').__version__} has no trainer class {name!r}")


def plans_manager(plans: dict, configuration: str) -> tuple[Any, Any]:
    """nnU-Net's PlansManager and ConfigurationManager (old-format plans converted quietly)."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected old nnU-Net plans format")
        manager = PlansManager(plans)
        return manager, manager.get_configuration(configuration)


def load_folder(folder: Path, folds: list[int], checkpoint_name: str) -> LoadedFolder:
    """Load plans, dataset and the checkpoints of ``folds`` and build the network with the first
    fold's weights; nnU-Net's predictor averages the logits of every fold's weights (ensemble)."""
    import json

    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels

    dataset_json = json.loads((folder / "dataset.json").read_text())
    plans = json.loads((folder / "plans.json").read_text())
    checkpoints = [torch.load(folder / f"fold_{fold}" / checkpoint_name, map_location="cpu", weights_only=False)
                   for fold in folds]
    checkpoint = checkpoints[0]
    manager, configuration = plans_manager(plans, checkpoint["init_args"]["configuration"])
    trainer = find_trainer_class(checkpoint["trainer_name"])
    inputs = determine_num_input_channels(manager, configuration, dataset_json)
    heads = manager.get_label_manager(dataset_json).num_segmentation_heads
    network = trainer.build_network_architecture(manager, configuration, inputs, heads,
                                                 enable_deep_supervision=False)
    network.load_state_dict(checkpoint["network_weights"])
    return LoadedFolder(network, manager, configuration, [c["network_weights"] for c in checkpoints], dataset_json,
                        checkpoint["trainer_name"], checkpoint.get("inference_allowed_mirroring_axes"))
