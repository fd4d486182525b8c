"""Configuration as data: YAML and CSV files in ``configs/`` loaded into frozen dataclasses.

Every file is validated once, when it is loaded: unknown keys, missing keys and wrong types
raise :class:`~cohort.errors.ConfigError` naming the file and the key, before any series runs.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import yaml

from cohort.errors import ConfigError

CONFIG_DIR = Path(__file__).parent / "configs"
DEFAULT_CONFIG = CONFIG_DIR / "default.yaml"
T = TypeVar("T")
# A structure name becomes a file name (results/qc/<series_id>/<structure>.png) and page text: TotalSegmentator's
# own names (snake_case) pass; a path separator or markup would leave qc/ or run as HTML.
STRUCTURE_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
YAML11_EXPONENT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


@dataclass(frozen=True)
class MeasureConfig:
    """How structures are measured and judged. ``class_map`` and ``lower_bounds`` unset (None): the
    run's model's own (its model file's ``class_map`` and ``lower_bounds``)."""

    class_map: str | None = None
    lower_bounds: str | None = None
    border_voxels: int = 3
    fov_edge: str = "faces_and_padding"


FOV_EDGES = ("faces", "faces_and_padding")  # measure.fov_edge: where a structure counts as cut off (fov_truncated)


AUTO = "auto"  # execution.prefetch and execution.network_passes: decided per worker (cohort.segmentation.passes)
PRECISIONS = ("fp16", "bf16", "fp32")  # execution.precision: the GPU forward pass (cohort.segmentation.device)


@dataclass(frozen=True)
class ExecutionConfig:
    """How the manifest is cut into batches and how failures are retried."""

    batch_size: int = 50
    max_in_flight_per_worker: int = 4
    retries: int = 1
    series_timeout_s: float = 3600.0
    flush_interval_s: float = 60.0
    slurm_config: str = "slurm.yaml"
    min_free_gb: float = 1.0
    prefetch: int | str = AUTO
    network_passes: int | str = AUTO
    gpu_prefetch: int = 3
    workers_per_gpu: int = 1
    threads_per_worker: int | None = None
    worker_memory_gb: float | None = None
    precision: str = "fp16"
    channels_last: bool = False
    reuse_freed_memory: bool = True
    load_model_at_start: bool = True


@dataclass(frozen=True)
class IngestConfig:
    """Limits checked on an input's header before any voxel is read, so that a truncated or
    hostile header fails its series instead of exhausting a worker's memory."""

    max_voxels: int = 1_500_000_000


@dataclass(frozen=True)
class RunConfig:
    measure: MeasureConfig = field(default_factory=MeasureConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    execution: ExecutionConfig = field(default_factory=ExecutionConfig)
    source: str = str(DEFAULT_CONFIG)


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key given twice in one mapping is an error: YAML says
    keys are unique, and PyYAML would silently keep the later value (a ``batch_size`` edited
    near the top of a file whose old line further down still wins)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        lines: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, typing.Hashable):
                continue  # PyYAML's own constructor refuses it
            if key in lines:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice in one mapping (first on line {lines[key]})",
                    key_node.start_mark)
            lines[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)


