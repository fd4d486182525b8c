"""``cohort models download``: fetch a model's release archives, check them, unpack atomically.

For every network of a model that is not already present: the archive named by the model's
``weights_url`` (or the same file name under ``--mirror``) is downloaded to
``<weights>/.downloads/<file>.part``, resuming with an HTTP Range request after a cut connection
(within this command, and across commands: the ``.part`` file stays), then checked (size as
announced, zip integrity, sha256 when the model file records one), unpacked into a temporary
folder beside the target, checked as a model folder, and renamed into place. A failure at any
step leaves no model folder behind, only the resumable ``.part`` file (a corrupt archive
removes it too).
"""

from __future__ import annotations

import fnmatch
import hashlib
import http.client
import logging
import shutil
import sys
import time
import urllib.error
import urllib.request
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from cohort.errors import RunCannotStart
from cohort.segmentation.registry import ModelSpec, NetworkSpec
from cohort.segmentation.weights import (PENDING_ARCHIVES, archive_url, dataset_folder, network_status,
                                         pending_archives)

log = logging.getLogger(__name__)
CHUNK_BYTES = 1 << 20
MAX_ATTEMPTS = 5
RETRY_WAIT_S = 1.0
TIMEOUT_S = 60.0
SEARCH_DEPTH = 2  # the dataset folder may sit one folder deep in an archive (e.g. nnUNet_results/)

Progress = Callable[[str, int, int | None], None]


class DownloadFailed(RunCannotStart):
    """An archive could not be fetched or is not the model it should be (exit code 2)."""


@dataclass(frozen=True)
class Fetched:
    """One network's outcome: ``state`` is ``present`` (already there) or ``installed``."""

    dataset: str
    state: str
    folder: Path


def download_model(spec: ModelSpec, weights_dir: Path, mirror: str | None = None,
                   progress: Progress | None = None) -> list[Fetched]:
    """Install every missing network of ``spec`` into ``weights_dir``; raise :class:`DownloadFailed`."""
    weights_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for network in spec.networks:
        status = network_status(spec, network, weights_dir)
        if status.state == "present":
            results.append(Fetched(network.dataset, "present", dataset_folder(network, weights_dir)))
            continue
        if status.state == "broken":
            raise DownloadFailed(f"{dataset_folder(network, weights_dir)} is broken ({status.problem}); remove it "
                                 f"first (rm -r {dataset_folder(network, weights_dir)}), then download again")
        progress = progress or ProgressLines()
        if status.state == "missing":
            url = archive_url(spec, network, mirror)
            archive = fetch(url, weights_dir / ".downloads", progress)
            check_archive(archive, network, url)
            folder = install(archive, spec, network, weights_dir, url)
            archive.unlink()
        else:
            folder = dataset_folder(network, weights_dir)
        add_pending_archives(spec, network, folder, mirror, progress)
        results.append(Fetched(network.dataset, "installed", folder))
    return results


def add_pending_archives(spec: ModelSpec, network: NetworkSpec, folder: Path, mirror: str | None,
                         progress: Progress) -> None:
    """Fetch and unpack into ``folder`` every further archive its :data:`PENDING_ARCHIVES` lists (as
    VIBESegmentator's code does: more folds), then remove the list; a failure keeps the list, so the
    folder stays ``incomplete`` and the next command fetches what is left."""
    suffixes = pending_archives(folder)
    if not suffixes:
        return
    for suffix in suffixes:
        url = archive_url(spec, network, mirror, suffix)
        archive = fetch(url, folder.parent / ".downloads", progress)
        check_archive(archive, network, url)
        with zipfile.ZipFile(archive) as bundle:
            bundle.extractall(folder)
        archive.unlink()
    (folder / PENDING_ARCHIVES).unlink()
    status = network_status(spec, network, folder.parent)
    if status.state != "present":
        raise DownloadFailed(f"{folder}: not a complete model after its further archives: {status.problem}")


def fetch(url: str, folder: Path, progress: Progress) -> Path:
    """Download ``url`` into ``folder`` (resumed from a ``.part`` file); return the finished file."""
    folder.mkdir(parents=True, exist_ok=True)
    name = url.rsplit("/", 1)[-1]
    part = folder / f"{name}.part"
    for attempt in range(1, MAX_ATTEMPTS + 1):
        try:
            if _fetch_once(url, part, name, progress):
                done = folder / name
                part.replace(done)
                return done
        except (OSError, http.client.HTTPException) as error:
            if isinstance(error, urllib.error.HTTPError) and error.code != 416:
                raise DownloadFailed(f"{url}: HTTP {error.code} {error.reason}") from None
            reason = getattr(error, "reason", None) or error
            if url.startswith("file:"):  # a mirror folder: no connection to lose, a retry would fail alike
                raise DownloadFailed(f"{url}: {getattr(reason, 'strerror', None) or reason}") from None
            log.warning("%s: connection lost after %d bytes (%s); resuming (attempt %d of %d)", name,
                        part.stat().st_size if part.exists() else 0, reason, attempt, MAX_ATTEMPTS)
            time.sleep(RETRY_WAIT_S * attempt)
    raise DownloadFailed(f"{url}: download did not complete after {MAX_ATTEMPTS} attempts; rerun the command "
                         f"to resume from {part.stat().st_size if part.exists() else 0} bytes")


