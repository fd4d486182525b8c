"""Segment a CT or MR with a registered model; networks are loaded once per process and reused.

A worker calls :func:`get_segmenter` for every series; the first call loads the networks
(seconds to tens of seconds for TotalSegmentator's 30 M-parameter networks) and every later
call returns the same :class:`Segmenter`, so series 2..N pay no load time. Several series may be
in :meth:`Segmenter.segment` at once (``execution.prefetch``): geometry and nnU-Net's preprocessing
run side by side; the forward passes take turns (on a CPU, ``execution.network_passes`` may let
several share the threads: :mod:`cohort.segmentation.gate`).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from cohort.errors import OutOfMemory, RunCannotStart, SeriesError, is_out_of_memory
from cohort.ingest.volume import LabelMap, Volume
from cohort.segmentation.chunking import ChunkTooLarge, overlap_slices
from cohort.segmentation.merge import label_lookup, merge_into
from cohort.segmentation.device import DeviceSettings
from cohort.segmentation.gate import NetworkGate
from cohort.segmentation.predictor import NetworkPredictor
from cohort.segmentation.body_crop import Box, body_box, paste
from cohort.segmentation.postprocess import clean_label_map
from cohort.segmentation.registry import ModelSpec, PreprocessSpec, model_class_map
from cohort.segmentation.resample import RAS, Canonical, resample_image, resample_labels, to_canonical, to_native
from cohort.segmentation.weights import check_model_ready, network_folder

log = logging.getLogger(__name__)

_CACHE: dict[tuple[str, str, str, DeviceSettings], Segmenter] = {}
_CACHE_LOCK = threading.Lock()
_LOADING = threading.Event()


@dataclass(frozen=True)
class Segmentation:
    """A model's label map on the input CT's own grid, and seconds spent per stage."""

    label_map: LabelMap
    seconds: dict[str, float]


class Segmenter:
    """The networks of one model, loaded, with the geometry steps around them."""

    def __init__(self, spec: ModelSpec, weights_dir: Path, device: torch.device,
                 settings: DeviceSettings = DeviceSettings()) -> None:
        check_model_ready(spec, weights_dir)
        start = time.perf_counter()
        self.spec = spec
        self.device = device
        self.settings = settings
        classes = model_class_map(spec)
        narrow = classes.n_labels <= 256
        self._dtype = np.uint8 if narrow else np.uint16
        self._device_dtype = torch.uint8 if narrow else torch.int32  # torch's uint16 lacks ops
        self._networks = []
        for network in spec.networks:
            folder = network_folder(spec, network, weights_dir)
            try:
                predictor = NetworkPredictor(folder, spec, device, settings)
            except Exception as exc:  # nnU-Net raises anything from KeyError to RuntimeError on a bad folder
                raise RunCannotStart(f"{folder}: nnU-Net cannot load this network ({type(exc).__name__}: "
                                     f"{exc}); remove the folder and fetch the weights again "
                                     f"(`cohort models` lists the commands)") from exc
            lut = torch.as_tensor(label_lookup(network, classes).astype(np.int32), device=device).to(self._device_dtype)
            self._networks.append((network, predictor, lut))
        self._names = classes.names
        first = self._networks[0][1]
        gate = NetworkGate.for_device(device, first)
        for predictor in self.predictors:
            predictor.gate = gate
        self.spacing = spec.spacing_mm or first.plans_spacing_xyz
        self.axcodes = network_axcodes(spec, first.dataset_json)
        self.load_seconds = time.perf_counter() - start
        log.info("loaded model %s (%d networks) on %s in %.1f s; forward passes at once: %d", spec.name,
                 len(self._networks), device, self.load_seconds, gate.passes)

    @property
    def predictors(self) -> tuple[NetworkPredictor, ...]:
        """The loaded networks, in the model file's order."""
        return tuple(predictor for _, predictor, _ in self._networks)

    def model_grid_image(self, volume: Volume) -> np.ndarray:
        """``volume`` as the networks read it: canonical orientation, body crop, intensity rule
        and the model's spacing (resampled on this segmenter's device)."""
        return self._prepare(volume)[0].cpu().numpy()

    def segment(self, volume: Volume) -> Segmentation:
        """Label ``volume`` with the model's ids, on the volume's own grid and orientation."""
        seconds: dict[str, float] = {}
        tick = time.perf_counter()
        image, canonical, box, cropped = self._prepare(volume)
        seconds["resample"] = time.perf_counter() - tick
        tick = time.perf_counter()
        merged = self._predict(image, volume)
        seconds["predict"] = time.perf_counter() - tick
        tick = time.perf_counter()
        try:
            native = native_labels(merged, cropped.shape, box, canonical)
        except torch.OutOfMemoryError:
            log.warning("%s: restoring its %.0f M-voxel label map ran out of memory on %s; restoring it on the CPU "
                        "instead", volume.name, volume.hu.size / 1e6, self.device)
            torch.cuda.empty_cache()
            native = native_labels(merged.cpu(), cropped.shape, box, canonical)
        labels = clean_label_map(native.astype(self._dtype, copy=False), self.spec.postprocess, self._names,
                                 volume.grid.voxel_volume_ml)
        seconds["restore"] = time.perf_counter() - tick
        return Segmentation(LabelMap(labels=labels, affine=volume.affine, source=volume.source, name=volume.name), seconds)

    def _prepare(self, volume: Volume) -> tuple[torch.Tensor, Canonical, Box | None, np.ndarray]:
        """The model-grid image (on the GPU when there is one, where the networks' preprocessing
        reads it), the canonical volume, the body box and the image cut to it."""
        pre = self.spec.preprocess
        check_whole_number_levels(volume, pre, self.spec.name)
        canonical = to_canonical(volume.hu, volume.affine, self.axcodes)
        box = body_box(canonical.array, canonical.spacing, self.spec.body_crop) if self.spec.body_crop.enabled else None
        cropped = canonical.array if box is None else canonical.array[box]
        image = resample_image(rescale_intensities(cropped, pre), canonical.spacing, self.spacing,
                               pre.resample_order, pre.image_dtype, self.device)
        return image, canonical, box, cropped

    def _predict(self, image: torch.Tensor, volume: Volume) -> torch.Tensor:
        """The networks' labels merged in the model's ids, on the model grid, on this device."""
        merged = torch.zeros(tuple(image.shape), dtype=self._device_dtype, device=self.device)
        overlap = overlap_slices(self.spec.chunking.overlap_mm, self.spacing[2])
        for network, predictor, lut in self._networks:
            try:
                labels = predictor.predict(image, self.spacing, overlap)
            except ChunkTooLarge as exc:
                raise SeriesError(f"{volume.name}: too large for model {self.spec.name!r} even when chunked "
                                  f"({exc}); raise chunking.max_voxels in {self.spec.source}") from None
            except (MemoryError, RuntimeError) as exc:
                if not is_out_of_memory(exc):
                    raise
                raise OutOfMemory(f"{volume.name}: out of memory predicting {network.dataset} on "
                                  f"{tuple(image.shape)} voxels ({type(exc).__name__}); lower chunking.max_voxels in "
                                  f"{self.spec.source} or give each worker more memory") from None
            merge_into(merged, labels, lut)
        return merged


