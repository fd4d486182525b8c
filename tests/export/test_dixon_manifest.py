"""`cohort manifest` on a Dixon MR export: acquisitions paired by grid, rows with their fat and
water series, auditable reasons, and `cohort run` measuring a planted fat fraction through them.

The export is written with pydicom from the example's slices (4x fewer pixels per side, 16-bit MR
signal): each acquisition's in-phase image is the signal s, fat round(0.2 s), water round(0.8 s),
opposed-phase |water - fat|; so every structure's fat fraction is 0.2 whatever the random network
labels.
"""

from __future__ import annotations

import copy
import csv
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
import yaml
from pydicom.uid import ExplicitVRLittleEndian

from cohort.config import CONFIG_DIR
from cohort.errors import ConfigError, SeriesError
from cohort.export.policy import load_policy
from cohort.segmentation import load_model_spec
from cohort.testing.weights import build_weights
from tests.export.conftest import JANE, JOHN, TEST_POLICY
from tests.export.pacs import Patient, Study, example_slices, write_series
from tests.testkit import cohort_cli

FAT_FRACTION = 0.2
SIEMENS = {"in_phase": "ORIGINAL\\PRIMARY\\DIXON\\IN_PHASE", "opposed_phase": "ORIGINAL\\PRIMARY\\DIXON\\OPP_PHASE",
           "water": "DERIVED\\PRIMARY\\DIXON\\WATER", "fat": "DERIVED\\PRIMARY\\DIXON\\FAT"}
UK_BIOBANK = {"in_phase": "Dixon_BH_17s_in", "opposed_phase": "Dixon_BH_17s_opp", "water": "Dixon_BH_17s_W",
              "fat": "Dixon_BH_17s_F"}
ANNE = Patient("ROE^ANNE", "PID-777001", "19660101", sex="F", age="058Y")


def mr_slices(examples: Path, role: str) -> list[pydicom.Dataset]:
    """The example's slices as one Dixon image of ``role``: uncompressed uint16, 4x coarser in-plane."""
    slices = []
    for source in example_slices(examples):
        ds = copy.deepcopy(source)
        hu = ds.pixel_array[::4, ::4].astype(float) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        signal = np.clip(hu + 1000.0, 0.0, 3000.0)
        fat, water = np.round(FAT_FRACTION * signal), np.round((1 - FAT_FRACTION) * signal)
        image = {"in_phase": signal, "fat": fat, "water": water, "opposed_phase": np.abs(water - fat)}[role]
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.Rows, ds.Columns = image.shape
        ds.PixelSpacing = [float(value) * 4 for value in ds.PixelSpacing]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleSlope, ds.RescaleIntercept = 1, 0
        ds.PixelData = np.round(image).astype(np.uint16).tobytes()
        for tag in ("RescaleType", "WindowCenter", "WindowWidth"):
            if tag in ds:
                delattr(ds, tag)
        slices.append(ds)
    return slices


def dixon_series(folder: Path, slices: dict[str, list[pydicom.Dataset]], study: Study, roles: tuple[str, ...],
                 image_types: dict[str, str] | None = None, descriptions: dict[str, str] | None = None,
                 count: int = 20) -> dict[str, str]:
    """One acquisition: a series per role (Siemens ImageType, or UK Biobank descriptions); role -> UID."""
    return {role: write_series(folder if descriptions else folder / role, slices[role][:count], study, modality="MR",
                               image_type=(image_types or {}).get(role, "ORIGINAL\\PRIMARY\\M\\ND"),
                               description=(descriptions or {}).get(role, "t1_vibe_dixon_tra"), kernel="",
                               thickness=2.0)
            for role in roles}


