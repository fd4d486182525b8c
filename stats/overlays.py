"""Overlay mosaics: a few axial and coronal slices of a series' CT with its label map's contours.

A reviewer judges a segmentation by looking at it. For one series (and optionally one structure
of interest, drawn thick and filled) :func:`draw_overlay` renders three axial slices (top row)
and three coronal slices (bottom row) in radiological orientation (patient's right on the left),
every label's outline in its own colour. A CT is shown in the soft-tissue window (W 400 / L 40),
or the bone window (W 1800 / L 400) when the structure of interest is a bone; an MR, whose
intensities have no fixed scale, from its 1st to its 99th percentile.

A structure the study pools from parts (``kidney``, ``stats/pooled_structures.csv``) is highlighted
as the union of its parts, as z-score outliers of pooled rows are listed for review.

Mosaics are cached under ``results/qc/<series_id>/<structure or "series">.png`` (the
contract's ``qc/`` folder) and made on demand by :func:`ensure_overlays`, in parallel; nothing
draws all series of a cohort unless asked to. A mosaic carries the ``source_key`` of the label map it
was drawn from, and for a pooled structure its parts (a PNG text chunk): once the series is recomputed,
or the study pools the structure from other parts, it is drawn again. Each draw writes its own temporary file and renames it,
so threads of the review server, reviewers and ``cohort report`` may draw the same mosaic at once.

The image is found through the run's own records: the series row's ``manifest_line`` in the
manifest that ``runs/*.json`` names (with its ``series_uid`` when the row's folder holds several
DICOM series); the label map is ``labels.zarr/<series_id>``, whose own attributes say which id
is which structure (models number their structures differently) and the image's modality.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import uuid
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import PIL.Image
from matplotlib import colormaps
from matplotlib.figure import Figure
from scipy import ndimage

from cohort.config import ConfigError, load_class_map
from cohort.errors import SeriesError
from cohort.ingest import InputName, load_ct
from cohort.manifest import load_manifest
from cohort.stats.pooled import DEFAULT_DEFINITIONS, parts_of
from cohort.store import label_map_attributes, read_label_map

log = logging.getLogger(__name__)
WINDOWS = {"soft tissue": (40.0, 400.0), "bone": (400.0, 1800.0)}
MR_PERCENTILES = (1.0, 99.0)
OLDEST_CLASS_MAP = "class_map_total_v2.csv"  # label maps written before cohort recorded their class map
BONE_WORDS = ("vertebra", "rib", "sacrum", "femur", "hip", "humerus", "scapula", "clavicula", "sternum", "skull")
WHOLE_SERIES = "series"
HIGHLIGHT = np.array([1.0, 0.9, 0.0, 1.0])
FULL_DPI, THUMBNAIL_DPI = 100, 40
KEY_IN_PNG = "cohort label map"  # PNG text chunk: the source_key of the label map a mosaic was drawn from


@dataclass(frozen=True)
class OverlayRequest:
    """One mosaic to make: a series, and the structure to highlight (``None``: the whole series)."""

    series_id: str
    structure: str | None = None
    pooled_structures: str = DEFAULT_DEFINITIONS  # the study's definitions: what a pooled ``structure`` is made of

    def path(self, results_dir: Path) -> Path:
        return Path(results_dir) / "qc" / self.series_id / f"{self.structure or WHOLE_SERIES}.png"

    def thumbnail(self, results_dir: Path) -> Path:
        """The same mosaic at 360 x 240 pixels, for pages listing many series."""
        return self.path(results_dir).with_suffix(".thumb.png")

    def drawing_key(self, source_key: str | None) -> str | None:
        """What a mosaic of this request drawn from the label map ``source_key`` shows, as its PNG records it:
        the label map, and for a pooled structure the parts highlighted as one (a study that changes what
        ``kidney`` pools gets new mosaics, not those of the old definition); None: nothing to tell apart.

        >>> OverlayRequest("S1", "kidney").drawing_key("k1"), OverlayRequest("S1", "liver").drawing_key(None)
        ('k1 pooled from kidney_left+kidney_right', None)
        """
        parts = parts_of(self.structure, self.pooled_structures) if self.structure else []
        if not parts:
            return source_key
        return f"{source_key or ''} pooled from {'+'.join(parts)}".strip()


@dataclass(frozen=True)
class ImageSource:
    """Where a series' image is: the manifest row's path and, for a folder holding several DICOM
    series, the one the row chose."""

    name: InputName
    series_uid: str | None = None


@dataclass(frozen=True)
class Window:
    """The grey-level window of a mosaic: ``level`` and ``width`` in the image's units."""

    level: float
    width: float
    name: str

    def __str__(self) -> str:
        return f"{self.name} L {self.level:g} / W {self.width:g}"


