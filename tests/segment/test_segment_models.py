"""Every shipped model runs on random weights of its own layout, on a synthetic volume of its
modality; VIBESegmentator's layout (folder by pattern, folds ensembled, orientation from
dataset.json, nearest resampling, post-processing) and the body crop are checked on their own."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from cohort.errors import RunCannotStart
from cohort.ingest import Volume
from cohort.segmentation import check_model_ready, get_segmenter, known_models, load_model_spec
from cohort.segmentation.body_crop import body_box
from cohort.segmentation.postprocess import clean_label_map
from cohort.segmentation.segmenter import Segmenter
from cohort.config import config_file
from cohort.provenance import digest, file_digest
from cohort.segmentation.registry import BodyCropSpec, PostprocessSpec, model_class_map, model_config_digest
from cohort.segmentation.weights import model_folds, network_folder
from cohort.testing.images import synthetic_image
from cohort.testing.weights import build_weights

SHAPE = (36, 30, 16)
SPACING = (2.0, 2.0, 3.0)


def _volume(modality: str, flip_x: bool = False) -> Volume:
    image = synthetic_image(modality, SHAPE, SPACING)
    if flip_x:
        image = image.slicer[::-1, :, :]
    return Volume(hu=np.asarray(image.dataobj), affine=image.affine, source=Path("synthetic"), name="synthetic")


class LazyWeights:
    """One weights folder; a model's random networks are written the first time a test needs them."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.built: set[str] = set()

    def __call__(self, model: str) -> Path:
        if model not in self.built:
            build_weights(load_model_spec(model), self.folder, "small", seed=10 + len(self.built))
            self.built.add(model)
        return self.folder


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> LazyWeights:
    return LazyWeights(tmp_path_factory.mktemp("all_models"))


def test_the_registry_ships_every_model():
    assert {"fast", "full", "fastest", "total_v3", "total_v3_fast", "total_mr", "total_mr_fast",
            "vibeseg"} <= set(known_models())


@pytest.mark.parametrize("model", ["fastest", "total_v3_fast", "total_mr_fast", "total_mr", "vibeseg", *(
    pytest.param(model, marks=pytest.mark.slow) for model in ("total_v3", "full"))])
def test_each_model_segments_its_modality(model, weights):
    spec = load_model_spec(model)
    check_model_ready(spec, weights(model))
    volume = _volume(spec.modality)
    labels = get_segmenter(spec, weights(model), "cpu").segment(volume).label_map.labels
    assert labels.shape == SHAPE
    found = set(np.unique(labels).tolist()) - {0}
    assert found and found <= set(model_class_map(spec).names)


def test_vibeseg_layout_is_read_as_its_release_unpacks(weights):
    spec = load_model_spec("vibeseg")
    weights = weights("vibeseg")
    folder = network_folder(spec, spec.networks[0], weights)
    assert folder.parent.name == "Dataset100_cohort_test" and folder.name.startswith("nnUNetTrainer__nnUNetPlans")
    assert model_folds(spec, folder) == [0, 1]
    segmenter = get_segmenter(spec, weights, "cpu")
    assert segmenter.axcodes == ("P", "I", "R")  # from dataset.json
    assert segmenter.spacing == (1.40625, 3.0, 1.40625)  # from plans.json, on the P, I, R axes
    assert [p.folds for _, p, _ in segmenter._networks] == [[0, 1]]
    # Orientation is undone exactly: a mirrored input gives the mirrored label map.
    plain = segmenter.segment(_volume("MR")).label_map.labels
    mirrored = segmenter.segment(_volume("MR", flip_x=True)).label_map.labels
    assert np.array_equal(plain, mirrored[::-1])


def test_vibeseg_spacing_is_the_plans_spacing_put_back_on_the_image_axes(weights):
    """plans.json holds an anisotropic spacing transposed (3 mm first, ``transpose_forward`` [1, 0, 2]
    for P, I, R axes): read untransposed, the 3 mm fall on I, where the slices are, and nnU-Net
    finds the image on its plans' grid (no second resampling inside it)."""
    spec = load_model_spec("vibeseg")
    folder = network_folder(spec, spec.networks[0], weights("vibeseg"))
    plans = json.loads((folder / "plans.json").read_text())
    assert plans["transpose_forward"] == [1, 0, 2] and plans["configurations"]["3d_fullres"]["spacing"] == [
        3.0, 1.40625, 1.40625]
    segmenter = get_segmenter(spec, weights("vibeseg"), "cpu")
    # SHAPE (R, A, S) = 72 x 60 x 48 mm -> P 60 / 1.40625, I 48 / 3, R 72 / 1.40625 voxels
    assert segmenter.model_grid_image(_volume("MR")).shape == (43, 16, 51)
    assert not segmenter.predictors[0]._converted_by_nnunet(tuple(reversed(segmenter.spacing)))


