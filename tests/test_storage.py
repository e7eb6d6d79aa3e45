"""Tests of the SQLite writer and queries, on real database files."""

from __future__ import annotations

import json
import math
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from config.errors import StorageError
from config.schema import StorageConfig
from pipeline.telemetry import stage_stats
from storage import queries
from storage.schema import SCHEMA_VERSION, TABLES
from storage.writer import SqliteWriter
from tests.storage_builders import StepClock, make_record, make_result, no_new_threads

T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def _no_thread_left() -> Iterator[None]:
    with no_new_threads():
        yield


def count(db: Path, table: str) -> int:
    with sqlite3.connect(db) as conn:
        return conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]


def wait_for(predicate: Callable[[], bool], timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def writer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("sqlite-writer")]


# --- round trip ---------------------------------------------------------------------------------


def test_round_trip(tmp_path: Path) -> None:
    db = tmp_path / "runs" / "people.db"  # the folder is created
    results = [
        make_result(0, fused=3.0, detections=3, density=None, zones={"door": 1.0}),
        make_result(1, fused=41.5, detections=12, density=41.5, missing={"density": "late"}),
        make_result(2, fused=0.0, detections=0, density=0.25, with_image=True,
                    timings={"decode_ms": 2.0, "fusion_wait_ms": 3.5, "end_to_end_ms": 20.0}),
    ]
    with SqliteWriter(db, clock=StepClock(T0)) as writer:
        run_id = writer.start_run({"fusion": {"strategy": "STRICT_SYNC"}}, {"app": "0.1.0"}, "clip.mp4", "STRICT_SYNC")
        for r in results:
            writer.write(r)
        writer.end_run("completed", {"frames": 3})

    rows = queries.count_history(db, run_id=run_id)
    assert [r["frame_index"] for r in rows] == [0, 1, 2]
    first, second, third = rows
    assert first == {
        "run_id": run_id, "frame_index": 0, "pts": 0.0, "stream_id": "cam0",
        "published_at": "2024-05-01T12:00:01.000000+00:00", "strategy": "ASYNC_OVERLAY", "policy": "hybrid",
        "fused_count": 3.0, "detection_count": 3, "confirmed_count": None, "density_count": None,
        "unknown_reason": None, "counts_frame_index": 0, "counts_age_ms": 5.0, "partial": False, "missing": {},
        "late_branches": [], "zones": {"door": 1.0}, "occupancy": None, "line_counts": None,
        "region_source": [[0, 0, 0], [0, 0, 0]], "region_counts": [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]], "calibration": None,
    }, "tracking off: its columns are None; no density map: no calibration"
    assert second["partial"] is True and second["late_branches"] == ["density"]
    assert second["missing"] == {"density": "late"}
    assert second["density_count"] == 41.5 and second["detection_count"] == 12 and second["fused_count"] == 41.5
    assert third["density_count"] == 0.25 and third["pts"] == pytest.approx(2 / 25)

    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        raw = conn.execute("SELECT * FROM frames WHERE frame_index = 1").fetchone()
    assert json.loads(raw["region_source"]) == [[0, 1, 0], [1, 1, 0]]
    assert json.loads(raw["overlays_json"]) == [{"branch": "yolo", "frame_index": 1, "lag_ms": 12.5}]
    assert raw["partial"] == 1
    assert json.loads(raw["missing_json"]) == {"density": "late"}

    assert queries.timing_rows(db, run_id) == [r.timings.by_frame()[i] for i, r in enumerate(results)]
    (run,) = queries.runs(db)
    assert run["id"] == run_id and run["status"] == "completed" and run["frames"] == 3
    assert run["source"] == "clip.mp4" and run["strategy"] == "STRICT_SYNC"
    assert run["config"] == {"fusion": {"strategy": "STRICT_SYNC"}} and run["versions"] == {"app": "0.1.0"}
    assert run["summary"] == {"frames": 3}
    assert run["started_at"] == "2024-05-01T12:00:00.000000+00:00"
    assert run["ended_at"] == "2024-05-01T12:00:04.000000+00:00"