@dataclass(frozen=True)
class Overlay:
    """A cached mosaic (``path``) or why there is none (``problem``, one line, no input path)."""

    request: OverlayRequest
    path: Path | None
    problem: str | None = None


def overlay_alt(series_id: str, structure: str | None) -> str:
    """The text alternative of a mosaic: which series and which structure it shows.

    >>> overlay_alt("S1", "liver"), overlay_alt("S1", None)
    ('overlay of S1: liver highlighted', 'overlay of S1: all structures')
    """
    return f"overlay of {series_id}: {structure + ' highlighted' if structure else 'all structures'}"


def ensure_overlays(results_dir: Path, requests: list[OverlayRequest], workers: int = 2) -> list[Overlay]:
    """The mosaics of ``requests``, drawing those not cached yet (or drawn from an earlier label map of
    their series) in ``workers`` forked processes."""
    results_dir = Path(results_dir)
    requests = list(dict.fromkeys(requests))
    keys = {sid: label_map_key(results_dir, sid) for sid in {r.series_id for r in requests}}
    todo = [r for r in requests if not is_current(r.thumbnail(results_dir), r.drawing_key(keys[r.series_id]))]
    made: dict[OverlayRequest, Overlay] = {}
    if todo:
        images = image_sources(results_dir, {r.series_id for r in todo})
        jobs = [(results_dir, r, images.get(r.series_id)) for r in todo]
        if workers <= 1 or len(jobs) == 1:
            made = {job[1]: _draw_cached(*job) for job in jobs}
        else:
            with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=multiprocessing.get_context("fork")) as pool:
                made = dict(zip(todo, pool.map(_draw_cached, *zip(*jobs))))
        log.info("overlays: %d drawn in %s", len(todo), results_dir / "qc")
    return [made.get(r) or Overlay(r, r.path(results_dir)) for r in requests]


def label_map_key(results_dir: Path, series_id: str) -> str | None:
    """The ``source_key`` of a series' label map (the digest of the model, its weights and the input
    files that made it), or None (no label map, or one written before cohort recorded the key)."""
    try:
        return label_map_attributes(Path(results_dir) / "labels.zarr", series_id).get("source_key")
    except (FileNotFoundError, KeyError, ValueError, OSError):
        return None


def is_current(mosaic: Path, key: str | None) -> bool:
    """Whether the cached ``mosaic`` exists and shows what ``key`` (:meth:`OverlayRequest.drawing_key`) says: a
    series recomputed (``cohort run --recompute changed``) is drawn again, not shown as it was."""
    if not mosaic.exists():
        return False
    if key is None:
        return True
    try:
        with PIL.Image.open(mosaic) as image:
            return image.text.get(KEY_IN_PNG) == key
    except (OSError, ValueError):
        return False


def image_sources(results_dir: Path, series_ids: set[str]) -> dict[str, ImageSource]:
    """Where each series' image is, from the newest run record whose manifest is still readable."""
    import pandas as pd

    manifests = _manifests(results_dir)
    if not manifests:
        return {}
    rows = pd.read_parquet(results_dir / "series")
    lines = dict(zip(rows["series_id"], rows["manifest_line"])) if "manifest_line" in rows else {}
    for manifest in manifests:
        specs = {s.series_id: s for s in load_manifest(manifest) if s.series_id in series_ids}
        return {sid: ImageSource(InputName.in_manifest(s.path, s.line), s.series_uid)
                for sid, s in specs.items() if lines.get(sid) in (None, s.line)}
    return {}


