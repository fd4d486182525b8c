"""A seeded synthetic cohort with known age effects, written as ``cohort run`` would write it.

Used by the tests (does the study find what was planted, and nothing else?), by the
benchmark and by the worked example in ``docs/aging-study.md``. The cohort follows the
paper's: ages 18-100 roughly uniform (whole years), 63.5 % male. A few structures get a
monotonic age effect with the sign and about the strength the paper reports; every other
structure and metric has none. QC failures (absent, FOV-truncated, below the lower bound),
failed series and series without age are planted at known rates and counted.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cohort.config import load_class_map

# (structure, metric, Spearman r_s planted), signs and sizes after the paper's headline results
PLANTED = (
    ("aorta", "volume_ml", 0.64),
    ("autochthon_left", "mean_hu", -0.74),
    ("gluteus_minimus_left", "mean_hu", -0.79),
    ("iliopsoas_left", "volume_ml", -0.61),
    ("kidney_left", "volume_ml", -0.49),
    ("pancreas", "volume_ml", -0.49),
    ("vertebrae_L4", "mean_hu", -0.55),
    ("iliac_artery_left", "volume_ml", 0.33),
)
FAILED_STATUSES = ("absent", "fov_truncated", "below_lower_bound")


@dataclass(frozen=True)
class SyntheticCohort:
    """``features`` and ``series`` tables plus the truth they were drawn from."""

    features: pd.DataFrame
    series: pd.DataFrame
    effects: pd.DataFrame
    planted_exclusions: pd.DataFrame

    def write(self, results_dir: Path) -> Path:
        """Write ``features/`` and ``series/`` Parquet datasets under ``results_dir``."""
        results_dir = Path(results_dir)
        for name, table in (("features", self.features), ("series", self.series)):
            (results_dir / name).mkdir(parents=True, exist_ok=True)
            for part, chunk in enumerate(np.array_split(np.arange(len(table)), 2)):
                table.iloc[chunk].to_parquet(results_dir / name / f"part-{part:05d}.parquet", index=False)
        return results_dir


def make_cohort(n_subjects: int = 4004, n_structures: int = 117, seed: int = 0,
                n_failed_series: int = 20, n_without_age: int = 15) -> SyntheticCohort:
    """Draw a cohort; the first ``n_failed_series`` series fail, the next ``n_without_age`` lack age.

    >>> make_cohort(n_subjects=100, n_structures=10).series["status"].value_counts()["done"]
    np.int64(80)
    """
    rng = np.random.default_rng(seed)
    series = _series(n_subjects, n_failed_series, n_without_age, rng)
    structures = _structures(n_structures)
    effects = _effects(structures)
    done = series[series["status"] == "done"]
    features = _features(done, structures, effects, rng)
    return SyntheticCohort(features, series, effects, _planted_exclusions(features, series))


def _series(n: int, n_failed: int, n_without_age: int, rng: np.random.Generator) -> pd.DataFrame:
    ids = [f"S{i:05d}" for i in range(n)]
    sex = np.where(rng.permutation(n) < round(0.635 * n), "M", "F")
    age = rng.integers(18, 101, size=n).astype(float)
    status = np.where(np.arange(n) < n_failed, "failed", "done")
    age[n_failed:n_failed + n_without_age] = np.nan
    error = [f"{i}.nii.gz: truncated gzip stream" if s == "failed" else None for i, s in zip(ids, status)]
    return pd.DataFrame({"series_id": ids, "subject_id": [f"P{i:05d}" for i in range(n)], "age": age, "sex": sex,
                         "status": status, "error": error, "manifest_line": np.arange(2, n + 2), "in_manifest": True})


def _structures(n: int) -> list[str]:
    names = list(load_class_map("class_map_total_v2.csv").names.values())
    planted = list(dict.fromkeys(s for s, _, _ in PLANTED))
    others = [s for s in names if s not in planted]
    others += [f"synthetic_{i:03d}" for i in range(max(0, n - len(names)))]
    return (planted + others)[:n] if n >= len(planted) else planted[:n]


def _effects(structures: list[str]) -> pd.DataFrame:
    planted = {(s, m): r for s, m, r in PLANTED}
    rows = [(s, m, planted.get((s, m), 0.0)) for s in structures for m in ("volume_ml", "mean_hu")]
    return pd.DataFrame(rows, columns=["structure", "metric", "planted_r"])


def _features(done: pd.DataFrame, structures: list[str], effects: pd.DataFrame,
              rng: np.random.Generator) -> pd.DataFrame:
    """One row per done series and structure; values = baseline + signal(age) + noise."""
    n_sub, n_str = len(done), len(structures)
    age = done["age"].fillna(59.0).to_numpy()
    signal = (age - 18.0) ** 1.5  # monotonic, not linear: rank statistics must see it all the same
    signal = (signal - signal.mean()) / signal.std()
    r = effects.set_index(["structure", "metric"])["planted_r"]
    volume = _metric(signal, r.xs("volume_ml", level="metric").reindex(structures).to_numpy(), rng)
    hu = _metric(signal, r.xs("mean_hu", level="metric").reindex(structures).to_numpy(), rng)
    base_volume = rng.uniform(5.0, 1500.0, n_str)
    volume_ml = base_volume * (1.0 + 0.15 * volume)
    mean_hu = rng.uniform(-50.0, 400.0, n_str) + 25.0 * hu
    status = _statuses(n_sub, n_str, rng)
    lower_bound = 0.2 * base_volume
    shrink = rng.uniform(0.05, 0.95, volume_ml.shape)
    volume_ml = np.where(status == "below_lower_bound", lower_bound * shrink, volume_ml)
    volume_ml = np.where(status == "fov_truncated", volume_ml * (0.3 + 0.6 * shrink), volume_ml)
    absent = status == "absent"
    return _long_table(done["series_id"].to_numpy(), structures, np.where(absent, 0.0, volume_ml),
                       np.where(absent, np.nan, mean_hu), status, lower_bound)


def _metric(signal: np.ndarray, r: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Standard-normal-ish values per (subject, structure) with Pearson r to ``signal`` of ``r``."""
    noise = rng.standard_normal((len(signal), len(r)))
    return signal[:, None] * r[None, :] + noise * np.sqrt(1.0 - r**2)[None, :]


