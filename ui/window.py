"""The main window: the video with overlays, the fusion strategy selector, live charts, status.

The window never waits on the pipeline. A ~30 Hz timer takes the newest result from the
:class:`~ui.bridge.LatestResultSink` (frames that arrived in between are skipped there, and
counted), draws it at the view's size and records it in the charts. Everything the window asks of
the pipeline goes through a :class:`Controller`, which ``app/`` builds.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import Protocol

import numpy as np
from numpy.typing import NDArray
from PySide6.QtCore import QRectF, Qt, QTimer, Signal
from PySide6.QtGui import QCloseEvent, QColor, QImage, QPainter, QPaintEvent, QResizeEvent
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QMainWindow,
    QPushButton,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from config.schema import FusionStrategyName
from pipeline.types import FusedResult
from ui.bridge import LatestResultSink, PipelineStatus, RunState
from ui.charts import TelemetryCharts
from ui.overlay import OverlayOptions, fit_size, render_overlay
from ui.qt_fixes import apply_qt_workarounds

log = logging.getLogger("people_counter.ui")

STRATEGIES: tuple[str, ...] = tuple(s.value for s in FusionStrategyName)
"""Names offered by the strategy selector, in the config's order."""

RATE_WINDOW_S = 2.0
"""Frames shown in the last this many seconds give the fps figures."""

CHART_REFRESH_S = 0.1
"""Charts redraw at most this often; results are recorded every tick regardless."""

_STATE_COLORS = {
    RunState.STARTING: "#808080",
    RunState.RUNNING: "#2e7d32",
    RunState.STOPPED: "#616161",
    RunState.FAILED: "#c62828",
}


class Controller(Protocol):
    """What the window drives: the running pipeline, as ``app/`` composes it.

    - ``switch_strategy(name)`` changes the fusion strategy live; raises (any exception, shown to
      the user) for a name it cannot switch to.
    - ``export(path)`` writes the count history to ``path`` (CSV or JSON by extension) and returns
      the number of rows written.
    - ``stop()`` stops the pipeline; the window calls it once, when it closes.
    - ``status`` is the controller's view of the run. The window shows the worse of it and the
      sink's status (FAILED > STOPPED > RUNNING > STARTING), so either side can report a failure.
    """

    def switch_strategy(self, name: str) -> None: ...

    def export(self, path: str) -> int: ...

    def stop(self) -> None: ...

    @property
    def status(self) -> PipelineStatus: ...


class VideoView(QWidget):
    """Shows the latest rendered frame, centred and aspect-fitted; black around it.

    The window renders overlays at :meth:`render_size` so this widget only blits. Until the next
    frame arrives after a resize, the last image is stretched to fit (``resized`` lets the owner
    re-render it at the new size).
    """

    resized = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._image: QImage | None = None
        self.setMinimumSize(320, 180)
        self.setAttribute(Qt.WidgetAttribute.WA_OpaquePaintEvent, True)

    @property
    def image(self) -> QImage | None:
        """The image on screen (None before the first frame)."""
        return self._image

    def set_image(self, image: QImage) -> None:
        """Show ``image`` (its device pixel ratio says how many pixels make one logical pixel)."""
        self._image = image
        self.update()

    def render_size(self, frame_w: int, frame_h: int) -> tuple[int, int]:
        """Size in device pixels at which a frame of (frame_w, frame_h) fills this view."""
        dpr = self.devicePixelRatioF()
        return fit_size(frame_w, frame_h, max(1, round(self.width() * dpr)), max(1, round(self.height() * dpr)))

    def paintEvent(self, event: QPaintEvent) -> None:
        painter = QPainter(self)
        try:
            painter.fillRect(self.rect(), QColor(0, 0, 0))
            if self._image is None or self._image.isNull():
                painter.setPen(QColor(160, 160, 160))
                painter.drawText(self.rect(), Qt.AlignmentFlag.AlignCenter, "waiting for frames…")
                return
            w, h = fit_size(self._image.width(), self._image.height(), self.width(), self.height())
            painter.drawImage(QRectF((self.width() - w) / 2, (self.height() - h) / 2, w, h), self._image)
        finally:
            painter.end()

    def resizeEvent(self, event: QResizeEvent) -> None:
        super().resizeEvent(event)
        self.resized.emit()


