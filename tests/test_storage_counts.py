"""Honest counts in storage: unknown is NULL (an empty CSV cell, a JSON null) with its reason, never
0; every published frame of every strategy is stored; each timing under the frame it belongs to;
schema version 3 and the migration of older files. Real SQLite files, a real ``Fusion``."""

from __future__ import annotations

import csv
import json
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from config.errors import StorageError
from config.schema import FusionConfig
from pipeline.fusion import Fusion, Published
from pipeline.types import (
    BranchResult,
    BranchTimings,
    CountResult,
    DensityMap,
    Detections,
    FrameMeta,
    FrameTimings,
    FusedResult,
    MetadataRecord,
    StageTimings,
    WorkRecord,
    missing_reason,
)
from storage import queries
from storage.export import export_counts
from storage.schema import SCHEMA_VERSION, TABLES
from storage.writer import SqliteWriter
from tests.storage_builders import StepClock, make_detections, make_record, make_result, no_new_threads

T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def _no_thread_left() -> Iterator[None]:
    with no_new_threads():
        yield


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def frames_table(db: Path) -> list[sqlite3.Row]:
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        return conn.execute("SELECT * FROM frames ORDER BY rowid").fetchall()


def timing_table(db: Path) -> list[tuple[int, str, float]]:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT frame_index, stage, ms FROM frame_timings ORDER BY rowid").fetchall()


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames or ()) == queries.COUNT_COLUMNS
        return list(reader)


# --- unknown counts: NULL, an empty cell, null -----------------------------------------------------


