"""Read-only queries on a people-counter database (history charts, reports, exports).

Every function opens its own read-only connection, so it may run while a ``SqliteWriter`` writes
(WAL mode: readers see the last committed batch and never block the writer). A missing file, or
one that is not a people-counter database, raises ``StorageError``; no function creates a file.

Counts follow the count contract: an unknown count comes back as None, with ``unknown_reason``;
a statistic (:func:`count_summary`) is over the known counts and says how many were unknown.

People over time (schema version 4, tracking on): :func:`crossings` and :func:`line_totals` (line
crossings), :func:`zone_visits` (dwell per track in a zone), :func:`static_tracks` (objects
flagged static), :func:`occupancy_history` (a zone's occupancy per frame, None where unknown).
"""

from __future__ import annotations

import os
import re
import sqlite3
from collections import Counter
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
    "confirmed_count",
    "density_count",
    "unknown_reason",
    "counts_frame_index",
    "counts_age_ms",
    "partial",
    "missing",
    "late_branches",
    "zones",
    "occupancy",
    "line_counts",
    "region_source",
    "region_counts",
    "calibration",
)
"""Keys of a :func:`count_history` row, in order (also the columns of an export)."""

CROSSING_COLUMNS = ("run_id", "stream_id", "frame_index", "pts", "published_at", "line", "track_id", "direction")
"""Keys of a :func:`crossings` row, in order (also the columns of its export)."""

VISIT_COLUMNS = (
    "run_id", "stream_id", "frame_index", "published_at", "zone", "track_id", "entered_pts", "left_pts", "dwell_s",
)
"""Keys of a :func:`zone_visits` row, in order (also the columns of its export)."""

STATIC_COLUMNS = (
    "run_id", "stream_id", "track_id", "first_frame", "last_frame", "first_pts", "last_pts",
    "first_published_at", "last_published_at", "xyxy", "allowed",
)
"""Keys of a :func:`static_tracks` row, in order (also the columns of its export)."""


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


def _where(
    run_id: int | None,
    since: datetime | str | None,
    until: datetime | str | None,
    since_column: str = "published_at",
    until_column: str = "published_at",
) -> tuple[str, list[int | str]]:
    where: list[str] = []
    params: list[int | str] = []
    if run_id is not None:
        where.append("run_id = ?")
        params.append(run_id)
    if since is not None:
        where.append(f"{since_column} >= ?")
        params.append(parse_time(since, "since"))
    if until is not None:
        where.append(f"{until_column} < ?")
        params.append(parse_time(until, "until"))
    return (" WHERE " + " AND ".join(where) if where else ""), params


def count_history(
    db_path: str | Path,
    run_id: int | None = None,
    since: datetime | str | None = None,
    until: datetime | str | None = None,
) -> list[dict[str, Any]]:
    """Per-frame counts, every frame stored so far, ordered by run and frame.

    The order is ``run_id, frame_index`` whatever order the rows were written in (metadata records
    and ASYNC_OVERLAY publications may be stored out of frame order). ``since`` (inclusive) and
    ``until`` (exclusive) bound ``published_at``; each is a datetime or an ISO-8601 string, naive
    meaning UTC. Rows have the keys of :data:`COUNT_COLUMNS`. ``fused_count`` is None when
    unknown, and then ``unknown_reason`` says why (else None); ``detection_count`` /
    ``density_count`` are None when unknown (``density_count`` also when the frame had no density
    map). ``counts_frame_index`` is the frame the counts belong to (None before the first under
    ASYNC_OVERLAY), ``counts_age_ms`` their age. ``partial`` is a bool, ``missing`` a dict branch
    -> reason, ``late_branches`` a list, ``zones`` a dict (a zone's count None when unknown).
    With tracking on, ``confirmed_count`` is the count of confirmed, counted tracks (None when
    unknown) beside ``detection_count`` (raw detections), ``occupancy`` a dict zone -> tracks inside
    (None when unknown) and ``line_counts`` a dict line -> ``{"in", "out"}`` totals so far; all
    three None when tracking is off. ``region_source`` and ``region_counts`` are the hybrid's
    (rows, cols) grids as lists (source 1 = density, 0 = detections; empty when unknown, None in
    rows of databases older than version 5 for ``region_counts``) and ``calibration`` the density
    calibration in force as a dict (None without a calibrated density map).
    """
    where, params = _where(run_id, since, until)
    sql = (
        "SELECT run_id, frame_index, pts, stream_id, published_at, strategy, policy, fused_count, "
        "detection_count, confirmed_count, density_count, unknown_reason, counts_frame_index, counts_age_ms, "
        "partial, missing_json, late_branches, zones_json, occupancy_json, line_counts_json, region_source, "
        "region_counts_json, calibration_json FROM frames"
        + where
        + " ORDER BY run_id, frame_index, rowid"
    )
    with _read(db_path) as db:
        rows = list(db.query(sql, params))
    out = []
    for row in rows:
        row["partial"] = bool(row["partial"])
        row["missing"] = from_json(row.pop("missing_json")) or {}
        row["late_branches"] = from_json(row["late_branches"]) or []
        row["zones"] = from_json(row.pop("zones_json")) or {}
        row["occupancy"] = from_json(row.pop("occupancy_json"))
        row["line_counts"] = from_json(row.pop("line_counts_json"))
        row["region_source"] = from_json(row["region_source"]) or []
        row["region_counts"] = from_json(row.pop("region_counts_json"))
        row["calibration"] = from_json(row.pop("calibration_json"))
        out.append({key: row[key] for key in COUNT_COLUMNS})
    return out


