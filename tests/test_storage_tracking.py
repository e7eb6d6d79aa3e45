"""People over time in storage (schema version 4): line crossings, zone visits and static tracks
from ``TrackingRecord``s, the tracking columns of each frame, their queries and exports, the
migration of a version 3 file, and a lock mid-run that loses no crossing.

Real SQLite files, real ``pipeline.tracking`` objects: a real ``PeopleTracker`` on crafted walkers
crossing a line and a zone beside a still cloth, and ``TrackedFrame``s built directly for the
rules one by one."""

from __future__ import annotations

import csv
import json
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from app.cli import EXPORT_KINDS, main
from config.errors import StorageError
from config.schema import LineConfig, TrackingConfig, ZoneConfig
from pipeline.tracking import LineCount, LineCrossing, PeopleTracker, TrackedFrame, ZoneExit
from pipeline.types import Detections, FrameMeta
from storage import queries
from storage.export import EXPORTS, export, export_counts
from storage.schema import SCHEMA_VERSION, TABLES
from storage.writer import SqliteWriter
from tests.storage_builders import (
    StepClock,
    make_result,
    make_track,
    make_tracked,
    make_tracking_result,
    no_new_threads,
    tracking_record,
)
from tests.test_storage_faults import FAST, Producer, hold_exclusive_lock, storage_events

T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def _no_thread_left() -> Iterator[None]:
    with no_new_threads():
        yield


def table(db: Path, name: str) -> list[sqlite3.Row]:
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        return conn.execute(f"SELECT * FROM {name} ORDER BY rowid").fetchall()


def store(db: Path, frames: list[TrackedFrame], clock: StepClock | None = None) -> int:
    """One run: each frame's publication and its TrackingRecord, once each, as fusion publishes them."""
    with SqliteWriter(db, clock=clock or StepClock(T0)) as writer:
        run_id = writer.start_run({}, {}, "clip.mp4", "STRICT_SYNC")
        for tf in frames:
            writer.write(make_tracking_result(tf))
            writer.write_tracking(tracking_record(tf))
        writer.end_run("completed")
    return run_id


# --- a real tracker: two walkers cross a line, one through a zone, a still cloth ---------------------

FPS = 10.0
DOOR = LineConfig(name="door", a=(300, 576), b=(300, 0), in_side="left")
BENCH = ZoneConfig(name="bench", polygon=[(350, 400), (450, 400), (450, 500), (350, 500)])
CLOTH = (610.0, 440.0, 690.0, 540.0)


def person(cx: float, feet_y: float, h: float = 100.0) -> tuple[float, float, float, float]:
    return (cx - h / 5, feet_y - h, cx + h / 5, feet_y)


def tracked_clip(frames: int = 45) -> list[TrackedFrame]:
    """Walker A goes left over the door (in), walker B right over it (out) and through the bench zone;
    the cloth lies still (static after 1 s). Frame 20 is partial (a branch missing: not tracked)."""
    tracker = PeopleTracker(TrackingConfig(lines=[DOOR], static_after_s=1.0), FPS, zones=[BENCH])
    rng = np.random.default_rng(0)
    out = []
    for i in range(frames):
        cloth = np.array(CLOTH) + rng.normal(0, 0.5, 4)
        boxes = [person(380 - 6 * i, 300), person(150 + 8 * i, 450), tuple(cloth)]
        dets = Detections(
            xyxy=np.array(boxes, np.float32), score=np.full(3, 0.8, np.float32),
            class_id=np.zeros(3, np.int32), source=np.full(3, -1, np.int32),
        )
        out.append(tracker.update(dets, FrameMeta("cam0", i, i / FPS, 0.0, 768, 576), known=i != 20))
    return out


@pytest.fixture(scope="module")
def clip() -> list[TrackedFrame]:
    return tracked_clip()