def native_labels(merged: torch.Tensor, cropped_shape: tuple[int, ...], box: Box | None,
                  canonical: Canonical) -> np.ndarray:
    """The model-grid labels back on the CT's own grid (resampled, pasted into the body crop's
    frame, reoriented) where they are; only this label map comes to the CPU."""
    restored = paste(resample_labels(merged, cropped_shape), box, canonical.array.shape)
    return to_native(restored, canonical).cpu().numpy()


def network_axcodes(spec: ModelSpec, dataset_json: dict) -> tuple[str, ...]:
    """The orientation the network was trained in: RAS, or ``dataset.json["orientation"]`` (a string
    like ``"PIR"`` or a list of axis codes) when the model says so and the key exists."""
    if spec.preprocess.orientation != "dataset_json" or "orientation" not in dataset_json:
        return RAS
    codes = tuple(str(code).upper() for code in dataset_json["orientation"])
    try:
        axes = nib.orientations.axcodes2ornt(codes)[:, 0]
    except ValueError:
        axes = np.array([])
    if len(codes) != 3 or sorted(axes.tolist()) != [0, 1, 2]:
        raise RunCannotStart(f"{spec.name}: dataset.json orientation {dataset_json['orientation']!r} is not three "
                             "axis codes like 'PIR' (one of L/R, P/A, I/S each)")
    return codes


