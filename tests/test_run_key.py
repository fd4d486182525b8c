"""Runs that never mix, and kills that lose only what was in flight: the run key, the input
fingerprint, label maps reused from Zarr, and a ledger verified against the disk on start.

Every case runs the real CLI (Prefect flow, local Dask cluster) on rows segmented by small
random-weight networks in TotalSegmentator's layout, plus one row with precomputed labels.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cohort.provenance import load_content_key, series_uid_digest
from cohort.segmentation import load_model_spec
from cohort.testing.weights import build_weights
from testkit import cli_env, cohort_cli, mounted_tmpfs, write_manifest

SEGMENTED = ["crop_a", "crop_b"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, examples: Path) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("run_key")
    weights = folder / "weights"
    build_weights(load_model_spec("fast"), weights, "small", seed=5)
    other_weights = folder / "other_weights"
    build_weights(load_model_spec("fast"), other_weights, "small", seed=6)
    ct = nib.load(str(examples / "example_ct_sm.nii.gz"))
    nib.save(ct.slicer[30:90, 20:80, :], str(folder / "crop_a.nii.gz"))
    nib.save(ct.slicer[20:80, 30:90, :], str(folder / "crop_b.nii.gz"))
    shutil.copy(examples / "example_ct_sm.nii.gz", folder / "ct.nii.gz")
    shutil.copy(examples / "example_seg_fast.nii.gz", folder / "seg.nii.gz")
    rows = [{"series_id": "crop_a", "path": "crop_a.nii.gz", "age": 60, "sex": "M"},
            {"series_id": "crop_b", "path": "crop_b.nii.gz", "age": 70, "sex": "F"},
            {"series_id": "labelled", "path": "ct.nii.gz", "labels": "seg.nii.gz", "age": 50, "sex": "F"}]
    manifest = write_manifest(folder / "scans.csv", rows)
    return {"folder": folder, "weights": weights, "other_weights": other_weights, "manifest": manifest}


@pytest.fixture(scope="module")
def reference(inputs: dict[str, Path], prefect_server: str) -> Path:
    out = inputs["folder"] / "reference"
    result = _run(inputs, out, prefect_server)
    assert result.returncode == 0, result.stderr
    return out


def _run(inputs: dict[str, Path], out: Path, api: str, *extra: str, manifest: Path | None = None
         ) -> subprocess.CompletedProcess:
    return cohort_cli("run", "--manifest", str(manifest or inputs["manifest"]), "--out", str(out), "--weights",
                      str(inputs["weights"]), "--workers", "1", *extra, api=api)


def _copy(reference: Path, tmp_path: Path) -> Path:
    out = tmp_path / "results"
    shutil.copytree(reference, out)
    return out


def _features(out: Path) -> pd.DataFrame:
    return pd.read_parquet(out / "features").sort_values(["series_id", "label"]).reset_index(drop=True)


def _series(out: Path) -> pd.DataFrame:
    return pd.read_parquet(out / "series").set_index("series_id").sort_index()


def test_rows_carry_run_key_and_input_fingerprint(reference: Path) -> None:
    series = _series(reference)
    assert series["run_key"].notna().all() and series["input_fingerprint"].notna().all()
    assert series.loc[SEGMENTED, "run_key"].nunique() == 1
    assert series.loc["labelled", "run_key"] != series.loc["crop_a", "run_key"]
    assert not series["reused_label_map"].any()
    assert '"model": "fast"' in series.loc["crop_a", "run_settings"]


def test_changed_measurement_settings_refuse_then_recompute_reuses_label_maps(
        reference: Path, inputs: dict[str, Path], tmp_path: Path, prefect_server: str) -> None:
    out = _copy(reference, tmp_path)
    config = tmp_path / "border2.yaml"
    config.write_text("measure:\n  border_voxels: 2\n")
    before = _features(out)
    refused = _run(inputs, out, prefect_server, "--config", str(config))
    assert refused.returncode == 2, refused.stderr
    message = " ".join(refused.stderr.split())
    assert "3 series done earlier" in message and "measurement settings" in message
    assert "--recompute changed" in message and "new --out" in message
    pd.testing.assert_frame_equal(before, _features(out))

    recomputed = _run(inputs, out, prefect_server, "--config", str(config), "--recompute", "changed")
    assert recomputed.returncode == 0, recomputed.stderr
    series = _series(out)
    assert series["reused_label_map"].all()
    assert (series.loc[SEGMENTED, "seconds_segment"] == 0).all()
    assert series.loc[SEGMENTED, "seconds_load_model"].isna().all()
    features = _features(out)
    assert len(features) == 3 * 117 and not features.duplicated(["series_id", "label"]).any()
    assert (features["volume_ml"].to_numpy() == before["volume_ml"].to_numpy()).all()
    again = _run(inputs, out, prefect_server, "--config", str(config))
    assert again.returncode == 0 and "0 series to process, 3 already done" in " ".join(again.stderr.split())


def test_other_weights_are_refused(reference: Path, inputs: dict[str, Path], tmp_path: Path,
                                   prefect_server: str) -> None:
    out = _copy(reference, tmp_path)
    result = cohort_cli("run", "--manifest", str(inputs["manifest"]), "--out", str(out), "--weights",
                        str(inputs["other_weights"]), api=prefect_server)
    assert result.returncode == 2
    message = " ".join(result.stderr.split())
    assert "2 series done earlier" in message and "weights of fast: 2 series" in message


def test_changed_input_file_is_refused(inputs: dict[str, Path], tmp_path: Path, prefect_server: str) -> None:
    """Rewriting a file with its own bytes (a new modification time) keeps the row; other bytes
    of the same size are refused, named as a change of content."""
    shutil.copy(inputs["folder"] / "ct.nii.gz", tmp_path / "ct.nii.gz")
    shutil.copy(inputs["folder"] / "seg.nii.gz", tmp_path / "seg.nii.gz")
    manifest = write_manifest(tmp_path / "scans.csv", [{"series_id": "labelled", "path": "ct.nii.gz",
                                                        "labels": "seg.nii.gz", "age": 50, "sex": "F"}])
    out = tmp_path / "results"
    assert _run(inputs, out, prefect_server, manifest=manifest).returncode == 0
    time.sleep(0.01)
    seg = tmp_path / "seg.nii.gz"
    seg.write_bytes(seg.read_bytes())  # rewritten: new mtime
    touched = _run(inputs, out, prefect_server, manifest=manifest)
    assert touched.returncode == 0, touched.stderr
    assert "1 done series whose files moved or were touched, contents unchanged: kept" in " ".join(touched.stderr.split())
    labels = nib.load(str(seg))
    data = labels.get_fdata().astype("uint8")
    data[0, 0, 0] = 1 if data[0, 0, 0] != 1 else 2
    nib.save(nib.Nifti1Image(data, labels.affine, labels.header), str(tmp_path / "edited.nii"))
    seg.write_bytes(__import__("gzip").compress((tmp_path / "edited.nii").read_bytes()))
    result = _run(inputs, out, prefect_server, manifest=manifest)
    assert result.returncode == 2
    message = " ".join(result.stderr.split())
    assert "input file contents (image, labels, fat or water): 1 series" in message
    assert "scans.csv line 2 (labelled)" in message


def test_swapped_files_of_one_size_and_time_are_refused(inputs: dict[str, Path], examples: Path, tmp_path: Path,
                                                       prefect_server: str) -> None:
    """Two uncompressed images of one size with one modification time (as unpacked from one
    archive) swapped with ``mv``: paths, sizes and times are as before, their status-change times
    are not, so the contents are compared and the swap refused."""
    ct = nib.load(str(examples / "example_ct_sm.nii.gz"))
    data = np.asanyarray(ct.dataobj).astype(np.int16)
    for name, offset in (("a.nii", 0), ("b.nii", 100)):
        nib.save(nib.Nifti1Image(data + offset, ct.affine), str(tmp_path / name))
        os.utime(tmp_path / name, ns=(1_700_000_000 * 10**9,) * 2)
    shutil.copy(examples / "example_seg_fast.nii.gz", tmp_path / "seg.nii.gz")
    manifest = tmp_path / "scans.csv"
    manifest.write_text("series_id,path,labels,age,sex\na,a.nii,seg.nii.gz,60,F\nb,b.nii,seg.nii.gz,61,M\n")
    out = tmp_path / "results"
    assert _run(inputs, out, prefect_server, manifest=manifest).returncode == 0
    (tmp_path / "a.nii").rename(tmp_path / "swap.nii")
    (tmp_path / "b.nii").rename(tmp_path / "a.nii")
    (tmp_path / "swap.nii").rename(tmp_path / "b.nii")
    refused = _run(inputs, out, prefect_server, manifest=manifest)
    assert refused.returncode == 2, refused.stderr
    assert "input file contents (image, labels, fat or water): 2 series" in " ".join(refused.stderr.split())


def test_moved_inputs_keep_their_rows_and_label_maps(reference: Path, inputs: dict[str, Path], tmp_path: Path,
                                                     prefect_server: str) -> None:
    """Scratch to archive: the same files under other paths (and, copied without their times, other
    modification times) keep every row, and a later recompute still reuses the stored label maps."""
    out = _copy(reference, tmp_path)
    before_series, before_features = _series(out), _features(out)
    archive, copied = tmp_path / "archive", tmp_path / "copied"
    for folder, copy in ((archive, shutil.copy2), (copied, shutil.copy)):
        folder.mkdir()
        for name in ("crop_a.nii.gz", "crop_b.nii.gz", "ct.nii.gz", "seg.nii.gz"):
            copy(inputs["folder"] / name, folder / name)
        (folder / "scans.csv").write_text(inputs["manifest"].read_text())
        moved = _run(inputs, out, prefect_server, manifest=folder / "scans.csv")
        assert moved.returncode == 0, moved.stderr
        message = " ".join(moved.stderr.split())
        assert "0 series to process, 3 already done" in message
        assert "3 done series whose files moved or were touched, contents unchanged: kept" in message
        again = _run(inputs, out, prefect_server, manifest=folder / "scans.csv")
        assert "files moved" not in again.stderr and "0 series to process" in " ".join(again.stderr.split())
    series = _series(out)
    assert (series["input_fingerprint"] != before_series["input_fingerprint"]).all()
    pd.testing.assert_series_equal(series["input_content"], before_series["input_content"])
    pd.testing.assert_frame_equal(_features(out), before_features)

    config = tmp_path / "border2.yaml"
    config.write_text("measure:\n  border_voxels: 2\n")
    recomputed = _run(inputs, out, prefect_server, "--config", str(config), "--recompute", "changed",
                      manifest=copied / "scans.csv")
    assert recomputed.returncode == 0, recomputed.stderr
    assert _series(out)["reused_label_map"].all()


def _plain_contents(manifest: Path) -> dict[str, str]:
    """Each row's plain digest of its bytes (what anyone holding the files can compute)."""
    from cohort.manifest import load_manifest
    from cohort.provenance import input_content

    return {spec.series_id: input_content(spec.sources) for spec in load_manifest(manifest)}


