"""The camera list of a config with several streams: one tile per camera, one selected.

Each :class:`CameraTile` shows a small live thumbnail of its camera, its id, its state (starting,
running, paused, reconnecting, failed with its message...) and its current count, following the
count contract (docs/ARCHITECTURE.md): white only when it is the count of the frame in the
thumbnail; a count of an older frame is amber with its frame and age; an unknown count is amber
with its reason, never 0. :class:`CameraStrip` stacks the tiles (scrolling past a few) and says
which one the operator picked (a click; the window adds Alt+1..9 and PageUp / PageDown).

The strip draws what it is given and asks nothing of the pipeline: the window takes each camera's
results from its :class:`~ui.bridge.LatestResultSink` and hands them over.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from PySide6.QtCore import QSize, Qt, Signal
from PySide6.QtGui import QFontMetrics, QImage, QMouseEvent, QPixmap
from PySide6.QtWidgets import QFrame, QHBoxLayout, QLabel, QScrollArea, QSizePolicy, QVBoxLayout, QWidget

from pipeline.types import FusedResult, MetadataRecord
from ui.bridge import CameraStatus, PipelineStatus, RunState, StreamHealth
from ui.overlay import UNKNOWN_COLOR, shown_counts
from ui.qt_fixes import apply_qt_workarounds

THUMB_SIZE = QSize(192, 144)
"""Thumbnail box, device-independent pixels (a 4:3 camera fills it; others are letterboxed)."""

_AMBER = "#{:02x}{:02x}{:02x}".format(*UNKNOWN_COLOR)
_STATE_COLORS = {
    "starting": "#9e9e9e",
    "running": "#66bb6a",
    "paused": "#fbc02d",
    "reconnecting": _AMBER,
    "stalled": _AMBER,
    "stopping": "#bcaaa4",
    "stopped": "#9e9e9e",
    "ended": "#64b5f6",
    "failed": "#ef5350",
    "idle": "#9e9e9e",
}


def camera_state(status: PipelineStatus, health: StreamHealth | None = None) -> tuple[str, str]:
    """The state word of a camera and its line: (``running``, ``running``), (``reconnecting``,
    ``reconnecting (attempt 3)``), (``failed``, ``failed: video not found: …``)..."""
    state = status.state
    if state is RunState.FAILED:
        first = status.message.strip().splitlines()[0] if status.message.strip() else "unknown error"
        return "failed", f"failed: {first}"
    if state in (RunState.RUNNING, RunState.STARTING) and health is not None and health.state != "ok":
        word = "stalled" if health.state == "stalled" else "reconnecting"
        return word, f"{word} (attempt {health.attempts})" if health.attempts else word
    word = {
        RunState.IDLE: "idle",
        RunState.STARTING: "starting",
        RunState.RUNNING: "running",
        RunState.PAUSED: "paused",
        RunState.STOPPING: "stopping",
        RunState.STOPPED: "stopped",
        RunState.FINISHED: "ended",
    }[state]
    return word, word


def camera_count(result: FusedResult | None, metadata: MetadataRecord | None = None) -> tuple[str, bool]:
    """The count line of a tile and whether it is the count of the frame shown (drawn white).

    ``people 12`` for the frame's own count; ``people 12 (frame 40, 800 ms old)`` for an older
    frame's; ``people unknown (<reason>)`` when unknown, never 0; ``people unknown (no frame
    yet)`` before the first result.
    """
    if result is None:
        return "people unknown (no frame yet)", False
    counts, of_frame, age_ms = shown_counts(result, metadata)
    if counts is None:
        return "people unknown (waiting for the first metadata record)", False
    if counts.fused is None:
        return f"people unknown ({counts.unknown_reason or 'no reason given'})", False
    value = f"{counts.fused:.1f}".removesuffix(".0")
    if of_frame is None or of_frame == result.frame.frame_index:
        return f"people {value}", True
    age = "" if age_ms is None else f", {age_ms:.0f} ms old"
    return f"people {value} (frame {of_frame}{age})", False


def wrap_elided(text: str, metrics: QFontMetrics, width: int, lines: int) -> str:
    """``text`` wrapped at spaces into at most ``lines`` lines of ``width`` pixels, the last one
    ending in ``…`` when the rest does not fit (a tile has room for so many lines; the whole text
    goes to its tooltip, nothing is cut silently)."""
    words = text.split()
    out: list[str] = []
    while words and len(out) < lines - 1:
        line = words.pop(0)
        while words and metrics.horizontalAdvance(f"{line} {words[0]}") <= width:
            line = f"{line} {words.pop(0)}"
        if metrics.horizontalAdvance(line) > width:  # one word longer than the line (a path)
            cut = next((i for i in range(len(line), 0, -1) if metrics.horizontalAdvance(line[:i]) <= width), 1)
            words.insert(0, line[cut:])
            line = line[:cut]
        out.append(line)
    if words:
        out.append(metrics.elidedText(" ".join(words), Qt.TextElideMode.ElideRight, width))
    return "\n".join(out)


def thumbnail(image: NDArray[np.uint8], size: QSize) -> QImage:
    """An RGB frame (H, W, 3) scaled to fit ``size``, aspect kept (a copy: ``image`` may be reused)."""
    rgb = np.ascontiguousarray(image[..., :3])
    h, w = rgb.shape[:2]
    full = QImage(rgb.data, w, h, 3 * w, QImage.Format.Format_RGB888)
    return full.scaled(size, Qt.AspectRatioMode.KeepAspectRatio, Qt.TransformationMode.SmoothTransformation)


class CameraTile(QFrame):
    """One camera: thumbnail, id, state line, count line. ``clicked(stream_id)`` on a click."""

    clicked = Signal(str)

    def __init__(self, stream_id: str, parent: QWidget | None = None) -> None:
        apply_qt_workarounds()
        super().__init__(parent)
        self.stream_id = stream_id
        self.state_word = ""
        self.selected: bool | None = None
        self.setObjectName("cameraTile")
        self.setCursor(Qt.CursorShape.PointingHandCursor)
        self.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Fixed)
        self.picture = QLabel("no frame yet")
        self.picture.setFixedSize(THUMB_SIZE)
        self.picture.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.picture.setStyleSheet("background:black; color:#9e9e9e; padding:4px;")
        self.id_label = QLabel(stream_id)
        self.id_label.setStyleSheet("color:white; font-weight:bold;")
        self.key_label = QLabel("")
        self.key_label.setStyleSheet("color:#9e9e9e;")
        self.state_label = QLabel("starting")
        self.count_label = QLabel("people unknown (no frame yet)")
        line = QFontMetrics(self.count_label.font()).lineSpacing()
        self.state_label.setFixedHeight(line + 2)
        self.count_label.setFixedHeight(2 * line + 2)  # the count and its frame / age / reason
        self._state_text = "starting"
        self._count_text = "people unknown (no frame yet)"
        head = QHBoxLayout()
        head.addWidget(self.id_label, 1)
        head.addWidget(self.key_label)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 6, 6, 6)
        layout.setSpacing(3)
        layout.addWidget(self.picture, 0, Qt.AlignmentFlag.AlignHCenter)
        layout.addLayout(head)
        layout.addWidget(self.state_label)
        layout.addWidget(self.count_label)
        self.set_selected(False)
        self._set_count("people unknown (no frame yet)", False)

    @property
    def state_text(self) -> str:
        """The whole state line (the tile may show it elided; its tooltip has it all)."""
        return self._state_text

    @property
    def count_text(self) -> str:
        """The whole count line (see :func:`camera_count`)."""
        return self._count_text

    def _line_width(self) -> int:
        return THUMB_SIZE.width()

    def set_key(self, text: str) -> None:
        """The keyboard shortcut that selects this camera, shown beside its id."""
        self.key_label.setText(text)

    def set_selected(self, selected: bool) -> None:
        if selected == self.selected:
            return
        self.selected = selected
        border = "#42a5f5" if selected else "#424242"
        width = 3 if selected else 1
        self.setStyleSheet(f"QFrame#cameraTile {{background:#212121; border:{width}px solid {border}; border-radius:4px;}}")

    def set_status(self, status: PipelineStatus, health: StreamHealth | None) -> None:
        word, line = camera_state(status, health)
        if (word, line) == (self.state_word, self._state_text):
            return
        self.state_word, self._state_text = word, line
        metrics = QFontMetrics(self.state_label.font())
        self.state_label.setText(metrics.elidedText(line, Qt.TextElideMode.ElideRight, self._line_width()))
        self.state_label.setStyleSheet(f"color:{_STATE_COLORS[word]};")
        self.state_label.setToolTip(status.message or line)
        self.setToolTip(f"{self.stream_id}: {status.message or line}")
        if word == "failed":  # the message where the picture would be: there is none
            message = status.message.strip() or "unknown error"
            box = THUMB_SIZE.width() - 12
            lines = max(1, (THUMB_SIZE.height() - 12) // QFontMetrics(self.picture.font()).lineSpacing())
            self.picture.clear()
            self.picture.setText(wrap_elided(message, QFontMetrics(self.picture.font()), box, lines))
            self.picture.setStyleSheet(f"background:black; color:{_STATE_COLORS['failed']}; padding:4px;")
            self.picture.setToolTip(message)

    def show_result(self, result: FusedResult, metadata: MetadataRecord | None = None) -> None:
        """Show ``result``'s frame (a metadata-only result keeps the last picture) and its count."""
        if result.frame_image is not None:
            self.picture.setPixmap(QPixmap.fromImage(thumbnail(result.frame_image, THUMB_SIZE)))
        self._set_count(*camera_count(result, metadata))

    def _set_count(self, text: str, fresh: bool) -> None:
        self._count_text = text
        self.count_label.setText(wrap_elided(text, QFontMetrics(self.count_label.font()), self._line_width(), 2))
        self.count_label.setToolTip(text)
        self.count_label.setStyleSheet(f"color:{'white' if fresh else _AMBER};")

    def mousePressEvent(self, event: QMouseEvent) -> None:
        if event.button() == Qt.MouseButton.LeftButton:
            self.clicked.emit(self.stream_id)
        super().mousePressEvent(event)


