"""The SQLite schema of a people-counter database, and how values are encoded in it.

Tables (one database holds many runs):

- ``runs``: one row per run. ``status`` is free text (nothing in the schema restricts it); the
  program writes ``running`` while the run goes on, then one of :data:`RUN_STATUSES`:
  ``completed`` (the stream ended or ``max_frames`` was reached), ``completed_with_errors`` (it
  ended, but errors were recorded on the way), ``failed`` (a stage failed), ``interrupted``
  (Ctrl-C, or the writer closed a run nobody ended), ``terminated`` (SIGTERM), ``aborted`` (the
  process died, e.g. kill -9 or power loss, and a later writer found the run still ``running``;
  ``ended_at`` is then the ``published_at`` of its last stored frame, or ``started_at``).
  ``pid``/``host``/``proc_start`` name the process that writes the run (``proc_start``: the
  process start time in clock ticks since boot, from ``/proc``, NULL where unknown) so that a
  later writer can tell a dead run from a live one. ``config_json``/``versions_json``/
  ``summary_json`` are JSON objects.
- ``frames``: one row per published frame (see ``storage.writer``: a RAW_STREAM_WITH_METADATA
  frame's row comes from its metadata record). The count contract of ``FusedResult``: an unknown
  count is NULL, never 0. ``fused_count`` is NULL exactly when ``unknown_reason`` (text, e.g.
  ``warming up``, ``late: yolo_tiles``, ``stale: ...``) says why; ``detection_count`` and
  ``density_count`` are NULL when unknown (``density_count`` also when the frame had no density
  map). ``counts_frame_index`` is the frame the counts belong to (the frame itself under
  STRICT_SYNC and RAW_STREAM_WITH_METADATA, the latest finalized frame under ASYNC_OVERLAY, also
  when its counts are unknown, e.g. stale; NULL before the first one: ASYNC_OVERLAY's warm-up
  frames) and ``counts_age_ms`` their age at publication (NULL when there is none). ``missing_json`` is the JSON object branch -> reason of
  the branches missing from the counted frame (``late``, ``dropped (queue full)``,
  ``failed: ...``, ``warming up``, ``stale: ...``); ``partial`` is 0/1, 1 when ``missing_json``
  is not empty; ``late_branches`` (a JSON list, kept for older readers) is the ``late`` ones.
  ``region_source`` is the JSON (rows, cols) grid of the hybrid decision (1 = density,
  0 = detections; empty when unknown); ``zones_json`` maps zone to fused count (null when
  unknown); ``overlays_json`` is a JSON list. With tracking on (``CountResult.tracking``, a
  ``pipeline.tracking.TrackedFrame`` of the counted frame): ``confirmed_count`` is its count of
  confirmed, counted tracks (NULL when unknown: warming up, a partial frame), beside
  ``detection_count``, the raw detection count; ``occupancy_json`` maps zone to the counted tracks
  whose feet are inside (null when unknown) and ``line_counts_json`` line to ``{"in": n, "out":
  m}``, the crossings since the run began. All three are NULL when tracking is off.
  ``region_counts_json`` is the JSON (rows, cols) grid of the count each region contributed (by
  the source of ``region_source``; empty when unknown) and ``calibration_json`` the density
  calibration in force (``pipeline.types.DensityCalibration``: scale, offset, samples, frames,
  ``fit`` or ``prior``, the raw / background / flat people of the frame and the per-region
  scales); NULL when the frame had no calibrated density map.
- ``crossings``: one row per line crossing (``pipeline.tracking.LineCrossing``), stored once:
  ``frame_index``/``pts`` the frame it happened on, ``direction`` ``in`` or ``out``,
  ``published_at`` when its frame's ``TrackingRecord`` reached the writer. Unique on (run,
  stream, line, track, frame): a track changes side of a line at most once per frame, and a row
  written back twice (a spill file replayed after a crash) is stored once.
- ``zone_visits``: one row per zone exit (``pipeline.tracking.ZoneExit``): the track's first and
  last ``pts`` inside the zone, ``dwell_s`` between them, ``frame_index`` the frame that reported
  the exit. Unique on (run, stream, zone, track, ``entered_pts``).
- ``static_tracks``: one row per track flagged static (a cloth, a bag: not counted unless
  ``allowed``), unique on (run, stream, track): ``first_frame``/``first_pts``/
  ``first_published_at`` when it was first seen static, ``last_frame``/``last_pts``/
  ``last_published_at``/``xyxy_json`` (its box, frame pixels) the last frame it was seen static,
  ``allowed`` 0/1 then.
- ``frame_timings``: long format, one row per (frame, stage), so a new stage needs no migration.
  ``stage`` is the telemetry name (``decode_ms``, ``yolo.run_ms``) and ``ms`` its value;
  ``frame_index`` is the frame the figure belongs to (``StageTimings.by_frame``), which under
  ASYNC_OVERLAY may be older than the publication that carried it. A summed stage (plain
  ``run_ms``: the work on a frame) may have one row per publication that reported work of that
  frame: a reader adds them up (``storage.queries.timing_rows``).
- ``events``: things that happened during a run (``error``, ``reconnect``, ``strategy_switch``,
  ``drop``, ``stall``, ...), with an optional frame and a JSON ``data_json`` object. The writer
  adds its own: ``storage_blocked``/``storage_resumed``/``storage_dropped`` (the database could
  not be written for a while, see ``storage.writer``), ``spill_recovered`` (rows a dead writer
  left in a spill file, written back) and ``run_aborted`` (a dead process's run, closed).

Timestamps (``started_at``, ``ended_at``, ``published_at``, ``ts``) are UTC ISO-8601 strings with
microseconds and ``+00:00`` (``2024-05-01T12:00:00.000000+00:00``), all in that one format so that
comparing strings compares times. ``PRAGMA user_version`` holds :data:`SCHEMA_VERSION`.

Migrations: version 2 added ``runs.pid``, ``runs.host`` and ``runs.proc_start``; version 3 made
``frames.fused_count`` and ``frames.detection_count`` nullable and added ``frames.unknown_reason``,
``missing_json``, ``counts_frame_index`` and ``counts_age_ms``. Opening an older database adds the
missing ``runs`` columns (``ALTER TABLE ... ADD COLUMN``, NULL in old rows) and rebuilds ``frames``
(SQLite cannot drop a NOT NULL constraint in place): in the one transaction that stamps the new
version, a new table is created, the rows copied, the old table dropped, the new one renamed and
its indexes recreated. Migrated rows keep their values; ``missing_json`` is made from their
``late_branches`` (``{branch: "late"}``: older versions recorded no other reason), the other new
columns are NULL (not recorded). Version 4 added ``frames.confirmed_count``, ``occupancy_json``
and ``line_counts_json`` (``ALTER TABLE``: NULL in old rows, which had no tracking) and the
``crossings``, ``zone_visits`` and ``static_tracks`` tables (empty for old runs). Version 5 added
``frames.region_counts_json`` and ``calibration_json`` (``ALTER TABLE``: NULL in old rows). A newer
version than this program's is refused.
"""

