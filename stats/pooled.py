"""Left/right pooled structures (the paper's "kidney" rows): derived feature rows, defined as data.

``pooled_structures.csv`` (beside this module, or any path / ``configs/`` file the config
names) lists ``pooled,structure`` pairs. A series gets a pooled row when it has a row for
every part: ``volume_ml`` and ``n_voxels`` are summed, ``mean_hu`` is the volume-weighted mean
of the parts (the mean over the union of the masks), and the row's QC ``status`` is the worst
of its parts (``absent`` > ``below_lower_bound`` > ``fov_truncated`` > ``ok``), so a pooled
kidney enters only where both kidneys would. Other HU statistics (SD, median, centiles)
cannot be pooled from the parts' summaries and stay empty.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cohort.config import config_file
from cohort.errors import ConfigError

STATS_DIR = Path(__file__).parent
STATUS_SEVERITY = ("ok", "fov_truncated", "below_lower_bound", "absent")


def load_pooled_definitions(name: str) -> pd.DataFrame:
    """``pooled, structure`` rows of ``name`` (this folder first, then ``configs/``); empty for ``""``.

    >>> load_pooled_definitions("pooled_structures.csv").query("pooled == 'kidney'")["structure"].tolist()
    ['kidney_left', 'kidney_right']
    """
    if not name:
        return pd.DataFrame({"pooled": pd.Series(dtype=str), "structure": pd.Series(dtype=str)})
    path = STATS_DIR / name if (STATS_DIR / name).exists() else config_file(name)
    if not path.exists():
        raise ConfigError(f"pooled_structures: {name}: file not found (looked in {STATS_DIR.name}/ and configs/)")
    table = pd.read_csv(path, dtype=str)
    if list(table.columns) != ["pooled", "structure"] or table.isna().any().any():
        raise ConfigError(f"{path}: needs exactly the columns 'pooled,structure', every cell filled")
    if table.duplicated().any():
        raise ConfigError(f"{path}: pair {tuple(table[table.duplicated()].iloc[0])} is listed twice")
    return table


def add_pooled_rows(features: pd.DataFrame, definitions: pd.DataFrame) -> pd.DataFrame:
    """``features`` plus one pooled row per series and pooled structure whose parts are all measured."""
    if definitions.empty:
        return features
    clash = set(definitions["pooled"]) & set(features["structure"])
    if clash:
        raise ConfigError(f"pooled_structures: {min(clash)!r} is already a measured structure name")
    parts = features.merge(definitions, on="structure")
    n_parts = definitions.groupby("pooled").size()
    severity = parts["status"].map({s: i for i, s in enumerate(STATUS_SEVERITY)}).fillna(len(STATUS_SEVERITY))
    volume = parts["volume_ml"].to_numpy(dtype=float)
    hu = parts["mean_hu"].to_numpy(dtype=float)
    parts = parts.assign(severity=severity, hu_mass=np.where(volume > 0, hu * volume, 0.0))
    grouped = parts.groupby(["series_id", "pooled"], sort=False)
    pooled = grouped.agg(volume_ml=("volume_ml", "sum"), hu_mass=("hu_mass", "sum"), n_parts=("structure", "size"),
                         severity=("severity", "max"), **({"n_voxels": ("n_voxels", "sum")} if "n_voxels" in parts else {}))
    pooled = pooled[pooled["n_parts"].to_numpy() == n_parts.reindex(pooled.index.get_level_values("pooled")).to_numpy()]
    mean_hu = np.where(pooled["volume_ml"] > 0, pooled["hu_mass"] / pooled["volume_ml"].where(pooled["volume_ml"] > 0), np.nan)
    statuses = np.asarray([*STATUS_SEVERITY, "unknown"], dtype=object)
    rows = pooled.reset_index().rename(columns={"pooled": "structure"}).assign(
        mean_hu=mean_hu, status=statuses[pooled["severity"].to_numpy(dtype=int)])
    rows = rows.drop(columns=["hu_mass", "n_parts", "severity"])
    return pd.concat([features, rows.reindex(columns=features.columns)], ignore_index=True)
