"""Contrast phase in `cohort manifest`: `contrast: with` or `without` keeps one phase, a series'
SeriesDescription mark decides over ContrastBolusAgent, each rejection names its evidence, and a
manifest whose rows mix phases says so when the policy takes `any` (the default, today's choice)."""

from __future__ import annotations

import csv
import dataclasses
import re
from pathlib import Path

import pandas as pd
import pydicom
import pytest

from cohort.errors import ConfigError
from cohort.export import build_manifest
from cohort.export.policy import load_policy, select
from cohort.export.series import SeriesSummary
from tests.export.conftest import JANE, JANE_LATER, JOHN, TEST_POLICY
from tests.export.pacs import Edit, Patient, Study, example_slices, write_series
from tests.testkit import cohort_cli

ANNE = Patient("ROE^ANNE", "PID-777001", "19660101", sex="F", age="058Y")
MARKS = """\
description_without_contrast: ['\\bnativ']
description_with_contrast: ['venous']
"""
BODY_CT = SeriesSummary("1", "stu-1", "sub-1", ".", 60, "CT", "ORIGINAL\\PRIMARY\\AXIAL", "axial", 0.0, 3.0, 3.0,
                        177.0, None, "Br38f", False, 120.0, "", "", "", None, "")  # passes the shipped rules
WITHOUT_BY_TAG = "without (no agent in ContrastBolusAgent, no mark in the description)"
WITH_BY_TAG = "with (ContrastBolusAgent names an agent, no mark in the description)"


def agent(name: str) -> Edit:
    """ContrastBolusAgent as the scanner wrote it ("": left empty)."""

    def edit(ds: pydicom.Dataset, k: int) -> None:
        ds.ContrastBolusAgent = name

    return edit


@pytest.fixture(scope="module")
def export(tmp_path_factory, examples: Path) -> tuple[Path, dict[str, str]]:
    """Four studies; A and B hold a native and a venous series of one kernel and thickness (the
    tie-break alone would pick one), C only a native one, D only a venous one. In B the tag is no
    help: empty on the venous series, copied onto the native one; the descriptions say which is which."""
    root = tmp_path_factory.mktemp("contrast") / "export"
    slices = example_slices(examples)
    a, b, c, d = Study(JANE), Study(JOHN), Study(JANE_LATER, date="20231110"), Study(ANNE)
    uids = {
        "a_native": write_series(root / "A" / "native", slices, a, description="Abdomen 3.0", edit=agent("")),
        "a_venous": write_series(root / "A" / "venous", slices, a, description="Abdomen 3.0",
                                 edit=agent("Omnipaque 350")),
        "b_native": write_series(root / "B" / "native", slices, b, description="Abdomen nativ 3.0",
                                 edit=agent("APPLIED")),
        "b_venous": write_series(root / "B" / "venous", slices, b, description="Abdomen portal venous 3.0",
                                 edit=agent("")),
        "c_native": write_series(root / "C" / "native", slices, c, description="Abdomen 3.0", edit=agent("")),
        "d_venous": write_series(root / "D" / "venous", slices, d, description="Abdomen 3.0",
                                 edit=agent("Omnipaque 350")),
    }
    return root, uids


def manifest_with(policy_text: str, export: tuple[Path, dict[str, str]], tmp_path: Path, key: Path):
    """``build_manifest`` with ``policy_text``; its summary, reasons by role and the rows' contrast by role."""
    root, uids = export
    policy = tmp_path / "policy.yaml"
    policy.write_text(policy_text)
    summary = build_manifest(root, tmp_path / "out" / "scans.csv", policy, key)
    role = {uid: name for name, uid in uids.items()}
    index = pd.read_parquet(tmp_path / "out" / "scans.index.parquet")
    reasons = {role[uid]: reason for uid, reason in zip(index["series_uid"], index["reason"])}
    with (tmp_path / "out" / "scans.csv").open(newline="") as handle:
        rows = {role[row["series_uid"]]: row["contrast"] for row in csv.DictReader(handle)}
    return summary, reasons, rows


