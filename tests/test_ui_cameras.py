"""Several cameras in the window (``streams:`` with more than one entry), Qt offscreen, real parts:
vtest.avi decoded by PyAV, the demo detector on ONNX Runtime, SQLite.

The camera list shows every camera with its state and count; a missing file fails alone while
the others produce frames; a click, Alt+N or PageUp / PageDown switch the main view; the run
controls act on every camera; opening a file replaces the selected camera's source only; stop and
close store one run per camera with its stream id. Plus the tile's count line on the count
contract (unknown is never 0).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml
from PySide6.QtCore import QElapsedTimer, QSettings, Qt
from shiboken6 import isValid

from app.gui import GuiSession
from pipeline.types import CountResult, Detections, FrameMeta, FrameTimings, FusedResult, StageTimings
from tests.test_gui_app import LONG, ROOT, VTEST, small_config
from ui.bridge import CameraStatus, PipelineStatus, RunState, StreamHealth
from ui.cameras import camera_count, camera_state
from ui.window import MainWindow

DETECTOR = ROOT / ".cache/assets/models/person_yolov8s.dyn.onnx"
needs_assets = pytest.mark.skipif(not (VTEST.exists() and DETECTOR.exists()), reason="demo assets not fetched")


@pytest.fixture(autouse=True)
def _private_settings(tmp_path: Path) -> Iterator[None]:
    QSettings.setPath(QSettings.Format.IniFormat, QSettings.Scope.UserScope, str(tmp_path / "settings"))
    yield


def cameras_config(tmp_path: Path, streams: list[tuple[str, str]]) -> Path:
    """The small demo config (global pass, ASYNC_OVERLAY) with ``streams`` (id, uri), the 640
    letterbox on the batch-dynamic detector, its database in ``tmp_path``."""
    path = small_config(tmp_path)
    data = yaml.safe_load(path.read_text())
    data["models"]["person"]["path"] = str(DETECTOR)
    data["preprocess"]["yolo_global"].update(width=640, height=640)
    s0 = data["streams"][0]
    data["streams"] = [dict(s0, id=sid, uri=uri) for sid, uri in streams]
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture
def window(tmp_path: Path, qtbot) -> Iterator[tuple[MainWindow, GuiSession]]:  # type: ignore[no-untyped-def]
    session = GuiSession()
    win = MainWindow(session, None, "test")
    qtbot.addWidget(win)
    win.resize(1400, 900)
    win.show()
    qtbot.waitExposed(win)
    yield win, session
    if isValid(win):
        win.close()
        qtbot.waitUntil(lambda: not isValid(win) or not win.isVisible(), timeout=10_000)
    assert session.wait_idle(10)


def use_config(win: MainWindow, path: Path) -> None:
    win._config_path = str(path)
    win._load_branches(str(path))


def camera(session: GuiSession, stream_id: str) -> CameraStatus:
    return next(c for c in session.cameras if c.stream_id == stream_id)


def written(session: GuiSession, stream_id: str) -> int:
    sink = camera(session, stream_id).sink
    return 0 if sink is None else sink.stats.written


def runs_by_stream(db: Path) -> dict[str, tuple[int, str]]:
    """stream id -> (run id, status) of the stored runs (a run's frames all carry its stream id)."""
    with sqlite3.connect(db) as con:
        status = dict(con.execute("SELECT id, status FROM runs"))
        rows = con.execute("SELECT run_id, GROUP_CONCAT(DISTINCT stream_id) FROM frames GROUP BY run_id").fetchall()
    out: dict[str, tuple[int, str]] = {}
    for run_id, streams in rows:
        assert "," not in streams, f"run {run_id} has frames of several streams: {streams}"
        out[streams] = (run_id, status[run_id])
    return out


@needs_assets
def test_three_cameras_one_missing_listed_switched_paused_and_stopped(window, qtbot, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    win, session = window
    missing = tmp_path / "archive" / "missing.mp4"
    use_config(win, cameras_config(tmp_path, [("camA", str(VTEST)), ("camB", str(VTEST)), ("camC", str(missing))]))
    win.start_run()
    qtbot.waitUntil(lambda: win.camera_ids == ["camA", "camB", "camC"], timeout=LONG)
    assert win.camera_strip.isVisible() and win.shown_camera == "camA"
    tiles = win.camera_strip.tiles
    # the missing file fails alone, its message in its tile
    qtbot.waitUntil(lambda: tiles["camC"].state_word == "failed", timeout=LONG)
    assert "missing.mp4" in tiles["camC"].state_text and "video not found" in tiles["camC"].state_text
    assert tiles["camC"].count_text == "people unknown (no frame yet)"
    # the two others produce frames: the selected one in the main view, the other in its thumbnail
    qtbot.waitUntil(lambda: written(session, "camA") >= 3 and written(session, "camB") >= 3, timeout=LONG)
    qtbot.waitUntil(lambda: win._last_result is not None and not tiles["camB"].picture.pixmap().isNull(), timeout=LONG)
    assert win._last_result is not None and win._last_result.frame.stream_id == "camA"
    qtbot.waitUntil(lambda: tiles["camA"].state_word == "running" and tiles["camB"].state_word == "running", timeout=LONG)
    for sid in ("camA", "camB"):
        text = tiles[sid].count_text
        assert text.startswith("people "), text
        assert "unknown" in text or not text.startswith("people 0 ("), text  # an unknown count never reads 0
    assert session.status.state is RunState.RUNNING and win.state_label.text() == "RUNNING"

    # a click shows camB in full: its frames, its run
    qtbot.mouseClick(tiles["camB"], Qt.MouseButton.LeftButton)
    assert win.shown_camera == "camB" and session.selected == "camB"
    qtbot.waitUntil(lambda: win._last_result is not None and win._last_result.frame.stream_id == "camB", timeout=LONG)
    assert session.status.run_id == camera(session, "camB").status.run_id != camera(session, "camA").status.run_id
    # Alt+3: the failed camera in full, its error on the banner; the others keep running
    win.activateWindow()
    qtbot.keyClick(win, Qt.Key.Key_3, Qt.KeyboardModifier.AltModifier)
    qtbot.waitUntil(lambda: win.shown_camera == "camC" and win.state_label.text() == "FAILED", timeout=5000)
    assert win.banner.isVisible() and "camC" in win.banner.text and "missing.mp4" in win.banner.text
    assert win._last_result is None  # no frame of another camera under camC's name
    assert win.stop_action.isEnabled() and win.pause_action.isEnabled()  # controls act on every camera
    # PageUp: back to camB
    qtbot.keyClick(win, Qt.Key.Key_PageUp)
    assert win.shown_camera == "camB"
    qtbot.waitUntil(lambda: win._last_result is not None and win._last_result.frame.stream_id == "camB", timeout=LONG)

    # pause and resume act on every camera that runs
    win.pause()
    qtbot.waitUntil(lambda: all(camera(session, s).status.state is RunState.PAUSED for s in ("camA", "camB")), timeout=5000)
    assert camera(session, "camC").status.state is RunState.FAILED
    win.resume()
    qtbot.waitUntil(lambda: all(camera(session, s).status.state is RunState.RUNNING for s in ("camA", "camB")), timeout=5000)

    # stop: two runs closed in the database, each with its stream id
    win.stop_action.trigger()
    qtbot.waitUntil(lambda: session.idle, timeout=LONG)
    stored = runs_by_stream(tmp_path / "gui.db")
    assert sorted(stored) == ["camA", "camB"]
    assert {st for _, st in stored.values()} == {"interrupted"}
    assert stored["camA"][0] == camera(session, "camA").status.run_id
    with sqlite3.connect(tmp_path / "gui.db") as con:
        ended = con.execute("SELECT COUNT(*) FROM runs WHERE ended_at IS NOT NULL").fetchone()[0]
    assert ended == 2  # the missing camera never started a run
    qtbot.waitUntil(lambda: tiles["camA"].state_word == "stopped", timeout=5000)


@needs_assets
def test_open_file_replaces_the_selected_cameras_source_only_and_close_stores_both(window, qtbot, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    win, session = window
    missing = tmp_path / "missing.mp4"
    use_config(win, cameras_config(tmp_path, [("camA", str(missing)), ("camB", str(VTEST))]))
    assert "camera camA" in win.open_action.toolTip()  # says what it does with several cameras
    win.start_run()
    qtbot.waitUntil(lambda: win.camera_ids == ["camA", "camB"] and win.camera_strip.tiles["camA"].state_word == "failed", timeout=LONG)
    qtbot.waitUntil(lambda: written(session, "camB") >= 2, timeout=LONG)
    run_b = camera(session, "camB").status.run_id
    assert run_b is not None and win.shown_camera == "camA"
    win.open_source(str(VTEST))  # the selected camera, camA, gets another source
    qtbot.waitUntil(lambda: written(session, "camA") >= 2, timeout=LONG)
    assert camera(session, "camA").uri == str(VTEST)
    qtbot.waitUntil(lambda: win._last_result is not None and win._last_result.frame.stream_id == "camA", timeout=LONG)
    b = camera(session, "camB").status
    assert b.run_id == run_b and b.state is RunState.RUNNING  # camB was not restarted
    # closing stops both cameras, stores both runs
    timer = QElapsedTimer()
    timer.start()
    win.close()
    qtbot.waitUntil(lambda: not win.isVisible(), timeout=5000)
    assert win.closed_cleanly and timer.elapsed() < 5000
    stored = runs_by_stream(tmp_path / "gui.db")
    assert sorted(stored) == ["camA", "camB"] and stored["camB"][0] == run_b
    assert {st for _, st in stored.values()} == {"interrupted"}


@needs_assets
def test_one_stream_has_no_camera_list(window, qtbot, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    win, session = window
    use_config(win, cameras_config(tmp_path, [("cam0", str(VTEST))]))
    win.start_run()
    qtbot.waitUntil(lambda: session.sink is not None and session.sink.stats.written >= 1, timeout=LONG)
    win.poll()
    assert win.camera_ids == [] and not win.camera_strip.isVisible() and win.shown_camera is None
    assert "camera" not in win.open_action.toolTip()
    assert len(session.cameras) == 1


def _result(index: int, counts: CountResult, counts_frame: int | None, age_ms: float | None = None) -> FusedResult:
    image = np.zeros((48, 64, 3), np.uint8)
    meta = FrameMeta("camA", index, index / 10, time.perf_counter(), 64, 48)
    return FusedResult(meta, "ASYNC_OVERLAY", Detections.empty(), None, counts, StageTimings(index, FrameTimings()),
                       frame_image=image, counts_frame_index=counts_frame, counts_age_ms=age_ms)  # fmt: skip


@pytest.mark.parametrize(
    ("result", "text", "fresh"),
    [
        (None, "people unknown (no frame yet)", False),
        (_result(5, CountResult(3, None, 3, "detections"), 5), "people 3", True),
        (_result(5, CountResult(0, None, 0, "detections"), 5), "people 0", True),  # a known 0 is 0
        (_result(7, CountResult(2, None, 2.5, "hybrid"), 4, 300.0), "people 2.5 (frame 4, 300 ms old)", False),
        (_result(5, CountResult(None, None, None, "detections", unknown_reason="warming up"), None), "people unknown (warming up)", False),
        (_result(5, CountResult(4, None, None, "hybrid", unknown_reason="late: density"), 5), "people unknown (late: density)", False),
    ],
)
def test_a_tiles_count_line_follows_the_count_contract(result: FusedResult | None, text: str, fresh: bool) -> None:
    assert camera_count(result) == (text, fresh)


@pytest.mark.parametrize(
    ("status", "health", "word", "line"),
    [
        (PipelineStatus(RunState.STARTING), None, "starting", "starting"),
        (PipelineStatus(RunState.RUNNING), StreamHealth(), "running", "running"),
        (PipelineStatus(RunState.RUNNING), StreamHealth("lost", 1.0, 3), "reconnecting", "reconnecting (attempt 3)"),
        (PipelineStatus(RunState.RUNNING), StreamHealth("stalled", 1.0, 0), "stalled", "stalled"),
        (PipelineStatus(RunState.FAILED, "video not found: x.mp4\nCheck the path", "SourceError"), None, "failed",
         "failed: video not found: x.mp4"),
        (PipelineStatus(RunState.FINISHED), None, "ended", "ended"),
    ],
)
def test_a_tiles_state_line(status: PipelineStatus, health: StreamHealth | None, word: str, line: str) -> None:
    assert camera_state(status, health) == (word, line)


@pytest.mark.parametrize(
    ("text", "lines"),
    [
        ("people 3", 2),
        ("people 5 (frame 29, 1619 ms old)", 2),
        ("people unknown (stale: counts of frame 30 are 2396 ms old (max 1500 ms); late: yolo_global)", 2),
        ("video not found: /tmp/pc-shots-2i97ds0m/camera-archive/a-very-long-name-without-spaces.mp4 (check the uri)", 5),
    ],
)
def test_a_tiles_lines_wrap_and_elide_within_the_tile(qtbot, text: str, lines: int) -> None:  # type: ignore[no-untyped-def]
    from PySide6.QtGui import QFont, QFontMetrics

    from ui.cameras import wrap_elided

    metrics = QFontMetrics(QFont())
    width = 192
    shown = wrap_elided(text, metrics, width, lines).split("\n")
    assert len(shown) <= lines and all(metrics.horizontalAdvance(line) <= width for line in shown)
    if metrics.horizontalAdvance(text) <= width:
        assert shown == [text]
    joined = "".join(shown).replace(" ", "")
    assert joined == text.replace(" ", "") or shown[-1].endswith("…")  # all of it, or says that it is cut