def test_recorded_contents_are_keyed_with_the_results_folders_secret(reference: Path, inputs: dict[str, Path],
                                                                     tmp_path: Path, prefect_server: str) -> None:
    """``input_content`` was the plain SHA-256 of a row's bytes: anyone holding the same files (the
    hospital's PACS, another release of the images) could hash them, find the row and with it the
    pseudonym. It is now keyed with a secret of the results folder, which no table holds."""
    key_file = reference / ".cohort.content_key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    key = load_content_key(key_file)
    plain = _plain_contents(inputs["manifest"])
    recorded = _series(reference)["input_content"]
    for series_id, digest in plain.items():
        assert recorded[series_id] != digest and recorded[series_id] == key.keyed(digest)
    other = tmp_path / "other"
    manifest = write_manifest(tmp_path / "labelled.csv", [{"series_id": "labelled", "path": str(inputs["folder"] / "ct.nii.gz"),
                                                            "labels": str(inputs["folder"] / "seg.nii.gz"), "age": 50, "sex": "F"}])
    assert _run(inputs, other, prefect_server, manifest=manifest).returncode == 0
    assert _series(other).loc["labelled", "input_content"] not in (recorded["labelled"], plain["labelled"])


def test_rows_recorded_with_plain_contents_keep_their_rows_and_label_maps_when_files_move(
        reference: Path, inputs: dict[str, Path], tmp_path: Path, prefect_server: str) -> None:
    """A results folder of the previous version (plain content digests in ``series/`` and in its label
    maps' source keys): moved files still read as moved, and a recompute still reuses the label maps."""
    import zarr

    from cohort.pipeline import source_key
    from cohort.provenance import RunKey

    out = _copy(reference, tmp_path)
    plain = _plain_contents(inputs["manifest"])
    part, table = next((part, table) for part in (out / "series").glob("*.parquet")
                       if (table := pq.read_table(part)).num_rows)
    column = table.schema.get_field_index("input_content")
    pq.write_table(table.set_column(column, "input_content", pa.array(
        [plain[series_id] for series_id in table["series_id"].to_pylist()])), part)
    for series_id, settings in _series(out)["run_settings"].items():
        array = zarr.open_array(str(out / "labels.zarr"), path=series_id, mode="r+")
        array.attrs["source_key"] = source_key(RunKey.from_json(settings), plain[series_id])
    (out / ".cohort.content_key").unlink()  # that version had none
    archive = tmp_path / "archive"
    archive.mkdir()
    for name in ("crop_a.nii.gz", "crop_b.nii.gz", "ct.nii.gz", "seg.nii.gz"):
        shutil.copy(inputs["folder"] / name, archive / name)
    (archive / "scans.csv").write_text(inputs["manifest"].read_text())
    moved = _run(inputs, out, prefect_server, manifest=archive / "scans.csv")
    assert moved.returncode == 0, moved.stderr
    assert "3 done series whose files moved or were touched, contents unchanged: kept" in " ".join(moved.stderr.split())

    config = tmp_path / "border2.yaml"
    config.write_text("measure:\n  border_voxels: 2\n")
    recomputed = _run(inputs, out, prefect_server, "--config", str(config), "--recompute", "changed",
                      manifest=archive / "scans.csv")
    assert recomputed.returncode == 0, recomputed.stderr
    series = _series(out)
    assert series["reused_label_map"].all()
    assert series["input_content"].to_dict() == plain  # the form its label map was made with
    again = _run(inputs, out, prefect_server, "--config", str(config), manifest=archive / "scans.csv")
    assert again.returncode == 0 and "0 series to process, 3 already done" in " ".join(again.stderr.split())


