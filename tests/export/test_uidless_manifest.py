"""`cohort manifest` on anonymised exports whose UIDs are blank (as in the shipped example): the
images without a SeriesInstanceUID in one folder are one candidate series, exactly the one
`cohort run` reads from that folder; folders the run cannot read as one series say why; the
pseudonyms are stable; and a manifest with no rows is reported as a failure, with the reasons."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.dataelem import RawDataElement
from pydicom.tag import Tag
from pydicom.uid import generate_uid

from cohort.export import build_manifest
from cohort.ingest import load_ct
from cohort.ingest.names import InputName
from cohort.manifest import load_manifest
from tests.export.conftest import JANE_LATER, JOHN, SECRETS, TEST_POLICY, coronal
from tests.export.pacs import Study, combined, example_slices, without_uids, write_series
from tests.testkit import cohort_cli

CHOSEN = "chosen: rank 1 of {n} eligible in the study by kernel_preference, thinnest, largest_coverage " \
         "(kernel Br38f, 3 mm, 40 mm coverage)"
AS_ONE = "geometry: {n} files without SeriesInstanceUID in one folder are read as one series: "


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def export(tmp_path_factory, examples: Path) -> Path:
    """Anonymised series, one folder each, and folders that are not one series without UIDs."""
    root = tmp_path_factory.mktemp("anonymised") / "export"
    slices = example_slices(examples)
    scan = {name: generate_uid() for name in ("p1", "p2", "planes", "kernels", "mixed", "raw", "odd")}
    write_series(root / "p1" / "ct", slices, Study(JANE_LATER), edit=without_uids(scan["p1"]))
    write_series(root / "p2" / "ct", slices, Study(JOHN), edit=without_uids(scan["p2"]))
    write_series(root / "p2" / "ct_bone", slices, Study(JOHN), kernel="Br64f", edit=without_uids(scan["p2"]))
    write_series(root / "planes", slices, Study(JOHN), edit=without_uids(scan["planes"]))  # axial and coronal
    write_series(root / "planes", slices, Study(JOHN), edit=combined(coronal, without_uids(scan["planes"])))
    write_series(root / "kernels", slices, Study(JOHN), edit=without_uids(scan["kernels"]))  # one grid twice
    write_series(root / "kernels", slices, Study(JOHN), kernel="Br64f", edit=without_uids(scan["kernels"]))
    write_series(root / "mixed", slices, Study(JOHN))  # a series with UIDs beside 10 images without
    write_series(root / "mixed", slices[::2], Study(JOHN), edit=without_uids(scan["mixed"]))
    write_series(root / "raw", slices, Study(JOHN), edit=without_uids(scan["raw"]))
    first = pydicom.dcmread(min((root / "raw").iterdir()))
    first.preamble = None  # GDCM (the run's grouping) reads it, pydicom (the crawl and the run) does not
    first.save_as(root / "raw" / "no_preamble.dcm", enforce_file_format=False)
    first.preamble = b"\0" * 128
    for tag in ("PixelData", "Rows", "Columns"):  # a DICOM object that is no image and has no UID
        delattr(first, tag)
    first.save_as(root / "report.dcm")
    write_series(root / "odd", slices, Study(JOHN), edit=combined(without_uids(scan["odd"]), malformed_top_kvp))
    return root


def malformed_top_kvp(ds: pydicom.Dataset, k: int) -> None:
    """KVP "abc" in the top slice: the crawl refuses that header, GDCM and the run's reader do not."""
    if k == 19:
        ds[Tag("KVP")] = RawDataElement(Tag("KVP"), "DS", 4, b"abc ", 0, False, True)


@pytest.fixture(scope="module")
def made(export: Path, tmp_path_factory):
    """`cohort manifest` with the test policy, its summary output and the files it used."""
    out = tmp_path_factory.mktemp("uidless")
    policy, key = out / "policy.yaml", tmp_path_factory.mktemp("keys") / "k.key"
    policy.write_text(TEST_POLICY)
    result = cohort_cli("manifest", "--dicom", str(export), "--out", str(out / "scans.csv"), "--policy", str(policy),
                        "--key", str(key), timeout=120)
    assert result.returncode == 0, result.stderr
    return out, policy, key, result