def test_a_real_trackers_crossings_visits_static_tracks_and_occupancy_are_stored(tmp_path: Path, clip: list[TrackedFrame]) -> None:
    db = tmp_path / "t.db"
    run_id = store(db, clip)
    crossings = [c for tf in clip for c in tf.crossings]
    exits = [e for tf in clip for e in tf.zone_exits]
    assert sorted(c.direction for c in crossings) == ["in", "out"] and len(exits) == 1, "the clip does what it says"

    # published_at: the clock steps once per write and once per write_tracking (start_run at T0)
    stamp = {tf.frame.frame_index: (T0 + timedelta(seconds=2 + 2 * k)).isoformat(timespec="microseconds")
             for k, tf in enumerate(clip)}
    assert queries.crossings(db, run_id) == [
        {"run_id": run_id, "stream_id": "cam0", "frame_index": c.frame_index, "pts": pytest.approx(c.pts),
         "published_at": stamp[c.frame_index], "line": "door", "track_id": c.track_id, "direction": c.direction}
        for c in crossings
    ]
    assert queries.line_totals(db, run_id) == {"door": {"in": 1, "out": 1}}
    assert clip[-1].line_counts["door"] == LineCount(1, 1), "the totals agree with the tracker's"

    (visit,) = queries.zone_visits(db, run_id)
    (e,) = exits
    assert visit == {
        "run_id": run_id, "stream_id": "cam0", "frame_index": e.frame_index, "published_at": stamp[e.frame_index],
        "zone": "bench", "track_id": e.track_id, "entered_pts": pytest.approx(e.entered_pts),
        "left_pts": pytest.approx(e.left_pts), "dwell_s": pytest.approx(e.dwell_s),
    }
    assert visit["dwell_s"] > 0.5

    seen_static = [(tf.frame.frame_index, t) for tf in clip for t in tf.tracks if t.static and t.missed_frames == 0]
    assert seen_static, "the cloth is flagged static"
    (cloth,) = queries.static_tracks(db, run_id)
    assert {t.id for _, t in seen_static} == {cloth["track_id"]}
    first, last = seen_static[0], seen_static[-1]
    assert (cloth["first_frame"], cloth["last_frame"]) == (first[0], last[0]) == (first[0], len(clip) - 1)
    assert cloth["first_pts"] == pytest.approx(first[0] / FPS) and cloth["last_pts"] == pytest.approx(last[0] / FPS)
    assert cloth["first_published_at"] == stamp[first[0]] and cloth["last_published_at"] == stamp[last[0]]
    assert cloth["xyxy"] == pytest.approx(last[1].xyxy.tolist()) and cloth["allowed"] is False
    assert len(table(db, "static_tracks")) == 1, "one row per static track, its last sighting moved forward"

    history = queries.occupancy_history(db, run_id, "bench")
    assert [h["frame_index"] for h in history] == list(range(len(clip)))
    assert [h["occupancy"] for h in history] == [tf.occupancy["bench"] for tf in clip]
    assert history[20]["occupancy"] is None, "the partial frame is a gap, not 0"
    assert max(h["occupancy"] or 0 for h in history) == 1 and history[5]["occupancy"] == 0
    assert all(h["occupancy"] is None for h in queries.occupancy_history(db, run_id, "no such zone"))

    rows = queries.count_history(db, run_id)
    assert [r["confirmed_count"] for r in rows] == [tf.confirmed_count for tf in clip]
    assert rows[0]["confirmed_count"] is None and rows[20]["confirmed_count"] is None, "warming up, partial: unknown"
    assert rows[5]["confirmed_count"] == 3 and rows[-1]["confirmed_count"] == 2, "the cloth stopped counting"
    assert all(r["detection_count"] == 3 for r in rows), "the raw detection count beside it"
    assert rows[-1]["line_counts"] == {"door": {"in": 1, "out": 1}}
    assert rows[20]["occupancy"] == {"bench": None}