def load_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML mapping, with errors that name the file."""
    try:
        data = yaml.load(config_text(path), Loader=_UniqueKeyLoader)  # noqa: S506 (a safe loader)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except OSError as exc:  # a folder, no permission
        raise ConfigError(f"{path}: cannot read the config file ({exc.strerror or exc})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of keys to values")
    return data


def from_mapping(cls: type[T], data: Any, source: Path | str, prefix: str = "") -> T:
    """Build dataclass ``cls`` from ``data``, checking keys and value types recursively."""
    where = prefix.rstrip(".") or "top level"
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: key '{where}' must be a mapping")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init and f.name != "source"}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{source}: unknown key '{prefix}{unknown[0]}' (known: {', '.join(fields)})")
    values = {}
    for name, value in data.items():
        values[name] = _coerce(hints[name], value, source, f"{prefix}{name}")
    missing = [n for n, f in fields.items() if n not in values and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"{source}: required key '{prefix}{missing[0]}' is missing")
    return cls(**values)


def _coerce(hint: Any, value: Any, source: Path | str, key: str) -> Any:
    if dataclasses.is_dataclass(hint):
        return from_mapping(hint, value, source, key + ".")
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [o for o in typing.get_args(hint) if o is not type(None)]
        if value is None and len(options) < len(typing.get_args(hint)):
            return None
        if len(options) > 1:  # a number or a word (``prefetch: auto``): the first that fits
            for option in options:
                try:
                    return _coerce(option, value, source, key)
                except ConfigError:
                    continue
            names = " or ".join(getattr(o, "__name__", str(o)) for o in options)
            raise ConfigError(f"{source}: key '{key}' must be {names}, got {value!r}")
        hint = options[0]
        if dataclasses.is_dataclass(hint):
            return from_mapping(hint, value, source, key + ".")
        origin = typing.get_origin(hint)
    if origin in (list, tuple):
        if not isinstance(value, list):
            raise ConfigError(f"{source}: key '{key}' must be a list")
        (item,) = typing.get_args(hint)[:1]
        items = [_coerce(item, v, source, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: key '{key}' must be a mapping")
        return dict(value)
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str) and YAML11_EXPONENT.match(value):
        return float(value)  # 1e-3: a number in YAML 1.2 and JSON, a string to PyYAML (YAML 1.1 wants 1.0e-3)
    if hint is Any or (isinstance(hint, type) and isinstance(value, hint) and not
                       (hint is int and isinstance(value, bool))):
        return value
    raise ConfigError(f"{source}: key '{key}' must be {getattr(hint, '__name__', hint)}, got {value!r}")


def load_run_config(path: Path | None = None) -> RunConfig:
    """Load ``path`` (or the shipped ``configs/default.yaml``) and validate it."""
    source = Path(path) if path else DEFAULT_CONFIG
    config = from_mapping(RunConfig, load_yaml(source), source)
    _check_positive(config, source)
    words = [(f"execution.{key}", getattr(config.execution, key), (AUTO,)) for key in ("prefetch", "network_passes")
             if isinstance(getattr(config.execution, key), str)]
    for key, value, allowed in (("execution.precision", config.execution.precision, PRECISIONS),
                                ("measure.fov_edge", config.measure.fov_edge, FOV_EDGES), *words):
        if value not in allowed:
            raise ConfigError(f"{source}: key '{key}' must be one of {', '.join(allowed)}, got {value!r}")
    measure = dataclasses.replace(config.measure, **{key: _named_file(getattr(config.measure, key), source, f"measure.{key}")
                                                     for key in ("class_map", "lower_bounds")})
    execution = dataclasses.replace(config.execution, slurm_config=_named_file(config.execution.slurm_config, source,
                                                                               "execution.slurm_config"))
    return dataclasses.replace(config, measure=measure, execution=execution, source=str(source))


def _named_file(name: str | None, source: Path, key: str) -> str | None:
    """A file named by a config: an absolute path, or a relative one found beside the config
    file, in the working folder, or among the shipped ``configs/`` (in that order; the shipped
    name is kept as it is). A name found nowhere stops the run here, naming the file and key."""
    if name is None:
        return None
    if Path(name).is_absolute():
        places, looked = [Path(name)], "there"
    else:
        places, looked = [source.parent / name, Path.cwd() / name], f"beside {source}, in {Path.cwd()} and in cohort's configs/"
    for place in places:
        if place.is_file():
            return str(place.absolute())
    if not Path(name).is_absolute() and (CONFIG_DIR / name).is_file():
        return name
    raise ConfigError(f"{source}: key '{key}': file {name!r} not found (looked {looked})")


ZERO_ALLOWED = ("retries", "border_voxels", "prefetch", "gpu_prefetch")


def _check_positive(config: RunConfig, source: Path) -> None:
    for section in ("measure", "ingest", "execution"):
        for f in dataclasses.fields(getattr(config, section)):
            value = getattr(getattr(config, section), f.name)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and \
                    not (math.isfinite(value) and value >= (0 if f.name in ZERO_ALLOWED else 1e-9)):
                lowest = ">= 0" if f.name in ZERO_ALLOWED else "positive"
                lowest += "" if math.isfinite(value) else " and finite"
                raise ConfigError(f"{source}: key '{section}.{f.name}' must be {lowest}, got {value!r}")


def config_file(name: str) -> Path:
    """A file of the shipped ``configs/`` folder, or ``name`` itself when it is a path."""
    candidate = Path(name)
    return candidate if candidate.is_absolute() or candidate.exists() else CONFIG_DIR / name


@dataclass(frozen=True)
class ClassMap:
    """Label id -> structure name of one model's label maps (TotalSegmentator v2 names)."""

    names: dict[int, str]
    source: str

    @property
    def n_labels(self) -> int:
        """Size of per-label arrays: the largest id plus one (for background)."""
        return max(self.names) + 1