def test_each_folder_of_images_without_uid_is_one_candidate_series(made, export: Path) -> None:
    out, *_, result = made
    assert "9 series in 8 studies of 8 subjects; 3 chosen" in result.stderr, result.stderr
    index = pd.read_parquet(out / "scans.index.parquet")
    uidless = index[index["series_uid"].isna()].set_index("folder")
    assert uidless["reason"].to_dict() == {
        "p1/ct": CHOSEN.format(n=1),
        "p2/ct": CHOSEN.format(n=2),
        "p2/ct_bone": "ranked lower: rank 2 of 2 eligible in the study, 1 kept (kernel Br64f, 3 mm, 40 mm coverage)",
        "planes": AS_ONE.format(n=40) + "slices differ in orientation (ImageOrientationPatient); one series must "
                                        "have one",
        "kernels": AS_ONE.format(n=40) + "40 slices share 20 positions (duplicated slices or two series with one UID)",
        "mixed": "geometry: 10 files without SeriesInstanceUID in one folder lie beside 1 series with one; "
                 "`cohort run` cannot read them apart (move them to a folder of their own)",
        "odd": AS_ONE.format(n=19) + "`cohort run` reads 20 files of the folder as its series, not these 19 "
                                     f"(1 differ, e.g. {max((export / 'odd').iterdir()).name})",
        "raw": AS_ONE.format(n=20) + "raw (file 21 of 21): cannot read DICOM header (File is missing DICOM File "
                                     "Meta Information header or the 'DICM' prefix is missing from the header. Use "
                                     "force=True to force reading.)",
    }
    assert uidless.loc["p1/ct", ["n_instances", "z_coverage_mm", "slice_spacing_mm"]].tolist() == [20, 40.0, 2.0]
    with_uid = index[index["series_uid"].notna()]
    assert with_uid["folder"].tolist() == ["mixed"] and with_uid["selected"].tolist() == [True]
    assert with_uid["n_instances"].tolist() == [20]  # never merged with the 10 images without UID beside it
    # the series of one scan (one FrameOfReferenceUID) are one study of one subject, other scans are not
    assert uidless.loc["p2/ct", "study_key"] == uidless.loc["p2/ct_bone", "study_key"]
    assert uidless.loc["p2/ct", "subject_id"] == uidless.loc["p2/ct_bone", "subject_id"]
    assert len(set(uidless["subject_id"])) == 7 and len(set(index["series_id"])) == 9
    unreadable = pd.read_parquet(out / "scans.unreadable.parquet")
    assert dict(zip(unreadable["file"], unreadable["reason"])) == {
        "raw/no_preamble.dcm": "not DICOM (no DICM prefix)", "report.dcm": "no SeriesInstanceUID (not an image)",
        f"odd/{max((export / 'odd').iterdir()).name}": "malformed header value (ValueError)"}

    rows = {row["path"]: row for row in read_csv(out / "scans.csv")}
    assert set(rows) == {str(export / folder) for folder in ("p1/ct", "p2/ct", "mixed")}
    assert rows[str(export / "p1/ct")]["series_uid"] == rows[str(export / "p2/ct")]["series_uid"] == ""
    assert rows[str(export / "mixed")]["series_uid"] == with_uid["series_uid"].iloc[0]
    assert [(rows[str(export / f)]["age"], rows[str(export / f)]["sex"]) for f in ("p1/ct", "p2/ct")] == \
        [("65", "F"), ("52", "M")]  # PatientAge and PatientSex, kept by the anonymiser


def test_the_run_reads_each_row_as_the_series_the_index_describes(made, examples: Path) -> None:
    """Each row read as `cohort run` reads it (its path and series_uid, the run's loader) is the
    example CT the series was written from: the same voxels and affine."""
    out, *_ = made
    reference = load_ct(examples / "example_ct_dicom")
    specs = load_manifest(out / "scans.csv")
    assert len(specs) == 3 and sum(spec.series_uid is None for spec in specs) == 2
    for spec in specs:
        volume = load_ct(InputName.in_manifest(spec.path, spec.line), series_uid=spec.series_uid)
        assert volume.hu.shape == reference.hu.shape == (512, 512, 20)
        assert np.array_equal(volume.hu, reference.hu) and np.allclose(volume.affine, reference.affine)
    assert cohort_cli("check", "--manifest", str(out / "scans.csv")).returncode == 0


