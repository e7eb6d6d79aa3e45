"""Live charts: per-stage latencies, end-to-end figures and counts over the last frames shown.

Series are keyed by telemetry name and discovered as they appear; a frame that lacks a name gets
a gap (NaN) in that series, so branches that run every Nth frame and names that only some
strategies publish plot without shifting the others. The x axis is the frame index (integer
ticks), so frames the UI skipped show as spacing, not as a distorted time line.

Made to be read by an operator:

- the legend sits beside each plot, never over the data, and lists only the series shown; the
  stage plot shows the summed stages (``decode_ms``, ``preprocess_ms``, ...) and hides the
  per-branch ones (``yolo_global.run_ms``) until picked in its series menu (:meth:`ChartPanel.set_visible`);
- "follow live" keeps the newest frame at the right edge; zooming keeps following (with the new
  width), dragging back in time stops it, and the toggle (:attr:`TelemetryCharts.follow`) says so;
- y axes start at 0 and never show an SI multiplier (all-zero data reads 0..1, not ``x0.001``);
- hovering shows every shown series' value at the frame under the mouse;
- counts: ``fused`` is drawn on top and thicker; with tracking, ``confirmed`` (confirmed, counted
  tracks) beside ``detection`` (the raw detections of the frame); unknown counts are gaps, and a
  strip under the plot marks unknown (amber) and stale (pale amber: counts of an older frame) frames.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping

import numpy as np
import pyqtgraph as pg
from numpy.typing import NDArray
from PySide6.QtCore import QPointF, Qt, Signal
from PySide6.QtWidgets import QVBoxLayout, QWidget

from pipeline.types import FusedResult
from ui.qt_fixes import apply_qt_workarounds
from ui.tracks import TRACK_COLOR, tracking_of

DEFAULT_WINDOW = 300
"""Frames kept per series."""

FOLLOW_WIDTH = 150
"""Frames shown while following live, until the operator zooms."""

END_TO_END_NAMES = ("end_to_end_ms", "fusion_wait_ms", "overlay_lag_ms", "render_ms")
"""Names plotted on the end-to-end chart; every other ``*_ms`` name goes on the stage chart."""

OVERLAY_LAG_PREFIX = "overlay_lag_"
"""Per-branch overlay ages (``overlay_lag_<branch>_ms``) come from ``FusedResult.overlays``."""

COUNT_STYLES: dict[str, dict[str, object]] = {
    "fused": {"color": (255, 255, 255), "width": 2.5, "z": 10, "style": Qt.PenStyle.SolidLine},
    "confirmed": {"color": TRACK_COLOR, "width": 2.0, "z": 8, "style": Qt.PenStyle.SolidLine},
    "detection": {"color": (0, 200, 255), "width": 1.5, "z": 5, "style": Qt.PenStyle.DashLine},
    "density": {"color": (255, 120, 200), "width": 1.5, "z": 4, "style": Qt.PenStyle.DotLine},
}

COUNT_LABELS: dict[str, str] = {
    "fused": "people",
    "confirmed": "confirmed tracks",
    "detection": "raw detections",
    "density": "density",
}
"""Legend text of the count series (the series keep their names in menus and hover)."""

AXIS_WIDTH = 48
"""Left axis width of every plot, so that their frame axes line up."""

UNKNOWN_BRUSH = (255, 170, 0, 230)
STALE_BRUSH = (255, 220, 140, 150)


class RollingSeries:
    """The last ``window`` samples of named series that share one x axis.

    A name first seen late is back-filled with NaN; a name missing from a sample gets NaN.
    """

    def __init__(self, window: int = DEFAULT_WINDOW) -> None:
        if window < 1:
            raise ValueError(f"RollingSeries: window must be >= 1, got {window}")
        self._window = window
        self._x: deque[float] = deque(maxlen=window)
        self._y: dict[str, deque[float]] = {}

    def add(self, x: float, values: Mapping[str, float | None]) -> None:
        """Append one sample; ``None`` or a missing name is a gap."""
        for name in values:
            if name not in self._y:
                self._y[name] = deque([np.nan] * len(self._x), maxlen=self._window)
        self._x.append(float(x))
        for name, ys in self._y.items():
            v = values.get(name)
            ys.append(np.nan if v is None else float(v))

    def clear(self) -> None:
        """Forget every sample and name."""
        self._x.clear()
        self._y.clear()

    @property
    def names(self) -> list[str]:
        """Series names in the order they were first seen."""
        return list(self._y)

    def __len__(self) -> int:
        return len(self._x)

    def x(self) -> NDArray[np.float64]:
        return np.fromiter(self._x, np.float64, len(self._x))

    def data(self, name: str) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """(x, y) arrays of one series, equal length; y is NaN where the sample lacked the name."""
        return self.x(), np.fromiter(self._y[name], np.float64, len(self._x))

    def value_at(self, name: str, x: float) -> float | None:
        """The sample of ``name`` at the x nearest ``x`` (None for a gap or no data)."""
        xs = self.x()
        if not len(xs) or name not in self._y:
            return None
        i = int(np.argmin(np.abs(xs - x)))
        v = self._y[name][i]
        return None if math.isnan(v) else float(v)


def latency_groups(timings: Mapping[str, float]) -> tuple[dict[str, float], dict[str, float]]:
    """Split ``*_ms`` timings into (stage latencies, end-to-end measures); other names are dropped."""
    stages: dict[str, float] = {}
    e2e: dict[str, float] = {}
    for name, value in timings.items():
        if not name.endswith("_ms"):
            continue
        target = e2e if name in END_TO_END_NAMES or name.startswith(OVERLAY_LAG_PREFIX) else stages
        target[name] = value
    return stages, e2e


class FrameAxis(pg.AxisItem):
    """An x axis of frame indices: integer ticks only, never an SI multiplier."""

    def __init__(self) -> None:
        super().__init__("bottom")
        self.enableAutoSIPrefix(False)

    def tickSpacing(self, minVal: float, maxVal: float, size: float) -> list[tuple[float, float]]:
        spacings = super().tickSpacing(minVal, maxVal, size)
        out = [(max(1.0, float(round(major))), offset) for major, offset in spacings]
        return out[:1] if out and out[0][0] <= 1.0 else out

    def tickStrings(self, values: list[float], scale: float, spacing: float) -> list[str]:
        return [f"{round(v):d}" if abs(v - round(v)) < 1e-6 else "" for v in values]


def nice_top(values: list[NDArray[np.float64]]) -> float:
    """Upper y limit: 15% above the largest finite value, at least 1 (all-zero data reads 0..1)."""
    peak = 0.0
    for v in values:
        finite = v[np.isfinite(v)]
        if finite.size:
            peak = max(peak, float(finite.max()))
    return max(1.0, peak * 1.15)


def is_default_visible(chart: str, name: str) -> bool:
    """Per-branch stage names (``yolo_global.run_ms``) start hidden on the stage chart."""
    return not (chart == "stages" and "." in name)


class ChartPanel:
    """One plot with a curve per series, its legend in a column of its own beside the plot."""

    def __init__(self, key: str, plot: pg.PlotItem, legend: pg.LegendItem, series: RollingSeries) -> None:
        self.key = key
        self.plot = plot
        self.legend = legend
        self.series = series
        self.curves: dict[str, pg.PlotDataItem] = {}
        self._visible: dict[str, bool] = {}

    def _pen(self, name: str) -> object:
        style = COUNT_STYLES.get(name) if self.key == "counts" else None
        if style is not None:
            return pg.mkPen(style["color"], width=style["width"], style=style["style"])
        return pg.mkPen(pg.intColor(len(self.curves), hues=9, values=1, maxValue=255), width=1.5)

    def refresh(self) -> None:
        """Create curves for new names and push every shown series' data to its curve."""
        for name in self.series.names:
            curve = self.curves.get(name)
            if curve is None:
                curve = pg.PlotDataItem([], [], pen=self._pen(name), name=name, connect="finite")
                style = COUNT_STYLES.get(name) if self.key == "counts" else None
                curve.setZValue(float(style["z"]) if style else 0.0)  # type: ignore[arg-type]
                self.plot.addItem(curve)
                self.curves[name] = curve
                self._visible.setdefault(name, is_default_visible(self.key, name))
                self._apply_visible(name)
            if self._visible[name]:
                self._push(name)

    def _push(self, name: str) -> None:
        x, y = self.series.data(name)
        if self.key == "counts":
            self.curves[name].setData(x, y, connect="finite")  # an unknown count is a gap
        else:
            # A branch that ran on some frames only: its samples joined, so a lone one still shows.
            keep = np.isfinite(y)
            self.curves[name].setData(x[keep], y[keep], symbol="o" if keep.sum() < 3 else None, symbolSize=4)

    def names(self) -> list[str]:
        return self.series.names

    def is_visible(self, name: str) -> bool:
        return self._visible.get(name, is_default_visible(self.key, name))

    def set_visible(self, name: str, visible: bool) -> None:
        """Show or hide one series (and its legend entry)."""
        self._visible[name] = visible
        if name in self.curves:
            self._apply_visible(name)
            if visible:
                self._push(name)

    def _apply_visible(self, name: str) -> None:
        curve = self.curves[name]
        curve.setVisible(self._visible[name])
        self.legend.removeItem(curve)
        if self._visible[name]:
            self.legend.addItem(curve, name.removesuffix("_ms") if self.key != "counts" else COUNT_LABELS.get(name, name))

    def visible_arrays(self, x0: float, x1: float) -> list[NDArray[np.float64]]:
        xs = self.series.x()
        keep = (xs >= x0) & (xs <= x1)
        return [self.series.data(n)[1][keep] for n in self.curves if self._visible[n]]

    def hover_text(self, x: float) -> str:
        parts = []
        for name in self.curves:
            if self._visible[name]:
                v = self.series.value_at(name, x)
                parts.append(f"{name.removesuffix('_ms')}: {'—' if v is None else f'{v:.1f}'}")
        return "\n".join(parts)

    def clear(self) -> None:
        """Drop the samples and the curves."""
        self.series.clear()
        for curve in self.curves.values():
            self.plot.removeItem(curve)
            self.legend.removeItem(curve)
        self.curves.clear()


