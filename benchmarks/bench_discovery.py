"""How often a DICOM row's files are found and their headers read: one PACS study folder holding
its series flat (``cohort manifest`` writes the folder as ``path``, with a ``series_uid`` per row).

    python benchmarks/bench_discovery.py --series 8 --slices 300 [--export /tmp/cohort_bench/study]

Per row, the ingest stage as ``process_series`` runs it: input fingerprint, ``load_ct`` (every
header under the folder, to find the series; then its pixels) and the input content digest, the
old way (``input_content``: the series found again, every header read again) and the new way
(``content_digest`` of the files ingest read). At the start of a rerun, the fingerprints of the
done rows: one ``input_fingerprint`` per row (old) and ``input_fingerprints`` (new: a folder
listed once). Then the rows again, ``load_ct`` alone, with the worker remembering which series
each file of the folder is of (``cohort.ingest.series_of_files``: the second row on reads only
its own headers) and forgetting it before every row (as before), in alternating rounds. Last,
each row as the first row of a new worker, once reading every header of the folder (as before)
and once learning from ``cohort manifest``'s crawl cache which series each file is of
(``cohort.pipeline.learn_crawled_series``), in alternating rounds. And a row's pixels: one
``sitk.ReadImage`` per slice stacked with ``np.stack`` (before 2026-11-29) against ingest's one
GDCM reader filling a (z, y, x) array. Prints header reads (pydicom) and GDCM folder scans,
seconds, and the ratios.
"""

from __future__ import annotations

import argparse
import collections
import copy
import hashlib
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.uid import generate_uid

from cohort.export.crawl import crawl
from cohort.export.pseudonyms import PseudonymKey
from cohort.ingest import InputName, dicom, load_ct
from cohort.ingest.series_of_files import SeriesOfFiles, crawl_cache_path
from cohort.manifest import SeriesSpec
from cohort.pipeline import input_groups, learn_crawled_series
from cohort.provenance import (
    content_digest,
    input_content,
    input_fingerprint,
    input_fingerprints,
)

EXAMPLE = Path(__file__).parents[1] / "cohort" / "examples" / "example_ct_dicom"
READS: collections.Counter = collections.Counter()


def write_export(folder: Path, n_series: int, n_slices: int, uncompressed: bool) -> None:
    """``n_series`` series of ``n_slices`` slices (the example's 20, JPEG 2000 or ``uncompressed``,
    repeated up the table), one folder; their UIDs in a file beside it."""
    slices = sorted((pydicom.dcmread(path) for path in EXAMPLE.iterdir()), key=lambda ds: float(ds.ImagePositionPatient[2]))
    for ds in slices if uncompressed else ():
        ds.decompress()
    x, y, z = (float(v) for v in slices[0].ImagePositionPatient)
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    study, uids = generate_uid(), []
    for s in range(n_series):
        uids.append(generate_uid())
        for k in range(n_slices):
            ds = copy.deepcopy(slices[k % len(slices)])
            ds.ImagePositionPatient, ds.InstanceNumber = [x, y, z + 1.5 * k], k + 1
            ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study, uids[-1], generate_uid()
            ds.save_as(partial / f"IM{s:02d}_{k:04d}.dcm")
    partial.rename(folder)
    uids_file(folder).write_text("\n".join(uids))


def uids_file(folder: Path) -> Path:
    return folder.with_name(folder.name + ".uids")


def count_reads() -> None:
    """Count pydicom header reads and GDCM folder scans (GetGDCMSeriesIDs) from here on."""
    for owner, name in ((pydicom, "dcmread"), (sitk.ImageSeriesReader, "GetGDCMSeriesIDs")):
        original = getattr(owner, name)

        def counted(*args, _original=original, _name=name, **kwargs):
            READS[_name] += 1
            return _original(*args, **kwargs)

        setattr(owner, name, counted)


def timed(function) -> tuple[object, float, dict[str, int]]:
    READS.clear()
    started = time.perf_counter()
    value = function()
    return value, time.perf_counter() - started, dict(READS)