def test_done_rows_whose_inputs_are_gone_are_kept(reference: Path, inputs: dict[str, Path], tmp_path: Path,
                                                  prefect_server: str) -> None:
    """A purged scratch folder loses nothing already measured: the rows stay as they are, said
    on the console; only a change of settings, which would need the files, is refused."""
    out = _copy(reference, tmp_path)
    folder = tmp_path / "scratch"
    folder.mkdir()
    for name in ("crop_a.nii.gz", "crop_b.nii.gz", "ct.nii.gz", "seg.nii.gz"):
        shutil.copy2(inputs["folder"] / name, folder / name)
    (folder / "scans.csv").write_text(inputs["manifest"].read_text())
    (folder / "crop_b.nii.gz").unlink()
    before = _features(out)
    kept = _run(inputs, out, prefect_server, manifest=folder / "scans.csv")
    assert kept.returncode == 0, kept.stderr
    message = " ".join(kept.stderr.split())
    assert "0 series to process, 3 already done" in message
    assert "1 done series whose input files are gone: kept as they are (e.g. scans.csv line 3 (crop_b))" in message
    pd.testing.assert_frame_equal(_features(out), before)
    config = tmp_path / "border2.yaml"
    config.write_text("measure:\n  border_voxels: 2\n")
    for recompute in ((), ("--recompute", "changed")):  # recomputing would turn it into a failure
        refused = _run(inputs, out, prefect_server, "--config", str(config), *recompute, manifest=folder / "scans.csv")
        assert refused.returncode == 2, refused.stderr
        message = " ".join(refused.stderr.split())
        assert "1 series done earlier" in message and "can be neither kept as they are nor recomputed" in message
        assert "input files gone or unreadable: the row cannot be recomputed: 1 series" in message
        pd.testing.assert_frame_equal(_features(out), before)
    for leftover in (folder / "crop_a.nii.gz", folder / "ct.nii.gz"):
        leftover.unlink()
    (folder / "crop_a.nii.gz").symlink_to("loop.nii.gz")  # a symlink loop is as good as gone
    (folder / "loop.nii.gz").symlink_to("crop_a.nii.gz")
    (folder / "ct.nii.gz").mkdir()  # the image is now an empty folder
    kept = _run(inputs, out, prefect_server, manifest=folder / "scans.csv")
    assert kept.returncode == 0, kept.stderr
    assert "3 done series whose input files are gone: kept as they are" in " ".join(kept.stderr.split())
    pd.testing.assert_frame_equal(_features(out), before)


def _one_uid_series(examples: Path, folder: Path) -> str:
    """The example DICOM series written into ``folder`` under a new SeriesInstanceUID (returned)."""
    import pydicom
    from pydicom.uid import generate_uid

    folder.mkdir()
    uid = generate_uid()
    for source in sorted((examples / "example_ct_dicom").iterdir()):
        dataset = pydicom.dcmread(source)
        dataset.SeriesInstanceUID, dataset.SOPInstanceUID = uid, generate_uid()
        dataset.save_as(folder / f"{dataset.SOPInstanceUID}.dcm")
    return uid


def _record_uids_in_clear(out: Path, uids: dict[str, str]) -> None:
    """Rewrite the ``series/`` part holding the rows as an earlier cohort wrote it: the UIDs in clear."""
    part, table = next((part, table) for part in (out / "series").glob("*.parquet")
                       if (table := pq.read_table(part)).num_rows)
    column = [uids.get(series_id) for series_id in table["series_id"].to_pylist()]
    pq.write_table(table.set_column(table.schema.get_field_index("series_uid"), "series_uid", pa.array(column)), part)


def test_a_series_uid_filled_in_later_for_the_same_series_keeps_the_row(
        inputs: dict[str, Path], examples: Path, tmp_path: Path, prefect_server: str) -> None:
    """A manifest made again by ``cohort manifest`` names the folder's one series by its UID: the
    same bytes, so the row stands and records the UID."""
    uid = _one_uid_series(examples, tmp_path / "one_series")
    shutil.copy(examples / "example_seg_dicom.nii.gz", tmp_path / "seg.nii.gz")
    manifest, out = tmp_path / "scans.csv", tmp_path / "results"
    for named in ("", uid):
        manifest.write_text(f"series_id,path,series_uid,labels,age,sex\nct,one_series,{named},seg.nii.gz,60,F\n")
        result = _run(inputs, out, prefect_server, manifest=manifest)
        assert result.returncode == 0, result.stderr
    assert "0 series to process, 1 already done" in " ".join(result.stderr.split())
    assert _series(out).loc["ct", "series_uid"] == series_uid_digest(uid, _series(out).loc["ct", "input_content"])
    _record_uids_in_clear(out, {"ct": uid})
    older = _run(inputs, out, prefect_server, manifest=manifest)
    assert older.returncode == 0 and "0 series to process, 1 already done" in " ".join(older.stderr.split())
    assert "contents unchanged" not in older.stderr, older.stderr
    kept = _series(out).loc["ct"]
    assert kept["series_uid"] == series_uid_digest(uid, kept["input_content"])  # and keeps its digest from now on


