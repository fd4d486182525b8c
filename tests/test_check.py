"""``cohort check``: every problem of a manifest in one pass, from real files, without doing work."""

from __future__ import annotations

import gzip
import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from cohort.check import check_manifest
from cohort.cli import main
from cohort.errors import ManifestError, SeriesError
from cohort.config import load_class_map
from cohort.ingest import InputName, align_labels, load_ct, load_label_nifti, load_labels
from cohort.manifest import load_manifest, read_manifest
from testkit import cohort_cli, mirrored_qform_pair, with_header, with_label_table
from tests.export.pacs import Patient, Study, example_slices, write_series

HEADER = "series_id,path,age,sex,labels,scanner\n"


def _nifti(path: Path, shape: tuple[int, ...], dtype=np.int16) -> Path:
    nib.save(nib.Nifti1Image(np.zeros(shape, dtype), np.eye(4)), str(path))
    return path


def _header_only(path: Path, shape: tuple[int, ...]) -> Path:
    """A gzipped NIfTI whose header promises ``shape`` but that holds (almost) no voxels."""
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.uint8)
    header["vox_offset"] = 352
    path.write_bytes(gzip.compress(header.binaryblock + b"\x00" * 4 + b"\x00" * 64))
    return path


def _tree(folder: Path) -> set[Path]:
    return {p.relative_to(folder) for p in folder.rglob("*")}


@pytest.fixture()
def broken(tmp_path: Path, examples: Path) -> tuple[Path, dict[int, list[str]], Path]:
    """A manifest with one problem or more on most lines; line -> words its problems must show."""
    data = tmp_path / "study"
    (data / "images").mkdir(parents=True)
    _nifti(data / "images" / "ok.nii.gz", (8, 8, 6))
    _nifti(data / "images" / "ok_4d.nii", (8, 8, 6, 1))
    _nifti(data / "images" / "flat.nii.gz", (8, 8))
    truncated = _nifti(data / "images" / "cut.nii", (16, 16, 16))
    truncated.write_bytes(truncated.read_bytes()[:3000])
    (data / "images" / "garbage.nii.gz").write_bytes(gzip.compress(b"this is not a nifti file" * 10))
    (data / "images" / "notes.txt").write_text("not an image")
    (data / "not_dicom").mkdir()
    (data / "not_dicom" / "a.dcm").write_bytes(b"\x00" * 300)
    (data / "empty_dicom").mkdir()
    shutil.copytree(examples / "example_ct_dicom", data / "dicom")
    _header_only(data / "images" / "huge.nii.gz", (4000, 4000, 4000))
    elsewhere = _nifti(tmp_path / "elsewhere_missing_labels.nii.gz", (8, 8, 6))
    elsewhere.unlink()
    rows = [
        "good,images/ok.nii.gz,065Y,female,images/ok_4d.nii,A",  # line 2
        "",  # line 3
        'bad_age,images/ok.nii.gz,"sixty\nfive",M,,B',  # lines 4-5
        "bad_sex,images/ok.nii.gz,40,X,,",  # line 6
        "missing,images/nope.nii.gz,40,M,,",  # line 7
        "flat,images/flat.nii.gz,40,M,,",  # line 8
        "cut,images/cut.nii,40,M,,",  # line 9
        "garbage,images/garbage.nii.gz,40,M,,",  # line 10
        "text,images/notes.txt,40,M,,",  # line 11
        "not_dicom,not_dicom,40,M,,",  # line 12
        "empty_dicom,empty_dicom,40,M,,",  # line 13
        f"outside,dicom,40,M,{elsewhere},",  # line 14
        "good,images/ok.nii.gz,40,M,,",  # line 15
        "zarr.json,images/ok.nii.gz,abc,,images/cut.nii,",  # line 16
        f"{'x' * 300},dicom,40,F,,",  # line 17
        "dicom_ok,dicom,057Y,F,,",  # line 18: clean
        "huge,images/huge.nii.gz,40,M,,",  # line 19
    ]
    manifest = data / "scans.csv"
    manifest.write_text(HEADER.replace("scanner", "scanner,scanner") + "\n".join(rows) + "\n")
    expected = {
        1: ["column 'scanner' appears 2 times"],
        4: ["(bad_age)", "age 'sixty\\nfive'", "not a number"],
        6: ["(bad_sex)", "sex 'X' is not M or F"],
        7: ["(missing)", "<path of line 7>: file not found"],
        8: ["(flat)", "<path of line 8>: image has shape (8, 8); a 3-D volume is needed"],
        9: ["(cut)", "<path of line 9>: file is 3,000 bytes, header says 8,544 (shape 16x16x16", "truncated?"],
        10: ["(garbage)", "<path of line 10>: cannot read NIfTI (", "corrupt or truncated?"],
        11: ["(text)", "<path of line 11>: neither a NIfTI file"],
        12: ["(not_dicom)", "<path of line 12>: none of the folder's 1 files is readable DICOM"],
        13: ["(empty_dicom)", "<path of line 13>: folder holds no files"],
        14: ["(outside)", "<labels of line 14>: file not found"],
        15: ["(good)", "duplicates line 2"],
        16: ["(zarr.json)", "Zarr keeps for its own metadata", "age 'abc'", "<labels of line 16>: file is 3,000 bytes"],
        19: ["(huge)", "<path of line 19>", "more than ingest.max_voxels"],
        17: ["300 characters long"],
    }
    return manifest, expected, tmp_path


