"""Configuration files (run YAML, class maps, lower bounds, model YAML): every defect stops the
command with a ConfigError naming the file and the key or line, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from cohort.config import load_class_map, load_lower_bounds, load_run_config
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


@pytest.mark.parametrize(("rows", "message"), [
    ("spleen,-5\n", r"bounds.csv: line 2: key 'lower_bound_ml' must be a finite volume >= 0 ml"),
    ("spleen,nan\n", r"bounds.csv: line 2: key 'lower_bound_ml' must be a finite volume >= 0 ml"),
    ("spleen,40\nliver,300\nspleen,4\n", r"bounds.csv: line 4: structure 'spleen' already has a row \(line 2\)"),
])
def test_lower_bounds_refuse_values_no_volume_can_be_below_and_repeated_rows(tmp_path: Path, rows: str,
                                                                            message: str) -> None:
    classes = tmp_path / "classes.csv"
    classes.write_text("label,structure\n1,spleen\n2,liver\n")
    bounds = tmp_path / "bounds.csv"
    bounds.write_text("structure,lower_bound_ml\n" + rows)
    with pytest.raises(ConfigError, match=message):
        load_lower_bounds(str(bounds), load_class_map(str(classes)))


def test_class_map_saved_by_excel_with_a_byte_order_mark_is_read(tmp_path: Path) -> None:
    path = tmp_path / "classes.csv"
    path.write_bytes(b"\xef\xbb\xbflabel,structure\r\n1,spleen\r\n2,kidney_right\r\n")
    assert load_class_map(str(path)).names == {1: "spleen", 2: "kidney_right"}


def test_part_class_file_with_a_byte_order_mark_is_read(tmp_path: Path) -> None:
    from cohort.segmentation.registry import NetworkSpec, network_classes

    path = tmp_path / "parts.csv"
    path.write_bytes(b"\xef\xbb\xbfpart,dataset,part_label,structure\norgans,Dataset291_x,1,spleen\n")
    assert network_classes(NetworkSpec(dataset="Dataset291_x", classes=str(path), part="organs")) == {1: "spleen"}


def test_class_map_not_utf8_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "classes.csv"
    path.write_bytes(b"label,structure\n1,spleen\n2,M\xfcller\n")
    with pytest.raises(ConfigError, match=r"classes.csv: line 3: the file is not UTF-8 \(byte 0xfc\)"):
        load_class_map(str(path))


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf"])
@pytest.mark.parametrize("key", ["series_timeout_s", "flush_interval_s", "min_free_gb", "worker_memory_gb"])
def test_run_config_refuses_numbers_that_are_not_finite(tmp_path: Path, key: str, value: str) -> None:
    # YAML's .nan passed every "must be positive" comparison; each series then failed with a bare
    # "ValueError: Invalid value NaN" (.inf: "OverflowError: timestamp out of range") instead of the
    # run stopping on the config
    path = tmp_path / "run.yaml"
    path.write_text(f"execution:\n  {key}: {value}\n")
    with pytest.raises(ConfigError, match=rf"run.yaml: key 'execution.{key}' must be positive and finite"):
        load_run_config(path)


def test_run_config_that_is_a_folder_or_not_utf8_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot read the config file \(Is a directory\)"):
        load_run_config(tmp_path)
    path = tmp_path / "run.yaml"
    path.write_bytes(b"execution:\n  # Gr\xf6\xdfe\n  batch_size: 10\n")
    with pytest.raises(ConfigError, match=r"run.yaml: line 2: the file is not UTF-8"):
        load_run_config(path)


@pytest.mark.parametrize(("line", "replacement", "key"), [
    ("class_map: class_map_total_v2.csv", "class_map: my_classes.csv", "class_map"),
    ("lower_bounds: lower_bounds_v2.csv", "lower_bounds: my_bounds.csv", "lower_bounds"),
    ("    classes: class_map_total_v2.csv", "    classes: my_classes.csv", "networks[0].classes"),
])
def test_model_file_naming_a_missing_csv_names_the_model_file_and_key(tmp_path: Path, line: str, replacement: str,
                                                                       key: str) -> None:
    # the message named only "<cohort>/configs/my_classes.csv: file not found": neither the model
    # file that asked for it nor its key, and a folder the user never wrote it to
    from cohort.segmentation.registry import MODELS_DIR, load_model_spec

    text = (MODELS_DIR / "fast.yaml").read_text()
    assert line in text
    model = tmp_path / "fast.yaml"
    model.write_text(text.replace(line, replacement, 1))
    with pytest.raises(ConfigError) as error:
        load_model_spec(str(model))
    assert str(error.value).startswith(f"{model}: key '{key}': file '{replacement.split()[-1]}' not found"), error.value


@pytest.mark.parametrize(("text", "value"), [("1e-3", 0.001), ("5E0", 5.0), ("2.5e+1", 25.0), ("1.0e-3", 0.001)])
def test_float_keys_take_numbers_in_exponent_notation(tmp_path: Path, text: str, value: float) -> None:
    # PyYAML reads 1e-3 (a number in YAML 1.2 and JSON) as a string: the run refused it with the
    # baffling "key 'execution.min_free_gb' must be float, got '1e-3'"
    path = tmp_path / "run.yaml"
    path.write_text(f"execution:\n  min_free_gb: {text}\n")
    assert load_run_config(path).execution.min_free_gb == pytest.approx(value)


def test_int_keys_still_refuse_text(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("execution:\n  batch_size: 1e2\n")
    with pytest.raises(ConfigError, match=r"run.yaml: key 'execution.batch_size' must be int, got '1e2'"):
        load_run_config(path)


@pytest.mark.parametrize(("text", "expected"), [
    ("prefetch: auto", ("auto", "auto")), ("prefetch: 0\n  network_passes: 2", (0, 2)),
    ("prefetch: fast", "key 'execution.prefetch' must be one of auto, got 'fast'"),
    ("network_passes: Auto", "key 'execution.network_passes' must be one of auto, got 'Auto'"),
    ("prefetch: -1", "key 'execution.prefetch' must be >= 0, got -1"),
    ("network_passes: 0", "key 'execution.network_passes' must be positive, got 0"),
    ("prefetch: 1.5", "key 'execution.prefetch' must be int or str, got 1.5"),
    ("prefetch: true", "key 'execution.prefetch' must be int or str, got True")])
def test_prefetch_and_network_passes_take_a_number_or_auto(tmp_path: Path, text: str, expected) -> None:
    path = tmp_path / "run.yaml"
    path.write_text(f"execution:\n  {text}\n")
    if isinstance(expected, tuple):
        execution = load_run_config(path).execution
        assert (execution.prefetch, execution.network_passes) == expected
        return
    with pytest.raises(ConfigError) as error:
        load_run_config(path)
    assert str(error.value) == f"{path}: {expected}"


def test_the_shipped_defaults_let_each_worker_decide() -> None:
    execution = load_run_config().execution
    assert (execution.prefetch, execution.network_passes) == ("auto", "auto")


def test_a_key_given_twice_in_a_yaml_config_is_refused_naming_both_lines(tmp_path: Path) -> None:
    """PyYAML keeps the later value without a word; an edit near the top would silently lose."""
    path = tmp_path / "run.yaml"
    path.write_text("execution:\n  batch_size: 4\n  prefetch: 0\n  batch_size: 8\n")
    with pytest.raises(ConfigError, match=r"run.yaml: invalid YAML: key 'batch_size' appears twice in one mapping "
                                          r"\(first on line 2\)\s+in .*line 4"):
        load_run_config(path)