def test_a_row_recorded_with_its_series_uid_in_clear_gets_the_digest_when_it_leaves_the_manifest(
        inputs: dict[str, Path], examples: Path, tmp_path: Path, prefect_server: str) -> None:
    """A row of an earlier version that a rerun keeps but no longer lists (in_manifest false) has
    no manifest UID to match: it is kept with the digest of the UID it recorded, not the UID."""
    uid = _one_uid_series(examples, tmp_path / "one_series")
    shutil.copy(examples / "example_seg_dicom.nii.gz", tmp_path / "seg.nii.gz")
    manifest, out = tmp_path / "scans.csv", tmp_path / "results"
    other = "other,one_series,,seg.nii.gz,50,M\n"
    manifest.write_text(f"series_id,path,series_uid,labels,age,sex\nct,one_series,{uid},seg.nii.gz,60,F\n{other}")
    assert _run(inputs, out, prefect_server, manifest=manifest).returncode == 0
    _record_uids_in_clear(out, {"ct": uid})
    manifest.write_text(f"series_id,path,series_uid,labels,age,sex\n{other}")
    result = _run(inputs, out, prefect_server, manifest=manifest)
    assert result.returncode == 0, result.stderr
    series = _series(out)
    assert not series.loc["ct", "in_manifest"]
    assert series.loc["ct", "series_uid"] == series_uid_digest(uid, series.loc["ct", "input_content"])
    assert not any(uid in str(value) for part in (out / "series").glob("*.parquet")
                   for value in pq.read_table(part)["series_uid"].to_pylist())


def test_an_age_no_longer_valid_stops_the_run_and_keeps_the_row(reference: Path, inputs: dict[str, Path],
                                                                 tmp_path: Path, prefect_server: str) -> None:
    """Recomputing cannot mend an age: the run says to fix the manifest, with or without
    ``--recompute changed``, and the measurements stay."""
    out = _copy(reference, tmp_path)
    before = _features(out)
    manifest = inputs["folder"] / "bad_age.csv"
    manifest.write_text(inputs["manifest"].read_text().replace(",60,M", ",sixty,M"))
    for recompute in ((), ("--recompute", "changed")):
        refused = _run(inputs, out, prefect_server, *recompute, manifest=manifest)
        assert refused.returncode == 2, refused.stderr
        message = " ".join(refused.stderr.split())
        assert "age 'sixty' is not a number" in message and "fix the manifest row: 1 series" in message
        assert "bad_age.csv line 2 (crop_a)" in message
    pd.testing.assert_frame_equal(_features(out), before)


def test_manifest_edits_update_rows_without_recomputing(reference: Path, inputs: dict[str, Path], tmp_path: Path,
                                                        prefect_server: str) -> None:
    out = _copy(reference, tmp_path)
    text = inputs["manifest"].read_text().replace("crop_b,crop_b.nii.gz,70,F", "crop_b,crop_b.nii.gz,71,M")
    text = "\n".join(line for line in text.splitlines() if not line.startswith("labelled")) + "\n"
    manifest = inputs["folder"] / "edited.csv"
    manifest.write_text(text)
    before = _series(out)
    result = _run(inputs, out, prefect_server, manifest=manifest)
    assert result.returncode == 0, result.stderr
    assert "0 series to process, 2 already done" in " ".join(result.stderr.split())
    series = _series(out)
    assert (series.loc["crop_b", "age"], series.loc["crop_b", "sex"]) == (71.0, "M")
    assert series.loc["crop_b", "finished_at"] == before.loc["crop_b", "finished_at"]
    assert not series.loc["labelled", "in_manifest"] and series.loc[SEGMENTED, "in_manifest"].all()
    assert len(series) == 3 and set(_features(out)["series_id"]) == {"crop_a", "crop_b", "labelled"}


def test_another_series_uid_is_another_input(inputs: dict[str, Path], examples: Path, tmp_path: Path,
                                            prefect_server: str) -> None:
    """A folder holding two series: the row's ``series_uid`` says which one it is, so editing it
    is a change of input (refused), not a manifest edit rewritten in place; and what happens to
    the other series, or to a file beside them, leaves the row's content as it was."""
    import pydicom
    from pydicom.uid import generate_uid

    folder = tmp_path / "two_series"
    folder.mkdir()
    uids = [generate_uid(), generate_uid()]
    for source in sorted((examples / "example_ct_dicom").iterdir()):
        for uid in uids:
            dataset = pydicom.dcmread(source)
            dataset.SeriesInstanceUID, dataset.SOPInstanceUID = uid, generate_uid()
            dataset.save_as(folder / f"{dataset.SOPInstanceUID}.dcm")
    shutil.copy(examples / "example_seg_dicom.nii.gz", tmp_path / "seg.nii.gz")
    manifest = tmp_path / "scans.csv"
    out = tmp_path / "results"
    manifest.write_text(f"series_id,path,series_uid,labels,age,sex\nct,two_series,{uids[0]},seg.nii.gz,60,F\n")
    assert _run(inputs, out, prefect_server, manifest=manifest).returncode == 0
    (folder / "notes.txt").write_text("exported by the PACS")
    other = next(path for path in sorted(folder.iterdir()) if path.suffix == ".dcm"
                 and pydicom.dcmread(path, stop_before_pixels=True).SeriesInstanceUID == uids[1])
    other.write_bytes(other.read_bytes()[:-1000])
    kept = _run(inputs, out, prefect_server, manifest=manifest)
    assert kept.returncode == 0, kept.stderr
    assert "1 done series whose files moved or were touched, contents unchanged: kept" in " ".join(kept.stderr.split())
    manifest.write_text("series_id,path,series_uid,labels,age,sex\nct,two_series,,seg.nii.gz,60,F\n")
    blank = _run(inputs, out, prefect_server, "--recompute", "changed", manifest=manifest)  # two series: which?
    assert blank.returncode == 2 and "can be neither kept as they are nor recomputed" in blank.stderr
    manifest.write_text(f"series_id,path,series_uid,labels,age,sex\nct,two_series,{uids[1]},seg.nii.gz,60,F\n")
    result = _run(inputs, out, prefect_server, manifest=manifest)
    assert result.returncode == 2, result.stderr
    assert "series_uid (another DICOM series under the row's path): 1 series" in " ".join(result.stderr.split())
    assert _series(out).loc["ct", "series_uid"] == series_uid_digest(uids[0], _series(out).loc["ct", "input_content"])


def test_a_run_after_one_whose_clock_was_ahead_still_writes_the_newest_rows(
        reference: Path, inputs: dict[str, Path], tmp_path: Path, prefect_server: str) -> None:
    """Parts are ordered by name: an earlier run stamped by a clock ahead of this one (local time
    in Tokyo, then a run in UTC; a DST fall-back; another node) must not make this run's rows the
    older ones, or its manifest edits and retried rows would be dropped."""
    out = _copy(reference, tmp_path)
    for folder in (out / "series", out / "features"):
        for part in folder.glob("part-*.parquet"):
            part.rename(part.with_name("part-29991231T235959-" + part.name.split("-", 2)[2]))
    manifest = inputs["folder"] / "clock_edited.csv"
    manifest.write_text(inputs["manifest"].read_text().replace(",60,M", ",62,M"))
    for _ in range(2):
        assert _run(inputs, out, prefect_server, manifest=manifest).returncode == 0
    assert _series(out).loc["crop_a", "age"] == 62.0
    assert sorted(p.name for p in (out / "series").iterdir())[-1].startswith("part-30000101T000000-")


