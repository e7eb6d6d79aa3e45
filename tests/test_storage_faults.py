"""Storage faults on real parts: a real lock from another connection, a real full file system, a
real kill -9 of a child process. Nothing here asserts on wall time; waits are for conditions."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from config.errors import StorageError
from storage import queries
from storage.schema import RUN_STATUSES, SCHEMA_VERSION, TABLES
from storage.writer import SqliteWriter, process_alive, process_start
from tests.storage_builders import make_result, no_new_threads

REPO = Path(__file__).resolve().parents[1]
FAST: dict[str, Any] = {"busy_timeout_s": 0.05, "retry_initial_s": 0.01, "retry_max_s": 0.1, "flush_interval_s": 0.05}
"""Short waits so a fault is seen and retried quickly (the defaults are for production)."""


@pytest.fixture(autouse=True)
def _no_thread_left() -> Iterator[None]:
    with no_new_threads():
        yield


def wait_for(predicate: Callable[[], bool], timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.005)
    return predicate()


def frame_indices(db: Path) -> list[int]:
    with sqlite3.connect(db) as conn:
        return [r[0] for r in conn.execute("SELECT frame_index FROM frames ORDER BY rowid")]


def storage_events(db: Path, run_id: int) -> list[dict]:
    return [e for e in queries.events(db, run_id) if e["kind"].startswith("storage_")]


class Producer:
    """A thread writing one result every ``period_s`` (the pipeline's steady rate) until stopped."""

    def __init__(self, writer: SqliteWriter, period_s: float = 0.005) -> None:
        self.writer = writer
        self.period_s = period_s
        self.written = 0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="producer")

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self.writer.write(make_result(self.written))
                self.written += 1
                self._stop.wait(self.period_s)
        except BaseException as e:
            self.error = e

    def __enter__(self) -> Producer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10.0)
        assert self.error is None, f"write() raised during the fault: {self.error!r}"

    def wait_rows(self, n: int) -> None:
        target = self.written + n
        assert wait_for(lambda: self.written >= target or self.error is not None)


# --- a lock held by another process ---------------------------------------------------------------


def hold_exclusive_lock(db: Path, writer: SqliteWriter, hold_s: float, producer: Producer) -> None:
    """Another connection holds ``BEGIN EXCLUSIVE`` from before the writer notices until ``hold_s``
    after it did (and at least 50 more rows were written meanwhile)."""
    lock = sqlite3.connect(db, isolation_level=None)
    try:
        lock.execute("BEGIN EXCLUSIVE")
        assert wait_for(lambda: writer.stats()["blocked"] == 1), "the writer meets the lock"
        end = time.monotonic() + hold_s
        producer.wait_rows(50)
        while time.monotonic() < end:
            time.sleep(0.05)
        assert writer.stats()["blocked"] == 1, "still blocked while the lock is held"
        lock.execute("ROLLBACK")
    finally:
        lock.close()


@pytest.mark.parametrize(
    ("hold_s", "spool_rows"),
    [
        pytest.param(3.0, 5_000, id="3s-in-memory"),
        pytest.param(3.0, 20, id="3s-through-the-spill-file"),
        pytest.param(30.0, 200, id="30s", marks=pytest.mark.slow),
    ],
)
def test_a_lock_mid_run_loses_nothing(tmp_path: Path, hold_s: float, spool_rows: int) -> None:
    db = tmp_path / "t.db"
    writer = SqliteWriter(db, batch_size=8, spool_rows=spool_rows, **FAST).start()
    run_id = writer.start_run({}, {}, "s", "ASYNC_OVERLAY")
    with Producer(writer) as producer:
        producer.wait_rows(20)
        hold_exclusive_lock(db, writer, hold_s, producer)
        producer.wait_rows(20)  # and on after the lock
    writer.end_run("completed")
    writer.close()
    stats = writer.stats()
    assert frame_indices(db) == list(range(producer.written)), "every row, in order"
    blocked, resumed = storage_events(db, run_id)
    assert (blocked["kind"], blocked["data"]["reason"]) == ("storage_blocked", "locked")
    assert "locked" in blocked["data"]["error"]
    assert (resumed["kind"], resumed["data"]["reason"]) == ("storage_resumed", "locked")
    assert resumed["data"]["spooled"] >= 50 and resumed["data"]["dropped"] == 0
    assert resumed["data"]["spilled"] == stats["spilled_rows"]
    assert resumed["data"]["blocked_s"] > 0 and resumed["data"]["retries"] >= 1
    if spool_rows < 50:
        assert stats["spilled_rows"] > 0, "the rows beyond the spool went through the spill file"
    assert not list(tmp_path.glob("*.spill.*")), "the spill file is removed once written back"
    assert queries.runs(db)[0]["status"] == "completed"


