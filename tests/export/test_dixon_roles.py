"""Dixon roles from SeriesDescription with the shipped marks (``configs/selection_dixon.yaml``):
the vendors' and cohorts' Dixon names get their role, fat-suppressed series get none."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from cohort.export.dixon import dixon_role
from cohort.export.policy import load_policy, select
from cohort.export.series import SeriesSummary

PLAIN = "ORIGINAL\\PRIMARY\\M\\ND"
BLANK = SeriesSummary("1", "stu-1", "sub-1", ".", 40, "MR", PLAIN, "axial", 0.0, 3.0, 3.0, 120.0, None, "", False,
                      None, "", "", "", None, "", grid="40x64x64 grid")


def series(uid: str, description: str, image_type: str = PLAIN) -> SeriesSummary:
    return dataclasses.replace(BLANK, series_uid=uid, series_description=description, image_type=image_type)


@pytest.mark.parametrize(("description", "role"), [
    ("Dixon_BH_17s_W", "water"), ("Dixon_BH_17s_F", "fat"), ("Dixon_BH_17s_in", "in_phase"),
    ("Dixon_BH_17s_opp", "opposed_phase"), ("WATER: Ax LAVA-Flex", "water"), ("FAT: Ax LAVA-Flex", "fat"),
    ("InPhase: Ax LAVA-Flex", "in_phase"), ("OutPhase: Ax LAVA-Flex", "opposed_phase"),
    # fat-suppressed or water-excitation images hold no fat signal: no Dixon role
    ("Ax T1 FAT SAT", None), ("t1 vibe fat-sat tra", None), ("Ax T2 fat suppressed", None), ("T2 FAT SUP", None),
    ("T1 water excitation", None), ("FatFrac: Ax IDEAL IQ", None), ("Fat fraction", None),
])
def test_descriptions_mark_the_shipped_roles(description: str, role: str | None) -> None:
    policy = load_policy(Path("selection_dixon.yaml")).dixon
    assert dixon_role(series("1", description), policy) == role


def test_a_fat_saturated_series_on_the_grid_is_not_taken_as_the_fat_image() -> None:
    """A fat-sat series planned on the Dixon's grid (copied geometry) beside an acquisition that
    kept no fat image: pairing it as the fat image would give every structure a false fat fraction."""
    policy = dataclasses.replace(load_policy(Path("selection_dixon.yaml")), min_slices=8, min_z_coverage_mm=15)
    found = [series("1.1", "t1_vibe_dixon_tra", "ORIGINAL\\PRIMARY\\DIXON\\IN_PHASE"),
             series("1.2", "t1_vibe_dixon_tra", "DERIVED\\PRIMARY\\DIXON\\WATER"),
             series("1.3", "t1 vibe FAT SAT tra")]
    choices = {choice.series.series_uid: choice for choice in select(found, policy)}
    assert not any(choice.selected for choice in choices.values()), {u: c.reason for u, c in choices.items()}
    assert choices["1.1"].reason == "dixon: no fat series on this grid (water, in_phase found)"
