"""People over time in the window: tracks, static tracks and the operator's override, counting lines
with their totals, zone occupancy, stale overlays (the count contract), density with its
calibration and the hybrid's regions, the confirmed-count chart series.

The tracking drawn is real: ``pipeline.tracking.PeopleTracker`` run on crafted detections (a
walker crossing the vtest line x = 300 from right to left, a cloth that never moves). Drawing is
checked on pixels, Qt offscreen. The last tests run the real pipeline on vtest with the demo
detector and a real ``GuiSession``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray
from PySide6.QtCore import QPointF, QSettings

from config.schema import LineConfig, PipelineConfig, TrackingConfig, ZoneConfig
from pipeline.tracking import PeopleTracker, TrackedFrame
from pipeline.types import (
    GLOBAL_SOURCE,
    CountResult,
    DensityCalibration,
    DensityMap,
    Detections,
    FrameMeta,
    FusedResult,
    OverlayInfo,
    StageTimings,
)
from ui.charts import TelemetryCharts
from ui.overlay import (
    GLOBAL_COLOR,
    UNKNOWN_COLOR,
    OverlayOptions,
    OverlayScene,
    counts_lines,
    density_text,
    qimage_to_rgb,
    render_overlay,
    stale_layers,
)
from ui.tracks import (
    LINE_COLOR,
    STATIC_COLOR,
    TRACK_COLOR,
    resolve_lines,
    track_at,
    track_label,
    tracks_view,
)
from ui.zones import Zone, zone_label, zone_occupancy

W, H, FPS = 768, 576, 10.0
WALKWAY = LineConfig(name="walkway", a=(300, 576), b=(300, 0), in_side="left", units="pixels", frame_size=(768, 576))
DOOR = ZoneConfig(name="door", polygon=[(0.0, 0.0), (0.35, 0.0), (0.35, 1.0), (0.0, 1.0)], units="normalized")
ONLY_TRACKS = OverlayOptions(boxes=False, masks=False, heatmap=False, text=False, tracks=True)
NOTHING = OverlayOptions(boxes=False, masks=False, heatmap=False, text=False, tracks=False)
WHITE = (255, 255, 255)


# -- builders ------------------------------------------------------------------------------------


def make_dets(boxes: Sequence[tuple[float, float, float, float]], source: int = GLOBAL_SOURCE) -> Detections:
    xyxy = np.array(boxes, np.float32).reshape(-1, 4)
    n = len(xyxy)
    return Detections(xyxy, np.full(n, 0.9, np.float32), np.zeros(n, np.int32), np.full(n, source, np.int32))


def walker_box(i: int) -> tuple[float, float, float, float]:
    """A person walking right to left at 8 px a frame: feet at x = 520 - 8 i, across x = 300 at i ~ 27."""
    x = 500.0 - 8.0 * i
    return (x, 200.0, x + 40.0, 320.0)


CLOTH = (100.0, 400.0, 140.0, 470.0)


def track_frames(
    frames: int, *, static_after_s: float = 1.0, cloth: bool = True, allow_at: int | None = None
) -> list[TrackedFrame]:
    """A real tracker's output, frame by frame: the walker (and the cloth), the vtest line, the door
    zone; ``allow_at``: the frame before which the operator allows the cloth's track."""
    tracker = PeopleTracker(TrackingConfig(lines=[WALKWAY], static_after_s=static_after_s), FPS, zones=[DOOR])
    out = []
    for i in range(frames):
        if allow_at is not None and i == allow_at:
            cloth_track = next(t for t in out[-1].tracks if t.static)
            tracker.allow_static(cloth_track.id)
        boxes = [walker_box(i), *([CLOTH] if cloth else [])]
        out.append(tracker.update(make_dets(boxes), FrameMeta("cam0", i, i / FPS, 0.0, W, H)))
    return out


def make_frame() -> NDArray[np.uint8]:
    return np.full((H, W, 3), 70, np.uint8)


