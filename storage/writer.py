"""The SQLite writer: a ``Sink`` whose one thread owns the database connection.

The pipeline thread calls :meth:`SqliteWriter.write` once per published ``FusedResult`` (and
:meth:`SqliteWriter.write_metadata` once per RAW_STREAM_WITH_METADATA ``MetadataRecord``: a raw
frame's row comes from its record; :meth:`SqliteWriter.write_work` takes the ``WorkRecord`` of work
no publication reported, timings only; :meth:`SqliteWriter.write_tracking` the ``TrackingRecord`` of
a finalized frame when the counter tracks people: its line crossings, zone exits and static tracks).
Every published frame is stored, unknown counts as NULL with their reason (the count contract, see
``storage.schema``). ``write`` turns the result into rows
at once (so no image or array is kept alive by the queue), stamps ``published_at``, and puts the
rows on the writer's inbox; the writer thread inserts them in batches (``batch_size`` items, or
``flush_interval_s`` after the oldest waiting one, whichever comes first), each batch one
transaction, in WAL mode so readers (the UI's history charts, exports) never block it. On a
healthy database a row is therefore committed within ``flush_interval_s`` (plus one batch's
insert time) of its ``write``: that bounds what a kill -9 loses.

Storage faults never stop counting. A locked database (another process holds the write lock
longer than ``busy_timeout_s``), a full disk or an I/O error is retried with exponential backoff
(``retry_initial_s``, doubling, at most ``retry_max_s``) while the rows wait, in order:

1. in memory, up to ``spool_rows`` rows;
2. beyond that, the oldest go to a spill file of JSON lines,
   ``<spill_dir>/<db name>.spill.<pid>.<n>@<host>.jsonl`` (``spill_dir`` defaults to the database's
   folder; choose another file system if the database's disk may fill up);
3. when the spill file cannot be written either (the same full disk), rows stay in memory up to
   ``max_memory_rows``; frame rows (and repeated sightings of a static track already stored,
   which only move its ``last_frame``) beyond that are dropped, counted, logged and reported by a
   ``storage_dropped`` event: never silently. Events, run ends, crossings, zone visits and a static
   track's first sighting are never dropped.

When the database works again the spill file is written back first, then the memory, in order;
the file is removed. A fault is reported by events, stored with the rows once the database works:
``storage_blocked`` (data: ``reason`` = ``locked`` / ``disk_full`` / ``io_error``, ``error`` the
SQLite or OS message, ``pending_rows``) and ``storage_resumed`` (data: ``reason``, ``blocked_s``,
``retries``, ``spooled`` = rows that waited, ``spilled`` = of those, rows that went through the
spill file, ``dropped``), each also logged as a warning on the ``people_counter.storage`` logger.
``write`` waits only while the inbox holds ``queue_size`` rows (the writer thread is inside one
slow SQLite call), at most ``put_timeout_s``, and then goes on: it never raises for a slow or
locked database.

Crash recovery: every run row records ``pid``, ``host`` and ``proc_start``. When a writer starts
it writes back the spill files that dead writers of this host left for this database
(``spill_recovered`` event) and marks ``aborted`` every run left ``running`` by a process of this
host that is gone (see :func:`process_alive`), with ``ended_at`` = its last stored frame's
``published_at`` (or ``started_at``) and a ``run_aborted`` event. Runs of other hosts are left
alone.

Any other failure in the writer thread (a constraint, a corrupt file) is kept and raised as
``StorageError`` by the next ``write``, ``event``, ``start_run``, ``end_run`` or ``close``.
``close`` writes everything queued before it returns; call it from ``finally`` (or use the writer
as a context manager) so that a ``KeyboardInterrupt`` loses nothing. If the database is still
blocked at ``close``'s timeout the rows go to the spill file (written back by the next writer on
this database) and ``close`` raises ``StorageError`` saying so.

Usage::

    with SqliteWriter.from_config(cfg.storage) as writer:      # opens, or raises StorageError
        writer.start_run(cfg.model_dump(mode="json"), versions, source=uri, strategy="ASYNC_OVERLAY")
        for result in results:
            writer.write(result)
        writer.end_run("completed", {"stages": summarize(...)})
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import socket
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, InvalidStateError
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from sqlite_utils import Database

from config.errors import StorageError
from config.schema import FusionStrategyName, StorageConfig
from pipeline.types import CountResult, FusedResult, MetadataRecord, OverlayInfo, StageTimings, WorkRecord
from storage.schema import TABLES, create_schema, to_json, utc_iso, utc_now, write_transaction

if TYPE_CHECKING:
    from pipeline.types import TrackingRecord

log = logging.getLogger("people_counter.storage")

_FIX_HINT = "choose a writable file with --db PATH or storage.db_path in config/pipeline.yaml"


def count_rows(
    run_id: int,
    *,
    stream_id: str,
    frame_index: int,
    pts: float,
    strategy: str,
    counts: CountResult,
    missing: Mapping[str, str],
    overlays: Iterable[OverlayInfo],
    timings: StageTimings,
    counts_frame_index: int | None,
    counts_age_ms: float | None,
    published_at: str,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The ``frames`` row of one frame's counts and the ``frame_timings`` rows its publication carries.

    Plain Python values; an unknown count is None (NULL), never 0, with ``unknown_reason``.
    Each timing row is filed under the frame its figure belongs to (``timings.by_frame()``), which
    may be older than ``frame_index``: under ASYNC_OVERLAY a publication carries the branch work
    of the frames finalized since the previous one.
    """
    missing = dict(missing)
    row = {
        "run_id": run_id,
        "frame_index": int(frame_index),
        "pts": float(pts),
        "stream_id": stream_id,
        "strategy": str(strategy),
        "partial": int(bool(missing)),
        "fused_count": _number(counts.fused, float),
        "detection_count": _number(counts.detection, int),
        "density_count": _number(counts.density, float),
        "policy": counts.policy,
        "region_source": to_json(counts.region_source),
        "zones_json": to_json({z: _number(v, float) for z, v in counts.zones.items()}),
        "late_branches": to_json([b for b, why in missing.items() if why == "late"]),
        "overlays_json": to_json([{"branch": o.branch, "frame_index": o.frame_index, "lag_ms": o.lag_ms} for o in overlays]),
        "published_at": published_at,
        "unknown_reason": counts.unknown_reason if counts.fused is None else None,
        "missing_json": to_json(missing),
        "counts_frame_index": _number(counts_frame_index, int),
        "counts_age_ms": _number(counts_age_ms, float),
        **tracking_columns(counts.tracking),
        "region_counts_json": to_json(counts.region_counts),
        "calibration_json": None if counts.calibration is None else to_json(counts.calibration.to_dict()),
    }
    return row, frame_timing_rows(run_id, timings)


