"""The SQLite writer: a ``Sink`` whose one thread owns the database connection.

The pipeline thread calls :meth:`SqliteWriter.write` once per published ``FusedResult``. ``write``
turns the result into rows at once (so no image or array is kept alive by the queue), stamps
``published_at``, and puts the rows on a bounded queue; the writer thread inserts them in batches
(``batch_size`` items or ``flush_interval_s`` after the oldest waiting one, whichever comes first),
each batch one transaction, in WAL mode so readers (the UI's history charts, exports) never block
it.

Nothing is dropped. When the queue is full ``write`` waits, up to ``put_timeout_s``, and counts the
wait (:meth:`SqliteWriter.stats`); if the writer still cannot keep up it raises ``StorageError``.
A failure in the writer thread is kept and raised as ``StorageError`` by the next ``write``,
``event``, ``start_run``, ``end_run`` or ``close``. ``close`` writes everything queued before it
returns; call it from ``finally`` (or use the writer as a context manager) so that a
``KeyboardInterrupt`` loses nothing.

Usage::

    with SqliteWriter.from_config(cfg.storage) as writer:      # opens, or raises StorageError
        writer.start_run(cfg.model_dump(mode="json"), versions, source=uri, strategy="ASYNC_OVERLAY")
        for result in results:
            writer.write(result)
        writer.end_run("completed", {"stages": summarize(...)})
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from sqlite_utils import Database

from config.errors import StorageError
from config.schema import StorageConfig
from pipeline.types import FusedResult
from storage.schema import create_schema, to_json, utc_iso, utc_now, write_transaction

log = logging.getLogger("people_counter.storage")

_FIX_HINT = "choose a writable file with --db PATH or storage.db_path in config/pipeline.yaml"


def count_rows(
    run_id: int,
    *,
    stream_id: str,
    frame_index: int,
    pts: float,
    strategy: str,
    partial: bool,
    counts: Any,
    late_branches: Any,
    overlays: Any,
    timings: Mapping[str, float],
    published_at: str,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The ``frames`` row and the ``frame_timings`` rows of one frame's counts (plain Python values)."""
    row = {
        "run_id": run_id,
        "frame_index": int(frame_index),
        "pts": float(pts),
        "stream_id": stream_id,
        "strategy": str(strategy),
        "partial": int(bool(partial)),
        "fused_count": float(counts.fused),
        "detection_count": int(counts.detection),
        "density_count": None if counts.density is None else float(counts.density),
        "policy": counts.policy,
        "region_source": to_json(counts.region_source),
        "zones_json": to_json(dict(counts.zones)),
        "late_branches": to_json(list(late_branches)),
        "overlays_json": to_json([{"branch": o.branch, "frame_index": o.frame_index, "lag_ms": o.lag_ms} for o in overlays]),
        "published_at": published_at,
    }
    rows = [
        {"run_id": run_id, "frame_index": row["frame_index"], "stage": stage, "ms": float(ms)}
        for stage, ms in timings.items()
    ]
    return row, rows