@pytest.fixture(scope="module")
def key(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("keys") / "pseudonym.key"


def test_any_chooses_as_before_and_the_summary_says_the_rows_mix_phases(export, tmp_path: Path, key: Path) -> None:
    """The default: one series per study by the tie-break, whatever its phase; `cohort manifest`
    prints that the rows mix phases, with the counts and how to keep one."""
    root, _ = export
    policy = tmp_path / "policy.yaml"
    policy.write_text(TEST_POLICY)  # a policy of before: no `contrast` key (any), no description marks
    result = cohort_cli("manifest", "--dicom", str(root), "--out", str(tmp_path / "out" / "scans.csv"),
                        "--policy", str(policy), "--key", str(key), timeout=120)
    assert result.returncode == 0, result.stderr
    with (tmp_path / "out" / "scans.csv").open(newline="") as handle:
        contrast = [row["contrast"] for row in csv.DictReader(handle)]
    assert len(contrast) == 4 and contrast.count("yes") not in (0, 4)  # C is native, D venous: mixed, always
    assert (f"warning: contrast phases mixed: {contrast.count('yes')} chosen series with contrast, "
            f"{contrast.count('no')} without; to keep one, set `contrast: with` or `contrast: without` in the policy"
            ) in " ".join(result.stderr.split()), result.stderr
    index = pd.read_parquet(tmp_path / "out" / "scans.index.parquet")
    assert not index["reason"].str.startswith("contrast").any()
    assert index["reason"].str.startswith("ranked lower").sum() == 2  # A's and B's other series, as before


def test_with_keeps_the_contrast_enhanced_series_of_each_study(export, tmp_path: Path, key: Path) -> None:
    summary, reasons, rows = manifest_with(TEST_POLICY + MARKS + "contrast: with\n", export, tmp_path, key)
    assert rows == {"a_venous": "yes", "b_venous": "yes", "d_venous": "yes"}
    assert reasons["a_native"] == reasons["c_native"] == f"contrast: {WITHOUT_BY_TAG}, the policy takes with"
    # the tag names an agent, the description says native: the description decides
    assert reasons["b_native"] == "contrast: without (description matches '\\bnativ'), the policy takes with"
    assert reasons["b_venous"].startswith("chosen: rank 1 of 1 eligible in the study")
    lines = summary.describe(tmp_path / "out" / "scans.csv")
    assert "  rejected (contrast): 3" in lines and not any("phases mixed" in line for line in lines), lines


def test_without_keeps_the_native_series_and_the_manifest_says_so(export, tmp_path: Path, key: Path) -> None:
    summary, reasons, rows = manifest_with(TEST_POLICY + MARKS + "contrast: without\n", export, tmp_path, key)
    assert rows == {"a_native": "no", "b_native": "no", "c_native": "no"}  # b_native: "no" though its tag names one
    assert reasons["a_venous"] == reasons["d_venous"] == f"contrast: {WITH_BY_TAG}, the policy takes without"
    assert reasons["b_venous"] == "contrast: with (description matches 'venous'), the policy takes without"
    assert summary.rejected == {"contrast": 3} and summary.n_chosen_with_contrast == 0


@pytest.mark.parametrize(("text", "error"), [
    ("contrast: venous\n", "key 'contrast' must be one of any, with, without, got 'venous'"),
    ("contrast: yes\n", "key 'contrast' must be one of any, with, without, got True (YAML reads yes and no"),
    ("description_with_contrast: ['+C']\n", "key 'description_with_contrast' entry '+C' is not a regular expression"),
    ("description_without_contrast: '\\bnativ'\n", "key 'description_without_contrast' must be a list"),
])
def test_policy_errors_name_the_file_and_key(text: str, error: str, tmp_path: Path) -> None:
    policy = tmp_path / "bad.yaml"
    policy.write_text(TEST_POLICY + text)
    with pytest.raises(ConfigError, match=re.escape(f"bad.yaml: {error}")):
        load_policy(policy)


@pytest.mark.parametrize(("description", "phase"), [
    ("Abdomen nativ 3.0 B30f", "without"), ("Native Abdomen", "without"), ("NC Abd/Pelvis", "without"),
    ("CT ABD C-", "without"), ("non-contrast chest", "without"), ("Oberbauch ohne KM", "without"),
    ("w/o contrast", "without"), ("Precontrast liver", "without"),
    ("Abdomen ohne Kontrastmittel", "without"), ("CT ABDOMEN PELVIS WO CONTRAST", "without"),
    ("Chest no contrast", "without"), ("Thorax sans contraste", "without"), ("without IV contrast", "without"),
    ("Abdomen mit Kontrastmittel", "with"),
    ("Abdomen venös 3.0", "with"), ("PV 3mm", "with"), ("Portal venous", "with"), ("Arterial phase", "with"),
    ("KM Abdomen", "with"), ("C+ abd", "with"), ("CT ABD W/ CONTRAST", "with"), ("CTA aorta", "with"),
    # no mark: ContrastBolusAgent decides
    ("Abdomen 3.0 B30f", None), ("FOV 50 cm", None), ("C-spine 2mm", None),
])
def test_the_shipped_description_marks_decide_over_the_tag(description: str, phase: str | None) -> None:
    """With the shipped marks, a series whose tag says the other phase is judged by its description."""
    shipped = load_policy()
    assert shipped.contrast == "any" and load_policy(Path("selection_dixon.yaml")).contrast == "any"
    tag_says = "without" if phase == "with" else "with"
    series = dataclasses.replace(BODY_CT, series_description=description, contrast=tag_says == "with")
    (choice,) = select([series], dataclasses.replace(shipped, contrast=tag_says))
    if phase is None:
        assert choice.selected and choice.series.contrast, choice.reason
    else:
        assert choice.reason.startswith(f"contrast: {phase} (description matches '"), choice.reason
        assert choice.series.contrast == (phase == "with")
