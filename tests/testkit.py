"""Helpers for tests: build manifests, run the real ``cohort`` command in a subprocess."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from cohort.config import load_class_map


def write_manifest(path: Path, rows: list[dict]) -> Path:
    columns = ["series_id", "path", "age", "sex", "labels"]
    columns += list(dict.fromkeys(key for row in rows for key in row if key not in columns))
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row.get(k, "") for k in columns})
    return path


def cli_env(api: str | None) -> dict[str, str]:
    """Environment of a ``cohort`` subprocess: Prefect server ``api``, or the server cohort starts itself when None."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}
    env.pop("PREFECT_API_URL", None)
    if api:
        env["PREFECT_API_URL"] = api
    return env


def cohort_cli(*args: str, api: str | None = None, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    """Run the real ``cohort`` command in a subprocess (cohort's own Prefect server unless ``api`` is given)."""
    env = cli_env(api)
    return subprocess.run([sys.executable, "-m", "cohort.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, **kwargs)


STABLE_SERIES_COLUMNS = ["series_id", "age", "sex", "status", "error", "manifest_line", "model", "orientation",
                         "measure_spacing_mm", "n_structures_ok"]


def result_tables(out: Path):
    """``features`` and the run-independent columns of ``series``, sorted: equal for equal runs."""
    import pandas as pd

    features = pd.read_parquet(out / "features").sort_values(["series_id", "label"]).reset_index(drop=True)
    series = pd.read_parquet(out / "series")[STABLE_SERIES_COLUMNS].sort_values("series_id").reset_index(drop=True)
    return features, series


def wait_for_health(api_url: str, server: subprocess.Popen, server_output, timeout_s: float = 90) -> None:
    """Wait until a Prefect server at ``api_url`` answers; fail the test with ``server_output()`` if
    the process ends or ``timeout_s`` passes first."""
    import time
    import urllib.request

    import pytest

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            urllib.request.urlopen(api_url + "/health", timeout=2)
            return
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                pytest.fail(f"the Prefect server did not start: {server_output()[-2000:]}")
            time.sleep(0.2)


def mr_from_example(examples: Path, folder: Path) -> tuple[Path, Path]:
    """The example CT shifted to positive intensities (what cohort's MR check accepts) and
    TotalSegmentator's v2 label map renumbered to total_mr's ids (colon: v2 20, total_mr 15)."""
    ct = nib.load(examples / "example_ct_sm.nii.gz")
    mr = np.asanyarray(ct.dataobj).astype(np.int16) + 1100
    mr_ids = {name: label for label, name in load_class_map("class_map_total_mr.csv").names.items()}
    renumber = np.zeros(256, np.uint8)
    for label, name in load_class_map("class_map_total_v2.csv").names.items():
        renumber[label] = mr_ids.get(name, 0)
    seg = nib.load(examples / "example_seg.nii.gz")
    labels = renumber[np.asanyarray(seg.dataobj).astype(np.uint8)]
    nib.save(nib.Nifti1Image(mr, ct.affine), folder / "mr.nii.gz")
    nib.save(nib.Nifti1Image(labels, seg.affine), folder / "mr_labels.nii.gz")
    return folder / "mr.nii.gz", folder / "mr_labels.nii.gz"


@contextmanager
def mounted_tmpfs(where: Path, options: str) -> Iterator[Path]:
    """A real tmpfs mounted at ``where`` (root only; the test is skipped where mounting is not allowed)."""
    where.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
                                           capture_output=True).returncode != 0:
        import pytest

        pytest.skip("needs root and mount(8) for a read-only or a small file system")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def with_header(source: Path, target: Path, **fields) -> Path:
    """An uncompressed copy of the NIfTI ``source`` whose header fields are then set as ``fields``, byte
    for byte (nibabel repairs some of them, e.g. a voxel size of 0 or below, when it writes a header)."""
    image = nib.load(str(source))
    nib.save(nib.Nifti1Image(np.asanyarray(image.dataobj), image.affine, image.header), str(target))
    with target.open("rb") as handle:
        header = nib.Nifti1Header.from_fileobj(handle, check=False)
    for key, value in fields.items():
        header[key] = value
    target.write_bytes(header.binaryblock + target.read_bytes()[len(header.binaryblock):])
    return target


def mirrored_qform_pair(ct: Path, labels: Path, folder: Path) -> tuple[Path, Path]:
    """A CT whose sform (code 2, as nibabel writes it) says RAS and whose qform (code 1) says LAS,
    and its label map as an ITK tool (here SimpleITK) writes it: the same voxels, placed by the qform."""
    image = nib.load(str(ct))
    mirrored = image.affine @ np.array([[-1, 0, 0, image.shape[0] - 1], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    both = nib.Nifti1Image(np.asanyarray(image.dataobj), image.affine)
    both.set_sform(image.affine, 2)
    both.set_qform(mirrored, 1)
    nib.save(both, str(folder / "two_forms.nii.gz"))
    reference = sitk.ReadImage(str(folder / "two_forms.nii.gz"))
    itk_labels = sitk.GetImageFromArray(np.asanyarray(nib.load(str(labels)).dataobj).transpose(2, 1, 0).copy())
    itk_labels.CopyInformation(reference)
    sitk.WriteImage(itk_labels, str(folder / "two_forms_labels_itk.nii.gz"))
    return folder / "two_forms.nii.gz", folder / "two_forms_labels_itk.nii.gz"


def with_label_table(source: Path, target: Path, names: dict[int, str], only_named: bool = False) -> Path:
    """``source``'s label map with a Caret XML label table naming ``names`` in its header, as
    TotalSegmentator's ``--ml`` writes one (any table it had replaced); ``only_named``: the other
    ids set to 0, as ``--roi_subset`` leaves them."""
    image = nib.load(source)
    header = image.header.copy()
    del header.extensions[:]
    rows = "".join(f'<Label Key="{label}"><![CDATA[{name}]]></Label>\n' for label, name in names.items())
    xml = ('<?xml version="1.0" encoding="UTF-8"?> <CaretExtension> <VolumeInformation Index="0"> <LabelTable>\n'
           f"{rows}</LabelTable> </VolumeInformation></CaretExtension>")
    header.extensions.append(nib.nifti1.Nifti1Extension(0, xml.encode()))
    data = np.asanyarray(image.dataobj)
    if only_named:
        data = np.where(np.isin(data, list(names)), data, 0).astype(data.dtype)
    nib.save(nib.Nifti1Image(data, image.affine, header), target)
    return target
