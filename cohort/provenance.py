"""What a result depends on, as short digests: the run key and the input fingerprint.

Every ``series/`` row records both, and every stored label map records the key of what made it.
A rerun compares them with what it would do now, so that rows measured two ways are never
mixed in one table and a changed input file is never silently kept:

- the **run key** of a row: the model (name, its YAML and class map, the weights' fingerprint;
  ``labels`` for a precomputed label map) and the measurement settings (class map, lower
  bounds, border rule);
- the **input fingerprint** of a row: path, size, modification and status-change time of the image file (every
  file under a DICOM folder) and of its companions (precomputed label map, every file under a
  ``labels`` folder of masks; Dixon fat and water), a check that costs one ``stat`` per file;
- the **input content** of a row: a digest of the same files' bytes, wherever they are. When the
  fingerprint of a done row changed, a rerun compares contents: equal contents mean the files
  were moved or copied (scratch to archive) or touched, and the row stands.

The weights' fingerprint hashes each network's ``dataset.json`` and ``plans.json`` and, for the
checkpoint, its size and its first and last 4 MiB: a retrained or swapped network changes it,
copying the folder elsewhere does not, and it costs milliseconds rather than the seconds a full
hash of gigabytes of checkpoints would.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, NamedTuple

LABELS_MODEL = "labels"
EDGE_BYTES = 4 * 2**20
READ_BYTES = 2**20
STAT_THREADS = 16
ROWS_PER_STAT_TASK = 64  # a task per row cost more in futures than its stat calls on a local disk


def digest(value: object) -> str:
    """A 16-hex-digit digest of any JSON-serialisable value (stable key order)."""
    text = json.dumps(value, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


UID_DIGEST_PREFIX = "hmac:"


def series_uid_digest(uid: str | None, content: str | None) -> str | None:
    """What ``series/`` records of a manifest's series UID: a digest keyed with the row's
    ``input_content``, enough to notice that a rerun names another series under the same path.

    A DICOM UID can carry the institution's root, the scanner's serial number and the acquisition
    time, and looks the series up in the PACS; a plain hash of it would still link a results row
    to its series for anyone holding a list of UIDs (another release of the same images, a RIS).
    Keyed with the row's recorded content (itself keyed with the results folder's
    :class:`ContentKey`), it links only for a holder of those very bytes and of the folder's key.
    None without a UID or a content digest."""
    if uid is None or not content or content == UNREADABLE_CONTENT:
        return None
    return UID_DIGEST_PREFIX + hmac.new(content.encode(), uid.encode(), hashlib.sha256).hexdigest()[:16]


def same_series_uid(recorded: str | None, uid: str | None, content: str | None) -> bool:
    """Whether a ``series/`` row's recorded series UID is the manifest's ``uid``: its digest (keyed
    with the row's recorded ``content``), or the UID itself in rows of versions that kept it."""
    return recorded == series_uid_digest(uid, content) or (recorded is not None and recorded == uid)


def file_digest(path: Path) -> str:
    """Digest of a file's bytes (read in blocks: an image of gigabytes costs no memory)."""
    sha = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(READ_BYTES), b""):
            sha.update(block)
    return sha.hexdigest()[:16]


def checkpoint_digest(path: Path) -> str:
    """Size plus the first and last :data:`EDGE_BYTES` of a (large) checkpoint file."""
    sha = hashlib.sha256()
    size = path.stat().st_size
    sha.update(str(size).encode())
    with path.open("rb") as handle:
        sha.update(handle.read(EDGE_BYTES))
        if size > 2 * EDGE_BYTES:
            handle.seek(-EDGE_BYTES, 2)
            sha.update(handle.read(EDGE_BYTES))
    return sha.hexdigest()[:16]