def reason_kind(reason: str) -> str:
    """One key per kind of unknown-count reason: numbers become ``N`` (``stale: counts of frame N
    are N ms old (max N)``), so a summary does not list every frame."""
    return re.sub(r"\d+(\.\d+)?", "N", reason)[:120]


def count_summary(
    db_path: str | Path,
    run_id: int | None = None,
    since: datetime | str | None = None,
    until: datetime | str | None = None,
) -> dict[str, Any]:
    """Statistics of the fused counts of the frames :func:`count_history` would return.

    ``frames`` stored, ``known`` with a count, ``unknown`` without one, ``unknown_reasons``
    (:func:`reason_kind` -> frames, most frequent first); ``mean_fused`` / ``max_fused`` over the
    known counts only (None when there is none): an unknown count is never taken as 0.
    """
    where, params = _where(run_id, since, until)
    with _read(db_path) as db:
        frames, known, mean, peak = db.execute(
            f"SELECT COUNT(*), COUNT(fused_count), AVG(fused_count), MAX(fused_count) FROM frames{where}", params
        ).fetchone()
        grouped = db.execute(
            f"SELECT unknown_reason, COUNT(*) FROM frames{where}{' AND' if where else ' WHERE'} fused_count IS NULL "
            "GROUP BY unknown_reason",
            params,
        ).fetchall()
    reasons: Counter[str] = Counter()
    for reason, n in grouped:
        reasons[reason_kind(reason or "unknown")] += n
    return {
        "frames": frames,
        "known": known,
        "unknown": frames - known,
        "unknown_reasons": dict(reasons.most_common()),
        "mean_fused": mean,
        "max_fused": peak,
    }


def timing_rows(db_path: str | Path, run_id: int) -> list[dict[str, float]]:
    """One ``{stage: ms}`` dict per frame of ``run_id``, in frame order, for ``telemetry.summarize``.

    Each dict holds the figures that belong to that frame (``StageTimings.by_frame()``), from
    whichever publication carried them; stages appear in the order they were written. A stage
    stored more than once for a frame is summed: that is a plain ``<stage>`` total of work on the
    frame reported by two publications (a late result, or two branches' work on it reported
    apart); every other figure is stored once per frame. A frame without timings has no dict.
    """
    sql = "SELECT frame_index, stage, ms FROM frame_timings WHERE run_id = ? ORDER BY frame_index, rowid"
    rows: list[dict[str, float]] = []
    last: int | None = None
    with _read(db_path) as db:
        for frame_index, stage, ms in db.execute(sql, [run_id]).fetchall():
            if frame_index != last:
                rows.append({})
                last = frame_index
            row = rows[-1]
            row[stage] = ms if stage not in row or ms is None or row[stage] is None else row[stage] + ms
    return rows


