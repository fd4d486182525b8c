"""The crawl cache (``cohort.export.crawl``): which files a rerun reads again."""

from __future__ import annotations

from pathlib import Path

import pytest

import cohort.export.crawl as crawl_module
from cohort.export.crawl import crawl
from cohort.export.pseudonyms import PseudonymKey
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