def test_an_unknown_count_is_null_an_empty_csv_cell_and_a_json_null_with_its_reason(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    with SqliteWriter(db, clock=StepClock(T0)) as writer:
        run_id = writer.start_run({}, {}, "s", "STRICT_SYNC")
        writer.write(make_result(0, fused=2.0, detections=2, zones={"door": 1.0}, strategy="STRICT_SYNC"))
        writer.write(make_result(1, fused=None, zones={"door": None}, strategy="STRICT_SYNC",
                                 missing={"density": "late", "yolo_tiles": "dropped (queue full)"}))
        writer.end_run("completed")

    known, unknown = frames_table(db)
    assert (known["fused_count"], known["detection_count"], known["unknown_reason"]) == (2.0, 2, None)
    assert unknown["fused_count"] is None and unknown["detection_count"] is None and unknown["density_count"] is None
    assert unknown["unknown_reason"] == "late: density; dropped: yolo_tiles (queue full)"
    assert json.loads(unknown["missing_json"]) == {"density": "late", "yolo_tiles": "dropped (queue full)"}
    assert json.loads(unknown["late_branches"]) == ["density"] and unknown["partial"] == 1
    assert json.loads(unknown["zones_json"]) == {"door": None}

    rows = queries.count_history(db, run_id=run_id)
    assert rows[1]["fused_count"] is None and rows[1]["detection_count"] is None
    assert rows[1]["unknown_reason"] == "late: density; dropped: yolo_tiles (queue full)"
    assert rows[1]["counts_frame_index"] == 1 and rows[1]["zones"] == {"door": None}

    export_counts(db, tmp_path / "c.csv")
    cells = read_csv(tmp_path / "c.csv")
    assert cells[1]["fused_count"] == "" and cells[1]["detection_count"] == "" and cells[1]["density_count"] == ""
    assert cells[1]["unknown_reason"] == "late: density; dropped: yolo_tiles (queue full)"
    assert json.loads(cells[1]["missing"]) == {"density": "late", "yolo_tiles": "dropped (queue full)"}
    assert cells[1]["zones"] == '{"door":null}'
    assert (cells[0]["fused_count"], cells[0]["unknown_reason"]) == ("2.0", "")
    assert "None" not in (tmp_path / "c.csv").read_text()

    export_counts(db, tmp_path / "c.json")
    data = json.loads((tmp_path / "c.json").read_text())
    assert data[1]["fused_count"] is None and data[1]["detection_count"] is None
    assert data[1]["unknown_reason"] == "late: density; dropped: yolo_tiles (queue full)"
    assert data[0]["unknown_reason"] is None and data[0]["fused_count"] == 2.0
    assert '"fused_count":null' in (tmp_path / "c.json").read_text()


def test_statistics_skip_unknown_counts_and_say_how_many(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    with SqliteWriter(db) as writer:
        run_id = writer.start_run({}, {}, "s", "ASYNC_OVERLAY")
        writer.write(make_result(0, fused=None, unknown_reason="warming up", counts_frame_index=None))
        writer.write(make_result(1, fused=2.0))
        writer.write(make_result(2, fused=None, unknown_reason="stale: counts of frame 1 are 2301 ms old (max 2000)"))
        writer.write(make_result(3, fused=None, unknown_reason="stale: counts of frame 1 are 2334 ms old (max 2000)"))
        writer.write(make_result(4, fused=4.0))
        writer.end_run("completed")
    summary = queries.count_summary(db, run_id=run_id)
    assert summary == {
        "frames": 5, "known": 2, "unknown": 3,
        "unknown_reasons": {"stale: counts of frame N are N ms old (max N)": 2, "warming up": 1},
        "mean_fused": 3.0, "max_fused": 4.0,
    }
    assert queries.count_summary(db, run_id=99) == {
        "frames": 0, "known": 0, "unknown": 0, "unknown_reasons": {}, "mean_fused": None, "max_fused": None,
    }
    (run,) = queries.runs(db)
    assert (run["frames"], run["unknown_frames"]) == (5, 3)


# --- what write / write_metadata / write_work store ------------------------------------------------


def test_an_async_warm_up_publication_is_stored_as_unknown_with_its_reason(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    with SqliteWriter(db, flush_interval_s=0.05) as writer:
        run_id = writer.start_run({}, {}, "s", "ASYNC_OVERLAY")
        for i in range(2):  # nothing finalized yet: no counted frame
            writer.write(make_result(i, fused=None, unknown_reason="warming up: yolo", counts_frame_index=None,
                                     counts_age_ms=None))
        writer.write(make_result(2, fused=5.0, counts_frame_index=0, counts_age_ms=70.0))
        assert wait_for(lambda: len(frames_table(db)) == 3), "stored within the flush interval, no flush() needed"
        writer.end_run("completed")
    rows = queries.count_history(db, run_id=run_id)
    assert [(r["frame_index"], r["fused_count"], r["unknown_reason"], r["counts_frame_index"], r["counts_age_ms"])
            for r in rows] == [
        (0, None, "warming up: yolo", None, None),
        (1, None, "warming up: yolo", None, None),
        (2, 5.0, None, 0, 70.0),
    ]


def test_branch_work_of_an_older_frame_is_stored_under_that_frame(tmp_path: Path) -> None:
    # ASYNC_OVERLAY: frame 5's publication reports yolo's work on frame 3 and density's on frame 4.
    older = StageTimings(
        frame_index=5,
        frame=FrameTimings(decode_ms=1.5, queue_depths={"yolo": 2}),
        branches=(BranchTimings("yolo", 3, {"run_ms": 20.0, "postprocess_ms": 1.0}), BranchTimings("density", 4, {"run_ms": 60.0})),
        fusion_wait_ms=0.0,
        overlay_lag_ms={"yolo": 66.0, "density": 40.0},
        end_to_end_ms=3.0,
    )
    later = StageTimings(frame_index=6, branches=(BranchTimings("density", 3, {"run_ms": 55.0}),), end_to_end_ms=2.0)
    db = tmp_path / "t.db"
    with SqliteWriter(db) as writer:
        run_id = writer.start_run({}, {}, "s", "ASYNC_OVERLAY")
        writer.write(make_result(3, timings={"decode_ms": 1.0, "end_to_end_ms": 2.0}))
        writer.write(make_result(5, counts_frame_index=3, timings=older))
        writer.write(make_result(6, counts_frame_index=4, timings=later))
        writer.end_run("completed")
    stored = timing_table(db)
    by_frame: dict[int, set[str]] = {}
    for idx, stage, _ in stored:
        by_frame.setdefault(idx, set()).add(stage)
    assert by_frame[3] >= {"yolo.run_ms", "yolo.postprocess_ms", "density.run_ms", "decode_ms"}
    assert by_frame[4] == {"density.run_ms", "run_ms"}
    assert by_frame[5] == {"decode_ms", "queue_depth_yolo", "fusion_wait_ms", "overlay_lag_yolo_ms",
                           "overlay_lag_density_ms", "overlay_lag_ms", "end_to_end_ms"}
    assert not any(s.startswith(("yolo.", "density.")) for s in by_frame[5] | by_frame[6])
    assert [i for i in by_frame if i not in (3, 4, 5, 6)] == []
    # A frame's work reported by two publications: the plain total adds up, each branch's once.
    rows = queries.timing_rows(db, run_id)
    assert [sorted(r) for r in rows][1] == ["density.run_ms", "run_ms"]
    assert rows[0]["run_ms"] == 20.0 + 55.0 and rows[0]["yolo.run_ms"] == 20.0 and rows[0]["density.run_ms"] == 55.0
    assert rows[0]["decode_ms"] == 1.0 and rows[2]["decode_ms"] == 1.5


def test_raw_metadata_rows_are_stored_in_any_order_and_exported_in_frame_order(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    with SqliteWriter(db, clock=StepClock(T0)) as writer:
        run_id = writer.start_run({}, {}, "s", "RAW_STREAM_WITH_METADATA")
        for i in range(4):
            writer.write(make_result(i, raw=True))
        for i in (2, 0, 3, 1):  # metadata records finish out of frame order
            fused = None if i == 3 else float(i)
            writer.write_metadata(make_record(i, fused=fused, missing={"density": "late"} if i == 3 else None))
        writer.end_run("completed")
        second = writer.start_run({}, {}, "s", "RAW_STREAM_WITH_METADATA")
        for i in (1, 0):
            writer.write_metadata(make_record(i))
        writer.end_run("completed")
    assert [r["frame_index"] for r in frames_table(db)] == [2, 0, 3, 1, 1, 0], "stored as they came"
    published = [r["published_at"] for r in frames_table(db)]
    assert published == sorted(published), "published_at follows arrival, not frame order"

    export_counts(db, tmp_path / "c.csv", run_id=run_id)
    cells = read_csv(tmp_path / "c.csv")
    assert [c["frame_index"] for c in cells] == ["0", "1", "2", "3"]
    assert [c["fused_count"] for c in cells] == ["0.0", "1.0", "2.0", ""]
    assert cells[3]["unknown_reason"] == "late: density" and cells[3]["counts_frame_index"] == "3"
    assert {c["strategy"] for c in cells} == {"RAW_STREAM_WITH_METADATA"}
    export_counts(db, tmp_path / "all.json")
    data = json.loads((tmp_path / "all.json").read_text())
    assert [(r["run_id"], r["frame_index"]) for r in data] == [(run_id, 0), (run_id, 1), (run_id, 2), (run_id, 3),
                                                               (second, 0), (second, 1)]


def test_an_export_during_a_run_has_every_frame_stored_so_far(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    with SqliteWriter(db) as writer:
        writer.start_run({}, {}, "s", "ASYNC_OVERLAY")
        for i in range(5):
            writer.write(make_result(i, fused=None if i < 2 else float(i), unknown_reason="warming up",
                                     counts_frame_index=None if i < 2 else i - 2))
        writer.flush()
        assert export_counts(db, tmp_path / "a.json") == 5
        writer.write(make_result(5))
        writer.flush()
        assert export_counts(db, tmp_path / "b.json") == 6
        writer.end_run("completed")
    first = json.loads((tmp_path / "a.json").read_text())
    assert [r["frame_index"] for r in first] == [0, 1, 2, 3, 4]
    assert [r["fused_count"] for r in first] == [None, None, 2.0, 3.0, 4.0]


def test_work_no_publication_reported_is_stored_as_timings_only(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    work = WorkRecord(StageTimings(frame_index=9, branches=(BranchTimings("yolo", 8, {"run_ms": 4.0}),
                                                            BranchTimings("yolo", 9, {"run_ms": 5.0}))))
    with SqliteWriter(db) as writer:
        writer.start_run({}, {}, "s", "ASYNC_OVERLAY")
        writer.write(make_result(9))
        writer.write_work(work)
        writer.end_run("completed")
    assert [r["frame_index"] for r in frames_table(db)] == [9]
    assert sorted((i, s, ms) for i, s, ms in timing_table(db) if "run_ms" in s) == [
        (8, "run_ms", 4.0), (8, "yolo.run_ms", 4.0), (9, "run_ms", 5.0), (9, "yolo.run_ms", 5.0),
    ]


# --- every published frame of every strategy, from a real Fusion ---------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def people_combine(
    results: Mapping[str, BranchResult], frame: FrameMeta, missing: Mapping[str, str] | None = None
) -> tuple[Detections, DensityMap | None, CountResult]:
    """Real counting, simplified: detections plus the density integral; unknown when a branch is missing."""
    del frame
    dets = Detections.merge([r.detections for _, r in sorted(results.items()) if r.detections is not None])
    density = next((r.density for r in results.values() if r.density is not None), None)
    if missing:
        return dets, density, CountResult.unknown(missing_reason(missing), "sum")
    dcount = None if density is None else density.count
    return dets, density, CountResult(len(dets), dcount, len(dets) + (dcount or 0.0), "sum")


RATES = {"yolo": 1, "density": 2}
LATENCY_MS = {"yolo": 70.0, "density": 50.0}  # results land 1-2 frames after their frame


def play(strategy: str, n_frames: int) -> list[Published]:
    """Frames every 33 ms into a real Fusion, each due branch's result after its latency; then flush."""
    clock = Clock()
    fusion = Fusion(strategy, people_combine, FusionConfig(strict_sync_timeout_ms=500.0), clock=clock, rates=RATES)
    t0 = clock.now
    events = []
    for i in range(n_frames):
        events.append((i * 33.0, 0, i, ""))
        events += [(i * 33.0 + LATENCY_MS[b], 1, i, b) for b, n in RATES.items() if i % n == 0]
    outs: list[Published] = []
    metas: dict[int, FrameMeta] = {}
    for t_ms, kind, i, branch in sorted(events):
        clock.now = t0 + t_ms / 1000.0
        outs += fusion.poll(clock.now)
        if kind == 0:
            metas[i] = FrameMeta("cam0", i, i / 30, clock.now, 64, 48)
            outs += fusion.on_frame(metas[i], tuple(b for b, n in RATES.items() if i % n == 0),
                                    frame_timings=FrameTimings(decode_ms=1.0))
        elif branch == "density":
            grid = DensityMap(np.full((6, 8), 0.05, np.float32), 8)
            outs += fusion.push(BranchResult(metas[i], branch, density=grid, timings={"run_ms": 40.0}, done_ts=clock.now))
        else:
            dets = make_detections(i % 4, seed=i)
            outs += fusion.push(BranchResult(metas[i], branch, detections=dets, timings={"run_ms": 10.0 + i}, done_ts=clock.now))
    return outs + fusion.flush(clock.now)


def deliver(writer: SqliteWriter, outs: list[Published]) -> None:
    """What the orchestrator does with each publication (``Orchestrator._deliver``)."""
    for out in outs:
        if isinstance(out, FusedResult):
            writer.write(out)
        elif isinstance(out, MetadataRecord):
            writer.write_metadata(out)
        else:
            writer.write_work(out)


@pytest.mark.parametrize("strategy", ["STRICT_SYNC", "ASYNC_OVERLAY", "RAW_STREAM_WITH_METADATA"])
def test_every_published_frame_of_every_strategy_is_stored_with_each_work_under_its_frame(
    tmp_path: Path, strategy: str
) -> None:
    n = 12
    outs = play(strategy, n)
    db = tmp_path / "t.db"
    with SqliteWriter(db, flush_interval_s=0.05) as writer:
        run_id = writer.start_run({}, {}, "synthetic", strategy)
        deliver(writer, outs)
        assert wait_for(lambda: len(frames_table(db)) == n), "every frame stored within the flush interval"
        writer.end_run("completed")

    rows = queries.count_history(db, run_id=run_id)
    assert [r["frame_index"] for r in rows] == list(range(n)), "every frame once, in frame order"
    published = {o.frame.frame_index: o for o in outs if isinstance(o, FusedResult)}
    counted = {o.frame_index: o for o in outs if isinstance(o, MetadataRecord)} or published
    for row in rows:
        c = counted[row["frame_index"]].counts
        assert (row["fused_count"], row["detection_count"], row["unknown_reason"]) == (c.fused, c.detection, c.unknown_reason)
    if strategy == "ASYNC_OVERLAY":
        warm = [r for r in rows if r["counts_frame_index"] is None]
        assert warm and warm[0]["frame_index"] == 0, "the warm-up frames are stored"
        assert all(r["fused_count"] is None and r["unknown_reason"].startswith("warming up") for r in warm)
        carried = [(o.frame.frame_index, bt.frame_index) for o in published.values() for bt in o.timings.branches]
        assert any(f != k for f, k in carried), "publications carried work of older frames (the case under test)"
    else:
        assert all(r["counts_frame_index"] == r["frame_index"] for r in rows)

    reported = {(bt.frame_index, f"{bt.branch}.{stage}", ms)
                for o in outs for bt in o.timings.branches for stage, ms in bt.stages.items()}
    stored = {(i, s, ms) for i, s, ms in timing_table(db) if "." in s}
    assert reported and stored == reported, "each branch's work on each frame, under that frame"
    assert len([t for t in timing_table(db) if "." in t[1]]) == len(reported), "once each"


# --- the migration of version 1 and 2 files (version 3 files: tests/test_storage_tracking.py) -----------

V2_DDL = [
    """CREATE TABLE "runs" ("id" INTEGER PRIMARY KEY, "started_at" TEXT NOT NULL, "ended_at" TEXT,
       "status" TEXT NOT NULL, "source" TEXT, "strategy" TEXT, "config_json" TEXT, "versions_json" TEXT,
       "summary_json" TEXT, "pid" INTEGER, "host" TEXT, "proc_start" TEXT)""",
    """CREATE TABLE "frames" ("run_id" INTEGER NOT NULL REFERENCES "runs"("id"), "frame_index" INTEGER NOT NULL,
       "pts" REAL, "stream_id" TEXT, "strategy" TEXT, "partial" INTEGER NOT NULL, "fused_count" REAL NOT NULL,
       "detection_count" INTEGER NOT NULL, "density_count" REAL, "policy" TEXT, "region_source" TEXT,
       "zones_json" TEXT, "late_branches" TEXT, "overlays_json" TEXT, "published_at" TEXT NOT NULL)""",
    'CREATE INDEX "idx_frames_run_id_frame_index" ON "frames" ("run_id", "frame_index")',
    'CREATE INDEX "idx_frames_published_at" ON "frames" ("published_at")',
    """CREATE TABLE "frame_timings" ("run_id" INTEGER NOT NULL REFERENCES "runs"("id"),
       "frame_index" INTEGER NOT NULL, "stage" TEXT NOT NULL, "ms" REAL)""",
    'CREATE INDEX "idx_frame_timings_run_id_frame_index" ON "frame_timings" ("run_id", "frame_index")',
    """CREATE TABLE "events" ("run_id" INTEGER REFERENCES "runs"("id"), "ts" TEXT NOT NULL, "kind" TEXT NOT NULL,
       "frame_index" INTEGER, "message" TEXT, "data_json" TEXT)""",
    'CREATE INDEX "idx_events_run_id_frame_index" ON "events" ("run_id", "frame_index")',
]
"""The version 2 schema as version 2 of this program created it (sqlite_master of such a file)."""

V1_RUNS = """CREATE TABLE "runs" ("id" INTEGER PRIMARY KEY, "started_at" TEXT NOT NULL, "ended_at" TEXT,
    "status" TEXT NOT NULL, "source" TEXT, "strategy" TEXT, "config_json" TEXT, "versions_json" TEXT,
    "summary_json" TEXT)"""

OLD_FRAMES = [
    # run_id, frame_index, pts, partial, fused, detections, density, late_branches, published_at
    (1, 0, 0.0, 0, 3.0, 3, None, "[]", "2024-05-01T12:00:01.000000+00:00"),
    (1, 1, 0.04, 1, 4.5, 2, 2.5, '["density"]', "2024-05-01T12:00:02.000000+00:00"),
    (1, 2, 0.08, 0, 0.0, 0, None, None, "2024-05-01T12:00:03.000000+00:00"),
]


def make_old_database(path: Path, version: int, late_branches_of_frame_2: str | None = None) -> None:
    """A database file as version 1 or 2 wrote it: one completed run, three frames, timings, an event."""
    with sqlite3.connect(path) as conn:
        for ddl in V2_DDL:
            conn.execute(V1_RUNS if version == 1 and ddl.startswith('CREATE TABLE "runs"') else ddl)
        conn.execute(
            "INSERT INTO runs (id, started_at, ended_at, status, source, strategy) VALUES "
            "(1, '2024-05-01T12:00:00.000000+00:00', '2024-05-01T12:00:04.000000+00:00', 'completed', 'a.mp4', 'STRICT_SYNC')"
        )
        for run_id, idx, pts, partial, fused, dets, density, late, at in OLD_FRAMES:
            late = late_branches_of_frame_2 if idx == 2 and late_branches_of_frame_2 is not None else late
            conn.execute(
                "INSERT INTO frames (run_id, frame_index, pts, stream_id, strategy, partial, fused_count, detection_count, "
                "density_count, policy, region_source, zones_json, late_branches, overlays_json, published_at) "
                "VALUES (?, ?, ?, 'cam0', 'STRICT_SYNC', ?, ?, ?, ?, 'hybrid', '[]', '{\"door\":1.0}', ?, '[]', ?)",
                [run_id, idx, pts, partial, fused, dets, density, late, at],
            )
            conn.execute("INSERT INTO frame_timings VALUES (1, ?, 'decode_ms', ?)", [idx, 1.0 + idx])
        conn.execute("INSERT INTO events (run_id, ts, kind, message) VALUES (1, '2024-05-01T12:00:02.500000+00:00', 'drop', 'x')")
        conn.execute(f"PRAGMA user_version = {version}")


@pytest.mark.parametrize("version", [1, 2])
def test_an_older_database_is_migrated_to_the_current_version_keeping_its_rows(tmp_path: Path, version: int) -> None:
    db = tmp_path / f"v{version}.db"
    make_old_database(db, version)
    with SqliteWriter(db, clock=StepClock(T0)) as writer:
        run_id = writer.start_run({}, {}, "b.mp4", "ASYNC_OVERLAY")
        writer.write(make_result(0, fused=None, unknown_reason="warming up", counts_frame_index=None))
        writer.end_run("completed")

    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 5
        info = {r[1]: r for r in conn.execute("PRAGMA table_info(frames)")}
        assert list(info) == list(TABLES["frames"].columns)
        assert info["fused_count"][3] == 0 and info["detection_count"][3] == 0, "nullable now"
        assert info["run_id"][3] == 1 and info["published_at"][3] == 1
        indexes = {r[1] for r in conn.execute("PRAGMA index_list(frames)")}
        assert indexes == {"idx_frames_run_id_frame_index", "idx_frames_published_at"}
        (fk,) = conn.execute("PRAGMA foreign_key_list(frames)").fetchall()
        assert (fk[2], fk[3], fk[4]) == ("runs", "run_id", "id")
        assert conn.execute("SELECT name FROM sqlite_master WHERE name LIKE 'frames_v%'").fetchall() == []
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"

    old = queries.count_history(db, run_id=1)
    assert [(r["frame_index"], r["fused_count"], r["detection_count"], r["density_count"], r["partial"]) for r in old] == [
        (0, 3.0, 3, None, False), (1, 4.5, 2, 2.5, True), (2, 0.0, 0, None, False),
    ]
    assert [r["missing"] for r in old] == [{}, {"density": "late"}, {}], "made from late_branches"
    assert [r["late_branches"] for r in old] == [[], ["density"], []]
    assert all(r["unknown_reason"] is None and r["counts_frame_index"] is None and r["counts_age_ms"] is None for r in old)
    assert all(r["confirmed_count"] is None and r["occupancy"] is None and r["line_counts"] is None for r in old)
    assert all(r["region_counts"] is None and r["calibration"] is None for r in old), "not recorded before version 5"
    assert old[0]["zones"] == {"door": 1.0} and old[2]["published_at"] == "2024-05-01T12:00:03.000000+00:00"
    assert queries.timing_rows(db, 1) == [{"decode_ms": 1.0}, {"decode_ms": 2.0}, {"decode_ms": 3.0}]
    assert [e["kind"] for e in queries.events(db, 1)] == ["drop"]
    (new,) = queries.count_history(db, run_id=run_id)
    assert (new["fused_count"], new["unknown_reason"]) == (None, "warming up")
    assert [(r["id"], r["status"], r["frames"]) for r in queries.runs(db)] == [(1, "completed", 3), (run_id, "completed", 1)]


def test_a_migration_that_fails_leaves_the_old_file_as_it_was(tmp_path: Path) -> None:
    db = tmp_path / "v2.db"
    make_old_database(db, 2, late_branches_of_frame_2="not json")  # the copy cannot derive missing_json
    with pytest.raises(StorageError, match="malformed JSON"):
        SqliteWriter(db).start()
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 2
        assert [r[1] for r in conn.execute("PRAGMA table_info(frames)")][-1] == "published_at"
        assert conn.execute("SELECT COUNT(*) FROM frames").fetchone()[0] == 3
        assert conn.execute("SELECT name FROM sqlite_master WHERE name LIKE 'frames_v%'").fetchall() == []


def test_the_calibration_in_force_and_the_region_counts_are_stored_and_exported(tmp_path: Path) -> None:
    """Issue 11: per frame, which source counted each region, what each region contributed and the
    density calibration in force are in the database and in an export; a frame without a
    calibrated density map stores none (NULL, an empty CSV cell), not a made-up one."""
    import dataclasses

    from pipeline.types import DensityCalibration

    cal = DensityCalibration(
        scale=0.42, offset=-0.5, samples=12, frames=30, source="fit", raw=25.0, background=20.0, flat=1.0,
        region_scale=np.array([[0.42, 1.0, 0.42], [0.42, 0.42, 0.3]], np.float32),
    )
    dense = make_result(0, fused=41.5, density=41.5, strategy="STRICT_SYNC")
    region_counts = np.array([[1.0, 30.5, 1.0], [3.0, 4.0, 2.0]], np.float32)
    dense = dataclasses.replace(dense, counts=dataclasses.replace(dense.counts, calibration=cal, region_counts=region_counts))
    db = tmp_path / "c.db"
    with SqliteWriter(db, clock=StepClock(T0)) as writer:
        run_id = writer.start_run({}, {}, "clip.mp4", "STRICT_SYNC")
        writer.write(dense)
        writer.write(make_result(1, fused=3.0, strategy="STRICT_SYNC"))
        writer.end_run("completed")

    first, second = queries.count_history(db, run_id=run_id)
    assert first["region_source"] == [[0, 1, 0], [1, 1, 0]]
    assert first["region_counts"] == [[1.0, 30.5, 1.0], [3.0, 4.0, 2.0]]
    stored = first["calibration"]
    want = cal.to_dict()
    assert stored.keys() == want.keys()
    assert (stored["source"], stored["samples"], stored["frames"]) == ("fit", 12, 30)
    for key in ("scale", "offset", "raw", "background", "flat"):
        assert stored[key] == pytest.approx(want[key]), key
    np.testing.assert_allclose(stored["region_scale"], cal.region_scale, rtol=1e-6)
    assert second["calibration"] is None and second["region_counts"] == [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]]

    out = tmp_path / "c.csv"
    assert export_counts(db, out, run_id=run_id) == 2
    with out.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert json.loads(rows[0]["calibration"])["source"] == "fit"
    assert json.loads(rows[0]["region_source"]) == [[0, 1, 0], [1, 1, 0]]
    assert rows[1]["calibration"] == ""


def test_a_version_4_database_gets_the_calibration_columns_keeping_its_rows(tmp_path: Path) -> None:
    db = tmp_path / "v4.db"
    with SqliteWriter(db, clock=StepClock(T0)) as writer:
        writer.start_run({}, {}, "a.mp4", "STRICT_SYNC")
        writer.write(make_result(0, fused=3.0, strategy="STRICT_SYNC"))
        writer.end_run("completed")
    with sqlite3.connect(db) as conn:  # back to the version 4 layout: the two columns were its last
        conn.execute("ALTER TABLE frames DROP COLUMN calibration_json")
        conn.execute("ALTER TABLE frames DROP COLUMN region_counts_json")
        conn.execute("PRAGMA user_version = 4")
    with SqliteWriter(db, clock=StepClock(T0)) as writer:
        run_id = writer.start_run({}, {}, "b.mp4", "STRICT_SYNC")
        writer.write(make_result(0, fused=5.0, strategy="STRICT_SYNC"))
        writer.end_run("completed")
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 5
        assert [r[1] for r in conn.execute("PRAGMA table_info(frames)")] == list(TABLES["frames"].columns)
    old, new = queries.count_history(db)
    assert (old["run_id"], old["fused_count"], old["region_counts"], old["calibration"]) == (1, 3.0, None, None)
    assert (new["run_id"], new["fused_count"], new["region_counts"]) == (run_id, 5.0, [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]])
