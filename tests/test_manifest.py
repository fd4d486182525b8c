"""The manifest reader: subject fields, physical line numbers, covariates, and every refusal."""

from __future__ import annotations

from pathlib import Path

import pytest

from cohort.cli import main
from cohort.errors import ManifestError, SeriesError
from cohort.manifest import load_manifest, validate_subject


def _write(tmp_path: Path, text: str, encoding: str = "utf-8") -> Path:
    manifest = tmp_path / "scans.csv"
    manifest.write_bytes(text.encode(encoding))
    return manifest


def _refusal(manifest: Path) -> str:
    with pytest.raises(ManifestError) as refused:
        load_manifest(manifest)
    return str(refused.value)


@pytest.mark.parametrize(("text", "years"), [
    ("065Y", 65.0), ("030M", 2.5), ("012W", 12 * 7 / 365.25), ("005D", 5 / 365.25), ("064y", 64.0),
    ("64", 64.0), ("71.5", 71.5), ("", None), ("NA", None), ("nan", None), ("#N/A", None),
])
def test_ages_as_numbers_and_dicom_age_strings(tmp_path: Path, text: str, years: float | None) -> None:
    spec, = load_manifest(_write(tmp_path, f"series_id,path,age\ns1,a.nii.gz,{text}\n"))
    assert validate_subject(spec).age == (pytest.approx(years) if years is not None else None)


@pytest.mark.parametrize(("text", "words"), [
    ("sixty", ["age 'sixty'", "not a number"]), ("65", None), ("131Y", ["age '131Y'", "outside 0-130"]),
    ("65 Y", ["age '65 Y'", "not a number"]), ("06Y", ["age '06Y'", "not a number"]), ("inf", ["outside"]),
    ("6_5", ["age '6_5'", "not a number"]), ("\u0666\u0665", ["not a number"]),
    ("\u0660\u0666\u0665Y", ["not a number"]),
])
def test_bad_ages_fail_the_row_naming_line_and_value(tmp_path: Path, text: str, words: list[str] | None) -> None:
    spec, = load_manifest(_write(tmp_path, f"series_id,path,age\n\ns1,a.nii.gz,{text}\n"))
    if words is None:
        assert validate_subject(spec).age == 65.0
        return
    with pytest.raises(SeriesError) as failed:
        validate_subject(spec)
    for word in ["scans.csv line 3 (s1)", *words]:
        assert word in str(failed.value)


@pytest.mark.parametrize(("text", "sex"), [("M", "M"), ("f", "F"), ("male", "M"), (" Female ", "F"),
                                           ("MALE", "M"), ("", None), ("O", None), ("u", None),
                                           ("Unknown", None), ("other", None), ("NA", None)])
def test_sexes_in_letters_or_words(tmp_path: Path, text: str, sex: str | None) -> None:
    spec, = load_manifest(_write(tmp_path, f'series_id,path,sex\ns1,a.nii.gz,"{text}"\n'))
    assert validate_subject(spec).sex == sex


@pytest.mark.parametrize("text", ["X", "W", "mal", "0"])
def test_other_sexes_fail_the_row(tmp_path: Path, text: str) -> None:
    spec, = load_manifest(_write(tmp_path, f"series_id,path,sex\ns1,a.nii.gz,{text}\n"))
    with pytest.raises(SeriesError, match=f"line 2 \\(s1\\): sex '{text}' is not M or F"):
        validate_subject(spec)


def test_line_numbers_are_physical_lines_after_blank_lines_and_multiline_fields(tmp_path: Path) -> None:
    manifest = _write(tmp_path, 'series_id,path,age,note\n'
                                '\n'
                                's1,a.nii.gz,40,"first line\n'
                                'second line"\n'
                                '\n'
                                ',,,\n'
                                's2,b.nii.gz,sixty,plain\n')
    specs = load_manifest(manifest)
    assert [(s.series_id, s.line) for s in specs] == [("s1", 3), ("s2", 7)]
    assert specs[0].covariates == (("note", "first line\nsecond line"),)
    with pytest.raises(SeriesError, match=r"scans\.csv line 7 \(s2\)"):
        validate_subject(specs[1])
    manifest.write_text(manifest.read_text() + '\n"s3",c.nii.gz,1,"a\nb\nc"\ns1,d.nii.gz,2,x\n')
    assert "line 12 (s1): column 'series_id' value 's1' duplicates line 3" in _refusal(manifest)


