"""Live charts: per-stage latencies and counts over the last frames the window showed.

Series are keyed by telemetry name and discovered as they appear; a frame that lacks a name gets
a gap (NaN) in that series, so branches that run every Nth frame and names that only some
strategies publish plot without shifting the others. The x axis is the frame index, so frames
the UI skipped show as spacing, not as a distorted time line.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping

import numpy as np
import pyqtgraph as pg
from numpy.typing import NDArray
from PySide6.QtWidgets import QVBoxLayout, QWidget

from pipeline.types import FusedResult
from ui.qt_fixes import apply_qt_workarounds

DEFAULT_WINDOW = 300
"""Frames kept per series."""

END_TO_END_NAMES = ("end_to_end_ms", "fusion_wait_ms", "overlay_lag_ms", "render_ms")
"""Names plotted on the end-to-end chart; every other ``*_ms`` name goes on the stage chart."""

OVERLAY_LAG_PREFIX = "overlay_lag_"
"""Per-branch overlay ages (``overlay_lag_<branch>_ms``) come from ``FusedResult.overlays``."""


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

    def data(self, name: str) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """(x, y) arrays of one series, equal length; y is NaN where the sample lacked the name."""
        return np.fromiter(self._x, np.float64, len(self._x)), np.fromiter(self._y[name], np.float64, len(self._x))


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


class ChartPanel:
    """One plot with a curve per series name, colours assigned in order of appearance."""

    def __init__(self, plot: pg.PlotItem, series: RollingSeries) -> None:
        self.plot = plot
        self.series = series
        self.curves: dict[str, pg.PlotDataItem] = {}
        self._legend = plot.addLegend(
            offset=(5, 5), labelTextSize="8pt", colCount=2, brush=pg.mkBrush(20, 20, 20, 180), verSpacing=-6
        )

    def refresh(self) -> None:
        """Create curves for new names and push every series' data to its curve."""
        for name in self.series.names:
            curve = self.curves.get(name)
            if curve is None:
                pen = pg.mkPen(pg.intColor(len(self.curves), hues=9, values=1, maxValue=255), width=1.5)
                curve = self.plot.plot([], [], pen=pen, name=name, connect="finite")
                self.curves[name] = curve
            curve.setData(*self.series.data(name), connect="finite")

    def clear(self) -> None:
        """Drop the samples and the curves."""
        self.series.clear()
        for curve in self.curves.values():
            self.plot.removeItem(curve)
            self._legend.removeItem(curve)
        self.curves.clear()


class TelemetryCharts(QWidget):
    """Three stacked live plots sharing the frame-index axis.

    - stages: ``decode_ms``, ``preprocess_ms``, ``inference_model_<name>_ms``, ``postprocess_ms``, ...
    - end to end: ``end_to_end_ms``, ``fusion_wait_ms``, ``overlay_lag_ms`` (and per branch from
      ``FusedResult.overlays``), ``render_ms``
    - counts: fused, detection, density

    :meth:`add` records a result (cheap); :meth:`refresh` redraws (call it at the rate the eye
    needs, not per frame). A frame index lower than the last one (a new stream) starts over.
    """

    def __init__(self, window: int = DEFAULT_WINDOW, parent: QWidget | None = None) -> None:
        apply_qt_workarounds()  # pyqtgraph emits on every setData
        super().__init__(parent)
        self._layout_widget = pg.GraphicsLayoutWidget()
        self._layout_widget.setBackground("#202020")
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self._layout_widget)
        self.stages = self._add_chart(0, "stage latency", "ms", window)
        self.end_to_end = self._add_chart(1, "end to end", "ms", window)
        self.counts = self._add_chart(2, "people", "count", window)
        self.end_to_end.plot.setXLink(self.stages.plot)
        self.counts.plot.setXLink(self.stages.plot)
        self.counts.plot.setLabel("bottom", "frame")
        self._last_index: int | None = None
        self._dirty = False

    def _add_chart(self, row: int, title: str, unit: str, window: int) -> ChartPanel:
        plot = self._layout_widget.addPlot(row=row, col=0, title=title)
        plot.setLabel("left", unit)
        plot.showGrid(x=True, y=True, alpha=0.25)
        plot.setClipToView(True)
        return ChartPanel(plot, RollingSeries(window))

    @property
    def charts(self) -> tuple[ChartPanel, ChartPanel, ChartPanel]:
        """(stages, end to end, counts)."""
        return self.stages, self.end_to_end, self.counts

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
            self.counts.series.add(index, {"fused": c.fused, "detection": detection, "density": c.density})
        self._dirty = True

    def refresh(self) -> None:
        """Redraw the curves if anything was added since the last refresh."""
        if not self._dirty:
            return
        for chart in self.charts:
            chart.refresh()
        self._dirty = False

    def clear(self) -> None:
        """Drop every series and curve."""
        for chart in self.charts:
            chart.clear()
        self._last_index = None
        self._dirty = False
