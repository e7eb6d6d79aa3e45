"""The main window: run controls, the video with overlays and zones, live charts, history, status.

The window never waits on the pipeline. A ~30 Hz timer takes the newest result from the run's
:class:`~ui.bridge.LatestResultSink` (frames that arrived in between are skipped there, and
counted), draws it at the view's size and records it in the charts. With tracking, static tracks are
drawn dimmed; right-clicking one (or clicking it) offers to count it anyway, through the
controller's ``allow_static`` (the run's tracker; ids live for one run). Everything the window asks
of the pipeline goes through a :class:`Controller` (``app.gui.GuiSession``), whose every call
returns at once: building a run, stopping it and flushing the database happen on its threads.
Closing asks the controller to shut down and closes when it is idle (within ~2 s: a running
inference is cancelled), so the window never freezes.

Several cameras (a config whose ``streams:`` has more than one entry): the controller runs them all
at once and the window shows a camera list (:class:`ui.cameras.CameraStrip`, left of the video):
each camera's live thumbnail, id, state and count. The selected camera is shown in full (video,
overlays, counts, charts, zones, status, errors); a click on another camera, Alt+1..9 or
PageUp / PageDown switch (the charts start again for the camera shown). Start, pause, stop,
restart and the fusion strategy act on every camera; a camera that fails shows its error in its
tile (and in full when selected) while the others run. Open file / URL gives the *selected* camera
another source and restarts that camera only. With one stream there is no camera list.
"""

from __future__ import annotations

import functools
import logging
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Protocol