def _fetch_once(url: str, part: Path, name: str, progress: Progress) -> bool:
    """One request from where ``part`` ends; True when the whole file is there."""
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as error:
        if error.code == 416 and have:  # nothing after `have`: the file was complete, or changed: start again
            part.unlink()
        raise
    with response:
        total = _total_size(response, have)
        if response.status != 206 and have:
            have = 0  # the server ignored the range (a file: URL always does): start again
        with part.open("r+b" if have else "wb") as handle:
            handle.seek(have)
            handle.truncate()
            done = have
            while chunk := response.read(CHUNK_BYTES):
                handle.write(chunk)
                done += len(chunk)
                progress(name, done, total)
    if total is not None and done != total:
        raise http.client.IncompleteRead(b"", total - done)
    return True


def _total_size(response, have: int) -> int | None:
    """The full file size from Content-Range (206) or Content-Length (200); None when not announced."""
    if response.status == 206:
        content_range = response.headers.get("Content-Range", "")
        start, _, total = content_range.removeprefix("bytes ").partition("/")
        if not start.startswith(f"{have}-"):
            raise DownloadFailed(f"server answered range {content_range!r} to a request from byte {have}")
        return int(total) if total.isdigit() else None
    length = response.headers.get("Content-Length")
    return int(length) if length and length.isdigit() else None


def check_archive(archive: Path, network: NetworkSpec, url: str) -> None:
    """Zip integrity (every member's CRC) and the recorded sha256; a bad archive is removed."""
    problem = ""
    try:
        with zipfile.ZipFile(archive) as bundle:
            bad = bundle.testzip()
            if bad is not None:
                problem = f"member {bad} fails its CRC check"
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        problem = f"not a readable zip archive ({error})"
    if not problem and network.sha256 is not None:
        digest = hashlib.sha256()
        with archive.open("rb") as handle:
            while block := handle.read(CHUNK_BYTES):
                digest.update(block)
        if digest.hexdigest().lower() != network.sha256.lower():
            problem = f"sha256 {digest.hexdigest()} differs from the model file's {network.sha256}"
    if problem:
        archive.unlink(missing_ok=True)
        raise DownloadFailed(f"{url}: corrupt archive: {problem}; it was removed, run the command again "
                             "(or check --mirror)")


def install(archive: Path, spec: ModelSpec, network: NetworkSpec, weights_dir: Path, url: str) -> Path:
    """Unpack into a temporary folder beside the target, check it, rename the dataset folder into place."""
    staging = weights_dir / f".unpack-{network.dataset_id}-{uuid.uuid4().hex[:8]}"
    try:
        with zipfile.ZipFile(archive) as bundle:
            bundle.extractall(staging / "archive")
        found = _find_dataset(staging / "archive", network) or _content_as_dataset(staging, network)
        status = network_status(spec, network, found.parent)
        if status.state not in ("present", "incomplete"):  # incomplete: its further archives follow
            raise DownloadFailed(f"{url}: the archive's {found.name} is not a complete model: {status.problem}")
        target = weights_dir / found.name
        found.rename(target)
        return target
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _content_as_dataset(staging: Path, network: NetworkSpec) -> Path:
    """An archive without a dataset folder holds one's content (VIBESegmentator's ``100.zip``: its
    code unpacks it into ``Dataset100/``): the unpacked files become that folder."""
    folder = staging / network.unpacked_name
    (staging / "archive").rename(folder)
    return folder


def _find_dataset(root: Path, network: NetworkSpec) -> Path | None:
    level = [root]
    for _ in range(SEARCH_DEPTH):
        level = sorted(p for folder in level for p in folder.iterdir() if p.is_dir())
        matches = [p for p in level if fnmatch.fnmatch(p.name, network.dataset)]
        if matches:
            return matches[0]
    return None


class ProgressLines:
    """Progress on stderr: a line per tenth of each file (one updated line on a terminal)."""

    def __init__(self) -> None:
        self._shown: dict[str, int] = {}

    def __call__(self, name: str, done: int, total: int | None) -> None:
        step = done * 10 // total if total else done // (50 * CHUNK_BYTES)
        if self._shown.get(name) == step:
            return
        self._shown[name] = step
        size = f"{done / 1e6:.1f} of {total / 1e6:.1f} MB ({100 * done // total} %)" if total else f"{done / 1e6:.1f} MB"
        end = "\r" if sys.stderr.isatty() and done != total else "\n"
        print(f"{name}: {size}", end=end, file=sys.stderr, flush=True)
