"""Several streams in one process (``streams:`` with more than one entry): ``headless`` runs them all
at once, one run per stream in one database, the stream id on every row; a stream that cannot
start is reported while the others count; a signal stops them all; ``bench --streams N``.

Real parts: vtest.avi decoded by PyAV, the demo detector on ONNX Runtime (CPU), SQLite files.
"""

from __future__ import annotations

import csv
import signal
import sqlite3
import time
from pathlib import Path

import pytest
import yaml

from app.headless import load_config_with_overrides, run_streams
from config import load_pipeline_config
from config.errors import ConfigError
from tests.test_headless import VTEST, needs_assets, run_cli, write_config
from tests.test_signals import start, stored_frames

pytestmark = [needs_assets, pytest.mark.slow, pytest.mark.timeout(420)]


def two_stream_config(tmp_path: Path, *, third: str | None = None, live: bool = False) -> Path:
    """vtest.avi twice (ids camA, camB), the global pass, STRICT_SYNC, detections; ``third``: a
    third stream's uri; ``live``: looped at the file's rate until stopped."""
    path = write_config(
        tmp_path,
        **{
            "branches.yolo_tiles.enabled": False,
            "branches.density.enabled": False,
            "fusion.strategy": "STRICT_SYNC",
            "fusion.strict_sync_timeout_ms": 60000.0,
            "counting.policy": "detections",
            "max_frames": None if live else 4,
        },
    )
    data = yaml.safe_load(path.read_text())
    s0 = dict(data["streams"][0], loop=live, realtime=live)
    data["streams"] = [dict(s0, id="camA"), dict(s0, id="camB")]
    if third is not None:
        data["streams"].append(dict(s0, id="camC", uri=third))
    path.write_text(yaml.safe_dump(data))
    return path


def runs_of(db: Path) -> list[tuple[int, str, str]]:
    with sqlite3.connect(db) as con:
        return [(int(i), str(st), str(src)) for i, st, src in con.execute("SELECT id, status, source FROM runs ORDER BY id")]


def test_two_streams_count_at_once_each_in_its_own_run_and_export_apart(tmp_path: Path) -> None:
    """The command line with vtest twice (camA, camB) and a missing third stream: the missing one is
    reported (exit 3, no traceback) while the two others count, each in its own run, every row
    under its stream id, and each exported to its own file."""
    cfg_path = two_stream_config(tmp_path, third=str(tmp_path / "missing.mp4"))
    target = tmp_path / "counts.csv"
    proc = run_cli("headless", "--config", str(cfg_path), "--export", str(target), "--quiet", timeout=400)
    assert proc.returncode == 3, proc.stderr[-3000:]  # SourceError: the missing stream
    assert "Traceback" not in proc.stderr
    assert "missing.mp4" in proc.stderr + proc.stdout and "video not found" in proc.stdout
    assert "=== stream camA ===" in proc.stdout and "=== stream camC ===" in proc.stdout

    db = tmp_path / "people.db"
    stored = runs_of(db)
    assert sorted(st for _, st, _ in stored) == ["completed", "completed"]
    with sqlite3.connect(db) as con:
        rows = con.execute("SELECT run_id, stream_id, frame_index, detection_count FROM frames ORDER BY run_id, frame_index").fetchall()
    per_stream: dict[str, list[tuple[int, int, int]]] = {}
    for run_id, sid, idx, n in rows:
        per_stream.setdefault(sid, []).append((run_id, idx, n))
    assert sorted(per_stream) == ["camA", "camB"]
    for sid, frames in per_stream.items():
        assert [i for _, i, _ in frames] == [0, 1, 2, 3], sid
        assert len({r for r, _, _ in frames}) == 1  # one run per stream
    assert per_stream["camA"][0][0] != per_stream["camB"][0][0]
    # the same file through both streams: the same detections, frame for frame
    assert [n for _, _, n in per_stream["camA"]] == [n for _, _, n in per_stream["camB"]]
    assert all(n > 0 for _, _, n in per_stream["camA"])
    for sid in ("camA", "camB"):
        with open(tmp_path / f"counts.{sid}.csv", newline="") as f:
            exported = list(csv.DictReader(f))
        assert len(exported) == 4 and {r["stream_id"] for r in exported} == {sid}
    assert not (tmp_path / "counts.camC.csv").exists()


