"""Configuration files (run YAML, class maps, lower bounds, model YAML): every defect stops the
command with a ConfigError naming the file and the key or line, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from cohort.config import load_class_map, load_lower_bounds
from cohort.errors import ConfigError


def test_class_map_row_with_more_values_than_columns_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "classes.csv"
    path.write_text("label,structure\n1,spleen\n2,kidney_right,extra\n")
    with pytest.raises(ConfigError, match=r"classes.csv: line 3: row has 3 values but the header names 2 columns"):
        load_class_map(str(path))


def test_lower_bounds_row_with_more_values_than_columns_names_the_line(tmp_path: Path) -> None:
    classes = tmp_path / "classes.csv"
    classes.write_text("label,structure\n1,spleen\n")
    bounds = tmp_path / "bounds.csv"
    bounds.write_text("structure,lower_bound_ml\nspleen,40,ml\n")
    with pytest.raises(ConfigError, match=r"bounds.csv: line 2: row has 3 values"):
        load_lower_bounds(str(bounds), load_class_map(str(classes)))
