"""The model registry: one YAML file per nnU-Net model in ``configs/models/``.

A model is data, not code: its network folders, trainer, plans, spacing, class map and the
order in which part networks are merged. ``fast`` and ``full`` are two entries; another
nnU-Net model is added by writing a file (see ``docs/models.md``). Every file is validated
when it is loaded, so a typo stops the run before any series is touched.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import re
from dataclasses import dataclass, field
from pathlib import Path

from cohort.config import (CONFIG_DIR, ClassMap, config_file, config_text, from_mapping, load_class_map,
                           load_lower_bounds, load_yaml)
from cohort.errors import ConfigError
from cohort.provenance import digest, file_digest

MODELS_DIR = CONFIG_DIR / "models"
DATASET_PATTERN = re.compile(r"^Dataset\d{3}(_[A-Za-z0-9_.-]+|[A-Za-z0-9_.-]*\*)$")
SHA256_PATTERN = re.compile(r"^[0-9a-fA-F]{64}$")
ENVIRONMENT_VARIABLE_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
MODALITIES = ("CT", "MR")
ORIENTATIONS = ("RAS", "dataset_json")
IMAGE_DTYPES = ("int32", "float32")


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
    sha256: str | None = None

    @property
    def dataset_id(self) -> str:
        """The dataset number as 3 digits (``Dataset100…`` -> ``100``), for release archive names."""
        return self.dataset[len("Dataset"):len("Dataset") + 3]

    @property
    def is_pattern(self) -> bool:
        """True when ``dataset`` is a glob (``Dataset100*``): the folder name a release unpacks to varies."""
        return "*" in self.dataset

    @property
    def unpacked_name(self) -> str:
        """The dataset folder an archive holding only its content is unpacked into: ``dataset``, or
        for a pattern ``Dataset<id>`` (VIBESegmentator's code unpacks ``100.zip`` into ``Dataset100/``)."""
        return f"Dataset{self.dataset_id}" if self.is_pattern else self.dataset


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
class PreprocessSpec:
    """How the image is prepared for the network (TotalSegmentator's steps are the defaults).

    ``orientation``: ``RAS`` (closest canonical, no interpolation) or ``dataset_json`` (the axis
    codes in the network's ``dataset.json["orientation"]`` when that key exists, else RAS, as
    VIBESegmentator does). ``resample_order``: 1 linear, 0 nearest neighbour, 3 cubic spline
    (VIBESegmentator's images; on the CPU, also in a GPU worker). ``image_dtype``:
    ``int32`` (TotalSegmentator casts the resampled image) or ``float32``. ``rescale_above``: when
    the image maximum exceeds it, the image is scaled so that its maximum is ``rescale_max``
    (VIBESegmentator: 10,000 -> 1,000, so that MR values fit float16).
    """

    orientation: str = "RAS"
    resample_order: int = 1
    image_dtype: str = "int32"
    rescale_above: float | None = None
    rescale_max: float = 1000.0


@dataclass(frozen=True)
class PostprocessSpec:
    """Clean-up of the label map on the input's grid, as data (VIBESegmentator's paper step).

    Connected components (26-connectivity) smaller than ``min_component_ml`` are removed from
    every class (``min_component_ml_by_class`` overrides it per structure); the structures in
    ``largest_component_only`` keep only their largest component (compact organs). Removed
    voxels become background. All off by default.
    """

    min_component_ml: float = 0.0
    min_component_ml_by_class: dict[str, float] = field(default_factory=dict)
    largest_component_only: tuple[str, ...] = ()

    @property
    def active(self) -> bool:
        return self.min_component_ml > 0 or bool(self.min_component_ml_by_class) or bool(self.largest_component_only)


@dataclass(frozen=True)
class BodyCropSpec:
    """Optional first pass for CT models: crop to the body before the main network.

    The body is the connected components of voxels above ``threshold_hu`` of at least 10 ml (and
    the largest one); the image is cut to their bounding box plus ``margin_mm`` and the label map pasted back (outside: background).
    See docs/models.md for why a threshold and not TotalSegmentator's ``body`` network.
    """

    enabled: bool = False
    threshold_hu: float = -500.0
    margin_mm: float = 20.0


@dataclass(frozen=True)
class ModelSpec:
    """A validated model entry; see ``configs/models/fast.yaml`` for every key explained."""

    name: str
    description: str
    modality: str
    class_map: str
    spacing_mm: tuple[float, ...] | None
    trainer: str
    networks: tuple[NetworkSpec, ...]
    get_weights: tuple[str, ...] = ()
    weights_url: str | None = None
    weights_env: str | None = None
    lower_bounds: str | None = None
    model_folder_patterns: tuple[str, ...] = ()
    ensemble_folds: bool = False
    plans: str = "nnUNetPlans"
    configuration: str = "3d_fullres"
    fold: int = 0
    checkpoint: str = "checkpoint_final.pth"
    fallback_checkpoint: str | None = None
    tile_step_size: float = 0.8
    use_gaussian: bool = True
    use_mirroring: bool = False
    chunking: ChunkSpec = field(default_factory=ChunkSpec)
    preprocess: PreprocessSpec = field(default_factory=PreprocessSpec)
    postprocess: PostprocessSpec = field(default_factory=PostprocessSpec)
    body_crop: BodyCropSpec = field(default_factory=BodyCropSpec)
    worker_memory_gb: float | None = None
    worker_threads: int = 1
    source: str = ""

    @property
    def model_folder_name(self) -> str:
        """The nnU-Net results sub-folder of every network: ``<trainer>__<plans>__<configuration>``."""
        return f"{self.trainer}__{self.plans}__{self.configuration}"

    @property
    def is_ct(self) -> bool:
        return self.modality == "CT"


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
    spec = _files_beside(from_mapping(ModelSpec, load_yaml(path), path), path.parent)
    spec = dataclasses.replace(spec, source=str(path))
    _validate(spec, path)
    return spec


def _files_beside(spec: ModelSpec, folder: Path) -> ModelSpec:
    """A model file outside ``configs/models/`` may keep its CSVs beside it: names found there
    become paths (otherwise they are files of ``configs/``)."""
    if folder.resolve() == MODELS_DIR.resolve():
        return spec

    def beside(name: str | None) -> str | None:
        return str(folder / name) if name is not None and (folder / name).is_file() else name

    networks = tuple(dataclasses.replace(n, classes=beside(n.classes)) for n in spec.networks)
    return dataclasses.replace(spec, class_map=beside(spec.class_map), lower_bounds=beside(spec.lower_bounds),
                               networks=networks)


def _validate(spec: ModelSpec, path: Path) -> None:
    pre, post = spec.preprocess, spec.postprocess
    checks = [
        (spec.name == path.stem, "name", f"must equal the file name {path.stem!r}"),
        (spec.modality in MODALITIES, "modality", f"must be one of {', '.join(MODALITIES)}"),
        (spec.spacing_mm is None or (len(spec.spacing_mm) == 3 and min(spec.spacing_mm) > 0), "spacing_mm",
         "must be 3 positive numbers (x, y, z), or null to take the spacing from plans.json"),
        (len(spec.networks) > 0, "networks", "must list at least one network"),
        (0 < spec.tile_step_size <= 1, "tile_step_size", "must lie in (0, 1]"),
        (spec.fold >= 0, "fold", "must be >= 0"),
        (spec.chunking.max_voxels > 0, "chunking.max_voxels", "must be positive"),
        (spec.chunking.overlap_mm >= 0, "chunking.overlap_mm", "must be >= 0"),
        (spec.worker_memory_gb is None or spec.worker_memory_gb > 0, "worker_memory_gb",
         "must be positive (GB), or null"),
        (spec.worker_threads >= 1, "worker_threads", "must be at least 1"),
        (spec.weights_env is None or bool(ENVIRONMENT_VARIABLE_PATTERN.match(spec.weights_env)), "weights_env",
         "must be the name of an environment variable (letters, digits, underscores), or null"),
        (bool(spec.get_weights) or spec.weights_url is not None, "weights_url",
         "or get_weights must say where the weights come from"),
        (pre.orientation in ORIENTATIONS, "preprocess.orientation", f"must be one of {', '.join(ORIENTATIONS)}"),
        (pre.resample_order in (0, 1, 3), "preprocess.resample_order",
         "must be 0 (nearest), 1 (linear) or 3 (cubic spline)"),
        (pre.image_dtype in IMAGE_DTYPES, "preprocess.image_dtype", f"must be one of {', '.join(IMAGE_DTYPES)}"),
        (pre.rescale_max > 0, "preprocess.rescale_max", "must be positive"),
        (post.min_component_ml >= 0 and all(isinstance(v, (int, float)) and v >= 0
                                            for v in post.min_component_ml_by_class.values()),
         "postprocess.min_component_ml", "values must be numbers >= 0 (ml)"),
        (spec.is_ct or not spec.body_crop.enabled, "body_crop.enabled", "is for CT models only (a threshold in HU)"),
        (spec.body_crop.margin_mm >= 0, "body_crop.margin_mm", "must be >= 0"),
    ]
    for ok, key, rule in checks:
        if not ok:
            raise ConfigError(f"{path}: key '{key}' {rule}")
    for i, network in enumerate(spec.networks):
        if not DATASET_PATTERN.match(network.dataset):
            raise ConfigError(f"{path}: key 'networks[{i}].dataset' {network.dataset!r} is not an nnU-Net "
                              "dataset folder name like Dataset297_Name (or a pattern like Dataset100*)")
        if network.sha256 is not None and not SHA256_PATTERN.match(network.sha256):
            raise ConfigError(f"{path}: key 'networks[{i}].sha256' must be 64 hexadecimal digits")
    files = [("class_map", spec.class_map), ("lower_bounds", spec.lower_bounds),
             *((f"networks[{i}].classes", network.classes) for i, network in enumerate(spec.networks))]
    for key, name in files:
        if name is not None and not config_file(name).is_file():
            raise ConfigError(f"{path}: key '{key}': file {name!r} not found (looked beside {path.name}, in the "
                              "working folder and in cohort's configs/)")
    model_classes = load_class_map(spec.class_map)
    structures = set(model_classes.names.values())
    for key, names in (("postprocess.min_component_ml_by_class", post.min_component_ml_by_class),
                       ("postprocess.largest_component_only", post.largest_component_only)):
        unknown = sorted(set(names) - structures)
        if unknown:
            raise ConfigError(f"{path}: key '{key}' names structures not in {spec.class_map}: {unknown[:5]}")
    if spec.lower_bounds is not None:
        load_lower_bounds(spec.lower_bounds, model_classes)
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
    rows = list(csv.DictReader(io.StringIO(config_text(path), newline="")))
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


SEGMENTATION_RULES = {"body_crop": 2, "chunked_normalisation": 2, "plans_spacing": 2}
"""Versions of how cohort segments where they changed label maps, in the key of the models they
apply to (other models keep their keys and label maps): ``body_crop`` 2 = every part of a body
split by air, not only the largest (CT models with ``body_crop.enabled``); ``chunked_normalisation``
2 = a z-chunked image is normalised whole, not chunk by chunk (MR models: a z-score per image);
``plans_spacing`` 2 = the spacing read from ``plans.json`` is put back on the image's axes with
``transpose_backward``, not read in nnU-Net's transposed order (models with ``spacing_mm: null``)."""


def model_config_digest(spec: ModelSpec) -> str:
    """Digest of what defines ``spec`` besides its weights: its YAML (pre- and post-processing, body
    crop included), class map and network class files, and the :data:`SEGMENTATION_RULES` that
    apply to it."""
    files = [spec.source, spec.class_map, *(network.classes for network in spec.networks)]
    applies = {"body_crop": spec.body_crop.enabled, "chunked_normalisation": not spec.is_ct,
               "plans_spacing": spec.spacing_mm is None}
    rules = {name: version for name, version in SEGMENTATION_RULES.items() if applies[name]}
    return digest([file_digest(config_file(name)) for name in files] + ([rules] if rules else []))