def tracked_result(
    tracked: TrackedFrame,
    *,
    shown_index: int | None = None,
    overlays: tuple[OverlayInfo, ...] = (),
    detections: Detections | None = None,
    strategy: str = "ASYNC_OVERLAY",
) -> FusedResult:
    """The publication of frame ``shown_index`` (default: the tracked frame itself) carrying the
    counts (and so the tracking) of ``tracked``'s frame, as ASYNC_OVERLAY publishes them."""
    idx = tracked.frame.frame_index if shown_index is None else shown_index
    if tracked.confirmed_count is None:
        counts = replace(CountResult.unknown(f"tracks {tracked.unknown_reason}", "detections"),
                         detection=tracked.raw_count, tracking=tracked)  # fmt: skip
    else:
        counts = CountResult(tracked.raw_count, None, float(tracked.confirmed_count), "detections", tracking=tracked)
    return FusedResult(
        frame=FrameMeta("cam0", idx, idx / FPS, 0.0, W, H),
        strategy=strategy,
        detections=detections if detections is not None else Detections.empty(),
        density=None,
        counts=counts,
        timings=StageTimings(idx),
        overlays=overlays,
        frame_image=make_frame(),
        counts_frame_index=tracked.frame.frame_index,
        counts_age_ms=None if idx == tracked.frame.frame_index else (idx - tracked.frame.frame_index) * 100.0,
    )


def edge_pixels(img: NDArray[np.uint8], xyxy: NDArray[np.float32] | Sequence[float], color: tuple[int, int, int], tol: int = 40) -> float:
    """Fraction of the left edge of box ``xyxy`` (frame = display pixels here) within ``tol`` of ``color``."""
    x0, y0, _, y1 = (round(float(v)) for v in xyxy)
    column = img[y0 + 4 : y1 - 4, x0].astype(int)
    return float(np.mean(np.all(np.abs(column - np.array(color)) <= tol, axis=1)))


def text_of(result: FusedResult, scene: OverlayScene | None = None) -> list[tuple[str, tuple[int, int, int]]]:
    return counts_lines(result, None, scene)


# -- the tracker's output, as drawn -------------------------------------------------------------------


@pytest.fixture(scope="module")
def walk() -> list[TrackedFrame]:
    return track_frames(40)


def test_a_counted_track_is_drawn_with_its_box_id_and_trail(qtbot, walk: list[TrackedFrame]) -> None:
    t = walk[20]
    walker = next(tr for tr in t.tracks if tr.counted)
    assert len(walker.trail) >= 10 and track_label(walker) == f"#{walker.id}"
    result = tracked_result(t)
    img = qimage_to_rgb(render_overlay(result, (W, H), ONLY_TRACKS))
    base = qimage_to_rgb(render_overlay(result, (W, H), NOTHING))
    assert edge_pixels(img, walker.xyxy, TRACK_COLOR) > 0.9  # solid: the frame's own track
    # the trail runs through the centres behind it (to the right: it walks left)
    cx, cy = walker.trail[0]
    assert np.any(img[round(cy) - 1 : round(cy) + 2, round(cx)] != base[round(cy) - 1 : round(cy) + 2, round(cx)])
    assert any("tracks: 1 counted" in line and color == WHITE for line, color in text_of(result))


def test_a_static_track_is_dimmed_until_the_operator_counts_it(qtbot) -> None:
    frames = track_frames(40, allow_at=30)
    before, after = frames[29], frames[35]
    cloth = next(tr for tr in before.tracks if tr.static)
    assert not cloth.counted and track_label(cloth) == f"#{cloth.id} static"
    img = qimage_to_rgb(render_overlay(tracked_result(before), (W, H), ONLY_TRACKS))
    assert edge_pixels(img, cloth.xyxy, TRACK_COLOR, tol=30) == 0.0  # never drawn as a counted person
    assert 0.2 < edge_pixels(img, cloth.xyxy, STATIC_COLOR, tol=30) < 0.9  # grey and dotted
    summary = next(line for line, _ in text_of(tracked_result(before)) if line.startswith("tracks:"))
    assert "1 static (dimmed, right-click to count)" in summary
    # allow_static(id) before frame 30: the same track now counts, still flagged static
    allowed = next(tr for tr in after.tracks if tr.id == cloth.id)
    assert allowed.static and allowed.allowed and allowed.counted
    assert after.confirmed_count == before.confirmed_count + 1
    img = qimage_to_rgb(render_overlay(tracked_result(after), (W, H), ONLY_TRACKS))
    assert edge_pixels(img, allowed.xyxy, TRACK_COLOR) > 0.9
    assert track_label(allowed) == f"#{cloth.id} static, counted"


