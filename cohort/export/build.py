"""``cohort manifest``: a DICOM export in, ``scans.csv`` and its index out (crawl -> index -> select -> write)."""

from __future__ import annotations

import dataclasses
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from cohort.errors import RunCannotStart
from cohort.export.crawl import Crawl, crawl
from cohort.export.policy import load_policy, select
from cohort.export.pseudonyms import key_path, load_or_create_key
from cohort.export.series import SeriesSummary, summarise
from cohort.export.writing import (
    index_path,
    unreadable_path,
    write_index,
    write_manifest,
    write_unreadable,
)
from cohort.ingest.series_of_files import crawl_cache_path

MAX_REASONS_SHOWN = 5


@dataclass(frozen=True)
class ManifestSummary:
    """What one ``cohort manifest`` found and chose."""

    n_series: int
    n_studies: int
    n_subjects: int
    n_chosen: int
    rejected: dict[str, int]  # rule -> series rejected by it (ranked lower included)
    n_unreadable: int
    crawl: Crawl
    reasons: dict[str, int]  # reason -> series not chosen for it, most common first
    new_key: Path | None = None  # the pseudonym key this run created: every pseudonym is new
    n_ids_of_several_issuers: int = 0  # PatientIDs that are several subjects (IssuerOfPatientID differs)
    n_chosen_with_contrast: int = 0  # manifest rows of a contrast-enhanced series (the rest: without)
    age_cap: float | None = None  # ages at or above it written as it (--age-cap)
    n_ages_capped: int = 0  # series (of the index) whose age was written as age_cap

    @property
    def exit_code(self) -> int:
        """1 when nothing was chosen: a manifest without rows is no success, and scripts that
        chain ``cohort manifest`` and ``cohort run`` must stop there; else 0."""
        return 0 if self.n_chosen else 1

    def describe(self, manifest: Path) -> list[str]:
        """The summary ``cohort manifest`` prints: found, chosen, rejected by rule, unreadable, changes."""
        crawled = self.crawl
        lines = [(f"{self.n_series} series in {self.n_studies} studies of {self.n_subjects} subjects; "
                 f"{self.n_chosen} chosen -> {manifest}"),
                 f"  index: {index_path(manifest)}"]
        lines += [f"  rejected ({rule}): {count}" for rule, count in self.rejected.items()]
        if self.n_unreadable:
            lines.append(f"  unreadable files: {self.n_unreadable} (listed in {unreadable_path(manifest)})")
        lines.append(f"  files: {len(crawled.files)}, headers read: {crawled.n_read} ({crawled.n_new} new, "
                     f"{crawled.n_changed} changed), {crawled.n_removed} gone since the last crawl")
        if self.n_ids_of_several_issuers:
            lines.append(f"  PatientIDs of several subjects: {self.n_ids_of_several_issuers} (their IssuerOfPatientID "
                         "differs, or is missing on some studies: each issuer's patient is a subject of its own; "
                         "make sure they are different people)")
        if self.new_key:  # a mistyped --key or a lost key would otherwise change every pseudonym unnoticed
            lines.append(f"  new pseudonym key created: {self.new_key}; series_id and subject_id match no export "
                         "made with another key (keep and back it up; a key given by mistake: delete it)")
        if self.age_cap is not None:
            lines.append(f"  ages of {self.age_cap:g} and over written as {self.age_cap:g} (--age-cap): "
                         f"{self.n_ages_capped} series")
        if 0 < self.n_chosen_with_contrast < self.n_chosen:  # HU differ by tens to hundreds between phases
            lines.append(f"  warning: contrast phases mixed: {self.n_chosen_with_contrast} chosen series with contrast, "
                         f"{self.n_chosen - self.n_chosen_with_contrast} without; to keep one, set `contrast: with` "
                         "or `contrast: without` in the policy")
        return lines + ([] if self.n_chosen else self._nothing_chosen(manifest))

    def _nothing_chosen(self, manifest: Path) -> list[str]:
        """The warning of an empty manifest: why nothing was chosen, most common reason first (the
        series' reasons; without any series, the files')."""
        if not len(self.crawl.files):
            return [f"  warning: nothing chosen, {manifest.name} has no rows: the export folder holds no files"]
        units, counts, listed = ("series", "series"), list(self.reasons.items()), index_path(manifest)
        if not self.n_series:
            units, listed = ("file", "files"), unreadable_path(manifest)
            counts = Counter(self.crawl.files["error"].dropna()).most_common()
        lines = [f"  warning: nothing chosen, {manifest.name} has no rows; why, most common first:"]
        lines += [f"    {count} {units[count != 1]}: {reason}" for reason, count in counts[:MAX_REASONS_SHOWN]]
        if len(counts) > MAX_REASONS_SHOWN:
            lines.append(f"    ... and {len(counts) - MAX_REASONS_SHOWN} more (see {listed})")
        return lines


