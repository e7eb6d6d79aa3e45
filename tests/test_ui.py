"""The UI: overlay drawing (pixel checks), the latest-wins bridge, the window's wiring, the charts.

Qt runs offscreen (QT_QPA_PLATFORM=offscreen) through pytest-qt. The controller here is a small
recording class standing in for the pipeline: the window's contract is the calls it makes.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray
from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QApplication

from pipeline.protocols import Sink
from pipeline.types import (
    GLOBAL_SOURCE,
    CountResult,
    DensityMap,
    Detections,
    FrameMeta,
    FusedResult,
    OverlayInfo,
)
from ui.app import run_window
from ui.bridge import LatestResultSink, PipelineStatus, RunState
from ui.charts import TelemetryCharts, latency_groups
from ui.overlay import (
    GLOBAL_COLOR,
    TILE_COLOR,
    OverlayOptions,
    counts_lines,
    fit_size,
    qimage_to_rgb,
    render_overlay,
)
from ui.qt_fixes import apply_qt_workarounds, singleton_leaks
from ui.window import STRATEGIES, MainWindow

NOTHING = OverlayOptions(boxes=False, masks=False, heatmap=False, text=False)


# -- builders ------------------------------------------------------------------------------------


def make_frame(width: int, height: int) -> NDArray[np.uint8]:
    """A smooth RGB gradient: every pixel is known and none equals an overlay colour."""
    x = np.linspace(40, 120, width, dtype=np.float32)[None, :]
    y = np.linspace(30, 90, height, dtype=np.float32)[:, None]
    img = np.empty((height, width, 3), np.uint8)
    img[..., 0] = x + 0 * y
    img[..., 1] = y + 0 * x
    img[..., 2] = 60
    return img


def ellipse_mask(h: int, w: int) -> NDArray[np.bool_]:
    yy, xx = np.mgrid[0:h, 0:w]
    return ((xx + 0.5 - w / 2) / (w / 2)) ** 2 + ((yy + 0.5 - h / 2) / (h / 2)) ** 2 <= 1.0


def make_detections(
    boxes: Sequence[tuple[float, float, float, float]],
    sources: Sequence[int],
    masks: Sequence[NDArray[np.bool_]] | None = None,
) -> Detections:
    xyxy = np.array(boxes, np.float32).reshape(-1, 4)
    n = len(xyxy)
    return Detections(
        xyxy=xyxy,
        score=np.full(n, 0.9, np.float32),
        class_id=np.zeros(n, np.int32),
        source=np.array(sources, np.int32),
        masks=None if masks is None else tuple(masks),
        mask_xyxy=None if masks is None else np.rint(xyxy).astype(np.int32),
    )


def make_density(width: int, height: int, centres: Sequence[tuple[float, float]], stride: int = 8) -> DensityMap:
    """A density map with one Gaussian person (integral 1) per centre (frame pixels)."""
    h, w = -(-height // stride), -(-width // stride)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    d = np.zeros((h, w), np.float32)
    for cx, cy in centres:
        g = np.exp(-(((xx + 0.5) * stride - cx) ** 2 + ((yy + 0.5) * stride - cy) ** 2) / (2 * (3 * stride) ** 2))
        d += g / g.sum()
    return DensityMap(d.astype(np.float32), stride)


def make_result(
    width: int = 640,
    height: int = 360,
    detections: Detections | None = None,
    density: DensityMap | None = None,
    *,
    frame_index: int = 7,
    strategy: str = "ASYNC_OVERLAY",
    timings: dict[str, float] | None = None,
    image: bool = True,
    partial: bool = False,
) -> FusedResult:
    """A FusedResult of real dataclasses; by default a few people with masks and a density map."""
    if detections is None:
        s = width / 640
        boxes = [(60 * s, 80 * s, 120 * s, 250 * s), (200 * s, 60 * s, 250 * s, 200 * s), (400 * s, 100 * s, 470 * s, 300 * s)]
        detections = make_detections(boxes, [GLOBAL_SOURCE, 3, GLOBAL_SOURCE], [ellipse_mask(40, 20)] * 3)
    if density is None:
        density = make_density(width, height, [(520 * width / 640, 200 * height / 360)] * 6)
    counts = CountResult(
        detection=len(detections), density=density.count, fused=len(detections) + density.count, policy="hybrid"
    )
    meta = FrameMeta("cam0", frame_index, frame_index / 30, 0.0, width, height)
    return FusedResult(
        frame=meta,
        strategy=strategy,
        detections=detections,
        density=density,
        counts=counts,
        timings=timings if timings is not None else {"decode_ms": 4.0, "inference_model_yolo_ms": 12.0, "end_to_end_ms": 40.0},
        overlays=(OverlayInfo("yolo", frame_index, 35.0), OverlayInfo("density", frame_index - 4, 160.0)),
        partial=partial,
        late_branches=("density",) if partial else (),
        frame_image=make_frame(width, height) if image else None,
    )


class RecordingController:
    """Stands in for the pipeline: records what the window asks of it."""

    def __init__(self, fail_switch: bool = False, fail_export: bool = False) -> None:
        self.calls: list[tuple[str, str]] = []
        self.status = PipelineStatus(RunState.RUNNING)
        self._fail_switch = fail_switch
        self._fail_export = fail_export

    def switch_strategy(self, name: str) -> None:
        self.calls.append(("switch_strategy", name))
        if self._fail_switch:
            raise ValueError(f"strategy {name} is not available")

    def export(self, path: str) -> int:
        self.calls.append(("export", path))
        if self._fail_export:
            raise OSError(f"read-only file system: {path}")
        Path(path).write_text("frame_index,fused_count\n1,3.0\n2,4.0\n")
        return 2

    def stop(self) -> None:
        self.calls.append(("stop", ""))


@pytest.fixture
def window(qtbot) -> tuple[MainWindow, RecordingController, LatestResultSink]:
    controller = RecordingController()
    sink = LatestResultSink()
    win = MainWindow(controller, sink, "test", poll_hz=1e-3)  # the test drives poll() itself
    qtbot.addWidget(win)
    win.resize(1200, 700)
    win.show()
    qtbot.waitExposed(win)
    return win, controller, sink


# -- overlay ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "source", "color"),
    [
        ((640, 360), GLOBAL_SOURCE, GLOBAL_COLOR),
        ((640, 360), 5, TILE_COLOR),
        ((320, 180), GLOBAL_SOURCE, GLOBAL_COLOR),
        ((320, 180), 0, TILE_COLOR),
    ],
)
def test_box_is_drawn_on_its_edges_only(qtbot, size: tuple[int, int], source: int, color: tuple[int, int, int]) -> None:
    dets = make_detections([(200, 100, 400, 300)], [source])
    result = make_result(detections=dets)
    base = qimage_to_rgb(render_overlay(result, size, NOTHING))
    drawn = qimage_to_rgb(render_overlay(result, size, OverlayOptions(boxes=True, masks=False, text=False)))
    s = size[0] / 640
    x0, y0, x1, y1 = (round(v * s) for v in (200, 100, 400, 300))
    ym, xm = (y0 + y1) // 2, (x0 + x1) // 2
    assert tuple(drawn[ym, x0]) == color  # left edge
    assert tuple(drawn[y0, xm]) == color  # top edge
    assert tuple(drawn[ym, x1]) == color  # right edge
    changed = np.any(drawn != base, axis=2)
    inside_edges = np.zeros_like(changed)
    inside_edges[y0 - 2 : y1 + 3, x0 - 2 : x1 + 3] = True
    inside_edges[y0 + 3 : y1 - 2, x0 + 3 : x1 - 2] = False
    assert changed.any()
    assert not changed[~inside_edges].any(), "pixels away from the box edges changed"


def test_mask_fills_its_box_where_set_and_nowhere_else(qtbot) -> None:
    mask = np.zeros((10, 20), bool)
    mask[:, :10] = True  # the left half of the box
    dets = make_detections([(100, 100, 300, 200)], [GLOBAL_SOURCE], [mask])
    result = make_result(detections=dets)
    base = qimage_to_rgb(render_overlay(result, (640, 360), NOTHING))
    drawn = qimage_to_rgb(render_overlay(result, (640, 360), OverlayOptions(boxes=False, masks=True, text=False)))
    changed = np.any(drawn != base, axis=2)
    assert changed[100:200, 100:200].all()
    assert not changed[100:200, 200:300].any()
    changed[100:200, 100:200] = False
    assert not changed.any()
    # Translucent: between the frame and the global colour, channel by channel.
    px, orig = drawn[150, 150].astype(int), base[150, 150].astype(int)
    col = np.array(GLOBAL_COLOR)
    assert np.all((px - orig) * (col - orig) >= 0) and np.all(np.abs(px - col) <= np.abs(orig - col))
    assert not np.array_equal(px, col)


def test_heatmap_colours_dense_cells_only(qtbot) -> None:
    density = np.zeros((45, 80), np.float32)
    density[10:14, 40:44] = 1.0  # frame pixels x 320..352, y 80..112
    result = make_result(density=DensityMap(density, 8), detections=Detections.empty())
    base = qimage_to_rgb(render_overlay(result, (640, 360), NOTHING))
    on = qimage_to_rgb(render_overlay(result, (640, 360), OverlayOptions(heatmap=True, text=False)))
    off = qimage_to_rgb(render_overlay(result, (640, 360), OverlayOptions(heatmap=False, text=False)))
    assert np.any(on[96, 336] != base[96, 336])
    assert np.array_equal(on[200:, :], base[200:, :])
    assert np.array_equal(off, base)


def test_render_copies_the_frame_and_scales_4k_to_display(qtbot) -> None:
    result = make_result(3840, 2160)
    before = result.frame_image.copy()
    size = fit_size(3840, 2160, 1280, 800)
    out = render_overlay(result, size, OverlayOptions(heatmap=True))
    assert (out.width(), out.height()) == (1280, 720)
    assert np.array_equal(result.frame_image, before)
    same = render_overlay(result, (3840, 2160), OverlayOptions(text=False))
    assert np.array_equal(result.frame_image, before)
    assert not np.array_equal(qimage_to_rgb(same), before)


def test_metadata_only_result_draws_on_a_dark_background(qtbot) -> None:
    result = make_result(image=False)
    out = qimage_to_rgb(render_overlay(result, (320, 180), NOTHING))
    assert out.shape == (180, 320, 3) and out.max() < 40


def test_counts_text_says_counts_policy_partial_and_ages() -> None:
    result = make_result(partial=True)
    text = "\n".join(line for line, _ in counts_lines(result))
    c = result.counts
    assert f"people {c.fused:.1f}" in text and "policy hybrid" in text
    assert f"detections {c.detection}" in text and f"density {c.density:.1f}" in text
    assert "PARTIAL: late density" in text
    assert "yolo 35 ms" in text and "density 160 ms" in text
    no_density = FusedResult(
        result.frame, "STRICT_SYNC", result.detections, None, CountResult(3, None, 3.0, "detections"), {}
    )
    lines = [line for line, _ in counts_lines(no_density)]
    assert "density n/a" in lines[1] and not any("PARTIAL" in line for line in lines)


# -- bridge -------------------------------------------------------------------------------------


def test_sink_keeps_only_the_newest_and_counts_skipped() -> None:
    sink: Sink = LatestResultSink()
    assert isinstance(sink, LatestResultSink)
    results = [make_result(frame_index=i, image=False) for i in range(3)]
    for r in results:
        sink.write(r)
    assert sink.take() is results[2]
    assert sink.take() is None
    assert (sink.stats.written, sink.stats.taken, sink.stats.skipped, sink.stats.pending) == (3, 1, 2, 0)


def test_sink_from_several_threads_never_goes_back_and_loses_nothing_uncounted() -> None:
    sink = LatestResultSink()
    writers, per_writer = 4, 400
    protos = [make_result(frame_index=i, image=False) for i in range(per_writer)]
    seen: list[FusedResult] = []
    done = threading.Event()

    def write(stream: int) -> None:
        for p in protos:
            sink.write(FusedResult(FrameMeta(f"s{stream}", p.frame.frame_index, 0, 0, 640, 360), *_rest(p)))

    def read() -> None:
        while not done.is_set():
            r = sink.take()
            if r is not None:
                seen.append(r)
        while (r := sink.take()) is not None:
            seen.append(r)

    reader = threading.Thread(target=read)
    threads = [threading.Thread(target=write, args=(k,)) for k in range(writers)]
    reader.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    done.set()
    reader.join(timeout=20)
    assert not reader.is_alive() and not any(t.is_alive() for t in threads)

    stats = sink.stats
    assert stats.written == writers * per_writer
    assert stats.taken == len(seen) and stats.taken + stats.skipped == stats.written and stats.pending == 0
    assert len(seen) < stats.written  # the reader could not keep up with every write, so some were skipped
    last_index: dict[str, int] = {}
    for r in seen:  # per writer, results reach the UI in order: latest wins, never an older one
        assert r.frame.frame_index > last_index.get(r.frame.stream_id, -1)
        last_index[r.frame.stream_id] = r.frame.frame_index
    assert seen[-1].frame.frame_index == per_writer - 1


def _rest(r: FusedResult) -> tuple:
    return (r.strategy, r.detections, r.density, r.counts, r.timings)


def test_sink_status_and_close() -> None:
    sink = LatestResultSink()
    assert sink.status.state is RunState.STARTING
    sink.write(make_result(image=False))
    assert sink.status.state is RunState.RUNNING
    sink.close()
    assert sink.status == PipelineStatus(RunState.STOPPED)
    assert sink.take() is not None  # the last result is still shown after close
    sink.write(make_result(image=False))
    assert sink.take() is None and sink.stats.skipped == 1
    other = LatestResultSink()
    other.close()
    assert other.status.state is RunState.STOPPED


# -- window -------------------------------------------------------------------------------------


def test_window_shows_a_result_with_overlays_and_charts(window) -> None:
    win, _, sink = window
    result = make_result(1920, 1080)
    sink.write(result)
    win.poll()
    image = win.video.image
    assert image is not None
    assert (image.width(), image.height()) == win.video.render_size(1920, 1080)
    shown = qimage_to_rgb(image)
    plain = qimage_to_rgb(render_overlay(result, (image.width(), image.height()), NOTHING))
    assert not np.array_equal(shown, plain)
    assert win.strategy_box.currentText() == "ASYNC_OVERLAY"
    win.charts.refresh()
    assert {"decode_ms", "inference_model_yolo_ms"} <= set(win.charts.stages.curves)
    assert {"end_to_end_ms", "render_ms", "overlay_lag_yolo_ms"} <= set(win.charts.end_to_end.curves)
    assert "shown 1" in win.drop_label.text()


def test_layer_checkboxes_redraw_the_last_result(window) -> None:
    win, _, sink = window
    sink.write(make_result())
    win.poll()
    with_boxes = qimage_to_rgb(win.video.image)
    win.boxes_check.setChecked(False)
    win.masks_check.setChecked(False)
    assert not win.options.boxes and not win.options.masks
    assert not np.array_equal(qimage_to_rgb(win.video.image), with_boxes)
    win.heatmap_check.setChecked(True)
    assert win.options.heatmap


def test_strategy_selector_calls_the_controller(window) -> None:
    win, controller, sink = window
    sink.write(make_result(strategy="STRICT_SYNC"))
    win.poll()  # following the pipeline's strategy is not a switch
    assert win.strategy_box.currentText() == "STRICT_SYNC" and controller.calls == []
    win.strategy_box.setCurrentText("RAW_STREAM_WITH_METADATA")
    win.strategy_box.setCurrentIndex(STRATEGIES.index("ASYNC_OVERLAY"))
    assert controller.calls == [("switch_strategy", "RAW_STREAM_WITH_METADATA"), ("switch_strategy", "ASYNC_OVERLAY")]
    sink.write(make_result(strategy="STRICT_SYNC", frame_index=8))
    win.poll()  # once the user chose, an older result does not move the selector
    assert win.strategy_box.currentText() == "ASYNC_OVERLAY"


def test_a_refused_switch_reverts_the_selector_and_says_why(qtbot) -> None:
    controller = RecordingController(fail_switch=True)
    win = MainWindow(controller, LatestResultSink(), strategy="ASYNC_OVERLAY")
    qtbot.addWidget(win)
    win.strategy_box.setCurrentText("STRICT_SYNC")
    assert controller.calls == [("switch_strategy", "STRICT_SYNC")]
    assert win.strategy_box.currentText() == "ASYNC_OVERLAY"
    assert "not available" in win.message_label.text()


@pytest.mark.parametrize("sink_closed", [False, True])
def test_failed_status_shows_the_error_text(window, sink_closed: bool) -> None:
    win, controller, sink = window
    sink.write(make_result())
    win.poll()
    assert win.state_label.text() == "RUNNING" and win.error_label.isHidden()
    error = "StageError: TensorRT engine yolo: CUDA out of memory\nTraceback ..."
    controller.status = PipelineStatus(RunState.FAILED, error)
    if sink_closed:  # the sink's STOPPED at the end of the stream does not hide the failure
        sink.close()
    win.poll()
    assert win.state_label.text() == "FAILED"
    assert not win.error_label.isHidden() and "CUDA out of memory" in win.error_label.text()
    assert win.error_label.toolTip() == error
    assert not win.error_banner.isHidden() and "CUDA out of memory" in win.error_banner.text()


def test_export_calls_the_controller_and_reports(window, tmp_path: Path) -> None:
    win, controller, _ = window
    path = str(tmp_path / "counts.csv")
    assert win.export_to(path) == 2
    assert controller.calls[-1] == ("export", path) and Path(path).is_file()
    assert "exported 2 rows" in win.message_label.text()


def test_failed_export_is_shown(qtbot, tmp_path: Path) -> None:
    win = MainWindow(RecordingController(fail_export=True), LatestResultSink())
    qtbot.addWidget(win)
    assert win.export_to(str(tmp_path / "x.csv")) is None
    assert "read-only file system" in win.message_label.text()


def test_closing_the_window_stops_the_controller_once(qtbot) -> None:
    controller = RecordingController()
    win = MainWindow(controller, LatestResultSink())
    qtbot.addWidget(win)
    win.show()
    win.close()
    win.close()
    assert controller.calls == [("stop", "")]


# -- charts -------------------------------------------------------------------------------------


def test_charts_accept_timings_with_missing_keys(qtbot) -> None:
    charts = TelemetryCharts(window=5)
    qtbot.addWidget(charts)
    timings = [
        {"decode_ms": 3.0, "preprocess_ms": 2.0},
        {"decode_ms": 3.5, "inference_model_density_ms": 30.0, "fusion_wait_ms": 8.0},
        {},
        {"preprocess_ms": 2.2, "queue_depth_decode": 3.0},
    ]
    for i, t in enumerate(timings):
        charts.add(make_result(frame_index=i, timings=t, image=False))
    charts.refresh()
    assert list(charts.stages.curves) == ["decode_ms", "preprocess_ms", "inference_model_density_ms"]
    x, y = charts.stages.series.data("inference_model_density_ms")
    assert x.tolist() == [0, 1, 2, 3]
    assert np.isnan(y[[0, 2, 3]]).all() and y[1] == 30.0
    x, y = charts.stages.curves["decode_ms"].getData()
    assert len(x) == 4
    _, fusion = charts.end_to_end.series.data("fusion_wait_ms")
    assert fusion[1] == 8.0 and np.isnan(fusion[0])
    _, density = charts.counts.series.data("density")
    assert np.isfinite(density).all()
    for i in range(4, 10):  # the window rolls
        charts.add(make_result(frame_index=i, timings={}, image=False))
    assert charts.stages.series.data("decode_ms")[0].tolist() == [5, 6, 7, 8, 9]
    charts.add(make_result(frame_index=0, timings={"decode_ms": 1.0}, image=False))  # a new stream starts over
    charts.refresh()
    assert len(charts.stages.series) == 1 and list(charts.stages.curves) == ["decode_ms"]


def test_latency_groups_split_stage_and_end_to_end() -> None:
    stages, e2e = latency_groups(
        {"decode_ms": 1.0, "end_to_end_ms": 50.0, "overlay_lag_density_ms": 90.0, "drops_decode": 2.0}
    )
    assert stages == {"decode_ms": 1.0}
    assert e2e == {"end_to_end_ms": 50.0, "overlay_lag_density_ms": 90.0}


# -- running --------------------------------------------------------------------------------------


def test_run_window_returns_when_the_window_closes_and_stops_the_controller(qtbot) -> None:
    controller = RecordingController()
    sink = LatestResultSink()
    sink.write(make_result())

    def close_main_window() -> None:
        for widget in QApplication.topLevelWidgets():
            if isinstance(widget, MainWindow) and widget.isVisible():
                widget.close()

    QTimer.singleShot(300, close_main_window)
    assert run_window(controller, sink, "run_window test") == 0
    assert controller.calls == [("stop", "")]


def test_qt_workaround_pins_singletons_where_the_binding_leaks(qtbot) -> None:
    leaks = sys.version_info < (3, 12) and any(singleton_leaks().values())
    assert apply_qt_workarounds() == leaks
    if leaks:  # thousands of calls a second can no longer run None/True/False down to zero
        assert min(sys.getrefcount(None), sys.getrefcount(True), sys.getrefcount(False)) > 2**39