@dataclass(frozen=True)
class RunKey:
    """The settings a row was made with. Equal keys: the row would come out the same today."""

    model: str
    model_config: str = ""
    weights: str = ""
    measurement: str = ""
    precision: str = ""  # a GPU's execution.precision when not nnU-Net's fp16 ("" otherwise)

    @property
    def digest(self) -> str:
        return digest(self._fields())

    def to_json(self) -> str:
        return json.dumps(self._fields(), sort_keys=True)

    def _fields(self) -> dict[str, str]:
        """The settings that were set (an unset ``precision`` leaves keys of earlier runs unchanged)."""
        return {name: value for name, value in asdict(self).items() if value or name != "precision"}

    @classmethod
    def from_json(cls, text: str | None) -> "RunKey | None":
        if not text:
            return None
        try:
            return cls(**json.loads(text))
        except (ValueError, TypeError):
            return None

    def segmentation_part(self) -> "RunKey":
        """The key without the measurement settings: what a stored label map depends on."""
        return RunKey(self.model, self.model_config, self.weights, precision=self.precision)

    def differences(self, newer: "RunKey") -> list[str]:
        """What changed from ``self`` to ``newer``, in words a user can act on."""
        changes = []
        if self.model != newer.model:
            changes.append(f"model {self.model} -> {newer.model}")
        elif self.model_config != newer.model_config:
            changes.append(f"model configuration of {newer.model} (its YAML or class map; or cohort's segmentation "
                           "rules, registry.SEGMENTATION_RULES)")
        if self.weights != newer.weights and self.model == newer.model:
            changes.append(f"weights of {newer.model}")
        if self.precision != newer.precision:
            changes.append(f"execution.precision {self.precision or 'fp16'} -> {newer.precision or 'fp16'}")
        if self.measurement != newer.measurement:
            changes.append("measurement settings (--config measure.*: class map, lower bounds or border rule; or "
                           "cohort's measurement rules, provenance.MEASUREMENT_RULES, MR_MEASUREMENT_RULES)")
        return changes


def source_key(key: RunKey, content: str | None) -> str:
    """What a stored label map depends on: the model part of the run key and the input files'
    content (not their paths: a label map stays valid when its files move). Its array in
    ``labels.zarr`` carries it (attribute ``source_key``), and so does a review decision on it."""
    return digest([key.segmentation_part().digest, content])


def series_label_map_key(run_settings: str | None, content: str | None) -> str | None:
    """The :func:`source_key` of the label map a ``series/`` row was measured on, from the row's
    ``run_settings`` and ``input_content``; None for a row without a run key (failed, or of a
    cohort version before run keys)."""
    key = RunKey.from_json(run_settings)
    return None if key is None else source_key(key, content)


MEASUREMENT_RULES = 2
"""Version of how cohort measures, in the run key so that rows measured by other rules are not
mixed with new ones: 2 = voxel volume from the affine's determinant (sheared grids), the padding
around a circular field as an edge of the field of view (``measure.fov_edge``), fat fractions of
non-negative signals; the same day's ingest fix (DICOM padding masked slice by slice) reaches the
measurements of a recomputed row through it, while its stored label map is reused."""


MR_MEASUREMENT_RULES = 2
"""Version of how cohort measures MR images besides :data:`MEASUREMENT_RULES`, in the key of MR rows
only: 2 = a padding value of no signal (PixelPaddingValue 0) is the background, not an edge of the
field of view (``cohort.ingest.padding.field_edge``)."""


def measurement_digest(class_map: Path, lower_bounds: Path, border_voxels: int, fov_edge: str) -> str:
    """The measurement settings' part of the run key: file contents, not file names."""
    return digest({"class_map": file_digest(class_map), "lower_bounds": file_digest(lower_bounds),
                   "border_voxels": border_voxels, "fov_edge": fov_edge, "rules": MEASUREMENT_RULES})


def input_files(image: Path) -> list[Path]:
    """The files a row's fingerprint covers of one input (its image, label map, Dixon fat or water
    image): the file, or every file under a DICOM folder, subfolders included (a series split over
    ``B/part1`` and ``B/part2`` has ``path`` ``B``)."""
    return sorted(p for p in image.rglob("*") if p.is_file()) if image.is_dir() else [image]


def input_fingerprint(image: Path, companions: tuple[Path, ...] = (), status_change: bool = True) -> str:
    """Digest of path, size, modification time and status-change time of every file a row reads.

    The status-change time (``st_ctime``) cannot be set back by anyone: two files of one size and
    one modification time (unpacked from one archive, or synced with ``rsync -t``) swapped with
    ``mv`` keep their paths, sizes and modification times, not their status-change times, so the
    swap is noticed (and the contents compared). ``status_change=False`` gives the fingerprint of
    rows recorded before it counted. A missing file is part of the fingerprint too (as
    missing), so that a row whose file comes back is noticed.
    """
    return _fingerprint_of(image, companions, status_change, lambda path: _image_stats(path, status_change))


class InputStats(NamedTuple):
    """The ``stat`` of every file a row reads, taken once: its :func:`input_fingerprint` and, after
    the files were read, whether those read are still the same (:meth:`changed_since`)."""

    stats: tuple[tuple, ...]

    @classmethod
    def of(cls, image: Path, companions: tuple[Path, ...] = ()) -> "InputStats":
        return cls(tuple(stat for path in (image, *companions) for stat in _image_stats(path, True)))

    @property
    def fingerprint(self) -> str:
        """:func:`input_fingerprint` of the row (status-change times counted), from these stats."""
        return digest(list(self.stats))

    def changed_since(self, files: Iterable[Path | str]) -> list[Path]:
        """Those of ``files`` (files the row read) whose ``stat`` now differs from these (or that
        these did not list): written, replaced or created since the stats were taken."""
        before = {stat[0]: stat for stat in self.stats}
        changed = []
        for file in files:
            now = _file_stat(Path(file), True)
            if before.get(now[0]) != now:
                changed.append(Path(file))
        return changed