@pytest.fixture(scope="module")
def dixon_export(tmp_path_factory, examples: Path) -> tuple[Path, dict[str, dict[str, str]]]:
    root = tmp_path_factory.mktemp("dixon") / "export"
    slices = {role: mr_slices(examples, role) for role in SIEMENS}
    jane, john, anne = Study(JANE), Study(JOHN), Study(ANNE)
    uids = {
        # Siemens: a full acquisition, a shorter one (another grid: ranked lower), a localizer
        "jane": dixon_series(root / "jane" / "station1", slices, jane, tuple(SIEMENS), SIEMENS),
        "jane_short": dixon_series(root / "jane" / "station2", slices, jane, ("in_phase", "fat", "water"), SIEMENS,
                                   count=14),
        "jane_scout": {"localizer": write_series(root / "jane" / "scout", slices["in_phase"][:3], jane, modality="MR",
                                                 image_type="ORIGINAL\\PRIMARY\\LOCALIZER", kernel="")},
        # UK Biobank: roles in the descriptions only, all four series in one folder
        "john": dixon_series(root / "john" / "dixon", slices, john, tuple(SIEMENS), descriptions=UK_BIOBANK),
        # two water series on one grid: which fat goes with which water cannot be told
        "anne": dixon_series(root / "anne" / "a", slices, anne, ("in_phase", "fat", "water"), SIEMENS),
        "anne_again": dixon_series(root / "anne" / "b", slices, anne, ("water",), SIEMENS),
    }
    return root, uids


def small_series_policy(folder: Path) -> Path:
    """The shipped Dixon policy with limits for the example's 20 slices of 2 mm."""
    settings = yaml.safe_load((CONFIG_DIR / "selection_dixon.yaml").read_text())
    settings.update(min_slices=8, min_z_coverage_mm=15)
    path = folder / "policy.yaml"
    path.write_text(yaml.safe_dump(settings))
    return path


