"""Left/right pooled structures (the paper's "kidney" rows): derived feature rows, defined as data.

``pooled_structures.csv`` (beside this module, or any path / ``configs/`` file the config
names) lists ``pooled,structure`` pairs. A series gets a pooled row when it has a row for
every part: ``volume_ml`` and ``n_voxels`` are summed, ``mean_hu`` (``mean_intensity`` for MR)
is the volume-weighted mean of the parts (the mean over the union of the masks), and the row's
QC ``status`` is the worst of its parts (``absent`` > ``below_lower_bound`` > ``fov_truncated``
> ``ok``), so a pooled kidney enters only where both kidneys would. Other statistics (SD,
median, centiles, fat fraction) cannot be pooled from the parts' summaries and stay empty, and
so does a mean when a part with volume has none.

A pooled name that the run's model measures itself (TotalSegmentator's MR model segments
``lung_left`` whole, where the CT models give its lobes) keeps the model's own rows and is not
pooled; a name measured both whole and in parts is ambiguous and refused.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cohort.config import config_file
from cohort.errors import ConfigError

STATS_DIR = Path(__file__).parent
STATUS_SEVERITY = ("ok", "fov_truncated", "below_lower_bound", "absent")
MEAN_COLUMNS = ("mean_hu", "mean_intensity")  # pooled as volume-weighted means
DEFAULT_DEFINITIONS = "pooled_structures.csv"  # the default configuration's (aging_default.yaml)


def parts_of(pooled: str, name: str = DEFAULT_DEFINITIONS) -> list[str]:
    """The structures ``pooled`` is built from in the definitions ``name`` (``[]``: not a pooled structure).

    >>> parts_of("kidney"), parts_of("liver")
    (['kidney_left', 'kidney_right'], [])
    """
    definitions = load_pooled_definitions(name)
    return definitions.loc[definitions["pooled"] == pooled, "structure"].tolist()


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
    definitions = applicable_definitions(definitions, set(features["structure"]))
    if definitions.empty:
        return features
    parts = features.merge(definitions, on="structure")
    n_parts = definitions.groupby("pooled").size()
    severity = parts["status"].map({s: i for i, s in enumerate(STATUS_SEVERITY)}).fillna(len(STATUS_SEVERITY))
    volume = parts["volume_ml"].to_numpy(dtype=float)
    means = [column for column in MEAN_COLUMNS if column in parts]
    masses = {f"{column}_mass": np.where(volume > 0, parts[column].to_numpy(dtype=float) * volume, 0.0)
              for column in means}
    unknown = {f"{column}_unknown": np.isnan(mass) for column, mass in zip(means, masses.values())}
    parts = parts.assign(severity=severity, **masses, **unknown)
    grouped = parts.groupby(["series_id", "pooled"], sort=False)
    pooled = grouped.agg(volume_ml=("volume_ml", "sum"), n_parts=("structure", "size"), severity=("severity", "max"),
                         **{name: (name, "sum") for name in [*masses, *unknown]},
                         **({"n_voxels": ("n_voxels", "sum")} if "n_voxels" in parts else {}))
    pooled = pooled[pooled["n_parts"].to_numpy() == n_parts.reindex(pooled.index.get_level_values("pooled")).to_numpy()]
    positive = pooled["volume_ml"].where(pooled["volume_ml"] > 0)
    statuses = np.asarray([*STATUS_SEVERITY, "unknown"], dtype=object)
    rows = pooled.reset_index().rename(columns={"pooled": "structure"}).assign(
        status=statuses[pooled["severity"].to_numpy(dtype=int)],
        **{column: (pooled[f"{column}_mass"] / positive).where(pooled[f"{column}_unknown"] == 0).to_numpy()
           for column in means})
    rows = rows.drop(columns=["n_parts", "severity", *masses, *unknown])
    return pd.concat([features, rows.reindex(columns=features.columns)], ignore_index=True)


def applicable_definitions(definitions: pd.DataFrame, measured: set[str]) -> pd.DataFrame:
    """The definitions whose pooled name the model does not measure itself.

    >>> pairs = pd.DataFrame({"pooled": ["lung_left", "lung_left", "kidney", "kidney"],
    ...                       "structure": ["lung_upper_lobe_left", "lung_lower_lobe_left", "kidney_left", "kidney_right"]})
    >>> sorted(applicable_definitions(pairs, {"lung_left", "kidney_left", "kidney_right"})["pooled"].unique())
    ['kidney']
    """
    named = definitions["pooled"].isin(measured)
    ambiguous = definitions[named & definitions["structure"].isin(measured)]
    if not ambiguous.empty:
        name = ambiguous["pooled"].min()
        raise ConfigError(f"pooled_structures: {name!r} is measured whole and also pooled from measured parts "
                          f"({', '.join(sorted(ambiguous.query('pooled == @name')['structure']))}); "
                          "rename the pooled row")
    return definitions[~named]
