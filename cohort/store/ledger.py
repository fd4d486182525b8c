"""What is already done under ``--out``: verify, resume, never mix, and never keep duplicate rows.

The ``series/`` table is the ledger: a series is done when its newest row says ``done``. On
start a run checks what the ledger claims against what is on disk (every part readable, the
features of every done row present, its label map complete) and redoes what is missing. A
done row is only kept when it was made with this run's key from the same input files
(:mod:`cohort.provenance`); otherwise the run refuses, naming what changed, unless the user asks
to recompute the changed rows. Files that moved or were touched with their content unchanged
keep their rows, and so do rows whose files are gone (there is nothing to recompute them from).
"""

from __future__ import annotations

import logging
import re
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from cohort.errors import RunCannotStart, SeriesError
from cohort.manifest import SERIES_UID_COLUMNS, SeriesSpec, validate_subject
from cohort.provenance import (UID_DIGEST_PREFIX, UNREADABLE_CONTENT, ContentKey, RunKey, input_contents,
                               input_fingerprints, same_series_uid, series_uid_digest, source_key)
from cohort.store.records import SeriesRecord, series_table
from cohort.store.layout import OutputLayout
from cohort.store.tables import (part_files, part_series_ids, part_series_status, remove_temporaries,
                                 write_part)
from cohort.store.zarr_labels import complete_source_keys

if TYPE_CHECKING:
    from cohort.pipeline import RunContext

MAX_LISTED = 5
RUN_STAMP = "%Y%m%dT%H%M%S"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChangedRow:
    """A done row that this run would make differently (settings) or from other files (input)."""

    spec: SeriesSpec
    changes: tuple[str, ...]


@dataclass(frozen=True)
class Plan:
    """The manifest split into what to process and what an earlier run finished.

    ``todo`` includes ``redo`` (done rows whose features or label map went missing) and, when
    recomputing, ``changed``. ``metadata_updates`` are done rows whose manifest fields (age, sex,
    covariates, line, membership) were edited, or whose files ``moved`` (same content, other
    paths, times or series UIDs): rewritten in place, not recomputed. ``inputs_gone`` are done
    rows whose files cannot be read any more: kept as they are. ``blocked`` rows can be neither
    kept nor recomputed (gone files under changed settings, an age or sex no longer valid): the
    run stops, whatever ``--recompute`` says, and nothing of them is lost.
    """

    todo: list[SeriesSpec]
    already_done: list[SeriesSpec]
    changed: list[ChangedRow] = field(default_factory=list)
    redo: list[SeriesSpec] = field(default_factory=list)
    metadata_updates: list[SeriesRecord] = field(default_factory=list)
    not_in_manifest: list[str] = field(default_factory=list)
    moved: list[SeriesSpec] = field(default_factory=list)
    inputs_gone: list[SeriesSpec] = field(default_factory=list)
    blocked: list[ChangedRow] = field(default_factory=list)


@dataclass(frozen=True)
class InputCheck:
    """How a done row's inputs compare with what it was made from: ``same``; ``moved`` (other
    paths, times or series UIDs, same bytes: the row stands); ``changed``; ``gone`` (files
    missing, or no longer holding a readable series: nothing to recompute from)."""

    fingerprint: str
    content: str | None = None  # the plain digest, read only where the fingerprint or a series UID changed
    other_series: tuple[str, ...] = ()  # the *series_uid columns edited since

    def state(self, record: SeriesRecord, content_key: ContentKey) -> str:
        if record.input_fingerprint in (None, self.fingerprint) and not self.other_series:
            return "same"
        if not record.records_content:
            return "changed"  # its change cannot be told apart
        if self.content in (None, UNREADABLE_CONTENT):
            return "gone"
        return "moved" if content_key.matches(record.input_content, self.content) else "changed"


def new_run_id(layout: OutputLayout) -> str:
    """``<UTC time>-<random>``, after every part already written under ``layout``.

    Parts are ordered by name, newest last: an id from a clock behind an earlier run's (local
    time in another time zone, a DST fall-back, another node's clock) would make this run's rows
    older than that run's, and its new rows would lose to the old ones. So the time is UTC and,
    where a part has a later one, a second after that part's.
    """
    stamp = datetime.now(timezone.utc).replace(microsecond=0, tzinfo=None)
    written = [datetime.strptime(match.group(1), RUN_STAMP) for folder in (layout.series, layout.features)
               for path in part_files(folder) if (match := re.match(r"part-(\d{8}T\d{6})-", path.name))]
    if written and max(written) >= stamp:
        stamp = max(written) + timedelta(seconds=1)
    return f"{stamp.strftime(RUN_STAMP)}-{uuid.uuid4().hex[:6]}"