class CameraStrip(QScrollArea):
    """The cameras, top to bottom in the config's order; ``selected(stream_id)`` when one is clicked."""

    selected = Signal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        apply_qt_workarounds()
        super().__init__(parent)
        self.tiles: dict[str, CameraTile] = {}
        self._body = QWidget()
        self._layout = QVBoxLayout(self._body)
        self._layout.setContentsMargins(4, 4, 4, 4)
        self._layout.setSpacing(6)
        self._layout.addStretch(1)
        self.setWidget(self._body)
        self.setWidgetResizable(True)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setFixedWidth(THUMB_SIZE.width() + 36)
        self.setFocusPolicy(Qt.FocusPolicy.NoFocus)

    def sync(self, cameras: list[CameraStatus]) -> None:
        """Show exactly ``cameras`` (tiles made and removed by stream id), their states and the selection."""
        ids = [c.stream_id for c in cameras]
        if list(self.tiles) != ids:
            for tile in self.tiles.values():
                self._layout.removeWidget(tile)
                tile.deleteLater()
            self.tiles = {}
            for i, sid in enumerate(ids):
                tile = CameraTile(sid)
                tile.set_key(f"Alt+{i + 1}" if i < 9 else "")
                tile.clicked.connect(self.selected)
                self._layout.insertWidget(i, tile)
                self.tiles[sid] = tile
        for c in cameras:
            tile = self.tiles[c.stream_id]
            tile.set_status(c.status, None if c.sink is None else c.sink.health)
            if c.selected and not tile.selected:
                self.ensureWidgetVisible(tile)
            tile.set_selected(c.selected)
