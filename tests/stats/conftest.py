"""Shared fixtures: one paper-sized synthetic cohort (4,004 subjects), analysed once per session with the
paper preset (the tests of the published method), and a small one analysed with the default preset."""

from __future__ import annotations

from pathlib import Path

import pytest

from cohort.stats.config import load_aging_config
from cohort.stats.study import AgingResults, run_study
from cohort.testing.cohorts import SyntheticCohort, make_cohort


@pytest.fixture(scope="session")
def cohort() -> SyntheticCohort:
    return make_cohort(seed=7)


@pytest.fixture(scope="session")
def results(cohort: SyntheticCohort) -> AgingResults:
    return run_study(cohort.features, cohort.series, load_aging_config(preset="paper"))


@pytest.fixture(scope="session")
def small_results_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small cohort written as ``cohort run`` writes it (features/ and series/ Parquet)."""
    return make_cohort(n_subjects=600, n_structures=12, seed=3).write(tmp_path_factory.mktemp("results"))