from __future__ import annotations

import contextlib
import json
import math
import sqlite3
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
from sqlite_utils import Database

from config.errors import StorageError

SCHEMA_VERSION = 5

RUN_STATUSES = ("completed", "completed_with_errors", "failed", "interrupted", "terminated", "aborted")
"""The end statuses of a run (documentation: ``end_run`` stores any string)."""


@dataclass(frozen=True, slots=True)
class TableSpec:
    """Columns (name → Python type, in order), primary key, NOT NULL columns and foreign keys.

    ``rebuilt_in``: the schema version that changed a constraint of the table (which ``ALTER
    TABLE`` cannot do): a table of an older database is rebuilt, its rows copied; ``derived``
    gives the SQL expression (over the old row's columns) that fills a new column in the copy,
    NULL otherwise. ``unique``: columns of a unique index (``idx_<table>_unique``) that the
    writer's ``INSERT ... ON CONFLICT`` relies on.
    """

    columns: Mapping[str, type]
    pk: str | None = None
    not_null: tuple[str, ...] = ()
    foreign_keys: tuple[tuple[str, str, str], ...] = ()
    indexes: tuple[tuple[str, ...], ...] = field(default=())
    rebuilt_in: int = 0
    derived: Mapping[str, str] = field(default_factory=dict)
    unique: tuple[str, ...] = ()


