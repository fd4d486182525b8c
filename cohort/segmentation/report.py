"""The text of ``cohort models``: where weights are looked for and what each model has."""

from __future__ import annotations

import os
from pathlib import Path

from cohort.errors import ConfigError
from cohort.segmentation.registry import ModelSpec, known_models, load_model_spec
from cohort.segmentation.weights import fetch_commands, network_status, resolve_weights_dir, weights_variables


def models_report(weights_dir: Path | None) -> str:
    """Say where weights are looked for, which models are present, missing or broken, and how
    to get what is missing."""
    folder = resolve_weights_dir(weights_dir)
    lines = [f"weights folder: {folder} ({_where_from(weights_dir, None)})",
             ("  looked for in this order: --weights DIR, $TOTALSEG_WEIGHTS_PATH, "
              "$TOTALSEG_HOME_DIR/nnunet/results, ~/.totalsegmentator/nnunet/results"), ""]
    for name in known_models():
        try:
            spec = load_model_spec(name)
        except ConfigError as exc:
            lines.append(f"{name}: invalid registry entry: {exc}")
            continue
        model_folder = resolve_weights_dir(weights_dir, spec)
        statuses = [network_status(spec, n, model_folder) for n in spec.networks]
        states = {s.state for s in statuses}
        overall = "present" if states == {"present"} else ("broken" if "broken" in states else "missing")
        lines.append(f"{name}: {overall} - {spec.description}")
        if spec.weights_env:
            lines.append(f"  weights folder: {model_folder} ({_where_from(weights_dir, spec)}; "
                         f"${spec.weights_env} is read first)")
        for status in statuses:
            detail = f" ({status.problem})" if status.problem else ""
            lines.append(f"  {status.state:8s} {status.network.dataset}{detail}")
        if overall != "present":
            if "broken" in states:
                lines.append("  remove the broken folders, then get the weights with one of:")
            else:
                lines.append("  get the weights with one of:")
            lines.extend(f"    {command}" for command in fetch_commands(spec, model_folder))
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _where_from(explicit: Path | None, spec: ModelSpec | None) -> str:
    if explicit is not None:
        return "from --weights"
    for variable in weights_variables(spec):
        if os.environ.get(variable):
            return f"from ${variable}"
    return "TotalSegmentator's default"