def frame_rows(result: FusedResult, run_id: int, published_at: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The ``frames`` row and the ``frame_timings`` rows of one published result."""
    meta = result.frame
    return count_rows(
        run_id,
        stream_id=meta.stream_id,
        frame_index=meta.frame_index,
        pts=meta.pts,
        strategy=result.strategy,
        partial=result.partial,
        counts=result.counts,
        late_branches=result.late_branches,
        overlays=result.overlays,
        timings=result.timings,
        published_at=published_at,
    )


# --- queue items -------------------------------------------------------------------------------


@dataclass(slots=True)
class _Rows:
    """Rows to insert; ``enqueued`` is ``time.monotonic()`` at ``put``, the start of its flush deadline."""

    table: str
    rows: list[dict[str, Any]]
    timings: list[dict[str, Any]] = field(default_factory=list)
    enqueued: float = 0.0


@dataclass(slots=True)
class _Call:
    """Run ``fn(db)`` in the writer thread after flushing what came before; answer through ``future``."""

    fn: Callable[[Database], Any]
    future: Future[Any]


class _Stop:
    """Sentinel: flush and end the writer thread."""


_STOP = _Stop()
_QueueItem = _Rows | _Call | _Stop


class SqliteWriter:
    """Writes published results, runs and events to a SQLite database from one writer thread.

    Construct, then :meth:`start` (or enter the context manager): that opens the database in the
    writer thread and raises ``StorageError`` at once if the path cannot be written, before any
    frame is processed. ``write``/``event`` return quickly and may be called from any thread;
    ``start_run``/``end_run``/``flush`` wait for the writer thread. ``clock`` gives the wall-clock
    time of ``published_at``, ``started_at``/``ended_at`` and event ``ts`` (tests control it).
    """

    def __init__(
        self,
        db_path: str | Path,
        batch_size: int = 64,
        flush_interval_s: float = 0.5,
        queue_size: int = 1024,
        put_timeout_s: float = 2.0,
        busy_timeout_s: float = 5.0,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size: expected >= 1, got {batch_size}")
        if flush_interval_s <= 0 or put_timeout_s <= 0 or busy_timeout_s < 0:
            raise ValueError("flush_interval_s and put_timeout_s must be > 0, busy_timeout_s >= 0")
        if queue_size < 1:
            raise ValueError(f"queue_size: expected >= 1, got {queue_size}")
        self.db_path = Path(db_path)
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self.put_timeout_s = put_timeout_s
        self.busy_timeout_s = busy_timeout_s
        self._clock = clock
        self._queue: queue.Queue[_QueueItem] = queue.Queue(maxsize=queue_size)
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
        self._events_written = 0
        self._batches = 0
        self._blocked_writes = 0
        self._blocked_ms = 0.0
        self._max_blocked_ms = 0.0

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

        Raises ``StorageError`` naming the path when it cannot be created or written.
        """
        if self._thread is not None:
            raise StorageError(f"SqliteWriter({self.db_path}) was already started")
        self._check_path()
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

        Idempotent. Raises ``StorageError`` if the writer failed (now or earlier) or could not
        finish within ``timeout`` seconds.
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
            end = self._end_run_fn("interrupted", None, self._clock())
            self._run_id = None
            self._put(_Call(end, Future()), deadline)
        if self._failure is None:
            self._put(_STOP, deadline)
        thread.join(max(0.0, deadline - time.monotonic()))
        if thread.is_alive():
            raise StorageError(
                f"the SQLite writer for {self.db_path} did not finish within {timeout:.1f} s; "
                f"{self._queue.qsize()} items were still queued"
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
        """Queue one published result; waits only when the queue is full (up to ``put_timeout_s``).

        A result without counts (``counts_frame_index is None``: a raw frame of
        RAW_STREAM_WITH_METADATA, whose counts come in its metadata record) is not a count row.
        """
        if result.counts_frame_index is None:
            return
        with self._producing():
            run_id = self._run_id
            if run_id is None:
                raise StorageError("SqliteWriter.write: no run is open; call start_run() first")
            row, timings = frame_rows(result, run_id, utc_iso(self._clock()))
            self._put(_Rows("frames", [row], timings))

    def write_metadata(self, record: Any) -> None:
        """Queue the count row of a RAW_STREAM_WITH_METADATA metadata record (``pipeline.fusion.MetadataRecord``)."""
        with self._producing():
            run_id = self._run_id
            if run_id is None:
                raise StorageError("SqliteWriter.write_metadata: no run is open; call start_run() first")
            row, timings = count_rows(
                run_id,
                stream_id=record.stream_id,
                frame_index=record.frame_index,
                pts=record.pts,
                strategy="RAW_STREAM_WITH_METADATA",
                partial=record.partial,
                counts=record.counts,
                late_branches=record.late_branches,
                overlays=record.overlays,
                timings=record.timings,
                published_at=utc_iso(self._clock()),
            )
            self._put(_Rows("frames", [row], timings))

    def event(self, kind: str, message: str, frame_index: int | None = None, data: Mapping[str, Any] | None = None) -> None:
        """Queue an event (``error``, ``reconnect``, ``strategy_switch``, ``drop``, ``stall``, ...) of the open run."""
        with self._producing():
            row = {
                "run_id": self._run_id,
                "ts": utc_iso(self._clock()),
                "kind": kind,
                "frame_index": frame_index,
                "message": message,
                "data_json": None if data is None else to_json(data),
            }
            self._put(_Rows("events", [row]))

    def start_run(
        self, config_snapshot: Mapping[str, Any], versions: Mapping[str, Any], source: str, strategy: str, timeout: float = 10.0
    ) -> int:
        """Insert a ``runs`` row (status ``running``) and make it the run of later writes; returns its id."""
        self._check_open()
        if self._run_id is not None:
            raise StorageError(f"run {self._run_id} is still open; call end_run() before start_run()")
        row = {
            "started_at": utc_iso(self._clock()),
            "status": "running",
            "source": source,
            "strategy": str(strategy),
            "config_json": to_json(config_snapshot),
            "versions_json": to_json(versions),
        }

        def insert(db: Database) -> int:
            with write_transaction(db):
                return int(db.table("runs").insert(row).last_rowid or 0)

        run_id = int(self._call(insert, timeout))
        self._run_id = run_id
        return run_id

    def end_run(self, status: str, summary: Mapping[str, Any] | None = None, timeout: float = 10.0) -> None:
        """Flush, then close the open run with ``status`` (``completed``, ``failed``, ...) and a JSON summary."""
        self._check_open()
        if self._run_id is None:
            raise StorageError("SqliteWriter.end_run: no run is open")
        fn = self._end_run_fn(status, summary, self._clock())
        self._run_id = None
        self._call(fn, timeout)

    def flush(self, timeout: float = 10.0) -> None:
        """Wait until everything queued so far is written (readers then see it)."""
        self._check_open()
        self._call(lambda db: None, timeout)

    @property
    def run_id(self) -> int | None:
        """The open run, or None."""
        return self._run_id

    def stats(self) -> dict[str, float]:
        """Counters: rows written, batches, queue depth, and how often/long ``write`` waited on a full queue."""
        with self._lock:
            return {
                "frames_written": self._frames_written,
                "events_written": self._events_written,
                "batches": self._batches,
                "queue_depth": self._queue.qsize(),
                "blocked_writes": self._blocked_writes,
                "blocked_ms": self._blocked_ms,
                "max_blocked_ms": self._max_blocked_ms,
            }

    # --- internals -----------------------------------------------------------------------------

    def _end_run_fn(self, status: str, summary: Mapping[str, Any] | None, when: datetime) -> Callable[[Database], None]:
        run_id = self._run_id
        assert run_id is not None  # callers check
        update = {"ended_at": utc_iso(when), "status": status, "summary_json": None if summary is None else to_json(summary)}

        def end(db: Database) -> None:
            with write_transaction(db):
                db.table("runs").update(run_id, update)

        return end

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

    def _put(self, item: _QueueItem, deadline: float | None = None) -> None:
        if isinstance(item, _Rows):
            item.enqueued = time.monotonic()
        try:
            self._queue.put_nowait(item)
            return
        except queue.Full:
            pass
        start = time.monotonic()
        end = deadline if deadline is not None else start + self.put_timeout_s
        try:
            # Short slices so a writer that dies while we wait is noticed at once.
            while True:
                self._raise_failure()
                remaining = end - time.monotonic()
                if remaining <= 0:
                    raise StorageError(
                        f"the SQLite writer for {self.db_path} cannot keep up: its queue "
                        f"({self._queue.maxsize} items) stayed full for {end - start:.1f} s. The disk is too slow "
                        "or another process locks the database; raise storage.batch_size or use a faster disk"
                    )
                try:
                    self._queue.put(item, timeout=min(0.05, remaining))
                    return
                except queue.Full:
                    continue
        finally:
            waited_ms = (time.monotonic() - start) * 1000.0
            with self._lock:
                self._blocked_writes += 1
                self._blocked_ms += waited_ms
                self._max_blocked_ms = max(self._max_blocked_ms, waited_ms)

    def _call(self, fn: Callable[[Database], Any], timeout: float) -> Any:
        future: Future[Any] = Future()
        deadline = time.monotonic() + timeout
        with self._producing():
            self._put(_Call(fn, future), deadline)
        try:
            return future.result(max(0.0, deadline - time.monotonic()))
        except FutureTimeout:
            self._raise_failure()
            raise StorageError(f"the SQLite writer for {self.db_path} did not answer within {timeout:.1f} s") from None
        except Exception:
            self._raise_failure()
            raise

    def _fail(self, message: str, error: BaseException, report: bool = True) -> None:
        self._failure_msg = message
        self._failure = error
        if report:  # a failure while running is logged here too: nobody may call write() again
            log.error("%s", message, exc_info=error)

    def _open(self) -> Database:
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

    def _run(self) -> None:
        """Writer thread: open, then insert batches until the stop sentinel; never dies silently."""
        try:
            db = self._open()
        except StorageError as e:
            self._fail(f"cannot open the database {self.db_path}: {e}", e, report=False)
            self._ready.set()
            return
        except Exception as e:
            self._fail(f"cannot open the database {self.db_path}: {e}; {_FIX_HINT}", e, report=False)
            self._ready.set()
            return
        self._ready.set()
        pending: list[_Rows] = []
        call: _Call | None = None
        try:
            while True:
                if pending:
                    timeout = max(0.0, pending[0].enqueued + self.flush_interval_s - time.monotonic())
                else:
                    timeout = self.flush_interval_s
                try:
                    item = self._queue.get(timeout=timeout)
                except queue.Empty:
                    self._flush(db, pending)
                    continue
                if isinstance(item, _Stop):
                    self._flush(db, pending)
                    return
                if isinstance(item, _Call):
                    call = item
                    self._flush(db, pending)
                    result = item.fn(db)
                    call = None
                    item.future.set_result(result)
                    continue
                pending.append(item)
                if len(pending) >= self.batch_size or time.monotonic() >= pending[0].enqueued + self.flush_interval_s:
                    self._flush(db, pending)
        except BaseException as e:
            lost = sum(len(p.rows) for p in pending) + self._queue.qsize()
            self._fail(f"writing to the database {self.db_path} failed: {e}; up to {lost} queued items were not written", e)
            if call is not None and not call.future.done():
                call.future.set_exception(self._failure_error())
            self._drain_after_failure()
        finally:
            db.close()

    def _flush(self, db: Database, pending: list[_Rows]) -> None:
        if not pending:
            return
        frames = [r for p in pending if p.table == "frames" for r in p.rows]
        timings = [t for p in pending for t in p.timings]
        events = [r for p in pending if p.table == "events" for r in p.rows]
        with write_transaction(db):
            if frames:
                db.table("frames").insert_all(frames)
            if timings:
                db.table("frame_timings").insert_all(timings)
            if events:
                db.table("events").insert_all(events)
        pending.clear()
        with self._lock:
            self._frames_written += len(frames)
            self._events_written += len(events)
            self._batches += 1

    def _drain_after_failure(self) -> None:
        # Answer every waiting call so no caller hangs on a dead writer.
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, _Call) and not item.future.done():
                item.future.set_exception(self._failure_error())


__all__ = ["SqliteWriter", "frame_rows"]