def forget_series_of_files() -> None:
    """A worker that has read none of the folder's headers yet."""
    dicom.SERIES_OF_FILES = SeriesOfFiles()


def per_row(spec: SeriesSpec) -> dict[str, tuple[float, dict[str, int]]]:
    """Seconds and reads of each part of one row's ingest stage (every header read, as a worker
    new to the folder reads them); the old and new contents agree."""
    forget_series_of_files()
    _, fingerprint_s, _ = timed(lambda: input_fingerprint(spec.path, spec.companions))
    volume, load_s, load_reads = timed(lambda: load_ct(InputName.in_manifest(spec.path, spec.line), series_uid=spec.series_uid))
    forget_series_of_files()
    old, old_s, old_reads = timed(lambda: input_content(spec.sources))
    new, new_s, new_reads = timed(lambda: content_digest(input_groups(spec, volume, None)))
    if old != new:
        raise SystemExit(f"{spec.series_id}: contents differ ({old} old, {new} new)")
    return {"fingerprint": (fingerprint_s, {}), "load_ct": (load_s, load_reads), "content old": (old_s, old_reads),
            "content new": (new_s, new_reads)}


def remembered_rows(specs: list[SeriesSpec], rounds: int = 2) -> None:
    """``load_ct`` of each row, the worker forgetting the folder's series before every row, or
    remembering them from its earlier rows, in alternating rounds; the volumes are equal."""
    seconds: dict[bool, list[float]] = {False: [], True: []}
    volumes: dict[str, set[str]] = collections.defaultdict(set)
    for _ in range(rounds):
        for remember in (False, True):
            forget_series_of_files()
            for spec in specs:
                if not remember:
                    forget_series_of_files()
                volume, load_s, reads = timed(lambda: load_ct(InputName.in_manifest(spec.path, spec.line),
                                                              series_uid=spec.series_uid))
                seconds[remember].append(load_s)
                volumes[spec.series_id].add(hashlib.sha256(volume.hu.tobytes()).hexdigest())
                print(f"  {'remembered' if remember else 'forgotten'} row {spec.series_id}: load_ct {load_s:.2f} s {reads}")
    if any(len(digests) > 1 for digests in volumes.values()):
        raise SystemExit("a row's volume differs between remembering and forgetting the folder's series")
    # the first row of a round reads every header either way; the rows after it are what changes
    later = {remember: sum(s for k, s in enumerate(values) if k % len(specs)) for remember, values in seconds.items()}
    print(f"load_ct of rows 2-{len(specs)} of each round, {rounds} rounds: every header read {later[False]:.2f} s, "
          f"other series' files remembered {later[True]:.2f} s ({later[False] / later[True]:.2f}x)")


def learnt_from_crawl(specs: list[SeriesSpec], rounds: int = 2) -> None:
    """Each row as a new worker's first row of the folder: every header read, or the files' series
    learnt from the crawl cache first (its reading timed with the row); the volumes are equal."""
    folder, cache = specs[0].path, crawl_cache_path(specs[0].manifest)
    cache.unlink(missing_ok=True)
    _, crawl_s, _ = timed(lambda: crawl(folder, cache, PseudonymKey(b"k" * 32)))
    print(f"the crawl `cohort manifest` makes once (every header, one process): {crawl_s:.2f} s")
    seconds: dict[bool, float] = {False: 0.0, True: 0.0}
    volumes: dict[str, set[str]] = collections.defaultdict(set)
    for _ in range(rounds):
        for learn in (False, True):
            for spec in specs:
                forget_series_of_files()

                def first_row(spec=spec, learn=learn):
                    if learn:
                        learn_crawled_series(spec)
                    return load_ct(InputName.in_manifest(spec.path, spec.line), series_uid=spec.series_uid)

                volume, load_s, reads = timed(first_row)
                seconds[learn] += load_s
                volumes[spec.series_id].add(hashlib.sha256(volume.hu.tobytes()).hexdigest())
                print(f"  {'learnt from the crawl' if learn else 'every header read'} row {spec.series_id}: "
                      f"{load_s:.2f} s {reads}")
    if any(len(digests) > 1 for digests in volumes.values()):
        raise SystemExit("a row's volume differs between learning from the crawl and reading every header")
    print(f"a new worker's first row of the folder, {len(specs)} rows x {rounds} rounds: every header read "
          f"{seconds[False]:.2f} s, learnt from the crawl {seconds[True]:.2f} s ({seconds[False] / seconds[True]:.2f}x)")