def test_example_manifest_is_clean(examples: Path) -> None:
    report = check_manifest(examples / "manifest.csv")
    assert report.clean and report.n_rows == 3
    assert report.summary() == "manifest.csv: 3 rows, no problems found"


def test_cli_check_of_the_example_manifest_exits_0(examples: Path) -> None:
    before = _tree(examples)
    result = cohort_cli("check", "--manifest", str(examples / "manifest.csv"), timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "manifest.csv: 3 rows, no problems found"
    assert _tree(examples) == before


def test_broken_manifest_lists_every_problem_at_once(broken) -> None:
    manifest, expected, tmp_path = broken
    before = _tree(tmp_path)
    result = cohort_cli("check", "--manifest", str(manifest), timeout=120)
    assert result.returncode == 1, result.stderr
    lines = result.stdout.strip().splitlines()
    problems, summary = lines[:-1], lines[-1]
    for line, words in expected.items():
        shown = " ".join(p for p in problems if p.startswith(f"scans.csv line {line} ") or
                         p.startswith(f"scans.csv line {line}:"))
        for word in words:
            assert word in shown, (line, word, problems)
    flagged = {int(p.split()[2].rstrip(":")) for p in problems}
    assert flagged == set(expected)  # the clean rows (2, 18) are not flagged
    assert summary == f"scans.csv: 16 rows, {len(problems)} problems on {len(expected)} lines"
    assert str(tmp_path) not in result.stdout + result.stderr  # no absolute input path is shown
    assert _tree(tmp_path) == before  # no work done, nothing written


def test_load_manifest_and_check_agree(broken) -> None:
    """The run refuses on exactly the structural problems check lists first; row problems do not stop it."""
    manifest, _, _ = broken
    report = check_manifest(manifest)
    with pytest.raises(ManifestError) as refused:
        load_manifest(manifest)
    assert str(refused.value).startswith(report.lines()[0])
    structural = read_manifest(manifest).problems
    assert set(structural) < set(report.problems)
    assert f"and {len(structural) - 1} more problems" in str(refused.value)

    rows_only = manifest.with_name("rows_only.csv")
    text = manifest.read_text().splitlines()
    rows_only.write_text("\n".join([HEADER.strip(), *text[1:14]]) + "\n")  # header fixed, up to line 14
    specs = load_manifest(rows_only)
    report = check_manifest(rows_only)
    assert len(specs) == report.n_rows == 11
    assert {p.column for p in report.problems} == {"age", "sex", "path", "labels"}


def test_files_are_named_by_their_line_wherever_they_are(broken, tmp_path: Path) -> None:
    manifest, _, _ = broken
    outside = manifest.with_name("outside.csv")
    outside.write_text(f"series_id,path\ns1,{tmp_path}/nowhere.nii.gz\ns2,../nowhere.nii.gz\n")
    assert [line.split(": ", 1)[1] for line in check_manifest(outside).lines()] == [
        "<path of line 2>: file not found", "<path of line 3>: file not found"]


def test_check_of_an_unreadable_manifest_exits_2(tmp_path: Path) -> None:
    manifest = tmp_path / "scans.csv"
    manifest.write_text("series_id,path\ns1,a.nii.gz\n", encoding="utf-16")
    result = cohort_cli("check", "--manifest", str(manifest), timeout=120)
    assert result.returncode == 2
    assert "scans.csv line 1: the file is UTF-16; save it as UTF-8" in " ".join(result.stderr.split())


def test_check_of_a_missing_manifest_exits_2(tmp_path: Path, capsys) -> None:
    assert main(["check", "--manifest", str(tmp_path / "nope.csv")]) == 2
    assert "nope.csv: manifest not found" in " ".join(capsys.readouterr().err.split())


def test_check_with_a_model_lists_series_tagged_as_the_other_modality(examples: Path, tmp_path: Path) -> None:
    slices = example_slices(examples)[:4]
    study = Study(Patient("DOE^JANE", "PID-1", "19580312"))
    write_series(tmp_path / "mr_alone", slices, study, modality="MR")
    mixed = tmp_path / "mixed"
    ct_uid = write_series(mixed, slices, study)
    mr_uid = write_series(mixed, slices, study, modality="MR", thickness=6.0)
    manifest = tmp_path / "scans.csv"
    manifest.write_text("series_id,path,series_uid,age,sex\n"
                        f"a,mr_alone,,60,F\nb,mixed,{ct_uid},61,M\nc,mixed,{mr_uid},62,F\n")
    plain = cohort_cli("check", "--manifest", str(manifest))
    assert plain.returncode == 0, plain.stdout  # without a model the tag is nobody's business
    result = cohort_cli("check", "--manifest", str(manifest), "--model", "fast")
    assert result.returncode == 1
    assert result.stdout.splitlines()[:2] == [
        "scans.csv line 2 (a): <path of line 2>: its DICOM Modality is MR, and the model is for CT "
        "(use an MR model, e.g. --model total_mr)",
        "scans.csv line 4 (c): <path of line 4>: its DICOM Modality is MR, and the model is for CT "
        "(use an MR model, e.g. --model total_mr)"]
    mr_model = cohort_cli("check", "--manifest", str(manifest), "--model", "total_mr")
    assert [line.split(":")[0] for line in mr_model.stdout.splitlines()[:-1]] == ["scans.csv line 3 (b)"]
    unknown = cohort_cli("check", "--manifest", str(manifest), "--model", "no_such_model")
    assert unknown.returncode == 2 and "unknown model 'no_such_model'" in unknown.stdout + unknown.stderr


def _check_lines(manifest: Path) -> list[str]:
    """The problem lines of ``cohort check --manifest manifest`` (the real command); exit code 1 asserted."""
    result = cohort_cli("check", "--manifest", str(manifest), timeout=120)
    assert result.returncode == 1, result.stdout + result.stderr
    return result.stdout.strip().splitlines()[:-1]


def _run_label_error(manifest: Path, line: int, image: str, labels: str) -> str:
    """The reason ``cohort run`` gives for line ``line`` whose ``labels`` lie on another grid than ``image``."""
    with pytest.raises(SeriesError) as refused:
        align_labels(load_ct(InputName.in_manifest(manifest.parent / image, line)),
                     load_label_nifti(InputName.in_manifest(manifest.parent / labels, line, "labels")))
    return str(refused.value)


def test_check_finds_a_folder_of_two_dicom_series_with_no_series_uid(examples: Path, tmp_path: Path) -> None:
    slices = example_slices(examples)[:4]
    study = Study(Patient("DOE^JANE", "PID-1", "19580312"))
    mixed = tmp_path / "mixed"
    thick = write_series(mixed, slices[::2], study, thickness=6.0)
    write_series(mixed, slices, study)
    manifest = tmp_path / "scans.csv"
    manifest.write_text(f"series_id,path,series_uid\nboth,mixed,\nnamed,mixed,{thick}\n")
    with pytest.raises(SeriesError) as refused:  # as `cohort run` reads line 2, before any pixel
        load_ct(InputName.in_manifest(mixed, 2))
    run = str(refused.value)
    assert "<path of line 2>: folder holds 2 DICOM series; name one in the manifest's series_uid column" in run
    assert _check_lines(manifest) == [f"scans.csv line 2 (both): {run}"]  # the named series is clean


def test_check_finds_a_label_map_on_another_grid(examples: Path, tmp_path: Path) -> None:
    shutil.copy(examples / "example_ct_sm.nii.gz", tmp_path / "ct.nii.gz")
    seg = nib.load(examples / "example_seg.nii.gz")
    labels = np.asanyarray(seg.dataobj)
    shifted = seg.affine.copy()
    shifted[:3, 3] += 4.0
    nib.save(nib.Nifti1Image(labels[..., :20], seg.affine), tmp_path / "short.nii.gz")
    nib.save(nib.Nifti1Image(labels, shifted), tmp_path / "shifted.nii.gz")
    to_pls = nib.orientations.ornt_transform(nib.io_orientation(seg.affine), nib.orientations.axcodes2ornt("PLS"))
    nib.save(seg.as_reoriented(to_pls), tmp_path / "reoriented.nii.gz")  # the same grid, axes swapped and flipped
    manifest = tmp_path / "scans.csv"
    manifest.write_text("series_id,path,labels\nshort,ct.nii.gz,short.nii.gz\nshifted,ct.nii.gz,shifted.nii.gz\n"
                        "reoriented,ct.nii.gz,reoriented.nii.gz\n")
    runs = [_run_label_error(manifest, line, "ct.nii.gz", labels) for line, labels in ((2, "short.nii.gz"),
                                                                                         (3, "shifted.nii.gz"))]
    assert "label map shape (122, 101, 20) does not match image shape (122, 101, 30) (<path of line 2>)" in runs[0]
    assert "label map affine does not match the image's (<path of line 3>)" in runs[1]
    assert _check_lines(manifest) == [f"scans.csv line 2 (short): {runs[0]}", f"scans.csv line 3 (shifted): {runs[1]}"]


def test_a_nifti_without_orientation_fails_the_check_and_the_run(examples: Path, tmp_path: Path) -> None:
    """A NIfTI whose header has neither qform nor sform (a script saved a bare array) was read with
    nibabel's fallback affine: orientation guessed, so a kidney_left could be the right one, silently."""
    nib.save(nib.Nifti1Image(np.asanyarray(nib.load(examples / "example_ct_sm.nii.gz").dataobj), None),
             tmp_path / "ct.nii.gz")
    manifest = tmp_path / "scans.csv"
    manifest.write_text("series_id,path\ns1,ct.nii.gz\n")
    reason = ("NIfTI header gives no orientation (qform_code and sform_code are 0), so left and right cannot be told "
              "apart")
    assert len(lines := _check_lines(manifest)) == 1 and reason in lines[0]
    with pytest.raises(SeriesError, match=re.escape(reason)):
        load_ct(tmp_path / "ct.nii.gz")


def test_nifti_headers_every_tool_reads_otherwise_fail_the_check_as_the_run(examples: Path, tmp_path: Path) -> None:
    """qform and sform that disagree (ITK tools read the qform: a label map they made was laid mirrored
    over the image), a qform with a negative voxel size (nibabel takes its absolute value, ITK mirrors
    the axis), an sform without volume and complex voxels: each the same problem, from headers alone."""
    ct, labels = examples / "example_ct_sm.nii.gz", examples / "example_seg_fast.nii.gz"
    two_forms, itk_labels = mirrored_qform_pair(ct, labels, tmp_path)
    with_header(ct, tmp_path / "qform_only.nii", sform_code=0, qform_code=1)
    with_header(tmp_path / "qform_only.nii", tmp_path / "negative.nii", pixdim=[1, 3, -3, 3, 1, 1, 1, 1])
    with_header(ct, tmp_path / "flat.nii", srow_y=[0, 0, 0, 11.3])
    nib.save(nib.Nifti1Image(np.asanyarray(nib.load(ct).dataobj).astype(np.complex64), nib.load(ct).affine),
             tmp_path / "complex.nii.gz")
    manifest = tmp_path / "scans.csv"
    manifest.write_text(f"series_id,path,labels\ntwo_forms,{two_forms.name},{itk_labels.name}\n"
                        "negative,negative.nii,\nflat,flat.nii,\ncomplex,complex.nii.gz,\n")
    runs = []
    for line, image in enumerate(("two_forms.nii.gz", "negative.nii", "flat.nii", "complex.nii.gz"), 2):
        with pytest.raises(SeriesError) as refused:
            load_ct(InputName.in_manifest(tmp_path / image, line))
        runs.append(str(refused.value))
    assert "qform and sform disagree (qform LAS" in runs[0] and "pixdim [3.0, -3.0, 3.0]" in runs[1]
    assert "sform does not place the voxels" in runs[2] and "complex64 voxels" in runs[3]
    assert check_manifest(manifest).lines() == [f"scans.csv line {line} ({series}): {run}" for line, series, run in
                                                zip(range(2, 6), ("two_forms", "negative", "flat", "complex"), runs)]


def test_check_finds_a_dixon_image_on_another_grid(tmp_path: Path) -> None:
    for name, shape in (("in_phase", (8, 8, 6)), ("fat", (8, 8, 6)), ("water", (8, 8, 5))):
        _nifti(tmp_path / f"{name}.nii.gz", shape)
    manifest = tmp_path / "scans.csv"
    manifest.write_text("series_id,path,fat,water\nmr,in_phase.nii.gz,fat.nii.gz,water.nii.gz\n")
    assert _check_lines(manifest) == [
        ("scans.csv line 2 (mr): <water of line 2>: water image shape (8, 8, 5) does not match image shape (8, 8, 6) "
         "(<path of line 2>)")]


def test_check_finds_a_truncated_gzipped_nifti(examples: Path, tmp_path: Path) -> None:
    whole = (examples / "example_ct_sm.nii.gz").read_bytes()
    for size in (200_000, len(whole) - 312):  # the last 4 bytes are then compressed data, not the size field
        (tmp_path / f"cut_{size}.nii.gz").write_bytes(whole[:size])
    manifest = tmp_path / "scans.csv"
    manifest.write_text(f"series_id,path\na,cut_200000.nii.gz\nb,cut_{len(whole) - 312}.nii.gz\n")
    assert _check_lines(manifest) == [
        (f"scans.csv line {line} ({row}): <path of line {line}>: truncated or damaged (its gzip stream breaks off before "
         "the 739,672 bytes its header needs: shape 122x101x30 of int16)")
        for line, row, size in ((2, "a", 200_000), (3, "b", len(whole) - 312))]


def test_check_passes_a_nifti_gzipped_by_nibabel(tmp_path: Path) -> None:
    values = np.random.default_rng(0).integers(-1024, 2000, (40, 30, 20), dtype=np.int16)
    nib.save(nib.Nifti1Image(values, np.diag([0.8, 0.8, 2.5, 1])), tmp_path / "ct.nii.gz")
    manifest = tmp_path / "scans.csv"
    manifest.write_text("series_id,path\nct,ct.nii.gz\n")
    result = cohort_cli("check", "--manifest", str(manifest), timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "scans.csv: 1 rows, no problems found"


def test_check_passes_isal_and_multi_member_gzip(examples: Path, tmp_path: Path) -> None:
    """Files ISA-L writes (one member, or threaded), several gzip members (the last one's size field is not the
    header's size) and bytes after the voxels: all whole, none flagged."""
    igzip = pytest.importorskip("isal.igzip")
    igzip_threaded = pytest.importorskip("isal.igzip_threaded")
    nifti = gzip.decompress((examples / "example_ct_sm.nii.gz").read_bytes())
    (tmp_path / "isal.nii.gz").write_bytes(igzip.compress(nifti))
    with igzip_threaded.open(tmp_path / "isal_threads.nii.gz", "wb", threads=2, block_size=1 << 16) as stream:
        stream.write(nifti)
    block = 1 << 16
    members = [igzip.compress(nifti[start:start + block]) for start in range(0, len(nifti), block)]
    (tmp_path / "members.nii.gz").write_bytes(b"".join(members))  # as bgzip writes: the last member is small
    (tmp_path / "trailing.nii.gz").write_bytes(gzip.compress(nifti + b"\x00" * 64))  # bytes after the voxels
    rows = ["isal", "isal_threads", "members", "trailing"]
    for row in rows:
        with gzip.open(tmp_path / f"{row}.nii.gz") as stream:  # each inflates to the file, trailing bytes aside
            assert stream.read()[:len(nifti)] == nifti
    manifest = tmp_path / "scans.csv"
    manifest.write_text("series_id,path\n" + "".join(f"{row},{row}.nii.gz\n" for row in rows))
    result = cohort_cli("check", "--manifest", str(manifest), timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("series_uid", [False, True])
def test_check_finds_a_dicom_slice_cut_short(examples: Path, tmp_path: Path, series_uid: bool) -> None:
    """Its header is whole, so only the file's size tells; the run would fail on that slice."""
    slices = example_slices(examples)[:6]
    folder = tmp_path / "series"
    uid = write_series(folder, slices, Study(Patient("DOE^JANE", "PID-1", "19580312")))
    files = sorted(folder.iterdir(), key=lambda file: float(pydicom.dcmread(file).ImagePositionPatient[2]))
    files[2].write_bytes(files[2].read_bytes()[:-5000])
    manifest = tmp_path / "scans.csv"
    manifest.write_text(f"series_id,path,series_uid\nct,series,{uid if series_uid else ''}\n")
    (line,) = _check_lines(manifest)
    assert line == "scans.csv line 2 (ct): <path of line 2> (slice 3 of 6): truncated (compressed pixel data has no end)"


def test_a_nifti_whose_compression_contradicts_its_name_says_to_rename_it(examples: Path, tmp_path: Path) -> None:
    """A .nii.gz that is not gzip (or a gzipped .nii) failed as 'cannot read NIfTI (Not a gzipped
    file ...): corrupt or truncated?', which sends a user looking for damage instead of renaming."""
    import gzip as gz

    ct = examples / "example_ct_sm.nii.gz"
    (tmp_path / "plain.nii.gz").write_bytes(gz.decompress(ct.read_bytes()))
    shutil.copy(ct, tmp_path / "packed.nii")
    manifest = tmp_path / "scans.csv"
    manifest.write_text("series_id,path\ns1,plain.nii.gz\ns2,packed.nii\n")
    expected = ["file is not gzip-compressed, although its name ends in .nii.gz; rename it to end in .nii",
                "file is gzip-compressed, although its name ends in .nii; rename it to end in .nii.gz"]
    lines = _check_lines(manifest)
    assert len(lines) == 2 and all(reason in line for reason, line in zip(expected, lines)), lines
    for file, reason in zip(("plain.nii.gz", "packed.nii"), expected):
        with pytest.raises(SeriesError, match=re.escape(reason)):
            load_ct(tmp_path / file)


def test_an_unreadable_nifti_fails_the_check_in_the_runs_words(examples: Path, tmp_path: Path) -> None:
    """`cohort check` and `cohort run` open a NIfTI header through one function, so a user reads one
    reason for one file (the check said 'cannot read the NIfTI header (...)' where the run said
    'cannot read NIfTI (...): corrupt or truncated?'). A NIfTI-2 file passes both."""
    ct = nib.load(examples / "example_ct_sm.nii.gz")
    nib.save(nib.Nifti2Image(np.asanyarray(ct.dataobj), ct.affine), tmp_path / "nifti2.nii")
    (tmp_path / "garbage.nii.gz").write_bytes(gzip.compress(b"not a header" * 40))
    nib.save(nib.MGHImage(np.zeros(ct.shape, np.uint8), ct.affine), tmp_path / "labels.mgz")
    manifest = tmp_path / "scans.csv"
    manifest.write_text("series_id,path,labels\nnifti2,nifti2.nii,\ngarbage,garbage.nii.gz,\n"
                        "mgh,nifti2.nii,labels.mgz\n")
    assert load_ct(tmp_path / "nifti2.nii").hu.shape == ct.shape
    volume = load_ct(tmp_path / "nifti2.nii")
    with pytest.raises(SeriesError) as garbage:
        load_ct(InputName.in_manifest(tmp_path / "garbage.nii.gz", 3))
    with pytest.raises(SeriesError) as mgh:  # was an AttributeError traceback once the header check was shared
        load_labels(InputName.in_manifest(tmp_path / "labels.mgz", 4, "labels"), volume, load_class_map("class_map_total_v2.csv"))
    runs = [str(garbage.value), str(mgh.value)]
    assert runs[0].startswith("<path of line 3>: cannot read NIfTI (") and runs[0].endswith("corrupt or truncated?")
    assert runs[1] == "<labels of line 4>: not a NIfTI file (its name does not end in .nii or .nii.gz)"
    assert check_manifest(manifest).lines() == [f"scans.csv line 3 (garbage): {runs[0]}",
                                                f"scans.csv line 4 (mgh): {runs[1]}"]


def test_check_with_config_applies_its_voxel_limit_and_class_map(examples: Path, tmp_path: Path) -> None:
    """`cohort check --config` judges the rows by the configuration the run will use: a CT above
    its ingest.max_voxels and a masks folder named by its measure.class_map, not the shipped ones."""
    masks = tmp_path / "masks"
    masks.mkdir()
    ct = nib.load(examples / "example_ct_sm.nii.gz")
    for structure in ("liver", "spleen"):
        nib.save(nib.Nifti1Image(np.zeros(ct.shape, np.uint8), ct.affine), masks / f"{structure}.nii.gz")
    (tmp_path / "two.csv").write_text("label,structure\n1,liver\n2,spleen\n")
    config = tmp_path / "run.yaml"
    config.write_text(f"ingest:\n  max_voxels: 300000\nmeasure:\n  class_map: {tmp_path / 'two.csv'}\n")
    manifest = tmp_path / "scans.csv"
    manifest.write_text(f"series_id,path,labels\nsmall,{examples / 'example_ct_sm.nii.gz'},{masks}\n")
    default = cohort_cli("check", "--manifest", str(manifest), timeout=120)
    assert default.returncode == 1 and "no mask file for 115 of the 117 structures" in default.stdout
    assert "max_voxels" not in default.stdout
    configured = cohort_cli("check", "--manifest", str(manifest), "--config", str(config), timeout=120)
    assert configured.returncode == 1, configured.stdout + configured.stderr
    assert "ingest.max_voxels = 300,000" in configured.stdout and "no mask file" not in configured.stdout, configured.stdout


def test_a_label_map_numbered_by_another_class_map_fails_the_check_as_the_run(examples: Path, tmp_path: Path) -> None:
    """TotalSegmentator writes its label names into the file (--ml): a file numbered by the v3 map
    (id 26 is vertebrae_L6 there, vertebrae_S1 in v2) or labelling a --roi_subset only was measured
    by the v2 map silently (misnamed, or the rest absent). The check names what the run names; a run
    config whose class map is the file's own takes it."""
    ct, labels = examples / "example_ct_sm.nii.gz", examples / "example_seg_fast.nii.gz"
    with_label_table(labels, tmp_path / "v3.nii.gz", load_class_map("class_map_total_v3.csv").names)
    with_label_table(labels, tmp_path / "subset.nii.gz", {1: "spleen", 5: "liver"}, only_named=True)
    manifest = tmp_path / "scans.csv"
    manifest.write_text(f"series_id,path,labels\nv3,{ct},v3.nii.gz\nsubset,{ct},subset.nii.gz\n")
    volume, classes = load_ct(ct), load_class_map("class_map_total_v2.csv")
    runs = []
    for line, file in enumerate(("v3.nii.gz", "subset.nii.gz"), 2):
        with pytest.raises(SeriesError) as refused:
            load_labels(InputName.in_manifest(tmp_path / file, line, "labels"), volume, classes)
        runs.append(str(refused.value))
    assert runs[0] == ("<labels of line 2>: label 26 is vertebrae_L6 in the file's own label table but vertebrae_S1 "
                       "in class_map_total_v2.csv: the label map is numbered by another class map; it agrees with "
                       "class_map_total_v3.csv: set measure.class_map: class_map_total_v3.csv in a run config")
    assert runs[1].startswith("<labels of line 3>: its own label table names 2 of the 117 structures of "
                              "class_map_total_v2.csv (not kidney_right, kidney_left, gallbladder ...)")
    assert check_manifest(manifest).lines() == [f"scans.csv line {line} ({series}): {run}" for line, series, run in
                                                zip((2, 3), ("v3", "subset"), runs)]
    (tmp_path / "two.csv").write_text("label,structure\n1,spleen\n5,liver\n")
    config = tmp_path / "run.yaml"
    config.write_text(f"measure:\n  class_map: {tmp_path / 'two.csv'}\n")
    checked = cohort_cli("check", "--manifest", str(manifest), "--config", str(config), timeout=120)
    assert checked.returncode == 1 and "(subset)" not in checked.stdout and "(v3)" in checked.stdout, checked.stdout
    assert load_labels(tmp_path / "subset.nii.gz", volume, load_class_map(str(tmp_path / "two.csv"))).labels.max() == 5