class MainWindow(QMainWindow):
    """Video with overlays, strategy selector, layer toggles, live charts, export, status bar.

    ``strategy`` preselects the selector; without it the selector follows the first result
    received (until the user picks one). ``poll_hz`` is the rate at which the sink is polled.
    Closing the window stops its timer and calls ``controller.stop()`` once.
    """

    def __init__(
        self,
        controller: Controller,
        sink: LatestResultSink,
        title: str = "people-counter",
        *,
        strategy: str | None = None,
        poll_hz: float = 30.0,
        parent: QWidget | None = None,
    ) -> None:
        apply_qt_workarounds()
        super().__init__(parent)
        self._controller = controller
        self._sink = sink
        self._options = OverlayOptions()
        self._last_result: FusedResult | None = None
        self._last_image: NDArray[np.uint8] | None = None
        self._shown: deque[tuple[float, int]] = deque()
        self._strategy_chosen = strategy is not None
        self._stopped = False
        self._last_chart_refresh = 0.0
        self._status: PipelineStatus | None = None
        self.setWindowTitle(title)
        self.resize(1600, 900)

        self.strategy_box = QComboBox()
        self.strategy_box.addItems(STRATEGIES)
        self.strategy_box.setToolTip("Fusion strategy, switched live")
        if strategy is not None:
            self._set_selector(strategy)
        self._strategy = self.strategy_box.currentText()
        self.strategy_box.currentTextChanged.connect(self._on_strategy_chosen)
        self.boxes_check = self._add_toggle("boxes", self._options.boxes)
        self.masks_check = self._add_toggle("masks", self._options.masks)
        self.heatmap_check = self._add_toggle("heatmap", self._options.heatmap)
        self.export_button = QPushButton("Export counts…")
        self.export_button.setToolTip("Write the count history to CSV or JSON")
        self.export_button.clicked.connect(self._on_export_clicked)

        controls = QHBoxLayout()
        controls.addWidget(QLabel("Fusion:"))
        controls.addWidget(self.strategy_box)
        controls.addSpacing(16)
        for check in (self.boxes_check, self.masks_check, self.heatmap_check):
            controls.addWidget(check)
        controls.addStretch(1)
        controls.addWidget(self.export_button)

        self.error_banner = QLabel()
        self.error_banner.setWordWrap(True)
        self.error_banner.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.error_banner.setStyleSheet("background:#c62828; color:white; font-weight:bold; padding:8px;")
        self.error_banner.hide()
        self.video = VideoView()
        self.video.resized.connect(self._rerender)
        self.charts = TelemetryCharts()

        left = QWidget()
        left_layout = QVBoxLayout(left)
        left_layout.setContentsMargins(0, 0, 0, 0)
        left_layout.addWidget(self.error_banner)
        left_layout.addWidget(self.video, 1)
        splitter = QSplitter(Qt.Orientation.Horizontal)
        splitter.addWidget(left)
        splitter.addWidget(self.charts)
        splitter.setStretchFactor(0, 3)
        splitter.setStretchFactor(1, 1)
        splitter.setSizes([1150, 450])

        central = QWidget()
        layout = QVBoxLayout(central)
        layout.setContentsMargins(6, 6, 6, 0)
        layout.addLayout(controls)
        layout.addWidget(splitter, 1)
        self.setCentralWidget(central)

        self.state_label = QLabel()
        self.state_label.setMinimumWidth(90)
        self.state_label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.error_label = QLabel()
        self.error_label.setStyleSheet("color:#c62828; font-weight:bold;")
        self.error_label.hide()
        self.message_label = QLabel()
        self.rate_label = QLabel()
        self.drop_label = QLabel()
        bar = self.statusBar()
        bar.addWidget(self.state_label)
        bar.addWidget(self.error_label, 1)
        bar.addWidget(self.message_label, 1)
        bar.addPermanentWidget(self.rate_label)
        bar.addPermanentWidget(self.drop_label)

        self._timer = QTimer(self)
        self._timer.setInterval(max(1, round(1000 / poll_hz)))
        self._timer.timeout.connect(self.poll)
        self._timer.start()
        self.poll()

    # -- polling -----------------------------------------------------------------------------

    def poll(self) -> None:
        """One tick: show the run state, take and draw the newest result, update rates and charts."""
        self._show_status()
        result = self._sink.take()
        if result is not None:
            self._show_result(result)
        now = time.perf_counter()
        self._update_rates(now)
        if now - self._last_chart_refresh >= CHART_REFRESH_S:
            self.charts.refresh()
            self._last_chart_refresh = now

    def _show_result(self, result: FusedResult) -> None:
        if not self._strategy_chosen and result.strategy in STRATEGIES:
            self._set_selector(result.strategy)
            self._strategy = result.strategy
        if result.frame_image is not None:
            self._last_image = result.frame_image
        self._last_result = result
        render_ms = self._render()
        self.charts.add(result, {"render_ms": render_ms})
        self._shown.append((time.perf_counter(), result.frame.frame_index))

    def _render(self) -> float:
        """Draw the last result at the view's size; returns the time it took (ms)."""
        result = self._last_result
        if result is None:
            return 0.0
        t0 = time.perf_counter()
        image = result.frame_image
        last = self._last_image
        if image is None and last is not None and last.shape[:2] == (result.frame.height, result.frame.width):
            image = last  # metadata-only results (RAW_STREAM_WITH_METADATA) keep showing the last pixels
        size = self.video.render_size(result.frame.width, result.frame.height)
        qimage = render_overlay(result, size, self._options, image, self._sink.latest_metadata)
        qimage.setDevicePixelRatio(self.video.devicePixelRatioF())
        self.video.set_image(qimage)
        return (time.perf_counter() - t0) * 1000.0

    def _rerender(self) -> None:
        self._render()

    def _show_status(self) -> None:
        status = max((self._sink.status, self._controller.status), key=lambda s: s.severity)
        if status == self._status:
            return
        self._status = status
        self.state_label.setText(status.state.value)
        color = _STATE_COLORS[status.state]
        self.state_label.setStyleSheet(f"background:{color}; color:white; font-weight:bold; padding:2px 6px;")
        if status.state is RunState.FAILED:
            message = status.message or "unknown error"
            log.error("pipeline failed: %s", message)
            self.error_banner.setText(f"Pipeline failed: {message}")
            self.error_banner.show()
            first_line = message.splitlines()[0] if message.strip() else message
            self.error_label.setText(f"FAILED: {first_line}")
            self.error_label.setToolTip(message)
            self.error_label.show()
        else:
            self.error_banner.hide()
            self.error_label.hide()
            self.state_label.setToolTip(status.message)

    def _update_rates(self, now: float) -> None:
        while self._shown and now - self._shown[0][0] > RATE_WINDOW_S:
            self._shown.popleft()
        display_fps = stream_fps = 0.0
        if len(self._shown) >= 2:
            (t0, i0), (t1, i1) = self._shown[0], self._shown[-1]
            if t1 > t0:
                display_fps = (len(self._shown) - 1) / (t1 - t0)
                stream_fps = max(0, i1 - i0) / (t1 - t0)
        self.rate_label.setText(f"display {display_fps:4.1f} fps   stream {stream_fps:4.1f} fps")
        stats = self._sink.stats
        text = f"shown {stats.taken}   skipped {stats.skipped}"
        if self._last_result is not None and self._last_result.missing:
            text += "   missing: " + ", ".join(sorted(self._last_result.missing))
        self.drop_label.setText(text)

    # -- controls ----------------------------------------------------------------------------

    def _add_toggle(self, name: str, checked: bool) -> QCheckBox:
        check = QCheckBox(name)
        check.setChecked(checked)
        check.toggled.connect(self._on_layers_changed)
        return check

    def _on_layers_changed(self) -> None:
        self._options = OverlayOptions(
            boxes=self.boxes_check.isChecked(),
            masks=self.masks_check.isChecked(),
            heatmap=self.heatmap_check.isChecked(),
        )
        self._render()

    @property
    def options(self) -> OverlayOptions:
        """The overlay layers currently selected."""
        return self._options

    def _set_selector(self, name: str) -> None:
        """Show ``name`` in the selector without asking the controller to switch."""
        if self.strategy_box.findText(name) < 0:
            raise ValueError(f"unknown fusion strategy {name!r}; expected one of {', '.join(STRATEGIES)}")
        blocked = self.strategy_box.blockSignals(True)
        try:
            self.strategy_box.setCurrentText(name)
        finally:
            self.strategy_box.blockSignals(blocked)

    def _on_strategy_chosen(self, name: str) -> None:
        self._strategy_chosen = True
        try:
            self._controller.switch_strategy(name)
        except Exception as e:  # shown to the user; the pipeline keeps its previous strategy
            log.exception("switching the fusion strategy to %s failed", name)
            self._set_selector(self._strategy)
            self.show_message(f"cannot switch to {name}: {e}", error=True)
            return
        self._strategy = name
        self.show_message(f"fusion strategy: {name}")

    def _on_export_clicked(self) -> None:
        path, _ = QFileDialog.getSaveFileName(
            self, "Export count history", "counts.csv", "CSV (*.csv);;JSON (*.json);;All files (*)"
        )
        if path:
            self.export_to(path)

    def export_to(self, path: str) -> int | None:
        """Ask the controller to export the count history to ``path``; rows written, None on error (shown)."""
        try:
            rows = self._controller.export(path)
        except Exception as e:  # shown to the user, who may pick another path
            log.exception("export to %s failed", path)
            self.show_message(f"export failed: {e}", error=True)
            return None
        self.show_message(f"exported {rows} rows to {path}")
        return rows

    def show_message(self, text: str, error: bool = False) -> None:
        """Show a one-line message in the status bar (red when ``error``), until the next one."""
        self.message_label.setStyleSheet("color:#c62828;" if error else "")
        self.message_label.setText(text)

    # -- lifetime ----------------------------------------------------------------------------

    def closeEvent(self, event: QCloseEvent) -> None:
        self._timer.stop()
        if not self._stopped:
            self._stopped = True
            try:
                self._controller.stop()
            except Exception:  # closing must still close; the failure is logged
                log.exception("stopping the pipeline failed")
        event.accept()