def test_folds_are_ensembled(weights):
    """Dropping fold 1 changes the prediction: both folds' logits were averaged."""
    spec = load_model_spec("vibeseg")
    weights = weights("vibeseg")
    both = get_segmenter(spec, weights, "cpu").segment(_volume("MR")).label_map.labels
    single = dataclasses.replace(spec, ensemble_folds=False, fold=0)
    alone = get_segmenter(single, weights, "cpu").segment(_volume("MR")).label_map.labels
    assert not np.array_equal(both, alone)


def test_postprocessing_removes_small_components_and_keeps_the_largest():
    labels = np.zeros((20, 20, 20), dtype=np.uint8)
    labels[1:6, 1:6, 1:6] = 1          # liver, 125 voxels
    labels[10:12, 10:12, 10:12] = 1    # liver, 8 voxels: not the largest
    labels[15:19, 15:19, 15:19] = 2    # muscle, 64 voxels
    labels[0, 19, 0] = 2               # muscle, 1 voxel: below 5 ml at 1 ml per voxel
    labels[17, 2, 2] = 3               # untouched class
    rules = PostprocessSpec(min_component_ml=0.0, min_component_ml_by_class={"muscle": 5.0},
                            largest_component_only=("liver",))
    cleaned = clean_label_map(labels, rules, {1: "liver", 2: "muscle", 3: "bone_other"}, 1.0)
    assert (cleaned == 1).sum() == 125 and (cleaned == 2).sum() == 64 and cleaned[17, 2, 2] == 3
    assert labels[0, 19, 0] == 2  # the input is not modified


def test_body_crop_box_holds_the_body_and_drops_the_air():
    image = np.asarray(synthetic_image("CT", (60, 50, 10), (1.0, 1.0, 1.0)).dataobj)
    box = body_box(image, (1.0, 1.0, 1.0), BodyCropSpec(enabled=True, margin_mm=3))
    body = image > -500
    assert body[box].sum() == body.sum()
    assert image[box].size < 0.7 * image.size


def test_body_crop_keeps_every_part_of_a_body_split_by_air():
    """Two legs (or an arm apart from the trunk) are separate components: neither may be cut off;
    a speck of noise does not widen the box."""
    image = np.full((200, 100, 10), -1000)
    image[10:60, 20:80, :] = 40      # right leg: 30 ml
    image[120:190, 20:80, :] = 40    # left leg: 42 ml
    image[195, 95, 5] = 100          # a speck
    box = body_box(image, (1.0, 1.0, 1.0), BodyCropSpec(enabled=True, margin_mm=2))
    assert box == (slice(8, 192), slice(18, 82), slice(0, 10))


def test_models_whose_label_maps_the_segmentation_rules_changed_get_another_key():
    """Label maps made before the body crop kept every part of a body (or before an MR image was
    normalised whole when chunked) are not reused by a rerun as if made today: those models' keys
    are not their files' digests alone. Other models keep their keys, label maps and rows."""
    def file_digests(spec):
        return [file_digest(config_file(name))
                for name in (spec.source, spec.class_map, *(network.classes for network in spec.networks))]

    def files_only(spec):
        return digest(file_digests(spec))

    fast = load_model_spec("fast")
    cropped = dataclasses.replace(fast, body_crop=BodyCropSpec(enabled=True))
    assert model_config_digest(fast) == files_only(fast)
    assert model_config_digest(cropped) != files_only(cropped)
    assert model_config_digest(load_model_spec("total_mr")) != files_only(load_model_spec("total_mr"))
    vibeseg = load_model_spec("vibeseg")  # its spacing from plans.json, read in transposed order before
    assert model_config_digest(vibeseg) != digest([*file_digests(vibeseg), {"chunked_normalisation": 2}])


def test_body_crop_runs_in_the_segmenter_and_leaves_air_unlabelled(weights):
    spec = load_model_spec("fastest")
    cropped = dataclasses.replace(spec, body_crop=BodyCropSpec(enabled=True, margin_mm=6))
    volume = _volume("CT")
    labels = get_segmenter(cropped, weights("fastest"), "cpu").segment(volume).label_map.labels
    box = body_box(volume.hu, SPACING, cropped.body_crop)
    outside = np.ones(SHAPE, dtype=bool)
    outside[box] = False
    assert labels.shape == SHAPE and not labels[outside].any()


