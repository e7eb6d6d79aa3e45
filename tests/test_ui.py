"""The UI: overlay drawing (pixel checks), the latest-wins bridge, the window's wiring, the charts.

Qt runs offscreen (QT_QPA_PLATFORM=offscreen) through pytest-qt. The controller here is a small
recording class standing in for the pipeline: the window's contract is the calls it makes.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Sequence

import numpy as np
import pytest
from numpy.typing import NDArray

from pipeline.protocols import Sink
from pipeline.types import (
    GLOBAL_SOURCE,
    BranchTimings,
    CountResult,
    DensityMap,
    Detections,
    FrameMeta,
    FrameTimings,
    FusedResult,
    OverlayInfo,
    StageTimings,
)
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
    """A FusedResult of real dataclasses; by default a few people with masks and a density map.

    ``timings``: flat telemetry names; ``decode_ms`` and the fusion figures go where
    ``StageTimings`` keeps them, every other ``*_ms`` is one branch's work on this frame."""
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
        timings=make_timings(frame_index, timings if timings is not None else
                             {"decode_ms": 4.0, "inference_model_yolo_ms": 12.0, "end_to_end_ms": 40.0}),
        overlays=(OverlayInfo("yolo", frame_index, 35.0), OverlayInfo("density", frame_index - 4, 160.0)),
        missing={"density": "late"} if partial else {},
        frame_image=make_frame(width, height) if image else None,
        counts_frame_index=frame_index,
    )


def make_timings(frame_index: int, flat: dict[str, float]) -> StageTimings:
    """StageTimings whose ``flat()`` gives back ``flat`` (branch work under the branch ``b``)."""
    own = {"decode_ms", "fusion_wait_ms", "end_to_end_ms"}
    work = {k: v for k, v in flat.items() if k not in own and not k.startswith("queue_depth")}
    return StageTimings(
        frame_index,
        FrameTimings(decode_ms=flat.get("decode_ms")),
        (BranchTimings("b", frame_index, work),) if work else (),
        fusion_wait_ms=flat.get("fusion_wait_ms"),
        end_to_end_ms=flat.get("end_to_end_ms"),
    )


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
    assert "PARTIAL: late: density" in text
    assert "yolo 35 ms" in text and "density 160 ms" in text
    no_density = FusedResult(
        result.frame, "STRICT_SYNC", result.detections, None, CountResult(3, None, 3.0, "detections"),
        make_timings(7, {}), counts_frame_index=7,
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
    return (r.strategy, r.detections, r.density, r.counts, r.timings)  # type: ignore[return-value]


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
    shown = [n for n in charts.stages.curves if charts.stages.is_visible(n)]
    assert shown == ["decode_ms", "preprocess_ms", "inference_model_density_ms"]  # per-branch names start hidden
    x, y = charts.stages.series.data("inference_model_density_ms")
    assert x.tolist() == [0, 1, 2, 3]
    assert np.isnan(y[[0, 2, 3]]).all() and y[1] == 30.0
    x, y = charts.stages.curves["decode_ms"].getData()
    assert x.tolist() == [0, 1]  # a latency curve joins its own samples
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


def test_count_chart_gaps_unknown_and_marks_stale(qtbot) -> None:
    charts = TelemetryCharts(window=20)
    qtbot.addWidget(charts)
    known = make_result(frame_index=0, image=False)
    unknown = FusedResult(known.frame.__class__("cam0", 1, 0.1, 0, 640, 360), "ASYNC_OVERLAY", known.detections, None,
                          CountResult.unknown("warming up", "hybrid"), make_timings(1, {}), counts_frame_index=None)
    stale = make_result(frame_index=2, image=False)
    stale = FusedResult(stale.frame, stale.strategy, stale.detections, stale.density, stale.counts, stale.timings,
                        counts_frame_index=0, counts_age_ms=300.0)
    for r in (known, unknown, stale):
        charts.add(r)
    charts.refresh()
    _, fused = charts.counts.series.data("fused")
    assert fused[0] == known.counts.fused and np.isnan(fused[1]) and fused[2] == stale.counts.fused
    assert charts.counts.curves["fused"].zValue() > charts.counts.curves["detection"].zValue()
    opts = charts._state_bars.opts
    assert list(opts["x"]) == [1.0, 2.0]  # unknown and stale marked, the known frame not


def test_chart_axes_read_on_all_zero_data_and_ticks_are_frames(qtbot) -> None:
    charts = TelemetryCharts(window=50)
    qtbot.addWidget(charts)
    charts.resize(600, 600)
    charts.show()
    zero = CountResult(0, None, 0.0, "detections")
    for i in range(3):
        r = make_result(frame_index=i, image=False)
        charts.add(FusedResult(r.frame, r.strategy, r.detections, None, zero, r.timings, counts_frame_index=i))
    charts.refresh()
    y0, y1 = charts.counts.plot.getViewBox().viewRange()[1]
    assert (y0, y1) == (0.0, 1.0)  # not -400..400 x0.001
    axis = charts.counts.plot.getAxis("left")
    assert axis.autoSIPrefixScale == 1.0
    frame_axis = charts.counts.plot.getAxis("bottom")
    for spacing, _ in frame_axis.tickSpacing(0, 3, 500):
        assert spacing >= 1 and spacing == round(spacing)
    assert frame_axis.tickStrings([0.0, 0.5, 1.0], 1.0, 0.5) == ["0", "", "1"]
    text = charts.show_hover(charts.counts, 1)
    assert "frame 1" in text and "fused: 0.0" in text


def test_latency_groups_split_stage_and_end_to_end() -> None:
    stages, e2e = latency_groups(
        {"decode_ms": 1.0, "end_to_end_ms": 50.0, "overlay_lag_density_ms": 90.0, "drops_decode": 2.0}
    )
    assert stages == {"decode_ms": 1.0}
    assert e2e == {"end_to_end_ms": 50.0, "overlay_lag_density_ms": 90.0}


# -- running --------------------------------------------------------------------------------------


def test_qt_workaround_pins_singletons_where_the_binding_leaks(qtbot) -> None:
    leaks = sys.version_info < (3, 12) and any(singleton_leaks().values())
    assert apply_qt_workarounds() == leaks
    if leaks:  # thousands of calls a second can no longer run None/True/False down to zero
        assert min(sys.getrefcount(None), sys.getrefcount(True), sys.getrefcount(False)) > 2**39
