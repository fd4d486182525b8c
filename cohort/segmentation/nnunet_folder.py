"""Read one nnU-Net results folder into the objects nnU-Net's predictor is initialised with.

This does what ``nnUNetPredictor.initialize_from_trained_model_folder`` does (plans, dataset,
checkpoint, network built by the checkpoint's trainer class) with two differences. nnU-Net finds
the trainer by importing every trainer module in turn and fails as soon as one optional module
cannot import (its Primus trainers import ``timm``, which imports ``torchvision``; a PyPI
torchvision beside a CPU torch wheel raises at import); here such modules are skipped. And a
trainer that builds its network as the base trainer does is read from its source, not imported
(:func:`build_network`), which keeps nnU-Net's training stack out of every worker.
"""

from __future__ import annotations

import ast
import importlib
import logging
import pkgutil
import re
import warnings
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Iterator

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
    """The nnU-Net trainer class called ``name``, skipping trainer modules that fail to import.

    The modules whose source defines ``class <name>`` are imported first: importing every trainer
    module in turn until one has it took 2.7-3.8 s of a worker's first model load on the 2-core
    machine. A class made some other way is still found by the full walk.
    """
    import nnunetv2.training.nnUNetTrainer as root

    for module_name in (*_modules_defining(root, name), *_all_modules(root)):
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:  # noqa: BLE001 - optional trainers with broken extra dependencies: skip, say why in debug
            log.debug("skipping nnU-Net module %s: %s", module_name, exc)
            continue
        found = getattr(module, name, None)
        if isinstance(found, type):
            return found
    raise LookupError(f"nnU-Net {importlib.import_module('nnunetv2').__version__} has no trainer class {name!r}")


BASE_TRAINER = "nnUNetTrainer"


def build_network(trainer_name: str, manager: Any, configuration: Any, inputs: int, heads: int) -> torch.nn.Module:
    """The inference network of a folder trained by ``trainer_name`` (no deep supervision).

    A trainer that builds its network as nnU-Net's base trainer does (TotalSegmentator's all do)
    gets it from nnU-Net's ``get_network_from_plans`` directly, with the base trainer's arguments:
    importing the trainer module would import nnU-Net's whole training stack (plotting, data
    loading, evaluation: about 2 s of a new worker's first model load on the 2-core machine)
    for one static method. A trainer with its own ``build_network_architecture`` is imported.
    """
    if builds_network_as_base_trainer(trainer_name):
        from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

        return get_network_from_plans(configuration.network_arch_class_name, configuration.network_arch_init_kwargs,
                                      configuration.network_arch_init_kwargs_req_import, inputs, heads,
                                      allow_init=True, deep_supervision=False)
    return find_trainer_class(trainer_name).build_network_architecture(manager, configuration, inputs, heads,
                                                                       enable_deep_supervision=False)


@cache
def builds_network_as_base_trainer(name: str) -> bool:
    """Whether trainer ``name`` and every trainer it derives from, read from nnU-Net's sources
    without importing them, leave ``build_network_architecture`` to the base trainer. False
    whenever that cannot be read for certain (a class defined twice, a base from elsewhere)."""
    import nnunetv2.training.nnUNetTrainer as root

    if name == BASE_TRAINER:
        return True
    definitions = [node for module in _modules_defining(root, name) for node in _class_definitions(root, module, name)]
    if len(definitions) != 1:
        return False
    definition = definitions[0]
    if any(isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == "build_network_architecture"
           for node in definition.body):
        return False
    bases = [base.id for base in definition.bases if isinstance(base, ast.Name)]
    return len(bases) == len(definition.bases) == 1 and builds_network_as_base_trainer(bases[0])


def _class_definitions(package, module: str, name: str) -> list[ast.ClassDef]:
    relative = module[len(package.__name__) + 1:].replace(".", "/")
    for folder in package.__path__:
        for path in (Path(folder) / f"{relative}.py", Path(folder) / relative / "__init__.py"):
            if path.is_file():
                tree = ast.parse(path.read_text(errors="replace"))
                return [node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == name]
    return []


def _modules_defining(package, name: str) -> list[str]:
    """Modules of ``package`` whose source has a line ``class <name>(`` or ``class <name>:``."""
    pattern = re.compile(rf"^class {re.escape(name)}\s*[(:]", re.MULTILINE)
    modules = []
    for folder in package.__path__:
        for path in sorted(Path(folder).rglob("*.py")):
            if pattern.search(path.read_text(errors="replace")):
                parts = path.relative_to(folder).with_suffix("").parts
                parts = parts[:-1] if parts[-1] == "__init__" else parts
                modules.append(".".join((package.__name__, *parts)))
    return modules


def _all_modules(package) -> Iterator[str]:
    for info in pkgutil.walk_packages(package.__path__, package.__name__ + ".", onerror=lambda _: None):
        yield info.name


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
    inputs = determine_num_input_channels(manager, configuration, dataset_json)
    heads = manager.get_label_manager(dataset_json).num_segmentation_heads
    network = build_network(checkpoint["trainer_name"], manager, configuration, inputs, heads)
    parameters = [c["network_weights"] for c in checkpoints]
    load_every_fold(network, folder, folds, checkpoint_name, parameters)
    return LoadedFolder(network, manager, configuration, parameters, dataset_json,
                        checkpoint["trainer_name"], checkpoint.get("inference_allowed_mirroring_axes"))


def load_every_fold(network: torch.nn.Module, folder: Path, folds: list[int], checkpoint_name: str,
                    parameters: list[dict]) -> None:
    """Load each fold's weights into ``network``, the first fold's last (the network keeps them);
    raise ``ValueError`` naming a fold whose weights do not fit.

    The predictor loads the other folds' weights only during a series' forward pass: a fold
    of another network (other classes or channels) would pass the load and fail every series."""
    for fold, weights in reversed(list(zip(folds, parameters))):
        try:
            network.load_state_dict(weights)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[1:2] or [str(exc)]
            raise ValueError(f"{folder / f'fold_{fold}' / checkpoint_name} does not fit the network of "
                             f"{folder.name} ({first[0].strip()})") from None
