"""Which DICOM series each file under a folder belongs to, remembered by a worker process.

A PACS study folder holding its series flat is named by every row of its study, each with its
own ``series_uid``. Finding a row's files means reading every header under the folder, so the
rows of one folder that a worker runs read all of them again, row after row (about 1 s per row
for 2,400 files; docs/performance.md). A worker now remembers each file's series with the file's
identity (device, inode, size, modification and status-change times in nanoseconds): a file
written, replaced or renamed over since has another identity (its status-change time moves with
any change and cannot be set back), so its header is read again. Only files known to be of
another series (or no DICOM at all) are skipped that way; a row always reads its own files'
headers. Memory is bounded: the files of the :data:`MAX_FOLDERS` folders used last.

A worker new to a folder can learn the same from ``cohort manifest``'s crawl, which read every
header once (:meth:`SeriesOfFiles.learn_from_crawl`, the crawl cache beside the manifest): a file
still of the size, modification and status-change times the crawl saw is known to be of the
series it found, so even the first row of a folder reads only its own series' headers. Files
added or changed since the crawl, and those it could not read, are read as before.

>>> import tempfile
>>> with tempfile.TemporaryDirectory() as folder:
...     file = os.path.join(folder, "IM1"); _ = open(file, "w").write("x")
...     known = FolderSeries(Path(folder))
...     known.remember(file, file_identity(file), "1.2.3")
...     SERIES_OF_FILES.store(known)
...     SERIES_OF_FILES.folder(Path(folder)).of_another_series(file, file_identity(file), "1.2.4")
True
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

MAX_FOLDERS = 16
CRAWL_ROOT_METADATA = b"cohort.crawl_root"
"""The crawl cache's metadata key holding the export's root (:func:`crawl_root_text`): its ``file``
column is relative to it."""

FileIdentity = tuple[int, int, int, int, int]


def file_identity(file: str) -> FileIdentity | None:
    """Device, inode, size, modification and status-change times (ns) of ``file``; None when gone."""
    try:
        status = os.stat(file)
    except OSError:
        return None
    return status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns, status.st_ctime_ns


@dataclass(frozen=True)
class CrawledFile:
    """A file as ``cohort manifest``'s crawl saw it: its stat and the series of its header."""

    size: int
    mtime_ns: int
    ctime_ns: int
    series_uid: str

    def matches(self, identity: FileIdentity | None) -> bool:
        """Whether a file of ``identity`` is still the one the crawl read (a status change comes with
        any write, rename over or copy onto it, and cannot be set back)."""
        return identity is not None and identity[2:] == (self.size, self.mtime_ns, self.ctime_ns)


class FolderSeries:
    """The series of the files of one folder, as last read: file -> (identity, series UID or None
    for a file that is no readable DICOM)."""

    def __init__(self, folder: Path, files: dict[str, tuple[FileIdentity | None, str | None]] | None = None) -> None:
        self.folder = folder
        self.files = dict(files or {})

    def of_another_series(self, file: str, identity: FileIdentity | None, series_uid: str) -> bool:
        """Whether ``file``, unchanged since it was read, is of another series than ``series_uid``
        (or no DICOM): its header need not be read to know it is none of this series' files."""
        known = self.files.get(file)
        return identity is not None and known is not None and known[0] == identity and known[1] != series_uid

    def remember(self, file: str, identity: FileIdentity | None, series_uid: str | None) -> None:
        self.files[file] = (identity, series_uid)


