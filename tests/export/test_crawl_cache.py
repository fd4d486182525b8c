"""The crawl cache (``cohort.export.crawl``): which files a rerun reads again."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pydicom
import pytest

import cohort.export.crawl as crawl_module
from cohort.export.crawl import RETRIED_ERROR, crawl
from cohort.export.pseudonyms import PseudonymKey
from cohort.ingest import InputName, dicom, load_ct
from cohort.ingest.series_of_files import CRAWL_ROOT_METADATA, SeriesOfFiles, crawl_cache_path, crawled_files_under
from cohort.manifest import SeriesSpec
from cohort.pipeline import learn_crawled_series
from tests.export.conftest import JANE
from tests.export.pacs import Study, example_slices, write_series

KEY = PseudonymKey(b"k" * 32)


def test_a_file_that_could_not_be_opened_is_read_again_on_the_next_crawl(examples: Path, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """An OSError (permissions, a network file system) is no property of the file: fixing it
    (chmod changes no size or mtime) must not leave the file unreadable in every later crawl."""
    root, cache = tmp_path / "export", tmp_path / "scans.crawl.parquet"
    write_series(root / "ct", example_slices(examples)[:3], Study(JANE))
    denied = sorted((root / "ct").iterdir())[0]
    real_open = open

    def refusing_open(path, *args, **kwargs):
        if Path(path) == denied:
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    with monkeypatch.context() as patched:
        patched.setattr(crawl_module, "open", refusing_open, raising=False)
        first = crawl(root, cache, KEY)
    assert first.files["error"].tolist().count("cannot open (PermissionError)") == 1

    again = crawl(root, cache, KEY)
    assert again.files["error"].isna().all(), again.files[["file", "error"]]
    assert (again.n_read, again.n_new, again.n_changed) == (1, 0, 1)


def test_a_linked_folder_is_listed_as_not_followed(examples: Path, tmp_path: Path) -> None:
    """A symbolic link to a folder is not crawled (``cohort run`` does not follow it either), but
    never silently: its series would be missing from the index without a word."""
    elsewhere, root = tmp_path / "elsewhere", tmp_path / "export"
    write_series(elsewhere / "ct", example_slices(examples)[:3], Study(JANE))
    root.mkdir()
    (root / "ct_link").symlink_to(elsewhere / "ct", target_is_directory=True)
    files = crawl(root, tmp_path / "scans.crawl.parquet", KEY).files
    assert files[["file", "error"]].to_dict("records") == [
        {"file": "ct_link", "error": "unreadable (a link to a folder, not followed: crawl its target)"}]


def test_a_new_pseudonym_key_is_announced(examples: Path, tmp_path: Path) -> None:
    """A mistyped ``--key`` or a lost default key makes a new key, hence new ``series_id`` and
    ``subject_id`` for every series: the summary says so on that run, and only on that one."""
    from cohort.export import build_manifest

    root, key = tmp_path / "export", tmp_path / "keys" / "typo.key"
    write_series(root / "ct", example_slices(examples)[:3], Study(JANE))
    first = build_manifest(root, tmp_path / "out" / "scans.csv", key=key)
    assert first.new_key == key
    assert any(f"new pseudonym key created: {key}" in line for line in first.describe(tmp_path / "out" / "scans.csv"))
    again = build_manifest(root, tmp_path / "out" / "scans.csv", key=key)
    assert again.new_key is None and not any("new pseudonym key" in line for line in again.describe(key))


def _flat_study(examples: Path, root: Path) -> tuple[Path, list[str]]:
    """Three series of one study written flat into one folder, beside a file that is no DICOM."""
    folder, study, slices = root / "study", Study(JANE), example_slices(examples)
    uids = [write_series(folder, slices, study) for _ in range(3)]
    (folder / "README.txt").write_text("exported by the PACS\n")
    return folder, uids


def _header_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The files whose headers pydicom reads from now on (headers only: pixels come from GDCM)."""
    reads: list[str] = []
    real = pydicom.dcmread

    def counted(file, *args, **kwargs):
        if kwargs.get("stop_before_pixels"):
            reads.append(str(file))
        return real(file, *args, **kwargs)

    monkeypatch.setattr(pydicom, "dcmread", counted)
    return reads


def _new_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dicom, "SERIES_OF_FILES", SeriesOfFiles())