def repair(layout: OutputLayout) -> list[Path]:
    """Undo what a killed run may have left and set aside what cannot be read.

    Removes temporary files (of parts and run records) and features parts whose series part was
    never written; moves unreadable features parts to ``corrupt/`` (out of the dataset; their
    series are redone) and returns their new paths. An unreadable ``series/`` part is the ledger itself:
    :class:`RunCannotStart` names it.
    """
    for folder in (layout.features, layout.series, layout.runs):
        remove_temporaries(folder)
    for path in part_files(layout.series):
        if not _readable(lambda: part_series_status(path)):
            raise RunCannotStart(
                f"{path}: this part of the ledger cannot be read (truncated or corrupt). Move it aside "
                f"(`mkdir -p {layout.corrupt} && mv {path} {layout.corrupt}/`): the series it lists are then processed "
                "again, "
                "and their label maps are reused where complete")
    committed = {path.name for path in part_files(layout.series)}
    set_aside = []
    for path in part_files(layout.features):
        if path.name not in committed:
            path.unlink()
        elif not _readable(lambda: part_series_ids(path)):
            layout.corrupt.mkdir(exist_ok=True)
            set_aside.append(path.rename(layout.corrupt / f"features-{path.name}"))
    return set_aside


def _readable(read: Callable[[], object]) -> bool:
    try:
        read()
    except (OSError, ValueError, pa.ArrowException):
        return False
    return True


def read_ledger(layout: OutputLayout) -> dict[str, SeriesRecord]:
    """The newest ``series/`` record of every series id (parts sort by time)."""
    newest: dict[str, SeriesRecord] = {}
    for path in part_files(layout.series):
        for row in pq.read_table(path).to_pylist():
            newest[row["series_id"]] = SeriesRecord.from_row(row)
    return newest


def featured_series_ids(layout: OutputLayout) -> set[str]:
    ids: set[str] = set()
    for path in part_files(layout.features):
        ids.update(part_series_ids(path).to_pylist())
    return ids


def plan_run(specs: list[SeriesSpec], layout: OutputLayout, context: "RunContext",
             recompute_changed: bool = False) -> Plan:
    """Split ``specs`` into rows to process and rows already done (failed rows are retried)."""
    from cohort.pipeline import manifest_fields

    ledger = read_ledger(layout)
    done = {sid for sid, record in ledger.items() if record.done}
    featured = done & featured_series_ids(layout)
    stored = complete_source_keys(layout.labels_zarr)
    intact = {sid for sid in featured if sid in stored and _made_like_row(stored[sid], ledger[sid])}
    inputs = _check_inputs([spec for spec in specs if spec.series_id in done], ledger)
    todo, already_done, changed, redo, updates, moved, gone, blocked = [], [], [], [], [], [], [], []
    for spec in specs:
        record = ledger.get(spec.series_id)
        if spec.series_id not in done:
            todo.append(spec)
            continue
        check = inputs[spec.series_id]
        state = check.state(record, context.content_key)
        changes = _changes(record, context.run_key(spec), state, check.other_series)
        try:
            fields = manifest_fields(spec, validate_subject(spec))
        except SeriesError as error:
            blocked.append(ChangedRow(spec, (f"{error.args[0].split(': ', 1)[-1]}: fix the manifest row",)))
            continue
        if changes and state == "gone":
            blocked.append(ChangedRow(spec, (*changes, "input files gone or unreadable: the row cannot be recomputed")))
        elif changes:
            changed.append(ChangedRow(spec, tuple(changes)))
            if recompute_changed:
                todo.append(spec)
        elif spec.series_id not in (featured if state == "gone" else intact):  # gone: keep what is measured
            redo.append(spec)
            todo.append(spec)
        else:
            already_done.append(spec)
            fields.update(_series_uid_fields(record, spec, check.other_series if state == "moved" else ()))
            if state == "moved":
                moved.append(spec)
                fields.update(input_fingerprint=check.fingerprint)
            elif state == "gone":
                gone.append(spec)
            if any(getattr(record, name) != value for name, value in fields.items()):
                updates.append(record.replace(**fields))
    listed = {spec.series_id for spec in specs}
    not_in_manifest = sorted(sid for sid in ledger if sid not in listed)
    for sid in not_in_manifest:
        digested = _uids_in_clear_digested(ledger[sid])
        if ledger[sid].in_manifest or digested:
            updates.append(ledger[sid].replace(in_manifest=False, **digested))
    return Plan(todo, already_done, changed, redo, updates, not_in_manifest, moved, gone, blocked)


