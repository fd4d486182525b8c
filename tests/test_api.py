"""The public Python API (``cohort.run``, ``measure``, ``segment``, ``open_results``): the same
run as the CLI, from a notebook; and the docstring examples, run as doctests."""

from __future__ import annotations

import doctest
import importlib
import threading
from pathlib import Path

import pandas as pd
import pytest

import cohort
from cohort.errors import ManifestError, OutputLocked
from cohort.manifest import example_manifest
from cohort.store import OutputLayout, exclusive_output
from testkit import write_manifest

DOCTEST_MODULES = ["cohort.api", "cohort.segmentation.registry", "cohort.stats.study", "cohort.provenance",
                   "cohort.stats.overlays", "cohort.flows.warmup", "cohort.flows.cuda",
                   "cohort.flows.job_gpus", "cohort.segmentation.gate", "cohort.flows.resources",
                   "cohort.flows.clusters", "cohort.flows.alone", "cohort.flows.dispatch", "cohort.store.records",
                   "cohort.stats.review_server", "cohort.stats.methods"]


@pytest.mark.parametrize("name", DOCTEST_MODULES)
def test_docstring_examples_run(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0


def test_run_then_open_results_as_in_a_notebook(tmp_path: Path, examples: Path) -> None:
    manifest = write_manifest(tmp_path / "scans.csv", [
        {"series_id": "a", "path": str(examples / "example_ct_sm.nii.gz"), "age": "065Y", "sex": "female",
         "labels": str(examples / "example_seg_fast.nii.gz")}])
    text = manifest.read_text().splitlines()  # add a covariate column, carried into series/
    manifest.write_text("\n".join([text[0] + ",kvp", text[1] + ",120"]) + "\n")
    out = tmp_path / "results"
    summary = cohort.run(str(manifest), out, workers=1)
    assert (summary.exit_code, summary.n_done) == (0, 1)
    again = cohort.run(manifest, str(out), workers=1)
    assert (again.exit_code, again.n_done, again.n_skipped) == (0, 0, 1)

    results = cohort.open_results(out)
    assert len(results.features) == 117
    row = results.series.set_index("series_id").loc["a"]
    assert (row["age"], row["sex"], row["kvp"]) == (65.0, "F", "120")
    assert results.sql("SELECT count(*) FROM features f JOIN series s USING (series_id) "
                       "WHERE s.kvp = '120'").fetchall() == [(117,)]
    measured = cohort.measure(examples / "example_ct_sm.nii.gz", examples / "example_seg_fast.nii.gz", series_id="a")
    stored = results.features.sort_values("label").reset_index(drop=True)
    pd.testing.assert_frame_equal(measured, stored, check_dtype=False)


def test_run_from_another_thread_respects_the_lock(tmp_path: Path) -> None:
    out = tmp_path / "results"
    errors: list[BaseException] = []
    with exclusive_output(OutputLayout(out).lock, "held by the test"):
        thread = threading.Thread(target=lambda: _capture(errors, example_manifest(), out))
        thread.start()
        thread.join(120)
    assert len(errors) == 1 and isinstance(errors[0], OutputLocked)
    assert "held by the test" in str(errors[0])


def _capture(errors: list[BaseException], manifest: Path, out: Path) -> None:
    try:
        cohort.run(manifest, out)
    except BaseException as error:  # the test asserts on what was raised
        errors.append(error)


def test_a_bad_manifest_raises_what_the_cli_exits_2_for(tmp_path: Path) -> None:
    manifest = tmp_path / "scans.csv"
    manifest.write_text("series_id,labels\nx,y\n")
    with pytest.raises(ManifestError, match="required column 'path'"):
        cohort.run(manifest, tmp_path / "out")


def test_reading_results_that_are_not_there_says_which_table_and_what_to_run(tmp_path: Path) -> None:
    from testkit import cohort_cli

    with pytest.raises(FileNotFoundError, match=r"features: no Parquet table here; run `cohort run --out .*` first"):
        cohort.open_results(tmp_path)
    (tmp_path / "features").mkdir()
    (tmp_path / "features" / "part-0.parquet").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"series: no Parquet table here"):
        cohort.open_results(tmp_path)
    result = cohort_cli("stats", "--results", str(tmp_path), timeout=120)
    assert result.returncode == 2 and "series: no Parquet table here" in result.stderr, result.stderr