def test_track_at_finds_the_box_under_a_point(walk: list[TrackedFrame]) -> None:
    t = walk[29]
    cloth = next(tr for tr in t.tracks if tr.static)
    walker = next(tr for tr in t.tracks if not tr.static)
    assert track_at(t, 120, 430) is cloth
    x0, y0, x1, y1 = (float(v) for v in walker.xyxy)
    assert track_at(t, (x0 + x1) / 2, (y0 + y1) / 2) is walker
    assert track_at(t, 700, 50) is None


def test_tracks_of_another_frame_are_dashed_and_labelled_never_fresh(qtbot, walk: list[TrackedFrame]) -> None:
    t = walk[20]
    walker = next(tr for tr in t.tracks if tr.counted)
    fresh = tracked_result(t)
    older = tracked_result(t, shown_index=26)  # ASYNC_OVERLAY: frame 26 on screen, counts of frame 20
    view = tracks_view(older.counts, 26, older.counts_age_ms)
    assert view is not None and not view.fresh and view.frame_index == 20
    solid = edge_pixels(qimage_to_rgb(render_overlay(fresh, (W, H), ONLY_TRACKS)), walker.xyxy, TRACK_COLOR)
    dashed = edge_pixels(qimage_to_rgb(render_overlay(older, (W, H), ONLY_TRACKS)), walker.xyxy, TRACK_COLOR)
    assert solid > 0.9 and dashed < 0.2  # faded and dashed: not the walker's place now
    lines = text_of(older)
    assert ("tracks of frame 20, 600 ms old: drawn dashed, not this frame's", UNKNOWN_COLOR) in lines
    assert all(color != WHITE for line, color in lines if line.startswith(("people", "tracks")))


def test_the_line_arrow_points_to_the_side_the_tracker_counts_in(walk: list[TrackedFrame]) -> None:
    (line,) = resolve_lines([WALKWAY], (W, H))
    assert np.allclose(line.a, (300, 576)) and np.allclose(line.in_normal, (-1.0, 0.0))
    crossing = next(c for t in walk for c in t.crossings)
    assert crossing.direction == "in"  # the walker ends on the left: the arrow's side
    # a normalized line on another frame size: the same place, scaled
    (half,) = resolve_lines([LineConfig(name="mid", a=(0.5, 1.0), b=(0.5, 0.0), units="normalized")], (1920, 1080))
    assert np.allclose(half.a, (960, 1080)) and np.allclose(half.in_normal, (-1.0, 0.0))


@pytest.mark.parametrize(
    ("frame", "shown", "expected", "color"),
    [
        (35, None, "walkway: in 1 · out 0", WHITE),  # after the crossing, the frame's own: white
        (10, None, "walkway: in 0 · out 0", WHITE),  # before it: 0 is a real total here
        (35, 38, "walkway: in 1 · out 0", UNKNOWN_COLOR),  # another frame's totals: amber
    ],
)
def test_line_totals_are_white_only_when_they_are_the_frame_s_own(
    qtbot, walk: list[TrackedFrame], frame: int, shown: int | None, expected: str, color: tuple[int, int, int]
) -> None:
    scene = OverlayScene(lines=(WALKWAY,))
    result = tracked_result(walk[frame], shown_index=shown)
    assert (expected, color) in text_of(result, scene)
    img = qimage_to_rgb(render_overlay(result, (W, H), ONLY_TRACKS, scene=scene))
    assert tuple(img[450, 300]) == LINE_COLOR  # the line itself, at x = 300


def test_without_tracking_line_totals_are_unknown_never_0(qtbot) -> None:
    result = FusedResult(FrameMeta("cam0", 3, 0.3, 0.0, W, H), "STRICT_SYNC", make_dets([walker_box(0)]), None,
                         CountResult(1, None, 1.0, "detections"), StageTimings(3), counts_frame_index=3)  # fmt: skip
    assert ("walkway: in/out unknown", UNKNOWN_COLOR) in text_of(result, OverlayScene(lines=(WALKWAY,)))