class TelemetryCharts(QWidget):
    """Three stacked live plots sharing the frame-index axis, plus a strip of count states.

    :meth:`add` records a result (cheap); :meth:`refresh` redraws (call it at the rate the eye
    needs, not per frame). A frame index lower than the last one (a new stream) starts over.
    ``follow_changed(bool)`` is emitted when following live turns on or off.
    """

    follow_changed = Signal(bool)

    def __init__(self, window: int = DEFAULT_WINDOW, parent: QWidget | None = None) -> None:
        apply_qt_workarounds()  # pyqtgraph emits on every setData
        super().__init__(parent)
        self._layout_widget = pg.GraphicsLayoutWidget()
        self._layout_widget.setBackground("#202020")
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self._layout_widget)
        self._window = window
        self.stages = self._add_chart("stages", 0, "stage latency", "ms")
        self.end_to_end = self._add_chart("end_to_end", 1, "end to end", "ms")
        self.counts = self._add_chart("counts", 2, "people", "count")
        self.state_plot = self._layout_widget.addPlot(row=3, col=0, axisItems={"bottom": FrameAxis()})
        self.state_plot.setMaximumHeight(70)
        self.state_plot.getAxis("left").setStyle(showValues=False)
        self.state_plot.getAxis("left").setWidth(AXIS_WIDTH)
        self.state_plot.getAxis("left").setTicks([[]])
        self.state_plot.setYRange(0, 1, padding=0)
        self.state_plot.setMouseEnabled(x=True, y=False)
        self.state_plot.setLabel("bottom", "frame")
        self.state_plot.setXLink(self.stages.plot)
        self._state_bars = pg.BarGraphItem(x=[0.0], height=[0.0], width=1.0, brush=UNKNOWN_BRUSH, pen=pg.mkPen(None))
        self.state_plot.addItem(self._state_bars)
        state_legend = pg.LegendItem(labelTextSize="8pt")
        state_legend.addItem(pg.BarGraphItem(x=[0], height=[1], width=1, brush=UNKNOWN_BRUSH), "unknown")
        state_legend.addItem(pg.BarGraphItem(x=[0], height=[1], width=1, brush=STALE_BRUSH), "stale")
        self._layout_widget.addItem(state_legend, row=3, col=1)
        self._layout_widget.ci.layout.setColumnFixedWidth(1, 150)
        for chart in (self.end_to_end, self.counts):
            chart.plot.setXLink(self.stages.plot)
        self._states: deque[tuple[float, int]] = deque(maxlen=window)  # (frame, 0 known / 1 unknown / 2 stale)
        self._last_index: int | None = None
        self._dirty = False
        self._follow = True
        self._follow_width = float(FOLLOW_WIDTH)
        self._setting_range = False
        self._hover_x: float | None = None
        self.stages.plot.getViewBox().sigRangeChangedManually.connect(self._on_manual_range)
        for chart in self.charts:
            chart.plot.getViewBox().sigRangeChangedManually.connect(self._on_manual_range)
        self._hover_line = [pg.InfiniteLine(angle=90, pen=pg.mkPen(200, 200, 200, 120)) for _ in self.charts]
        self._hover_text = [pg.TextItem(color=(230, 230, 230), fill=pg.mkBrush(0, 0, 0, 200), anchor=(0, 0)) for _ in self.charts]
        for chart, line, text in zip(self.charts, self._hover_line, self._hover_text, strict=True):
            chart.plot.addItem(line, ignoreBounds=True)
            chart.plot.addItem(text, ignoreBounds=True)
            line.hide()
            text.hide()
            text.setZValue(100)
        self._layout_widget.scene().sigMouseMoved.connect(self._on_mouse_moved)

    def _add_chart(self, key: str, row: int, title: str, unit: str) -> ChartPanel:
        plot = self._layout_widget.addPlot(row=row, col=0, title=title, axisItems={"bottom": FrameAxis()})
        plot.setLabel("left", unit)
        plot.getAxis("left").enableAutoSIPrefix(False)
        plot.getAxis("left").setWidth(AXIS_WIDTH)
        plot.showGrid(x=True, y=True, alpha=0.25)
        plot.setClipToView(True)
        plot.setMouseEnabled(x=True, y=False)
        plot.enableAutoRange(x=False, y=False)
        plot.setYRange(0, 1, padding=0)
        legend = pg.LegendItem(labelTextSize="8pt", verSpacing=-4)
        self._layout_widget.addItem(legend, row=row, col=1)
        return ChartPanel(key, plot, legend, RollingSeries(self._window))

    @property
    def charts(self) -> tuple[ChartPanel, ChartPanel, ChartPanel]:
        """(stages, end to end, counts)."""
        return self.stages, self.end_to_end, self.counts

    # -- following live ------------------------------------------------------------------------

    @property
    def follow(self) -> bool:
        """True while the newest frame is kept at the right edge."""
        return self._follow

    def set_follow(self, on: bool) -> None:
        if on == self._follow:
            return
        self._follow = on
        if on:
            self._dirty = True
            self.refresh()
        self.follow_changed.emit(on)

    def _on_manual_range(self, *_args: object) -> None:
        if self._setting_range or self._last_index is None:
            return
        x0, x1 = self.stages.plot.getViewBox().viewRange()[0]
        width = max(5.0, x1 - x0)
        # A zoom that keeps the newest frame in view keeps following, at the new width; a drag
        # back in time means the operator is reading the past.
        if x1 >= self._last_index - 0.05 * width:
            self._follow_width = width
            if not self._follow:
                self.set_follow(True)
        else:
            self.set_follow(False)
        self._update_y()

    def x_range(self) -> tuple[float, float]:
        x0, x1 = self.stages.plot.getViewBox().viewRange()[0]
        return float(x0), float(x1)

    # -- data ----------------------------------------------------------------------------------

    def add(self, result: FusedResult, extra_timings: Mapping[str, float] | None = None) -> None:
        """Record one shown result; ``extra_timings`` adds the UI's own (``render_ms``)."""
        index = result.frame.frame_index
        if self._last_index is not None and index < self._last_index:
            self.clear()
        self._last_index = index
        timings = result.timings.flat()
        if extra_timings:
            timings.update(extra_timings)
        for overlay in result.overlays:
            timings.setdefault(f"{OVERLAY_LAG_PREFIX}{overlay.branch}_ms", overlay.lag_ms)
        stages, e2e = latency_groups(timings)
        c = result.counts
        self.stages.series.add(index, stages)
        self.end_to_end.series.add(index, e2e)
        if not result.raw:  # unknown counts are gaps (None), never 0
            detection = None if c.detection is None else float(c.detection)
            values: dict[str, float | None] = {"fused": c.fused, "detection": detection, "density": c.density}
            tracking = tracking_of(c)
            if tracking is not None:  # unknown (warming up, a partial frame) is a gap
                confirmed = tracking.confirmed_count
                values["confirmed"] = None if confirmed is None else float(confirmed)
            self.counts.series.add(index, values)
            stale = c.known and result.counts_frame_index is not None and result.counts_frame_index != index
            self._states.append((float(index), 1 if not c.known else 2 if stale else 0))
        self._dirty = True

    def add_gap(self, index: int) -> None:
        """Mark frame ``index`` as having no count at all (a pause, a drop): a gap in every series."""
        self.counts.series.add(index, {"fused": None, "detection": None, "density": None})
        self._dirty = True

    def refresh(self) -> None:
        """Redraw the curves if anything was added since the last refresh."""
        if not self._dirty:
            return
        for chart in self.charts:
            chart.refresh()
        marked = [(x, s) for x, s in self._states if s]
        self._state_bars.setVisible(bool(marked))
        if marked:  # (pyqtgraph's BarGraphItem fails on empty lists)
            self._state_bars.setOpts(
                x=[x for x, _ in marked], height=[1.0] * len(marked), width=1.0,
                brushes=[pg.mkBrush(UNKNOWN_BRUSH if s == 1 else STALE_BRUSH) for _, s in marked],
            )  # fmt: skip
        if self._follow and self._last_index is not None:
            self._setting_range = True
            try:
                last = float(self._last_index)
                self.stages.plot.setXRange(last - self._follow_width, last + 1, padding=0)
            finally:
                self._setting_range = False
        self._update_y()
        self._dirty = False

    def _update_y(self) -> None:
        x0, x1 = self.x_range()
        for chart in self.charts:
            chart.plot.setYRange(0, nice_top(chart.visible_arrays(x0, x1)), padding=0)

    # -- hover ---------------------------------------------------------------------------------

    def _on_mouse_moved(self, pos: QPointF) -> None:
        for chart, line, text in zip(self.charts, self._hover_line, self._hover_text, strict=True):
            vb = chart.plot.getViewBox()
            if not chart.plot.sceneBoundingRect().contains(pos):
                line.hide()
                text.hide()
                continue
            point = vb.mapSceneToView(pos)
            x = round(point.x())
            self.show_hover(chart, x, point.y())

    def show_hover(self, chart: ChartPanel, x: float, y: float | None = None) -> str:
        """Show the values of ``chart``'s series at frame ``x`` beside a vertical line; returns the text."""
        i = self.charts.index(chart)
        line, text = self._hover_line[i], self._hover_text[i]
        body = f"frame {round(x)}\n{chart.hover_text(x)}"
        line.setPos(x)
        line.show()
        text.setText(body)
        (vx0, vx1), (_vy0, vy1) = chart.plot.getViewBox().viewRange()
        text.setAnchor((1, 0) if x > (vx0 + vx1) / 2 else (0, 0))
        text.setPos(x, vy1)
        text.show()
        return body

    def clear(self) -> None:
        """Drop every series and curve."""
        for chart in self.charts:
            chart.clear()
        self._states.clear()
        self._state_bars.setVisible(False)
        self._last_index = None
        self._dirty = False