def test_manifest_edits_of_every_row_keep_the_features(reference: Path, inputs: dict[str, Path], tmp_path: Path,
                                                      prefect_server: str) -> None:
    """When every row of a run's part is rewritten by manifest edits, its features stay (they
    used to be removed with the emptied part, and measured again by the next run)."""
    out = _copy(reference, tmp_path)
    text = inputs["manifest"].read_text().replace(",60,M", ",61,M").replace(",70,F", ",71,F").replace(",50,F", ",51,F")
    manifest = inputs["folder"] / "every_row_edited.csv"
    manifest.write_text(text)
    before = _features(out)
    for _ in range(2):
        result = _run(inputs, out, prefect_server, manifest=manifest)
        assert result.returncode == 0, result.stderr
        assert "0 series to process, 3 already done" in " ".join(result.stderr.split())
    assert list(_series(out)["age"]) == [61.0, 71.0, 51.0]  # sorted by id: crop_a, crop_b, labelled
    pd.testing.assert_frame_equal(_features(out), before)


def test_sigkill_before_commit_reuses_stored_label_maps(inputs: dict[str, Path], reference: Path, tmp_path: Path,
                                                        prefect_server: str) -> None:
    """Nothing committed (one big batch), label maps stored: the rerun measures, it does not segment.
    Labelled rows after the segmented ones keep the run going while the kill lands (one series at a
    time: beside the segmented ones they would be done before them)."""
    config = tmp_path / "no_flush.yaml"
    config.write_text("execution:\n  batch_size: 100\n  flush_interval_s: 600\n  prefetch: 0\n")
    manifest = inputs["folder"] / "with_tail.csv"
    tail = "".join(f"tail{i},ct.nii.gz,50,F,seg.nii.gz\n" for i in range(8))
    manifest.write_text(inputs["manifest"].read_text() + tail)
    out = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, "-m", "cohort.cli", "run", "--manifest", str(manifest),
                                "--out", str(out), "--weights", str(inputs["weights"]), "--workers", "1",
                                "--config", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env=cli_env(prefect_server), start_new_session=True)
    deadline = time.monotonic() + 240
    stored = []
    while time.monotonic() < deadline and process.poll() is None:
        stored = [name for name in SEGMENTED if '"complete": true' in _attributes(out, name)]
        if len(stored) == 2:
            break
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert len(stored) == 2 and not list((out / "series").glob("*.parquet"))
    rerun = _run(inputs, out, prefect_server, "--config", str(config), manifest=manifest)
    assert rerun.returncode == 0, rerun.stderr
    series = _series(out)
    assert series.loc[SEGMENTED, "reused_label_map"].all()
    assert (series.loc[SEGMENTED, "seconds_segment"] == 0).all()
    mine = _features(out).query("series_id in @SEGMENTED").reset_index(drop=True)
    pd.testing.assert_frame_equal(mine, _features(reference).query("series_id in @SEGMENTED").reset_index(drop=True))