def test_warming_up_tracks_say_so_and_chart_a_gap(qtbot) -> None:
    first = track_frames(1, cloth=False)[0]
    assert first.confirmed_count is None
    result = tracked_result(first)
    assert any(line.startswith("tracks: warming up") for line, _ in text_of(result))
    charts = TelemetryCharts(window=20)
    qtbot.addWidget(charts)
    for t in track_frames(6):
        charts.add(tracked_result(t))
    charts.refresh()
    _, confirmed = charts.counts.series.data("confirmed")
    _, raw = charts.counts.series.data("detection")
    assert np.isnan(confirmed[:2]).all() and list(confirmed[2:]) == [2.0] * 4  # walker and cloth, once confirmed
    assert list(raw) == [2.0] * 6  # the raw detections beside, every frame
    assert charts.counts.curves["confirmed"].isVisible()


def test_zone_occupancy_comes_from_the_tracks_of_applied_zones(walk: list[TrackedFrame]) -> None:
    t = walk[35]  # walker's feet at x ~ 240 of 768 (< 0.35): inside the door zone, with the cloth (static)
    door = Zone("door", tuple((float(x), float(y)) for x, y in DOOR.polygon))
    edited = Zone("door", ((0.0, 0.0), (0.2, 0.0), (0.2, 1.0)))
    result = tracked_result(t)
    assert t.occupancy["door"] == 1  # the static cloth is not counted
    assert zone_occupancy(result, [door], {"door": door}) == {"door": 1}
    assert zone_occupancy(result, [edited], {"door": door}) == {}  # edited since the run started: no tracker figure
    assert zone_label("door", 1.0, False, tracked=True, occupancy=1) == "door: 1 · 1 tracked"
    assert zone_label("door", 1.0, False, tracked=True, occupancy=1, of_frame=35) == "door: 1 · 1 tracked (frame 35)"
    assert zone_label("door", None, False, tracked=True, occupancy=None) == "door: unknown · tracked unknown"


# -- stale overlays (the count contract) --------------------------------------------------------------


BOX = (200.0, 100.0, 400.0, 400.0)


@pytest.mark.parametrize(
    ("overlay_frame", "lag_ms", "stale"),
    [
        (30, 4000.0, True),  # 4 s old boxes of frame 30 over frame 70: stale
        (69, 1500.0, False),  # younger than max_count_age_ms: drawn as they are
        (70, 4000.0, False),  # the frame's own boxes (STRICT_SYNC on a slow CPU): they match the pixels
    ],
)
def test_overlays_older_than_max_count_age_are_dashed_with_their_age(
    qtbot, overlay_frame: int, lag_ms: float, stale: bool
) -> None:
    t = track_frames(1, cloth=False)[0]
    result = replace(
        tracked_result(t, shown_index=70, overlays=(OverlayInfo("yolo_global", overlay_frame, lag_ms),), detections=make_dets([BOX])),
        counts=CountResult(1, None, 1.0, "detections"),
    )
    scene = OverlayScene(max_overlay_age_ms=2000.0, roles={"yolo_global": "global"})
    assert ("global" in stale_layers(result, scene)) is stale
    img = qimage_to_rgb(render_overlay(result, (W, H), OverlayOptions(masks=False, text=False, tracks=False), scene=scene))
    solid = edge_pixels(img, BOX, GLOBAL_COLOR, tol=10)
    stale_lines = [line for line, color in text_of(result, scene) if line.startswith("STALE") and color == UNKNOWN_COLOR]
    if stale:
        assert solid < 0.2  # dashed and faded
        assert stale_lines == ["STALE overlay (> 2.0 s, drawn dashed): yolo_global of frame 30, 4.0 s old"]
        # its age written in the box, in amber
        label = img[340:400, 200:300].astype(int)
        assert np.any(np.all(np.abs(label - np.array(UNKNOWN_COLOR)) <= 60, axis=1))
    else:
        assert solid > 0.9 and not stale_lines
    # without the threshold (no config known yet) nothing is called stale
    assert stale_layers(result, OverlayScene()) == {}