# --- built frames: the rules one by one -------------------------------------------------------------


def crossing(frame_index: int, track_id: int, direction: str, line: str = "door") -> LineCrossing:
    return LineCrossing(line, track_id, direction, frame_index, frame_index / 25)  # type: ignore[arg-type]


def built_frames() -> list[TrackedFrame]:
    """10 frames: crossings on 3 (two) and 7, an exit on 6, track 9 static on 2..7 (allowed on 7) and
    held through a miss on 8 (its box moved: not a sighting); frame 4 is partial."""
    frames = []
    totals = {"door": [0, 0], "gate": [0, 0]}
    for i in range(10):
        events = {3: (crossing(3, 1, "in"), crossing(3, 2, "out", "gate")), 7: (crossing(7, 1, "out"),)}.get(i, ())
        for c in events:
            totals[c.line][0 if c.direction == "in" else 1] += 1
        tracks = [make_track(1, (5, 5, 13, 21)), make_track(2, (30, 5, 38, 21))]
        if 2 <= i <= 8:
            tracks.append(make_track(9, (40 + i, 20, 48 + i, 36), static=True, allowed=i == 7, missed_frames=int(i == 8)))
        line_counts = {k: LineCount(*v) for k, v in totals.items()}
        if i == 4:
            frames.append(make_tracked(i, tuple(tracks), line_counts=line_counts, occupancy={"bench": None},
                                       confirmed=None, unknown_reason="partial frame: not tracked"))
            continue
        exits = (ZoneExit("bench", 2, entered_pts=0.04, left_pts=0.2, dwell_s=0.16, frame_index=6),) if i == 6 else ()
        frames.append(make_tracked(i, tuple(tracks), events, zone_exits=exits, line_counts=line_counts,
                                   occupancy={"bench": int(i < 6)}))
    return frames


