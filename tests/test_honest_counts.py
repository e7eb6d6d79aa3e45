"""The count contract through the real pipeline: the demo detector on vtest.avi delivered at its
frame rate (a live-like source), real SQLite, real exports. The detector is made slower than the
source with a controlled delay (it then cannot keep up on any machine); the model itself is real.

Each test fails on the code before the count contract: unknown counts were stored as 0, a frame
dropped for a branch was completed from an older result, ASYNC_OVERLAY's first frames were not
stored, RAW counts never reached the window's sink.
"""

from __future__ import annotations

import csv
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from app.build import close_branches, make_branches, make_counter, make_source
from app.headless import load_config_with_overrides
from pipeline.orchestrator import Orchestrator
from pipeline.types import Frame
from storage.export import export_counts
from storage.writer import SqliteWriter
from tests.test_headless import needs_assets, write_config
from ui.bridge import LatestResultSink

pytestmark = [needs_assets, pytest.mark.slow, pytest.mark.timeout(300)]

DELAY_S = 0.35  # > 3 frame intervals of the 10 frames/s source: the branch cannot keep up


class Delayed:
    """A real branch made slower by a fixed delay (controls time only; the results are the model's)."""

    def __init__(self, inner: Any, delay_s: float) -> None:
        self.inner, self.delay_s = inner, delay_s
        self.name, self.every_n_frames = inner.name, inner.every_n_frames

    def run(self, frame: Frame) -> Any:
        time.sleep(self.delay_s)
        return self.inner.run(frame)

    def cancel(self) -> None:
        self.inner.cancel()

    def resume(self) -> None:
        self.inner.resume()

    def close(self) -> None:
        self.inner.close()


def run_live(tmp_path: Path, strategy: str, frames: int, extra_sinks: tuple[Any, ...] = (), during: Any = None) -> Path:
    cfg_path = write_config(
        tmp_path,
        **{
            "streams.0.realtime": True,
            "branches.yolo_tiles.enabled": False,
            "branches.density.enabled": False,
            "max_frames": frames,
            "fusion.strategy": strategy,
            "fusion.strict_sync_timeout_ms": 10_000.0,
            "fusion.max_count_age_ms": 10_000.0,
            "counting.policy": "detections",
            "tracking.enabled": False,  # counts of the frame's own detections (tracking has its tests)
        },
    )

    class Args:
        config = str(cfg_path)

    cfg = load_config_with_overrides(Args())  # type: ignore[arg-type]
    db = Path(cfg.storage.db_path)
    with SqliteWriter.from_config(cfg.storage) as writer:
        source = make_source(cfg.streams[0], "cpu", on_event=writer.event)
        source.open()  # type: ignore[attr-defined]
        branches = [Delayed(b, DELAY_S) for b in make_branches(cfg)]
        writer.start_run({}, {}, cfg.streams[0].uri, strategy)
        orch = Orchestrator(
            source, branches, make_counter(cfg, 10.0), cfg.fusion, sinks=(writer, *extra_sinks),
            max_frames=frames, on_full="drop",
        )
        try:
            with orch:
                if during is not None:
                    during(orch, writer, db)
                assert orch.wait(240)
        finally:
            close_branches(branches)
        writer.end_run("completed", {})
    return db


def rows(db: Path) -> list[sqlite3.Row]:
    con = sqlite3.connect(db)
    con.row_factory = sqlite3.Row
    return con.execute("SELECT * FROM frames ORDER BY frame_index").fetchall()


@pytest.mark.parametrize("strategy", ["STRICT_SYNC", "ASYNC_OVERLAY"])
def test_a_live_source_faster_than_the_detector_stores_every_frame_and_never_an_unknown_as_zero(
    tmp_path: Path, strategy: str
) -> None:
    db = run_live(tmp_path, strategy, frames=40)
    stored = rows(db)
    assert [r["frame_index"] for r in stored] == list(range(40))  # every published frame, once, in order
    unknown = [r for r in stored if r["fused_count"] is None]
    known = [r for r in stored if r["fused_count"] is not None]
    assert unknown  # the detector cannot keep up (STRICT: dropped frames; ASYNC: warming up, then stale or known)
    if strategy == "STRICT_SYNC":  # frame 0 always reaches the detector, well within the 10 s timeout
        assert stored[0]["fused_count"] is not None
    for r in unknown:
        assert r["unknown_reason"], r["frame_index"]
    if strategy == "STRICT_SYNC":  # a dropped frame is unknown, never completed from an older result
        assert any("dropped" in r["unknown_reason"] for r in unknown)
    for r in known:  # a number is its counted frame's own (never completed from an older result)
        assert r["unknown_reason"] is None and r["counts_frame_index"] is not None
        assert r["counts_frame_index"] <= r["frame_index"]
        if strategy == "STRICT_SYNC":
            assert r["counts_frame_index"] == r["frame_index"] and r["partial"] == 0
    # a 0 is stored only where the frame's own detections say 0
    for r in known:
        if r["fused_count"] == 0:
            assert r["detection_count"] == 0
    if strategy == "ASYNC_OVERLAY":  # its first frames (before any was counted) are stored as unknown
        assert stored[0]["fused_count"] is None and "warming up" in stored[0]["unknown_reason"]


def test_an_export_during_a_run_returns_every_frame_stored_so_far_in_order(tmp_path: Path) -> None:
    exports: list[list[dict[str, str]]] = []

    def export_twice(orch: Orchestrator, writer: SqliteWriter, db: Path) -> None:
        for n in (8, 20):
            deadline = time.monotonic() + 120
            while orch.status.frames_published < n and time.monotonic() < deadline:
                time.sleep(0.05)
            writer.flush()
            out = tmp_path / f"during_{n}.csv"
            export_counts(db, out)
            with out.open() as f:
                exports.append(list(csv.DictReader(f)))

    db = run_live(tmp_path, "STRICT_SYNC", frames=30, during=export_twice)
    for got in exports:
        idx = [int(r["frame_index"]) for r in got]
        assert idx == list(range(len(idx))) and len(idx) >= 8  # a prefix: no hole, no disorder
        for r in got:
            assert (r["fused_count"] == "") == (r["unknown_reason"] != "")  # unknown is an empty cell
    assert len(exports[1]) > len(exports[0])
    assert len(rows(db)) == 30


def test_raw_counts_reach_the_windows_sink(tmp_path: Path) -> None:
    sink = LatestResultSink()
    run_live(tmp_path, "RAW_STREAM_WITH_METADATA", frames=20, extra_sinks=(sink,))
    record = sink.latest_metadata
    assert record is not None  # the counts travel to the window apart from the raw frames
    frame = sink.take()
    assert frame is not None and frame.raw and frame.counts.fused is None  # a raw frame carries no count
    assert record.frame_index <= frame.frame.frame_index