@pytest.fixture(scope="module")
def made(dixon_export, tmp_path_factory) -> tuple[Path, list[dict], pd.DataFrame]:
    root, _ = dixon_export
    out = tmp_path_factory.mktemp("manifest")
    key = tmp_path_factory.mktemp("keys") / "pseudonym.key"
    done = cohort_cli("manifest", "--dicom", str(root), "--out", str(out / "scans.csv"), "--policy",
                      str(small_series_policy(out)), "--key", str(key), timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    with (out / "scans.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    return out, rows, pd.read_parquet(out / "scans.index.parquet").set_index("series_uid")


def test_each_complete_acquisition_is_a_row_with_its_fat_and_water(made, dixon_export) -> None:
    out, rows, _ = made
    _, uids = dixon_export
    by_image = {row["series_uid"]: row for row in rows}
    assert set(by_image) == {uids["jane"]["in_phase"], uids["john"]["in_phase"]}
    jane, john = by_image[uids["jane"]["in_phase"]], by_image[uids["john"]["in_phase"]]
    assert (jane["fat_series_uid"], jane["water_series_uid"]) == (uids["jane"]["fat"], uids["jane"]["water"])
    assert (john["fat_series_uid"], john["water_series_uid"]) == (uids["john"]["fat"], uids["john"]["water"])
    assert Path(jane["path"]).name == "in_phase" and Path(jane["fat"]).name == "fat"
    assert jane["path"] != jane["fat"] and john["path"] == john["fat"] == john["water"]  # one folder: by UID
    assert (jane["sex"], john["sex"]) == ("F", "M")


def test_every_other_series_says_why(made, dixon_export) -> None:
    _, _, index = made
    _, uids = dixon_export
    reasons = index["reason"].to_dict()
    assert reasons[uids["jane"]["fat"]] == f"chosen: the fat image beside in_phase series {uids['jane']['in_phase']}"
    assert index.loc[uids["jane"]["fat"], "selected"] and index.loc[uids["jane"]["water"], "selected"]
    assert reasons[uids["jane"]["opposed_phase"]] == "dixon: the opposed_phase image is not used (rows take " \
                                                     "in_phase, fat, water)"
    assert reasons[uids["jane_short"]["in_phase"]].startswith("ranked lower: rank 2 of 2 eligible in the study")
    assert reasons[uids["jane_short"]["water"]].startswith("ranked lower: the water image beside")
    assert reasons[uids["jane_scout"]["localizer"]].startswith("image type:")
    for role in ("in_phase", "fat", "water"):
        assert reasons[uids["anne"][role]].startswith("dixon: 2 water series on this grid")
    assert not index.loc[[uids["anne"]["in_phase"], uids["jane"]["opposed_phase"]], "selected"].any()


def test_cohort_check_reads_the_companions_by_their_series_uid(made) -> None:
    out, _, _ = made
    result = cohort_cli("check", "--manifest", str(out / "scans.csv"), "--model", "total_mr")
    assert result.returncode == 0, result.stdout + result.stderr


def test_cohort_run_measures_the_planted_fat_fraction(made, tmp_path: Path, prefect_server: str) -> None:
    out, rows, _ = made
    weights = tmp_path / "weights"
    build_weights(load_model_spec("total_mr"), weights, "small", seed=2)
    results = tmp_path / "results"
    done = cohort_cli("run", "--manifest", str(out / "scans.csv"), "--out", str(results), "--model", "total_mr",
                      "--weights", str(weights), "--workers", "1", api=prefect_server, timeout=600)
    assert done.returncode == 0, done.stderr
    assert (pd.read_parquet(results / "series")["status"] == "done").all()
    features = pd.read_parquet(results / "features")
    measured = features[features["status"] != "absent"]
    assert set(measured["series_id"]) == {row["series_id"] for row in rows}
    assert measured["fat_fraction"].notna().all()
    assert np.allclose(measured["fat_fraction"], FAT_FRACTION, atol=0.005)


def test_a_dixon_policy_is_checked_on_load(tmp_path: Path) -> None:
    settings = yaml.safe_load((CONFIG_DIR / "selection_dixon.yaml").read_text())
    assert load_policy(Path("selection_dixon.yaml")).dixon.needed == ("in_phase", "fat", "water")
    for change, message in [({"image": "t2"}, "key 'dixon.image' must be one of"),
                            ({"fat": {"image_type": [], "description": []}}, "key 'dixon.fat' needs"),
                            ({"water": {"description": ["(unclosed"]}}, "'dixon.water.description' entry"),
                            ({"water": {"colour": ["blue"]}}, "unknown key 'dixon.water.colour'")]:
        path = tmp_path / "policy.yaml"
        path.write_text(yaml.safe_dump({**settings, "dixon": {**settings["dixon"], **change}}))
        with pytest.raises(ConfigError, match=message):
            load_policy(path)


def test_the_water_image_can_be_the_one_segmented(dixon_export, tmp_path: Path, tmp_path_factory) -> None:
    from cohort.export import build_manifest

    root, uids = dixon_export
    policy = small_series_policy(tmp_path)
    settings = yaml.safe_load(policy.read_text())
    settings["dixon"]["image"] = "water"
    policy.write_text(yaml.safe_dump(settings))
    build_manifest(root, tmp_path / "scans.csv", policy, key=tmp_path_factory.mktemp("keys") / "k.key")
    with (tmp_path / "scans.csv").open(newline="") as handle:
        jane = next(row for row in csv.DictReader(handle) if row["series_uid"] == uids["jane"]["water"])
    assert jane["water_series_uid"] == jane["series_uid"] and jane["fat_series_uid"] == uids["jane"]["fat"]
    index = pd.read_parquet(tmp_path / "scans.index.parquet").set_index("series_uid")
    assert index.loc[uids["jane"]["in_phase"], "reason"] == "dixon: the in_phase image is not used (rows take " \
                                                            "water, fat)"


def test_a_fat_image_of_another_study_or_scan_on_the_same_grid_is_refused(dixon_export, examples: Path,
                                                                           tmp_path: Path) -> None:
    """A hand-written row pairing this visit's in-phase image with a fat image of another visit (same
    protocol, so the same grid) passed every check and gave fat fractions of two visits, silently."""
    from cohort.check import check_manifest
    from cohort.config import IngestConfig
    from cohort.ingest import load_ct
    from cohort.manifest import read_manifest
    from cohort.pipeline import load_dixon

    root, uids = dixon_export
    slices = {role: mr_slices(examples, role) for role in ("fat", "water")}
    other_visit = dixon_series(tmp_path / "visit2", slices, Study(JANE, date="20231208"), ("fat",), SIEMENS)["fat"]
    moved = dixon_series(tmp_path / "moved", slices, Study(JANE, uid=_study_uid(root / "jane" / "station1" / "fat")),
                         ("fat",), SIEMENS)
    for ds_file in (tmp_path / "moved" / "fat").iterdir():  # the same study, the patient repositioned
        ds = pydicom.dcmread(ds_file)
        ds.FrameOfReferenceUID = "1.2.826.0.1.3680043.8.498.4242"
        ds.save_as(ds_file)
    station = root / "jane" / "station1"
    rows = [f"s{k},{station / 'in_phase'},{uids['jane']['in_phase']},{fat},{fat_uid},{station / 'water'},"
            f"{uids['jane']['water']}"
            for k, (fat, fat_uid) in enumerate([(station / "fat", uids["jane"]["fat"]),
                                                (tmp_path / "visit2" / "fat", other_visit),
                                                (tmp_path / "moved" / "fat", moved["fat"])], 1)]
    manifest = tmp_path / "scans.csv"
    manifest.write_text("series_id,path,series_uid,fat,fat_series_uid,water,water_series_uid\n" + "\n".join(rows) + "\n")
    problems = check_manifest(manifest, "MR").problems
    assert [(p.series_id, p.column) for p in problems] == [("s2", "fat"), ("s3", "fat")]
    assert "fat image is from another study (its StudyInstanceUID differs)" in problems[0].reason
    assert "from another scan of the study (its FrameOfReferenceUID differs" in problems[1].reason
    specs = read_manifest(manifest).specs
    volume = load_ct(station / "in_phase", series_uid=uids["jane"]["in_phase"], modality="MR")
    assert load_dixon(specs[0], volume, IngestConfig()) is not None
    for spec, wording in ((specs[1], "another study"), (specs[2], "another scan of the study")):
        with pytest.raises(SeriesError, match=f"fat image is from {wording}"):
            load_dixon(spec, volume, IngestConfig())


def test_a_series_whose_slices_name_two_frames_of_reference_is_refused(examples: Path, tmp_path: Path,
                                                                       tmp_path_factory) -> None:
    """Two scans written under one SeriesInstanceUID at interleaved positions look like one evenly
    spaced stack; their frames of reference tell them apart."""
    from cohort.ingest import load_ct

    def second_scan(ds: pydicom.Dataset, k: int) -> None:
        if k % 2:
            ds.FrameOfReferenceUID = "1.2.826.0.1.3680043.8.498.4243"

    uid = write_series(tmp_path / "export" / "ct", example_slices(examples), Study(JANE), edit=second_scan)
    with pytest.raises(SeriesError, match=r"slices of 2 frames of reference \(FrameOfReferenceUID\) under one series"):
        load_ct(tmp_path / "export" / "ct")
    index = _index_of(tmp_path / "export", tmp_path / "manifest", tmp_path_factory)
    assert index.loc[uid, "reason"] == ("geometry: slices of 2 frames of reference (FrameOfReferenceUID) under one "
                                        "series UID: two scans mixed into one volume; refused")
    assert not index.loc[uid, "selected"]


def test_a_series_whose_slice_lacks_its_study_uid_is_one_study(examples: Path, tmp_path: Path,
                                                               tmp_path_factory) -> None:
    """Ingest judges a series' studies by the slices that name one; the index took a blank
    StudyInstanceUID's stand-in (the series' UID) for a second study and refused, as two scans
    mixed, a series that ingest reads."""
    from cohort.ingest import load_ct

    def blank_study(ds: pydicom.Dataset, k: int) -> None:
        if k == 0:
            del ds.StudyInstanceUID

    uid = write_series(tmp_path / "export" / "ct", example_slices(examples), Study(JANE), edit=blank_study)
    assert load_ct(tmp_path / "export" / "ct").hu.shape[2] == 20
    index = _index_of(tmp_path / "export", tmp_path / "manifest", tmp_path_factory)
    assert index.loc[uid, "selected"], index.loc[uid, "reason"]


def _index_of(export: Path, out: Path, tmp_path_factory) -> pd.DataFrame:
    """``scans.index.parquet`` of `cohort manifest` on ``export`` with the test policy, by series UID."""
    from cohort.export import build_manifest

    out.mkdir()
    (out / "policy.yaml").write_text(TEST_POLICY)
    build_manifest(export, out / "scans.csv", out / "policy.yaml", key=tmp_path_factory.mktemp("keys") / "k.key")
    return pd.read_parquet(out / "scans.index.parquet").set_index("series_uid")


def _study_uid(folder: Path) -> str:
    return str(pydicom.dcmread(next(folder.iterdir()), stop_before_pixels=True).StudyInstanceUID)


def test_dixon_series_are_paired_within_one_scan_not_across_scans_on_one_grid(examples: Path, tmp_path: Path,
                                                                              tmp_path_factory) -> None:
    """The series of one study on one grid were one acquisition whatever their FrameOfReferenceUID:
    an in-phase image of one scan became a row with the fat and water images of a repeat scan (the
    patient repositioned: ``cohort run`` then fails the row), and two complete scans on one grid were
    refused as ambiguous although their frames of reference tell them apart."""
    from cohort.export import build_manifest

    slices = {role: mr_slices(examples, role) for role in SIEMENS}
    export = tmp_path / "export"

    def scan(name: str, study: Study, roles: tuple[str, ...], frame: str) -> dict[str, str]:
        uids = dixon_series(export / name, slices, study, roles, SIEMENS)
        for role in roles:
            for path in (export / name / role).iterdir():
                ds = pydicom.dcmread(path)
                ds.FrameOfReferenceUID = frame
                ds.save_as(path)
        return uids

    jane, john = Study(JANE), Study(JOHN)
    split = {**scan("jane1", jane, ("in_phase", "opposed_phase"), "1.2.826.0.1.3680043.8.498.51"),
             **scan("jane2", jane, ("fat", "water"), "1.2.826.0.1.3680043.8.498.52")}
    first = scan("john1", john, ("in_phase", "fat", "water"), "1.2.826.0.1.3680043.8.498.61")
    repeat = scan("john2", john, ("in_phase", "fat", "water"), "1.2.826.0.1.3680043.8.498.62")
    (tmp_path / "manifest").mkdir()
    build_manifest(export, tmp_path / "manifest" / "scans.csv", small_series_policy(tmp_path / "manifest"),
                   key=tmp_path_factory.mktemp("keys") / "k.key")
    with (tmp_path / "manifest" / "scans.csv").open(newline="") as handle:
        rows = {row["series_uid"]: row for row in csv.DictReader(handle)}
    index = pd.read_parquet(tmp_path / "manifest" / "scans.index.parquet").set_index("series_uid")
    assert split["in_phase"] not in rows
    assert index.loc[split["in_phase"], "reason"].startswith("dixon: no fat or water series")
    (john_row,) = [row for uid, row in rows.items() if uid in (first["in_phase"], repeat["in_phase"])]
    scan_of_row = first if john_row["series_uid"] == first["in_phase"] else repeat
    assert (john_row["fat_series_uid"], john_row["water_series_uid"]) == (scan_of_row["fat"], scan_of_row["water"])


def _philips_scale_slope(slope: float | list[float]):
    """An edit giving each slice Philips' private scale slope (2005,100E) in its private block."""
    def edit(ds: pydicom.Dataset, k: int) -> None:
        block = ds.private_block(0x2005, "Philips MR Imaging DD 001", create=True)
        block.add_new(0x0E, "FL", slope[k] if isinstance(slope, list) else slope)
    return edit


def test_philips_fat_and_water_images_scaled_differently_are_refused(examples: Path, tmp_path: Path) -> None:
    """Philips writes each MR image's values for display, scaled by RescaleSlope x its private scale
    slope (2005,100E). Fat and water images with different factors (or slices with different ones)
    gave fat fractions of display values, off by the factors' ratio, silently; ``cohort check`` says so
    from the headers."""
    from cohort.check import check_manifest
    from cohort.config import IngestConfig
    from cohort.ingest import load_ct
    from cohort.manifest import read_manifest
    from cohort.pipeline import load_dixon

    slices = {role: mr_slices(examples, role)[:12] for role in ("in_phase", "fat", "water")}
    study = Study(JANE)
    image = write_series(tmp_path / "in_phase", slices["in_phase"], study, modality="MR", kernel="")
    cases = {"same": (2.5, 2.5), "other": (2.5, 4.0), "per_slice": ([2.5] * 6 + [3.0] * 6, [2.5] * 6 + [3.0] * 6)}
    rows = []
    for case, (fat_slope, water_slope) in cases.items():
        uids = {role: write_series(tmp_path / case / role, slices[role], study, modality="MR", kernel="",
                                   edit=_philips_scale_slope(slope))
                for role, slope in (("fat", fat_slope), ("water", water_slope))}
        rows.append(f"{case},{tmp_path / 'in_phase'},{image},{tmp_path / case / 'fat'},{uids['fat']},"
                    f"{tmp_path / case / 'water'},{uids['water']}")
    manifest = tmp_path / "scans.csv"
    manifest.write_text("series_id,path,series_uid,fat,fat_series_uid,water,water_series_uid\n" + "\n".join(rows) + "\n")
    problems = check_manifest(manifest, "MR").problems
    assert [(p.series_id, p.column) for p in problems] == [("other", "fat"), ("per_slice", "fat")]
    assert "scaled differently for display" in problems[0].reason and "2.5 and 4" in problems[0].reason
    specs = {spec.series_id: spec for spec in read_manifest(manifest).specs}
    volume = load_ct(tmp_path / "in_phase", modality="MR")
    dixon = load_dixon(specs["same"], volume, IngestConfig())
    assert 0.19 < float(dixon.fat.sum() / (dixon.fat.sum() + dixon.water.sum())) < 0.21
    with pytest.raises(SeriesError, match=r"<fat of line 3>: the fat and water images are scaled differently "
                                          r"for display \(Philips RescaleSlope x scale slope \(2005,100E\): 2.5 and 4\)"):
        load_dixon(specs["other"], volume, IngestConfig())
    with pytest.raises(SeriesError, match=r"its slices are scaled differently for display .*: 2.5, 3\)"):
        load_dixon(specs["per_slice"], volume, IngestConfig())


@pytest.mark.parametrize("implicit", [False, True])
def test_philips_scale_slope_is_read_in_either_transfer_syntax(examples: Path, tmp_path: Path, implicit: bool) -> None:
    """Read without its VR (implicit VR little endian), the private FL element arrives as 4 bytes."""
    from pydicom.uid import ImplicitVRLittleEndian

    from cohort.ingest.dicom import _read_header, philips_precise_scale
    from cohort.ingest.names import InputName

    ds = mr_slices(examples, "fat")[0]
    _philips_scale_slope(0.125)(ds, 0)
    ds.RescaleSlope = 2
    if implicit:
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    ds.save_as(tmp_path / "slice.dcm", enforce_file_format=True)
    assert philips_precise_scale(_read_header(InputName.of(tmp_path / "slice.dcm"))) == 0.25
    other_vendor = pydicom.dcmread(tmp_path / "slice.dcm")
    other_vendor[0x20050010].value = "SOME OTHER VENDOR"
    assert philips_precise_scale(other_vendor) is None