def _statuses(n_sub: int, n_str: int, rng: np.random.Generator) -> np.ndarray:
    """QC status per (subject, structure): each failure kind at a per-structure rate of 0-4 %."""
    rates = rng.uniform(0.0, 0.04, (n_str, len(FAILED_STATUSES)))
    cumulative = np.cumsum(rates, axis=1)
    draw = rng.random((n_sub, n_str))
    kind = (draw[:, :, None] >= cumulative[None, :, :]).sum(axis=2)
    return np.asarray([*FAILED_STATUSES, "ok"], dtype=object)[kind]


def _long_table(ids: np.ndarray, structures: list[str], volume_ml: np.ndarray, mean_hu: np.ndarray,
                status: np.ndarray, lower_bound: np.ndarray) -> pd.DataFrame:
    n_sub, n_str = volume_ml.shape
    n_voxels = np.rint(volume_ml * 1000.0 / 3.375).astype(np.int64)
    return pd.DataFrame({
        "series_id": np.repeat(ids, n_str), "structure": np.tile(structures, n_sub),
        "label": np.tile(np.arange(1, n_str + 1), n_sub), "volume_ml": volume_ml.ravel(),
        "mean_hu": mean_hu.ravel(), "std_hu": np.where(n_voxels > 0, 30.0, np.nan).ravel(),
        "median_hu": mean_hu.ravel(), "p05_hu": (mean_hu - 50.0).ravel(), "p95_hu": (mean_hu + 50.0).ravel(),
        "n_voxels": n_voxels.ravel(), "status": status.ravel().astype(str),
        "lower_bound_ml": np.tile(lower_bound, n_sub), "model": "labels", "measure_spacing_mm": "1.5,1.5,1.5",
    })


def _planted_exclusions(features: pd.DataFrame, series: pd.DataFrame) -> pd.DataFrame:
    """What the study must report: status counts among done series with an age, per structure."""
    with_age = series.loc[series["age"].notna() & (series["status"] == "done"), "series_id"]
    rows = features[features["series_id"].isin(with_age)]
    return rows.groupby(["structure", "status"]).size().rename("n_series").reset_index()