def test_close_while_locked_leaves_a_spill_file_the_next_writer_writes_back(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    writer = SqliteWriter(db, **FAST).start()
    run_id = writer.start_run({}, {}, "s", "ASYNC_OVERLAY")
    lock = sqlite3.connect(db, isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")
    try:
        for i in range(30):
            writer.write(make_result(i))
        assert wait_for(lambda: writer.stats()["blocked"] == 1)
        with pytest.raises(StorageError, match="spill file") as info:
            writer.close(timeout=0.3)
        (spill,) = tmp_path.glob("t.db.spill.*.jsonl")
        assert str(spill) in str(info.value)
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    with SqliteWriter(db) as again:
        assert again.recovered["spill_rows"] == 30 + 2  # the rows, the blocked event, the run's end
    assert frame_indices(db) == list(range(30))
    assert not spill.exists()
    (run,) = queries.runs(db)
    assert run["status"] == "interrupted", "the end close() queued was in the spill file too"
    kinds = [e["kind"] for e in queries.events(db, run_id)]
    assert kinds == ["storage_blocked", "spill_recovered"]


# --- a full disk ------------------------------------------------------------------------------------


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    """A real 16 MiB file system (tmpfs) to fill up; skipped where mounting is not permitted.

    Larger than the WAL grows before its automatic checkpoint (1000 pages, 4 MiB): on a smaller one
    the WAL alone fills it.
    """
    if sys.platform != "linux":
        pytest.skip("tmpfs mounts are Linux-only")
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (needs root or CAP_SYS_ADMIN): {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(folder: Path) -> Path:
    """Write a file until the file system is full (ENOSPC); returns it (delete it to free the space)."""
    filler = folder / "filler"
    chunk = b"\0" * 4096
    with filler.open("wb", buffering=0) as f:
        try:
            while True:
                f.write(chunk)
        except OSError as e:
            assert e.errno == 28, e  # ENOSPC
    return filler


@pytest.mark.parametrize(
    ("spill_elsewhere", "spool_rows", "max_memory_rows", "expect"),
    [
        pytest.param(False, 5_000, 20_000, "memory", id="spool-in-memory"),
        pytest.param(True, 20, 20_000, "spilled", id="spill-on-another-disk"),
        pytest.param(False, 20, 40, "dropped", id="spill-fails-too-hard-cap"),
    ],
)
def test_a_full_disk_pauses_writing_and_resumes_when_space_returns(
    tiny_fs: Path, tmp_path: Path, spill_elsewhere: bool, spool_rows: int, max_memory_rows: int, expect: str
) -> None:
    db = tiny_fs / "t.db"
    spill_dir = tmp_path / "spill" if spill_elsewhere else None
    writer = SqliteWriter(
        db, batch_size=4, spool_rows=spool_rows, max_memory_rows=max_memory_rows, queue_size=16,
        spill_dir=spill_dir, **FAST,
    ).start()
    run_id = writer.start_run({}, {}, "s", "ASYNC_OVERLAY")
    with Producer(writer) as producer:
        producer.wait_rows(20)
        filler = fill(tiny_fs)
        assert wait_for(lambda: writer.stats()["blocked"] == 1), "the writer meets the full disk"
        producer.wait_rows(120)  # more than the spool and the hard cap
        assert writer.stats()["blocked"] == 1
        filler.unlink()
        assert wait_for(lambda: writer.stats()["blocked"] == 0), "space returned: writing resumes"
        producer.wait_rows(20)
    writer.end_run("completed")
    writer.close()
    stats = writer.stats()
    stored = frame_indices(db)
    assert stored == sorted(stored) and len(set(stored)) == len(stored), "in order, no duplicates"
    events = storage_events(db, run_id)
    blocked, resumed = events[0], events[-1]
    assert (blocked["kind"], blocked["data"]["reason"]) == ("storage_blocked", "disk_full")
    assert "full" in blocked["data"]["error"]
    assert (resumed["kind"], resumed["data"]["reason"]) == ("storage_resumed", "disk_full")
    assert resumed["data"]["dropped"] == stats["dropped_rows"]
    assert len(stored) == producer.written - stats["dropped_rows"], "nothing lost beyond what the event reports"
    if expect == "dropped":
        assert stats["dropped_rows"] > 0  # (the spill file may have taken what little space was left)
        assert [e["kind"] for e in events] == ["storage_blocked", "storage_dropped", "storage_resumed"]
    else:
        assert stored == list(range(producer.written)) and stats["dropped_rows"] == 0
        assert [e["kind"] for e in events] == ["storage_blocked", "storage_resumed"]
        assert (stats["spilled_rows"] > 0) == (expect == "spilled") == (resumed["data"]["spilled"] > 0)
    if spill_dir is not None:
        assert not list(spill_dir.glob("*.spill.*")), "the spill file is removed once written back"


# --- a process killed with SIGKILL ----------------------------------------------------------------

CHILD = """
import sys, time
from storage.writer import SqliteWriter
from tests.storage_builders import make_result
writer = SqliteWriter(sys.argv[1], flush_interval_s=float(sys.argv[2]), batch_size=1000).start()
print("run", writer.start_run({}, {}, "child", "ASYNC_OVERLAY"), flush=True)
i = 0
while True:
    writer.write(make_result(i))
    print(i, time.monotonic(), flush=True)
    i += 1
    time.sleep(0.01)
"""


def test_kill_9_loses_at_most_the_last_flush_interval_and_the_run_is_aborted(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    flush_s, margin_s = 0.2, 1.0  # a generous margin: this host may be slow
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(db), str(flush_s)], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        run_line = child.stdout.readline().split()
        assert run_line[0] == "run", run_line
        run_id = int(run_line[1])
        written: list[tuple[int, float]] = []
        for line in child.stdout:  # what the child wrote, when (CLOCK_MONOTONIC is system-wide)
            i, t = line.split()
            written.append((int(i), float(t)))
            if written[-1][1] - written[0][1] > flush_s + margin_s + 0.5:
                break
        killed_at = time.monotonic()
        child.send_signal(signal.SIGKILL)
        written += [(int(i), float(t)) for i, t in (line.split() for line in child.stdout)]
    finally:
        child.kill()
        child.wait(10)
    assert child.returncode == -signal.SIGKILL
    assert not process_alive(child.pid)

    stored = frame_indices(db)
    assert stored == list(range(len(stored))), "a prefix, in order"
    must = [i for i, t in written if t < killed_at - flush_s - margin_s]
    assert must, "the child ran long enough for the check to mean something"
    assert set(must) <= set(stored), "every row older than the flush interval (plus margin) was committed"
    assert queries.runs(db)[0]["status"] == "running"

    with SqliteWriter(db) as writer:
        (aborted,) = writer.recovered["aborted_runs"]
    (run,) = queries.runs(db)
    with sqlite3.connect(db) as conn:
        last = conn.execute("SELECT MAX(published_at) FROM frames WHERE run_id = ?", [run_id]).fetchone()[0]
    assert run["status"] == "aborted" and run["ended_at"] == last == aborted["ended_at"]
    (event,) = queries.events(db, run_id)
    assert event["kind"] == "run_aborted" and event["data"]["pid"] == child.pid and event["data"]["frames"] == len(stored)


# --- crash recovery rules and the schema --------------------------------------------------------------


def add_run(db: Path, pid: int | None, host: str | None, proc_start: str | None = None, frames: int = 0) -> int:
    """A ``running`` run row as another process would have left it, with ``frames`` frames."""
    with sqlite3.connect(db) as conn:
        cur = conn.execute(
            "INSERT INTO runs (started_at, status, pid, host, proc_start) VALUES (?, 'running', ?, ?, ?)",
            ["2024-05-01T12:00:00.000000+00:00", pid, host, proc_start],
        )
        run_id = int(cur.lastrowid or 0)
        for i in range(frames):
            conn.execute(
                "INSERT INTO frames (run_id, frame_index, published_at, fused_count, detection_count, partial) "
                "VALUES (?, ?, ?, 1.0, 1, 0)",
                [run_id, i, f"2024-05-01T12:00:{i + 1:02d}.000000+00:00"],
            )
        return run_id


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(10)
    return proc.pid


def test_crash_recovery_aborts_only_dead_runs_of_this_host(tmp_path: Path) -> None:
    import socket

    db = tmp_path / "t.db"
    with SqliteWriter(db):
        pass
    host = socket.gethostname()
    me = os.getpid()
    dead = add_run(db, dead_pid(), host, frames=3)
    no_frames = add_run(db, dead_pid(), host)
    reused = add_run(db, me, host, proc_start="1", frames=1)  # our pid, another start time: a reused pid
    alive = add_run(db, me, host, proc_start=process_start(me))
    other_host = add_run(db, dead_pid(), "another-host")
    old_schema = add_run(db, None, None)
    with SqliteWriter(db) as writer:
        assert sorted(r["run_id"] for r in writer.recovered["aborted_runs"]) == [dead, no_frames, reused]
    by_id = {r["id"]: r for r in queries.runs(db)}
    assert by_id[dead]["status"] == "aborted" and by_id[dead]["ended_at"] == "2024-05-01T12:00:03.000000+00:00"
    assert by_id[no_frames]["ended_at"] == by_id[no_frames]["started_at"]
    assert by_id[reused]["status"] == "aborted"
    for left_alone in (alive, other_host, old_schema):
        assert by_id[left_alone]["status"] == "running" and by_id[left_alone]["ended_at"] is None
    assert [e["kind"] for e in queries.events(db, dead)] == ["run_aborted"]


def test_start_run_records_the_process(tmp_path: Path) -> None:
    import socket

    db = tmp_path / "t.db"
    with SqliteWriter(db) as writer:
        run_id = writer.start_run({}, {}, "s", "ASYNC_OVERLAY")
        with sqlite3.connect(db) as conn:
            pid, host, start = conn.execute("SELECT pid, host, proc_start FROM runs WHERE id = ?", [run_id]).fetchone()
    assert (pid, host, start) == (os.getpid(), socket.gethostname(), process_start(os.getpid()))
    assert process_alive(pid, start)


def test_a_version_1_database_is_migrated(tmp_path: Path) -> None:
    db = tmp_path / "v1.db"
    with sqlite3.connect(db) as conn:  # the version 1 runs table, with a run in it
        conn.execute(
            "CREATE TABLE runs (id INTEGER PRIMARY KEY, started_at TEXT NOT NULL, ended_at TEXT, status TEXT NOT NULL, "
            "source TEXT, strategy TEXT, config_json TEXT, versions_json TEXT, summary_json TEXT)"
        )
        conn.execute("INSERT INTO runs (started_at, status) VALUES ('2024-05-01T12:00:00.000000+00:00', 'completed')")
        conn.execute("PRAGMA user_version = 1")
    with SqliteWriter(db) as writer:
        writer.start_run({}, {}, "s", "ASYNC_OVERLAY")
        writer.write(make_result(0))
        writer.end_run("completed")
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 5
        assert [r[1] for r in conn.execute("PRAGMA table_info(runs)")] == list(TABLES["runs"].columns)
        rows = conn.execute("SELECT id, status, pid FROM runs ORDER BY id").fetchall()
    assert rows == [(1, "completed", None), (2, "completed", os.getpid())]


@pytest.mark.parametrize("status", RUN_STATUSES)
def test_every_end_status_is_stored(tmp_path: Path, status: str) -> None:
    db = tmp_path / "t.db"
    with SqliteWriter(db) as writer:
        writer.start_run({}, {}, "s", "ASYNC_OVERLAY")
        writer.end_run(status, {"why": status})
    (run,) = queries.runs(db)
    assert (run["status"], run["summary"]) == (status, {"why": status})


# --- flat memory -----------------------------------------------------------------------------------


def test_the_writer_keeps_nothing_per_frame(tmp_path: Path) -> None:
    results = [make_result(i % 50) for i in range(50)]
    with SqliteWriter(tmp_path / "t.db", batch_size=32) as writer:
        writer.start_run({}, {}, "s", "ASYNC_OVERLAY")

        def write(n: int) -> None:
            for i in range(n):
                writer.write(results[i % 50])
            writer.flush()

        write(1_000)  # warm: statement caches, first allocations
        tracemalloc.start()
        try:
            before = tracemalloc.take_snapshot()
            write(3_000)
            after = tracemalloc.take_snapshot()
        finally:
            tracemalloc.stop()
        grown = sum(s.size_diff for s in after.compare_to(before, "filename"))
        assert grown < 256 * 1024, f"memory grew {grown} bytes over 3000 frames"
        assert writer.stats()["frames_written"] == 4_000