def test_covariates_kept_in_header_order_with_uid_and_subject(tmp_path: Path) -> None:
    manifest = _write(tmp_path, "kvp,series_id,path,contrast,subject_id,series_uid,age,scanner\n"
                                "120,s1,a.nii.gz,, p01 ,1.2.3,50,CT X\n"
                                "100,s2,b.nii.gz,venous,,,,\n")
    first, second = load_manifest(manifest)
    assert first.covariates == (("kvp", "120"), ("contrast", ""), ("scanner", "CT X"))
    assert (first.subject_id, first.series_uid) == ("p01", "1.2.3")
    assert second.covariates == (("kvp", "100"), ("contrast", "venous"), ("scanner", ""))
    assert (second.subject_id, second.series_uid) == (None, None)
    assert first.path == tmp_path / "a.nii.gz"
    assert len({first, second, first}) == 2  # frozen and hashable
    with pytest.raises(AttributeError):
        first.line = 9  # type: ignore[misc]


def test_duplicated_header_column_is_refused_not_overwritten(tmp_path: Path) -> None:
    manifest = _write(tmp_path, "series_id,path,labels,age,labels\ns1,a.nii.gz,x.nii.gz,40,y.nii.gz\n")
    message = _refusal(manifest)
    assert "scans.csv line 1" in message and "column 'labels' appears 2 times" in message
    assert "columns 3, 5" in message


def test_duplicated_header_column_stops_cohort_run(tmp_path: Path, capsys) -> None:
    manifest = _write(tmp_path, "series_id,path,path\ns1,a.nii.gz,b.nii.gz\n")
    out = tmp_path / "results"
    assert main(["run", "--manifest", str(manifest), "--out", str(out)]) == 2
    message = " ".join(capsys.readouterr().err.split())
    assert "scans.csv line 1" in message and "column 'path' appears 2 times" in message
    assert not (out / "series").exists() or not any((out / "series").iterdir())


def test_a_manifest_without_rows_stops_cohort_run(tmp_path: Path, capsys) -> None:
    """Not "0 done" with paths to tables that were never written."""
    manifest = _write(tmp_path, "series_id,path,age,sex\n\n")
    assert main(["run", "--manifest", str(manifest), "--out", str(tmp_path / "results")]) == 2
    assert "scans.csv line 1: the manifest has a header but no rows" in " ".join(capsys.readouterr().err.split())


@pytest.mark.parametrize(("header", "meant"), [("lables", "labels"), ("Sex", "sex"), ("subject id", "subject_id"),
                                               ("Series-UID", "series_uid"), ("seriesid", "series_id")])
def test_a_column_named_like_a_known_one_is_refused_not_taken_as_a_covariate(
        tmp_path: Path, header: str, meant: str) -> None:
    message = _refusal(_write(tmp_path, f'series_id,path,"{header}"\ns1,a.nii.gz,x\n'))
    assert f"column '{header}' is not one of cohort's columns but reads like '{meant}'" in message


def test_covariates_unlike_cohort_columns_are_kept(tmp_path: Path) -> None:
    spec, = load_manifest(_write(tmp_path, "series_id,path,kvp,kernel,scanner,contrast,bmi,site\n"
                                           "s1,a.nii.gz,120,B30f,X,venous,24,A\n"))
    assert [name for name, _ in spec.covariates] == ["kvp", "kernel", "scanner", "contrast", "bmi", "site"]


@pytest.mark.parametrize(("separator", "name"), [(";", "semicolons"), ("\t", "tabs")])
def test_a_file_separated_by_semicolons_or_tabs_says_so(tmp_path: Path, separator: str, name: str) -> None:
    message = _refusal(_write(tmp_path, f"series_id{separator}path{separator}age\ns1{separator}a.nii.gz{separator}50\n"))
    assert f"separates its values with {name}; save it as CSV with commas" in message


def test_unnamed_header_column_is_refused(tmp_path: Path) -> None:
    assert "column 3 of the header has no name" in _refusal(_write(tmp_path, "series_id,path,,age\ns1,a,x,4\n"))