def pixel_reading(spec: SeriesSpec, rounds: int = 3) -> None:
    """A row's pixels read the way ingest did before (a reader found per file, (x, y) views
    stacked) and the way it does now, alternating; the arrays are equal."""
    files = list(dicom.read_ct_dicom(InputName.in_manifest(spec.path, spec.line), series_uid=spec.series_uid).files)
    name = InputName.in_manifest(spec.path, spec.line)

    def before() -> np.ndarray:
        images = [sitk.ReadImage(file) for file in files]
        return np.stack([sitk.GetArrayFromImage(image).reshape(image.GetSize()[1], image.GetSize()[0]).T
                         for image in images], axis=-1)

    def now() -> np.ndarray:
        reader = dicom._slice_reader()
        return dicom._stacked([dicom._read_slice(reader, name, name.child(file, "")) for file in files])

    seconds = {before: 0.0, now: 0.0}
    for _ in range(rounds):
        for way in (before, now):
            started = time.perf_counter()
            values = way()
            seconds[way] += time.perf_counter() - started
        if not np.array_equal(before(), values):
            raise SystemExit("the pixels differ")
    print(f"pixels of {len(files)} slices, {rounds} rounds: a reader per file and np.stack {seconds[before]:.2f} s, "
          f"one GDCM reader into planes {seconds[now]:.2f} s ({seconds[before] / seconds[now]:.2f}x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=8)
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--uncompressed", action="store_true", help="pixels stored plain, as most exports")
    parser.add_argument("--rows", type=int, default=3, help="rows timed through ingest (each reads pixels)")
    parser.add_argument("--export", type=Path, default=None, help="reused when it exists; default: a temporary one")
    args = parser.parse_args()
    scratch = None if args.export else tempfile.TemporaryDirectory()
    folder = args.export or Path(scratch.name) / "study"
    if not folder.is_dir():
        write_export(folder, args.series, args.slices, args.uncompressed)
    uids = uids_file(folder).read_text().split()
    n_files = sum(1 for _ in folder.iterdir())
    specs = [SeriesSpec(f"s{k}", folder, k + 2, folder.parent / "scans.csv", series_uid=uid) for k, uid in enumerate(uids)]
    count_reads()
    print(f"one folder: {len(uids)} series, {n_files} files")
    totals = collections.defaultdict(float)
    for spec in specs[:args.rows]:
        parts = per_row(spec)
        print(f"row {spec.series_id}: " + ", ".join(f"{name} {s:.2f} s {reads or ''}" for name, (s, reads) in parts.items()))
        for name, (seconds, _) in parts.items():
            totals[name] += seconds
    common = totals["fingerprint"] + totals["load_ct"]
    print(f"ingest stage, {args.rows} rows: old {common + totals['content old']:.2f} s, new {common + totals['content new']:.2f} s "
          f"({(common + totals['content old']) / (common + totals['content new']):.2f}x); the content digest alone "
          f"{totals['content old'] / totals['content new']:.1f}x")
    rows = [(spec.path, spec.companions, True) for spec in specs]
    old, old_s, _ = timed(lambda: [input_fingerprint(*row) for row in rows])
    new, new_s, _ = timed(lambda: input_fingerprints(rows))
    assert old == new
    print(f"rerun start, fingerprints of {len(rows)} done rows: old {old_s:.3f} s, new {new_s:.3f} s ({old_s / new_s:.1f}x)")
    remembered_rows(specs[:args.rows])
    learnt_from_crawl(specs[:args.rows])
    pixel_reading(specs[0])
    if scratch:
        scratch.cleanup()


if __name__ == "__main__":
    main()