import numpy as np
from numpy.typing import NDArray
from PySide6.QtCore import QPoint, QPointF, QRectF, Qt, QTimer, Signal
from PySide6.QtGui import (
    QAction,
    QActionGroup,
    QCloseEvent,
    QColor,
    QContextMenuEvent,
    QFont,
    QImage,
    QKeyEvent,
    QKeySequence,
    QMouseEvent,
    QPainter,
    QPaintEvent,
    QResizeEvent,
)
from PySide6.QtWidgets import (
    QFileDialog,
    QHBoxLayout,
    QInputDialog,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QMainWindow,
    QMenu,
    QPushButton,
    QSplitter,
    QTabWidget,
    QToolBar,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from config import load_pipeline_config
from config.errors import AppError
from config.schema import FusionStrategyName, PipelineConfig
from pipeline.tracking import Track
from pipeline.types import FusedResult
from ui.bridge import CameraStatus, LatestResultSink, PipelineStatus, RunRequest, RunState
from ui.cameras import CameraStrip
from ui.charts import TelemetryCharts
from ui.history import HistoryPanel
from ui.lines import Line, LineEditor, line_texts, lines_from_config, pending_lines, save_lines
from ui.overlay import OverlayOptions, OverlayScene, fit_size, render_overlay, shown_counts
from ui.qt_fixes import apply_qt_workarounds
from ui.settings import last_folder, recent_sources, remember_folder, remember_source
from ui.tasks import pending_tasks
from ui.tracks import NOT_COUNTED_YET, line_counts_of, track_at, track_label, tracking_of
from ui.widgets import Banner, ElidedLabel
from ui.zones import Zone, ZoneEditor, save_zones, zone_counts, zone_occupancy, zones_from_config

log = logging.getLogger("people_counter.ui")

STRATEGIES: tuple[str, ...] = tuple(s.value for s in FusionStrategyName)
"""Names offered by the strategy selector, in the config's order."""

RATE_WINDOW_S = 2.0
"""Frames shown in the last this many seconds give the fps figures."""

CHART_REFRESH_S = 0.1
"""Charts redraw at most this often; results are recorded every tick regardless."""

THUMB_REFRESH_S = 0.25
"""Thumbnails of the camera list are redrawn at most this often (the main view takes every tick)."""

CLOSE_DEADLINE_S = 4.0
"""The window closes this long after a close was asked even if the pipeline has not answered
(its threads are daemons; the run is then recovered as aborted by the next writer)."""

_STATE_COLORS = {
    RunState.IDLE: "#616161",
    RunState.STARTING: "#808080",
    RunState.RUNNING: "#2e7d32",
    RunState.PAUSED: "#f9a825",
    RunState.STOPPING: "#6d4c41",
    RunState.STOPPED: "#616161",
    RunState.FINISHED: "#1565c0",
    RunState.FAILED: "#c62828",
}

_ERROR_TITLES = {
    "SourceError": "The video source cannot be read",
    "ModelLoadError": "A model cannot be loaded",
    "ConfigError": "The configuration is not valid",
    "GpuUnavailableError": "The GPU this configuration asks for is not available",
    "StorageError": "The database cannot be written",
}


class Controller(Protocol):
    """What the window drives (``app.gui.GuiSession``). Every call returns at once.

    - ``start(request)`` starts a run (stopping the current one first); ``restart()`` starts the
      last request again; ``pause()`` / ``resume()``; ``stop()`` ends the run (``interrupted``).
    - ``shutdown(status)`` stops for good with that end status; ``idle`` is True once every run
      has ended and its database is flushed.
    - ``switch_strategy(name)`` changes the fusion strategy live; raises for a name it cannot
      switch to, or when no run is going.
    - ``allow_static(track_id, allowed)`` counts (or stops counting) a static track of the running
      run, from its next frame; raises when no run is going or tracking is off.
    - ``status``: the current run's state; ``sink``: its bridge (None before the first run);
      ``config``: its validated config (None until built); ``branch_kinds``: its branches and
      their model kinds; ``source_fps``: the source's frame rate (0 when unknown); ``db_path``.
    - Several cameras: ``cameras`` lists them (:class:`~ui.bridge.CameraStatus`, one of them
      ``selected``: the one ``status``, ``sink``... describe); ``select(stream_id)`` picks another;
      ``replace_source(stream_id, uri)`` restarts one camera on another source. A controller
      without ``cameras`` (one stream) gets no camera list.
    """

    def start(self, request: RunRequest) -> None: ...

    def restart(self) -> None: ...

    def pause(self) -> None: ...

    def resume(self) -> None: ...

    def stop(self) -> None: ...

    def shutdown(self, status: str = "interrupted") -> None: ...

    def switch_strategy(self, name: str) -> None: ...

    def allow_static(self, track_id: int, allowed: bool = True) -> None: ...

    @property
    def idle(self) -> bool: ...

    @property
    def status(self) -> PipelineStatus: ...

    @property
    def sink(self) -> LatestResultSink | None: ...

    @property
    def request(self) -> RunRequest | None: ...

    @property
    def config(self) -> PipelineConfig | None: ...

    @property
    def branch_kinds(self) -> dict[str, str]: ...

    @property
    def source_fps(self) -> float: ...

    @property
    def db_path(self) -> str | None: ...

    @property
    def cameras(self) -> list[CameraStatus]: ...

    def select(self, stream_id: str) -> None: ...

    def replace_source(self, stream_id: str, uri: str) -> None: ...


def stream_fps(shown: list[tuple[float, int, float]]) -> float:
    """Source frames advanced per second over ``shown`` ((wall time, frame index, pts) of shown
    frames, oldest first). A second counts at least one second of stream time (pts), so frames
    that reach the window in a burst never read above the source's own rate."""
    if len(shown) < 2:
        return 0.0
    (t0, i0, p0), (t1, i1, p1) = shown[0], shown[-1]
    span = max(t1 - t0, p1 - p0)
    return max(0, i1 - i0) / span if span > 0 else 0.0


class VideoView(QWidget):
    """Shows the latest rendered frame, centred and aspect-fitted, with the zones over it.

    The window renders overlays at :meth:`render_size` so this widget only blits. Mouse gestures
    go to the :class:`~ui.zones.ZoneEditor` or the :class:`~ui.lines.LineEditor` while one is
    editing (the window keeps one at a time); otherwise a right-click (or a
    left click) is offered to the window as ``track_menu_requested(widget pos, global pos, click)``.
    """

    resized = Signal()
    track_menu_requested = Signal(QPointF, QPoint, bool)

    def __init__(self, zones: ZoneEditor, lines: LineEditor | None = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._image: QImage | None = None
        self.zones = zones
        self.lines = lines or LineEditor(self)
        self.zone_values: dict[str, tuple[float | None, bool]] = {}
        self.zone_occupancy: dict[str, int | None] = {}
        self.zone_counts_of: int | None = None
        self.placeholder = "no video: open a file or a URL (Ctrl+O)"
        self.badge = ""
        self.setMinimumSize(320, 180)
        self.setAttribute(Qt.WidgetAttribute.WA_OpaquePaintEvent, True)
        self.setMouseTracking(True)
        self.setFocusPolicy(Qt.FocusPolicy.ClickFocus)
        zones.changed.connect(self.update)
        self.lines.changed.connect(self.update)

    @property
    def image(self) -> QImage | None:
        """The image on screen (None before the first frame)."""
        return self._image

    def set_image(self, image: QImage | None) -> None:
        self._image = image
        self.update()

    def render_size(self, frame_w: int, frame_h: int) -> tuple[int, int]:
        """Size in device pixels at which a frame of (frame_w, frame_h) fills this view."""
        dpr = self.devicePixelRatioF()
        return fit_size(frame_w, frame_h, max(1, round(self.width() * dpr)), max(1, round(self.height() * dpr)))

    def image_rect(self) -> QRectF:
        """Where the image lies in the widget (the whole widget before the first frame)."""
        if self._image is None or self._image.isNull():
            return QRectF(self.rect())
        dpr = self._image.devicePixelRatio() or 1.0
        w, h = fit_size(round(self._image.width() / dpr), round(self._image.height() / dpr), self.width(), self.height())
        return QRectF((self.width() - w) / 2, (self.height() - h) / 2, w, h)

    def to_normalized(self, pos: QPointF) -> tuple[float, float]:
        r = self.image_rect()
        return ((pos.x() - r.x()) / max(1.0, r.width()), (pos.y() - r.y()) / max(1.0, r.height()))

    def paintEvent(self, event: QPaintEvent) -> None:
        painter = QPainter(self)
        try:
            painter.fillRect(self.rect(), QColor(0, 0, 0))
            if self._image is None or self._image.isNull():
                painter.setPen(QColor(170, 170, 170))
                painter.drawText(self.rect(), Qt.AlignmentFlag.AlignCenter, self.placeholder)
            else:
                painter.drawImage(self.image_rect(), self._image)
                self.zones.paint(painter, self.image_rect(), self.zone_values, self.zone_occupancy, self.zone_counts_of)
                self.lines.paint(painter, self.image_rect())
            if self.badge:
                font = QFont()
                font.setPixelSize(max(16, self.height() // 18))
                font.setBold(True)
                painter.setFont(font)
                m = painter.fontMetrics()
                box = QRectF(self.width() - m.horizontalAdvance(self.badge) - 36, 12, m.horizontalAdvance(self.badge) + 24, m.height() + 10)
                painter.setPen(Qt.PenStyle.NoPen)
                painter.setBrush(QColor(249, 168, 37, 220))
                painter.drawRoundedRect(box, 6, 6)
                painter.setPen(QColor(0, 0, 0))
                painter.drawText(box, Qt.AlignmentFlag.AlignCenter, self.badge)
        finally:
            painter.end()

    def resizeEvent(self, event: QResizeEvent) -> None:
        super().resizeEvent(event)
        self.resized.emit()

    def _display_size(self) -> tuple[float, float]:
        return self.image_rect().width(), self.image_rect().height()

    def mousePressEvent(self, event: QMouseEvent) -> None:
        if event.button() == Qt.MouseButton.LeftButton and self.zones.editing:
            self.zones.press(self.to_normalized(event.position()), self._display_size())
        elif event.button() == Qt.MouseButton.LeftButton and self.lines.editing:
            self.lines.press(self.to_normalized(event.position()), self._display_size())
        elif event.button() == Qt.MouseButton.LeftButton and self._image is not None:
            self.track_menu_requested.emit(event.position(), event.globalPosition().toPoint(), True)

    def contextMenuEvent(self, event: QContextMenuEvent) -> None:
        if not self.zones.editing and not self.lines.editing and self._image is not None:
            self.track_menu_requested.emit(QPointF(event.pos()), event.globalPos(), False)

    def mouseMoveEvent(self, event: QMouseEvent) -> None:
        self.zones.move(self.to_normalized(event.position()))
        self.lines.move(self.to_normalized(event.position()))

    def mouseReleaseEvent(self, event: QMouseEvent) -> None:
        self.zones.release()
        self.lines.release(self.to_normalized(event.position()), self._display_size())

    def mouseDoubleClickEvent(self, event: QMouseEvent) -> None:
        if self.zones.editing and self.zones.drawing:
            self.zones.finish()

    def keyPressEvent(self, event: QKeyEvent) -> None:
        if self.zones.editing and event.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter) and self.zones.drawing:
            self.zones.finish()
        elif self.zones.editing and event.key() == Qt.Key.Key_Escape:
            self.zones.cancel()
        elif self.zones.editing and event.key() == Qt.Key.Key_Delete and self.zones.selected is not None:
            self.zones.delete(self.zones.selected)
        elif self.lines.editing and event.key() == Qt.Key.Key_Escape:
            self.lines.cancel()
        elif self.lines.editing and event.key() == Qt.Key.Key_Delete and self.lines.selected is not None:
            self.lines.delete(self.lines.selected)
        elif self.lines.editing and event.key() == Qt.Key.Key_I and self.lines.selected is not None:
            self.lines.flip(self.lines.selected)
        else:
            super().keyPressEvent(event)


class EditorPanel(QWidget):
    """The list beside the video of what an editor holds (:class:`~ui.zones.ZoneEditor`,
    :class:`~ui.lines.LineEditor`): names (editable), live counts, and the editor's actions.

    The editor gives ``names``, ``selected``, ``editing``, ``rename``, ``delete``, ``cancel`` and
    ``changed``; ``extra`` buttons go after Delete."""

    def __init__(self, editor: ZoneEditor | LineEditor, noun: str, edit_tip: str, save_tip: str, apply_tip: str, hint: str,
                 extra: Sequence[QPushButton] = (), parent: QWidget | None = None) -> None:  # fmt: skip
        super().__init__(parent)
        self.editor = editor
        self.list = QListWidget()
        self.list.setMaximumHeight(120)
        self.list.itemChanged.connect(self._on_item_changed)
        self.list.currentRowChanged.connect(self._on_row)
        self.edit_button = QPushButton(f"Draw / edit {noun}")
        self.edit_button.setCheckable(True)
        self.edit_button.setToolTip(edit_tip)
        self.edit_button.toggled.connect(self._on_edit)
        self.delete_button = QPushButton("Delete")
        self.delete_button.setToolTip(f"Delete the selected {noun[:-1]} (Delete on the video)")
        self.delete_button.clicked.connect(self._on_delete)
        self.save_button = QPushButton("Save to config")
        self.save_button.setToolTip(save_tip)
        self.apply_button = QPushButton(f"Restart with {noun}")
        self.apply_button.setToolTip(apply_tip)
        self.hint = QLabel(hint)
        self.hint.setStyleSheet("color:#9e9e9e;")
        buttons = QHBoxLayout()
        for b in (self.edit_button, self.delete_button, *extra, self.save_button, self.apply_button):
            b.setFocusPolicy(Qt.FocusPolicy.NoFocus)
            buttons.addWidget(b)
        buttons.addStretch(1)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(buttons)
        layout.addWidget(self.list)
        layout.addWidget(self.hint)
        self._updating = False
        self._texts: Mapping[str, str] = {}
        editor.changed.connect(self.sync_texts)

    def _on_edit(self, on: bool) -> None:
        self.editor.editing = on
        if not on:
            self.editor.cancel()
        self.editor.changed.emit()

    def _on_delete(self) -> None:
        row = self.list.currentRow()
        if 0 <= row < len(self.editor.names):
            self.editor.delete(row)

    def _on_row(self, row: int) -> None:
        if not self._updating and 0 <= row < len(self.editor.names):
            self.editor.selected = row
            self.editor.changed.emit()

    def _on_item_changed(self, item: QListWidgetItem) -> None:
        if self._updating:
            return
        row = self.list.row(item)
        name = item.text().split("  —")[0]
        try:
            self.editor.rename(row, name)
        except ValueError as e:
            self.window().show_message(str(e), error=True)  # type: ignore[attr-defined]
            self.sync_texts()

    def sync_texts(self, texts: Mapping[str, str] | None = None) -> None:
        """Show the names and, in each tooltip, its count (``texts``: name -> count text; the last
        ones given when None)."""
        self._updating = True
        try:
            if texts is not None:
                self._texts = texts
            names = self.editor.names
            while self.list.count() > len(names):
                self.list.takeItem(self.list.count() - 1)
            for i, name in enumerate(names):
                count = self._texts.get(name, "unknown")
                if i >= self.list.count():
                    item = QListWidgetItem()
                    item.setFlags(item.flags() | Qt.ItemFlag.ItemIsEditable)
                    self.list.addItem(item)
                self.list.item(i).setText(name)
                self.list.item(i).setToolTip(f"{name}: {count} (double-click the name to rename)")
                self.list.item(i).setData(Qt.ItemDataRole.UserRole, count)
            if self.editor.selected is not None and self.editor.selected < self.list.count():
                self.list.setCurrentRow(self.editor.selected)
        finally:
            self._updating = False


class ZonePanel(EditorPanel):
    """The zone list beside the video: names (editable), live counts, and the zone actions."""

    def __init__(self, editor: ZoneEditor, parent: QWidget | None = None) -> None:
        super().__init__(editor, "zones",
                         "Click on the video to place points, double-click or Enter to close a zone; "
                         "drag a corner or a zone to move it; Delete removes the selected zone",
                         "Write these zones into the config file's counting.zones; the pipeline counts them from the next start",
                         "Save, then restart the run so the pipeline counts and stores these zones",
                         "≈: preview from the detections until the run restarts with the zone", parent=parent)  # fmt: skip

    def sync(self, values: dict[str, tuple[float | None, bool]] | None = None) -> None:
        """Show the zones and their counts (``values`` from :func:`ui.zones.zone_counts`)."""
        texts = None if values is None else {
            name: ("unknown" if v is None else f"{'≈' if preview else ''}{v:g}") + " people" for name, (v, preview) in values.items()
        }  # fmt: skip
        self.sync_texts(texts)


class LinePanel(EditorPanel):
    """The counting-line list beside the video: names (editable), in/out totals, the line actions."""

    def __init__(self, editor: LineEditor, parent: QWidget | None = None) -> None:
        flip = QPushButton("Flip in side")
        flip.setToolTip("Swap the selected line's in and out sides (I on the video)")
        super().__init__(editor, "lines",
                         "Press on the video and drag to the other end (or click both ends) to add a line; "
                         "drag an end or the line to move it; I flips its in side; Delete removes the selected line",
                         "Write these lines into the config file's tracking.lines; the tracker counts them from the next start",
                         "Save, then restart the run so the tracker counts and stores crossings of these lines",
                         f"{NOT_COUNTED_YET}: a line added or edited since the run started has no count yet",
                         extra=(flip,), parent=parent)  # fmt: skip
        self.flip_button = flip
        flip.clicked.connect(self._on_flip)

    def _on_flip(self) -> None:
        if isinstance(self.editor, LineEditor) and self.editor.selected is not None:
            self.editor.flip(self.editor.selected)


class MainWindow(QMainWindow):
    """The operator window (see the module docstring). ``request``: the run to start at once, if any."""

    closed = Signal()

    def __init__(
        self,
        controller: Controller,
        request: RunRequest | None = None,
        title: str = "people-counter",
        *,
        poll_hz: float = 30.0,
        parent: QWidget | None = None,
    ) -> None:
        apply_qt_workarounds()
        super().__init__(parent)
        self._controller = controller
        self._options = OverlayOptions()
        self._scene = OverlayScene()
        self._scene_of: PipelineConfig | None = None
        self._last_result: FusedResult | None = None
        self._last_image: NDArray[np.uint8] | None = None
        self._shown: deque[tuple[float, int, float]] = deque()
        self._sink: LatestResultSink | None = None
        self._event_seq = 0
        self._last_chart_refresh = 0.0
        self._status: PipelineStatus | None = None
        self._strategy: str | None = None
        self._config_path = request.config_path if request else "config/pipeline.yaml"
        self._source = request.source if request else None
        self._branches: frozenset[str] | None = None
        self._max_frames = request.max_frames if request else None
        self._applied_zones: dict[str, Zone] = {}
        self._applied_lines: dict[str, Line] = {}
        self._zones_loaded_for: int | None = None
        self._close_asked_at: float | None = None
        self._exit_status = "interrupted"
        self._restored_shown_at: float | None = None
        self._stream_sources: dict[str, str] = dict(request.stream_sources) if request else {}
        self._config_streams: list[str] = []
        self._camera_shown: str | None = None
        self._camera_last: dict[str, FusedResult] = {}
        self._thumb_at: dict[str, float] = {}
        self._status_key: tuple[PipelineStatus, ...] | None = None
        self.closed_cleanly = False
        self._title = title
        self.setWindowTitle(title)
        self.resize(1600, 950)

        self.zones = ZoneEditor(self)
        self.lines = LineEditor(self)
        self._make_actions()
        self._make_widgets()
        self._make_menus()
        self._make_toolbar()
        self._load_branches(self._config_path)

        self._timer = QTimer(self)
        self._timer.setInterval(max(1, round(1000 / poll_hz)))
        self._timer.timeout.connect(self.poll)
        self._timer.start()
        if request is not None:
            if request.strategy:
                self._set_selector(request.strategy)
            self.start_run(request)
        self.poll()

    # -- building ------------------------------------------------------------------------------

    def _action(self, text: str, slot: object, shortcut: str | QKeySequence.StandardKey | None = None,
                tip: str = "", checkable: bool = False) -> QAction:  # fmt: skip
        a = QAction(text, self)
        if shortcut is not None:
            a.setShortcut(QKeySequence(shortcut))
        shown = a.shortcut().toString(QKeySequence.SequenceFormat.NativeText)
        a.setToolTip(f"{tip or text.replace('…', '').replace('&', '')}" + (f"  ({shown})" if shown else ""))
        a.setStatusTip(tip)
        a.setCheckable(checkable)
        a.triggered.connect(slot)  # type: ignore[arg-type]
        self.addAction(a)  # shortcuts work in full screen, with menus hidden
        return a

    def _make_actions(self) -> None:
        self.open_action = self._action("&Open file…", self._on_open_file, QKeySequence.StandardKey.Open, "Open a video file")
        self.open_url_action = self._action("Open &URL…", self._on_open_url, "Ctrl+L", "Open an rtsp:// or http(s):// stream")
        self.config_action = self._action("Choose &config…", self._on_choose_config, "Ctrl+Shift+O",
                                          "Choose the pipeline config (models, branches, storage)")
        self.export_action = self._action("&Export counts…", self._on_export_clicked, "Ctrl+E",
                                          "Write the current run's count history to CSV or JSON")
        self.quit_action = self._action("&Quit", self.close, QKeySequence.StandardKey.Quit, "Stop the run, save, and quit")
        self.start_action = self._action("&Start", self._on_start, "Ctrl+R", "Start the pipeline on the chosen source")
        self.pause_action = self._action("&Pause", self._on_pause_toggled, "Space",
                                         "Pause (a file waits; a stream's frames are dropped) or resume", checkable=True)
        self.stop_action = self._action("S&top", self._on_stop, "Ctrl+.", "Stop the run (everything recorded is kept)")
        self.restart_action = self._action("&Restart", self._on_restart, "Ctrl+Shift+R",
                                           "Stop and start again (applies branch and zone changes)")
        self.fullscreen_action = self._action("&Full screen", self._on_fullscreen, "F11", "Full screen", checkable=True)
        self.history_action = self._action("&History", self._on_history, "Ctrl+H", "Stored runs and their counts")
        self.follow_action = self._action("Follow &live", self._on_follow_toggled, "F", "Keep the newest frame in the charts",
                                          checkable=True)
        self.follow_action.setChecked(True)
        self.boxes_action = self._action("&Boxes", self._on_layers_changed, "B", "Show detection boxes", checkable=True)
        self.masks_action = self._action("&Masks", self._on_layers_changed, "M", "Show segmentation masks", checkable=True)
        self.heatmap_action = self._action("&Heatmap", self._on_layers_changed, "H",
                                           "Show the density heatmap and the hybrid's regions (D: counted by density, "
                                           "K: by detections)", checkable=True)  # fmt: skip
        self.tracks_action = self._action("&Tracks", self._on_layers_changed, "T",
                                          "Show track ids, trails, static tracks (dimmed) and counting lines; "
                                          "right-click a static track to count it", checkable=True)  # fmt: skip
        self.tracks_action.setChecked(self._options.tracks)
        self.boxes_action.setChecked(self._options.boxes)
        self.masks_action.setChecked(self._options.masks)
        self.heatmap_action.setChecked(self._options.heatmap)
        self.zones_action = self._action("Edit &zones", self._on_zones_toggled, "Z", "Draw and edit counting zones", checkable=True)
        self.save_zones_action = self._action("&Save zones to config", self._on_save_zones, QKeySequence.StandardKey.Save,
                                              "Write the zones into the config's counting.zones")
        self.lines_action = self._action("Edit &lines", self._on_lines_toggled, "L",
                                         "Draw and edit counting lines (in/out crossings)", checkable=True)
        self.save_lines_action = self._action("Save l&ines to config", self._on_save_lines, "Ctrl+Shift+S",
                                              "Write the counting lines into the config's tracking.lines")
        self.apply_lines_action = self._action("Restart &with lines", self._on_apply_lines, None,
                                               "Save the lines, then restart the run so the tracker counts them")
        self.camera_actions: list[QAction] = []
        for i in range(9):
            a = self._action(f"Camera {i + 1}", functools.partial(self._select_camera_at, i), f"Alt+{i + 1}",
                             f"Show camera {i + 1} of the camera list in full")  # fmt: skip
            a.setEnabled(False)
            self.camera_actions.append(a)
        self.next_camera_action = self._action("&Next camera", lambda: self._step_camera(1), "PgDown",
                                               "Show the next camera of the list in full")  # fmt: skip
        self.previous_camera_action = self._action("Pre&vious camera", lambda: self._step_camera(-1), "PgUp",
                                                   "Show the previous camera of the list in full")  # fmt: skip
        self.next_camera_action.setEnabled(False)
        self.previous_camera_action.setEnabled(False)
        self.strategy_group = QActionGroup(self)
        self.strategy_actions: dict[str, QAction] = {}
        for i, name in enumerate(STRATEGIES):
            a = self._action(name, lambda _c=False, n=name: self._choose_strategy(n), f"Ctrl+{i + 1}",
                             f"Fusion strategy {name}, switched live", checkable=True)  # fmt: skip
            self.strategy_group.addAction(a)
            self.strategy_actions[name] = a

    def _make_widgets(self) -> None:
        self.banner = Banner()
        self.stream_banner = Banner()
        self.camera_strip = CameraStrip()
        self.camera_strip.selected.connect(self.select_camera)
        self.camera_strip.hide()
        self.video = VideoView(self.zones, self.lines)
        self.video.resized.connect(self._rerender)
        self.video.track_menu_requested.connect(self._on_track_menu)
        self.zone_panel = ZonePanel(self.zones)
        self.zone_panel.save_button.clicked.connect(self._on_save_zones)
        self.zone_panel.apply_button.clicked.connect(self._on_apply_zones)
        self.zone_panel.edit_button.toggled.connect(self.zones_action.setChecked)
        self.zone_panel.hide()
        self.zones.changed.connect(self._update_zone_counts)
        self.line_panel = LinePanel(self.lines)
        self.line_panel.save_button.clicked.connect(self._on_save_lines)
        self.line_panel.apply_button.clicked.connect(self._on_apply_lines)
        self.line_panel.edit_button.toggled.connect(self.lines_action.setChecked)
        self.line_panel.hide()
        self.lines.changed.connect(self._on_lines_changed)
        self.charts = TelemetryCharts()
        self.charts.follow_changed.connect(self.follow_action.setChecked)
        self.follow_button = QToolButton()
        self.follow_button.setDefaultAction(self.follow_action)
        self.series_button = QToolButton()
        self.series_button.setText("Series ▾")
        self.series_button.setToolTip("Choose the series each chart shows")
        self.series_button.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
        self.series_menu = QMenu(self)
        self.series_menu.aboutToShow.connect(self._fill_series_menu)
        self.series_button.setMenu(self.series_menu)

        left = QWidget()
        left_layout = QVBoxLayout(left)
        left_layout.setContentsMargins(0, 0, 0, 0)
        left_layout.addWidget(self.banner)
        left_layout.addWidget(self.stream_banner)
        left_layout.addWidget(self.video, 1)
        left_layout.addWidget(self.zone_panel)
        left_layout.addWidget(self.line_panel)
        right = QWidget()
        right_layout = QVBoxLayout(right)
        right_layout.setContentsMargins(0, 0, 0, 0)
        chart_bar = QHBoxLayout()
        chart_bar.addWidget(QLabel("Charts"))
        chart_bar.addStretch(1)
        chart_bar.addWidget(self.series_button)
        chart_bar.addWidget(self.follow_button)
        right_layout.addLayout(chart_bar)
        right_layout.addWidget(self.charts, 1)
        splitter = QSplitter(Qt.Orientation.Horizontal)
        splitter.addWidget(self.camera_strip)
        splitter.addWidget(left)
        splitter.addWidget(right)
        splitter.setCollapsible(0, False)
        splitter.setStretchFactor(0, 0)
        splitter.setStretchFactor(1, 3)
        splitter.setStretchFactor(2, 2)
        splitter.setSizes([self.camera_strip.width(), 1000, 600])
        self.history = HistoryPanel(lambda: self._controller.db_path)
        self.tabs = QTabWidget()
        self.tabs.addTab(splitter, "Live")
        self.tabs.addTab(self.history, "History")
        self.tabs.currentChanged.connect(self._on_tab)
        self.setCentralWidget(self.tabs)

        self.state_label = QLabel()
        self.state_label.setMinimumWidth(100)
        self.state_label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.message_label = ElidedLabel()
        self.rate_label = ElidedLabel()
        self.rate_label.setMinimumWidth(120)
        self.drop_label = ElidedLabel()
        self.drop_label.setMinimumWidth(120)
        bar = self.statusBar()
        bar.addWidget(self.state_label)
        bar.addWidget(self.message_label, 3)
        bar.addWidget(self.rate_label, 2)
        bar.addWidget(self.drop_label, 2)

    def _make_menus(self) -> None:
        mb = self.menuBar()
        file_menu = mb.addMenu("&File")
        file_menu.addAction(self.open_action)
        file_menu.addAction(self.open_url_action)
        self.recent_menu = file_menu.addMenu("Open &recent")
        self.recent_menu.aboutToShow.connect(self._fill_recent_menu)
        file_menu.addAction(self.config_action)
        file_menu.addSeparator()
        file_menu.addAction(self.export_action)
        file_menu.addSeparator()
        file_menu.addAction(self.quit_action)
        run_menu = mb.addMenu("&Run")
        for a in (self.start_action, self.pause_action, self.stop_action, self.restart_action):
            run_menu.addAction(a)
        run_menu.addSeparator()
        self.branch_menu = run_menu.addMenu("&Branches (applied on start)")
        fusion_menu = run_menu.addMenu("&Fusion strategy")
        for a in self.strategy_actions.values():
            fusion_menu.addAction(a)
        view_menu = mb.addMenu("&View")
        for a in (self.boxes_action, self.masks_action, self.heatmap_action, self.tracks_action):
            view_menu.addAction(a)
        view_menu.addSeparator()
        view_menu.addAction(self.follow_action)
        view_menu.addAction(self.history_action)
        view_menu.addAction(self.fullscreen_action)
        self.camera_menu = view_menu.addMenu("&Cameras")
        self.camera_menu.addAction(self.next_camera_action)
        self.camera_menu.addAction(self.previous_camera_action)
        self.camera_menu.addSeparator()
        for a in self.camera_actions:
            self.camera_menu.addAction(a)
        zone_menu = mb.addMenu("&Zones")
        zone_menu.addAction(self.zones_action)
        zone_menu.addAction(self.save_zones_action)
        line_menu = mb.addMenu("&Lines")
        for a in (self.lines_action, self.save_lines_action, self.apply_lines_action):
            line_menu.addAction(a)

    def _make_toolbar(self) -> None:
        tb = QToolBar("Run")
        tb.setMovable(False)
        tb.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextOnly)
        self.addToolBar(tb)
        for a in (self.open_action, self.open_url_action):
            tb.addAction(a)
        self.recent_button = QToolButton()
        self.recent_button.setText("Recent ▾")
        self.recent_button.setToolTip("Sources opened before")
        self.recent_button.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
        self.recent_button.setMenu(self.recent_menu)
        tb.addWidget(self.recent_button)
        tb.addAction(self.config_action)
        tb.addSeparator()
        for a in (self.start_action, self.pause_action, self.stop_action, self.restart_action):
            tb.addAction(a)
        self.branch_button = QToolButton()
        self.branch_button.setText("Branches ▾")
        self.branch_button.setToolTip("The config branches that run (applied on start/restart)")
        self.branch_button.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
        self.branch_button.setMenu(self.branch_menu)
        tb.addWidget(self.branch_button)
        tb.addSeparator()
        tb.addWidget(QLabel(" Fusion: "))
        from PySide6.QtWidgets import QComboBox  # local: only the toolbar uses it

        self.strategy_box = QComboBox()
        self.strategy_box.addItems(STRATEGIES)
        self.strategy_box.setToolTip("Fusion strategy, switched live (Ctrl+1..3)")
        self.strategy_box.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        self.strategy_box.currentTextChanged.connect(self._choose_strategy)
        tb.addWidget(self.strategy_box)
        tb.addSeparator()
        for a in (self.boxes_action, self.masks_action, self.heatmap_action, self.tracks_action, self.zones_action, self.lines_action):
            tb.addAction(a)
        tb.addSeparator()
        tb.addAction(self.export_action)
        tb.addAction(self.history_action)
        for w in tb.findChildren(QToolButton):
            w.setFocusPolicy(Qt.FocusPolicy.NoFocus)  # Space stays pause/resume

    # -- runs ----------------------------------------------------------------------------------

    def current_request(self) -> RunRequest:
        return RunRequest(self._config_path, self._source, self._branches, self._strategy, self._max_frames,
                          stream_sources=tuple(self._stream_sources.items()))  # fmt: skip

    def start_run(self, request: RunRequest | None = None) -> None:
        """Start ``request`` (default: the chosen config, source and branches)."""
        request = request or self.current_request()
        self._config_path, self._source = request.config_path, request.source
        self._stream_sources = dict(request.stream_sources)
        try:
            self._controller.start(request)
        except Exception as e:  # shown; the window stays usable
            self.show_message(f"cannot start: {e}", error=True)
            return
        if request.source:
            remember_source(request.source)
        self.banner.hide()
        self.stream_banner.hide()
        self.charts.clear()
        self._shown.clear()
        self._last_result = None
        self._last_image = None
        self.video.set_image(None)
        self.video.placeholder = "starting: opening the source and loading the models…"
        self.pause_action.setChecked(False)
        self._sink = None
        self._zones_loaded_for = None
        self._camera_last.clear()
        self.camera_strip.sync([])  # new runs: tiles start again
        several = len(self._config_streams) > 1
        cameras = f"{len(self._config_streams)} cameras"
        self.setWindowTitle(f"{self._title} — {cameras if several else request.source or 'config source'}")
        what = cameras if several else request.source or "the config source"
        self.show_message(f"starting {what} with {Path(request.config_path).name}")

    def _on_start(self) -> None:
        self.start_run()

    def _on_restart(self) -> None:
        self.start_run()

    def _on_stop(self) -> None:
        self._controller.stop()
        self.show_message("stopping: the run is being saved")

    def _on_pause_toggled(self, checked: bool) -> None:
        if not any(s.state in (RunState.RUNNING, RunState.PAUSED, RunState.STARTING) for s in self._run_states()):
            self.pause_action.setChecked(False)
            self.show_message("nothing to pause: no run is going")
            return
        try:
            if checked:
                self._controller.pause()
                self.show_message("paused: no frames are processed, no counts are published")
            else:
                self._controller.resume()
                self.show_message("resumed")
        except Exception as e:
            self.pause_action.setChecked(not checked)
            self.show_message(str(e), error=True)

    def pause(self) -> None:
        """Pause the run (as Space does)."""
        if not self.pause_action.isChecked():
            self.pause_action.trigger()

    def resume(self) -> None:
        if self.pause_action.isChecked():
            self.pause_action.trigger()

    def open_source(self, uri: str) -> None:
        """Run ``uri`` with the chosen config (the run going now is stopped first).

        With several cameras, ``uri`` becomes the selected camera's source (the first camera's
        before any start) and only that camera restarts; the others keep running."""
        if len(self._config_streams) < 2:
            self._source = uri
            self.start_run()
            return
        stream_id = self._camera_shown or self._config_streams[0]
        self._stream_sources[stream_id] = uri
        running = {c.stream_id for c in self._camera_list()}
        if stream_id not in running:
            self.start_run()
            return
        try:
            self._controller.replace_source(stream_id, uri)
        except Exception as e:  # shown; the other cameras are untouched
            self.show_message(f"cannot open {uri} for camera {stream_id}: {e}", error=True)
            return
        remember_source(uri)
        self._camera_last.pop(stream_id, None)
        self._reset_main_view()
        self.show_message(f"camera {stream_id}: opening {uri} (the other cameras keep running)")

    def _on_open_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open a video file", last_folder("open"),
                                              "Video (*.mp4 *.avi *.mkv *.mov *.ts *.webm);;All files (*)")  # fmt: skip
        if path:
            remember_folder("open", path)
            self.open_source(path)

    def _on_open_url(self) -> None:
        url, ok = QInputDialog.getText(self, "Open a stream", "rtsp://, http(s):// URL:", text="rtsp://")
        if ok and url.strip():
            self.open_source(url.strip())

    def _fill_recent_menu(self) -> None:
        self.recent_menu.clear()
        items = recent_sources()
        if not items:
            a = self.recent_menu.addAction("(none yet)")
            a.setEnabled(False)
        for uri in items:
            action = self.recent_menu.addAction(uri)
            action.triggered.connect(functools.partial(self._open_recent, uri))

    def _open_recent(self, uri: str, _checked: bool = False) -> None:
        self.open_source(uri)

    def _on_choose_config(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Choose the pipeline config", last_folder("config"), "YAML (*.yaml *.yml)")
        if path:
            remember_folder("config", path)
            self.choose_config(path)

    def choose_config(self, path: str) -> None:
        """Use the config at ``path`` (its own source, unless one was opened) and start it."""
        if self._load_branches(path):
            self._config_path = path
            self._branches = None
            self._stream_sources = {}
            self.start_run()

    def _load_branches(self, path: str) -> bool:
        self.branch_menu.clear()
        try:
            cfg = load_pipeline_config(path)
        except AppError as e:
            self._show_error("ConfigError", str(e))
            return False
        self._config_streams = [s.id for s in cfg.streams]
        self._update_open_tips()
        for name, b in cfg.branches.items():
            a = QAction(f"{name}  ({b.model}, every {b.every_n_frames})", self)
            a.setCheckable(True)
            a.setChecked(b.enabled if self._branches is None else name in self._branches)
            a.setData(name)
            a.toggled.connect(self._on_branches_changed)
            self.branch_menu.addAction(a)
        return True

    def _on_branches_changed(self) -> None:
        self._branches = frozenset(a.data() for a in self.branch_menu.actions() if a.isChecked())
        self.show_message(f"branches {', '.join(sorted(self._branches)) or '(none)'}: applied on the next start (Ctrl+Shift+R)")

    def set_branches(self, names: set[str]) -> None:
        """Tick exactly ``names`` in the branch picker (applied on the next start)."""
        for a in self.branch_menu.actions():
            a.blockSignals(True)
            a.setChecked(a.data() in names)
            a.blockSignals(False)
        self._on_branches_changed()

    # -- polling -------------------------------------------------------------------------------

    def poll(self) -> None:
        """One tick: show the run state, events, the newest result, rates and charts."""
        self._show_cameras()
        self._show_status()
        sink = self._controller.sink
        if sink is not self._sink:
            self._sink, self._event_seq = sink, 0
        if sink is not None:
            self._show_events(sink)
            result = sink.take()
            if result is not None:
                self._show_result(result)
        now = time.perf_counter()
        self._update_rates(now)
        if now - self._last_chart_refresh >= CHART_REFRESH_S:
            self.charts.refresh()
            self._last_chart_refresh = now
        if self._close_asked_at is not None and ((self._controller.idle and not pending_tasks())
                                                 or now - self._close_asked_at > CLOSE_DEADLINE_S):  # fmt: skip
            self.closed_cleanly = self._controller.idle
            self._close_asked_at = None
            self._timer.stop()
            self.close()

    def _show_result(self, result: FusedResult) -> None:
        if self._strategy is None and result.strategy in STRATEGIES:
            self._set_selector(result.strategy)
        if result.frame_image is not None:
            self._last_image = result.frame_image
        self._last_result = result
        if self._zones_loaded_for is None:
            self._load_lines(result)  # zones and lines load together, once a run's first frame is known
            self._load_zones(result)
        self._update_layer_availability(result)
        render_ms = self._render()
        self.charts.add(result, {"render_ms": render_ms})
        now = time.perf_counter()
        self._shown.append((now, result.frame.frame_index, result.frame.pts))
        self._update_zone_counts()
        shown = self._camera_shown
        if shown is not None and shown in self.camera_strip.tiles:
            self._camera_last[shown] = result
            if now - self._thumb_at.get(shown, 0.0) >= THUMB_REFRESH_S:
                self._thumb_at[shown] = now
                sink = self._sink
                self.camera_strip.tiles[shown].show_result(result, sink.latest_metadata if sink else None)

    # -- cameras -------------------------------------------------------------------------------

    def _camera_list(self) -> list[CameraStatus]:
        """The controller's cameras (none from a controller without any: one stream)."""
        cameras = getattr(self._controller, "cameras", None)
        return list(cameras) if cameras is not None else []

    @property
    def camera_ids(self) -> list[str]:
        """The cameras in the list, in order (empty with one stream: no list)."""
        return list(self.camera_strip.tiles)

    @property
    def shown_camera(self) -> str | None:
        """The camera the main view shows (None with one stream)."""
        return self._camera_shown if self.camera_strip.tiles else None

    def select_camera(self, stream_id: str) -> None:
        """Show camera ``stream_id`` in full (a click on its tile, Alt+N, PageUp / PageDown)."""
        if stream_id == self._camera_shown:
            return
        try:
            self._controller.select(stream_id)
        except Exception as e:  # shown; the view stays on its camera
            self.show_message(f"cannot show camera {stream_id}: {e}", error=True)
            return
        self._show_cameras()
        self._show_status()
        self.show_message(f"camera {stream_id} in full (its charts start from now)")

    def _select_camera_at(self, index: int, _checked: bool = False) -> None:
        ids = self.camera_ids
        if 0 <= index < len(ids):
            self.select_camera(ids[index])

    def _step_camera(self, step: int) -> None:
        ids = self.camera_ids
        if len(ids) < 2:
            return
        i = ids.index(self._camera_shown) if self._camera_shown in ids else 0
        self.select_camera(ids[(i + step) % len(ids)])

    def _reset_main_view(self) -> None:
        """Forget what the main view showed (another camera, or a camera's new source)."""
        self.banner.hide()
        self.stream_banner.hide()
        self._restored_shown_at = None
        self.charts.clear()
        self._shown.clear()
        self._last_result = None
        self._last_image = None
        self._zones_loaded_for = None
        self._status_key = None
        self._status = None
        self.video.set_image(None)
        self.video.placeholder = "waiting for this camera's first frame…"

    def _show_cameras(self) -> None:
        """The camera list: tiles, states, thumbnails of the cameras not shown; follows the selection."""
        cameras = self._camera_list()
        several = len(cameras) > 1
        if not several:
            if self.camera_strip.isVisible() or self.camera_strip.tiles:
                self.camera_strip.hide()
                self.camera_strip.sync([])
            if self._camera_shown is not None:
                self._camera_shown = None
                self._set_camera_actions(0)
            return
        if not self.camera_strip.isVisible():
            self.camera_strip.show()
        self.camera_strip.sync(cameras)
        self._set_camera_actions(len(cameras))
        selected = next((c.stream_id for c in cameras if c.selected), cameras[0].stream_id)
        if selected != self._camera_shown:
            first = self._camera_shown is None
            self._camera_shown = selected
            if not first:
                self._reset_main_view()
                last = self._camera_last.get(selected)
                if last is not None:
                    self._show_result(last)  # its last thumbnail's result, until its next frame
            self._update_open_tips()
        now = time.perf_counter()
        for c in cameras:
            if c.selected or c.sink is None or now - self._thumb_at.get(c.stream_id, 0.0) < THUMB_REFRESH_S:
                continue
            self._thumb_at[c.stream_id] = now
            result = c.sink.take()  # the main view does not read this sink: the list is its reader
            if result is not None:
                self._camera_last[c.stream_id] = result
                self.camera_strip.tiles[c.stream_id].show_result(result, c.sink.latest_metadata)

    def _set_camera_actions(self, n: int) -> None:
        for i, a in enumerate(self.camera_actions):
            a.setEnabled(i < n)
        self.next_camera_action.setEnabled(n > 1)
        self.previous_camera_action.setEnabled(n > 1)

    def _update_open_tips(self) -> None:
        if len(self._config_streams) < 2:
            self.open_action.setToolTip("Open a video file  (Ctrl+O)")
            self.open_url_action.setToolTip("Open an rtsp:// or http(s):// stream  (Ctrl+L)")
            return
        camera = self._camera_shown or self._config_streams[0]
        why = f"for camera {camera}, the one shown in full: it restarts on it, the other cameras keep running"
        self.open_action.setToolTip(f"Open a video file {why}  (Ctrl+O)")
        self.open_url_action.setToolTip(f"Open an rtsp:// or http(s):// stream {why}  (Ctrl+L)")

    def _load_zones(self, result: FusedResult) -> None:
        cfg = self._controller.config
        if cfg is None:
            return
        frame_wh = (result.frame.width, result.frame.height)
        applied = zones_from_config(cfg.counting.zones, frame_wh)
        self._applied_zones = {z.name: z for z in applied}
        if not self.zones.zones or (self._zones_loaded_for is None and set(self._applied_zones) >= {z.name for z in self.zones.zones}):
            self.zones.set_zones(applied)
        self._zones_loaded_for = result.frame.frame_index

    def _load_lines(self, result: FusedResult) -> None:
        cfg = self._controller.config
        if cfg is None:
            return
        applied = lines_from_config(cfg.tracking.lines if cfg.tracking.enabled else [], (result.frame.width, result.frame.height))
        self._applied_lines = {ln.name: ln for ln in applied}
        if not self.lines.lines or set(self._applied_lines) >= set(self.lines.names):
            self.lines.set_lines(applied)

    def _line_scene(self) -> OverlayScene:
        """The run's scene, drawing the editor's lines (those the run does not count: pending)."""
        drawn = tuple(ln.to_config() for ln in self.lines.lines)
        return replace(self.scene, drawn_lines=drawn, pending_lines=pending_lines(self.lines.lines, self._applied_lines))

    def line_texts(self) -> dict[str, str]:
        """What the line list says of each line: ``in 5 · out 3``, ``in/out unknown`` or
        "not counted yet — restart to apply"."""
        result = self._last_result
        sink = self._sink
        counts = None if result is None else shown_counts(result, sink.latest_metadata if sink else None)[0]
        totals = None if counts is None else line_counts_of(counts)
        return line_texts(self.lines.lines, self._applied_lines, totals)

    def _on_lines_changed(self) -> None:
        self.line_panel.sync_texts(self.line_texts())
        if self._last_result is not None:
            self._render()

    def _update_zone_counts(self) -> None:
        result = self._last_result
        values = zone_counts(result, self.zones.zones, self._applied_zones)
        self.video.zone_values = values
        self.video.zone_occupancy = zone_occupancy(result, self.zones.zones, self._applied_zones)
        stale = result is not None and not result.raw and result.counts_frame_index not in (None, result.frame.frame_index)
        self.video.zone_counts_of = result.counts_frame_index if stale and result is not None else None
        self.zone_panel.sync(values)
        self.line_panel.sync_texts(self.line_texts())
        self.video.update()

    @property
    def scene(self) -> OverlayScene:
        """What the running config adds to the drawing (lines, the stale-overlay age, branch roles)."""
        cfg = self._controller.config
        if cfg is not self._scene_of:
            self._scene, self._scene_of = OverlayScene.from_config(cfg), cfg
        return self._scene

    # -- tracks --------------------------------------------------------------------------------

    def track_at(self, pos: QPointF) -> Track | None:
        """The track drawn under widget position ``pos`` on the frame shown (None: none there)."""
        result = self._last_result
        if result is None:
            return None
        sink = self._sink
        counts, _, _ = shown_counts(result, sink.latest_metadata if sink else None)
        tracking = None if counts is None else tracking_of(counts)
        if tracking is None:
            return None
        nx, ny = self.video.to_normalized(pos)
        if not (0.0 <= nx <= 1.0 and 0.0 <= ny <= 1.0):
            return None
        # a track's box is in frame pixels; a few display pixels of slack for thin boxes
        slack = 4.0 * result.frame.width / max(1.0, self.video.image_rect().width())
        return track_at(tracking, nx * result.frame.width, ny * result.frame.height, slack)

    def track_menu(self, track: Track) -> QMenu:
        """The menu of one track: what it is and, for a static one, the operator's override."""
        menu = QMenu(self)
        title = menu.addAction(f"{track_label(track)}  ({'counted' if track.counted else 'not counted'})")
        title.setEnabled(False)
        if track.static and not track.allowed:
            a = menu.addAction(f"Count track #{track.id}: it is a person")
            a.setToolTip("Static tracks (a cloth, a bag) are not counted; this one is, from the next frame, for this run")
            a.triggered.connect(functools.partial(self._allow_from_menu, track.id, True))
        elif track.static and track.allowed:
            a = menu.addAction(f"Stop counting static track #{track.id}")
            a.triggered.connect(functools.partial(self._allow_from_menu, track.id, False))
        return menu

    def _allow_from_menu(self, track_id: int, allowed: bool, _checked: bool = False) -> None:
        self.allow_track(track_id, allowed)

    def allow_track(self, track_id: int, allowed: bool = True) -> bool:
        """Ask the run to count static track ``track_id`` (or to stop); False, with a message, when it cannot."""
        try:
            self._controller.allow_static(track_id, allowed)
        except Exception as e:  # shown; the tracker keeps its flags
            self.show_message(f"cannot change track #{track_id}: {e}", error=True)
            return False
        if allowed:
            self.show_message(f"track #{track_id} is counted from the next frame although static (this run only)")
        else:
            self.show_message(f"static track #{track_id} is no longer counted (from the next frame)")
        return True

    def _on_track_menu(self, pos: QPointF, global_pos: QPoint, click: bool) -> None:
        track = self.track_at(pos)
        if track is None or (click and not track.static):
            return  # a plain click opens the menu of static tracks only: the video stays quiet
        menu = self.track_menu(track)
        menu.exec(global_pos)
        menu.deleteLater()

    def zone_values(self) -> dict[str, tuple[float | None, bool]]:
        """The zone counts on screen: name -> (count or None, preview?)."""
        return dict(self.video.zone_values)

    def _update_layer_availability(self, result: FusedResult) -> None:
        has_masks = result.detections.has_masks
        self.masks_action.setEnabled(has_masks)
        self.masks_action.setToolTip("Show segmentation masks  (M)" if has_masks else
                                     "Masks: the detector of this run has no mask head (a detect model); "
                                     "use a -seg model in models.<name>.path for masks")  # fmt: skip
        kinds = self._controller.branch_kinds
        density = "density" in kinds.values()
        self.heatmap_action.setEnabled(density)
        self.heatmap_action.setToolTip("Show the density heatmap  (H)" if density else
                                       "Heatmap: density is off in this run; tick the density branch in "
                                       "Run ▸ Branches and restart (Ctrl+Shift+R)")  # fmt: skip

    def _render(self) -> float:
        """Draw the last result at the view's size; returns the time it took (ms)."""
        result = self._last_result
        if result is None:
            return 0.0
        t0 = time.perf_counter()
        image = result.frame_image
        last = self._last_image
        if image is None and last is not None and _same_aspect(last.shape[:2], (result.frame.height, result.frame.width)):
            image = last  # metadata-only results (RAW_STREAM_WITH_METADATA) keep showing the last pixels
        size = self.video.render_size(result.frame.width, result.frame.height)
        sink = self._sink
        options = OverlayOptions(
            boxes=self._options.boxes,
            masks=self._options.masks and self.masks_action.isEnabled(),
            heatmap=self._options.heatmap and self.heatmap_action.isEnabled(),
            tracks=self._options.tracks,
        )
        qimage = render_overlay(result, size, options, image, sink.latest_metadata if sink else None, self._line_scene())
        qimage.setDevicePixelRatio(self.video.devicePixelRatioF())
        self.video.set_image(qimage)
        return (time.perf_counter() - t0) * 1000.0

    def _rerender(self) -> None:
        self._render()

    def _run_states(self) -> list[PipelineStatus]:
        """Every camera's status (the run controls act on all of them); the one run's with one stream."""
        cameras = self._camera_list()
        return [c.status for c in cameras] if len(cameras) > 1 else [self._controller.status]

    def _show_status(self) -> None:
        status = self._controller.status
        self.video.badge = "PAUSED" if status.state is RunState.PAUSED else ""
        states = self._run_states()
        key = (status, *states)
        if key == self._status_key:
            return
        self._status_key = key
        self.pause_action.setEnabled(any(s.state in (RunState.RUNNING, RunState.PAUSED) for s in states))
        self.stop_action.setEnabled(any(s.active and s.state is not RunState.STOPPING for s in states))
        self.restart_action.setEnabled(self._controller.request is not None)
        if status == self._status:
            return
        previous, self._status = self._status, status
        self.state_label.setText(status.state.value)
        color = _STATE_COLORS[status.state]
        self.state_label.setStyleSheet(f"background:{color}; color:white; font-weight:bold; padding:2px 6px;")
        self.state_label.setToolTip(status.message)
        if status.state is RunState.FAILED:
            self._show_error(status.error_kind, status.message or "unknown error")
        elif status.state is RunState.FINISHED and (previous is None or previous.state is not RunState.FINISHED):
            self.show_message(f"the source ended; run {status.run_id} is stored (History: Ctrl+H; Restart: Ctrl+Shift+R)")
            self.video.placeholder = "the source ended"
        elif status.state is RunState.STOPPED:
            self.show_message(f"stopped; run {status.run_id} is stored" if status.run_id else "stopped")
        elif status.state is RunState.STARTING and self._last_result is None:
            self.video.placeholder = "starting: opening the source and loading the models…"
        self.video.update()

    def _show_error(self, kind: str, message: str) -> None:
        log.error("pipeline failed: %s", message)
        title = _ERROR_TITLES.get(kind, "The pipeline stopped with an error")
        if self._camera_shown is not None and self.camera_strip.tiles:
            title = f"Camera {self._camera_shown}: {title[0].lower()}{title[1:]}"
        self.banner.show_message("error", title, message, [
            ("Open file…", self._on_open_file), ("Open URL…", self._on_open_url),
            ("Choose config…", self._on_choose_config), ("Retry", self._on_restart),
        ])  # fmt: skip
        first_line = message.splitlines()[0] if message.strip() else message
        self.show_message(f"FAILED: {first_line}", error=True)
        self.video.placeholder = "no video: the run failed (see the message above)"

    def _show_events(self, sink: LatestResultSink) -> None:
        events = sink.events_after(self._event_seq)
        if events:
            self._event_seq = events[-1].seq
        for ev in events:
            if ev.kind in ("stall", "decode_error"):  # drops are counted in the status bar instead
                self.show_message(ev.message, error=True)
        h = sink.health
        if h.state != "ok":
            down = 0.0 if h.since is None else time.monotonic() - h.since
            what = "stalled (connected, no frames)" if h.state == "stalled" else "lost"
            self.stream_banner.show_message(
                "warning", f"Stream {what}: reconnecting (attempt {h.attempts}, down {down:.0f} s)",
                f"{h.message}. The counts of this gap are unknown (not stored as 0). Another source: Ctrl+O.",
                [("Stop", self._on_stop)],
            )  # fmt: skip
            self._restored_shown_at = None
        elif h.last_gap_s is not None and self._restored_shown_at is None and self.stream_banner.kind == "warning":
            self.stream_banner.show_message("info", f"Stream restored after a {h.last_gap_s:.1f} s gap", h.message)
            self._restored_shown_at = time.monotonic()
        elif self._restored_shown_at is not None and time.monotonic() - self._restored_shown_at > 6.0:
            self.stream_banner.hide()
            self._restored_shown_at = None

    def _update_rates(self, now: float) -> None:
        while self._shown and now - self._shown[0][0] > RATE_WINDOW_S:
            self._shown.popleft()
        shown = list(self._shown)
        display_fps = 0.0
        if len(shown) >= 2 and shown[-1][0] > shown[0][0]:
            display_fps = (len(shown) - 1) / (shown[-1][0] - shown[0][0])
        src = self._controller.source_fps
        source = f" of {src:.1f}" if src else ""
        self.rate_label.setText(f"display {display_fps:4.1f} fps   stream {stream_fps(shown):4.1f}{source} fps")
        sink = self._sink
        if sink is None:
            self.drop_label.setText("")
            return
        stats = sink.stats
        text = f"shown {stats.taken}   skipped {stats.skipped}"
        if self._last_result is not None and self._last_result.missing:
            text += "   missing: " + ", ".join(sorted(self._last_result.missing))
        self.drop_label.setText(text)

    # -- view ----------------------------------------------------------------------------------

    def _on_layers_changed(self) -> None:
        self._options = OverlayOptions(
            boxes=self.boxes_action.isChecked(),
            masks=self.masks_action.isChecked(),
            heatmap=self.heatmap_action.isChecked(),
            tracks=self.tracks_action.isChecked(),
        )
        self._render()

    @property
    def options(self) -> OverlayOptions:
        """The overlay layers currently selected."""
        return self._options

    def _on_follow_toggled(self, checked: bool) -> None:
        self.charts.set_follow(checked)

    def _fill_series_menu(self) -> None:
        self.series_menu.clear()
        for chart in self.charts.charts:
            sub = self.series_menu.addMenu(chart.plot.titleLabel.text or chart.key)
            for name in chart.names():
                a = sub.addAction(name)
                a.setCheckable(True)
                a.setChecked(chart.is_visible(name))
                a.toggled.connect(lambda on, c=chart, n=name: c.set_visible(n, on))

    def _on_fullscreen(self, checked: bool) -> None:
        if checked:
            self.showFullScreen()
        else:
            self.showNormal()

    def _on_history(self) -> None:
        self.tabs.setCurrentWidget(self.history)

    def _on_tab(self, index: int) -> None:
        if self.tabs.widget(index) is self.history:
            self.history.refresh()

    def _on_zones_toggled(self, checked: bool) -> None:
        if checked and self.lines_action.isChecked():
            self.lines_action.setChecked(False)  # one editor at a time takes the mouse
            self._on_lines_toggled(False)
        self.zone_panel.setVisible(checked or bool(self.zones.zones))
        if self.zone_panel.edit_button.isChecked() != checked:
            self.zone_panel.edit_button.setChecked(checked)
        self.video.setFocus()

    def _on_save_zones(self) -> bool:
        frame = None if self._last_result is None else (self._last_result.frame.width, self._last_result.frame.height)
        try:
            path = save_zones(self._config_path, self.zones.zones, frame)
        except (AppError, OSError, ValueError) as e:
            self.show_message(f"zones not saved: {e}", error=True)
            return False
        self.show_message(f"{len(self.zones.zones)} zones saved to {path}; the pipeline counts them from the next start")
        return True

    def _on_apply_zones(self) -> None:
        if self._on_save_zones():
            self.start_run()

    def _on_lines_toggled(self, checked: bool) -> None:
        if checked and self.zones_action.isChecked():
            self.zones_action.setChecked(False)  # one editor at a time takes the mouse
            self._on_zones_toggled(False)
        self.line_panel.setVisible(checked or bool(self.lines.lines))
        if self.line_panel.edit_button.isChecked() != checked:
            self.line_panel.edit_button.setChecked(checked)
        self.video.setFocus()

    def _on_save_lines(self) -> bool:
        try:
            path = save_lines(self._config_path, self.lines.lines)
        except (AppError, OSError, ValueError) as e:
            self.show_message(f"lines not saved: {e}", error=True)
            return False
        cfg = self._controller.config
        off = cfg is not None and not cfg.tracking.enabled
        self.show_message(f"{len(self.lines.lines)} lines saved to {path}; the tracker counts them from the next start"
                          + (" (tracking.enabled is off in this config: no line is counted)" if off else ""))  # fmt: skip
        return True

    def _on_apply_lines(self) -> None:
        if self._on_save_lines():
            self.start_run()

    # -- strategy ------------------------------------------------------------------------------

    def _set_selector(self, name: str) -> None:
        """Show ``name`` in the selector without asking the controller to switch."""
        if self.strategy_box.findText(name) < 0:
            raise ValueError(f"unknown fusion strategy {name!r}; expected one of {', '.join(STRATEGIES)}")
        blocked = self.strategy_box.blockSignals(True)
        try:
            self.strategy_box.setCurrentText(name)
        finally:
            self.strategy_box.blockSignals(blocked)
        self.strategy_actions[name].setChecked(True)
        self._strategy = name

    def _choose_strategy(self, name: str) -> None:
        previous = self._strategy
        if name == previous and self.strategy_box.currentText() == name:
            return
        if any(s.active for s in self._run_states()):
            try:
                self._controller.switch_strategy(name)
            except Exception as e:  # shown to the user; the pipeline keeps its previous strategy
                log.exception("switching the fusion strategy to %s failed", name)
                if previous is not None:
                    self._set_selector(previous)
                self.show_message(f"cannot switch to {name}: {e}", error=True)
                return
            self.show_message(f"fusion strategy: {name}")
        else:
            self.show_message(f"fusion strategy {name}: applied on the next start")
        self._set_selector(name)

    # -- export --------------------------------------------------------------------------------

    def _on_export_clicked(self) -> None:
        run_id = self._controller.status.run_id
        path, _ = QFileDialog.getSaveFileName(
            self, "Export count history", f"{last_folder('export')}/run{run_id or ''}_counts.csv",
            "CSV (*.csv);;JSON (*.json);;All files (*)",
        )  # fmt: skip
        if path:
            self.export_to(path)

    def export_to(self, path: str) -> None:
        """Export the current run's count history to ``path``, off the UI thread (message when done)."""
        run_id = self._controller.status.run_id
        if run_id is None:
            self.show_message("nothing to export yet: no run is stored", error=True)
            return
        self.history.exported.connect(self._on_exported)
        self.history.failed.connect(self._on_export_failed)
        self.history.export(path, run_id=run_id)

    def _on_exported(self, path: str, rows: int) -> None:
        self.history.exported.disconnect(self._on_exported)
        self.history.failed.disconnect(self._on_export_failed)
        self.show_message(f"exported {rows} rows to {path}")

    def _on_export_failed(self, message: str) -> None:
        self.history.exported.disconnect(self._on_exported)
        self.history.failed.disconnect(self._on_export_failed)
        self.show_message(f"export failed: {message}", error=True)

    def show_message(self, text: str, error: bool = False) -> None:
        """Show a one-line message in the status bar (red when ``error``), until the next one."""
        self.message_label.setStyleSheet("color:#c62828; font-weight:bold;" if error else "")
        self.message_label.setText(text)

    # -- lifetime ------------------------------------------------------------------------------

    def request_close(self, status: str = "interrupted") -> None:
        """Close as soon as the run is stopped and saved (``status``: the run's end status)."""
        self._exit_status = status
        self.close()

    @property
    def closing(self) -> bool:
        return self._close_asked_at is not None

    def closeEvent(self, event: QCloseEvent) -> None:
        if self._controller.idle and not pending_tasks():
            self._timer.stop()
            self.closed_cleanly = True
            event.accept()
            self.closed.emit()
            return
        if self._close_asked_at is None and self._timer.isActive():
            self._close_asked_at = time.perf_counter()
            self._controller.shutdown(self._exit_status)
            self.show_message("stopping and saving the run…")
            self.video.badge = "STOPPING…"
            self.video.update()
            event.ignore()
            return
        if self._close_asked_at is not None:
            event.ignore()  # closes from poll() once idle
            return
        event.accept()
        self.closed.emit()


def _same_aspect(a: tuple[int, ...], b: tuple[int, int]) -> bool:
    """Whether image shape ``a`` (h, w) shows a frame of ``b`` (h, w): the same size, or the GPU
    path's display-sized copy of it (the same aspect within 1 %)."""
    return tuple(a) == b or (a[0] > 0 and b[0] > 0 and abs(a[1] / a[0] - b[1] / b[0]) <= 0.01 * b[1] / b[0])
