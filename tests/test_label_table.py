"""A label map's own label table (TotalSegmentator's --ml writes one) against the class map it is measured by.

The example's real TotalSegmentator v2 label map, renumbered to TotalSegmentator v1's ids with a v1
table (as ``--v1_order`` writes it): measured by the default (v2) class map it was silently
misnamed (v1's id 7, the aorta, is v2's pancreas); it is refused naming the v1 map, and measured by
that map and the paper's own Table S1 bounds it gives the v2 measurement of every shared structure.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from cohort import measure
from cohort.config import load_class_map
from cohort.errors import SeriesError
from testkit import with_label_table

CT, LABELS = "example_ct_sm.nii.gz", "example_seg_fast.nii.gz"


@pytest.fixture(scope="module")
def v1_labels(examples: Path, tmp_path_factory) -> Path:
    v1, v2 = load_class_map("class_map_total_v1.csv").names, load_class_map("class_map_total_v2.csv").names
    v1_id = {name: label for label, name in v1.items()}
    lookup = np.zeros(max(v2) + 1, np.uint8)
    for label, name in v2.items():
        lookup[label] = v1_id.get(name, 0)
    image = nib.load(examples / LABELS)
    folder = tmp_path_factory.mktemp("v1")
    renumbered = nib.Nifti1Image(lookup[np.asanyarray(image.dataobj)], image.affine, image.header)
    nib.save(renumbered, folder / "renumbered.nii.gz")
    return with_label_table(folder / "renumbered.nii.gz", folder / "seg_v1.nii.gz", v1)


def test_a_v1_label_map_is_refused_by_the_v2_class_map_naming_v1(examples: Path, v1_labels: Path) -> None:
    with pytest.raises(SeriesError, match="label 7 is aorta in the file's own label table but pancreas in "
                                          "class_map_total_v2.csv .* it agrees with class_map_total_v1.csv"):
        measure(examples / CT, v1_labels)


def test_measured_by_the_v1_map_it_gives_the_v2_measurements(examples: Path, v1_labels: Path, tmp_path: Path) -> None:
    config = tmp_path / "v1.yaml"
    config.write_text("measure:\n  class_map: class_map_total_v1.csv\n  lower_bounds: lower_bounds_v1.csv\n")
    v1 = measure(examples / CT, v1_labels, config=config).set_index("structure")
    v2 = measure(examples / CT, examples / LABELS).set_index("structure")
    assert len(v1) == 104
    shared = v1.index.intersection(v2.index)
    assert len(shared) > 80 and {"aorta", "pancreas", "liver"} <= set(shared)
    for column in ("volume_ml", "mean_hu"):
        assert np.allclose(v1.loc[shared, column], v2.loc[shared, column], equal_nan=True), column
    assert v1.loc["spleen", "lower_bound_ml"] == 40 and v1.loc["aorta", "lower_bound_ml"] == 80  # Table S1
