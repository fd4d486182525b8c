"""Overlay mosaics from a real ``cohort run`` over the shipped example CTs and label maps, an
MR run (its own label ids and window) and one series of a DICOM folder holding two."""

from __future__ import annotations

import csv
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import matplotlib.image
import nibabel as nib
import numpy as np
import pytest
from testkit import cohort_cli, mr_from_example, write_manifest

from cohort.config import load_class_map
from cohort.ingest import load_ct
from cohort.stats.overlays import OverlayRequest, display_window, ensure_overlays, structure_label
from cohort.store import label_map_attributes, read_label_map, write_label_map
from tests.export.pacs import Patient, Study, example_slices, write_series

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
    assert unknown.path is None and unknown.problem == "no_such_series: its image is not in the manifest of any recorded run"
    copy = tmp_path / "results"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("qc"))
    shutil.rmtree(copy / "labels.zarr" / "example_fast")
    no_labels, = ensure_overlays(copy, [OverlayRequest("example_fast", "spleen")], workers=1)
    assert no_labels.problem == "example_fast: no label map in labels.zarr"
    assert not (copy / "qc" / "example_fast" / "spleen.png").exists()


def test_an_unknown_structure_is_a_reason_not_an_unhighlighted_mosaic(run_dir: Path) -> None:
    unknown, = ensure_overlays(run_dir, [OverlayRequest("example_full", "no_such_organ")], workers=1)
    assert unknown.path is None and unknown.problem == "example_full: 'no_such_organ' is not a structure of its label map"


def test_an_mr_label_map_is_drawn_with_its_own_ids_and_an_intensity_window(
        examples: Path, tmp_path: Path, prefect_server: str) -> None:
    image, labels = mr_from_example(examples, tmp_path)
    manifest = write_manifest(tmp_path / "scans.csv", [{"series_id": "mr1", "path": str(image), "age": 60, "sex": "F",
                                                         "labels": str(labels)}])
    out = tmp_path / "results"
    done = cohort_cli("run", "--manifest", str(manifest), "--out", str(out), "--model", "total_mr",
                      api=prefect_server)
    assert done.returncode == 0, done.stderr[-2000:]
    attributes = label_map_attributes(out / "labels.zarr", "mr1")
    assert attributes["modality"] == "MR" and attributes["structures"]["15"] == "colon"
    assert structure_label(attributes, "colon") == (15, "colon")
    colon, = ensure_overlays(out, [OverlayRequest("mr1", "colon")], workers=1)
    assert colon.problem is None
    assert _yellow(colon.path).sum() > 2000  # v2's id 20 is no structure of this map: nothing would be yellow
    intensities = load_ct(image, modality=None).hu
    window = display_window(intensities, "MR")
    low, high = np.percentile(intensities[intensities > 0], [1, 99])
    assert (window.level - window.width / 2, window.level + window.width / 2) == pytest.approx((low, high))
    assert str(display_window(intensities, "CT")) == "soft tissue L 40 / W 400"


def test_one_series_of_a_dicom_folder_holding_two_is_drawn(examples: Path, tmp_path: Path,
                                                           prefect_server: str) -> None:
    slices = example_slices(examples)
    folder = tmp_path / "study"
    study = Study(Patient("DOE^JANE", "PID-1", "19580312"))
    chosen = write_series(folder, slices, study)
    write_series(folder, slices[::2], study, thickness=6.0, description="thick reconstruction")
    volume = load_ct(folder, series_uid=chosen)
    labels = np.zeros(volume.hu.shape, np.uint8)
    ids = {name: label for label, name in load_class_map("class_map_total_v2.csv").names.items()}
    labels[200:300, 200:300, 5:15] = ids["vertebrae_L4"]
    nib.save(nib.Nifti1Image(labels, volume.affine), tmp_path / "labels.nii.gz")
    manifest = tmp_path / "scans.csv"
    with manifest.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["series_id", "path", "series_uid", "age", "sex", "labels"])
        writer.writerow(["d1", str(folder), chosen, 70, "M", str(tmp_path / "labels.nii.gz")])
    out = tmp_path / "results"
    done = cohort_cli("run", "--manifest", str(manifest), "--out", str(out), api=prefect_server)
    assert done.returncode == 0, done.stderr[-2000:]
    bone, = ensure_overlays(out, [OverlayRequest("d1", "vertebrae_L4")], workers=1)
    assert bone.problem is None and _yellow(bone.path).sum() > 500