TABLES: dict[str, TableSpec] = {
    "runs": TableSpec(
        columns={
            "id": int,
            "started_at": str,
            "ended_at": str,
            "status": str,
            "source": str,
            "strategy": str,
            "config_json": str,
            "versions_json": str,
            "summary_json": str,
            # version 2: who writes the run (crash recovery); added last so ALTER TABLE matches
            "pid": int,
            "host": str,
            "proc_start": str,
        },
        pk="id",
        not_null=("started_at", "status"),
    ),
    "frames": TableSpec(
        columns={
            "run_id": int,
            "frame_index": int,
            "pts": float,
            "stream_id": str,
            "strategy": str,
            "partial": int,
            "fused_count": float,
            "detection_count": int,
            "density_count": float,
            "policy": str,
            "region_source": str,
            "zones_json": str,
            "late_branches": str,
            "overlays_json": str,
            "published_at": str,
            # version 3: the count contract (unknown is NULL with a reason)
            "unknown_reason": str,
            "missing_json": str,
            "counts_frame_index": int,
            "counts_age_ms": float,
            # version 4: people over time (NULL when tracking is off)
            "confirmed_count": int,
            "occupancy_json": str,
            "line_counts_json": str,
            # version 5: the hybrid's regions and the density calibration in force
            "region_counts_json": str,
            "calibration_json": str,
        },
        not_null=("run_id", "frame_index", "published_at", "partial"),
        foreign_keys=(("run_id", "runs", "id"),),
        indexes=(("run_id", "frame_index"), ("published_at",)),
        rebuilt_in=3,  # fused_count / detection_count lost NOT NULL
        # Versions 1-2 recorded only the late branches of a partial frame.
        derived={"missing_json": "(SELECT json_group_object(value, 'late') FROM json_each(late_branches))"},
    ),
    "frame_timings": TableSpec(
        columns={"run_id": int, "frame_index": int, "stage": str, "ms": float},
        not_null=("run_id", "frame_index", "stage"),
        foreign_keys=(("run_id", "runs", "id"),),
        indexes=(("run_id", "frame_index"),),
    ),
    "events": TableSpec(
        columns={"run_id": int, "ts": str, "kind": str, "frame_index": int, "message": str, "data_json": str},
        not_null=("ts", "kind"),
        foreign_keys=(("run_id", "runs", "id"),),
        indexes=(("run_id", "frame_index"),),
    ),
    # version 4: people over time
    "crossings": TableSpec(
        columns={
            "run_id": int,
            "stream_id": str,
            "frame_index": int,
            "pts": float,
            "line": str,
            "track_id": int,
            "direction": str,
            "published_at": str,
        },
        not_null=("run_id", "stream_id", "frame_index", "pts", "line", "track_id", "direction", "published_at"),
        foreign_keys=(("run_id", "runs", "id"),),
        indexes=(("run_id", "frame_index"), ("published_at",)),
        unique=("run_id", "stream_id", "line", "track_id", "frame_index"),
    ),
    "zone_visits": TableSpec(
        columns={
            "run_id": int,
            "stream_id": str,
            "zone": str,
            "track_id": int,
            "entered_pts": float,
            "left_pts": float,
            "dwell_s": float,
            "frame_index": int,
            "published_at": str,
        },
        not_null=("run_id", "stream_id", "zone", "track_id", "entered_pts", "left_pts", "dwell_s", "frame_index", "published_at"),
        foreign_keys=(("run_id", "runs", "id"),),
        indexes=(("run_id", "zone", "frame_index"), ("published_at",)),
        unique=("run_id", "stream_id", "zone", "track_id", "entered_pts"),
    ),
    "static_tracks": TableSpec(
        columns={
            "run_id": int,
            "stream_id": str,
            "track_id": int,
            "first_frame": int,
            "last_frame": int,
            "first_pts": float,
            "last_pts": float,
            "first_published_at": str,
            "last_published_at": str,
            "xyxy_json": str,
            "allowed": int,
        },
        not_null=(
            "run_id", "stream_id", "track_id", "first_frame", "last_frame", "first_pts", "last_pts",
            "first_published_at", "last_published_at", "xyxy_json", "allowed",
        ),
        foreign_keys=(("run_id", "runs", "id"),),
        unique=("run_id", "stream_id", "track_id"),
    ),
}
"""Every table of the database, by name, in creation order (``runs`` first: others refer to it)."""


@contextmanager
def write_transaction(db: Database) -> Iterator[None]:
    """A transaction that takes the write lock up front; commits, or rolls back on any error.

    ``BEGIN IMMEDIATE`` waits (``busy_timeout``) for another writer to finish. A deferred
    ``BEGIN`` that reads first cannot wait when it upgrades to a write lock in WAL mode: it fails
    at once with "database is locked". sqlite-utils nests its own transactions inside as
    savepoints.
    """
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        # After a full disk or an I/O error SQLite may already have rolled back, or the rollback
        # itself fails: the original error is the one to report.
        with contextlib.suppress(sqlite3.Error):
            db.rollback()
        raise
    db.commit()


