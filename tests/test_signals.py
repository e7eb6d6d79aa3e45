"""Signals and crashes to the real process: SIGTERM, a double Ctrl-C, kill -9 then a new run.

Each test starts ``main.py headless`` as a child on a looping, realtime vtest.avi (so it never ends
by itself) with the real detector, waits until it has stored counted frames, signals it, and reads
the database afterwards. Waits are polls with generous limits; nothing asserts on how long a step
took.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.test_headless import ROOT, needs_assets, write_config

pytestmark = [needs_assets, pytest.mark.slow, pytest.mark.timeout(180)]


def live_config(tmp_path: Path) -> Path:
    return write_config(
        tmp_path,
        **{
            "streams.0.loop": True,
            "streams.0.realtime": True,
            "branches.yolo_tiles.enabled": False,
            "branches.density.enabled": False,
            "max_frames": None,
            "fusion.strategy": "STRICT_SYNC",
            "fusion.strict_sync_timeout_ms": 5000.0,
        },
    )


def start(cfg: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "main.py", "headless", "--config", str(cfg), "--quiet"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )


def stored_frames(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(db, timeout=5) as con:
            return int(con.execute("SELECT COUNT(*) FROM frames").fetchone()[0])
    except sqlite3.OperationalError:  # the child is creating the schema
        return 0


def wait_for_frames(proc: subprocess.Popen[str], db: Path, n: int, limit_s: float = 120.0) -> None:
    deadline = time.monotonic() + limit_s
    while stored_frames(db) < n:
        if proc.poll() is not None:
            _out, err = proc.communicate()
            pytest.fail(f"the run ended early (exit {proc.returncode}): {err[-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"no {n} frames stored within {limit_s:.0f} s")
        time.sleep(0.2)


def runs(db: Path) -> list[tuple[int, str, str | None]]:
    with sqlite3.connect(db) as con:
        return [(int(i), str(s), e) for i, s, e in con.execute("SELECT id, status, ended_at FROM runs ORDER BY id")]


@pytest.mark.parametrize(
    ("signals", "code", "status"),
    [
        pytest.param([signal.SIGTERM], 143, "terminated", id="sigterm"),
        pytest.param([signal.SIGINT, signal.SIGINT], 130, "interrupted", id="double-sigint"),
        pytest.param([signal.SIGTERM, signal.SIGINT], 143, "terminated", id="sigterm-then-sigint"),
    ],
)
def test_a_signal_stops_the_run_cleanly_and_keeps_what_was_counted(
    tmp_path: Path, signals: list[signal.Signals], code: int, status: str
) -> None:
    cfg = live_config(tmp_path)
    db = tmp_path / "people.db"
    proc = start(cfg)
    wait_for_frames(proc, db, 5)
    for i, sig in enumerate(signals):
        if i:
            time.sleep(0.05)
        proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    (run,) = runs(db)
    assert run[1] == status and run[2] is not None
    with sqlite3.connect(db) as con:
        n, known, first, last = con.execute(
            "SELECT COUNT(*), COUNT(fused_count), MIN(frame_index), MAX(frame_index) FROM frames"
        ).fetchone()
        summary = con.execute("SELECT summary_json FROM runs").fetchone()[0]
    assert n >= 5 and known >= 1
    assert first == 0 and last == n - 1  # every published frame stored, none twice, no hole
    assert summary is not None and '"frames_published"' in summary
    assert "stored:" in out  # the summary and the database path were printed


def test_kill_9_then_a_new_run_marks_the_dead_run_aborted(tmp_path: Path) -> None:
    cfg = live_config(tmp_path)
    db = tmp_path / "people.db"
    proc = start(cfg)
    wait_for_frames(proc, db, 5)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    stored_before = stored_frames(db)
    assert runs(db)[0][1] == "running"  # what kill -9 leaves behind

    (tmp_path / "b").mkdir()
    second = start(write_config(tmp_path / "b", **{"storage.db_path": str(db), "max_frames": 2}))
    _out, err = second.communicate(timeout=120)
    assert second.returncode == 0, err[-3000:]
    (dead, ok) = runs(db)
    assert dead[1] == "aborted" and dead[2] is not None
    assert ok[1] == "completed"
    with sqlite3.connect(db) as con:
        last_published = con.execute("SELECT MAX(published_at) FROM frames WHERE run_id = ?", (dead[0],)).fetchone()[0]
        assert con.execute("SELECT COUNT(*) FROM frames WHERE run_id = ?", (dead[0],)).fetchone()[0] == stored_before
    assert dead[2] == last_published  # closed at its last stored frame's time