def load_class_map(name: str) -> ClassMap:
    path = config_file(name)
    rows = _read_csv(path, ("label", "structure"))
    names: dict[int, str] = {}
    for line, row in rows:
        label = _parse_number(row["label"], int, path, line, "label")
        if label < 1 or label in names:
            raise ConfigError(f"{path}: line {line}: key 'label' {label} must be a unique id >= 1")
        if not STRUCTURE_PATTERN.match(row["structure"]):
            raise ConfigError(f"{path}: line {line}: key 'structure' {row['structure']!r} must start with a letter "
                              "or digit and hold only letters, digits, '.', '_' and '-' (it names files in qc/)")
        names[label] = row["structure"]
    if not names:
        raise ConfigError(f"{path}: no classes")
    return ClassMap(names=names, source=str(path))


def load_lower_bounds(name: str, class_map: ClassMap) -> np.ndarray:
    """Lower-bound volume (ml) per label id of ``class_map``; NaN where none is given."""
    path = config_file(name)
    by_name = {v: k for k, v in class_map.names.items()}
    bounds = np.full(class_map.n_labels, np.nan)
    seen: dict[str, int] = {}
    for line, row in _read_csv(path, ("structure", "lower_bound_ml")):
        structure = row["structure"]
        if structure not in by_name:
            raise ConfigError(f"{path}: line {line}: key 'structure' {structure!r} is not in {class_map.source}")
        if structure in seen:  # the later row would silently win
            raise ConfigError(f"{path}: line {line}: structure {structure!r} already has a row (line {seen[structure]})")
        seen[structure] = line
        if row["lower_bound_ml"]:
            bound = _parse_number(row["lower_bound_ml"], float, path, line, "lower_bound_ml")
            if not (math.isfinite(bound) and bound >= 0):
                raise ConfigError(f"{path}: line {line}: key 'lower_bound_ml' must be a finite volume >= 0 ml "
                                  f"(empty: no bound), got {row['lower_bound_ml']!r}")
            bounds[by_name[structure]] = bound
    return bounds


def _read_csv(path: Path, required: tuple[str, ...]) -> list[tuple[int, dict[str, str]]]:
    if not path.is_file():
        raise ConfigError(f"{path}: file not found")
    reader = csv.DictReader(io.StringIO(config_text(path), newline=""))
    for column in required:
        if column not in (reader.fieldnames or []):
            raise ConfigError(f"{path}: line 1: required column '{column}' is missing")
    rows = []
    for line, row in enumerate(reader, start=2):
        if None in row:  # DictReader keeps the values beyond the header under the key None
            n_columns = len(reader.fieldnames)
            raise ConfigError(f"{path}: line {line}: row has {n_columns + len(row[None])} values but the header "
                              f"names {n_columns} columns (a value with an unquoted comma?)")
        rows.append((line, {k: (v or "").strip() for k, v in row.items()}))
    return rows


def config_text(path: Path) -> str:
    """A config file's text: UTF-8, with or without the byte-order mark Excel writes; else a
    ConfigError naming the file and line."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise ConfigError(f"{path}: line {line}: the file is not UTF-8 (byte 0x{data[error.start]:02x}); "
                          "save it as UTF-8") from None


def _parse_number(text: str, kind: type, path: Path, line: int, key: str) -> Any:
    try:
        return kind(text)
    except ValueError:
        raise ConfigError(f"{path}: line {line}: key '{key}' value {text!r} is not a number") from None