def test_run_streams_reports_each_stream(tmp_path: Path) -> None:
    """``run_streams`` (what the command calls): one StreamRun per stream, the failing one with its
    error and no run; exit_code picks the failing stream's code."""
    from app.headless import exit_code

    cfg_path = two_stream_config(tmp_path, third=str(tmp_path / "missing.mp4"))
    data = yaml.safe_load(cfg_path.read_text())
    data["streams"] = data["streams"][1:]  # camB and the missing camC: one run is enough here
    data["max_frames"] = 2
    cfg_path.write_text(yaml.safe_dump(data))

    class Args:
        config = str(cfg_path)

    out: list[str] = []

    class Out:
        def write(self, s: str) -> int:
            out.append(s)
            return len(s)

        def flush(self) -> None:
            pass

    runs = run_streams(load_config_with_overrides(Args()), out=Out())  # type: ignore[arg-type]
    by_id = {r.stream_id: r for r in runs}
    assert by_id["camB"].code == 0 and by_id["camB"].run_id is not None and by_id["camB"].summary is not None
    assert by_id["camB"].summary.frames == 2
    assert by_id["camC"].run_id is None and by_id["camC"].error is not None and "missing.mp4" in by_id["camC"].error
    assert exit_code(runs) == 3
    assert "=== stream camC ===" in "".join(out)


def test_a_signal_stops_every_stream(tmp_path: Path) -> None:
    cfg_path = two_stream_config(tmp_path, live=True)
    db = tmp_path / "people.db"
    proc = start(cfg_path)
    deadline = time.monotonic() + 300
    while True:  # both streams have stored frames
        if proc.poll() is not None:
            pytest.fail(f"ended early (exit {proc.returncode}): {proc.communicate()[1][-2000:]}")
        if stored_frames(db) >= 6:
            with sqlite3.connect(db, timeout=5) as con:
                if con.execute("SELECT COUNT(DISTINCT stream_id) FROM frames").fetchone()[0] == 2:
                    break
        assert time.monotonic() < deadline, "no frames of both streams stored"
        time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=90)
    assert proc.returncode == 143, err[-3000:]
    assert "Traceback" not in err
    assert [st for _, st, _ in runs_of(db)] == ["terminated", "terminated"]


def test_repeated_stream_ids_are_refused(tmp_path: Path) -> None:
    path = two_stream_config(tmp_path)
    data = yaml.safe_load(path.read_text())
    data["streams"][1]["id"] = "camA"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"streams: ids must be unique.*camA"):
        load_pipeline_config(path)


def test_bench_streams_reports_each_stream(tmp_path: Path) -> None:
    cfg = write_config(
        tmp_path,
        **{"branches.yolo_tiles.enabled": False, "branches.density.enabled": False, "fusion.strategy": "STRICT_SYNC",
           "fusion.strict_sync_timeout_ms": 60000.0, "streams.0.uri": str(VTEST)},
    )
    out = tmp_path / "bench"
    proc = run_cli("bench", "--config", str(cfg), "--scenario", "e2e", "--streams", "2", "--frames", "7",
                   "--out", str(out), timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    import json

    report = json.loads((out / "report.json").read_text())
    keys = [k for k in report["runs"] if k.startswith("streams2.")]
    assert keys == ["streams2.1/STRICT_SYNC", "streams2.2/STRICT_SYNC"]
    for k in keys:
        r = report["runs"][k]
        assert r["frames"] == 7 and r["fps"] > 0 and r["end_to_end_p50_ms"] > 0
    assert "streams2.1/STRICT_SYNC" in proc.stdout
