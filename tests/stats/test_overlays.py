"""Overlay mosaics from a real ``cohort run`` over the shipped example CTs and label maps."""

from __future__ import annotations

import shutil
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
from testkit import cohort_cli

from cohort.stats.overlays import OverlayRequest, ensure_overlays

YELLOW = np.array([1.0, 0.9, 0.0])


@pytest.fixture(scope="module")
def run_dir(examples: Path, tmp_path_factory: pytest.TempPathFactory, prefect_server: str) -> Path:
    out = tmp_path_factory.mktemp("overlay-run") / "results"
    done = cohort_cli("run", "--manifest", str(examples / "manifest.csv"), "--out", str(out), api=prefect_server)
    assert done.returncode == 0, done.stderr[-2000:]
    return out


def _yellow(png: Path) -> np.ndarray:
    pixels = matplotlib.image.imread(png)[..., :3]
    return np.linalg.norm(pixels - YELLOW, axis=-1) < 0.12


def test_mosaics_are_drawn_cached_and_highlight_the_structure(run_dir: Path) -> None:
    liver, whole = OverlayRequest("example_full", "liver"), OverlayRequest("example_dicom")
    overlays = ensure_overlays(run_dir, [liver, whole], workers=2)
    assert [o.problem for o in overlays] == [None, None]
    assert liver.path(run_dir) == run_dir / "qc" / "example_full" / "liver.png"
    assert matplotlib.image.imread(liver.path(run_dir)).shape[:2] == (600, 900)
    assert matplotlib.image.imread(liver.thumbnail(run_dir)).shape[:2] == (240, 360)
    highlighted = _yellow(liver.path(run_dir))
    assert highlighted.sum() > 2000 and _yellow(whole.path(run_dir)).sum() < 50
    first_axial = highlighted[:300, :300]
    assert np.nonzero(first_axial)[1].mean() < 120  # radiological: the patient's right (liver) on the left
    drawn = liver.path(run_dir).stat().st_mtime_ns
    ensure_overlays(run_dir, [liver], workers=1)
    assert liver.path(run_dir).stat().st_mtime_ns == drawn  # cached, not redrawn


def test_missing_image_is_a_one_line_reason_without_paths(run_dir: Path, tmp_path: Path) -> None:
    unknown, = ensure_overlays(run_dir, [OverlayRequest("no_such_series")], workers=1)
    assert unknown.path is None and unknown.problem == "no_such_series: its CT is not in the manifest of any recorded run"
    copy = tmp_path / "results"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("qc"))
    shutil.rmtree(copy / "labels.zarr" / "example_fast")
    no_labels, = ensure_overlays(copy, [OverlayRequest("example_fast", "spleen")], workers=1)
    assert no_labels.problem == "example_fast: no label map in labels.zarr"
    assert not (copy / "qc" / "example_fast" / "spleen.png").exists()
