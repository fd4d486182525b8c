"""Find and verify nnU-Net weight folders the way TotalSegmentator lays them out.

The folder that holds the ``Dataset…`` folders is found as TotalSegmentator finds it, so one
download serves both tools. A folder is checked before any series runs: missing or broken
weights stop the run (exit 2) with the commands that fix it, not with a traceback from inside
nnU-Net.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from cohort.errors import RunCannotStart
from cohort.provenance import checkpoint_digest, digest, file_digest
from cohort.segmentation.registry import ModelSpec, NetworkSpec, network_classes

SPACING_TOLERANCE_MM = 1e-3


def resolve_weights_dir(explicit: Path | None) -> Path:
    """``--weights``, else ``$TOTALSEG_WEIGHTS_PATH``, else ``$TOTALSEG_HOME_DIR/nnunet/results``,
    else ``~/.totalsegmentator/nnunet/results`` (TotalSegmentator's own order)."""
    if explicit is not None:
        return Path(explicit).expanduser()
    if os.environ.get("TOTALSEG_WEIGHTS_PATH"):
        return Path(os.environ["TOTALSEG_WEIGHTS_PATH"]).expanduser()
    if os.environ.get("TOTALSEG_HOME_DIR"):
        return Path(os.environ["TOTALSEG_HOME_DIR"]).expanduser() / "nnunet" / "results"
    home = Path.home()
    base = Path("/tmp") if home == Path("/") else home
    return base / ".totalsegmentator" / "nnunet" / "results"


def network_folder(spec: ModelSpec, network: NetworkSpec, weights_dir: Path) -> Path:
    """``<weights>/<dataset>/<trainer>__<plans>__<configuration>``: what nnU-Net loads."""
    return weights_dir / network.dataset / spec.model_folder_name


def checkpoint_path(spec: ModelSpec, network: NetworkSpec, weights_dir: Path) -> Path:
    return network_folder(spec, network, weights_dir) / f"fold_{spec.fold}" / spec.checkpoint


@dataclass(frozen=True)
class NetworkStatus:
    """``state`` is ``present``, ``missing`` or ``broken``; ``problem`` says what is wrong."""

    network: NetworkSpec
    state: str
    problem: str = ""


def network_status(spec: ModelSpec, network: NetworkSpec, weights_dir: Path) -> NetworkStatus:
    """Check one network folder without loading its weights (cheap: run before any work)."""
    if not (weights_dir / network.dataset).is_dir():
        return NetworkStatus(network, "missing")
    problem = _folder_problem(spec, network, network_folder(spec, network, weights_dir))
    return NetworkStatus(network, "broken" if problem else "present", problem)


def _folder_problem(spec: ModelSpec, network: NetworkSpec, folder: Path) -> str:
    if not folder.is_dir():
        found = sorted(p.name for p in folder.parent.iterdir())
        return f"no folder {folder.name} in {folder.parent} (found: {found or 'nothing'})"
    checkpoint = folder / f"fold_{spec.fold}" / spec.checkpoint
    if not checkpoint.is_file() or checkpoint.stat().st_size == 0:
        return f"no checkpoint {checkpoint}"
    plans = _read_json(folder / "plans.json")
    if isinstance(plans, str):
        return plans
    configuration = plans.get("configurations", {}).get(spec.configuration)
    if not isinstance(configuration, dict):
        return f"{folder / 'plans.json'} has no configuration {spec.configuration!r}"
    problem = _spacing_problem(spec, configuration.get("spacing"), folder / "plans.json")
    return problem or _classes_problem(network, folder / "dataset.json")


def _spacing_problem(spec: ModelSpec, spacing_zyx: object, path: Path) -> str:
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
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return f"no {path}"
    except (OSError, ValueError) as exc:
        return f"cannot read {path}: {exc}"
    return data if isinstance(data, dict) else f"{path} is not a JSON mapping"


def fetch_commands(spec: ModelSpec, weights_dir: Path) -> list[str]:
    """Shell commands that put this model's weights into ``weights_dir``."""
    commands = [f"TOTALSEG_WEIGHTS_PATH={weights_dir} {command}" for command in spec.get_weights]
    if spec.weights_url:
        for network in spec.networks:
            url = spec.weights_url.format(dataset=network.dataset)
            commands.append(f"curl -L -o /tmp/{network.dataset}.zip {url} && "
                            f"unzip -o /tmp/{network.dataset}.zip -d {weights_dir}")
    return commands


def check_model_ready(spec: ModelSpec, weights_dir: Path) -> None:
    """Raise :class:`RunCannotStart` unless every network folder of ``spec`` is complete."""
    statuses = [network_status(spec, n, weights_dir) for n in spec.networks]
    bad = [s for s in statuses if s.state != "present"]
    if not bad:
        return
    lines = [(f"model {spec.name!r} is not ready in {weights_dir} "
              "(--weights, $TOTALSEG_WEIGHTS_PATH, $TOTALSEG_HOME_DIR/nnunet/results or ~/.totalsegmentator):")]
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
        parts.append([network.dataset, file_digest(folder / "dataset.json"), file_digest(folder / "plans.json"),
                      checkpoint_digest(checkpoint_path(spec, network, weights_dir))])
    return digest(parts)