def tracking_columns(tracked: Any) -> dict[str, Any]:
    """The ``frames`` columns of a counted frame's ``pipeline.tracking.TrackedFrame`` (None: tracking
    off, all NULL): ``confirmed_count`` (None when unknown), ``occupancy_json`` (zone -> int or
    null), ``line_counts_json`` (line -> ``{"in": n, "out": m}`` since the run began)."""
    if tracked is None:
        return {"confirmed_count": None, "occupancy_json": None, "line_counts_json": None}
    return {
        "confirmed_count": _number(tracked.confirmed_count, int),
        "occupancy_json": to_json({z: _number(v, int) for z, v in tracked.occupancy.items()}),
        "line_counts_json": to_json({name: {"in": c.in_count, "out": c.out_count} for name, c in tracked.line_counts.items()}),
    }


def tracking_rows(record: TrackingRecord, run_id: int, published_at: str) -> dict[str, list[dict[str, Any]]]:
    """The ``crossings``, ``zone_visits`` and ``static_tracks`` rows of one frame's tracking.

    A static track's row is its sighting on this frame (a track flagged static and matched on it;
    one held through a miss is not seen): the writer inserts the first and moves ``last_*`` with
    the later ones.
    """
    tracked = record.tracking
    stream = record.stream_id
    crossings = [
        {
            "run_id": run_id, "stream_id": stream, "frame_index": int(c.frame_index), "pts": float(c.pts),
            "line": c.line, "track_id": int(c.track_id), "direction": c.direction, "published_at": published_at,
        }
        for c in tracked.crossings
    ]
    visits = [
        {
            "run_id": run_id, "stream_id": stream, "zone": e.zone, "track_id": int(e.track_id),
            "entered_pts": float(e.entered_pts), "left_pts": float(e.left_pts), "dwell_s": float(e.dwell_s),
            "frame_index": int(e.frame_index), "published_at": published_at,
        }
        for e in tracked.zone_exits
    ]
    static = [
        {
            "run_id": run_id, "stream_id": stream, "track_id": int(t.id),
            "first_frame": int(record.frame_index), "last_frame": int(record.frame_index),
            "first_pts": float(record.pts), "last_pts": float(record.pts),
            "first_published_at": published_at, "last_published_at": published_at,
            "xyxy_json": to_json(t.xyxy), "allowed": int(bool(t.allowed)),
        }
        for t in tracked.tracks
        if t.static and t.missed_frames == 0
    ]
    return {"crossings": crossings, "zone_visits": visits, "static_tracks": static}


def frame_timing_rows(run_id: int, timings: StageTimings) -> list[dict[str, Any]]:
    """The ``frame_timings`` rows of a publication's timings, each under the frame it belongs to."""
    return [
        {"run_id": run_id, "frame_index": int(idx), "stage": stage, "ms": float(ms)}
        for idx, figures in timings.by_frame().items()
        for stage, ms in figures.items()
    ]


def _number(value: Any, kind: Callable[[Any], Any]) -> Any:
    # None stays None: SQLite NULL, the count contract's "unknown".
    return None if value is None else kind(value)