def test_a_stale_branch_makes_only_its_own_layer_stale() -> None:
    t = track_frames(1, cloth=False)[0]
    result = tracked_result(t, shown_index=70, overlays=(
        OverlayInfo("yolo_global", 69, 90.0), OverlayInfo("yolo_tiles", 20, 5000.0), OverlayInfo("density", 40, 3000.0)))  # fmt: skip
    scene = OverlayScene(2000.0, {"yolo_global": "global", "yolo_tiles": "tiles", "density": "density"})
    layers = stale_layers(result, scene)
    assert set(layers) == {"tiles", "density"}
    # a branch whose role is unknown counts against every layer
    assert set(stale_layers(result, OverlayScene(2000.0, {}))) == {"global", "tiles", "density"}


def test_the_scene_comes_from_the_config() -> None:
    import yaml

    data = yaml.safe_load(Path("config/laptop.yaml").read_text())
    cfg = PipelineConfig.model_validate(data)
    scene = OverlayScene.from_config(cfg)
    assert scene.max_overlay_age_ms == cfg.fusion.max_count_age_ms
    assert [line.name for line in scene.lines] == ["walkway"]
    assert scene.roles == {"yolo_global": "global"}  # the enabled branches only


# -- density: the calibrated figure, its calibration, the regions' sources -------------------------------


def calibration(source: str, samples: int, scale: float) -> DensityCalibration:
    return DensityCalibration(scale=scale, offset=0.0, samples=samples, frames=12, source=source, raw=40.7, background=3.2, flat=1.1)


@pytest.mark.parametrize(
    ("cal", "expected"),
    [
        (calibration("fit", 96, 0.42), "density 12.3 (scale 0.42, fit on 96 samples)"),
        (calibration("prior", 3, 1.0), "density 12.3 (prior scale 1.00, 3 samples: too few to fit)"),
        (None, "density 12.3 (uncalibrated)"),
    ],
)
def test_density_is_the_calibrated_number_with_its_calibration(cal: DensityCalibration | None, expected: str) -> None:
    c = CountResult(4, 12.3, 14.0, "hybrid", calibration=cal)
    assert density_text(c) == expected
    assert "40.7" not in density_text(c)  # the raw integral is never shown as a count
    assert density_text(CountResult(4, None, 4.0, "detections"), has_density=False) == "density n/a"
    assert density_text(CountResult(4, None, 4.0, "detections"), has_density=True) == "density unknown"