def test_a_worker_reads_only_its_series_headers_where_the_manifest_crawled_the_folder(
        examples: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first row of a flat study folder on a new worker reads its own 20 headers (and tries the
    file the crawl found no DICOM), not the folder's 61 files, and gets the same volume as reading
    them all."""
    folder, (series_a, _, _) = _flat_study(examples, tmp_path / "export")
    manifest = tmp_path / "scans.csv"
    crawl(tmp_path / "export", crawl_cache_path(manifest), KEY)
    spec = SeriesSpec("a", folder, 2, manifest, series_uid=series_a)

    _new_worker(monkeypatch)
    reads = _header_reads(monkeypatch)
    every_header = load_ct(InputName.in_manifest(folder, 2), series_uid=series_a)
    assert len(reads) == 61

    _new_worker(monkeypatch)
    reads.clear()
    learn_crawled_series(spec)
    learnt = load_ct(InputName.in_manifest(folder, 2), series_uid=series_a)
    own = [file for file in reads if Path(file).name.startswith(f"IM{series_a[-6:]}")]
    assert len(own) == 20 and set(reads) - set(own) == {str(folder / "README.txt")}  # judged by the worker itself
    assert np.array_equal(learnt.hu, every_header.hu) and np.array_equal(learnt.affine, every_header.affine)


def test_a_file_changed_since_the_crawl_is_read_again(examples: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A file of series B rewritten after the crawl as one more slice of series A: learnt as B's,
    A would silently lose its top slice. Its times changed, so the worker reads it."""
    folder, (series_a, series_b, _) = _flat_study(examples, tmp_path / "export")
    manifest = tmp_path / "scans.csv"
    crawl(tmp_path / "export", crawl_cache_path(manifest), KEY)
    top = pydicom.dcmread(sorted(folder.glob(f"IM{series_a[-6:]}_*.dcm"))[-1])
    below = pydicom.dcmread(sorted(folder.glob(f"IM{series_a[-6:]}_*.dcm"))[-2])
    step = float(top.ImagePositionPatient[2]) - float(below.ImagePositionPatient[2])
    top.ImagePositionPatient = [*top.ImagePositionPatient[:2], float(top.ImagePositionPatient[2]) + step]
    top.SOPInstanceUID = top.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    top.save_as(sorted(folder.glob(f"IM{series_b[-6:]}_*.dcm"))[0])

    _new_worker(monkeypatch)
    reads = _header_reads(monkeypatch)
    learn_crawled_series(SeriesSpec("a", folder, 2, manifest, series_uid=series_a))
    volume = load_ct(InputName.in_manifest(folder, 2), series_uid=series_a)
    assert volume.hu.shape[2] == 21 and len(reads) == 22  # A's 20, the rewritten file, README.txt


def test_a_crawl_of_an_older_cohort_or_another_export_teaches_nothing(examples: Path, tmp_path: Path) -> None:
    """Without the root in the cache's metadata (an older crawl) or for a folder outside the crawled
    export, nothing is learnt (every header is read, as before); a file the crawl could not open is
    never learnt."""
    folder, _ = _flat_study(examples, tmp_path / "export")
    cache = tmp_path / "scans.crawl.parquet"
    crawl(tmp_path / "export", cache, KEY)
    crawled = crawled_files_under(cache, folder)
    assert len(crawled) == 60 and "README.txt" not in {Path(file).name for file in crawled}
    assert all(file.startswith(str(folder) + "/") for file in crawled)
    assert crawled_files_under(cache, tmp_path / "elsewhere") == {}
    assert len(crawled_files_under(cache, tmp_path / "export")) == 60  # the root itself

    table = pq.read_table(cache)
    metadata = {key: value for key, value in table.schema.metadata.items() if key != CRAWL_ROOT_METADATA}
    pq.write_table(table.replace_schema_metadata(metadata), cache)
    assert crawled_files_under(cache, folder) == {}

    files = crawl(tmp_path / "export", cache, KEY).files  # rows reused: their status-change times as listed now
    assert files["ctime_ns"].dtype == "int64" and (files["ctime_ns"] > 0).all()
    denied = files.loc[files["file"].str.endswith(".dcm"), "file"].iloc[0]
    table = pq.read_table(cache)
    errors = [RETRIED_ERROR + "PermissionError)" if file == denied else error
              for file, error in zip(table["file"].to_pylist(), table["error"].to_pylist())]
    pq.write_table(table.set_column(table.schema.get_field_index("error"), "error", pa.array(errors, pa.string())),
                   cache)
    assert len(crawled_files_under(cache, folder)) == 59


def test_a_crawl_moved_with_its_export_still_teaches(examples: Path, tmp_path: Path) -> None:
    """The root is recorded relative to the cache's folder when it lies under it: the manifest's
    folder moved (or mounted elsewhere on a cluster's nodes) with its export keeps its use, as
    renaming a parent folder changes no file's times."""
    site = tmp_path / "site"
    folder, _ = _flat_study(examples, site / "export")
    crawl(site / "export", site / "scans.crawl.parquet", KEY)
    assert pq.read_schema(site / "scans.crawl.parquet").metadata[CRAWL_ROOT_METADATA] == b"export"
    site.rename(tmp_path / "moved")
    moved = tmp_path / "moved" / "export" / "study"
    assert len(crawled_files_under(tmp_path / "moved" / "scans.crawl.parquet", moved)) == 60