def create_schema(db: Database) -> None:
    """Create missing tables, columns and indexes, migrate an older database, stamp :data:`SCHEMA_VERSION`.

    All in one transaction: an older database gets the columns and tables it lacks (version 1 or
    2 also a rebuilt ``frames`` table), or stays as it was if anything fails. The final ``PRAGMA
    user_version`` write doubles as a check that the file is writable. Raises ``StorageError``
    for a database made by a newer schema version.
    """
    with write_transaction(db):
        found = db.execute("PRAGMA user_version").fetchone()[0]
        if not 0 <= found <= SCHEMA_VERSION:
            raise StorageError(
                f"schema version {found}, this program writes version {SCHEMA_VERSION}; "
                "use a new database file (--db PATH or storage.db_path)"
            )
        for name, spec in TABLES.items():
            table = db.table(name)
            if table.exists():
                if found < spec.rebuilt_in:
                    _rebuild(db, name, spec)
                else:
                    have = {c.name for c in table.columns}
                    for column, kind in spec.columns.items():
                        if column not in have:
                            table.add_column(column, kind)
            table.create(
                dict(spec.columns),
                pk=spec.pk,
                not_null=spec.not_null,
                foreign_keys=list(spec.foreign_keys),
                if_not_exists=True,
            )
            for columns in spec.indexes:
                table.create_index(columns, index_name=f"idx_{name}_{'_'.join(columns)}", if_not_exists=True)
            if spec.unique:
                table.create_index(spec.unique, index_name=f"idx_{name}_unique", unique=True, if_not_exists=True)
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def _rebuild(db: Database, name: str, spec: TableSpec) -> None:
    """Replace table ``name`` by one made from ``spec``, rows copied (call inside a transaction).

    SQLite's recipe for a change ``ALTER TABLE`` cannot make: create the new table, copy, drop the
    old one (its indexes go with it), rename the new one. The caller recreates the indexes. No
    table refers to ``frames``, so dropping it needs no foreign-key dance.
    """
    new = f"{name}_v{SCHEMA_VERSION}"
    db.execute(f'DROP TABLE IF EXISTS "{new}"')  # left by nothing (one transaction), but be sure
    db.execute(
        db.create_table_sql(
            new, dict(spec.columns), pk=spec.pk, not_null=spec.not_null, foreign_keys=list(spec.foreign_keys)
        )
    )
    have = {c.name for c in db.table(name).columns}
    targets = [c for c in spec.columns if c in have or c in spec.derived]
    columns = ", ".join(f'"{c}"' for c in targets)
    sources = ", ".join(f'"{c}"' if c in have else spec.derived[c] for c in targets)
    db.execute(f'INSERT INTO "{new}" ({columns}) SELECT {sources} FROM "{name}" ORDER BY rowid')
    db.execute(f'DROP TABLE "{name}"')
    db.execute(f'ALTER TABLE "{new}" RENAME TO "{name}"')


def utc_iso(when: datetime) -> str:
    """``when`` as the database's timestamp string; a naive datetime is taken as UTC."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC).isoformat(timespec="microseconds")


def utc_now() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


def parse_time(value: datetime | str, name: str) -> str:
    """A ``since``/``until`` argument (datetime or ISO-8601 string, naive = UTC) as a timestamp string."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise StorageError(
                f"{name}: {value!r} is not an ISO-8601 datetime; write e.g. 2024-05-01T12:00:00Z"
            ) from None
    return utc_iso(value)


def _plain(value: Any) -> Any:
    # JSON has no NaN/inf: store them as null so every reader (not only Python) can parse the file.
    if isinstance(value, float | np.floating):
        f = float(value)
        return f if math.isfinite(f) else None
    if isinstance(value, np.integer | np.bool_):
        return value.item()
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_plain(v) for v in value]
    if hasattr(value, "as_dict"):
        return _plain(value.as_dict())
    if isinstance(value, str | int | bool) or value is None:
        return value
    return str(value)


def to_json(value: Any) -> str:
    """Encode a column value as JSON: NumPy values become Python ones, NaN/inf become null."""
    return json.dumps(_plain(value), separators=(",", ":"), allow_nan=False)


def from_json(text: str | None) -> Any:
    """Decode a JSON column; NULL gives None."""
    return None if text is None else json.loads(text)