MIN_WHOLE_NUMBER_LEVELS = 256


def check_whole_number_levels(volume: Volume, pre: PreprocessSpec, model: str) -> None:
    """Refuse an image of fractional values spanning fewer than :data:`MIN_WHOLE_NUMBER_LEVELS`
    units for a model that reads whole numbers (``preprocess.image_dtype`` int32, as TotalSegmentator
    casts its resampled image): an MR normalised to 0-1 (or z-scored) would reach the network as
    two or a handful of grey levels and be labelled from noise, silently. Scanner images (CT in HU,
    MR in its stored range, or any integer image) pass."""
    if not np.issubdtype(np.dtype(pre.image_dtype), np.integer) or np.issubdtype(volume.hu.dtype, np.integer):
        return
    low, high = float(np.nanmin(volume.hu)), float(np.nanmax(volume.hu))
    if high - low < MIN_WHOLE_NUMBER_LEVELS:
        raise SeriesError(f"{volume.name}: its values span only {low:.3g} to {high:.3g}, and model {model!r} reads whole "
                          f"numbers ({pre.image_dtype}, as TotalSegmentator does): the image would reach the network as "
                          f"{int(high) - int(low) + 1} grey levels. Give the image in its scanner's range (not "
                          "normalised or scaled to 0-1)")


def rescale_intensities(image: np.ndarray, pre: PreprocessSpec) -> np.ndarray:
    """VIBESegmentator's rule: an image whose maximum exceeds ``rescale_above`` is scaled so that its
    maximum is ``rescale_max`` (MR values then fit float16); otherwise the image is unchanged."""
    if pre.rescale_above is None:
        return image
    top = float(image.max(initial=0))
    return image * (pre.rescale_max / top) if top > pre.rescale_above else image


def resolve_device(device: str) -> torch.device:
    """``auto`` -> ``cuda:0`` when there is a GPU, else the CPU.

    ``cuda:0`` is the first GPU of this process's ``CUDA_VISIBLE_DEVICES``: under ``--cluster cuda``
    each worker's own GPU (cohort.flows.cuda), so workers never pile onto one device.
    """
    if device == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def use_thread_share() -> None:
    """Give torch this worker's share of the CPUs (``COHORT_TORCH_THREADS``, set by the cluster
    from cohort.flows.resources); without it torch would start one thread per core of the machine."""
    threads = os.environ.get("COHORT_TORCH_THREADS", "")
    if threads.isdigit() and int(threads) > 0 and torch.get_num_threads() != int(threads):
        torch.set_num_threads(int(threads))


def get_segmenter(spec: ModelSpec, weights_dir: Path, device: str = "auto",
                  settings: DeviceSettings = DeviceSettings()) -> Segmenter:
    """The process-wide :class:`Segmenter` of ``spec`` (loaded on the first call only)."""
    resolved = resolve_device(device)
    key = (repr(spec), str(Path(weights_dir).resolve()), str(resolved), settings)
    with _CACHE_LOCK:
        if key not in _CACHE:
            use_thread_share()
            _LOADING.set()
            try:
                _CACHE[key] = Segmenter(spec, Path(weights_dir), resolved, settings)
            finally:
                _LOADING.clear()
        return _CACHE[key]


def model_loading() -> bool:
    """Whether this process is loading a model now (and timing its network: cohort.segmentation.gate)."""
    return _LOADING.is_set()