def test_heatmap_layer_marks_each_region_d_or_k(qtbot) -> None:
    source = np.array([[1, 0], [0, 0]], np.int8)  # top-left region counted by density
    counts = CountResult(
        3, 9.5, 12.5, "hybrid", region_counts=np.array([[9.5, 1], [2, 0]], np.float32), region_source=source,
        calibration=calibration("fit", 50, 0.5),
    )  # fmt: skip
    density = DensityMap(np.full((H // 8, W // 8), 0.01, np.float32), 8)
    meta = FrameMeta("cam0", 5, 0.5, 0.0, W, H)
    result = FusedResult(meta, "STRICT_SYNC", Detections.empty(), density, counts, StageTimings(5),
                         frame_image=make_frame(), counts_frame_index=5)  # fmt: skip
    on = qimage_to_rgb(render_overlay(result, (W, H), OverlayOptions(heatmap=True, heatmap_alpha=0.0, text=False, tracks=False)))
    off = qimage_to_rgb(render_overlay(result, (W, H), OverlayOptions(heatmap=False, text=False, tracks=False)))
    assert np.array_equal(off, make_frame())
    # the grid: a faint line between the region rows and columns
    assert np.all(on[H // 2, 10:300] > 70) and np.all(on[10:200, W // 2] > 70)

    def has(cell: NDArray[np.uint8], color: tuple[int, int, int]) -> bool:
        return bool(np.any(np.all(np.abs(cell.astype(int) - np.array(color)) <= 70, axis=2)))

    d_cell, k_cell = on[H // 4 : H // 2 - 2, 2 : W // 2 - 2], on[H // 4 : H // 2 - 2, W // 2 + 2 :]
    assert has(d_cell, (255, 120, 200)) and not has(d_cell, (0, 200, 255))  # "D": density counted here
    assert has(k_cell, (0, 200, 255)) and not has(k_cell, (255, 120, 200))  # "K": detections counted here
    text = [line for line, _ in counts_lines(result, None, OverlayScene(roles={"density": "density"}))]
    assert "regions: 1 by density (D), 3 by detections (K)" in text
    assert any("density 9.5 (scale 0.50, fit on 50 samples)" in line for line in text)


# -- the window, on the real pipeline --------------------------------------------------------------------

from tests.test_gui_app import DETECTOR, LONG, VTEST, small_config  # noqa: E402

real_assets = pytest.mark.skipif(not (VTEST.exists() and DETECTOR.exists()), reason="demo assets not fetched")


@pytest.fixture
def _private_settings(tmp_path: Path) -> Iterator[None]:
    QSettings.setPath(QSettings.Format.IniFormat, QSettings.Scope.UserScope, str(tmp_path / "settings"))
    yield


@real_assets
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_window_draws_real_tracks_and_counts_a_static_track_on_request(qtbot, tmp_path: Path, _private_settings: None) -> None:  # type: ignore[no-untyped-def]
    """vtest under STRICT_SYNC (each frame's own tracks; another frame's tracks under ASYNC_OVERLAY
    are the unit tests' above): the cloth turns static, a click finds it, the menu's override
    reaches the run's tracker and the track counts from a later frame."""
    import yaml
    from shiboken6 import isValid

    from app.gui import GuiSession
    from ui.bridge import RunState
    from ui.window import MainWindow

    data = yaml.safe_load(Path("config/laptop.yaml").read_text())
    # the cloth on the grass is static after 2 s; the 640 detector's tracking settings (small_config)
    tracking = dict(data["tracking"], static_after_s=2.0, activation_score=0.25, match_threshold=0.8)
    cfg = small_config(tmp_path, tracking=tracking, fusion=dict(data["fusion"], strategy="STRICT_SYNC"))
    session = GuiSession()
    win = MainWindow(session, None, "test")
    win._config_path = str(cfg)
    win._load_branches(str(cfg))
    qtbot.addWidget(win)
    win.resize(1280, 800)
    win.show()
    qtbot.waitExposed(win)

    def tracked() -> TrackedFrame | None:
        r = win._last_result
        return None if r is None else getattr(r.counts, "tracking", None)

    def static_track() -> object:
        t = tracked()
        return None if t is None else next((tr for tr in t.tracks if tr.static and not tr.allowed), None)

    try:
        with pytest.raises(RuntimeError, match="no run is going"):
            session.allow_static(1)
        win.open_source(str(VTEST))
        qtbot.waitUntil(lambda: static_track() is not None or session.status.state is RunState.FAILED, timeout=LONG)
        assert session.status.state is not RunState.FAILED, session.status.message
        assert win.scene.lines and win.scene.lines[0].name == "walkway"
        t = tracked()
        assert t is not None and "walkway" in t.line_counts
        cloth = static_track()
        assert cloth is not None
        # the static track under its box centre on screen, as a click finds it
        x0, y0, x1, y1 = (float(v) for v in cloth.xyxy)  # type: ignore[attr-defined]
        r = win.video.image_rect()
        pos = QPointF(r.x() + (x0 + x1) / 2 / W * r.width(), r.y() + (y0 + y1) / 2 / H * r.height())
        found = win.track_at(pos)
        assert found is not None and found.static
        menu = win.track_menu(found)
        count_it = [a for a in menu.actions() if a.text() == f"Count track #{found.id}: it is a person"]
        assert len(count_it) == 1
        count_it[0].trigger()  # the operator's override, through the session, to the run's tracker
        menu.deleteLater()
        assert "counted from the next frame" in win.message_label.text()

        def allowed_now() -> bool:
            tr = tracked()
            return tr is not None and any(k.id == found.id and k.allowed and k.counted for k in tr.tracks)

        qtbot.waitUntil(lambda: allowed_now() or session.status.state is RunState.FAILED, timeout=LONG)
        assert allowed_now()
        # the chart has the confirmed series beside the raw detections
        win.charts.refresh()
        assert {"confirmed", "detection"} <= set(win.charts.counts.series.names)
    finally:
        if isValid(win):
            win.close()
            qtbot.waitUntil(lambda: not isValid(win) or not win.isVisible(), timeout=10_000)
        assert session.wait_idle(10)
