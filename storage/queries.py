"""Read-only queries on a people-counter database (history charts, reports, exports).

Every function opens its own read-only connection, so it may run while a ``SqliteWriter`` writes
(WAL mode: readers see the last committed batch and never block the writer). A missing file, or
one that is not a people-counter database, raises ``StorageError``; no function creates a file.

Counts follow the count contract: an unknown count comes back as None, with ``unknown_reason``;
a statistic (:func:`count_summary`) is over the known counts and says how many were unknown.
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
    "density_count",
    "unknown_reason",
    "counts_frame_index",
    "counts_age_ms",
    "partial",
    "missing",
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


def _where(run_id: int | None, since: datetime | str | None, until: datetime | str | None) -> tuple[str, list[int | str]]:
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
    """
    where, params = _where(run_id, since, until)
    sql = (
        "SELECT run_id, frame_index, pts, stream_id, published_at, strategy, policy, fused_count, "
        "detection_count, density_count, unknown_reason, counts_frame_index, counts_age_ms, partial, "
        "missing_json, late_branches, zones_json FROM frames"
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
