"""One nnU-Net network, loaded once and run on (x, y, z) arrays with nnU-Net's own pieces.

The folder is read as ``initialize_from_trained_model_folder`` reads it (see
:mod:`cohort.segmentation.nnunet_folder`); settings come from the model file (TotalSegmentator's: fold 0,
``checkpoint_final.pth``, sliding window with step 0.8, Gaussian weighting, no mirroring;
VIBESegmentator's: every fold present ensembled, step 0.5). nnU-Net works in (c, z, y, x); the
arrays here are nibabel's (x, y, z), so image and spacing are transposed on the way in and the
labels on the way out.

A series goes through nnU-Net's preprocessing (crop to the non-zero box, intensity normalisation
from the plans): a CT network's in torch where the image is, on the GPU when there is one
(:mod:`cohort.segmentation.ct_preprocessing`, nnU-Net's values bit for bit), any other with
nnU-Net's own code on the CPU; then its sliding window on the device, and the argmax is taken
where the logits are, and the labels stay there (a tensor on the network's device): on a GPU
no float16 map per class (118 × the voxels for TotalSegmentator) and no label map comes back to
the CPU here; the segmenter merges a model's networks and restores the native grid on the device
too, and only the finished uint8 label map crosses to the CPU. Only the sliding window and
argmax pass the worker's network gate (:attr:`NetworkPredictor.gate`, cohort.segmentation.gate):
one series at a time (on a CPU, ``execution.network_passes`` may allow several, each on its share
of the threads), so with ``execution.prefetch`` another series is preprocessed while this one is
on the device. The result is what
``predict_single_npy_array`` returns (tests/segment/test_segment_parity.py).

All device work of a worker runs on its process's default CUDA stream: nnU-Net feeds tiles from a
producer thread, and only one stream keeps those copies ordered before the convolutions that read
them (one worker process per GPU, so one stream per worker).
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from cohort.segmentation.chunking import plan_chunks, predict_in_chunks
from cohort.segmentation.ct_preprocessing import CTPreprocessing
from cohort.segmentation.device import DeviceSettings
from cohort.segmentation.gate import NetworkGate
from cohort.segmentation.nnunet_folder import load_folder
from cohort.segmentation.registry import ModelSpec
from cohort.segmentation.weights import folder_checkpoint, image_spacing_zyx, model_folds

log = logging.getLogger(__name__)

AUTOCAST_TYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


class NetworkPredictor:
    """A loaded nnU-Net network folder (``<dataset>/<trainer>__<plans>__<configuration>``).

    ``gate`` admits the forward passes of every network sharing it (one per process: a worker's
    series take turns on its GPU, or share its CPU threads)."""

    def __init__(self, folder: Path, spec: ModelSpec, device: torch.device,
                 settings: DeviceSettings = DeviceSettings(), gate: NetworkGate | None = None) -> None:
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

        self.folder = folder
        self.spec = spec
        self.device = device
        self.settings = settings
        self.gate = gate or NetworkGate()
        captured = io.StringIO()
        with warnings.catch_warnings(), contextlib.redirect_stdout(captured):
            warnings.filterwarnings("ignore", message="Detected old nnU-Net plans format")
            self._predictor = nnUNetPredictor(
                tile_step_size=spec.tile_step_size,
                use_gaussian=spec.use_gaussian,
                use_mirroring=spec.use_mirroring,
                perform_everything_on_device=device.type == "cuda",
                device=device,
                verbose=False,
                verbose_preprocessing=False,
                allow_tqdm=False,
            )
            self.folds = model_folds(spec, folder)
            loaded = load_folder(folder, self.folds, folder_checkpoint(spec, folder))
            self._predictor.manual_initialization(
                loaded.network, loaded.plans_manager, loaded.configuration_manager, loaded.parameters,
                loaded.dataset_json, loaded.trainer_name, loaded.mirroring_axes)
        self._preprocessor = loaded.configuration_manager.preprocessor_class(verbose=False)
        self._ct_preprocessing = CTPreprocessing.from_plans(loaded.plans_manager, loaded.configuration_manager)
        self._parameters_loaded = False
        self.dataset_json = loaded.dataset_json
        spacing_zyx = image_spacing_zyx(list(loaded.configuration_manager.spacing),
                                        list(loaded.plans_manager.transpose_backward))
        self.plans_spacing_xyz = tuple(float(v) for v in reversed(spacing_zyx))
        if device.type == "cuda":
            self._prepare_cuda()
        if captured.getvalue().strip():
            log.debug("nnU-Net while loading %s: %s", folder, captured.getvalue().strip())

    def _prepare_cuda(self) -> None:
        """The network on its GPU once (in NDHWC layout if asked), cuDNN autotuning on: every tile
        has the patch's shape, so the fastest kernels are found once and reused. A single fold's
        parameters are loaded once here instead of before every series."""
        torch.backends.cudnn.benchmark = True
        network = self._predictor.network.to(self.device)
        if self.settings.channels_last:
            network = network.to(memory_format=torch.channels_last_3d)
        self._predictor.network = network
        if len(self._predictor.list_of_parameters) == 1:
            self._module.load_state_dict(self._predictor.list_of_parameters[0])
            self._parameters_loaded = True

    @property
    def _module(self) -> torch.nn.Module:
        """The network whose parameters are loaded (under ``torch.compile``, the module it wraps)."""
        return getattr(self._predictor.network, "_orig_mod", self._predictor.network)

    def tile_gflop(self) -> float | None:
        """Billions of floating-point operations of one tile of the plans' patch size, counted by
        torch on a copy of the network whose parameters are ``meta`` tensors (shapes only: no data
        copied, no arithmetic); None where torch cannot count them (cohort.segmentation.gate)."""
        from torch.utils.flop_counter import FlopCounterMode

        network = self._module
        shapes_only = {id(tensor): torch.nn.Parameter(torch.empty_like(tensor, device="meta"), requires_grad=False)
                       for tensor in network.parameters()}
        shapes_only.update({id(tensor): torch.empty_like(tensor, device="meta") for tensor in network.buffers()})
        try:
            copy_on_meta = copy.deepcopy(network, shapes_only)  # the memo maps each tensor to its meta twin
            with FlopCounterMode(display=False) as counter, torch.inference_mode():
                copy_on_meta(torch.zeros(self._tile_shape(), device="meta"))
        except Exception as error:  # an op without a meta kernel or flop formula: time it instead
            log.debug("cannot count the work of a tile of %s: %s", self.folder, error)
            return None
        return counter.get_total_flops() / 1e9

    def _tile_shape(self) -> tuple[int, ...]:
        from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels

        predictor = self._predictor
        channels = determine_num_input_channels(predictor.plans_manager, predictor.configuration_manager,
                                                predictor.dataset_json)
        return (1, channels, *predictor.configuration_manager.patch_size)

    def tile_forward(self) -> Callable[[], torch.Tensor]:
        """A call that runs one zero tile of the plans' patch size through the network (its first
        fold's parameters, loaded now): what the sliding window repeats, for timing how the network
        shares the CPU's threads (cohort.segmentation.gate)."""
        predictor = self._predictor
        network = self._module
        if not self._parameters_loaded:
            network.load_state_dict(predictor.list_of_parameters[0])
        tile = torch.zeros(self._tile_shape(), device=self.device)
        return lambda: network(tile)

    def predict(self, image: np.ndarray | torch.Tensor, spacing: tuple[float, float, float], overlap: int) -> torch.Tensor:
        """Labels (x, y, z; uint8, int32 above 256 classes) of an int32 image on the model grid (an
        array, or a tensor on this network's device or the CPU), as a tensor on this network's
        device (on the CPU for networks whose labels nnU-Net converts).

        The whole image is preprocessed at once, so nnU-Net's crop and intensity normalisation see
        all of it (an MR network's z-score is the image's mean and deviation, not a chunk's); only
        the sliding window of a large image runs in overlapping z-chunks of the preprocessed image.
        Networks whose labels nnU-Net converts (regions, or logits resampled to the plans' grid) are
        chunked before preprocessing instead, so each chunk is normalised on its own there."""
        max_voxels = self.spec.chunking.max_voxels
        if self._converted_by_nnunet((spacing[2], spacing[1], spacing[0])):
            chunks = plan_chunks(image.shape, max_voxels, overlap)
            return predict_in_chunks(image, chunks, lambda slab: self._predict_array(slab, spacing))
        data, properties = self.preprocess(image, spacing)
        z = list(self._predictor.plans_manager.transpose_forward).index(0)  # the image's z in nnU-Net's axes
        planes = data[0].movedim(z, -1)
        cropped = predict_in_chunks(planes, plan_chunks(tuple(planes.shape), max_voxels, overlap),
                                    lambda slab: self._argmax_labels(slab.movedim(-1, z)[None].contiguous()).movedim(z, -1))
        return self._uncropped(cropped.movedim(-1, z), properties)

    def _converted_by_nnunet(self, spacing_zyx: Sequence[float]) -> bool:
        """Whether nnU-Net's own conversion makes the labels: a region-based network, or an image of
        ``spacing_zyx`` (nnU-Net's axis order, as its properties hold it) that its preprocessing
        resamples to the plans' spacing. One rule for :meth:`predict` (before preprocessing) and
        :meth:`forward` (after), so both take the same path."""
        transposed = [spacing_zyx[axis] for axis in self._predictor.plans_manager.transpose_forward]
        return (self._predictor.label_manager.has_regions
                or not np.allclose(transposed, self._predictor.configuration_manager.spacing))

    def _predict_array(self, image: np.ndarray | torch.Tensor, spacing: tuple[float, float, float]) -> torch.Tensor:
        data, properties = self.preprocess(image, spacing)
        return self._uncropped(self.forward(data, properties), properties)

    def _uncropped(self, cropped: torch.Tensor, properties: dict) -> torch.Tensor:
        """The labels of nnU-Net's cropped box put back on the whole image, as (x, y, z), where
        ``cropped`` is."""
        labels = torch.zeros(tuple(properties["shape_before_cropping"]), dtype=cropped.dtype, device=cropped.device)
        labels[tuple(slice(low, high) for low, high in properties["bbox_used_for_cropping"])] = cropped
        return labels.permute(*self._predictor.plans_manager.transpose_backward).permute(2, 1, 0).contiguous()

    def preprocess(self, image: np.ndarray | torch.Tensor, spacing: tuple[float, float, float]
                   ) -> tuple[torch.Tensor, dict]:
        """nnU-Net's preprocessing of an (x, y, z) image on the model grid: the (c, z, y, x) tensor
        the network reads and the properties that undo the crop. A CT network's runs in torch where
        ``image`` is (a tensor on the GPU stays there); others and images off the plans' grid run
        nnU-Net's own on the CPU."""
        spacing_zyx = (spacing[2], spacing[1], spacing[0])
        if self._ct_preprocessing is not None and not self._converted_by_nnunet(spacing_zyx):
            return self._ct_preprocessing.run(torch.as_tensor(image), spacing)
        if isinstance(image, torch.Tensor):
            image = image.cpu().numpy()
        predictor = self._predictor
        data = np.ascontiguousarray(image.transpose(2, 1, 0))[None]
        properties = {"spacing": list(spacing_zyx)}
        # No stdout redirection here: it is process-wide, and series in other slots run beside this
        # (the preprocessor prints only when verbose).
        data, _, properties = self._preprocessor.run_case_npy(
            data, None, properties, predictor.plans_manager, predictor.configuration_manager,
            predictor.dataset_json)
        return torch.from_numpy(data), properties

    def forward(self, data: torch.Tensor, properties: dict) -> torch.Tensor:
        """Labels of the preprocessed (cropped) box: sliding window and argmax inside the gate.

        The argmax of the logits is the argmax of nnU-Net's probabilities (softmax is monotonic;
        nnU-Net itself skips it) and ties go to the first class on every device."""
        if self._converted_by_nnunet(properties["spacing"]):
            return self._labels_converted_by_nnunet(data, properties)
        return self._argmax_labels(data)

    def _argmax_labels(self, data: torch.Tensor) -> torch.Tensor:
        """Sliding window over ``data`` (c, ...) and argmax, inside the gate; the labels stay on
        the device."""
        wide = self._predictor.label_manager.num_segmentation_heads > 256
        with self.gate, torch.inference_mode():
            logits = self._logits(data)
            # max's indices are argmax's (the first maximal class, NaN as maximal: both documented so),
            # 3x faster on a CPU for nnU-Net's float16 logits (0.16 against 0.49 s, 118 classes x 1.4 M voxels)
            labels = logits.max(0).indices.to(torch.int32 if wide else torch.uint8)
            del logits
        return labels

    def _labels_converted_by_nnunet(self, data: torch.Tensor, properties: dict) -> torch.Tensor:
        """Region-based networks, or a model whose spacing is not its plans' spacing: nnU-Net's own
        conversion (resampling of the logits, regions) on the CPU."""
        from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape

        predictor = self._predictor
        with self.gate:
            logits = self._logits(data).cpu()
        properties = {**properties, "shape_before_cropping": properties["shape_after_cropping_and_before_resampling"],
                      "bbox_used_for_cropping": [[0, n] for n in properties["shape_after_cropping_and_before_resampling"]]}
        labels = convert_predicted_logits_to_segmentation_with_correct_shape(
            logits, predictor.plans_manager, predictor.configuration_manager, predictor.label_manager, properties)
        labels = np.asarray(labels).transpose(predictor.plans_manager.transpose_forward)
        return torch.from_numpy(np.ascontiguousarray(labels, dtype=np.uint8 if labels.dtype == np.uint8 else np.int32))

    @torch.inference_mode()
    def _logits(self, data: torch.Tensor) -> torch.Tensor:
        """nnU-Net's sliding window over every fold's parameters (their mean), on the device."""
        predictor = self._predictor
        network = self._module
        total = None
        with self._autocast_type():
            for parameters in predictor.list_of_parameters:
                if not self._parameters_loaded:
                    network.load_state_dict(parameters)
                logits = predictor.predict_sliding_window_return_logits(self._tiles(data))
                total = logits if total is None else total.add_(logits.to(total.device))
        if len(predictor.list_of_parameters) > 1:
            total /= len(predictor.list_of_parameters)
        return total

    def _tiles(self, data: torch.Tensor) -> torch.Tensor:
        if self.device.type != "cuda" or data.device == self.device:
            return data
        return data.pin_memory().to(self.device, non_blocking=True)

    def _autocast_type(self) -> contextlib.AbstractContextManager:
        """nnU-Net enables autocast on CUDA without naming a type, so it takes the process default."""
        if self.device.type != "cuda":
            return contextlib.nullcontext()
        return _autocast_default(AUTOCAST_TYPES[self.settings.precision])


@contextlib.contextmanager
def _autocast_default(dtype: torch.dtype):
    previous = torch.get_autocast_dtype("cuda")
    torch.set_autocast_dtype("cuda", dtype)
    try:
        yield
    finally:
        torch.set_autocast_dtype("cuda", previous)
