"""``cohort run`` end to end through the real CLI, Prefect flow and local Dask cluster:
tables, resume, a SIGKILL halfway, two runs on one folder, privacy, Zarr recompute."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pydicom
import pytest

from cohort.config import load_run_config
from cohort.ingest import load_ct
from cohort.pipeline import MeasureSettings, measure_series
from cohort.ingest.volume import LabelMap
from cohort.store import read_label_map, write_label_map
from testkit import cli_env, cohort_cli, result_tables, write_manifest



def _many_rows(examples: Path, tmp_path: Path, n: int) -> Path:
    rows = []
    for i in range(n):
        if i % 3 == 0:
            rows.append({"series_id": f"dcm{i:03d}", "path": str(examples / "example_ct_dicom"), "age": 30 + i,
                         "sex": "F", "labels": str(examples / "example_seg_dicom.nii.gz")})
        else:
            rows.append({"series_id": f"nii{i:03d}", "path": str(examples / "example_ct_sm.nii.gz"), "age": 40 + i,
                         "sex": "M", "labels": str(examples / "example_seg_fast.nii.gz")})
    rows.append({"series_id": "broken", "path": str(tmp_path / "missing.nii.gz"), "age": 50, "sex": "M",
                 "labels": str(examples / "example_seg_fast.nii.gz")})
    return write_manifest(tmp_path / "scans.csv", rows)


@pytest.fixture(scope="module")
def small_batches(tmp_path_factory) -> Path:
    config = tmp_path_factory.mktemp("config") / "run.yaml"
    config.write_text("execution:\n  batch_size: 2\n  flush_interval_s: 1\n")
    return config


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, examples: Path, small_batches: Path, prefect_server: str
                  ) -> tuple[Path, Path, subprocess.CompletedProcess]:
    folder = tmp_path_factory.mktemp("reference")
    manifest = _many_rows(examples, folder, 12)
    out = folder / "results"
    result = cohort_cli("run", "--manifest", str(manifest), "--out", str(out), "--config", str(small_batches),
                        "--workers", "2", api=prefect_server)
    return manifest, out, result


def test_example_manifest_gives_the_contractresult_tables(tmp_path: Path, examples: Path) -> None:
    """The README's path: shipped example, embedded defaults, Prefect in ephemeral mode."""
    out = tmp_path / "results"
    result = cohort_cli("run", "--manifest", str(examples / "manifest.csv"), "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "done" in result.stderr and str(out / "features") in result.stderr.replace("\n", "")
    features = pd.read_parquet(out / "features")
    assert len(features) == 3 * 117
    assert {"series_id", "structure", "label", "volume_ml", "mean_hu", "std_hu", "median_hu", "p05_hu", "p95_hu",
            "n_voxels", "status", "lower_bound_ml", "model", "measure_spacing_mm"} <= set(features.columns)
    assert set(features["status"]) <= {"ok", "absent", "fov_truncated", "below_lower_bound"}
    assert set(features["model"]) == {"labels"}
    series = pd.read_parquet(out / "series")
    assert sorted(series["series_id"]) == ["example_dicom", "example_fast", "example_full"]
    assert (series["status"] == "done").all() and series["error"].isna().all()
    query = f"""SELECT s.sex, count(*) AS n, avg(f.volume_ml) AS liver_ml
                FROM read_parquet('{out}/features/*.parquet') f JOIN read_parquet('{out}/series/*.parquet') s
                USING (series_id) WHERE f.structure = 'liver' GROUP BY s.sex ORDER BY s.sex"""
    assert [row[:2] for row in duckdb.sql(query).fetchall()] == [("F", 1), ("M", 2)]


def test_rerun_skips_done_rows_and_keepsresult_tables(reference_run, small_batches: Path, prefect_server: str) -> None:
    manifest, out, first = reference_run
    assert first.returncode == 1, first.stderr  # the broken row
    assert "failed line 14 (broken): <path of line 14>: file not found" in first.stderr
    features, series = result_tables(out)
    assert len(series) == 13 and (series["status"] == "done").sum() == 12
    parts = sorted(p.name for p in (out / "features").iterdir())
    started = time.perf_counter()
    again = cohort_cli("run", "--manifest", str(manifest), "--out", str(out), "--config", str(small_batches),
                       api=prefect_server)
    assert again.returncode == 1
    assert "1 series to process, 12 already done" in again.stderr.replace("\n", " ")
    features_again, series_again = result_tables(out)
    pd.testing.assert_frame_equal(features, features_again)
    pd.testing.assert_frame_equal(series, series_again)
    assert sorted(p.name for p in (out / "features").iterdir()) == parts
    assert not series_again["series_id"].duplicated().any()
    assert time.perf_counter() - started < 120


def test_sigkill_halfway_then_rerun_equals_uninterrupted(reference_run, tmp_path: Path, small_batches: Path,
                                                        prefect_server: str) -> None:
    manifest, reference_out, _ = reference_run
    out = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, "-m", "cohort.cli", "run", "--manifest", str(manifest), "--out",
                                str(out), "--config", str(small_batches), "--workers", "2"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=cli_env(prefect_server),
                               start_new_session=True)
    deadline = time.monotonic() + 180
    while not list((out / "series").glob("*.parquet")) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    done_at_kill = len(pd.read_parquet(out / "series")) if list((out / "series").glob("*.parquet")) else 0
    assert 0 < done_at_kill < 13, "the kill should land halfway"
    rerun = cohort_cli("run", "--manifest", str(manifest), "--out", str(out), "--config", str(small_batches),
                       api=prefect_server)
    assert rerun.returncode == 1, rerun.stderr
    for mine, reference in zip(result_tables(out), result_tables(reference_out)):
        pd.testing.assert_frame_equal(mine, reference)