def _made_like_row(stored_key: str | None, record: SeriesRecord) -> bool:
    """Whether a complete label map (its ``source_key``) is the one ``record`` was measured on: made
    by the row's model from the row's input content. Another one lies under a done row when a
    recompute stored its new label map and was killed before committing the new row, and the
    inputs or settings were then put back. Rows of versions without ``input_content`` (or a run
    key) keyed their label maps otherwise: for them, complete is all that can be told."""
    key = RunKey.from_json(record.run_settings)
    if key is None or not record.records_content:
        return True
    return stored_key == source_key(key, record.input_content)


def _series_uid_fields(record: SeriesRecord, spec: SeriesSpec, other_series: tuple[str, ...]) -> dict[str, str | None]:
    """The series UID digests a kept row records anew: where an earlier cohort version recorded the
    UID itself (the manifest's, since the row is kept), and where the manifest names other UIDs for
    the same contents."""
    return {**_uids_in_clear_digested(record),
            **{column: series_uid_digest(getattr(spec, column), record.input_content) for column in other_series}}


def _uids_in_clear_digested(record: SeriesRecord) -> dict[str, str]:
    """A row that left the manifest has no manifest UIDs to digest: the digests of those an earlier
    cohort version recorded in clear (none where it holds digests already)."""
    return {column: series_uid_digest(value, record.input_content) for column in SERIES_UID_COLUMNS
            if (value := getattr(record, column)) and not value.startswith(UID_DIGEST_PREFIX)}


def _check_inputs(done_specs: list[SeriesSpec], ledger: dict[str, SeriesRecord]) -> dict[str, InputCheck]:
    """Every done row's input fingerprint, and its content where the fingerprint or a series UID
    changed (rows that recorded their content only)."""
    ids = [spec.series_id for spec in done_specs]
    fingerprints = dict(zip(ids, input_fingerprints(
        (s.path, s.companions, ledger[s.series_id].records_content) for s in done_specs)))
    other_series = {}
    for spec in done_specs:
        record = ledger[spec.series_id]
        columns = SERIES_UID_COLUMNS if record.records_content else ["series_uid"]  # older rows: this one
        other_series[spec.series_id] = tuple(c for c in columns
                                             if not same_series_uid(getattr(record, c), getattr(spec, c),
                                                                    record.input_content))
    differing = [spec for spec in done_specs if ledger[spec.series_id].records_content and (
        ledger[spec.series_id].input_fingerprint != fingerprints[spec.series_id] or other_series[spec.series_id])]
    if differing:
        log.warning("%d done series have input files under other paths, with other times or series UIDs: reading "
                    "them once to compare their contents", len(differing))
    contents = dict(zip((s.series_id for s in differing), input_contents(s.sources for s in differing)))
    return {sid: InputCheck(fingerprints[sid], contents.get(sid), other_series[sid]) for sid in ids}


def _changes(record: SeriesRecord, key: RunKey, input_state: str, other_series: tuple[str, ...]) -> list[str]:
    changes = []
    recorded = RunKey.from_json(record.run_settings)
    if recorded is None:
        changes.append("recorded by an earlier cohort version without a run key")
    elif recorded != key:  # the same as comparing digests, without hashing every row's key
        changes.extend(recorded.differences(key) or ["run settings"])
    if input_state in ("changed", "gone") and other_series:
        changes.extend(f"{column} (another DICOM series under the row's {SERIES_UID_COLUMNS[column]})"
                       for column in other_series)
    elif input_state == "changed" and not record.records_content:
        changes.append("input files (path, size or modification time of the image, labels, fat or water)")
    elif input_state == "changed":
        changes.append("input file contents (image, labels, fat or water)")
    return changes