def build_manifest(dicom: Path, manifest: Path, policy: Path | None = None, key: Path | None = None,
                   workers: int | None = None,
                   on_progress: Callable[[int, int], None] = lambda done, total: None,
                   age_cap: float | None = None) -> ManifestSummary:
    """Crawl ``dicom``, select series by ``policy`` and write ``manifest`` with its index beside it;
    with ``age_cap``, ages at or above it are written as ``age_cap`` (:func:`cap_ages`)."""
    if age_cap is not None and not age_cap > 0:
        raise RunCannotStart(f"--age-cap {age_cap:g}: must be a positive number of years, e.g. 90")
    if not dicom.is_dir():
        raise RunCannotStart(f"{dicom}: DICOM export folder not found")
    if manifest.suffix.lower() != ".csv":
        raise RunCannotStart(f"{manifest}: the manifest must be a .csv file")
    selection = load_policy(policy)
    manifest.parent.mkdir(parents=True, exist_ok=True)
    key_file = key_path(key)
    created = not key_file.exists()
    secret = load_or_create_key(key_file, manifest.parent)
    outputs = frozenset(path.resolve() for path in (manifest, index_path(manifest), unreadable_path(manifest),
                                                    crawl_cache_path(manifest)))
    outputs |= {path.with_name(path.name + ".partial") for path in outputs}
    crawled = crawl(dicom, crawl_cache_path(manifest), secret, workers or len(os.sched_getaffinity(0)), outputs, on_progress)
    series, n_capped = cap_ages(summarise(crawled.files, dicom), age_cap)
    choices = select(series, selection)
    n_chosen = write_manifest(choices, manifest, dicom, secret)
    write_index(choices, manifest, secret)
    n_unreadable = write_unreadable(crawled.files, manifest)
    reasons = Counter(choice.reason for choice in choices if not choice.selected)
    rejected = Counter(choice.reason.split(":", 1)[0] for choice in choices if not choice.selected)
    with_contrast = sum(choice.series.contrast for choice in choices if choice.selected and choice.companion_of is None)
    return ManifestSummary(n_series=len(series), n_studies=len({s.study_key for s in series}),
                           n_subjects=len({s.subject_key for s in series}), n_chosen=n_chosen,
                           rejected=dict(rejected.most_common()), n_unreadable=n_unreadable, crawl=crawled,
                           reasons=dict(reasons.most_common()), new_key=key_file if created else None,
                           n_ids_of_several_issuers=ids_of_several_subjects(crawled.files),
                           n_chosen_with_contrast=with_contrast, age_cap=age_cap, n_ages_capped=n_capped)


def cap_ages(series: list[SeriesSummary], age_cap: float | None) -> tuple[list[SeriesSummary], int]:
    """``series`` with every age at or above ``age_cap`` written as ``age_cap``, and how many were.

    HIPAA's safe harbour counts an age over 89 as identifying (few people reach it) and asks for
    one category, 90 or older: ``--age-cap 90``. An aging study loses little by it (the oldest
    subjects stay, at the cap's age); capped in the manifest, every later table has the capped age only.
    """
    if age_cap is None:
        return series, 0
    capped = [dataclasses.replace(s, age=float(age_cap)) if s.age is not None and s.age >= age_cap else s
              for s in series]
    return capped, sum(new is not old for new, old in zip(capped, series))


def ids_of_several_subjects(files: pd.DataFrame) -> int:
    """How many PatientIDs (their keys) stand for more than one subject among the readable files."""
    readable = files[files["error"].isna() & (files["patient_key"].fillna("") != "")]
    return int((readable.groupby("patient_key")["subject_key"].nunique() > 1).sum())