def _fingerprint_of(image: Path, companions: tuple[Path, ...], status_change: bool,
                    stats: Callable[[Path], list[tuple]]) -> str:
    """The digest of the image's ``stats`` and its companions'. Each companion counts as the image
    does, a Dixon fat or water DICOM folder by its files, not by the folder's own times (which a
    slice rewritten in place leaves alone); a companion file gives the one stat it always gave.
    Rows recorded before the status-change time counted (``status_change`` False) keep one stat
    per companion, a folder's own, as they were fingerprinted: they recorded no content, so a
    digest changed by the rule alone would read as changed files and recompute them."""
    if not status_change:
        return digest(stats(image) + [_file_stat(path, status_change) for path in companions])
    return digest(stats(image) + [stat for path in companions for stat in stats(path)])


def _image_stats(image: Path, status_change: bool) -> list[tuple]:
    """What :func:`input_fingerprint` records of one input: of every file under a DICOM folder."""
    try:
        files = input_files(image)
    except OSError:
        files = [image]
    return [_file_stat(path, status_change) for path in files]


def _file_stat(path: Path, status_change: bool) -> tuple:
    try:
        status = path.stat()
    except OSError:  # missing, or a symlink loop (which resolve() would raise on)
        return (os.path.abspath(path), -1, -1)
    times = (status.st_mtime_ns, status.st_ctime_ns) if status_change else (status.st_mtime_ns,)
    return (str(path.resolve()), status.st_size, *times)


UNREADABLE_CONTENT = "unreadable"
CONTENT_KEY_BYTES = 32


@dataclass(frozen=True, repr=False)
class ContentKey:
    """The secret of a results folder that keys what ``series/`` records of its rows' bytes.

    A plain digest of a series' bytes links a results row to its series for anyone holding the
    same files (the hospital's PACS, another release of the images): hash the export, find the row,
    and the pseudonym with it. Keyed with a secret kept in the results folder
    (``.cohort.content_key``, mode 0600, not part of the tables), the recorded digest still
    tells a rerun that moved files hold the same bytes, but no one without the folder's key can
    compute it. Rows of earlier versions recorded the plain digest; :meth:`matches` reads both.

    >>> key = ContentKey(b"0" * 32)
    >>> keyed = key.keyed("0123456789abcdef")
    >>> keyed.startswith(UID_DIGEST_PREFIX), key.matches(keyed, "0123456789abcdef"), ContentKey(b"1" * 32).matches(keyed, "0123456789abcdef")
    (True, True, False)
    """

    secret: bytes

    def keyed(self, plain: str | None) -> str | None:
        """The recorded form of a plain :func:`content_digest` (None and unreadable stay as they are)."""
        if plain is None or plain == UNREADABLE_CONTENT:
            return plain
        return UID_DIGEST_PREFIX + hmac.new(self.secret, plain.encode(), hashlib.sha256).hexdigest()[:16]

    def matches(self, recorded: str | None, plain: str | None) -> bool:
        """Whether a row's recorded content (keyed, or plain from an earlier version) is of the bytes
        whose plain digest is ``plain``."""
        if recorded is None or plain in (None, UNREADABLE_CONTENT):
            return False
        return recorded == (self.keyed(plain) if recorded.startswith(UID_DIGEST_PREFIX) else plain)

    def recorded_forms(self, plain: str | None) -> tuple[str | None, ...]:
        """What a row of these bytes may have recorded, this version's form first."""
        keyed = self.keyed(plain)
        return (keyed,) if keyed == plain else (keyed, plain)


def load_content_key(path: Path) -> ContentKey:
    """The results folder's :class:`ContentKey` at ``path``, made (32 random bytes, mode 0600) on
    first use. It is written whole under another name and linked into place, so a reader never
    sees it half-written, and of two processes making it at once both read the one linked first."""
    from cohort.errors import RunCannotStart

    if not path.exists():
        draft = path.with_name(f"{path.name}.{os.getpid()}.new")
        descriptor = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(os.urandom(CONTENT_KEY_BYTES))
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(draft, path)
        except FileExistsError:
            pass
        finally:
            draft.unlink()
    secret = path.read_bytes()
    if len(secret) != CONTENT_KEY_BYTES:
        raise RunCannotStart(f"{path}: the results folder's content key is {len(secret)} bytes, not "
                             f"{CONTENT_KEY_BYTES}; restore it from a backup of the folder (without it, "
                             "moved input files cannot be recognised), or remove it to start a new one")
    return ContentKey(secret)


