"""Who to look at: the segmentations of a cohort most worth a reviewer's minutes.

At thousands of scans nobody looks at every overlay. Four short lists point to the ones that
matter, each row with its reason and values:

* :func:`flagged_series`: series with the most flagged structures, where a flag is a structure
  below its lower bound (by volume, whatever its status: a structure cut by the field of view
  and below its bound has status ``fov_truncated``) or *unexpectedly absent* (absent although both its neighbours in the
  class map, e.g. L2 and L4 around L3, are present in that series: the scan covers the region,
  so the structure should be there), or a z-score outlier of ``cohort stats``;
* :func:`suspicious_structures`: structures most often below their lower bound or unexpectedly absent;
* :func:`zscore_outliers`: the largest |z| among the rows ``zscores`` marks ``outlier``;
* :func:`spot_checks`: a seeded random sample of finished series, for unbiased spot checks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from cohort.stats.cohort_table import study_status

BELOW = "below_lower_bound"
ABSENT = "absent"


def anatomical_order(features: pd.DataFrame) -> pd.Series:
    """Each structure's place in the model's class map, by name: its label value, which keeps a numbered series
    of structures in anatomical sequence (``vertebrae_S1`` .. ``vertebrae_C1``, ``rib_left_1`` .. ``rib_left_12``),
    where names sort ``rib_left_1, rib_left_10, rib_left_11, rib_left_12, rib_left_2``. Empty without a ``label`` column.

    >>> anatomical_order(pd.DataFrame({"structure": ["rib_left_10", "rib_left_2"], "label": [101, 93]})).to_dict()
    {'rib_left_2': 93, 'rib_left_10': 101}
    """
    if "label" not in features.columns:
        return pd.Series(dtype="int64")
    return features.groupby("structure")["label"].min().sort_values(kind="stable")


def in_anatomical_order(frame: pd.DataFrame, order: pd.Series, column: str = "structure") -> pd.DataFrame:
    """``frame`` with its rows sorted by the :func:`anatomical_order` of their ``column`` (stable, so rows of one
    structure keep their order); a structure without a label (a pooled one, ``kidney``) follows, by name.

    >>> rows = pd.DataFrame({"structure": ["kidney", "rib_left_10", "rib_left_2"]})
    >>> in_anatomical_order(rows, pd.Series({"rib_left_2": 93, "rib_left_10": 101}))["structure"].tolist()
    ['rib_left_2', 'rib_left_10', 'kidney']
    """
    place = frame[column].map(order)
    keys = pd.DataFrame({"place": place.fillna(np.inf).to_numpy(), "name": frame[column].where(place.isna(), "").to_numpy()})
    return frame.iloc[keys.sort_values(["place", "name"], kind="stable").index]


def unexpected_absences(features: pd.DataFrame) -> pd.DataFrame:
    """Rows ``absent`` whose neighbours in label order (label - 1 and label + 1) are both present
    (none when the table has no ``label`` column: the neighbours are not known).

    >>> rows = pd.DataFrame({"series_id": "s", "label": [1, 2, 3], "structure": ["a", "b", "c"],
    ...                      "status": ["ok", "absent", "ok"]})
    >>> unexpected_absences(rows)["structure"].tolist()
    ['b']
    """
    if "label" not in features.columns:
        return features.iloc[:0]
    present = features.assign(present=features["status"] != ABSENT).pivot_table(
        index="series_id", columns="label", values="present", aggfunc="first")
    before, after = present.shift(1, axis=1), present.shift(-1, axis=1)
    expected = (before.eq(True) & after.eq(True)).stack().rename("expected")
    absent = features[features["status"] == ABSENT].set_index(["series_id", "label"])
    absent = absent.join(expected, how="left")
    return absent[absent["expected"].fillna(False).astype(bool)].reset_index()


def flags(features: pd.DataFrame, zscores: pd.DataFrame | None) -> pd.DataFrame:
    """One row per flagged series and structure: ``reason``, the measured ``volume_ml`` and the structure's ``label``
    (its place in the class map, :func:`anatomical_order`; null for a pooled structure), below-bound rows first.

    ``below_lower_bound`` flags the rows the study excludes as such (:func:`study_status`). Of the
    columns beyond ``series_id, structure, status`` (all that ``cohort stats`` requires) those present are used.
    """
    columns = [c for c in ("series_id", "structure", "volume_ml", "lower_bound_ml") if c in features.columns]
    below = features.loc[study_status(features) == BELOW, columns]
    parts = [below.assign(reason=BELOW),
             unexpected_absences(features)[["series_id", "structure"]].assign(reason="absent (neighbours present)")]
    if zscores is not None and len(zscores):
        outliers = zscores[zscores["outlier"].fillna(False).astype(bool)]
        parts.append(outliers[["series_id", "structure", "value"]].assign(
            reason="z-score outlier (" + outliers["metric"].astype(str) + ", z = " + outliers["z"].round(1).astype(str) + ")"))
    rows = pd.concat(parts, ignore_index=True)
    return rows.assign(label=rows["structure"].map(anatomical_order(features)))


def flagged_series(flag_rows: pd.DataFrame, top_n: int) -> pd.DataFrame:
    """The ``top_n`` series with the most flags: ``series_id, n_flags, worst`` (the first flag of :func:`flags`),
    ``reasons`` (every flag, in the class map's order of the structures)."""
    if flag_rows.empty:
        return pd.DataFrame(columns=["series_id", "n_flags", "worst", "reasons"])
    grouped = flag_rows.groupby("series_id")
    ordered = flag_rows.sort_values("label", kind="stable", na_position="last").groupby("series_id")
    table = pd.DataFrame({
        "n_flags": grouped.size(),
        "worst": grouped["structure"].first(),
        "reasons": ordered.apply(lambda g: "; ".join(f"{s}: {r}" for s, r in zip(g["structure"], g["reason"])),
                                 include_groups=False),
    })
    return table.sort_values(["n_flags", "worst"], ascending=[False, True]).head(top_n).reset_index()


def suspicious_structures(features: pd.DataFrame, flag_rows: pd.DataFrame, top_n: int) -> pd.DataFrame:
    """Structures most often below their bound or unexpectedly absent, with one example series each (the
    first by series_id, so that the same tables, in whatever row order a run wrote them, give the same page)."""
    measured = features.groupby("structure").size().rename("n_series")
    counted = flag_rows[~flag_rows["reason"].str.startswith("z-score")]
    if counted.empty:
        return pd.DataFrame(columns=["structure", BELOW, "absent_unexpected", "n_series", "share", "example"])
    counts = pd.crosstab(counted["structure"], counted["reason"] == BELOW).rename(
        columns={True: BELOW, False: "absent_unexpected"}).reindex(columns=[BELOW, "absent_unexpected"], fill_value=0)
    table = counts.join(measured).assign(flagged=counts.sum(axis=1))
    table["share"] = table["flagged"] / table["n_series"]
    table["example"] = counted.groupby("structure")["series_id"].min()
    table = table.sort_values(["flagged", "share"], ascending=False).head(top_n)
    return table.drop(columns="flagged").rename_axis("structure").reset_index()


def zscore_outliers(zscores: pd.DataFrame | None, top_n: int) -> pd.DataFrame | None:
    """The ``top_n`` outlier rows by |z| (``None`` when ``cohort stats`` wrote no ``zscores``)."""
    if zscores is None:
        return None
    outliers = zscores[zscores["outlier"].fillna(False).astype(bool)]
    outliers = outliers.assign(abs_z=outliers["z"].abs()).sort_values("abs_z", ascending=False)
    return outliers.head(top_n).drop(columns="abs_z").reset_index(drop=True)


def spot_checks(series: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """``n`` finished series drawn at random with ``seed`` (the same seed gives the same sample)."""
    done = series.loc[series["status"] == "done", ["series_id", "age", "sex"]].sort_values("series_id")
    chosen = np.random.default_rng(seed).choice(len(done), size=min(n, len(done)), replace=False)
    return done.iloc[np.sort(chosen)].reset_index(drop=True)


@dataclass(frozen=True)
class QueueSizes:
    """How long each list is; ``seed`` fixes the spot-check sample."""

    flagged_series: int = 10
    structures: int = 10
    outliers: int = 10
    spot_checks: int = 6
    seed: int = 0


@dataclass(frozen=True)
class ReviewQueue:
    """The four lists; ``outliers`` is ``None`` when ``cohort stats`` wrote no ``zscores``."""

    flagged: pd.DataFrame
    structures: pd.DataFrame
    outliers: pd.DataFrame | None
    spot_checks: pd.DataFrame
    flag_rows: pd.DataFrame

    def overlay_requests(self) -> list[tuple[str, str | None]]:
        """(series_id, structure to highlight) of every listed row, in list order."""
        pairs = list(zip(self.flagged["series_id"], self.flagged["worst"]))
        pairs += list(zip(self.structures["example"], self.structures["structure"]))
        if self.outliers is not None:
            pairs += list(zip(self.outliers["series_id"], self.outliers["structure"]))
        pairs += [(sid, None) for sid in self.spot_checks["series_id"]]
        return list(dict.fromkeys(pairs))


def review_queue(features: pd.DataFrame, series: pd.DataFrame, zscores: pd.DataFrame | None,
                 sizes: QueueSizes = QueueSizes()) -> ReviewQueue:
    """All four lists from the run's tables (and ``zscores`` of ``cohort stats`` when there)."""
    flag_rows = flags(features, zscores)
    return ReviewQueue(flagged_series(flag_rows, sizes.flagged_series),
                       suspicious_structures(features, flag_rows, sizes.structures),
                       zscore_outliers(zscores, sizes.outliers), spot_checks(series, sizes.spot_checks, sizes.seed),
                       flag_rows)