def _manifests(results_dir: Path) -> list[Path]:
    """Manifests named by ``runs/*.json``, newest run first; relative ones resolve from the working
    folder or from the results folder's parent (where ``cohort run`` is usually started)."""
    found = []
    for record in sorted((results_dir / "runs").glob("*.json"), reverse=True):
        try:
            named = Path(json.loads(record.read_text())["request"]["manifest"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        candidates = [named] if named.is_absolute() else [Path.cwd() / named, results_dir.parent / named]
        found += [c for c in candidates if c.is_file() and c not in found]
    return found


def _draw_cached(results_dir: Path, request: OverlayRequest, image: ImageSource | None) -> Overlay:
    sid = request.series_id
    if image is None:
        return Overlay(request, None, f"{sid}: its image is not in the manifest of any recorded run")
    try:
        labels = read_label_map(results_dir / "labels.zarr", sid)
        attributes = label_map_attributes(results_dir / "labels.zarr", sid)
    except (FileNotFoundError, KeyError, ValueError, OSError):
        return Overlay(request, None, f"{sid}: no label map in labels.zarr")
    highlight, drawn = None, labels.labels
    if request.structure is not None:
        highlight = structure_label(attributes, request.structure)
        if highlight is None:
            highlight, drawn = pooled_highlight(attributes, request.structure, labels.labels,
                                                request.pooled_structures)
        if highlight is None:
            return Overlay(request, None, f"{sid}: {request.structure!r} is not a structure of its label map")
    try:
        volume = load_ct(image.name, series_uid=image.series_uid, modality=None)
    except SeriesError as error:
        return Overlay(request, None, str(error))
    if volume.hu.shape != labels.labels.shape:
        return Overlay(request, None, f"{sid}: label map and image differ in shape")
    window = display_window(volume.hu, attributes.get("modality", "CT"), highlight)
    figure = overlay_figure(volume.hu, drawn, volume.affine, highlight, window)
    request.path(results_dir).parent.mkdir(parents=True, exist_ok=True)
    drawn_from = request.drawing_key(attributes.get("source_key"))
    for path, dpi in ((request.path(results_dir), FULL_DPI), (request.thumbnail(results_dir), THUMBNAIL_DPI)):
        temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")  # its own: others may draw it at once
        figure.savefig(temporary, format="png", dpi=dpi, facecolor="black",
                       metadata={KEY_IN_PNG: drawn_from} if drawn_from else None)
        temporary.replace(path)
    return Overlay(request, request.path(results_dir))


def structure_label(attributes: dict, structure: str) -> tuple[int, str] | None:
    """``(label id, structure)`` in the label map whose attributes are ``attributes``, or ``None``.

    The ids come from the map's own ``structures`` attribute; maps written before cohort recorded
    it name their class-map file instead, and the oldest name none (they are TotalSegmentator v2).

    >>> structure_label({"structures": {"12": "esophagus"}}, "esophagus")
    (12, 'esophagus')
    >>> structure_label({}, "esophagus")
    (15, 'esophagus')
    """
    if "structures" in attributes:
        names = {name: int(label) for label, name in attributes["structures"].items()}
    else:
        try:
            class_map = load_class_map(attributes.get("class_map", OLDEST_CLASS_MAP))
        except ConfigError:
            return None
        names = {name: label for label, name in class_map.names.items()}
    return (names[structure], structure) if structure in names else None


def pooled_highlight(attributes: dict, structure: str, labels: np.ndarray,
                     definitions: str = DEFAULT_DEFINITIONS) -> tuple[tuple[int, str] | None, np.ndarray]:
    """A structure the study pools from parts (``kidney``: both kidneys, in the pooled-structure file
    ``definitions``) drawn as one: ``(label id, name)`` to highlight and ``labels`` with every part's voxels
    under the first part's id; ``(None, labels)`` when ``structure`` is not pooled from structures of this map.

    >>> highlight, drawn = pooled_highlight({"structures": {"2": "kidney_right", "3": "kidney_left"}}, "kidney",
    ...                                     np.array([0, 2, 3]))
    >>> highlight, drawn.tolist()
    ((3, 'kidney'), [0, 3, 3])
    """
    parts = [structure_label(attributes, part) for part in parts_of(structure, definitions)]
    if not parts or None in parts:
        return None, labels
    ids = [label for label, _ in parts]
    return (ids[0], structure), np.where(np.isin(labels, ids), ids[0], labels)


def display_window(image: np.ndarray, modality: str, highlight: tuple[int, str] | None = None) -> Window:
    """The window to show ``image`` in: a CT's soft-tissue or bone window (by the highlighted
    structure), an MR's 1st to 99th percentile of its non-zero voxels.

    >>> str(display_window(np.zeros((2, 2, 2)), "CT", (25, "vertebrae_L4")))
    'bone L 400 / W 1800'
    """
    if modality != "MR":
        name = "bone" if highlight and highlight[1].startswith(BONE_WORDS) else "soft tissue"
        return Window(*WINDOWS[name], name)
    values = image[image > 0]
    low, high = np.percentile(values, MR_PERCENTILES) if values.size else (0.0, 1.0)
    high = max(high, low + 1.0)
    return Window((low + high) / 2, high - low, "1st-99th percentile")


def overlay_figure(hu: np.ndarray, labels: np.ndarray, affine: np.ndarray,
                   highlight: tuple[int, str] | None = None, window: Window | None = None) -> Figure:
    """The 2 x 3 mosaic (9 x 6 inches) (axial top, coronal bottom) of ``hu`` with ``labels``' contours.

    ``highlight`` is ``(label id, name)`` of the structure of interest: its slices are chosen
    through it, its outline is thick yellow and it is filled. ``window`` defaults to the CT's
    (:func:`display_window`).

    >>> hu = np.full((20, 20, 10), -1000.0); hu[5:15, 5:15, 2:8] = 40.0
    >>> labels = (hu > 0).astype(np.uint8)
    >>> len(overlay_figure(hu, labels, np.eye(4), (1, "spleen")).axes)
    6
    """
    hu, labels, spacing = _canonical(hu, affine), _canonical(labels, affine), nib.affines.voxel_sizes(affine)
    target = labels == highlight[0] if highlight else labels > 0
    if not target.any():
        target = np.ones(labels.shape, dtype=bool)
    window = window or display_window(hu, "CT", highlight)
    level, width = window.level, window.width
    fig = Figure(figsize=(9, 6), facecolor="black")
    axes = fig.subplots(2, 3)
    fig.subplots_adjust(0, 0, 1, 0.93, 0.02, 0.02)
    for column, z in enumerate(_slices(target, axis=2)):
        _panel(axes[0, column], hu[:, :, z], labels[:, :, z], spacing[1] / spacing[0], highlight, level, width)
    for column, y in enumerate(_slices(target, axis=1)):
        _panel(axes[1, column], hu[:, y, :], labels[:, y, :], spacing[2] / spacing[0], highlight, level, width)
    name = highlight[1] if highlight else "all structures"
    fig.suptitle(f"{name}: axial (top), coronal (bottom); window {window}", color="white", fontsize=10)
    return fig


def _canonical(array: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """``array`` reoriented to RAS (axis 0 towards the patient's right-to-left is flipped on display)."""
    transform = nib.orientations.ornt_transform(nib.orientations.io_orientation(affine),
                                                nib.orientations.axcodes2ornt("RAS"))
    return nib.orientations.apply_orientation(array, transform)


def _slices(mask: np.ndarray, axis: int) -> list[int]:
    """Three slice indices at 25, 50 and 75 % of the mask's extent along ``axis``."""
    present = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
    return [int(present[int(q * (len(present) - 1))]) for q in (0.25, 0.5, 0.75)]


def _panel(axis, hu: np.ndarray, labels: np.ndarray, aspect: float, highlight: tuple[int, str] | None,
           level: float, width: float) -> None:
    """One slice (x, other) shown radiologically: rows top = anterior/superior, patient's right on the left."""
    def show(plane: np.ndarray) -> np.ndarray:
        return np.swapaxes(plane[::-1], 0, 1)[::-1]

    axis.imshow(show(hu), cmap="gray", vmin=level - width / 2, vmax=level + width / 2, aspect=aspect,
                interpolation="nearest")
    axis.imshow(show(_contours(labels, highlight[0] if highlight else None)), aspect=aspect, interpolation="nearest")
    axis.set_axis_off()


def _contours(labels: np.ndarray, highlight: int | None) -> np.ndarray:
    """RGBA image: each label's boundary in its colour; the highlighted label thick yellow and filled."""
    boundary = labels != ndimage.grey_erosion(labels, size=3)
    boundary &= labels > 0
    palette = colormaps["tab20"](np.arange(20))
    rgba = np.zeros((*labels.shape, 4))
    rgba[boundary] = palette[labels[boundary] % 20]
    if highlight is not None:
        inside = labels == highlight
        edge = inside & ~ndimage.binary_erosion(inside)
        rgba[inside & ~edge] = [1.0, 0.9, 0.0, 0.3]
        rgba[ndimage.binary_dilation(edge) & ~(inside & ~edge)] = HIGHLIGHT
    return rgba