def input_content(sources: Iterable[tuple]) -> str | None:
    """Digest of the bytes a row reads, whatever the files' paths, names and times: of each
    (path, series UID[, masks]) of :attr:`cohort.manifest.SeriesSpec.sources`, the file, the files
    of the DICOM series under the folder (not the other series or files beside it), or the masks of
    a ``labels`` folder by name. None when a file is gone; :data:`UNREADABLE_CONTENT` when the files are there but hold no such series.
    SHA-256 runs at about 2 GB/s on a current core: a series just read for ingest hashes from
    the page cache in tens of milliseconds.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     image, labels = Path(folder, "ct.nii.gz"), Path(folder, "seg.nii.gz")
    ...     _ = image.write_bytes(b"voxels"); _ = labels.write_bytes(b"labels")
    ...     before = input_content([(image, None), (labels, None)])
    ...     moved = image.rename(Path(folder, "archived.nii.gz"))
    ...     before == input_content([(moved, None), (labels, None)]), input_content([(image, None)]) is None
    (True, True)
    """
    return content_digest(source_files(*source) for source in sources)


class SourceFiles(NamedTuple):
    """The files a row read from one source; ``named``: each digested with its file name, which
    says what it is (a mask of a ``labels`` folder: the same bytes under another name are another
    label map)."""

    files: tuple[Path | str, ...]
    named: bool = False


def source_files(path: Path, series_uid: str | None = None, masks: bool = False) -> SourceFiles:
    """The files of one source (:class:`cohort.manifest.Source`): a file, the files of the DICOM
    series under a folder, or (``masks``) the masks of a ``labels`` folder."""
    from cohort.ingest.dicom import series_files
    from cohort.ingest.masks import mask_files

    if not path.is_dir():
        return SourceFiles((path,))
    if masks:
        return SourceFiles(tuple(mask_files(path)), named=True)
    return SourceFiles(tuple(series_files(path, series_uid)))


def content_digest(groups: Iterable[SourceFiles]) -> str | None:
    """:func:`input_content` of the files of each of a row's sources (in
    :attr:`cohort.manifest.SeriesSpec.sources` order), where they are known already: ingest hands
    over the files it read, so a row's series is found once, not again (its folder's headers
    read a second time) for its digest. ``groups`` may be lazy (their files found as they are
    digested): None when a file is gone, :data:`UNREADABLE_CONTENT` when a folder holds no such
    series."""
    from cohort.errors import SeriesError

    try:
        return digest([sorted(f"{Path(file).name}:{file_digest(Path(file))}" if named else file_digest(Path(file))
                              for file in files) for files, named in groups])
    except FileNotFoundError:
        return None
    except (OSError, SeriesError):
        return UNREADABLE_CONTENT


def input_fingerprints(rows: Iterable[tuple[Path, tuple[Path, ...], bool]]) -> list[str]:
    """:func:`input_fingerprint` of many rows (image, companions, status_change), stat calls in
    threads (network file systems). A folder that several rows name (a PACS study folder
    holding all its series flat, one row per series, as image or as Dixon fat or water) is listed
    and its files stat'ed once, not once per row and column: the rows are fingerprinted in the
    same instant either way."""
    rows = list(rows)
    paths = list(dict.fromkeys((path, status_change) for image, companions, status_change in rows
                               for path in (image, *(companions if status_change else ()))))
    listed = dict(zip(paths, _in_threads(_image_stats, paths)))
    return _in_threads(lambda image, companions, status_change: _fingerprint_of(
        image, companions, status_change, lambda path: listed[path, status_change]), rows)


def input_contents(rows: Iterable[tuple[tuple[Path, str | None], ...]]) -> list[str | None]:
    """:func:`input_content` of many rows' sources, reads in threads (network file systems)."""
    return _in_threads(input_content, [(sources,) for sources in rows])


def _in_threads(function, rows: list[tuple]) -> list:
    if len(rows) < ROWS_PER_STAT_TASK:
        return [function(*row) for row in rows]
    chunks = [rows[start:start + ROWS_PER_STAT_TASK] for start in range(0, len(rows), ROWS_PER_STAT_TASK)]
    with ThreadPoolExecutor(STAT_THREADS) as pool:
        done = pool.map(lambda chunk: [function(*row) for row in chunk], chunks)
        return [value for chunk in done for value in chunk]