def test_a_recompute_killed_after_storing_a_label_map_leaves_no_other_label_map_under_the_done_row(
        examples: Path, tmp_path: Path, prefect_server: str) -> None:
    """A label map file replaced, `--recompute changed` killed (SIGKILL) after it stored the new label
    map and before it committed the new row, the original file put back: the done row stands, so
    the rerun must not keep the other label map under it (it measured the original one)."""
    import json

    from cohort.store import read_label_map

    for name in ("seg_a.nii.gz", "seg_b.nii.gz", "original.nii.gz"):
        shutil.copy(examples / "example_seg_fast.nii.gz", tmp_path / name)
    rows = [{"series_id": series_id, "path": str(examples / "example_ct_sm.nii.gz"), "age": 50, "sex": "M",
             "labels": str(tmp_path / f"seg_{series_id}.nii.gz")} for series_id in ("a", "b")]
    rows += [{"series_id": f"tail{i}", "path": str(examples / "example_ct_sm.nii.gz"), "age": 50, "sex": "F",
              "labels": str(tmp_path / "original.nii.gz")} for i in range(6)]
    manifest = write_manifest(tmp_path / "scans.csv", rows[:2])
    config = tmp_path / "no_flush.yaml"
    config.write_text("execution:\n  batch_size: 100\n  flush_interval_s: 600\n")
    out = tmp_path / "results"
    run = ["run", "--manifest", str(manifest), "--out", str(out), "--config", str(config), "--workers", "1"]
    assert cohort_cli(*run, api=prefect_server).returncode == 0
    metadata = out / "labels.zarr" / "b" / "zarr.json"
    measured_with = json.loads(metadata.read_text())["attributes"]["source_key"]
    corrected = nib.load(tmp_path / "seg_b.nii.gz")
    labels = np.asanyarray(corrected.dataobj).copy()
    labels[labels == 5] = 0
    nib.save(nib.Nifti1Image(labels, corrected.affine, corrected.header), tmp_path / "seg_b.nii.gz")
    write_manifest(manifest, rows)  # the tail keeps the recompute going while the kill lands
    parts = sorted((out / "series").glob("*.parquet"))
    process = subprocess.Popen([sys.executable, "-m", "cohort.cli", *run, "--recompute", "changed"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=cli_env(prefect_server),
                               start_new_session=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        if '"complete": true' in _attributes(out, "b") and measured_with not in _attributes(out, "b"):
            break
        time.sleep(0.01)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert sorted((out / "series").glob("*.parquet")) == parts, "the kill should land before the commit"
    shutil.copy(tmp_path / "original.nii.gz", tmp_path / "seg_b.nii.gz")
    write_manifest(manifest, rows[:2])
    rerun = cohort_cli(*run, api=prefect_server)
    assert rerun.returncode == 0, rerun.stderr
    assert np.array_equal(read_label_map(out / "labels.zarr", "b").labels,
                          read_label_map(out / "labels.zarr", "a").labels)
    features = pd.read_parquet(out / "features").drop(columns="series_id")
    pd.testing.assert_frame_equal(features.iloc[:117].reset_index(drop=True), features.iloc[117:].reset_index(drop=True))


def _attributes(out: Path, series_id: str) -> str:
    try:
        return (out / "labels.zarr" / series_id / "zarr.json").read_text()
    except OSError:
        return ""


def test_lost_features_part_and_label_map_are_redone(reference: Path, inputs: dict[str, Path], tmp_path: Path,
                                                     prefect_server: str) -> None:
    out = _copy(reference, tmp_path)
    for part in (out / "features").glob("*.parquet"):
        part.write_bytes(part.read_bytes()[:200])  # truncated
    shutil.rmtree(out / "labels.zarr" / "crop_b")
    result = _run(inputs, out, prefect_server)
    assert result.returncode == 0, result.stderr
    assert "3 series to process, 0 already done" in " ".join(result.stderr.split())
    series = _series(out)
    assert series.loc["crop_a", "reused_label_map"] and not series.loc["crop_b", "reused_label_map"]
    pd.testing.assert_frame_equal(_features(out), _features(reference))
    assert list((out / "corrupt").glob("features-part-*.parquet"))


def test_corrupt_ledger_or_zarr_metadata_stop_with_the_file_named(reference: Path, inputs: dict[str, Path],
                                                                  tmp_path: Path, prefect_server: str) -> None:
    out = _copy(reference, tmp_path)
    part = next((out / "series").glob("*.parquet"))
    part.write_bytes(b"not parquet")
    result = _run(inputs, out, prefect_server)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    message = " ".join(result.stderr.split())
    assert part.name in message and "Move it aside" in message

    out = _copy(reference, tmp_path / "second")
    (out / "labels.zarr" / "zarr.json").write_text("{ broken")
    result = _run(inputs, out, prefect_server)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "labels.zarr/zarr.json" in "".join(result.stderr.split())


def test_class_maps_that_disagree_stop_the_run(inputs: dict[str, Path], tmp_path: Path, prefect_server: str) -> None:
    from cohort.config import CONFIG_DIR

    lines = (CONFIG_DIR / "class_map_total_v2.csv").read_text().splitlines()
    swapped = [lines[0], lines[2].split(",")[0] + "," + lines[1].split(",")[1],
               lines[1].split(",")[0] + "," + lines[2].split(",")[1], *lines[3:]]
    (tmp_path / "swapped.csv").write_text("\n".join(swapped) + "\n")
    config = tmp_path / "swapped.yaml"
    config.write_text(f"measure:\n  class_map: {tmp_path / 'swapped.csv'}\n")
    result = _run(inputs, tmp_path / "out", prefect_server, "--config", str(config))
    assert result.returncode == 2
    assert "disagree on 2 label id(s)" in " ".join(result.stderr.split())


@pytest.mark.parametrize("case", ["file", "read_only", "full", "workers"])
def test_unusable_out_or_workers_stop_with_exit_2(case: str, inputs: dict[str, Path], tmp_path: Path,
                                                  prefect_server: str) -> None:
    out = tmp_path / "out"
    extra: tuple[str, ...] = ()
    stack = ExitStack()
    if case == "file":
        out.write_text("a file")
    elif case == "read_only" and os.geteuid() == 0:  # root writes anywhere: a read-only file system instead
        out = stack.enter_context(mounted_tmpfs(tmp_path / "read_only", "ro")) / "out"
    elif case == "read_only":
        tmp_path.chmod(0o500)
    elif case == "full":
        config = tmp_path / "needs_space.yaml"
        config.write_text("execution:\n  min_free_gb: 1000000000\n")
        extra = ("--config", str(config))
    else:
        extra = ("--workers", "-1")
    result = cohort_cli("run", "--manifest", str(inputs["manifest"]), "--out", str(out), "--weights",
                        str(inputs["weights"]), *extra, api=prefect_server)
    stack.close()
    tmp_path.chmod(0o700)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    expected = {"file": "is a file, not a folder", "read_only": "read-only file system" if os.geteuid() == 0 else
                "permission denied", "full": "gb free", "workers": "must be at least 1"}[case]
    assert expected in " ".join(result.stderr.split()).lower()


@pytest.mark.parametrize(("prefetch", "passes"), [(1, 1), (1, 2), (0, 1)])
def test_prefetch_gives_the_same_tables(reference: Path, inputs: dict[str, Path], tmp_path: Path,
                                        prefect_server: str, prefetch: int, passes: int) -> None:
    """``execution.prefetch: 1`` (a second series slot per worker beside the network), with one
    forward pass at a time or two at once (on a worker of 2 threads), strictly one series at a time
    (``prefetch: 0``), and the defaults (``auto``: as the worker's timing decides) write identical
    tables."""
    config = tmp_path / "prefetch.yaml"
    config.write_text(f"execution:\n  prefetch: {prefetch}\n  network_passes: {passes}\n")
    out = tmp_path / "prefetch"
    assert _run(inputs, out, prefect_server, "--config", str(config)).returncode == 0
    pd.testing.assert_frame_equal(_features(out), _features(reference))
    stable = ["age", "sex", "status", "model", "n_structures_ok", "run_key", "input_fingerprint"]
    pd.testing.assert_frame_equal(_series(out)[stable], _series(reference)[stable])


def test_gpu_precision_other_than_fp16_is_part_of_the_run_key(reference: Path, inputs: dict[str, Path],
                                                              tmp_path: Path, prefect_server: str) -> None:
    """``execution.precision: fp32`` changes labels on a GPU, so rows made with fp16 are not mixed
    with it; the default (fp16) leaves the keys of earlier runs as they were."""
    from cohort.provenance import RunKey

    assert "precision" not in RunKey("fast", "config", "weights", "measure").to_json()
    assert RunKey("fast", precision="fp32").digest != RunKey("fast").digest
    out = _copy(reference, tmp_path)
    config = tmp_path / "fp32.yaml"
    config.write_text("execution:\n  precision: fp32\n")
    refused = _run(inputs, out, prefect_server, "--config", str(config))
    assert refused.returncode == 2, refused.stderr
    assert "execution.precision fp16 -> fp32" in " ".join(refused.stderr.split())
    config.write_text("execution:\n  precision: fp8\n")
    invalid = _run(inputs, out, prefect_server, "--config", str(config))
    assert invalid.returncode == 2 and "execution.precision" in invalid.stderr and "fp16, bf16, fp32" in invalid.stderr


def test_series_slots_per_worker_follow_prefetch() -> None:
    """A local worker gets 1 + prefetch series slots (``auto``: 2), and ``network_passes`` forward
    passes at once as far as its slots and threads allow (cohort.segmentation.gate); with ``auto``
    it is told to time its network, and its series to follow its passes."""
    from distributed import Client

    from cohort.config import ExecutionConfig
    from cohort.flows.clusters import open_client
    from cohort.flows.resources import usable_cpus
    from cohort.segmentation.passes import PassPolicy

    for prefetch, wanted in ((0, 1), (0, 2), (2, 1), (2, 3), ("auto", "auto"), ("auto", 1), (1, "auto")):
        slots = 2 if prefetch == "auto" else 1 + prefetch
        with open_client("local", 1, ExecutionConfig(prefetch=prefetch, network_passes=wanted)) as client:
            assert isinstance(client, Client) and list(client.nthreads().values()) == [slots]
            (policy,) = client.run(PassPolicy.from_environment).values()
            assert policy == PassPolicy(min(slots if wanted == "auto" else wanted, slots, usable_cpus()),
                                        choose=wanted == "auto", series_follow_passes=prefetch == "auto")


def test_input_fingerprint_and_content_cover_files_in_subfolders(examples: Path, tmp_path: Path) -> None:
    """A series split over two subfolders (``path`` is their parent, ``series_uid`` names it): a
    change in either is seen."""
    import pydicom
    from pydicom.uid import generate_uid

    from cohort.provenance import input_content, input_fingerprint

    uid = generate_uid()
    for index, source in enumerate(sorted((examples / "example_ct_dicom").iterdir())):
        dataset = pydicom.dcmread(source)
        dataset.SeriesInstanceUID, dataset.SOPInstanceUID = uid, generate_uid()
        part = tmp_path / "B" / f"part{1 + index % 2}"
        part.mkdir(parents=True, exist_ok=True)
        dataset.save_as(part / f"IM{index:04d}")
    sources = [(tmp_path / "B", uid)]
    before = input_fingerprint(tmp_path / "B"), input_content(sources)
    changed = tmp_path / "B" / "part2" / "IM0003"
    changed.write_bytes(changed.read_bytes()[:-2] + b"\x01\x02")
    after = input_fingerprint(tmp_path / "B"), input_content(sources)
    assert before[0] != after[0] and before[1] != after[1]


def test_input_fingerprint_covers_every_file_a_row_reads(tmp_path: Path) -> None:
    from cohort.manifest import load_manifest
    from cohort.provenance import input_fingerprint

    for name in ("mr.nii.gz", "fat.nii.gz", "water.nii.gz", "seg.nii.gz"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "scans.csv").write_text("series_id,path,labels,fat,water\ns,mr.nii.gz,seg.nii.gz,fat.nii.gz,"
                                        "water.nii.gz\n")
    (spec,) = load_manifest(tmp_path / "scans.csv")
    before = input_fingerprint(spec.path, spec.companions)
    for name in ("fat.nii.gz", "water.nii.gz", "seg.nii.gz", "mr.nii.gz"):
        (tmp_path / name).write_bytes(b"xy")  # same path, other size
        after = input_fingerprint(spec.path, spec.companions)
        assert after != before, name
        before = after


def test_input_fingerprint_covers_the_slices_of_dixon_dicom_folders(examples: Path, tmp_path: Path) -> None:
    """A Dixon fat or water DICOM folder was fingerprinted by the folder's own times, which a slice
    rewritten in place (same name) leaves alone: the rerun kept fat fractions of the old slice."""
    from cohort.provenance import input_fingerprint

    for name in ("mr", "fat", "water"):
        shutil.copytree(examples / "example_ct_dicom", tmp_path / name)
    before = input_fingerprint(tmp_path / "mr", (tmp_path / "fat", tmp_path / "water"))
    for name in ("fat", "water"):
        rewritten = sorted((tmp_path / name).iterdir())[3]
        rewritten.write_bytes(rewritten.read_bytes()[:-2] + b"\x01\x02")  # same size, same folder entries
        after = input_fingerprint(tmp_path / "mr", (tmp_path / "fat", tmp_path / "water"))
        assert after != before, name
        before = after


def test_a_row_reads_the_headers_of_its_folder_once(examples: Path, tmp_path: Path, monkeypatch) -> None:
    """A PACS study folder holding its series flat (one row per series, ``series_uid`` naming it):
    the first row reads every header under the folder once, to find its series; the later rows in
    the same process read only their own series' headers (the others' files are known and
    unchanged: cohort.ingest.series_of_files); each row's input content digests the files ingest
    read, without reading them again (nor GDCM scanning a one-series folder again); the content is
    the one found afresh from the manifest row."""
    import pydicom
    import SimpleITK as sitk

    from cohort.config import load_run_config
    from cohort.manifest import load_manifest
    from cohort.pipeline import MeasureSettings, RunContext, process_series
    from cohort.provenance import input_content
    from tests.export.pacs import Patient, Study, example_slices, write_series

    study, slices = Study(Patient("DOE^JANE", "P1", "19600101")), example_slices(examples)
    uids = [write_series(tmp_path / "study", slices, study) for _ in range(3)]
    shutil.copytree(examples / "example_ct_dicom", tmp_path / "single")
    labels = examples / "example_seg_dicom.nii.gz"
    rows = [{"series_id": f"s{k}", "path": str(tmp_path / "study"), "series_uid": uid, "labels": str(labels)}
            for k, uid in enumerate(uids)]
    manifest = write_manifest(tmp_path / "scans.csv", rows + [{"series_id": "one", "path": str(tmp_path / "single"),
                                                               "labels": str(labels)}])
    reads = {"headers": 0, "gdcm_scans": 0}
    dcmread, series_ids = pydicom.dcmread, sitk.ImageSeriesReader.GetGDCMSeriesIDs

    def counted(key, function):
        def call(*args, **kwargs):
            reads[key] += 1
            return function(*args, **kwargs)
        return call

    monkeypatch.setattr(pydicom, "dcmread", counted("headers", dcmread))
    monkeypatch.setattr(sitk.ImageSeriesReader, "GetGDCMSeriesIDs", counted("gdcm_scans", series_ids))
    context = RunContext(tmp_path / "labels.zarr", MeasureSettings.from_config(load_run_config()),
                         load_content_key(tmp_path / ".cohort.content_key"))
    for row, spec in enumerate(load_manifest(manifest)):
        reads.update(headers=0, gdcm_scans=0)
        result = process_series(spec, context)
        assert result.done, result.record.error
        if spec.series_uid:
            assert reads == {"headers": (3 if row == 0 else 1) * len(slices), "gdcm_scans": 0}, spec.series_id
        else:  # GDCM groups the folder, pydicom reads the series' headers (and its UID once more)
            assert reads == {"headers": len(slices) + 1, "gdcm_scans": 1}
        monkeypatch.setattr(pydicom, "dcmread", dcmread)
        assert result.record.input_content == context.content_key.keyed(input_content(spec.sources))
        monkeypatch.setattr(pydicom, "dcmread", counted("headers", dcmread))


def test_fingerprints_list_a_folder_many_rows_name_once(tmp_path: Path, monkeypatch) -> None:
    """The resume check fingerprints rows of one study folder from one listing of it, with the
    digests each row's own :func:`input_fingerprint` gives."""
    from cohort import provenance

    for name in ("IM1", "IM2", "sub/IM3"):
        (tmp_path / "study" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "study" / name).write_bytes(name.encode())
    (tmp_path / "seg.nii.gz").write_bytes(b"x")
    rows = [(tmp_path / "study", (), True), (tmp_path / "study", (tmp_path / "seg.nii.gz",), True),
            (tmp_path / "study", (), False), (tmp_path / "gone", (), True)]
    expected = [provenance.input_fingerprint(*row) for row in rows]
    listings = []
    listing = provenance.input_files
    monkeypatch.setattr(provenance, "input_files", lambda *args: listings.append(args[0]) or listing(*args))
    assert provenance.input_fingerprints(rows) == expected
    assert sorted(map(str, listings)) == sorted(map(str, [tmp_path / "study"] * 2 + [tmp_path / "gone",
                                                                                     tmp_path / "seg.nii.gz"]))


def test_rows_recorded_before_contents_keep_the_fingerprint_of_their_dixon_folders(examples: Path,
                                                                                     tmp_path: Path) -> None:
    """A row recorded before ``input_content`` existed (no status-change time, no content to compare)
    had its Dixon fat and water DICOM folders fingerprinted by the folders' own stat: listing their
    files instead changed its digest, and the rerun called the untouched row changed (stop, or
    recompute with ``--recompute changed``)."""
    from cohort.provenance import digest, input_fingerprint, input_fingerprints

    for name in ("mr", "fat", "water"):
        shutil.copytree(examples / "example_ct_dicom", tmp_path / name)
    (tmp_path / "seg.nii.gz").write_bytes(b"x")
    companions = (tmp_path / "seg.nii.gz", tmp_path / "fat", tmp_path / "water")

    def recorded(path: Path) -> tuple:  # as those versions recorded a file's or a folder's stat
        return (str(path.resolve()), path.stat().st_size, path.stat().st_mtime_ns)

    legacy = digest([recorded(path) for path in sorted((tmp_path / "mr").iterdir())]
                    + [recorded(path) for path in companions])
    assert input_fingerprint(tmp_path / "mr", companions, status_change=False) == legacy
    assert input_fingerprints([(tmp_path / "mr", companions, False)]) == [legacy]


def test_fingerprints_list_a_dixon_study_folder_once(tmp_path: Path, monkeypatch) -> None:
    """A flat study folder that rows name as image and as Dixon fat and water is listed once for
    all of them, not once per row and column (three listings of every slice per row)."""
    from cohort import provenance

    for name in ("IM1", "IM2"):
        (tmp_path / "study").mkdir(exist_ok=True)
        (tmp_path / "study" / name).write_bytes(name.encode())
    study = tmp_path / "study"
    rows = [(study, (tmp_path / "seg.nii.gz", study, study), True) for _ in range(3)]
    expected = [provenance.input_fingerprint(*row) for row in rows]
    listings = []
    listing = provenance.input_files
    monkeypatch.setattr(provenance, "input_files", lambda *args: listings.append(args[0]) or listing(*args))
    assert provenance.input_fingerprints(rows) == expected
    assert sorted(map(str, listings)) == sorted(map(str, [study, tmp_path / "seg.nii.gz"]))


def test_a_file_rewritten_while_its_row_is_read_fails_the_row(examples: Path, tmp_path: Path, monkeypatch) -> None:
    """A CT rewritten in the export while its row is ingested (its voxels read, then the file replaced
    by a copy that finishes before the bytes are digested): the row recorded the content of the new
    bytes for measurements of the old voxels, and a rerun took it as up to date. The row now fails,
    naming why; a rerun then does it from one version."""
    import cohort.pipeline as pipeline
    from cohort.config import load_run_config
    from cohort.manifest import load_manifest
    from cohort.pipeline import MeasureSettings, RunContext, process_series
    from cohort.provenance import input_content

    image, labels = tmp_path / "ct.nii.gz", tmp_path / "seg.nii.gz"
    shutil.copy(examples / "example_ct_sm.nii.gz", image)
    shutil.copy(examples / "example_seg_fast.nii.gz", labels)
    manifest = write_manifest(tmp_path / "scans.csv", [{"series_id": "s1", "path": str(image), "labels": str(labels)}])
    spec = load_manifest(manifest)[0]
    context = RunContext(tmp_path / "labels.zarr", MeasureSettings.from_config(load_run_config()),
                         load_content_key(tmp_path / ".cohort.content_key"))
    read_image = pipeline.load_ct

    def read_while_a_copy_finishes(*args, **kwargs):
        volume = read_image(*args, **kwargs)
        ct = nib.load(image)
        nib.save(nib.Nifti1Image(np.asanyarray(ct.dataobj) + 100, ct.affine, ct.header), image)
        return volume

    monkeypatch.setattr(pipeline, "load_ct", read_while_a_copy_finishes)
    result = process_series(spec, context)
    assert not result.done
    assert result.record.error == ("scans.csv line 2 (s1): 1 of its files changed while they were being read (still "
                                   "being written or copied?); rerun when they are complete")
    monkeypatch.setattr(pipeline, "load_ct", read_image)
    rerun = process_series(spec, context)
    assert rerun.done and rerun.record.input_content == context.content_key.keyed(input_content(spec.sources))


def test_another_series_copied_into_the_folder_meanwhile_does_not_fail_the_row(examples: Path, tmp_path: Path,
                                                                                 monkeypatch) -> None:
    """A flat study folder to which another series is being exported while a row of it is read: the
    row's own files did not change, so it is done (only the files a row read count)."""
    import cohort.pipeline as pipeline
    from cohort.config import load_run_config
    from cohort.manifest import load_manifest
    from cohort.pipeline import MeasureSettings, RunContext, process_series
    from tests.export.pacs import Patient, Study, example_slices, write_series

    study, slices = Study(Patient("DOE^JANE", "P1", "19600101")), example_slices(examples)
    folder = tmp_path / "study"
    uid = write_series(folder, slices, study)
    manifest = write_manifest(tmp_path / "scans.csv", [{"series_id": "s1", "path": str(folder), "series_uid": uid,
                                                        "labels": str(examples / "example_seg_dicom.nii.gz")}])
    read_image = pipeline.load_ct

    def read_while_another_series_arrives(*args, **kwargs):
        volume = read_image(*args, **kwargs)
        write_series(folder, slices, study)
        return volume

    monkeypatch.setattr(pipeline, "load_ct", read_while_another_series_arrives)
    context = RunContext(tmp_path / "labels.zarr", MeasureSettings.from_config(load_run_config()),
                         load_content_key(tmp_path / ".cohort.content_key"))
    result = process_series(load_manifest(manifest)[0], context)
    assert result.done, result.record.error