def test_a_fold_of_another_network_stops_the_load_not_every_series(weights, tmp_path):
    """Folds after the first are loaded only in the forward pass: one from another network must
    fail the model load (run cannot start), naming the fold, not every series."""
    spec = load_model_spec("vibeseg")
    copy = tmp_path / "weights"
    shutil.copytree(weights("vibeseg"), copy)
    build_weights(load_model_spec("total_mr_fast"), tmp_path / "other", "small", seed=3)
    other = next((tmp_path / "other").rglob("checkpoint_final.pth"))
    fold_1 = network_folder(spec, spec.networks[0], copy) / "fold_1" / spec.checkpoint
    shutil.copyfile(other, fold_1)
    with pytest.raises(RunCannotStart, match=r"fold_1/checkpoint_final.pth does not fit the network"):
        Segmenter(spec, copy, torch.device("cpu"))


def test_vibeseg_reads_checkpoint_best_where_a_fold_has_no_final_checkpoint(weights, tmp_path):
    """VIBESegmentator's code loads ``checkpoint_best.pth`` for every fold when a fold has no
    ``checkpoint_final.pth``; such a release read as broken ("no fold_N/checkpoint_final.pth"), and
    one fold without it was left out of the ensemble without a word."""
    spec = load_model_spec("vibeseg")
    copy = tmp_path / "weights"
    shutil.copytree(weights("vibeseg"), copy)
    folder = network_folder(spec, spec.networks[0], copy)
    reference = get_segmenter(spec, weights("vibeseg"), "cpu").segment(_volume("MR")).label_map.labels
    (folder / "fold_1" / "checkpoint_final.pth").rename(folder / "fold_1" / "checkpoint_best.pth")
    shutil.copyfile(folder / "fold_0" / "checkpoint_final.pth", folder / "fold_0" / "checkpoint_best.pth")
    check_model_ready(spec, copy)
    assert model_folds(spec, folder) == [0, 1]
    segmenter = Segmenter(spec, copy, torch.device("cpu"))
    assert segmenter.predictors[0].folds == [0, 1]
    assert np.array_equal(segmenter.segment(_volume("MR")).label_map.labels, reference)  # both folds, as before
    (folder / "fold_0" / "checkpoint_best.pth").unlink()  # fold 0 has only the final one: not one name for all
    with pytest.raises(RunCannotStart, match=r"no checkpoint .*fold_0/checkpoint_best.pth"):
        check_model_ready(spec, copy)


def test_a_normalised_mr_is_refused_by_a_model_that_reads_whole_numbers(weights) -> None:
    """total_mr casts the resampled image to int32, as TotalSegmentator does: an MR scaled to 0-1
    reached the network as two grey levels and was labelled from them, silently. It is refused,
    naming the span; the same image in its stored range is segmented, and vibeseg (float32) takes both."""
    from cohort.errors import SeriesError

    volume = _volume("MR")
    scaled = dataclasses.replace(volume, hu=(volume.hu / volume.hu.max()).astype(np.float32))
    segmenter = get_segmenter(load_model_spec("total_mr_fast"), weights("total_mr_fast"), "cpu")
    with pytest.raises(SeriesError, match=r"synthetic: its values span only \S+ to 1, and model 'total_mr_fast' reads "
                                          r"whole numbers \(int32, as TotalSegmentator does\).* as 2 grey levels"):
        segmenter.segment(scaled)
    assert segmenter.segment(volume).label_map.labels.shape == SHAPE
    vibeseg = get_segmenter(load_model_spec("vibeseg"), weights("vibeseg"), "cpu")
    assert vibeseg.segment(scaled).label_map.labels.shape == SHAPE


def test_vibeseg_resamples_the_image_with_a_cubic_spline(weights) -> None:
    """VIBESegmentator's code resamples an image with order 3 (TPTBox's NII.rescale; 0 for label maps,
    'nearest' being its edge mode): the model grid image is scipy's cubic zoom of the reoriented image."""
    from scipy import ndimage

    from cohort.segmentation.resample import to_canonical

    segmenter = get_segmenter(load_model_spec("vibeseg"), weights("vibeseg"), "cpu")
    volume = _volume("MR")
    canonical = to_canonical(volume.hu, volume.affine, segmenter.axcodes)
    zoom = np.asarray(canonical.spacing) / np.asarray(segmenter.spacing)
    expected = ndimage.zoom(canonical.array.astype(np.float64), zoom, order=3, mode="nearest").astype(np.float32)
    assert np.array_equal(segmenter.model_grid_image(volume), expected)
    linear = ndimage.zoom(canonical.array.astype(np.float64), zoom, order=1, mode="nearest").astype(np.float32)
    assert not np.array_equal(expected, linear)