class SeriesOfFiles:
    """The :class:`FolderSeries` of the folders a process read last (thread-safe: a worker's slots
    find their series side by side)."""

    def __init__(self, max_folders: int = MAX_FOLDERS) -> None:
        self._folders: OrderedDict[str, FolderSeries] = OrderedDict()
        self._lock = threading.Lock()
        self._max_folders = max_folders

    def folder(self, folder: Path) -> FolderSeries:
        """A copy of what is known of ``folder``'s files (empty when nothing is)."""
        with self._lock:
            known = self._folders.get(str(folder))
            return FolderSeries(folder, known.files if known else None)

    def knows(self, folder: Path) -> bool:
        with self._lock:
            return str(folder) in self._folders

    def learn_from_crawl(self, folder: Path, crawled: dict[str, CrawledFile]) -> int:
        """Remember of a folder this process has not read the series of each file the crawl read
        that is unchanged since (``crawled``: by path as ``os.walk(folder)`` spells it); returns how
        many files. A folder already known keeps what this process read itself."""
        known = FolderSeries(folder)
        for file, seen in crawled.items():
            identity = file_identity(file)
            if seen.matches(identity):
                known.remember(file, identity, seen.series_uid)
        with self._lock:
            if str(folder) in self._folders or not known.files:
                return 0
            self._keep(known)
        return len(known.files)

    def store(self, known: FolderSeries) -> None:
        """Keep ``known`` as what is known of its folder, the folder least recently stored dropped beyond the bound."""
        with self._lock:
            self._keep(known)

    def _keep(self, known: FolderSeries) -> None:
        self._folders[str(known.folder)] = known
        self._folders.move_to_end(str(known.folder))
        while len(self._folders) > self._max_folders:
            self._folders.popitem(last=False)


SERIES_OF_FILES = SeriesOfFiles()


def crawl_cache_path(manifest: Path) -> Path:
    """The crawl cache ``cohort manifest`` keeps beside a manifest (one header row per file, no
    identifying field; ``cohort.export.crawl``)."""
    return manifest.with_name(manifest.stem + ".crawl.parquet")


def crawl_root_text(root: Path, cache: Path) -> str:
    """The export's root as the crawl cache records it: relative to the cache's folder when it lies
    under it (the two then move, or are mounted elsewhere on a cluster's nodes, together), else
    absolute, as ``cohort manifest`` writes a row's ``path``."""
    root, home = Path(os.path.abspath(root)), Path(os.path.abspath(cache)).parent
    return root.relative_to(home).as_posix() if root.is_relative_to(home) else str(root)


def crawled_files_under(cache: Path, folder: Path) -> dict[str, CrawledFile]:
    """The files under ``folder`` that the crawl of ``cache`` read as DICOM images, by path spelled as
    ``os.walk(folder)`` spells it; empty when the cache is missing, unreadable, of an older cohort
    (no root or status-change times) or of an export ``folder`` is not in.

    Files the crawl could not read or judged unusable are left out: ``cohort run`` reads those
    itself, so that its own reasons (a truncated file of the series, say) still apply. Only the
    cache's rows of the folder are read: they are sorted by path, in small row groups."""
    try:
        schema = pq.read_schema(cache)
        root = (schema.metadata or {}).get(CRAWL_ROOT_METADATA)
        if root is None or "ctime_ns" not in schema.names:
            return {}
        within = os.path.relpath(os.path.abspath(folder), os.path.join(os.path.abspath(cache.parent), root.decode()))
        if within == os.pardir or within.startswith(os.pardir + os.sep):
            return {}
        prefix = "" if within == os.curdir else Path(within).as_posix() + "/"
        filters = [("file", ">=", prefix), ("file", "<", prefix[:-1] + chr(ord("/") + 1))] if prefix else None
        table = pq.read_table(cache, columns=["file", "error", "series_uid", "size", "mtime_ns", "ctime_ns"],
                              filters=filters)
    except (OSError, pa.ArrowException):
        return {}
    table = table.filter(pc.and_(pc.and_(pc.is_null(table["error"]), pc.is_valid(table["ctime_ns"])),
                                 pc.greater_equal(table["size"], 0)))
    columns = (table[name].to_pylist() for name in ("file", "series_uid", "size", "mtime_ns", "ctime_ns"))
    base = str(folder)
    return {os.path.join(base, *file[len(prefix):].split("/")): CrawledFile(size, mtime, ctime, uid or "")
            for file, uid, size, mtime, ctime in zip(*columns)}