def test_pseudonyms_are_stable_and_nothing_identifying_is_written(made, export: Path, tmp_path: Path) -> None:
    out, policy, key, first = made
    before = (out / "scans.csv").read_bytes()
    again = build_manifest(export, out / "scans.csv", policy, key)  # from the crawl cache
    assert again.crawl.n_read == 0 and (out / "scans.csv").read_bytes() == before
    fresh = build_manifest(export, tmp_path / "scans.csv", policy, key)  # no cache: every header read again
    assert fresh.crawl.n_read == len(fresh.crawl.files)
    columns = ["folder", "series_id", "study_key", "subject_id"]
    indexed = [pd.read_parquet(folder / "scans.index.parquet")[columns].sort_values("folder", ignore_index=True)
               for folder in (out, tmp_path)]
    pd.testing.assert_frame_equal(*indexed)
    other = build_manifest(export, tmp_path / "other" / "scans.csv", policy, tmp_path / "other.key")
    assert other.n_chosen == 3
    renamed = pd.read_parquet(tmp_path / "other" / "scans.index.parquet")
    assert not set(renamed["series_id"]) & set(indexed[0]["series_id"])
    for path in (p for p in out.rglob("*") if p.is_file() and p.name != "policy.yaml"):
        for secret in SECRETS:
            assert secret.encode() not in path.read_bytes(), (path, secret)
    assert not any(secret in first.stderr for secret in SECRETS)


def test_the_shipped_example_is_one_series(examples: Path, tmp_path: Path) -> None:
    """The example's 20 files have blank UIDs; `cohort run` reads the folder as one series."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(TEST_POLICY)
    out = tmp_path / "out"
    summary = build_manifest(examples / "example_ct_dicom", out / "scans.csv", policy, tmp_path / "k.key")
    assert (summary.n_series, summary.n_chosen, summary.exit_code) == (1, 1, 0)
    [row] = read_csv(out / "scans.csv")
    assert (row["path"], row["series_uid"]) == (str(examples / "example_ct_dicom"), "")
    index = pd.read_parquet(out / "scans.index.parquet")
    assert index[["folder", "n_instances", "selected"]].values.tolist() == [[".", 20, True]]
    assert index["series_uid"].isna().all() and index["series_id"].iloc[0] == row["series_id"]


def test_nothing_chosen_is_a_failure_with_the_reasons(examples: Path, export: Path, tmp_path: Path) -> None:
    """The shipped policy (>= 30 slices) chooses none of these 20-slice series: a warning with the
    reasons, most common first, and exit code 1."""
    key = tmp_path / "k.key"
    summary = build_manifest(export, tmp_path / "out" / "scans.csv", key=key)
    assert (summary.n_chosen, summary.exit_code) == (0, 1)
    lines = summary.describe(tmp_path / "out" / "scans.csv")
    warning = lines.index("  warning: nothing chosen, scans.csv has no rows; why, most common first:")
    assert lines[warning + 1] == "    4 series: slices: 20 is below 30"
    assert [line.split(": ", 1)[0] for line in lines[warning + 2:-1]] == ["    1 series"] * 4
    assert lines[-1] == f"    ... and 1 more (see {tmp_path / 'out' / 'scans.index.parquet'})"

    result = cohort_cli("manifest", "--dicom", str(examples / "example_ct_dicom"), "--out",
                        str(tmp_path / "example" / "scans.csv"), "--key", str(key))
    message = " ".join(result.stderr.split())
    assert result.returncode == 1, result.stderr
    assert "1 series in 1 studies of 1 subjects; 0 chosen" in message, result.stderr
    assert "warning: nothing chosen, scans.csv has no rows; why, most common first: 1 series: slices: 20 is below " \
           "30" in message

    junk = tmp_path / "junk"
    junk.mkdir()
    for name in ("a.txt", "b.txt", "c.dcm"):
        (junk / name).write_text("not dicom")
    shutil.copy(export / "report.dcm", junk)
    lines = build_manifest(junk, tmp_path / "junk_out" / "scans.csv", key=key).describe(tmp_path / "scans.csv")
    assert lines[-3:] == ["  warning: nothing chosen, scans.csv has no rows; why, most common first:",
                          "    3 files: not DICOM (no DICM prefix)", "    1 file: no SeriesInstanceUID (not an image)"]
    empty = tmp_path / "empty"
    empty.mkdir()
    summary = build_manifest(empty, tmp_path / "empty_out" / "scans.csv", key=key)
    assert summary.exit_code == 1 and summary.describe(tmp_path / "scans.csv")[-1] == \
        "  warning: nothing chosen, scans.csv has no rows: the export folder holds no files"
