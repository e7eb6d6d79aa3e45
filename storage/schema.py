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
- ``frames``: one row per published ``FusedResult``. ``partial`` is 0/1; ``density_count`` is
  NULL when the frame had no density map; ``region_source`` is the JSON (rows, cols) grid of the
  hybrid decision (1 = density, 0 = detections); ``zones_json`` maps zone to fused count;
  ``late_branches`` and ``overlays_json`` are JSON lists.
- ``frame_timings``: long format, one row per (frame, stage), so a new stage needs no migration.
  ``stage`` is the telemetry name (``decode_ms``) and ``ms`` its value.
- ``events``: things that happened during a run (``error``, ``reconnect``, ``strategy_switch``,
  ``drop``, ``stall``, ...), with an optional frame and a JSON ``data_json`` object. The writer
  adds its own: ``storage_blocked``/``storage_resumed``/``storage_dropped`` (the database could
  not be written for a while, see ``storage.writer``), ``spill_recovered`` (rows a dead writer
  left in a spill file, written back) and ``run_aborted`` (a dead process's run, closed).

Timestamps (``started_at``, ``ended_at``, ``published_at``, ``ts``) are UTC ISO-8601 strings with
microseconds and ``+00:00`` (``2024-05-01T12:00:00.000000+00:00``), all in that one format so that
comparing strings compares times. ``PRAGMA user_version`` holds :data:`SCHEMA_VERSION`.

Migrations: version 2 added ``runs.pid``, ``runs.host`` and ``runs.proc_start``. Opening a version
1 database adds the missing columns (``ALTER TABLE ... ADD COLUMN``, NULL in old rows) and stamps
version 2; a newer version than this program's is refused.
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

SCHEMA_VERSION = 2

RUN_STATUSES = ("completed", "completed_with_errors", "failed", "interrupted", "terminated", "aborted")
"""The end statuses of a run (documentation: ``end_run`` stores any string)."""


@dataclass(frozen=True, slots=True)
class TableSpec:
    """Columns (name → Python type, in order), primary key, NOT NULL columns and foreign keys."""

    columns: Mapping[str, type]
    pk: str | None = None
    not_null: tuple[str, ...] = ()
    foreign_keys: tuple[tuple[str, str, str], ...] = ()
    indexes: tuple[tuple[str, ...], ...] = field(default=())


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
        },
        not_null=("run_id", "frame_index", "published_at", "fused_count", "detection_count", "partial"),
        foreign_keys=(("run_id", "runs", "id"),),
        indexes=(("run_id", "frame_index"), ("published_at",)),
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
    """Create missing tables, columns and indexes and stamp :data:`SCHEMA_VERSION`.

    An older database (version 1) gets the columns it lacks. The final ``PRAGMA user_version``
    write doubles as a check that the file is writable. Raises ``StorageError`` for a database
    made by a newer schema version.
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
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


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
