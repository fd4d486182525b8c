"""The model registry: one YAML file per nnU-Net model in ``configs/models/``.

A model is data, not code: its network folders, trainer, plans, spacing, class map and the
order in which part networks are merged. ``fast`` and ``full`` are two entries; another
nnU-Net model is added by writing a file (see ``docs/models.md``). Every file is validated
when it is loaded, so a typo stops the run before any series is touched.
"""

from __future__ import annotations

import csv
import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path

from cohort.config import CONFIG_DIR, ClassMap, config_file, from_mapping, load_class_map, load_yaml
from cohort.errors import ConfigError
from cohort.provenance import digest, file_digest

MODELS_DIR = CONFIG_DIR / "models"
DATASET_PATTERN = re.compile(r"^Dataset\d{3}_[A-Za-z0-9_.-]+$")


@dataclass(frozen=True)
class NetworkSpec:
    """One nnU-Net network: its dataset folder and the classes its labels stand for.

    ``classes`` is a CSV in ``configs/``: ``label,structure`` for a network whose labels are the
    model's own, or ``part,dataset,part_label,structure`` (with ``part`` naming the rows) for a
    part network whose labels are mapped to the model's ids by structure name.
    """

    dataset: str
    classes: str
    part: str | None = None


@dataclass(frozen=True)
class ChunkSpec:
    """How long volumes are split along z so that memory stays bounded.

    A volume (on the model grid) above ``max_voxels`` is cut into z-chunks of at most
    ``max_voxels`` each, every chunk predicted with ``overlap_mm`` of context on both sides of
    the slab it keeps.
    """

    max_voxels: int = 40_000_000
    overlap_mm: float = 50.0


@dataclass(frozen=True)
class ModelSpec:
    """A validated model entry; see ``configs/models/fast.yaml`` for every key explained."""

    name: str
    description: str
    modality: str
    class_map: str
    spacing_mm: tuple[float, ...]
    trainer: str
    networks: tuple[NetworkSpec, ...]
    get_weights: tuple[str, ...]
    weights_url: str | None = None
    plans: str = "nnUNetPlans"
    configuration: str = "3d_fullres"
    fold: int = 0
    checkpoint: str = "checkpoint_final.pth"
    tile_step_size: float = 0.8
    use_gaussian: bool = True
    use_mirroring: bool = False
    chunking: ChunkSpec = field(default_factory=ChunkSpec)
    source: str = ""

    @property
    def model_folder_name(self) -> str:
        """The nnU-Net results sub-folder of every network: ``<trainer>__<plans>__<configuration>``."""
        return f"{self.trainer}__{self.plans}__{self.configuration}"


def known_models() -> list[str]:
    """Names of the models shipped in ``configs/models/``."""
    return sorted(p.stem for p in MODELS_DIR.glob("*.yaml"))


def load_model_spec(name: str) -> ModelSpec:
    """Load and validate ``configs/models/<name>.yaml`` (or a YAML path given as ``name``).

    >>> load_model_spec("fast").networks[0].dataset
    'Dataset297_TotalSegmentator_total_3mm_1559subj'
    """
    path = Path(name) if name.endswith((".yaml", ".yml")) else MODELS_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown model {name!r}: no file {path} (known models: {', '.join(known_models())})")
    spec = from_mapping(ModelSpec, load_yaml(path), path)
    spec = dataclasses.replace(spec, source=str(path))
    _validate(spec, path)
    return spec


def _validate(spec: ModelSpec, path: Path) -> None:
    checks = [
        (spec.name == path.stem, "name", f"must equal the file name {path.stem!r}"),
        (len(spec.spacing_mm) == 3 and min(spec.spacing_mm) > 0, "spacing_mm", "must be 3 positive numbers (x, y, z)"),
        (len(spec.networks) > 0, "networks", "must list at least one network"),
        (0 < spec.tile_step_size <= 1, "tile_step_size", "must lie in (0, 1]"),
        (spec.fold >= 0, "fold", "must be >= 0"),
        (spec.chunking.max_voxels > 0, "chunking.max_voxels", "must be positive"),
        (spec.chunking.overlap_mm >= 0, "chunking.overlap_mm", "must be >= 0"),
        (len(spec.get_weights) > 0, "get_weights", "must list the commands that fetch the weights"),
    ]
    for ok, key, rule in checks:
        if not ok:
            raise ConfigError(f"{path}: key '{key}' {rule}")
    for i, network in enumerate(spec.networks):
        if not DATASET_PATTERN.match(network.dataset):
            raise ConfigError(f"{path}: key 'networks[{i}].dataset' {network.dataset!r} is not an nnU-Net "
                              "dataset folder name like Dataset297_Name")
    model_classes = load_class_map(spec.class_map)
    for network in spec.networks:
        missing = sorted(set(network_classes(network).values()) - set(model_classes.names.values()))
        if missing:
            raise ConfigError(f"{path}: network {network.dataset} has classes not in {spec.class_map}: {missing[:5]}")


def network_classes(network: NetworkSpec) -> dict[int, str]:
    """Label id -> structure name of one network's own output (what its dataset.json must say)."""
    if network.part is None:
        return dict(load_class_map(network.classes).names)
    path = config_file(network.classes)
    if not path.is_file():
        raise ConfigError(f"{path}: class file of network {network.dataset} not found")
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    try:
        names = {int(row["part_label"]): row["structure"].strip() for row in rows if row["part"] == network.part}
    except (KeyError, ValueError):
        raise ConfigError(f"{path}: needs columns part, part_label (integer), structure") from None
    if not names:
        raise ConfigError(f"{path}: no rows with part {network.part!r}")
    return names


def model_class_map(spec: ModelSpec) -> ClassMap:
    """The model's output ids: the class map its label maps are written in."""
    return load_class_map(spec.class_map)


def model_config_digest(spec: ModelSpec) -> str:
    """Digest of what defines ``spec`` besides its weights: its YAML, class map and network class files."""
    files = [spec.source, spec.class_map, *(network.classes for network in spec.networks)]
    return digest([file_digest(config_file(name)) for name in files])
