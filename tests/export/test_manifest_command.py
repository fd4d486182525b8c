"""`cohort manifest` on a PACS-like export: the series a researcher would pick, with auditable
reasons, pseudonyms that are stable and keyed, nothing identifying in any output, incremental
reruns, and `cohort run` on the result processing exactly the chosen series."""

from __future__ import annotations

import csv
import shutil
import stat
from pathlib import Path

import pandas as pd
import pytest

from cohort.errors import ConfigError, RunCannotStart
from cohort.export import build_manifest
from cohort.export.pseudonyms import KEY_ENV
from cohort.ingest.series_of_files import crawl_cache_path
from tests.export.conftest import JOHN, SECRETS, TEST_POLICY, Export
from tests.export.pacs import Study, example_slices, write_series
from tests.testkit import cohort_cli

EXPECTED_REASONS = {
    "soft": "chosen: rank 1 of 3 eligible in the study by kernel_preference, thinnest, largest_coverage "
            "(kernel Br38f, 3 mm, 40 mm coverage)",
    "thick": "ranked lower: rank 2 of 3 eligible in the study, 1 kept (kernel Br38f, 5 mm, 40 mm coverage)",
    "bone": "ranked lower: rank 3 of 3 eligible in the study, 1 kept (kernel Br64f, 3 mm, 40 mm coverage)",
    "localizer": "image type: ORIGINAL\\PRIMARY\\LOCALIZER is LOCALIZER",
    "derived": "image type: DERIVED\\SECONDARY\\AXIAL is DERIVED/SECONDARY",
    "split": "chosen: rank 1 of 1 eligible in the study by kernel_preference, thinnest, largest_coverage "
             "(kernel Br38f, 3 mm, 40 mm coverage)",
    "gap": "geometry: missing slice(s): a gap of 4 mm between positions -786.5 and -782.5 mm where the spacing is 2 mm",
    "mr": "modality: MR is not CT",
    "coronal": "orientation: coronal, 90.0 deg from axial (limit 10)",
    "slab": "slice thickness: 10 mm is outside 0.5-5 mm",
}


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def made(pacs_export: Export, tmp_path_factory):
    """`cohort manifest` run twice on the unchanged export (second: from the cache)."""
    out = tmp_path_factory.mktemp("manifest")
    policy = out / "policy.yaml"
    policy.write_text(TEST_POLICY)
    key = tmp_path_factory.mktemp("keys") / "cohort" / "pseudonym.key"
    args = ("manifest", "--dicom", str(pacs_export.root), "--out", str(out / "scans.csv"), "--policy", str(policy),
            "--key", str(key))
    first = cohort_cli(*args, timeout=120)
    copy = out / "first_scans.csv"
    shutil.copy(out / "scans.csv", copy)
    second = cohort_cli(*args, timeout=120)
    return out, key, first, second, copy


def test_manifest_picks_one_series_per_study_with_reasons(made, pacs_export: Export) -> None:
    out, _, first, _, _ = made
    assert first.returncode == 0, first.stderr
    assert "10 series in 3 studies of 2 subjects; 2 chosen" in first.stderr
    for line in ("rejected (ranked lower): 2", "rejected (image type): 2", "rejected (geometry): 1",
                 "rejected (modality): 1", "rejected (orientation): 1", "rejected (slice thickness): 1",
                 "unreadable files: 3", "headers read: 174 (174 new, 0 changed)"):
        assert line in first.stderr, first.stderr
    role = {uid: name for name, uid in pacs_export.uids.items()}
    index = pd.read_parquet(out / "scans.index.parquet")
    assert {role[uid]: reason for uid, reason in zip(index["series_uid"], index["reason"])} == EXPECTED_REASONS
    assert set(index.loc[index["selected"], "series_uid"]) == {pacs_export.uids["soft"], pacs_export.uids["split"]}
    by_role = index.set_index(index["series_uid"].map(role))
    assert by_role.loc["split", "folder"] == "B" and by_role.loc["thick", "folder"] == "A/mixed"
    assert by_role.loc["thick", "n_instances"] == 10 and by_role.loc["thick", "slice_spacing_mm"] == 4.0
    assert by_role.loc["soft", ["modality", "orientation", "kernel", "kvp", "contrast", "z_coverage_mm"]].tolist() == \
        ["CT", "axial", "Br38f", 120.0, True, 40.0]
    assert by_role.loc["localizer", "image_type"] == "ORIGINAL\\PRIMARY\\LOCALIZER"

    rows = {role[row["series_uid"]]: row for row in read_csv(out / "scans.csv")}
    assert set(rows) == {"soft", "split"}
    assert rows["soft"]["path"] == str(pacs_export.root / "A" / "ct_soft")
    assert rows["split"]["path"] == str(pacs_export.root / "B")  # split over B/series_part1 and B/series_part2
    assert rows["soft"]["age"] == "64"  # 1958-03-12 to 2022-12-08, no PatientAge: completed years
    assert rows["split"]["age"] == "65"  # PatientAge 065Y
    assert rows["soft"]["sex"] == rows["split"]["sex"] == "F"
    assert rows["soft"]["subject_id"] == rows["split"]["subject_id"]  # a repeat study of one person
    assert by_role.loc["mr", "subject_id"] != rows["soft"]["subject_id"]
    assert rows["soft"]["scanner"] == "SIEMENS Biograph40_mCT 4R" and rows["soft"]["contrast"] == "yes"
    unreadable = pd.read_parquet(out / "scans.unreadable.parquet")
    assert dict(zip(unreadable["file"], unreadable["reason"])) == {
        "C/junk.dcm": "not DICOM (no DICM prefix)", "README.txt": "not DICOM (no DICM prefix)",
        "C/truncated.dcm": "truncated (compressed pixel data has no end)"}