def test_second_run_on_same_folder_is_refused(reference_run, small_batches: Path) -> None:
    manifest, out, _ = reference_run
    from cohort.store import OutputLayout, exclusive_output

    with exclusive_output(OutputLayout(out).lock, "cohort run --manifest held-by-test"):
        started = time.perf_counter()
        second = cohort_cli("run", "--manifest", str(manifest), "--out", str(out))
    assert second.returncode == 2
    message = " ".join(second.stderr.split())
    assert "in use by another cohort run" in message and f"pid {os.getpid()}" in message
    assert "held-by-test" in message
    assert time.perf_counter() - started < 30


def _hold_and_kill(lock: Path, holder: str) -> None:
    """A process that takes ``lock`` as ``holder``, then SIGKILLed while it holds it."""
    process = subprocess.Popen([sys.executable, "-c", f"""
from pathlib import Path
import time
from cohort.store import exclusive_output
with exclusive_output(Path({str(lock)!r}), {holder!r}):
    print("held", flush=True)
    time.sleep(600)
"""], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "held"
    process.kill()
    process.wait()


def test_killed_holder_does_not_leave_the_lock_stuck(tmp_path: Path) -> None:
    from cohort.store import exclusive_output

    lock = tmp_path / ".cohort.lock"
    _hold_and_kill(lock, "holder")
    with exclusive_output(lock, "after the kill"):
        pass


def test_a_refusal_while_the_holder_starts_names_it_not_the_killed_run_before(tmp_path: Path) -> None:
    """The lock file keeps a SIGKILLed run's record until the next holder writes its own, just after
    taking the lock: a second run refused in between must not name the dead run (which reads as a
    stale lock to remove by hand)."""
    from cohort.errors import OutputLocked
    from cohort.store import exclusive_output

    lock = tmp_path / ".cohort.lock"
    _hold_and_kill(lock, "the killed run")
    starting = subprocess.Popen([sys.executable, "-c", f"""
import fcntl, json, os, socket, time
handle = open({str(lock)!r}, "a+")
fcntl.flock(handle, fcntl.LOCK_EX)  # what exclusive_output does first; its record follows
print("locked", flush=True)
time.sleep(0.5)
handle.seek(0)
handle.truncate()
handle.write(json.dumps({{"pid": os.getpid(), "host": socket.gethostname(), "started": "now",
                         "command": "the starting run"}}))
handle.flush()
time.sleep(600)
"""], stdout=subprocess.PIPE, text=True)
    try:
        assert starting.stdout.readline().strip() == "locked"
        with pytest.raises(OutputLocked) as refused:
            with exclusive_output(lock, "the refused run"):
                pass
    finally:
        starting.kill()
        starting.wait()
    assert f"pid {starting.pid} " in str(refused.value) and "the starting run" in str(refused.value)
    assert "the killed run" not in str(refused.value)


PATIENT = {"PatientName": "DOE^JANE^Q", "PatientID": "PID-493817", "PatientBirthDate": "19580312",
           "AccessionNumber": "ACC-77321", "InstitutionName": "St Elsewhere Hospital",
           "ReferringPhysicianName": "HOUSE^GREGORY"}


def test_outputs_hold_no_patient_data(tmp_path: Path, examples: Path, prefect_server: str) -> None:
    """Nor the series' DICOM UIDs, which carry the institution's root and the acquisition time and
    look the series up in the PACS, nor a plain hash of one: ``series/`` keeps a digest of the
    manifest's ``series_uid`` keyed with the series' content."""
    dicom = tmp_path / "identified_dicom"
    dicom.mkdir()
    uids = {"SeriesInstanceUID": "1.2.826.0.1.3680043.2.1125.1958031207", "StudyInstanceUID": "1.2.826.0.1.77321"}
    for source in (examples / "example_ct_dicom").iterdir():
        dataset = pydicom.dcmread(source)
        for keyword, value in {**PATIENT, **uids}.items():
            setattr(dataset, keyword, value)
        dataset.save_as(dicom / source.name)
    out = tmp_path / "results"
    manifest = write_manifest(tmp_path / "scans.csv", [
        {"series_id": "ct1", "path": str(dicom), "series_uid": uids["SeriesInstanceUID"], "age": 57, "sex": "F",
         "labels": str(examples / "example_seg_dicom.nii.gz")}])
    assert cohort_cli("run", "--manifest", str(manifest), "--out", str(out), api=prefect_server).returncode == 0
    unkeyed = hashlib.sha256(uids["SeriesInstanceUID"].encode()).hexdigest()[:16]  # linkable with a UID list
    secrets = [*PATIENT.values(), *uids.values(), unkeyed, "DOE^JANE", "19580312"]
    tables = pd.concat([pd.read_parquet(out / "series").astype(str), pd.read_parquet(out / "features").astype(str)])
    for secret in secrets:
        assert not tables.apply(lambda column: column.str.contains(secret, regex=False)).any().any(), secret
    files = [path for path in out.rglob("*") if path.is_file()]
    assert any(path.suffix == ".parquet" for path in files) and any("zarr" in str(path) for path in files)
    for path in files:
        content = path.read_bytes()
        for secret in secrets:
            assert secret.encode() not in content, (path, secret)
    series = pd.read_parquet(out / "series")
    assert set(series.columns).isdisjoint({"path", "patient_name", "patient_id", "birth_date", "accession_number"})


def test_features_can_be_recomputed_from_zarr(reference_run, examples: Path) -> None:
    _, out, _ = reference_run
    stored = read_label_map(out / "labels.zarr", "dcm000")
    volume = load_ct(examples / "example_ct_dicom")
    recomputed = measure_series("dcm000", volume, stored, "labels",
                                MeasureSettings.from_config(load_run_config())).to_pandas()
    features, _ = result_tables(out)
    original = features[features["series_id"] == "dcm000"].reset_index(drop=True)
    pd.testing.assert_frame_equal(recomputed, original)
    np.testing.assert_allclose(stored.affine, volume.affine)


def test_a_label_map_is_read_back_from_a_store_named_by_a_string(tmp_path: Path) -> None:
    """The README's way back to a label map, ``read_label_map("results/labels.zarr", id)``, takes the
    store as a ``str`` too, as a notebook writes it."""
    labels = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    affine = np.diag([1.5, 1.5, 3.0, 1.0])
    store = tmp_path / "labels.zarr"
    write_label_map(store, "s1", LabelMap(labels=labels, affine=affine, source=tmp_path / "seg.nii.gz"), {}, "key")
    stored = read_label_map(str(store), "s1")
    np.testing.assert_array_equal(stored.labels, labels)
    np.testing.assert_allclose(stored.affine, affine)
    assert stored.source == store / "s1"