def test_each_crossing_and_exit_is_stored_once_and_static_tracks_once_per_track(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    frames = built_frames()
    run_1 = store(db, frames)
    run_2 = store(db, frames)  # a second run of the same clip: its own rows
    for run_id in (run_1, run_2):
        got = [(c["frame_index"], c["line"], c["track_id"], c["direction"]) for c in queries.crossings(db, run_id)]
        assert got == [(3, "door", 1, "in"), (3, "gate", 2, "out"), (7, "door", 1, "out")]
        assert queries.line_totals(db, run_id) == {"door": {"in": 1, "out": 1}, "gate": {"in": 0, "out": 1}}
        (visit,) = queries.zone_visits(db, run_id)
        assert (visit["zone"], visit["track_id"], visit["frame_index"], visit["dwell_s"]) == ("bench", 2, 6, 0.16)
        (static,) = queries.static_tracks(db, run_id)
        # first seen static on 2, last on 7 (allowed then, its box then); missed on 8: not a sighting
        assert (static["track_id"], static["first_frame"], static["last_frame"], static["allowed"]) == (9, 2, 7, True)
        assert static["xyxy"] == [47.0, 20.0, 55.0, 36.0]
        assert [h["occupancy"] for h in queries.occupancy_history(db, run_id, "bench")] == [1, 1, 1, 1, None, 1, 0, 0, 0, 0]
    assert len(table(db, "crossings")) == 6 and len(table(db, "zone_visits")) == 2 and len(table(db, "static_tracks")) == 2


def test_a_record_written_twice_is_stored_once(tmp_path: Path) -> None:
    """What a spill file written back twice (a crash between commit and cleanup) would do."""
    db = tmp_path / "t.db"
    frames = built_frames()
    with SqliteWriter(db) as writer:
        run_id = writer.start_run({}, {}, "s", "STRICT_SYNC")
        for tf in frames + frames[3:8]:
            writer.write_tracking(tracking_record(tf))
        writer.end_run("completed")
    assert len(queries.crossings(db, run_id)) == 3 and len(queries.zone_visits(db, run_id)) == 1
    (static,) = queries.static_tracks(db, run_id)
    assert (static["first_frame"], static["last_frame"]) == (2, 7), "a replayed older sighting never moves it back"


def test_tracking_off_leaves_the_tracking_columns_null_and_no_rows(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    with SqliteWriter(db) as writer:
        run_id = writer.start_run({}, {}, "s", "ASYNC_OVERLAY")
        writer.write(make_result(0))
        writer.write(make_result(1, fused=None, unknown_reason="warming up"))
        writer.end_run("completed")
    raw = table(db, "frames")
    assert [(r["confirmed_count"], r["occupancy_json"], r["line_counts_json"]) for r in raw] == [(None, None, None)] * 2
    assert queries.crossings(db) == [] and queries.zone_visits(db) == [] and queries.static_tracks(db) == []
    assert queries.line_totals(db, run_id) == {}
    assert [h["occupancy"] for h in queries.occupancy_history(db, run_id, "bench")] == [None, None]


def test_write_tracking_needs_an_open_run(tmp_path: Path) -> None:
    with SqliteWriter(tmp_path / "t.db") as writer, pytest.raises(StorageError, match="write_tracking: no run is open"):
        writer.write_tracking(tracking_record(make_tracked(0)))


# --- queries and exports -----------------------------------------------------------------------------


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """Run 1: the built frames, frame i published at 12:00:(1 + 2i) and its tracking at 12:00:(2 + 2i)."""
    path = tmp_path / "people.db"
    store(path, built_frames())
    return path


def at(second: int) -> str:
    return (T0 + timedelta(seconds=second)).isoformat()


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or ()), list(reader)


def test_crossings_export_to_csv_and_json(db: Path, tmp_path: Path) -> None:
    out = tmp_path / "crossings.csv"
    assert export(db, out, "crossings") == 3
    header, rows = read_csv(out)
    assert header == ["run_id", "stream_id", "frame_index", "pts", "published_at", "line", "track_id", "direction"]
    assert list(queries.CROSSING_COLUMNS) == header
    assert rows[0] == {
        "run_id": "1", "stream_id": "cam0", "frame_index": "3", "pts": "0.12",
        "published_at": "2024-05-01T12:00:08.000000+00:00", "line": "door", "track_id": "1", "direction": "in",
    }
    assert [(r["frame_index"], r["line"], r["direction"]) for r in rows] == [("3", "door", "in"), ("3", "gate", "out"), ("7", "door", "out")]

    out = tmp_path / "crossings.json"
    assert export(db, out, "crossings", run_id=1) == 3
    data = json.loads(out.read_text())
    assert data == queries.crossings(db) and [list(r) for r in data] == [header] * 3


@pytest.mark.parametrize(
    ("since", "until", "frames"),
    [(at(8), None, [3, 3, 7]), (at(9), None, [7]), (None, at(16), [3, 3]), (at(8), at(8), []), (at(17), at(19), [])],
)
def test_crossings_since_until_bound_published_at(db: Path, since: str | None, until: str | None, frames: list[int]) -> None:
    assert [c["frame_index"] for c in queries.crossings(db, since=since, until=until)] == frames


def test_visits_and_static_exports(db: Path, tmp_path: Path) -> None:
    header, rows = read_csv(tmp_path / "v.csv") if export(db, tmp_path / "v.csv", "visits") == 1 else ([], [])
    assert header == list(queries.VISIT_COLUMNS)
    assert (rows[0]["zone"], rows[0]["track_id"], rows[0]["dwell_s"], rows[0]["entered_pts"]) == ("bench", "2", "0.16", "0.04")
    assert export(db, tmp_path / "s.json", "static") == 1
    (static,) = json.loads((tmp_path / "s.json").read_text())
    assert list(static) == list(queries.STATIC_COLUMNS) and static["xyxy"] == [47.0, 20.0, 55.0, 36.0]
    header, rows = read_csv(tmp_path / "s.csv") if export(db, tmp_path / "s.csv", "static") == 1 else ([], [])
    assert header == list(queries.STATIC_COLUMNS) and rows[0]["xyxy"] == "[47.0,20.0,55.0,36.0]" and rows[0]["allowed"] == "True"
    # static at some time in [since, until): first seen at 12:00:06 (frame 2's tracking), last at 12:00:16 (frame 7's)
    assert len(queries.static_tracks(db, since=at(16))) == 1 and queries.static_tracks(db, since=at(17)) == []
    assert queries.static_tracks(db, until=at(6)) == [] and len(queries.static_tracks(db, until=at(7))) == 1


def test_the_counts_export_has_the_tracking_columns(db: Path, tmp_path: Path) -> None:
    out = tmp_path / "counts.csv"
    assert export_counts(db, out) == 10
    header, rows = read_csv(out)
    assert header == list(queries.COUNT_COLUMNS) and header.index("confirmed_count") == header.index("detection_count") + 1
    assert [r["confirmed_count"] for r in rows] == ["2", "2", "2", "2", "", "2", "2", "3", "2", "2"], "9 counts when allowed"
    assert rows[4]["unknown_reason"] == "partial frame: not tracked" and rows[4]["fused_count"] == ""
    assert json.loads(rows[4]["occupancy"]) == {"bench": None} and json.loads(rows[0]["occupancy"]) == {"bench": 1}
    assert json.loads(rows[9]["line_counts"]) == {"door": {"in": 1, "out": 1}, "gate": {"in": 0, "out": 1}}
    data = json.loads((tmp_path / "c.json").read_text()) if export(db, tmp_path / "c.json") == 10 else []
    assert data[4]["confirmed_count"] is None and data[4]["occupancy"] == {"bench": None}


def test_the_export_command_exports_what_it_is_asked(db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert list(EXPORTS) == EXPORT_KINDS, "--what offers every export"
    for what, n in (("crossings", 3), ("visits", 1), ("static", 1)):
        out = tmp_path / f"{what}.json"
        assert main(["export", "--db", str(db), "--out", str(out), "--what", what, "--run", "1"]) == 0
        assert f"exported {n} rows ({what})" in capsys.readouterr().out
        assert list(json.loads(out.read_text())[0]) == list(EXPORTS[what][0])
    assert main(["export", "--db", str(db), "--out", str(tmp_path / "c.csv"), "--since", at(9)]) == 0, "counts by default"
    assert read_csv(tmp_path / "c.csv")[0] == list(queries.COUNT_COLUMNS) and "exported 6 rows (counts)" in capsys.readouterr().out
    with pytest.raises(SystemExit) as info:
        main(["export", "--db", str(db), "--out", str(tmp_path / "x.csv"), "--what", "tracks"])
    assert info.value.code == 2 and "invalid choice: 'tracks'" in capsys.readouterr().err
    with pytest.raises(StorageError, match="cannot export 'tracks': choose one of counts, crossings, visits, static"):
        export(db, tmp_path / "x.csv", "tracks")


# --- version 3 files ---------------------------------------------------------------------------------

V3_DDL = [
    """CREATE TABLE "runs" ("id" INTEGER PRIMARY KEY, "started_at" TEXT NOT NULL, "ended_at" TEXT, "status" TEXT NOT NULL,
       "source" TEXT, "strategy" TEXT, "config_json" TEXT, "versions_json" TEXT, "summary_json" TEXT, "pid" INTEGER,
       "host" TEXT, "proc_start" TEXT)""",
    """CREATE TABLE "frames" ("run_id" INTEGER NOT NULL REFERENCES "runs"("id"), "frame_index" INTEGER NOT NULL,
       "pts" REAL, "stream_id" TEXT, "strategy" TEXT, "partial" INTEGER NOT NULL, "fused_count" REAL,
       "detection_count" INTEGER, "density_count" REAL, "policy" TEXT, "region_source" TEXT, "zones_json" TEXT,
       "late_branches" TEXT, "overlays_json" TEXT, "published_at" TEXT NOT NULL, "unknown_reason" TEXT,
       "missing_json" TEXT, "counts_frame_index" INTEGER, "counts_age_ms" REAL)""",
    'CREATE INDEX "idx_frames_run_id_frame_index" ON "frames" ("run_id", "frame_index")',
    'CREATE INDEX "idx_frames_published_at" ON "frames" ("published_at")',
    """CREATE TABLE "frame_timings" ("run_id" INTEGER NOT NULL REFERENCES "runs"("id"), "frame_index" INTEGER NOT NULL,
       "stage" TEXT NOT NULL, "ms" REAL)""",
    'CREATE INDEX "idx_frame_timings_run_id_frame_index" ON "frame_timings" ("run_id", "frame_index")',
    """CREATE TABLE "events" ("run_id" INTEGER REFERENCES "runs"("id"), "ts" TEXT NOT NULL, "kind" TEXT NOT NULL,
       "frame_index" INTEGER, "message" TEXT, "data_json" TEXT)""",
    'CREATE INDEX "idx_events_run_id_frame_index" ON "events" ("run_id", "frame_index")',
]
"""The version 3 schema as version 3 of this program created it (``create_schema`` of commit
116f73c into an empty file: its sqlite_master, whitespace aside)."""


def make_v3_database(path: Path) -> None:
    """A file as version 3 wrote it: a completed run of two frames (one unknown), timings, an event."""
    with sqlite3.connect(path) as conn:
        for ddl in V3_DDL:
            conn.execute(ddl)
        conn.execute(
            "INSERT INTO runs (id, started_at, ended_at, status, source, strategy, pid, host) VALUES "
            "(1, '2024-05-01T11:00:00.000000+00:00', '2024-05-01T11:00:03.000000+00:00', 'completed', 'a.mp4', 'STRICT_SYNC', 1, 'h')"
        )
        for idx, fused, dets, reason, missing in ((0, 3.0, 3, None, "{}"), (1, None, None, "late: yolo", '{"yolo":"late"}')):
            conn.execute(
                "INSERT INTO frames (run_id, frame_index, pts, stream_id, strategy, partial, fused_count, detection_count, "
                "policy, region_source, zones_json, late_branches, overlays_json, published_at, unknown_reason, missing_json, "
                "counts_frame_index, counts_age_ms) VALUES (1, ?, ?, 'cam0', 'STRICT_SYNC', ?, ?, ?, 'hybrid', '[]', '{}', '[]', "
                "'[]', ?, ?, ?, ?, 0.0)",
                [idx, idx / 25, int(fused is None), fused, dets, f"2024-05-01T11:00:0{idx + 1}.000000+00:00", reason, missing, idx],
            )
            conn.execute("INSERT INTO frame_timings VALUES (1, ?, 'decode_ms', 1.5)", [idx])
        conn.execute("INSERT INTO events (run_id, ts, kind, message) VALUES (1, '2024-05-01T11:00:02.000000+00:00', 'drop', 'x')")
        conn.execute("PRAGMA user_version = 3")


def test_a_version_3_database_is_migrated_keeping_its_rows(tmp_path: Path) -> None:
    db = tmp_path / "v3.db"
    make_v3_database(db)
    run_id = store(db, built_frames())

    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 5
        for name, spec in TABLES.items():
            assert [r[1] for r in conn.execute(f"PRAGMA table_info({name})")] == list(spec.columns), name
        for name in ("crossings", "zone_visits", "static_tracks"):
            (fk,) = conn.execute(f"PRAGMA foreign_key_list({name})").fetchall()
            assert (fk[2], fk[3], fk[4]) == ("runs", "run_id", "id")
            assert f"idx_{name}_unique" in {r[1] for r in conn.execute(f"PRAGMA index_list({name})") if r[2]}
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"

    old = queries.count_history(db, run_id=1)
    assert [(r["frame_index"], r["fused_count"], r["detection_count"], r["unknown_reason"], r["missing"]) for r in old] == [
        (0, 3.0, 3, None, {}), (1, None, None, "late: yolo", {"yolo": "late"}),
    ]
    assert all(r["confirmed_count"] is None and r["occupancy"] is None and r["line_counts"] is None for r in old)
    assert all(r["region_counts"] is None and r["calibration"] is None for r in old), "not recorded before version 5"
    assert queries.timing_rows(db, 1) == [{"decode_ms": 1.5}, {"decode_ms": 1.5}]
    assert [e["kind"] for e in queries.events(db, 1)] == ["drop"]
    assert queries.crossings(db, 1) == [] and queries.line_totals(db, 1) == {}
    assert len(queries.crossings(db, run_id)) == 3 and len(queries.static_tracks(db, run_id)) == 1
    assert [(r["id"], r["status"], r["frames"]) for r in queries.runs(db)] == [(1, "completed", 2), (run_id, "completed", 10)]


# --- faults --------------------------------------------------------------------------------------------


class TrackingProducer(Producer):
    """Per frame, a publication and its TrackingRecord: a crossing on every frame (alternating in
    and out), a zone exit on every third, track 9 static throughout."""

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                i = self.written
                exits = (ZoneExit("bench", i, 0.0, i / 25, i / 25, i),) if i % 3 == 0 else ()
                tf = make_tracked(
                    i, (make_track(i), make_track(9, static=True)), (crossing(i, i, "in" if i % 2 else "out"),),
                    zone_exits=exits, line_counts={"door": LineCount(i // 2, (i + 1) - i // 2)}, occupancy={"bench": i % 2},
                )
                self.writer.write(make_tracking_result(tf))
                self.writer.write_tracking(tracking_record(tf))
                self.written += 1
                self._stop.wait(self.period_s)
        except BaseException as e:
            self.error = e


@pytest.mark.parametrize("spool_rows", [pytest.param(5_000, id="in-memory"), pytest.param(20, id="through-the-spill-file")])
def test_a_lock_mid_run_loses_no_crossing(tmp_path: Path, spool_rows: int) -> None:
    db = tmp_path / "t.db"
    writer = SqliteWriter(db, batch_size=8, spool_rows=spool_rows, **FAST).start()
    run_id = writer.start_run({}, {}, "s", "STRICT_SYNC")
    with TrackingProducer(writer) as producer:
        producer.wait_rows(20)
        hold_exclusive_lock(db, writer, 3.0, producer)
        producer.wait_rows(20)
    writer.end_run("completed")
    writer.close()
    n = producer.written
    kinds = [e["kind"] for e in storage_events(db, run_id)]
    assert kinds == ["storage_blocked", "storage_resumed"], "the lock was met, and outlasted"
    if spool_rows < 50:
        assert writer.stats()["spilled_rows"] > 0, "rows went through the spill file"
    got = [(c["frame_index"], c["track_id"], c["direction"]) for c in queries.crossings(db, run_id)]
    assert got == [(i, i, "in" if i % 2 else "out") for i in range(n)], "every crossing, once, in order"
    assert [v["frame_index"] for v in queries.zone_visits(db, run_id)] == list(range(0, n, 3))
    (static,) = queries.static_tracks(db, run_id)
    assert (static["track_id"], static["first_frame"], static["last_frame"]) == (9, 0, n - 1)
    assert [r["frame_index"] for r in queries.count_history(db, run_id)] == list(range(n))
    assert queries.line_totals(db, run_id) == {"door": {"in": n // 2, "out": n - n // 2}}
    assert not list(tmp_path.glob("*.spill.*"))