def test_no_identifier_in_any_output_or_log(made) -> None:
    out, _, first, second, _ = made
    outputs = [path for path in out.rglob("*") if path.is_file() and path.name != "policy.yaml"]
    assert {path.name for path in outputs} >= {"scans.csv", "scans.index.parquet", "scans.unreadable.parquet",
                                                "scans.crawl.parquet"}
    blobs = [path.read_bytes() for path in outputs] + [(r.stdout + r.stderr).encode() for r in (first, second)]
    for blob in blobs:
        for secret in SECRETS:
            assert secret.encode() not in blob, secret


def test_pseudonyms_are_keyed_and_stable_and_reruns_use_the_cache(made, pacs_export: Export, tmp_path: Path) -> None:
    out, key, _, second, first_manifest = made
    assert second.returncode == 0 and "headers read: 0 (0 new, 0 changed), 0 gone" in second.stderr, second.stderr
    assert (out / "scans.csv").read_bytes() == first_manifest.read_bytes()
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and not key.is_relative_to(out)

    # a grown export, the same key: old pseudonyms kept, only the new files read
    export = tmp_path / "export"
    shutil.copytree(pacs_export.root, export)
    write_series(export / "D", example_slices(Path(__file__).parents[2] / "cohort" / "examples"), Study(JOHN))
    shutil.copy(out / "scans.crawl.parquet", tmp_path / "scans.crawl.parquet")  # paths are relative to the root
    policy = out / "policy.yaml"
    grown = build_manifest(export, tmp_path / "scans.csv", policy, key)
    assert (grown.crawl.n_read, grown.crawl.n_new, grown.n_chosen) == (20, 20, 3)
    before = {row["series_uid"]: row["series_id"] for row in read_csv(first_manifest)}
    after = {row["series_uid"]: row["series_id"] for row in read_csv(tmp_path / "scans.csv")}
    assert before.items() <= after.items()

    # another key: other pseudonyms, and the cache (made with the first key) is not used
    other = build_manifest(export, tmp_path / "other" / "scans.csv", policy, tmp_path / "keys" / "other.key")
    assert other.crawl.n_read == len(other.crawl.files)
    renamed = {row["series_uid"]: row["series_id"] for row in read_csv(tmp_path / "other" / "scans.csv")}
    assert renamed.keys() == after.keys() and not set(renamed.values()) & set(after.values())


def test_shipped_policy_and_policy_errors(pacs_export: Export, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(KEY_ENV, str(tmp_path / "key"))
    summary = build_manifest(pacs_export.root, tmp_path / "out" / "scans.csv", workers=2)
    assert summary.n_chosen == 0  # the shipped policy asks for >= 30 slices and 100 mm
    index = pd.read_parquet(tmp_path / "out" / "scans.index.parquet").set_index("series_uid")
    assert index.loc[pacs_export.uids["soft"], "reason"] == "slices: 20 is below 30"
    bad = tmp_path / "bad.yaml"
    bad.write_text(TEST_POLICY.replace("kernel_preference:", "kernel_preferences:"))
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown key 'kernel_preferences'"):
        build_manifest(pacs_export.root, tmp_path / "scans.csv", bad)
    bad.write_text(TEST_POLICY.replace("thinnest", "cheapest"))
    with pytest.raises(ConfigError, match=r"key 'tie_break' has unknown entry 'cheapest'"):
        build_manifest(pacs_export.root, tmp_path / "scans.csv", bad)
    with pytest.raises(RunCannotStart, match="pseudonym key .* lies inside the output folder"):
        build_manifest(pacs_export.root, tmp_path / "out" / "scans.csv", key=tmp_path / "out" / "k.key")


def test_cohort_run_processes_exactly_the_chosen_series(made, examples: Path, tmp_path: Path,
                                                        prefect_server: str) -> None:
    out, *_ = made
    rows = read_csv(out / "scans.csv")
    manifest = tmp_path / "scans.csv"
    with manifest.open("w", newline="") as handle:  # the example's label map: no segmentation model needed
        writer = csv.DictWriter(handle, fieldnames=[*rows[0], "labels"])
        writer.writeheader()
        writer.writerows({**row, "labels": str(examples / "example_seg_dicom.nii.gz")} for row in rows)
    shutil.copy(crawl_cache_path(out / "scans.csv"), crawl_cache_path(manifest))  # workers learn the files' series
    results = tmp_path / "results"
    done = cohort_cli("run", "--manifest", str(manifest), "--out", str(results), api=prefect_server)
    assert done.returncode == 0, done.stderr
    series = pd.read_parquet(results / "series")
    assert sorted(series["series_id"]) == sorted(row["series_id"] for row in rows)
    assert (series["status"] == "done").all()
    assert {dict(pairs)["kernel"] for pairs in series["covariates"]} == {"Br38f"}
    for path in (p for p in results.rglob("*") if p.is_file()):
        for secret in SECRETS:
            assert secret.encode() not in path.read_bytes(), (path, secret)


def test_cohort_check_accepts_the_generated_manifest(made) -> None:
    """`cohort check` reads each row's series by its `series_uid` (split over sub-folders or
    beside other series) and checks its geometry from the headers, as `cohort run` will."""
    out, *_ = made
    result = cohort_cli("check", "--manifest", str(out / "scans.csv"))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("module", ["cohort.export.pseudonyms", "cohort.export.crawl", "cohort.ingest.dicom",
                                    "cohort.export.dixon", "cohort.ingest.volume", "cohort.export.contrast"])
def test_docstring_examples(module: str) -> None:
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(module))
    assert result.attempted and not result.failed