def frame_rows(result: FusedResult, run_id: int, published_at: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The ``frames`` row and the ``frame_timings`` rows of one published (not ``raw``) result."""
    meta = result.frame
    return count_rows(
        run_id,
        stream_id=meta.stream_id,
        frame_index=meta.frame_index,
        pts=meta.pts,
        strategy=result.strategy,
        counts=result.counts,
        missing=result.missing,
        overlays=result.overlays,
        timings=result.timings,
        counts_frame_index=result.counts_frame_index,
        counts_age_ms=result.counts_age_ms,
        published_at=published_at,
    )


def metadata_rows(record: MetadataRecord, run_id: int, published_at: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The ``frames`` row and the ``frame_timings`` rows of a RAW_STREAM_WITH_METADATA record.

    Its counts are those of the record's own frame (``counts_frame_index == frame_index``).
    """
    return count_rows(
        run_id,
        stream_id=record.stream_id,
        frame_index=record.frame_index,
        pts=record.pts,
        strategy=FusionStrategyName.RAW_STREAM_WITH_METADATA.value,
        counts=record.counts,
        missing=record.missing,
        overlays=record.overlays,
        timings=record.timings,
        counts_frame_index=record.frame_index,
        counts_age_ms=record.counts_age_ms,
        published_at=published_at,
    )


# --- faults worth waiting for, and who is alive ------------------------------------------------

_LOCKED_CODES = frozenset({5, 6})  # SQLITE_BUSY, SQLITE_LOCKED
_FULL_CODES = frozenset({13})  # SQLITE_FULL
_IO_CODES = frozenset({10, 14})  # SQLITE_IOERR, SQLITE_CANTOPEN


def fault_reason(error: BaseException) -> str | None:
    """``locked``, ``disk_full`` or ``io_error`` for a fault that may pass (retry it); None otherwise.

    A constraint, a corrupt file or a bug is not retried: the writer fails with it.
    """
    if isinstance(error, sqlite3.Error):
        code = getattr(error, "sqlite_errorcode", None)
        if code is not None:
            primary = code & 0xFF  # extended codes (SQLITE_IOERR_WRITE, ...) keep the primary in the low byte
            if primary in _LOCKED_CODES:
                return "locked"
            if primary in _FULL_CODES:
                return "disk_full"
            return "io_error" if primary in _IO_CODES else None
        text = str(error).lower()
        if "locked" in text or "busy" in text:
            return "locked"
        if "database or disk is full" in text:
            return "disk_full"
        return "io_error" if "disk i/o error" in text else None
    if isinstance(error, OSError):
        return "disk_full" if error.errno in (errno.ENOSPC, errno.EDQUOT) else "io_error"
    return None


def _proc_stat(pid: int) -> tuple[str, str] | None:
    """(state, start time in clock ticks since boot) of ``pid`` from ``/proc``; None where unknown."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rfind(")") + 2 :].split()  # the command name may hold spaces and ')'
    return (fields[0], fields[19]) if len(fields) > 19 else None


def process_start(pid: int) -> str | None:
    """The start time of ``pid`` (``/proc/<pid>/stat`` field 22), to tell a reused pid apart; None where unknown."""
    stat = _proc_stat(pid)
    return None if stat is None else stat[1]


def process_alive(pid: int, proc_start: str | None = None) -> bool:
    """Whether process ``pid`` of this host still runs (and, given ``proc_start``, is the same process).

    ``os.kill(pid, 0)`` raising ``ProcessLookupError`` means gone; a zombie (killed, not yet
    reaped) is gone too; a live pid whose start time differs from ``proc_start`` was reused by
    another process.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, owned by another user
    stat = _proc_stat(pid)
    if stat is None:
        return True
    state, start = stat
    if state in ("Z", "X"):
        return False
    return proc_start is None or start == proc_start


def abort_dead_runs(
    db: Database, host: str, clock: Callable[[], datetime], alive: Callable[[int, str | None], bool] = process_alive
) -> list[dict[str, Any]]:
    """Mark ``aborted`` the runs left ``running`` by a process of ``host`` that is gone; returns them.

    ``ended_at`` becomes the ``published_at`` of the run's last stored frame (``started_at`` when
    it has none); each gets a ``run_aborted`` event stamped ``clock()``. A run of another host, or one without a pid
    (written before schema version 2), is left alone: nothing here can tell whether it is alive.
    """
    found = db.execute("SELECT id, pid, host, proc_start, started_at FROM runs WHERE status = 'running'").fetchall()
    aborted = []
    for run_id, pid, run_host, proc_start, started_at in found:
        if pid is None or run_host != host or alive(int(pid), proc_start):
            continue
        last, frames = db.execute(
            "SELECT MAX(published_at), COUNT(*) FROM frames WHERE run_id = ?", [run_id]
        ).fetchone()
        ended_at = last or started_at
        info = {"run_id": run_id, "pid": pid, "host": run_host, "ended_at": ended_at, "frames": frames}
        message = (
            f"run {run_id} was left running by process {pid} on {run_host}, which is gone; "
            f"marked aborted at its last stored frame ({ended_at}, {frames} frames)"
        )
        with write_transaction(db):
            db.table("runs").update(run_id, {"status": "aborted", "ended_at": ended_at})
            db.table("events").insert(
                {"run_id": run_id, "ts": utc_iso(clock()), "kind": "run_aborted", "message": message, "data_json": to_json(info)}
            )
        log.warning("%s", message)
        aborted.append(info)
    return aborted


# --- queue items -------------------------------------------------------------------------------


@dataclass(slots=True)
class _Rows:
    """Rows to insert (``frames``, ``events``, ``crossings``, ``zone_visits``; ``frame_timings`` for
    timings alone; ``static_tracks`` / ``static_updates`` upserted: a first sighting, later ones) or
    a run's end (``run_end``: one ``runs`` update). ``timings`` go with a ``frames`` row (or alone).

    ``enqueued`` is ``time.monotonic()`` at ``put``, the start of its flush deadline.
    """

    table: str
    rows: list[dict[str, Any]]
    timings: list[dict[str, Any]] = field(default_factory=list)
    enqueued: float = 0.0

    def to_line(self) -> str:
        return json.dumps({"table": self.table, "rows": self.rows, "timings": self.timings}, separators=(",", ":"))

    @staticmethod
    def from_line(line: str) -> _Rows:
        item = json.loads(line)
        return _Rows(item["table"], item["rows"], item["timings"])


@dataclass(slots=True)
class _Call:
    """Run ``fn(db)`` in the writer thread after writing what came before; answer through ``future``.

    A caller that stops waiting cancels ``future``; the writer then skips ``fn``.
    """

    fn: Callable[[Database], Any]
    future: Future[Any]


@dataclass(slots=True)
class _Stop:
    """Sentinel: write everything, then end the writer thread; give up at ``deadline`` (monotonic)."""

    deadline: float


_QueueItem = _Rows | _Call | _Stop

_DROPPABLE = frozenset({"frames", "static_updates"})
"""Items dropped beyond ``max_memory_rows`` (counted and reported): frame rows, and sightings of
static tracks already stored (``static_updates``: they only move a row's ``last_*``)."""

_STATIC_SEEN_MAX = 4096  # static tracks remembered as stored; one forgotten is sent again as new (an upsert)

_STATIC_UPDATE = ("last_frame", "last_pts", "last_published_at", "xyxy_json", "allowed")
_STATIC_UPSERT = (
    f"INSERT INTO static_tracks ({', '.join(TABLES['static_tracks'].columns)}) "
    f"VALUES ({', '.join('?' * len(TABLES['static_tracks'].columns))}) "
    f"ON CONFLICT ({', '.join(TABLES['static_tracks'].unique)}) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in _STATIC_UPDATE)
    + " WHERE excluded.last_frame >= static_tracks.last_frame"
)
"""Insert a static track's first sighting, move ``last_*`` to a later one (never back)."""

_SPILL_NAME = re.compile(r"^(?P<db>.+)\.spill\.(?P<pid>\d+)\.(?P<seq>\d+)@(?P<host>.+)\.jsonl$")
_active_spills: set[Path] = set()  # spill files of live writers in this process
_active_lock = threading.Lock()
_spill_seq = iter(range(1, 1 << 62))


class _SpillFile:
    """Rows waiting for the database on disk, JSON lines, oldest first; the writer thread's alone."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows = 0  # lines written, not yet committed to the database
        self._offset = 0  # bytes already committed to the database

    def append(self, items: list[_Rows]) -> None:
        """Append ``items``; on failure the file is as before (a torn line is cut off) and OSError raised."""
        data = "".join(item.to_line() + "\n" for item in items).encode()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("ab") as f:
            size = f.tell()
            try:
                f.write(data)
                f.flush()
            except OSError:
                with contextlib.suppress(OSError):
                    f.truncate(size)
                raise
        self.rows += len(items)

    def read(self, n: int) -> tuple[list[_Rows], int]:
        """Up to ``n`` of the oldest items, and the offset to :meth:`consume` once they are committed."""
        items = []
        with self.path.open("rb") as f:
            f.seek(self._offset)
            for _ in range(n):
                line = f.readline()
                if not line:
                    break
                items.append(_Rows.from_line(line.decode()))
            return items, f.tell()

    def consume(self, count: int, offset: int) -> None:
        self.rows -= count
        self._offset = offset
        if self.rows <= 0:
            self.remove()

    def remove(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self.rows = 0
        self._offset = 0


@dataclass(slots=True)
class _Blockage:
    """A storage fault in progress (the writer thread's), and what it did to the rows."""

    reason: str
    error: str
    since: float
    delay: float
    retry_at: float
    retries: int = 0
    spooled: int = 0
    spilled: int = 0
    dropped: int = 0
    spill_failed: bool = False  # warned once that the spill file cannot be written
    run_id: int | None = None  # its events belong to the run open when it began (close() may end it meanwhile)


@dataclass(slots=True)
class _Backlog:
    """What the writer thread has taken from the inbox and not yet committed, oldest first.

    The spill file's rows precede ``memory``'s; calls wait in ``memory`` among the rows.
    """

    memory: deque[_Rows | _Call] = field(default_factory=deque)
    memory_rows: int = 0
    spill: _SpillFile | None = None
    blockage: _Blockage | None = None
    spill_retry_at: float = 0.0
    stop: _Stop | None = None

    def empty(self) -> bool:
        return not self.memory and (self.spill is None or self.spill.rows == 0)


class SqliteWriter:
    """Writes published results, runs and events to a SQLite database from one writer thread.

    Construct, then :meth:`start` (or enter the context manager): that opens the database in the
    writer thread, recovers what dead writers left (spill files, ``running`` runs), and raises
    ``StorageError`` at once if the path cannot be written, before any frame is processed.
    ``write``/``event`` return quickly and may be called from any thread;
    ``start_run``/``end_run``/``flush`` wait for the writer thread. ``clock`` gives the wall-clock
    time of ``published_at``, ``started_at``/``ended_at`` and event ``ts`` (tests control it).
    Memory is bounded: at most ``max_memory_rows`` rows in the inbox and as many in the spool.
    """

    def __init__(
        self,
        db_path: str | Path,
        batch_size: int = 64,
        flush_interval_s: float = 0.5,
        queue_size: int = 1024,
        put_timeout_s: float = 2.0,
        busy_timeout_s: float = 1.0,
        clock: Callable[[], datetime] = utc_now,
        *,
        spool_rows: int = 5_000,
        max_memory_rows: int = 20_000,
        spill_dir: str | Path | None = None,
        retry_initial_s: float = 0.05,
        retry_max_s: float = 2.0,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size: expected >= 1, got {batch_size}")
        if flush_interval_s <= 0 or put_timeout_s <= 0 or busy_timeout_s < 0:
            raise ValueError("flush_interval_s and put_timeout_s must be > 0, busy_timeout_s >= 0")
        if queue_size < 1:
            raise ValueError(f"queue_size: expected >= 1, got {queue_size}")
        if not 1 <= spool_rows <= max_memory_rows or max_memory_rows < queue_size:
            raise ValueError(
                f"expected 1 <= spool_rows <= max_memory_rows and queue_size <= max_memory_rows, got "
                f"spool_rows={spool_rows}, max_memory_rows={max_memory_rows}, queue_size={queue_size}"
            )
        if not 0 < retry_initial_s <= retry_max_s:
            raise ValueError(f"expected 0 < retry_initial_s <= retry_max_s, got {retry_initial_s}, {retry_max_s}")
        self.db_path = Path(db_path)
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self.queue_size = queue_size
        self.put_timeout_s = put_timeout_s
        self.busy_timeout_s = busy_timeout_s
        self.spool_rows = spool_rows
        self.max_memory_rows = max_memory_rows
        self.spill_dir = Path(spill_dir) if spill_dir is not None else self.db_path.parent
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self.host = socket.gethostname()
        self.spill_path = self.spill_dir / f"{self.db_path.name}.spill.{os.getpid()}.{next(_spill_seq)}@{self.host}.jsonl"
        self._clock = clock
        # The inbox: producers append, the writer thread takes. One deque keeps the order; the
        # condition wakes the writer for new items and producers waiting for room.
        self._inbox: deque[_QueueItem] = deque()
        self._inbox_cond = threading.Condition(threading.Lock())
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        # Producers (write/event/_call) register while they enqueue, so close() can wait for them
        # and put its stop sentinel last: nothing lands in the queue behind it, unwritten.
        self._producers = threading.Condition()
        self._inflight = 0
        self._lock = threading.Lock()  # guards the counters below
        self._failure: BaseException | None = None
        self._failure_msg = ""
        self._closed = False
        self._run_id: int | None = None
        self._frames_written = 0
        self._tracking_written = 0
        # (run, stream, track) of static tracks already queued: their later sightings may be dropped
        self._static_seen: dict[tuple[int, str, int], None] = {}
        self._events_written = 0
        self._batches = 0
        self._blocked_writes = 0
        self._blocked_ms = 0.0
        self._max_blocked_ms = 0.0
        self._dropped_rows = 0
        self._inbox_dropped = 0  # dropped by producers, not yet reported by the writer thread
        self._spooled_rows = 0
        self._spilled_rows = 0
        self._blockages = 0
        self._retries = 0
        self._blocked: tuple[str, str, float] | None = None  # (reason, error, since) while blocked
        self._recovered: dict[str, Any] = {"aborted_runs": [], "spill_rows": 0}

    @classmethod
    def from_config(cls, config: StorageConfig, db_path: str | Path | None = None, **kwargs: Any) -> SqliteWriter:
        """A writer with ``config``'s path and batching; ``db_path`` (``--db PATH``) overrides the path."""
        return cls(
            db_path if db_path is not None else config.db_path,
            batch_size=config.batch_size,
            flush_interval_s=config.flush_interval_s,
            **kwargs,
        )

    # --- lifecycle -----------------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> SqliteWriter:
        """Open the database (creating folders and tables) in a new writer thread.

        Recovers what dead writers left (see :attr:`recovered`). Raises ``StorageError`` naming
        the path when it cannot be created or written.
        """
        if self._thread is not None:
            raise StorageError(f"SqliteWriter({self.db_path}) was already started")
        self._check_path()
        with _active_lock:
            _active_spills.add(self.spill_path)
        self._thread = threading.Thread(target=self._run, name=f"sqlite-writer:{self.db_path.name}", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            self._closed = True
            raise StorageError(f"cannot open the database {self.db_path}: no answer in {timeout:.0f} s")
        if self._failure is not None:
            self._thread.join(timeout)
            self._closed = True
            self._raise_failure()
        return self

    def _check_path(self) -> None:
        # Fail with the operator's words before the thread starts: sqlite's "unable to open
        # database file" names neither the path nor the fix.
        path = self.db_path
        if path.is_dir():
            raise StorageError(f"cannot open the database {path}: it is a directory; {_FIX_HINT}")
        if path.parent.exists() and not path.parent.is_dir():
            raise StorageError(f"cannot open the database {path}: {path.parent} is not a folder; {_FIX_HINT}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StorageError(
                f"cannot open the database {path}: cannot create the folder {path.parent} ({e.strerror or e}); {_FIX_HINT}"
            ) from e
        if path.exists() and not os.access(path, os.W_OK):
            raise StorageError(f"cannot open the database {path}: the file is read-only; {_FIX_HINT}")
        # SQLite also writes <db>-wal and <db>-shm beside the file, so the folder must be writable.
        if not os.access(path.parent, os.W_OK | os.X_OK):
            raise StorageError(f"cannot open the database {path}: the folder {path.parent} is not writable; {_FIX_HINT}")

    def close(self, timeout: float = 10.0) -> None:
        """Write everything queued, end an open run as ``interrupted``, stop the thread.

        Idempotent. Raises ``StorageError`` if the writer failed (now or earlier), or if the
        database stayed blocked for ``timeout`` seconds (the rows then wait in the spill file
        for the next writer of this database, and the message names it).
        """
        thread = self._thread
        deadline = time.monotonic() + timeout
        with self._producers:
            already_closed = self._closed
            self._closed = True
            self._producers.wait_for(lambda: self._inflight == 0, timeout)
        if already_closed:
            if thread is not None:
                thread.join(timeout)
            self._raise_failure()
            return
        if thread is None:
            return
        if self._run_id is not None and self._failure is None:
            self._put(self._end_item("interrupted", None))
            self._run_id = None
        if self._failure is None:
            self._put(_Stop(deadline))
        # The writer thread gives up at the deadline, then spills what is left: give it time to.
        thread.join(max(0.0, deadline - time.monotonic()) + 5.0)
        with _active_lock:
            _active_spills.discard(self.spill_path)
        if thread.is_alive():
            raise StorageError(
                f"the SQLite writer for {self.db_path} did not finish within {timeout:.1f} s; "
                f"{len(self._inbox)} items were still queued"
            )
        self._raise_failure()

    def __enter__(self) -> SqliteWriter:
        if self._thread is None:
            self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is None:
            self.close()
            return
        # Another error is already propagating: still flush, but do not replace that error.
        try:
            self.close()
        except StorageError as close_error:
            if not isinstance(exc, StorageError):
                log.error("while handling %s: %s", type(exc).__name__, close_error)
                exc.add_note(f"storage: {close_error}")

    # --- producer side (any thread) -------------------------------------------------------------

    def write(self, result: FusedResult) -> None:
        """Queue one published result; waits only when the inbox is full (up to ``put_timeout_s``).

        Every publication is a ``frames`` row, unknown counts included (ASYNC_OVERLAY's warm-up
        frames: ``counts_frame_index`` NULL, ``unknown_reason`` ``warming up``), except a ``raw``
        one (RAW_STREAM_WITH_METADATA): its counts, and its frame's timings, come in its metadata
        record (:meth:`write_metadata`), which stores the frame's row. The raw publication's own
        figures (``decode_ms`` and queue depths, which the record repeats, and the raw frame's
        ``end_to_end_ms``, which would clash with the record's) are not stored.
        """
        with self._producing():
            run_id = self._run_id
            if run_id is None:
                raise StorageError("SqliteWriter.write: no run is open; call start_run() first")
            if result.raw:
                return
            row, timings = frame_rows(result, run_id, utc_iso(self._clock()))
            self._put(_Rows("frames", [row], timings))

    def write_metadata(self, record: MetadataRecord) -> None:
        """Queue the ``frames`` row (counts of the record's own frame) and the timings of a
        RAW_STREAM_WITH_METADATA metadata record. Records may come out of frame order; readers
        order by frame."""
        with self._producing():
            run_id = self._run_id
            if run_id is None:
                raise StorageError("SqliteWriter.write_metadata: no run is open; call start_run() first")
            row, timings = metadata_rows(record, run_id, utc_iso(self._clock()))
            self._put(_Rows("frames", [row], timings))

    def write_work(self, record: WorkRecord) -> None:
        """Queue the ``frame_timings`` rows of branch work no publication reported (the tail of an
        ASYNC_OVERLAY run, from ``Fusion.flush``), each under its own frame; no ``frames`` row."""
        with self._producing():
            run_id = self._run_id
            if run_id is None:
                raise StorageError("SqliteWriter.write_work: no run is open; call start_run() first")
            self._put(_Rows("frame_timings", [], frame_timing_rows(run_id, record.timings)))

    def write_tracking(self, record: TrackingRecord) -> None:
        """Queue the rows of one finalized frame's tracking (``TrackingSink``): a ``crossings`` row
        per line crossing, a ``zone_visits`` row per zone exit, and the static tracks seen on the
        frame (``static_tracks``: inserted once per track, ``last_frame``/box moved later).

        Fusion publishes each frame's record once, so each crossing and exit is stored once per run
        (a row written twice, e.g. a spill file replayed, is ignored: unique indexes). Same batching,
        spool and fault handling as the frames rows; nothing here is dropped under a fault but the
        repeated sightings of a static track already queued (see the module docs).
        """
        with self._producing():
            run_id = self._run_id
            if run_id is None:
                raise StorageError("SqliteWriter.write_tracking: no run is open; call start_run() first")
            rows = tracking_rows(record, run_id, utc_iso(self._clock()))
            for table in ("crossings", "zone_visits"):
                if rows[table]:
                    self._put(_Rows(table, rows[table]))
            new, seen = [], []
            with self._lock:
                for row in rows["static_tracks"]:
                    key = (run_id, row["stream_id"], row["track_id"])
                    if key in self._static_seen:
                        seen.append(row)
                        continue
                    new.append(row)
                    self._static_seen[key] = None
                    if len(self._static_seen) > _STATIC_SEEN_MAX:
                        del self._static_seen[next(iter(self._static_seen))]
            if new:
                self._put(_Rows("static_tracks", new))
            if seen:
                self._put(_Rows("static_updates", seen))

    def event(self, kind: str, message: str, frame_index: int | None = None, data: Mapping[str, Any] | None = None) -> None:
        """Queue an event (``error``, ``reconnect``, ``strategy_switch``, ``drop``, ``stall``, ...) of the open run."""
        with self._producing():
            self._put(_Rows("events", [self._event_row(kind, message, frame_index, data)]))

    def start_run(
        self, config_snapshot: Mapping[str, Any], versions: Mapping[str, Any], source: str, strategy: str, timeout: float = 10.0
    ) -> int:
        """Insert a ``runs`` row (status ``running``, this process's pid/host) and make it the run of later writes.

        Returns its id. Waits for the database (up to ``timeout``: ``StorageError`` if it stays blocked).
        """
        self._check_open()
        if self._run_id is not None:
            raise StorageError(f"run {self._run_id} is still open; call end_run() before start_run()")
        pid = os.getpid()
        row = {
            "started_at": utc_iso(self._clock()),
            "status": "running",
            "source": source,
            "strategy": str(strategy),
            "config_json": to_json(config_snapshot),
            "versions_json": to_json(versions),
            "pid": pid,
            "host": self.host,
            "proc_start": process_start(pid),
        }

        def insert(db: Database) -> int:
            with write_transaction(db):
                return int(db.table("runs").insert(row).last_rowid or 0)

        run_id = int(self._call(insert, timeout))
        self._run_id = run_id
        return run_id

    def end_run(self, status: str, summary: Mapping[str, Any] | None = None, timeout: float = 10.0) -> None:
        """Close the open run with ``status`` and a JSON summary, after every row before it.

        ``status``: one of ``storage.schema.RUN_STATUSES`` (``completed``, ``completed_with_errors``,
        ``failed``, ``interrupted``, ``terminated``, ``aborted``); any string is stored. Waits up to
        ``timeout`` for it to be written; a database still blocked then is not an error here: the
        end waits in the spool with the rows (``close`` reports what could not be written).
        """
        self._check_open()
        if self._run_id is None:
            raise StorageError("SqliteWriter.end_run: no run is open")
        with self._producing():
            self._put(self._end_item(status, summary))
        self._run_id = None
        if not self._wait_written(timeout):
            log.warning("%s: the end of the run waits for the blocked database (%s)", self.db_path, self._blocked_text())

    def flush(self, timeout: float = 10.0) -> None:
        """Wait until everything queued so far is written (readers then see it).

        Raises ``StorageError`` if the database stays blocked for ``timeout`` seconds.
        """
        self._check_open()
        self._call(lambda db: None, timeout)

    @property
    def run_id(self) -> int | None:
        """The open run, or None."""
        return self._run_id

    @property
    def recovered(self) -> dict[str, Any]:
        """What :meth:`start` recovered: ``aborted_runs`` (one dict per run) and ``spill_rows``."""
        return self._recovered

    def stats(self) -> dict[str, float]:
        """Counters (all bounded): rows written, batches, inbox depth, waits, and the storage faults.

        ``blocked_writes``/``blocked_ms``/``max_blocked_ms``: how often/long ``write`` waited on a
        full inbox. ``spooled_rows``/``spilled_rows``/``dropped_rows``: rows that waited for a
        blocked database, went through the spill file, or had to be dropped; ``blockages``,
        ``retries``; ``blocked``: 1 while the database cannot be written.
        """
        with self._lock:
            return {
                "frames_written": self._frames_written,
                "tracking_rows_written": self._tracking_written,
                "events_written": self._events_written,
                "batches": self._batches,
                "queue_depth": len(self._inbox),
                "blocked_writes": self._blocked_writes,
                "blocked_ms": self._blocked_ms,
                "max_blocked_ms": self._max_blocked_ms,
                "spooled_rows": self._spooled_rows,
                "spilled_rows": self._spilled_rows,
                "dropped_rows": self._dropped_rows,
                "blockages": self._blockages,
                "retries": self._retries,
                "blocked": int(self._blocked is not None),
            }

    # --- internals: producer side ---------------------------------------------------------------

    def _event_row(self, kind: str, message: str, frame_index: int | None, data: Mapping[str, Any] | None) -> dict[str, Any]:
        return {
            "run_id": self._run_id,
            "ts": utc_iso(self._clock()),
            "kind": kind,
            "frame_index": frame_index,
            "message": message,
            "data_json": None if data is None else to_json(data),
        }

    def _end_item(self, status: str, summary: Mapping[str, Any] | None) -> _Rows:
        update = {
            "id": self._run_id,
            "ended_at": utc_iso(self._clock()),
            "status": status,
            "summary_json": None if summary is None else to_json(summary),
        }
        return _Rows("run_end", [update])

    @contextmanager
    def _producing(self) -> Iterator[None]:
        with self._producers:
            self._check_open()
            self._inflight += 1
        try:
            yield
        finally:
            with self._producers:
                self._inflight -= 1
                self._producers.notify_all()

    def _check_open(self) -> None:
        self._raise_failure()
        if self._thread is None:
            raise StorageError(f"SqliteWriter({self.db_path}) is not started; call start() or use it as a context manager")
        if self._closed:
            raise StorageError(f"SqliteWriter({self.db_path}) is closed")

    def _failure_error(self) -> StorageError:
        # A new exception each time: re-raising one instance would pile up tracebacks.
        error = StorageError(self._failure_msg)
        error.__cause__ = self._failure
        return error

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure_error()

    def _blocked_text(self) -> str:
        blocked = self._blocked
        if blocked is None:
            return "not blocked"
        reason, error, since = blocked
        return f"{reason.replace('_', ' ')} for {time.monotonic() - since:.1f} s: {error}"

    def _put(self, item: _QueueItem) -> None:
        with self._inbox_cond:
            if isinstance(item, _Rows):
                item.enqueued = time.monotonic()
                if len(self._inbox) >= self.queue_size:
                    self._wait_for_room()
                if item.table in _DROPPABLE and len(self._inbox) >= self.max_memory_rows:
                    # The writer thread is stuck in one call: keep memory bounded, and say so.
                    with self._lock:
                        self._dropped_rows += 1
                        self._inbox_dropped += 1
                    return
            self._inbox.append(item)
            self._inbox_cond.notify_all()

    def _wait_for_room(self) -> None:
        # Called holding the inbox lock. Short slices so a writer that dies while we wait is noticed.
        start = time.monotonic()
        end = start + self.put_timeout_s
        while len(self._inbox) >= self.queue_size and self._failure is None:
            remaining = end - time.monotonic()
            if remaining <= 0:
                break  # go on: the row joins the inbox beyond queue_size, up to max_memory_rows
            self._inbox_cond.wait(min(0.05, remaining))
        waited_ms = (time.monotonic() - start) * 1000.0
        with self._lock:
            self._blocked_writes += 1
            self._blocked_ms += waited_ms
            self._max_blocked_ms = max(self._max_blocked_ms, waited_ms)
        self._raise_failure()

    def _call(self, fn: Callable[[Database], Any], timeout: float) -> Any:
        future: Future[Any] = Future()
        deadline = time.monotonic() + timeout
        with self._producing():
            self._put(_Call(fn, future))
        try:
            return future.result(max(0.0, deadline - time.monotonic()))
        except FutureTimeout:
            future.cancel()
            self._raise_failure()
            if self._blocked is not None:
                raise StorageError(
                    f"the database {self.db_path} cannot be written ({self._blocked_text()}); gave up waiting after "
                    f"{timeout:.1f} s (the rows are kept and written when it works again)"
                ) from None
            raise StorageError(f"the SQLite writer for {self.db_path} did not answer within {timeout:.1f} s") from None
        except Exception:
            self._raise_failure()
            raise

    def _wait_written(self, timeout: float) -> bool:
        """Whether everything queued so far was written within ``timeout`` (False: still blocked)."""
        try:
            self._call(lambda db: None, timeout)
        except StorageError:
            self._raise_failure()
            return False
        return True

    def _fail(self, message: str, error: BaseException, report: bool = True) -> None:
        self._failure_msg = message
        self._failure = error
        if report:  # a failure while running is logged here too: nobody may call write() again
            log.error("%s", message, exc_info=error)

    # --- internals: the writer thread -----------------------------------------------------------

    def _connect(self) -> Database:
        db = Database(self.db_path)
        try:
            db.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_s * 1000)}")
            db.enable_wal()
            if db.journal_mode != "wal":
                log.warning("%s: WAL mode unavailable (journal_mode=%s); readers may block the writer", self.db_path, db.journal_mode)
            db.execute("PRAGMA synchronous = NORMAL")  # WAL: no fsync per batch; a power cut may lose the last batches, never corrupts
            db.execute("PRAGMA foreign_keys = ON")
            create_schema(db)
        except BaseException:
            db.close()
            raise
        return db

    def _open(self) -> Database:
        db = self._connect()
        try:
            self._recover(db)
        except BaseException:
            db.close()
            raise
        return db

    def _recover(self, db: Database) -> None:
        """Write back the spill files dead writers of this host left, then abort their runs."""
        spill_rows = 0
        if self.spill_dir.is_dir():
            for path in sorted(self.spill_dir.iterdir()):
                match = _SPILL_NAME.match(path.name)
                if match is None or match["db"] != self.db_path.name or match["host"] != self.host:
                    continue
                pid = int(match["pid"])
                with _active_lock:
                    active = path in _active_spills
                if active or (pid != os.getpid() and process_alive(pid)):
                    continue
                spill_rows += self._replay(db, path)
        aborted = abort_dead_runs(db, self.host, self._clock)
        self._recovered = {"aborted_runs": aborted, "spill_rows": spill_rows}

    def _replay(self, db: Database, path: Path) -> int:
        written = torn = 0
        run_id = None
        with path.open("rb") as f:
            while True:
                items = []
                for line in f:
                    try:
                        items.append(_Rows.from_line(line.decode()))
                    except (ValueError, KeyError):
                        torn += 1  # a line cut short by the kill
                        continue
                    if len(items) >= self.batch_size:
                        break
                if not items:
                    break
                if run_id is None:
                    run_id = next((r["run_id"] for i in items if i.table == "frames" for r in i.rows), None)
                self._insert(db, items)
                written += len(items)
        message = f"wrote back {written} rows a dead writer left in {path}" + (f" ({torn} torn lines skipped)" if torn else "")
        row = self._event_row("spill_recovered", message, None, {"file": str(path), "rows": written, "torn": torn})
        row["run_id"] = run_id
        with write_transaction(db):
            db.table("events").insert(row)
        path.unlink()
        log.warning("%s: %s", self.db_path, message)
        return written

    def _run(self) -> None:
        """Writer thread: open, then insert batches until the stop sentinel; never dies silently."""
        try:
            db: Database | None = self._open()
        except StorageError as e:
            self._fail(f"cannot open the database {self.db_path}: {e}", e, report=False)
            self._ready.set()
            return
        except Exception as e:
            self._fail(f"cannot open the database {self.db_path}: {e}; {_FIX_HINT}", e, report=False)
            self._ready.set()
            return
        self._ready.set()
        backlog = _Backlog()
        try:
            while True:
                self._take_inbox(backlog, self._wait_s(backlog))
                self._bound_memory(backlog)
                now = time.monotonic()
                blockage = backlog.blockage
                if blockage is not None and backlog.stop is not None and now >= backlog.stop.deadline:
                    self._give_up(backlog)
                    return
                if blockage is not None and now < blockage.retry_at:
                    continue
                if not self._due(backlog, now):
                    if backlog.stop is not None and backlog.empty():
                        return
                    continue
                try:
                    if db is None:
                        db = self._connect()
                    self._step(db, backlog)
                except Exception as e:
                    reason = fault_reason(e)
                    if reason is None:
                        raise
                    self._on_fault(backlog, reason, e)
                    if reason != "locked" and db is not None:  # a fresh connection after a disk fault
                        with contextlib.suppress(sqlite3.Error):
                            db.close()
                        db = None
                    continue
                if backlog.blockage is not None and backlog.empty():
                    self._on_resumed(backlog)
        except BaseException as e:
            spilled = backlog.spill.rows if backlog.spill is not None else 0
            lost = backlog.memory_rows + spilled + len(self._inbox)
            self._fail(f"writing to the database {self.db_path} failed: {e}; up to {lost} queued items were not written", e)
            self._answer_calls(backlog)
        finally:
            if db is not None:
                db.close()

    def _wait_s(self, backlog: _Backlog) -> float:
        now = time.monotonic()
        blockage = backlog.blockage
        if blockage is not None:
            until = blockage.retry_at if backlog.stop is None else min(blockage.retry_at, backlog.stop.deadline)
            return max(0.0, until - now)
        if backlog.stop is not None or self._due(backlog, now):
            return 0.0
        head = backlog.memory[0] if backlog.memory else None
        if isinstance(head, _Rows):
            return max(0.0, head.enqueued + self.flush_interval_s - now)
        return 1.0  # idle: woken by the next item

    def _due(self, backlog: _Backlog, now: float) -> bool:
        """Whether the backlog should be written now (a batch is full or old, or someone waits)."""
        if backlog.blockage is not None or (backlog.spill is not None and backlog.spill.rows > 0):
            return True
        memory = backlog.memory
        if not memory:
            return False
        if backlog.stop is not None or backlog.memory_rows >= self.batch_size or len(memory) > backlog.memory_rows:
            return True  # the last: a call waits among the rows
        head = memory[0]
        return isinstance(head, _Call) or head.enqueued + self.flush_interval_s <= now

    def _take_inbox(self, backlog: _Backlog, wait_s: float) -> None:
        with self._inbox_cond:
            if not self._inbox and wait_s > 0:
                self._inbox_cond.wait(wait_s)
            items = list(self._inbox)
            self._inbox.clear()
            self._inbox_cond.notify_all()  # producers waiting for room
        blockage = backlog.blockage
        for item in items:
            if isinstance(item, _Stop):
                backlog.stop = item
                continue
            backlog.memory.append(item)
            if isinstance(item, _Rows):
                backlog.memory_rows += 1
                if blockage is not None:
                    blockage.spooled += 1
        with self._lock:
            dropped, self._inbox_dropped = self._inbox_dropped, 0
            if blockage is not None:
                self._spooled_rows += sum(isinstance(i, _Rows) for i in items)
        if dropped:
            self._report_drops(backlog, dropped)

    def _bound_memory(self, backlog: _Backlog) -> None:
        """Spill the oldest rows beyond ``spool_rows``; if the spill fails, drop frames beyond ``max_memory_rows``."""
        if backlog.memory_rows <= self.spool_rows:
            return
        now = time.monotonic()
        if now >= backlog.spill_retry_at:
            if backlog.spill is None:
                backlog.spill = _SpillFile(self.spill_path)
            taken: list[_Rows | _Call] = []
            chunk: list[_Rows] = []
            while backlog.memory and backlog.memory_rows - len(chunk) > self.spool_rows // 2:
                item = backlog.memory.popleft()
                taken.append(item)
                if isinstance(item, _Rows):
                    chunk.append(item)
            try:
                backlog.spill.append(chunk)
            except OSError as e:
                backlog.memory.extendleft(reversed(taken))
                backlog.spill_retry_at = now + self.retry_max_s
                if backlog.blockage is not None:
                    if backlog.blockage.spill_failed:
                        return self._drop_beyond_cap(backlog)
                    backlog.blockage.spill_failed = True
                log.warning(
                    "%s: cannot spill %d rows to %s (%s); they stay in memory (at most %d rows)",
                    self.db_path, len(chunk), backlog.spill.path, e, self.max_memory_rows,
                )
            else:
                backlog.memory.extendleft(reversed([i for i in taken if isinstance(i, _Call)]))
                backlog.memory_rows -= len(chunk)
                if backlog.blockage is not None:
                    backlog.blockage.spilled += len(chunk)
                with self._lock:
                    self._spilled_rows += len(chunk)
                return
        self._drop_beyond_cap(backlog)

    def _drop_beyond_cap(self, backlog: _Backlog) -> None:
        excess = backlog.memory_rows - self.max_memory_rows
        if excess <= 0:
            return
        kept: list[_Rows | _Call] = []
        dropped = 0
        while dropped < excess and backlog.memory:
            item = backlog.memory.pop()  # the newest frames go: the older ones are the run's history
            if isinstance(item, _Rows) and item.table in _DROPPABLE:
                dropped += 1
            else:
                kept.append(item)
        backlog.memory.extend(reversed(kept))
        backlog.memory_rows -= dropped
        with self._lock:
            self._dropped_rows += dropped
        self._report_drops(backlog, dropped)

    def _report_drops(self, backlog: _Backlog, dropped: int) -> None:
        blockage = backlog.blockage
        first = blockage is None or blockage.dropped == 0
        if blockage is not None:
            blockage.dropped += dropped
        if not first:
            return  # one event per blockage; storage_resumed reports the total
        reason = blockage.reason if blockage is not None else "slow"
        message = (
            f"dropped {dropped} frame rows (or repeated static-track sightings): the database cannot be written "
            f"({reason}) and neither can the spill file {self.spill_path}; at most {self.max_memory_rows} rows are kept in memory"
        )
        log.warning("%s: %s", self.db_path, message)
        data = {"reason": reason, "dropped": dropped, "max_memory_rows": self.max_memory_rows, "spill_file": str(self.spill_path)}
        row = self._event_row("storage_dropped", message, None, data)
        if blockage is not None and blockage.run_id is not None:
            row["run_id"] = blockage.run_id
        backlog.memory.append(_Rows("events", [row], enqueued=time.monotonic()))
        backlog.memory_rows += 1

    def _step(self, db: Database, backlog: _Backlog) -> None:
        """Write one batch (spill file first) or answer one call; a fault raises and leaves the backlog as it was."""
        spill = backlog.spill
        if spill is not None and spill.rows > 0:
            items, offset = spill.read(self.batch_size)
            self._insert(db, items)
            spill.consume(len(items), offset)
            return
        memory = backlog.memory
        if not memory:
            if backlog.blockage is not None:  # nothing left to retry with: probe the write lock
                with write_transaction(db):
                    pass
            return
        head = memory[0]
        if isinstance(head, _Call):
            if not head.future.cancelled():
                result = head.fn(db)
                with contextlib.suppress(InvalidStateError):  # its caller gave up meanwhile
                    head.future.set_result(result)
            memory.popleft()
            return
        batch: list[_Rows] = []
        for item in memory:
            if not isinstance(item, _Rows) or len(batch) >= self.batch_size:
                break
            batch.append(item)
        self._insert(db, batch)
        for _ in batch:
            memory.popleft()
        backlog.memory_rows -= len(batch)

    def _insert(self, db: Database, items: list[_Rows]) -> None:
        frames = [r for p in items if p.table == "frames" for r in p.rows]
        timings = [t for p in items for t in p.timings]
        events = [r for p in items if p.table == "events" for r in p.rows]
        ends = [r for p in items if p.table == "run_end" for r in p.rows]
        crossings = [r for p in items if p.table == "crossings" for r in p.rows]
        visits = [r for p in items if p.table == "zone_visits" for r in p.rows]
        static = [r for p in items if p.table in ("static_tracks", "static_updates") for r in p.rows]
        with write_transaction(db):
            if frames:
                db.table("frames").insert_all(frames)
            if timings:
                db.table("frame_timings").insert_all(timings)
            if events:
                db.table("events").insert_all(events)
            # OR IGNORE: a row already stored (a spill file written back twice) is stored once
            if crossings:
                db.table("crossings").insert_all(crossings, ignore=True)
            if visits:
                db.table("zone_visits").insert_all(visits, ignore=True)
            if static:
                columns = TABLES["static_tracks"].columns
                db.conn.executemany(_STATIC_UPSERT, [[r[c] for c in columns] for r in static])
            for end in ends:
                db.table("runs").update(end["id"], {k: v for k, v in end.items() if k != "id"})
        with self._lock:
            self._frames_written += len(frames)
            self._tracking_written += len(crossings) + len(visits) + len(static)
            self._events_written += len(events)
            self._batches += 1

    def _on_fault(self, backlog: _Backlog, reason: str, error: Exception) -> None:
        now = time.monotonic()
        blockage = backlog.blockage
        if blockage is not None:
            blockage.retries += 1
            blockage.error = str(error)
            blockage.delay = min(blockage.delay * 2.0, self.retry_max_s)
            blockage.retry_at = now + blockage.delay
            with self._lock:
                self._retries += 1
                self._blocked = (blockage.reason, blockage.error, blockage.since)
            return
        pending = backlog.memory_rows + (backlog.spill.rows if backlog.spill is not None else 0)
        blockage = _Blockage(reason, str(error), since=now, delay=self.retry_initial_s, retry_at=now + self.retry_initial_s)
        blockage.spooled = pending
        blockage.run_id = self._run_id
        backlog.blockage = blockage
        message = (
            f"the database cannot be written ({reason.replace('_', ' ')}: {error}); {pending} rows wait, "
            f"retried every {self.retry_initial_s:g}..{self.retry_max_s:g} s"
        )
        log.warning("%s: %s", self.db_path, message)
        data = {"reason": reason, "error": str(error), "pending_rows": pending}
        # First in the backlog: stored before the rows that waited.
        backlog.memory.appendleft(_Rows("events", [self._event_row("storage_blocked", message, None, data)], enqueued=now))
        backlog.memory_rows += 1
        with self._lock:
            self._blockages += 1
            self._spooled_rows += pending
            self._blocked = (reason, str(error), now)

    def _on_resumed(self, backlog: _Backlog) -> None:
        blockage = backlog.blockage
        assert blockage is not None
        backlog.blockage = None
        blocked_s = time.monotonic() - blockage.since
        message = (
            f"the database is written again after {blocked_s:.1f} s ({blockage.reason.replace('_', ' ')}); "
            f"{blockage.spooled} rows waited, {blockage.spilled} of them in the spill file, {blockage.dropped} dropped"
        )
        log.warning("%s: %s", self.db_path, message)
        data = {
            "reason": blockage.reason,
            "error": blockage.error,
            "blocked_s": round(blocked_s, 3),
            "retries": blockage.retries,
            "spooled": blockage.spooled,
            "spilled": blockage.spilled,
            "dropped": blockage.dropped,
        }
        row = self._event_row("storage_resumed", message, None, data)
        row["run_id"] = blockage.run_id if blockage.run_id is not None else row["run_id"]
        backlog.memory.append(_Rows("events", [row], enqueued=time.monotonic()))
        backlog.memory_rows += 1
        with self._lock:
            self._blocked = None

    def _give_up(self, backlog: _Backlog) -> None:
        """At ``close``'s deadline, still blocked: put what is left in the spill file for the next writer."""
        blockage = backlog.blockage
        assert blockage is not None
        rows = [i for i in backlog.memory if isinstance(i, _Rows)]
        spill = backlog.spill if backlog.spill is not None else _SpillFile(self.spill_path)
        what = f"the database {self.db_path} could not be written at close ({self._blocked_text()})"
        try:
            spill.append(rows)
        except OSError as e:
            message = (
                f"{what}; {len(rows)} rows were lost (the spill file {spill.path} cannot be written either: {e}); "
                f"{spill.rows} rows wait in {spill.path} for the next writer of this database"
            )
        else:
            message = (
                f"{what}; {spill.rows} rows wait in the spill file {spill.path}: the next writer that opens "
                "this database writes them back"
            )
        backlog.memory.clear()
        backlog.memory_rows = 0
        self._fail(message, StorageError(blockage.error))
        self._answer_calls(backlog)

    def _answer_calls(self, backlog: _Backlog) -> None:
        # Answer every waiting call so no caller hangs on a dead writer.
        with self._inbox_cond:
            items = [*backlog.memory, *self._inbox]
            self._inbox.clear()
            self._inbox_cond.notify_all()
        for item in items:
            if isinstance(item, _Call) and not item.future.done():
                with contextlib.suppress(InvalidStateError):
                    item.future.set_exception(self._failure_error())


__all__ = [
    "SqliteWriter",
    "abort_dead_runs",
    "count_rows",
    "fault_reason",
    "frame_rows",
    "frame_timing_rows",
    "metadata_rows",
    "process_alive",
    "tracking_columns",
    "tracking_rows",
]