def runs(db_path: str | Path) -> list[dict[str, Any]]:
    """Every run, oldest first, with ``config``/``versions``/``summary`` decoded, ``frames`` counted
    and, of those, ``unknown_frames`` (no fused count)."""
    sql = (
        "SELECT r.id, r.started_at, r.ended_at, r.status, r.source, r.strategy, r.config_json, "
        "r.versions_json, r.summary_json, (SELECT COUNT(*) FROM frames f WHERE f.run_id = r.id) AS frames, "
        "(SELECT COUNT(*) FROM frames f WHERE f.run_id = r.id AND f.fused_count IS NULL) AS unknown_frames "
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


# --- people over time (schema version 4) -----------------------------------------------------------


def crossings(
    db_path: str | Path,
    run_id: int | None = None,
    since: datetime | str | None = None,
    until: datetime | str | None = None,
) -> list[dict[str, Any]]:
    """Every stored line crossing, ordered by run, frame, then as stored; keys :data:`CROSSING_COLUMNS`.

    ``direction`` is ``in`` or ``out``; ``since`` (inclusive) / ``until`` (exclusive) bound
    ``published_at``, as in :func:`count_history`.
    """
    where, params = _where(run_id, since, until)
    sql = f"SELECT {', '.join(CROSSING_COLUMNS)} FROM crossings{where} ORDER BY run_id, frame_index, rowid"
    with _read(db_path) as db:
        return list(db.query(sql, params))


def line_totals(db_path: str | Path, run_id: int) -> dict[str, dict[str, int]]:
    """Crossings of ``run_id`` per line: ``{line: {"in": n, "out": m}}``, by line name.

    Counted from the stored crossings; a line of the run that nobody crossed (named in its frames'
    ``line_counts``) is there with zeros.
    """
    with _read(db_path) as db:
        counted = db.execute(
            "SELECT line, SUM(direction = 'in'), SUM(direction = 'out') FROM crossings WHERE run_id = ? GROUP BY line",
            [run_id],
        ).fetchall()
        last = db.execute(
            "SELECT line_counts_json FROM frames WHERE run_id = ? AND line_counts_json IS NOT NULL "
            "ORDER BY frame_index DESC, rowid DESC LIMIT 1",
            [run_id],
        ).fetchone()
    totals = {line: {"in": 0, "out": 0} for line in (from_json(last[0]) if last else None) or {}}
    for line, n_in, n_out in counted:
        totals[line] = {"in": int(n_in), "out": int(n_out)}
    return dict(sorted(totals.items()))


def zone_visits(
    db_path: str | Path,
    run_id: int | None = None,
    since: datetime | str | None = None,
    until: datetime | str | None = None,
    zone: str | None = None,
) -> list[dict[str, Any]]:
    """Every stored zone visit (a track's stay in a zone, ended), ordered by run, exit frame, then as
    stored; keys :data:`VISIT_COLUMNS`. ``entered_pts`` / ``left_pts``: stream time of the track's
    first and last frames inside, ``dwell_s`` between them; ``frame_index`` / ``published_at``: the
    frame that reported the exit (what ``since`` / ``until`` bound). ``zone``: only that zone.
    """
    where, params = _where(run_id, since, until)
    if zone is not None:
        where += (" AND" if where else " WHERE") + " zone = ?"
        params.append(zone)
    sql = f"SELECT {', '.join(VISIT_COLUMNS)} FROM zone_visits{where} ORDER BY run_id, frame_index, rowid"
    with _read(db_path) as db:
        return list(db.query(sql, params))


def static_tracks(
    db_path: str | Path,
    run_id: int | None = None,
    since: datetime | str | None = None,
    until: datetime | str | None = None,
) -> list[dict[str, Any]]:
    """Every track flagged static (a cloth, a bag, a mannequin: not counted unless ``allowed``), by
    run, then first frame; keys :data:`STATIC_COLUMNS`.

    ``first_*``: when it was first seen static; ``last_*``, ``xyxy`` (its box, frame pixels, a
    list of 4) and ``allowed`` (bool): the last frame it was seen static. ``since`` / ``until``
    keep the tracks static at some time in ``[since, until)``.
    """
    where, params = _where(run_id, since, until, since_column="last_published_at", until_column="first_published_at")
    columns = ", ".join("xyxy_json" if c == "xyxy" else c for c in STATIC_COLUMNS)
    sql = f"SELECT {columns} FROM static_tracks{where} ORDER BY run_id, first_frame, rowid"
    with _read(db_path) as db:
        rows = list(db.query(sql, params))
    out = []
    for row in rows:
        row["xyxy"] = from_json(row.pop("xyxy_json"))
        row["allowed"] = bool(row["allowed"])
        out.append({key: row[key] for key in STATIC_COLUMNS})
    return out


def occupancy_history(db_path: str | Path, run_id: int, zone: str) -> list[dict[str, Any]]:
    """Occupancy of ``zone`` in every stored frame of ``run_id``, in frame order: dicts with
    ``frame_index``, ``pts``, ``published_at``, ``counts_frame_index`` (the frame the figure belongs
    to, see :func:`count_history`) and ``occupancy``: the counted tracks whose feet are inside, or
    None where it is unknown (a gap: tracking off, warming up, a partial frame, a zone the run did
    not have), never 0.
    """
    sql = (
        "SELECT frame_index, pts, published_at, counts_frame_index, occupancy_json FROM frames "
        "WHERE run_id = ? ORDER BY frame_index, rowid"
    )
    with _read(db_path) as db:
        rows = list(db.query(sql, [run_id]))
    for row in rows:
        value = (from_json(row.pop("occupancy_json")) or {}).get(zone)
        row["occupancy"] = None if value is None else int(value)
    return rows
