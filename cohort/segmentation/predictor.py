"""One nnU-Net network, loaded once and run on (x, y, z) arrays through nnU-Net's own predictor.

The folder is read as ``initialize_from_trained_model_folder`` reads it (see
:mod:`cohort.segmentation.nnunet_folder`); settings come from the model file (TotalSegmentator's: fold 0,
``checkpoint_final.pth``, sliding window with step 0.8, Gaussian weighting, no mirroring;
VIBESegmentator's: every fold present ensembled, step 0.5), everything on the device when it
is a GPU. nnU-Net
works in (c, z, y, x); the arrays here are nibabel's (x, y, z), so image and spacing are
transposed on the way in and the labels on the way out.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import numpy as np
import torch

from cohort.segmentation.chunking import plan_chunks, predict_in_chunks
from cohort.segmentation.nnunet_folder import load_folder
from cohort.segmentation.registry import ModelSpec
from cohort.segmentation.weights import model_folds

log = logging.getLogger(__name__)


class NetworkPredictor:
    """A loaded nnU-Net network folder (``<dataset>/<trainer>__<plans>__<configuration>``)."""

    def __init__(self, folder: Path, spec: ModelSpec, device: torch.device) -> None:
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

        self.folder = folder
        self.spec = spec
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
            loaded = load_folder(folder, self.folds, spec.checkpoint)
            self._predictor.manual_initialization(
                loaded.network, loaded.plans_manager, loaded.configuration_manager, loaded.parameters,
                loaded.dataset_json, loaded.trainer_name, loaded.mirroring_axes)
        self.dataset_json = loaded.dataset_json
        self.plans_spacing_xyz = tuple(float(v) for v in reversed(loaded.configuration_manager.spacing))
        if captured.getvalue().strip():
            log.debug("nnU-Net while loading %s: %s", folder, captured.getvalue().strip())

    def predict(self, image: np.ndarray, spacing: tuple[float, float, float], overlap: int) -> np.ndarray:
        """Labels (uint8, x, y, z) of an int32 image on the model grid, z-chunked if it is large."""
        chunks = plan_chunks(image.shape, self.spec.chunking.max_voxels, overlap)
        return predict_in_chunks(image, chunks, lambda slab: self._predict_array(slab, spacing))

    def _predict_array(self, image: np.ndarray, spacing: tuple[float, float, float]) -> np.ndarray:
        data = np.ascontiguousarray(image.transpose(2, 1, 0))[None].astype(np.float32)
        properties = {"spacing": [spacing[2], spacing[1], spacing[0]]}
        with contextlib.redirect_stdout(io.StringIO()):
            seg = self._predictor.predict_single_npy_array(data, properties, None, None, False)
        return np.ascontiguousarray(np.asarray(seg).transpose(2, 1, 0)).astype(np.uint8)