def test_one_mosaic_asked_for_by_several_threads_at_once_is_drawn_without_error(run_dir: Path) -> None:
    """The review page requests a card's thumbnail once per list it is in (and reviewers share a results folder):
    the draws wrote the same temporary file, so all but the first rename failed with FileNotFoundError and the
    browser got no picture."""
    request = OverlayRequest("example_fast", "spleen")
    for _ in range(3):
        shutil.rmtree(request.path(run_dir).parent, ignore_errors=True)
        with ThreadPoolExecutor(8) as pool:
            drawn = list(pool.map(lambda _: ensure_overlays(run_dir, [request], workers=1)[0], range(8)))
        assert [o.problem for o in drawn] == [None] * 8
    assert matplotlib.image.imread(request.thumbnail(run_dir)).shape[:2] == (240, 360)
    assert sorted(p.name for p in request.path(run_dir).parent.iterdir()) == ["spleen.png", "spleen.thumb.png"]


def test_a_pooled_structure_is_highlighted_as_both_its_parts(run_dir: Path) -> None:
    """A z-score outlier of a pooled row (``kidney``, from ``kidney_left`` and ``kidney_right``) is listed for review,
    but its overlay was "'kidney' is not a structure of its label map" instead of a picture."""
    pooled, left = OverlayRequest("example_full", "kidney"), OverlayRequest("example_full", "kidney_left")
    overlays = ensure_overlays(run_dir, [pooled, left], workers=1)
    assert [o.problem for o in overlays] == [None, None]
    both, one = _yellow(pooled.path(run_dir)), _yellow(left.path(run_dir))
    assert both.sum() > 1.5 * one.sum() > 0


def test_a_pooled_mosaic_is_drawn_again_when_the_study_pools_the_structure_from_other_parts(
        run_dir: Path, tmp_path: Path) -> None:
    """Mosaics are cached by series and structure name: a study whose own ``pooled_structures`` file makes
    ``kidney`` of other parts was shown the mosaic of the default definition drawn earlier (both kidneys)."""
    results = tmp_path / "results"
    shutil.copytree(run_dir, results, ignore=shutil.ignore_patterns("qc"))
    default = OverlayRequest("example_full", "kidney")
    ensure_overlays(results, [default], workers=1)
    both = _yellow(default.path(results)).sum()
    own = tmp_path / "pooled.csv"
    own.write_text("pooled,structure\nkidney,kidney_left\n")
    custom = OverlayRequest("example_full", "kidney", str(own))
    overlay, = ensure_overlays(results, [custom], workers=1)
    assert overlay.problem is None and overlay.path == default.path(results)
    assert 0 < _yellow(custom.path(results)).sum() < both / 1.5
    drawn = custom.path(results).stat().st_mtime_ns
    ensure_overlays(results, [custom], workers=1)
    assert custom.path(results).stat().st_mtime_ns == drawn  # cached under its own definition


def test_a_recomputed_series_is_drawn_again_not_shown_from_the_cache(run_dir: Path, tmp_path: Path) -> None:
    """``cohort run --recompute changed`` rewrites a series' label map (other weights, changed input files), but a
    mosaic in qc/ counted as cached as long as its file existed: the report and the review page went on showing
    the old segmentation. A mosaic now carries its label map's source_key and is drawn again when that changes."""
    results = tmp_path / "results"
    shutil.copytree(run_dir, results, ignore=shutil.ignore_patterns("qc"))
    fast, full = OverlayRequest("example_fast", "liver"), OverlayRequest("example_full", "liver")
    ensure_overlays(results, [fast, full], workers=1)
    before = matplotlib.image.imread(fast.path(results))
    store = results / "labels.zarr"
    attributes = label_map_attributes(store, "example_full")
    kept = {k: v for k, v in attributes.items() if k not in ("affine", "spacing_mm", "source_key", "complete")}
    write_label_map(store, "example_fast", read_label_map(store, "example_full"), kept, "recomputed")
    after, = ensure_overlays(results, [fast], workers=1)
    assert after.problem is None
    redrawn = matplotlib.image.imread(fast.path(results))
    assert not np.array_equal(redrawn, before)
    assert np.array_equal(redrawn, matplotlib.image.imread(full.path(results)))  # same CT, now the same label map
    drawn = fast.path(results).stat().st_mtime_ns
    ensure_overlays(results, [fast], workers=1)
    assert fast.path(results).stat().st_mtime_ns == drawn  # and cached again
