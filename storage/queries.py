"""Read-only queries on a people-counter database (history charts, reports, exports).

Every function opens its own read-only connection, so it may run while a ``SqliteWriter`` writes
(WAL mode: readers see the last committed batch and never block the writer). A missing file, or
one that is not a people-counter database, raises ``StorageError``; no function creates a file.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlite_utils import Database

from config.errors import StorageError
from storage.schema import from_json, parse_time

COUNT_COLUMNS = (
    "run_id",
    "frame_index",
    "pts",
    "stream_id",
    "published_at",
    "strategy",
    "policy",
    "fused_count",
    "detection_count",
    "density_count",
    "partial",
    "late_branches",
    "zones",
)
"""Keys of a :func:`count_history` row, in order (also the columns of an export)."""


@contextmanager
def _read(db_path: str | Path) -> Iterator[Database]:
    path = Path(db_path)
    if not path.is_file():
        raise StorageError(f"no database at {path}; give the file the counter wrote (--db PATH or storage.db_path)")
    uri = f"{path.resolve().as_uri()}?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True)
        try:
            conn.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
        except sqlite3.OperationalError:
            conn.close()
            if os.access(path.parent, os.W_OK):
                raise
            # A WAL database in a read-only folder (an archive, a read-only mount) cannot get its
            # -shm file; nobody can be writing it there, so read it as immutable.
            conn = sqlite3.connect(f"{uri}&immutable=1", uri=True)
    except sqlite3.Error as e:
        raise StorageError(f"cannot read the database {path}: {e}") from e
    try:
        yield Database(conn, execute_plugins=False)
    except sqlite3.Error as e:
        raise StorageError(f"cannot read the database {path}: {e} (is it a people-counter database?)") from e
    finally:
        conn.close()


def count_history(
    db_path: str | Path,
    run_id: int | None = None,
    since: datetime | str | None = None,
    until: datetime | str | None = None,
) -> list[dict[str, Any]]:
    """Per-frame counts, ordered by run and frame.

    ``since`` (inclusive) and ``until`` (exclusive) bound ``published_at``; each is a datetime or
    an ISO-8601 string, naive meaning UTC. Rows have the keys of :data:`COUNT_COLUMNS`;
    ``partial`` is a bool, ``late_branches`` a list, ``zones`` a dict, ``density_count`` None
    where the frame had no density map.
    """
    where: list[str] = []
    params: list[int | str] = []
    if run_id is not None:
        where.append("run_id = ?")
        params.append(run_id)
    if since is not None:
        where.append("published_at >= ?")
        params.append(parse_time(since, "since"))
    if until is not None:
        where.append("published_at < ?")
        params.append(parse_time(until, "until"))
    sql = (
        "SELECT run_id, frame_index, pts, stream_id, published_at, strategy, policy, fused_count, "
        "detection_count, density_count, partial, late_branches, zones_json FROM frames"
        + (" WHERE " + " AND ".join(where) if where else "")
        + " ORDER BY run_id, frame_index, rowid"
    )
    with _read(db_path) as db:
        rows = list(db.query(sql, params))
    out = []
    for row in rows:
        zones = from_json(row.pop("zones_json"))
        row["partial"] = bool(row["partial"])
        row["late_branches"] = from_json(row["late_branches"]) or []
        row["zones"] = zones or {}
        out.append({key: row[key] for key in COUNT_COLUMNS})
    return out


def timing_rows(db_path: str | Path, run_id: int) -> list[dict[str, float]]:
    """One ``{stage: ms}`` dict per frame of ``run_id``, in frame order, for ``telemetry.summarize``.

    Stages appear in the order they were written, so the result equals the run's
    ``FusedResult.timings`` sequence (a frame without timings has no dict).
    """
    sql = "SELECT frame_index, stage, ms FROM frame_timings WHERE run_id = ? ORDER BY frame_index, rowid"
    rows: list[dict[str, float]] = []
    last: int | None = None
    with _read(db_path) as db:
        for frame_index, stage, ms in db.execute(sql, [run_id]).fetchall():
            if frame_index != last:
                rows.append({})
                last = frame_index
            rows[-1][stage] = ms
    return rows


def runs(db_path: str | Path) -> list[dict[str, Any]]:
    """Every run, oldest first, with ``config``/``versions``/``summary`` decoded and ``frames`` counted."""
    sql = (
        "SELECT r.id, r.started_at, r.ended_at, r.status, r.source, r.strategy, r.config_json, "
        "r.versions_json, r.summary_json, (SELECT COUNT(*) FROM frames f WHERE f.run_id = r.id) AS frames "
        "FROM runs r ORDER BY r.id"
    )
    with _read(db_path) as db:
        rows = list(db.query(sql))
    for row in rows:
        row["config"] = from_json(row.pop("config_json"))
        row["versions"] = from_json(row.pop("versions_json"))
        row["summary"] = from_json(row.pop("summary_json"))
    return rows


def events(db_path: str | Path, run_id: int | None) -> list[dict[str, Any]]:
    """The events of ``run_id`` (None: events recorded outside any run) in the order they happened."""
    where = "run_id IS NULL" if run_id is None else "run_id = ?"
    sql = f"SELECT run_id, ts, kind, frame_index, message, data_json FROM events WHERE {where} ORDER BY rowid"
    with _read(db_path) as db:
        rows = list(db.query(sql, [] if run_id is None else [run_id]))
    for row in rows:
        row["data"] = from_json(row.pop("data_json"))
    return rows