def test_timestamps_are_utc_iso(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    with SqliteWriter(db) as writer:  # the real clock
        writer.start_run({}, {}, "s", "ASYNC_OVERLAY")
        writer.write(make_result(0))
        writer.event("reconnect", "stream came back")
    (row,) = queries.count_history(db)
    (run,) = queries.runs(db)
    for text in (row["published_at"], run["started_at"], run["ended_at"], queries.events(db, run["id"])[0]["ts"]):
        when = datetime.fromisoformat(text)
        assert when.utcoffset() == timedelta(0), text
        assert abs(datetime.now(UTC) - when) < timedelta(minutes=5)


def test_schema_tables_indexes_and_wal(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    with SqliteWriter(db) as writer:
        writer.start_run({}, {}, "s", "ASYNC_OVERLAY")
        writer.write(make_result(0))
        writer.flush()
        # checked from another connection while the writer is open
        with sqlite3.connect(db) as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
            for table, spec in TABLES.items():
                columns = [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]
                assert columns == list(spec.columns), table
            for table in ("frames", "frame_timings", "events"):
                indexed = [
                    tuple(r[2] for r in conn.execute(f"PRAGMA index_info({idx[1]})"))
                    for idx in conn.execute(f"PRAGMA index_list({table})")
                ]
                assert ("run_id", "frame_index") in indexed, table
            for table in ("crossings", "zone_visits", "static_tracks"):
                unique = [idx for idx in conn.execute(f"PRAGMA index_list({table})") if idx[2]]
                assert [tuple(r[2] for r in conn.execute(f"PRAGMA index_info({u[1]})")) for u in unique] == [
                    TABLES[table].unique
                ], table
    assert set(TABLES) == {"runs", "frames", "frame_timings", "events", "crossings", "zone_visits", "static_tracks"}


def test_reopen_appends_runs(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    for n in (2, 3):
        with SqliteWriter(db) as writer:
            writer.start_run({}, {}, "s", "ASYNC_OVERLAY")
            for i in range(n):
                writer.write(make_result(i))
            writer.end_run("completed")
    assert [(r["id"], r["frames"]) for r in queries.runs(db)] == [(1, 2), (2, 3)]


# --- batching and flushing ----------------------------------------------------------------------


def test_close_flushes_everything(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    writer = SqliteWriter(db, batch_size=64, flush_interval_s=60.0, queue_size=2048).start()
    try:
        writer.start_run({}, {}, "s", "ASYNC_OVERLAY")
        for i in range(1000):
            writer.write(make_result(i))
    finally:
        writer.close()
    assert count(db, "frames") == 1000
    assert count(db, "frame_timings") == 2000
    assert writer.stats()["frames_written"] == 1000
    assert not writer_threads()


def test_batches_by_size(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    with SqliteWriter(db, batch_size=10, flush_interval_s=60.0) as writer:
        writer.start_run({}, {}, "s", "ASYNC_OVERLAY")
        for i in range(25):
            writer.write(make_result(i))
        assert wait_for(lambda: count(db, "frames") == 20)
        time.sleep(0.1)
        assert count(db, "frames") == 20, "the last 5 wait for a full batch or the flush interval"
        assert writer.stats()["batches"] == 2
    assert count(db, "frames") == 25
    assert writer.stats()["batches"] == 3


def test_batches_by_interval(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    with SqliteWriter(db, batch_size=1000, flush_interval_s=0.2) as writer:
        writer.start_run({}, {}, "s", "ASYNC_OVERLAY")
        t0 = time.monotonic()
        for i in range(3):
            writer.write(make_result(i))
        assert wait_for(lambda: count(db, "frames") == 3), "rows are written within the flush interval"
        assert time.monotonic() - t0 >= 0.19, "...but not before it"
        assert writer.stats()["batches"] == 1


def test_from_config_and_db_override(tmp_path: Path) -> None:
    cfg = StorageConfig(db_path=str(tmp_path / "from_config.db"), batch_size=7, flush_interval_s=0.25)
    writer = SqliteWriter.from_config(cfg)
    assert (writer.db_path, writer.batch_size, writer.flush_interval_s) == (tmp_path / "from_config.db", 7, 0.25)
    override = SqliteWriter.from_config(cfg, db_path=tmp_path / "cli.db")
    assert override.db_path == tmp_path / "cli.db"


def test_keyboard_interrupt_loses_nothing(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    writer = SqliteWriter(db, batch_size=50, flush_interval_s=60.0).start()
    written = 0
    with pytest.raises(KeyboardInterrupt):
        try:
            writer.start_run({}, {}, "s", "ASYNC_OVERLAY")
            for i in range(1000):
                if i == 321:
                    raise KeyboardInterrupt
                writer.write(make_result(i))
                written += 1
        finally:
            writer.close()
    assert count(db, "frames") == written == 321
    (run,) = queries.runs(db)
    assert run["status"] == "interrupted" and run["ended_at"] is not None


def test_close_while_other_threads_write(tmp_path: Path) -> None:
    # Every write() that returned is on disk; every later one raised. Nothing falls in between.
    db = tmp_path / "t.db"
    writer = SqliteWriter(db, batch_size=32, flush_interval_s=60.0).start()
    writer.start_run({}, {}, "s", "ASYNC_OVERLAY")
    accepted = [0] * 4
    results = [make_result(i) for i in range(8)]

    def produce(k: int) -> None:
        i = 0
        while True:
            try:
                writer.write(results[i % 8])
            except StorageError:
                return
            accepted[k] += 1
            i += 1

    threads = [threading.Thread(target=produce, args=(k,), name=f"producer-{k}") for k in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.1)
    writer.close()
    for t in threads:
        t.join(5.0)
    assert sum(accepted) > 0
    assert count(db, "frames") == sum(accepted)


def test_context_manager_does_not_mask_the_callers_error(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    with pytest.raises(RuntimeError, match="decoder died"), SqliteWriter(db) as writer:
        writer.start_run({}, {}, "s", "ASYNC_OVERLAY")
        writer.write(make_result(0))
        raise RuntimeError("decoder died")
    assert count(db, "frames") == 1


# --- a full queue: wait, count the wait, never drop silently --------------------------------------


def lock_database(db: Path) -> sqlite3.Connection:
    """Another process's write lock: the writer thread's next insert waits on it."""
    conn = sqlite3.connect(db, check_same_thread=False, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    return conn


def test_full_queue_blocks_then_succeeds_and_counts_the_wait(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    with SqliteWriter(db, batch_size=1, queue_size=2, put_timeout_s=5.0, busy_timeout_s=10.0) as writer:
        writer.start_run({}, {}, "s", "ASYNC_OVERLAY")
        lock = lock_database(db)
        release = threading.Timer(0.3, lambda: lock.execute("ROLLBACK"))
        release.start()
        try:
            t0 = time.monotonic()
            for i in range(6):  # 1 in the stuck insert + 2 queued; the rest wait for the lock
                writer.write(make_result(i))
            waited = time.monotonic() - t0
        finally:
            release.join()
            lock.close()
        stats = writer.stats()
    assert waited >= 0.2
    assert stats["blocked_writes"] >= 1 and stats["blocked_ms"] >= 150.0
    assert stats["max_blocked_ms"] <= stats["blocked_ms"]
    assert count(db, "frames") == 6


def test_full_queue_waits_put_timeout_then_goes_on_never_raises(tmp_path: Path) -> None:
    # The writer thread is stuck inside one insert (busy_timeout 10 s) behind another process's
    # lock: write() waits put_timeout_s for room, then queues beyond queue_size. It used to raise
    # StorageError ("cannot keep up"); a slow or locked database must not stop counting.
    db = tmp_path / "t.db"
    writer = SqliteWriter(db, batch_size=1, queue_size=2, put_timeout_s=0.05, busy_timeout_s=10.0).start()
    writer.start_run({}, {}, "s", "ASYNC_OVERLAY")
    lock = lock_database(db)
    try:
        writer.write(make_result(0))
        assert wait_for(lambda: writer.stats()["queue_depth"] == 0), "the writer took row 0 into its stuck insert"
        for i in range(1, 10):
            writer.write(make_result(i))
        stats = writer.stats()
        assert stats["queue_depth"] == 9, "rows 3..9 went beyond queue_size instead of raising"
        assert stats["blocked_writes"] == 7 and stats["dropped_rows"] == 0
    finally:
        lock.execute("ROLLBACK")
        lock.close()
        writer.close()
    assert count(db, "frames") == 10, "every accepted result is written"


# --- errors in the writer thread -----------------------------------------------------------------


def test_writer_error_surfaces_as_storage_error(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    db = tmp_path / "t.db"
    writer = SqliteWriter(db, batch_size=100, flush_interval_s=60.0).start()
    writer.start_run({}, {}, "s", "ASYNC_OVERLAY")
    writer.write(make_result(0))
    writer.flush()
    with sqlite3.connect(db) as other:  # a real SQLite fault, raised inside the writer's insert
        other.execute("CREATE TRIGGER fault BEFORE INSERT ON frame_timings BEGIN SELECT RAISE(ABORT, 'disk on fire'); END")
    writer.write(make_result(1))
    with pytest.raises(StorageError, match="disk on fire") as flushed:
        writer.flush()
    assert str(db) in str(flushed.value)
    assert isinstance(flushed.value.__cause__, sqlite3.Error)
    with pytest.raises(StorageError, match="disk on fire"):
        writer.write(make_result(2))
    with pytest.raises(StorageError, match="disk on fire"):
        writer.event("error", "still failing")
    with pytest.raises(StorageError, match="disk on fire"):
        writer.close()
    assert not writer_threads(), "the writer thread ended"
    assert any("disk on fire" in r.getMessage() for r in caplog.records if r.levelname == "ERROR")
    assert count(db, "frames") == 1, "the failed batch was rolled back as a whole"


def test_a_lock_past_busy_timeout_is_waited_out_not_an_error(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # This used to kill the writer ("database is locked" raised by close); now it is retried.
    db = tmp_path / "t.db"
    writer = SqliteWriter(db, batch_size=1, busy_timeout_s=0.05, retry_initial_s=0.01, retry_max_s=0.05).start()
    run_id = writer.start_run({}, {}, "s", "ASYNC_OVERLAY")
    lock = lock_database(db)
    try:
        writer.write(make_result(0))  # its insert meets the lock and gives up after 50 ms: retried
        assert wait_for(lambda: writer.stats()["blocked"] == 1)
        writer.write(make_result(1))
        assert writer_threads(), "the writer thread goes on"
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    writer.close()
    assert count(db, "frames") == 2
    kinds = [(e["kind"], (e["data"] or {}).get("reason")) for e in queries.events(db, run_id)]
    assert kinds == [("storage_blocked", "locked"), ("storage_resumed", "locked")]
    assert "database is locked" in queries.events(db, run_id)[0]["data"]["error"]
    warnings = [r for r in caplog.records if r.name == "people_counter.storage" and r.levelname == "WARNING"]
    assert any("database is locked" in r.getMessage() for r in warnings)
    assert any("written again" in r.getMessage() for r in warnings)


def test_misuse_is_a_storage_error(tmp_path: Path) -> None:
    writer = SqliteWriter(tmp_path / "t.db")
    with pytest.raises(StorageError, match="not started"):
        writer.write(make_result(0))
    writer.start()
    with pytest.raises(StorageError, match="start_run"):
        writer.write(make_result(0))
    with pytest.raises(StorageError, match="no run is open"):
        writer.end_run("completed")
    writer.start_run({}, {}, "s", "ASYNC_OVERLAY")
    with pytest.raises(StorageError, match="still open"):
        writer.start_run({}, {}, "s", "ASYNC_OVERLAY")
    writer.end_run("completed")
    with pytest.raises(StorageError, match="start_run"):
        writer.write(make_result(0))
    writer.close()
    writer.close()
    with pytest.raises(StorageError, match="closed"):
        writer.event("error", "too late")


# --- paths that cannot be written ---------------------------------------------------------------


def assert_open_fails(path: Path, match: str) -> None:
    with pytest.raises(StorageError) as info:
        SqliteWriter(path).start()
    message = str(info.value)
    assert str(path) in message
    assert "--db PATH" in message and "storage.db_path" in message
    assert match in message


def test_path_is_a_directory(tmp_path: Path) -> None:
    (tmp_path / "people.db").mkdir()
    assert_open_fails(tmp_path / "people.db", "is a directory")


def test_folder_cannot_be_created(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a folder")
    assert_open_fails(tmp_path / "file" / "people.db", "not a folder")
    assert_open_fails(tmp_path / "file" / "sub" / "people.db", "cannot create the folder")


def test_read_only_location_injected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Fault injection: tests may run as root, who may write anywhere; pretend the folder is read-only.
    import storage.writer

    monkeypatch.setattr(storage.writer.os, "access", lambda path, mode: Path(path) != tmp_path)
    assert_open_fails(tmp_path / "people.db", "is not writable")
    assert not (tmp_path / "people.db").exists()


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root may write to read-only folders")
def test_read_only_location_real(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    with SqliteWriter(ro / "old.db"):
        pass
    (ro / "old.db").chmod(0o444)
    ro.chmod(0o555)
    try:
        assert_open_fails(ro / "new.db", "not writable")
        assert_open_fails(ro / "old.db", "read-only")
    finally:
        ro.chmod(0o755)


def test_other_schema_version_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    with sqlite3.connect(db) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    assert_open_fails(db, "schema version")


def test_queries_on_a_missing_or_foreign_file(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="no database at"):
        queries.count_history(tmp_path / "missing.db")
    assert not (tmp_path / "missing.db").exists(), "queries never create a file"
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE t (x)")
    with pytest.raises(StorageError, match="people-counter database"):
        queries.runs(other)


# --- events -------------------------------------------------------------------------------------


def test_events(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    with SqliteWriter(db, clock=StepClock(T0)) as writer:
        writer.event("error", "config reloaded before any run")
        run_id = writer.start_run({}, {}, "rtsp://cam", "ASYNC_OVERLAY")
        writer.write(make_result(0))
        writer.event("reconnect", "stream dropped, reconnecting", frame_index=0, data={"attempt": 1})
        writer.event("strategy_switch", "ASYNC_OVERLAY -> STRICT_SYNC", frame_index=1,
                     data={"from": "ASYNC_OVERLAY", "to": "STRICT_SYNC"})
        writer.event("drop", "ui queue full", data={"queue": "ui", "count": 3})
        writer.event("stall", "density silent", data={"seconds": float("nan"), "stats": stage_stats([1.0], 0)})
        writer.end_run("failed", {"error": "stall"})
    evs = queries.events(db, run_id)
    assert [e["kind"] for e in evs] == ["reconnect", "strategy_switch", "drop", "stall"]
    assert evs[0] == {
        "run_id": run_id, "ts": "2024-05-01T12:00:03.000000+00:00", "kind": "reconnect", "frame_index": 0,
        "message": "stream dropped, reconnecting", "data": {"attempt": 1},
    }
    assert evs[2]["frame_index"] is None
    assert evs[3]["data"]["seconds"] is None, "NaN is stored as JSON null"
    assert evs[3]["data"]["stats"]["n"] == 1
    (outside,) = queries.events(db, None)
    assert outside["run_id"] is None and outside["kind"] == "error"
    assert queries.runs(db)[0]["status"] == "failed"


def test_summary_with_stage_stats_is_valid_json(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    with SqliteWriter(db) as writer:
        writer.start_run({}, {}, "s", "ASYNC_OVERLAY")
        writer.end_run("completed", {"decode_ms": stage_stats([1.0, 2.0], 0), "render_ms": stage_stats([], 0)})
    with sqlite3.connect(db) as conn:
        text = conn.execute("SELECT summary_json FROM runs").fetchone()[0]
    summary = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    assert summary["decode_ms"]["mean"] == 1.5
    assert summary["render_ms"]["n"] == 0 and summary["render_ms"]["p50"] is None
    assert not math.isnan(summary["decode_ms"]["p99"])


def test_raw_frames_are_stored_from_their_metadata_records(tmp_path: Path) -> None:
    """RAW_STREAM_WITH_METADATA publishes frames (no counts) and metadata records (the counts):
    the record makes the frame's row and its timings; the raw publication adds nothing."""
    db = tmp_path / "raw.db"
    with SqliteWriter(db) as writer:
        run_id = writer.start_run({}, {}, "src", "RAW_STREAM_WITH_METADATA")
        writer.write(make_result(0, raw=True, timings={"decode_ms": 7.0, "end_to_end_ms": 0.5}))
        writer.write_metadata(make_record(0, fused=4.0, timings={"decode_ms": 7.0, "end_to_end_ms": 30.0, "yolo.run_ms": 20.0}))
        writer.write(make_result(1, raw=True))
        writer.write_metadata(make_record(1, fused=None, missing={"density": "late"}, counts_age_ms=80.0))
        writer.end_run("completed")
    rows = queries.count_history(db, run_id=run_id)
    assert [(r["frame_index"], r["strategy"], r["fused_count"], r["unknown_reason"], r["counts_frame_index"]) for r in rows] == [
        (0, "RAW_STREAM_WITH_METADATA", 4.0, None, 0),
        (1, "RAW_STREAM_WITH_METADATA", None, "late: density", 1),
    ]
    assert rows[1]["missing"] == {"density": "late"} and rows[1]["counts_age_ms"] == 80.0
    assert rows[1]["detection_count"] is None and rows[1]["partial"] is True
    assert queries.timing_rows(db, run_id)[0] == {"decode_ms": 7.0, "yolo.run_ms": 20.0, "run_ms": 20.0, "end_to_end_ms": 30.0}