def test_one_patient_id_of_two_issuers_is_two_subjects(examples: Path, tmp_path: Path, tmp_path_factory) -> None:
    """A merged export of two hospitals that both have a patient 12345 (IssuerOfPatientID tells them
    apart) made them one subject: one of them silently left out of a per-subject analysis."""
    from cohort.export.pseudonyms import PseudonymKey, load_or_create_key
    from tests.export.conftest import JANE

    def issued_by(issuer: str):
        def edit(ds, k: int) -> None:
            ds.PatientID = "12345"
            if issuer:
                ds.IssuerOfPatientID = issuer
            elif "IssuerOfPatientID" in ds:  # the example's slices name one
                del ds.IssuerOfPatientID
        return edit

    slices = example_slices(examples)
    root = tmp_path / "export"
    uids = {name: write_series(root / name, slices, Study(JANE), edit=issued_by(issuer))
            for name, issuer in [("a1", "SITE-A"), ("a2", "SITE-A"), ("b", "SITE-B"), ("none", "")]}
    out = tmp_path / "manifest"
    out.mkdir()
    (out / "policy.yaml").write_text(TEST_POLICY)
    key_file = tmp_path_factory.mktemp("keys") / "k.key"
    summary = build_manifest(root, out / "scans.csv", out / "policy.yaml", key=key_file)
    assert "  PatientIDs of several subjects: 1 (their IssuerOfPatientID differs" in "\n".join(
        summary.describe(out / "scans.csv"))
    subject = pd.read_parquet(out / "scans.index.parquet").set_index("series_uid")["subject_id"]
    assert subject[uids["a1"]] == subject[uids["a2"]]
    assert len({subject[uids["a1"]], subject[uids["b"]], subject[uids["none"]]}) == 3
    key: PseudonymKey = load_or_create_key(key_file, out)
    assert subject[uids["none"]] == key.pseudonym("sub", "12345")  # without an issuer: as before


def test_age_cap_writes_the_oldest_ages_as_the_cap(examples: Path, tmp_path: Path, tmp_path_factory) -> None:
    """`cohort manifest --age-cap 90` (HIPAA's safe harbour: ages over 89 are one category, 90+):
    a 94-year-old's age is 90 in the manifest and the index, a 72-year-old's stays, the summary
    counts the capped series; without the option ages are written as they are."""
    from tests.export.pacs import Patient

    slices = example_slices(examples)  # scanned on 2022-12-08
    root = tmp_path / "export"
    old = write_series(root / "old", slices, Study(Patient("OLD^ONE", "P-OLD", "19280301")))
    younger = write_series(root / "younger", slices, Study(Patient("YOUNG^ONE", "P-YOUNG", "19500301")))
    out = tmp_path / "manifest"
    out.mkdir()
    (out / "policy.yaml").write_text(TEST_POLICY)
    key_file = tmp_path_factory.mktemp("keys") / "k.key"
    result = cohort_cli("manifest", "--dicom", str(root), "--out", str(out / "scans.csv"), "--policy",
                        str(out / "policy.yaml"), "--key", str(key_file), "--age-cap", "90", timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ages of 90 and over written as 90 (--age-cap): 1 series" in result.stdout + result.stderr
    ages = {row["series_uid"]: row["age"] for row in read_csv(out / "scans.csv")}
    assert ages == {old: "90", younger: "72"}
    index = pd.read_parquet(out / "scans.index.parquet").set_index("series_uid")["age"]
    assert index[old] == 90 and index[younger] == 72
    uncapped = build_manifest(root, out / "scans.csv", out / "policy.yaml", key=key_file)
    assert uncapped.n_ages_capped == 0 and {row["age"] for row in read_csv(out / "scans.csv")} == {"94", "72"}
    refused = cohort_cli("manifest", "--dicom", str(root), "--out", str(out / "scans.csv"), "--key", str(key_file),
                         "--age-cap", "0", timeout=300)
    assert refused.returncode == 2 and "--age-cap 0: must be a positive number of years" in refused.stdout + refused.stderr