def refuse_changed(plan: Plan, out: Path, recompute_changed: bool = False) -> None:
    """Stop the run (exit 2) when done rows would be mixed with rows made another way (unless
    they are to be recomputed), or can be neither kept nor recomputed."""
    if plan.blocked:
        _refuse(plan.blocked, f"series done earlier in {out} can be neither kept as they are nor recomputed (their "
                "measurements stay in the tables):",
                "To proceed: restore their files or fix their manifest rows; or leave them out of the manifest (their "
                "rows stay, marked in_manifest = false, out of the study); or write to a new --out.")
    if plan.changed and not recompute_changed:
        _refuse(plan.changed, f"series done earlier in {out} would now be made differently; their rows would be "
                "mixed with new ones:",
                "To proceed: `--recompute changed` recomputes just those rows (label maps are reused where only the "
                "measurement changed), or write to a new --out.")


def _refuse(rows: list[ChangedRow], what: str, advice: str) -> None:
    counts = Counter(change for row in rows for change in row.changes)
    lines = [f"{len(rows)} {what}", *(f"  {change}: {n} series" for change, n in counts.most_common()),
             *(f"  e.g. {row.spec.where}: {'; '.join(row.changes)}" for row in rows[:MAX_LISTED]), advice]
    raise RunCannotStart("\n".join(lines))


def write_metadata_updates(layout: OutputLayout, run_id: str, updates: list[SeriesRecord]) -> None:
    """Rewrite edited manifest fields of done rows as a newer ``series/`` part (no features part)."""
    if updates:
        write_part(layout.series, f"part-{run_id}-manifest", series_table(updates), {"run_id": run_id})


def drop_superseded_rows(layout: OutputLayout) -> int:
    """Keep only the newest row per ``series_id`` in ``series/``, and in ``features/`` only the
    newest part's rows of series whose newest row is done. Rewrites only the parts concerned.

    Each part's ``series_id`` column (and ``status`` for series parts) is read once per process
    (:func:`part_series_status`, :func:`part_series_ids`), shared with :func:`repair` and
    :func:`plan_run`, and decided on per series id (a features part has a row per structure)."""
    series_parts = part_files(layout.series)
    series_columns = [part_series_status(path) for path in series_parts]
    newest_status: dict[str, str] = {}
    for table in series_columns:
        newest_status.update(zip(table["series_id"].to_pylist(), table["status"].to_pylist()))
    series_ids = [pc.unique(table["series_id"]) for table in series_columns]
    newest_series = _newest_part(series_ids)
    features_parts = part_files(layout.features)
    features_ids = [part_series_ids(path) for path in features_parts]
    newest_features = _newest_part(features_ids)
    removed = _keep_rows(layout.features, features_parts, features_ids,
                         lambda sid, index: newest_status.get(sid) == "done" and newest_features[sid] == index)
    # A series part whose rows were all superseded (by manifest edits) stays, empty, while its
    # features part holds rows: :func:`repair` keeps a features part only beside its series part.
    removed += _keep_rows(layout.series, series_parts, series_ids, lambda sid, index: newest_series[sid] == index,
                          keep_empty=lambda path: (layout.features / path.name).exists())
    return removed


def _newest_part(ids_per_part: list[pa.Array]) -> dict[str, int]:
    """The index of the last part that holds each series id (parts sort by time)."""
    return {series_id: index for index, ids in enumerate(ids_per_part) for series_id in ids.to_pylist()}


def _keep_rows(folder: Path, parts: list[Path], ids_per_part: list[pa.Array], keep_row,
               keep_empty: Callable[[Path], bool] = lambda path: False) -> int:
    """Rewrite the parts holding a series id (of ``ids_per_part``, distinct ids per part) that
    ``keep_row(series_id, part_index)`` drops; a part left empty is removed unless ``keep_empty``."""
    removed = 0
    for index, (path, ids) in enumerate(zip(parts, ids_per_part)):
        dropped = [series_id for series_id in ids.to_pylist() if not keep_row(series_id, index)]
        if not dropped:
            continue
        whole = pq.read_table(path)
        table = whole.filter(pc.invert(pc.is_in(whole["series_id"], value_set=pa.array(dropped, pa.string()))))
        removed += whole.num_rows - table.num_rows
        if table.num_rows or keep_empty(path):
            write_part(folder, path.stem, table)
        else:
            path.unlink()
    return removed
