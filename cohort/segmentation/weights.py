"""Find and verify nnU-Net weight folders the way TotalSegmentator lays them out.

The folder that holds the ``Dataset…`` folders is found as TotalSegmentator finds it, so one
download serves both tools. A folder is checked before any series runs: missing or broken
weights stop the run (exit 2) with the commands that fix it, not with a traceback from inside
nnU-Net.
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

from cohort.errors import RunCannotStart
from cohort.provenance import checkpoint_digest, digest, file_digest
from cohort.segmentation.registry import MODELS_DIR, ModelSpec, NetworkSpec, network_classes

SPACING_TOLERANCE_MM = 1e-3


def resolve_weights_dir(explicit: Path | None, spec: ModelSpec | None = None) -> Path:
    """``--weights``, else the model's own variable when it names one and it is set (VIBESegmentator's
    ``$TOTALVIBE_WEIGHTS_PATH``: ``weights_env`` in its YAML), else ``$TOTALSEG_WEIGHTS_PATH``, else
    ``$TOTALSEG_HOME_DIR/nnunet/results``, else ``~/.totalsegmentator/nnunet/results``
    (TotalSegmentator's own order), so weights the original tools downloaded are found where
    they put them."""
    if explicit is not None:
        return Path(explicit).expanduser()
    for variable in weights_variables(spec):
        if os.environ.get(variable):
            folder = Path(os.environ[variable]).expanduser()
            return folder / "nnunet" / "results" if variable == "TOTALSEG_HOME_DIR" else folder
    home = Path.home()
    base = Path("/tmp") if home == Path("/") else home
    return base / ".totalsegmentator" / "nnunet" / "results"


def weights_variables(spec: ModelSpec | None) -> tuple[str, ...]:
    """The environment variables read for ``spec``'s weights folder, in the order they are tried."""
    own = (spec.weights_env,) if spec is not None and spec.weights_env else ()
    return (*own, "TOTALSEG_WEIGHTS_PATH", "TOTALSEG_HOME_DIR")


def dataset_folder(network: NetworkSpec, weights_dir: Path) -> Path:
    """``<weights>/<dataset>``; for a pattern (``Dataset100*``) the first match by name, else the
    pattern itself (a path that does not exist, so the network reads as missing)."""
    if network.is_pattern:
        matches = sorted(p for p in weights_dir.glob(network.dataset) if p.is_dir())
        if matches:
            return matches[0]
    return weights_dir / network.dataset


def network_folder(spec: ModelSpec, network: NetworkSpec, weights_dir: Path) -> Path:
    """What nnU-Net loads: ``<dataset>/<trainer>__<plans>__<configuration>``, or the first folder
    matching ``model_folder_patterns`` in their order (VIBESegmentator's release layout)."""
    dataset = dataset_folder(network, weights_dir)
    for pattern in spec.model_folder_patterns:
        matches = sorted(p for p in dataset.glob(pattern) if p.is_dir()) if dataset.is_dir() else []
        if matches:
            return matches[0]
    if spec.model_folder_patterns:
        return dataset / spec.model_folder_patterns[0]
    return dataset / spec.model_folder_name


def model_folds(spec: ModelSpec, folder: Path) -> list[int]:
    """The folds to run: ``fold``, or with ``ensemble_folds`` every ``fold_N`` holding the checkpoint
    (or the fallback checkpoint)."""
    if not spec.ensemble_folds:
        return [spec.fold]
    names = [name for name in (spec.checkpoint, spec.fallback_checkpoint) if name is not None]
    found = [int(p.name[len("fold_"):]) for p in folder.glob("fold_*")
             if p.name[len("fold_"):].isdigit() and any((p / name).is_file() for name in names)]
    return sorted(found)


def folder_checkpoint(spec: ModelSpec, folder: Path) -> str:
    """The checkpoint file every fold of ``folder`` is read from: ``checkpoint``, unless a fold lacks
    it and the model names a ``fallback_checkpoint`` (VIBESegmentator's code loads
    ``checkpoint_best.pth`` when ``checkpoint_final.pth`` is missing): then that one, for every fold,
    as nnU-Net reads one name for all folds."""
    if spec.fallback_checkpoint is None:
        return spec.checkpoint
    folds = model_folds(spec, folder)
    if folds and all((folder / f"fold_{fold}" / spec.checkpoint).is_file() for fold in folds):
        return spec.checkpoint
    return spec.fallback_checkpoint


def checkpoint_path(spec: ModelSpec, network: NetworkSpec, weights_dir: Path) -> Path:
    """The checkpoint of fold ``spec.fold``."""
    folder = network_folder(spec, network, weights_dir)
    return folder / f"fold_{spec.fold}" / folder_checkpoint(spec, folder)


def checkpoint_paths(spec: ModelSpec, network: NetworkSpec, weights_dir: Path) -> list[Path]:
    folder = network_folder(spec, network, weights_dir)
    name = folder_checkpoint(spec, folder)
    return [folder / f"fold_{fold}" / name for fold in model_folds(spec, folder)]


PENDING_ARCHIVES = "other_downloads.json"
"""A release's list of further archives of one dataset folder (VIBESegmentator's: suffixes of the id,
``["_1"]`` -> ``100_1.zip``), unpacked into the same folder; removed once they are all there."""


def pending_archives(dataset: Path) -> list[str]:
    """The archive suffixes ``dataset``'s :data:`PENDING_ARCHIVES` still lists (none: []); ``ValueError``
    when the file is not a JSON list of strings."""
    path = dataset / PENDING_ARCHIVES
    if not path.is_file():
        return []
    listed = _read_json_value(path)
    if isinstance(listed, dict):
        listed = list(listed)
    if not isinstance(listed, list) or not all(isinstance(suffix, str) for suffix in listed):
        raise ValueError(f"{path} is not a JSON list of archive suffixes")
    return listed


@dataclass(frozen=True)
class NetworkStatus:
    """``state`` is ``present``, ``missing``, ``incomplete`` (its release lists archives not yet
    unpacked into it) or ``broken``; ``problem`` says what is wrong."""

    network: NetworkSpec
    state: str
    problem: str = ""


def network_status(spec: ModelSpec, network: NetworkSpec, weights_dir: Path) -> NetworkStatus:
    """Check one network folder without loading its weights (cheap: run before any work)."""
    if not dataset_folder(network, weights_dir).is_dir():
        return NetworkStatus(network, "missing")
    try:
        pending = pending_archives(dataset_folder(network, weights_dir))
    except ValueError as exc:
        return NetworkStatus(network, "broken", str(exc))
    if pending:
        return NetworkStatus(network, "incomplete", f"its release's further archives {pending} are not there yet "
                                                    f"({PENDING_ARCHIVES})")
    problem = _folder_problem(spec, network, network_folder(spec, network, weights_dir))
    return NetworkStatus(network, "broken" if problem else "present", problem)


def _folder_problem(spec: ModelSpec, network: NetworkSpec, folder: Path) -> str:
    if not folder.is_dir():
        found = sorted(p.name for p in folder.parent.iterdir())
        return f"no folder {folder.name} in {folder.parent} (found: {found or 'nothing'})"
    folds = model_folds(spec, folder)
    if not folds:
        names = " or ".join(name for name in (spec.checkpoint, spec.fallback_checkpoint) if name is not None)
        return f"no fold_N/{names} in {folder}"
    name = folder_checkpoint(spec, folder)
    for fold in folds:
        checkpoint = folder / f"fold_{fold}" / name
        if not checkpoint.is_file() or checkpoint.stat().st_size == 0:
            return f"no checkpoint {checkpoint}"
        problem = _checkpoint_problem(checkpoint)
        if problem:
            return problem
    plans = _read_json(folder / "plans.json")
    if isinstance(plans, str):
        return plans
    configuration = plans.get("configurations", {}).get(spec.configuration)
    if not isinstance(configuration, dict):
        return f"{folder / 'plans.json'} has no configuration {spec.configuration!r}"
    spacing = image_spacing_zyx(configuration.get("spacing"), plans.get("transpose_backward", [0, 1, 2]))
    problem = _spacing_problem(spec, spacing, folder / "plans.json")
    return problem or _classes_problem(network, folder / "dataset.json")


def _checkpoint_problem(path: Path) -> str:
    """Whether ``path`` is a whole PyTorch checkpoint, read from its zip directory only (cheap).

    ``torch.save`` writes a zip archive whose directory is at the end of the file: a copy or
    download cut short has none, and torch would fail on it only when a worker loads the model,
    after the run has started, once for every series."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError) as exc:
        return f"{path} is not a complete PyTorch checkpoint (truncated or corrupt: {exc})"
    if not any(name.endswith("/data.pkl") or name == "data.pkl" for name in names):
        return f"{path} is not a PyTorch checkpoint (no data.pkl in the archive)"
    return ""


def image_spacing_zyx(plans_spacing: object, transpose_backward: object) -> object:
    """A configuration's spacing in the image's own (z, y, x) axes, nnU-Net's array order before its
    ``transpose_forward``: plans hold it transposed (the coarsest axis first), and
    ``transpose_backward`` puts it back (as VIBESegmentator's code reads it). Anything malformed is
    returned as it is, for the caller to reject."""
    if not (isinstance(plans_spacing, list) and isinstance(transpose_backward, list)
            and sorted(transpose_backward) == list(range(len(plans_spacing)))):
        return plans_spacing
    return [plans_spacing[axis] for axis in transpose_backward]


def _spacing_problem(spec: ModelSpec, spacing_zyx: object, path: Path) -> str:
    if spec.spacing_mm is None:  # taken from plans.json: only its shape is checked
        ok = isinstance(spacing_zyx, list) and len(spacing_zyx) == 3 and all(float(a) > 0 for a in spacing_zyx)
        return "" if ok else f"{path} has no usable spacing ({spacing_zyx})"
    expected = list(reversed(spec.spacing_mm))
    if not isinstance(spacing_zyx, list) or len(spacing_zyx) != 3 or any(
            abs(float(a) - b) > SPACING_TOLERANCE_MM for a, b in zip(spacing_zyx, expected)):
        return f"{path} has spacing {spacing_zyx} (z, y, x); model {spec.name!r} expects {expected}"
    return ""


def _classes_problem(network: NetworkSpec, path: Path) -> str:
    dataset = _read_json(path)
    if isinstance(dataset, str):
        return dataset
    labels = dataset.get("labels")
    if not isinstance(labels, dict):
        return f"{path} has no 'labels' mapping"
    found = {int(v): k for k, v in labels.items() if isinstance(v, int) and v > 0}
    expected = network_classes(network)
    if found != expected:
        wrong = sorted(set(expected.items()) ^ set(found.items()))[:3]
        return f"{path} labels differ from {network.classes} ({len(found)} vs {len(expected)} classes; e.g. {wrong})"
    return ""


def _read_json(path: Path) -> dict | str:
    """The JSON mapping in ``path``, or a one-line problem."""
    data = _read_json_value(path)
    if isinstance(data, _Unreadable):
        return data.problem
    return data if isinstance(data, dict) else f"{path} is not a JSON mapping"


@dataclass(frozen=True)
class _Unreadable:
    problem: str


def _read_json_value(path: Path) -> object:
    """The JSON value in ``path``, or :class:`_Unreadable` saying why not."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return _Unreadable(f"no {path}")
    except (OSError, ValueError) as exc:
        return _Unreadable(f"cannot read {path}: {exc}")


def archive_url(spec: ModelSpec, network: NetworkSpec, mirror: str | None = None, suffix: str = "") -> str:
    """The release archive of one network: ``weights_url`` filled in (``{dataset}``, ``{dataset_id}``),
    ``suffix`` before its extension (a further archive of :data:`PENDING_ARCHIVES`: ``100_1.zip``);
    with ``mirror``, the same file name under that base URL (or local folder: a ``file:`` URL) instead."""
    if spec.weights_url is None:
        raise RunCannotStart(f"model {spec.name!r} has no weights_url in {spec.source}; "
                             f"get its weights with: {'; '.join(spec.get_weights)}")
    url = spec.weights_url.format(dataset=network.dataset, dataset_id=network.dataset_id)
    if suffix:
        stem, dot, extension = url.rpartition(".")
        url = f"{stem}{suffix}{dot}{extension}"
    if mirror:
        base = mirror if "://" in mirror else Path(mirror).resolve().as_uri()
        return base.rstrip("/") + "/" + url.rsplit("/", 1)[-1]
    return url


def fetch_commands(spec: ModelSpec, weights_dir: Path) -> list[str]:
    """Shell commands that put this model's weights into ``weights_dir``; cohort's own first."""
    commands = []
    if spec.weights_url:
        model = spec.name if Path(spec.source).parent == MODELS_DIR else spec.source
        commands.append(f"cohort models download {model} --weights {weights_dir}")
    commands.extend(f"TOTALSEG_WEIGHTS_PATH={weights_dir} {command}" for command in spec.get_weights)
    if spec.weights_url:
        for network in spec.networks:
            name = archive_url(spec, network).rsplit("/", 1)[-1]
            # a pattern's release (VIBESegmentator's) holds the dataset folder's content, not the folder
            target = weights_dir / network.unpacked_name if network.is_pattern else weights_dir
            commands.append(f"curl -L -o /tmp/{name} {archive_url(spec, network)} && "
                            f"unzip -o /tmp/{name} -d {target}")
    return commands


def check_model_ready(spec: ModelSpec, weights_dir: Path) -> None:
    """Raise :class:`RunCannotStart` unless every network folder of ``spec`` is complete."""
    statuses = [network_status(spec, n, weights_dir) for n in spec.networks]
    bad = [s for s in statuses if s.state != "present"]
    if not bad:
        return
    searched = ", ".join(f"${variable}" for variable in weights_variables(spec))
    lines = [(f"model {spec.name!r} is not ready in {weights_dir} "
              f"(--weights, {searched}/nnunet/results or ~/.totalsegmentator):")]
    for status in bad:
        detail = f": {status.problem}" if status.problem else ""
        lines.append(f"  {status.state}: {status.network.dataset}{detail}")
    broken = [s.network.dataset for s in bad if s.state == "broken"]
    if broken:
        lines.append("Remove the broken folders first (TotalSegmentator skips a download when the folder exists):")
        lines.extend(f"  rm -r {weights_dir / name}" for name in broken)
    lines.append("Get the weights with one of:")
    lines.extend(f"  {command}" for command in fetch_commands(spec, weights_dir))
    raise RunCannotStart("\n".join(lines))


def weights_fingerprint(spec: ModelSpec, weights_dir: Path) -> str:
    """Digest of every network of ``spec`` as found in ``weights_dir`` (see :mod:`cohort.provenance`)."""
    parts = []
    for network in spec.networks:
        folder = network_folder(spec, network, weights_dir)
        parts.append([folder.parent.name, file_digest(folder / "dataset.json"), file_digest(folder / "plans.json"),
                      *(checkpoint_digest(path) for path in checkpoint_paths(spec, network, weights_dir))])
    return digest(parts)