@pytest.mark.parametrize(("encoding", "words"), [
    ("utf-16", ["line 1", "is UTF-16; save it as UTF-8"]),
    ("utf-32", ["line 1", "is UTF-32; save it as UTF-8"]),
    ("utf-16-le", ["NUL bytes", "UTF-16 without a byte-order mark", "save it as UTF-8"]),
    ("cp1252", ["line 3", "not UTF-8", "byte 0xfc", "cp1252", "'ü'"]),
])
def test_manifest_not_in_utf8_is_refused_naming_the_encoding(tmp_path: Path, capsys, encoding: str,
                                                             words: list[str]) -> None:
    manifest = _write(tmp_path, "series_id,path,site\ns1,a.nii.gz,Köln\ns2,b.nii.gz,Zürich\n", encoding)
    if encoding == "cp1252":  # the first non-ASCII byte decides the line named
        manifest.write_bytes("series_id,path,site\ns1,a.nii.gz,Bonn\ns2,b.nii.gz,Zürich\n".encode(encoding))
    message = _refusal(manifest)
    for word in ["scans.csv", *words]:
        assert word in message, message
    assert main(["check", "--manifest", str(manifest)]) == 2
    assert words[-1] in " ".join(capsys.readouterr().err.split())


def test_utf8_with_byte_order_mark_is_read(tmp_path: Path) -> None:
    spec, = load_manifest(_write(tmp_path, "series_id,path,site\ns1,a.nii.gz,Köln\n", "utf-8-sig"))
    assert spec.covariates == (("site", "Köln"),)


def test_series_id_longer_than_128_characters_is_refused(tmp_path: Path) -> None:
    message = _refusal(_write(tmp_path, f"series_id,path\n{'a' * 300},a.nii.gz\n"))
    assert "line 2" in message and "'series_id' is 300 characters long; at most 128" in message
    assert "a" * 61 not in message  # the id is shortened in the message
    assert load_manifest(_write(tmp_path, f"series_id,path\n{'a' * 128},a.nii.gz\n"))[0].series_id == "a" * 128


@pytest.mark.parametrize("series_id", ["zarr.json", "ZARR.JSON", "Zarr.Json", ".zgroup", ".zattrs", ".hidden"])
def test_series_id_colliding_with_zarr_internals_is_refused(tmp_path: Path, series_id: str) -> None:
    message = _refusal(_write(tmp_path, f"series_id,path\nok,b.nii.gz\n{series_id},a.nii.gz\n"))
    assert "line 3" in message and f"{series_id!r}" in message
    assert ("Zarr keeps for its own metadata" in message) or ("starting with a letter or digit" in message)


def test_series_ids_differing_only_in_case_are_refused(tmp_path: Path) -> None:
    message = _refusal(_write(tmp_path, "series_id,path\nCase01,a.nii.gz\ncase01,b.nii.gz\n"))
    assert "line 3" in message and "differs only in case from 'Case01' on line 2" in message


def test_row_with_more_values_than_columns_is_refused(tmp_path: Path) -> None:
    message = _refusal(_write(tmp_path, "series_id,path,age\ns1,a.nii.gz,40,M,extra\n"))
    assert "line 2 (s1)" in message and "5 values but the header names 3 columns" in message
    assert load_manifest(_write(tmp_path, "series_id,path,age\ns1,a.nii.gz,40,,\n"))[0].age_text == "40"


def test_quote_left_open_is_refused_with_its_line(tmp_path: Path) -> None:
    message = _refusal(_write(tmp_path, 'series_id,path\ns1,a.nii.gz\ns2,"b.nii.gz\ns3,c.nii.gz\n'))
    assert "scans.csv line 4" in message and "not valid CSV" in message


def test_refusal_says_how_many_more_problems_check_would_list(tmp_path: Path) -> None:
    message = _refusal(_write(tmp_path, "series_id,path\ns1,a.nii.gz\ns1,b.nii.gz\nzarr.json,c.nii.gz\n,d\n"))
    assert message.startswith("scans.csv line 3 (s1): column 'series_id' value 's1' duplicates line 2")
    assert "and 2 more problems" in message and "cohort check --manifest" in message