def cohort_from_values(age: np.ndarray, sex: np.ndarray, values: dict[tuple[str, str], np.ndarray],
                       subject_id: np.ndarray | None = None,
                       covariates: dict[str, np.ndarray] | None = None) -> SyntheticCohort:
    """A cohort whose every measurement is given: ``values[(structure, metric)]`` holds one value per series.

    All series are done and every row is ``ok``; metrics not given are filled so that the row is
    complete (volume 100 ml, HU 50). ``covariates`` become the ``covariates`` map column, as the
    manifest's extra columns do in ``cohort run``. For tests with a known truth: a planted slope,
    a sex difference confounded with age, outliers, a pair of age groups near a threshold.

    >>> c = cohort_from_values(np.array([20.0, 80.0]), np.array(["F", "M"]), {("liver", "volume_ml"): np.array([1.0, 2.0])})
    >>> c.features[["series_id", "structure", "volume_ml", "mean_hu", "status"]].values.tolist()
    [['S00000', 'liver', 1.0, 50.0, 'ok'], ['S00001', 'liver', 2.0, 50.0, 'ok']]
    """
    n = len(age)
    ids = np.asarray([f"S{i:05d}" for i in range(n)], dtype=object)
    series = pd.DataFrame({"series_id": ids, "subject_id": subject_id if subject_id is not None else ids,
                           "age": np.asarray(age, dtype=float), "sex": sex, "status": "done", "error": None,
                           "manifest_line": np.arange(2, n + 2), "in_manifest": True})
    if covariates:
        series["covariates"] = [list(zip(covariates, (str(covariates[k][i]) for k in covariates))) for i in range(n)]
    structures = list(dict.fromkeys(s for s, _ in values))
    frames = []
    for structure in structures:
        volume = values.get((structure, "volume_ml"), np.full(n, 100.0))
        hu = values.get((structure, "mean_hu"), np.full(n, 50.0))
        frames.append(pd.DataFrame({"series_id": ids, "structure": structure, "volume_ml": volume, "mean_hu": hu,
                                    "n_voxels": np.rint(volume * 1000.0 / 3.375).astype(np.int64), "status": "ok"}))
    features = pd.concat(frames, ignore_index=True)
    empty = pd.DataFrame(columns=["structure", "metric", "planted_r"])
    return SyntheticCohort(features, series, empty, pd.DataFrame(columns=["structure", "status", "n_series"]))


# (structure, HU change per decade of age, HU added by contrast): liver has no age effect, aorta one
CONTRAST_PLANTED = (("liver", 0.0, 80.0), ("aorta", -4.0, 150.0))


def make_contrast_cohort(n_subjects: int = 3000, seed: int = 0, share_with: tuple[float, float] = (0.9, 0.3),
                         noise_hu: float = 15.0) -> SyntheticCohort:
    """A cohort of mixed contrast phases where contrast use falls with age, as it often does clinically.

    Ages uniform 18-100; the chance of a contrast-enhanced scan falls linearly from ``share_with[0]``
    at 18 to ``share_with[1]`` at 100; the manifest column ``contrast`` says ``yes`` or ``no`` (as
    ``cohort manifest`` writes it). ``mean_hu`` of each structure of :data:`CONTRAST_PLANTED` is
    ``base + per_decade * (age - 18) / 10 + shift * contrast + noise`` (normal, SD ``noise_hu``),
    with a small sex difference; volumes depend on nothing. ``effects`` holds the truth:
    ``structure, metric, per_decade, contrast_shift``. HU vs age is confounded by phase: liver HU
    falls with age in the pooled sample only because older subjects get fewer contrast scans.

    >>> cohort = make_contrast_cohort(n_subjects=200)
    >>> sorted({dict(pairs)["contrast"] for pairs in cohort.series["covariates"]})
    ['no', 'yes']
    """
    rng = np.random.default_rng(seed)
    age = rng.integers(18, 101, n_subjects).astype(float)
    sex = np.where(rng.random(n_subjects) < 0.635, "M", "F")
    share = share_with[0] + (share_with[1] - share_with[0]) * (age - 18.0) / 82.0
    contrast = rng.random(n_subjects) < share
    values = {}
    for structure, per_decade, shift in CONTRAST_PLANTED:
        values[structure, "mean_hu"] = (60.0 + per_decade * (age - 18.0) / 10.0 + shift * contrast
                                        + 5.0 * (sex == "M") + rng.normal(0.0, noise_hu, n_subjects))
        values[structure, "volume_ml"] = rng.normal(1000.0, 100.0, n_subjects)
    cohort = cohort_from_values(age, sex, values, covariates={"contrast": np.where(contrast, "yes", "no")})
    effects = pd.DataFrame([(s, "mean_hu", d, c) for s, d, c in CONTRAST_PLANTED],
                           columns=["structure", "metric", "per_decade", "contrast_shift"])
    return SyntheticCohort(cohort.features, cohort.series, effects, cohort.planted_exclusions)
