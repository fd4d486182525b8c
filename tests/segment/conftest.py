"""Fixtures for segmentation tests: random-weight model folders in TotalSegmentator's layout."""

from __future__ import annotations

from pathlib import Path

import pytest

from cohort.ingest import Volume, load_ct
from cohort.segmentation import ModelSpec, load_model_spec
from cohort.testing.weights import build_weights

EXAMPLES = Path(__file__).resolve().parents[2] / "cohort" / "examples"


@pytest.fixture(scope="session")
def fast_spec() -> ModelSpec:
    return load_model_spec("fast")


@pytest.fixture(scope="session")
def full_spec() -> ModelSpec:
    return load_model_spec("full")


@pytest.fixture(scope="session")
def fast_weights(tmp_path_factory: pytest.TempPathFactory, fast_spec: ModelSpec) -> Path:
    """A weights folder holding Dataset297 with a small random network."""
    folder = tmp_path_factory.mktemp("weights_fast")
    build_weights(fast_spec, folder, "small", seed=1)
    return folder


@pytest.fixture(scope="session")
def full_weights(tmp_path_factory: pytest.TempPathFactory, full_spec: ModelSpec) -> Path:
    """A weights folder holding Dataset291-295 with small random networks."""
    folder = tmp_path_factory.mktemp("weights_full")
    build_weights(full_spec, folder, "small", seed=2)
    return folder


@pytest.fixture(scope="session")
def example_sm() -> Volume:
    return load_ct(EXAMPLES / "example_ct_sm.nii.gz")


@pytest.fixture(scope="session")
def example_dicom() -> Volume:
    """The LPS-oriented DICOM example (512 x 512 x 20, 0.98 x 0.98 x 2 mm)."""
    return load_ct(EXAMPLES / "example_ct_dicom")
