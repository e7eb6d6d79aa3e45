"""Counting lines drawn on the video: add, move either end or the whole line, flip the in side,
rename, delete; saved to the config's ``tracking.lines``. The zone editor's design (:mod:`ui.zones`).

A :class:`Line` is a named segment ``a`` -> ``b`` in normalised frame units (0..1 of the frame's
width and height), so it fits the video at any display size or stream resolution, with the side
that is "in" as seen walking from ``a`` to ``b`` (``config.schema.LineConfig``). :class:`LineEditor`
holds the lines and the gestures (no widget of its own); the video view forwards its mouse to it.
Gestures while editing: press on empty video and drag to the other end, or click both ends; drag
an end to move it; drag the line itself to move it whole; ``I`` (or the Flip button) flips the in
side of the selected line; Delete removes it; Esc drops a line being drawn; rename from the list.

Counts: the tracker counts only the lines the run started with. A line the run counts as drawn
(same name, ends and in side) shows the run's live in/out totals; a line added or edited since is
:func:`pending_lines` and shows ``not counted yet — restart to apply``, never a count, until the run
restarts with it. Saving writes ``tracking.lines`` (only that block: comments elsewhere stay) as
``units: normalized``, validated before it is written.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PySide6.QtCore import QObject, QPointF, QRectF, Qt, Signal
from PySide6.QtGui import QBrush, QColor, QPainter, QPen

from config.schema import LineConfig
from pipeline.tracking import LineCount, resolve_points
from ui.tracks import LINE_COLOR, NOT_COUNTED_YET
from ui.zones import VERTEX_PICK_PX, Point, checked_name, clip01, save_block

Side = Literal["left", "right"]

MIN_LINE_PX = 8.0
"""A drag shorter than this (display pixels) is a click: the line waits for its second end."""


@dataclass(frozen=True, slots=True)
class Line:
    """A named counting line; ``a``, ``b`` in normalised frame units (0..1), and its in side."""

    name: str
    a: Point
    b: Point
    in_side: Side = "left"

    def to_config(self) -> LineConfig:
        """The line as ``tracking.lines`` takes it (``units: normalized``)."""
        return LineConfig(name=self.name, a=self.a, b=self.b, in_side=self.in_side, units="normalized")


def lines_from_config(lines: Sequence[LineConfig], frame_wh: tuple[int, int]) -> list[Line]:
    """The config's lines in normalised units, for a frame of ``frame_wh`` (as the tracker resolves them)."""
    w, h = frame_wh
    out = []
    for line in lines:
        a, b = resolve_points([line.a, line.b], line.units, line.frame_size, frame_wh) / np.array([w, h], np.float64)
        out.append(Line(line.name, (clip01(a[0]), clip01(a[1])), (clip01(b[0]), clip01(b[1])), line.in_side))
    return out


def lines_to_config(lines: Sequence[Line]) -> list[dict[str, Any]]:
    """``tracking.lines`` entries, normalised (0..1, 4 decimals)."""
    return [{"name": ln.name, "a": [round(ln.a[0], 4), round(ln.a[1], 4)], "b": [round(ln.b[0], 4), round(ln.b[1], 4)],
             "in_side": ln.in_side, "units": "normalized"} for ln in lines]  # fmt: skip


def save_lines(config_path: str | Path, lines: Sequence[Line]) -> Path:
    """Write ``lines`` as ``tracking.lines`` of the config file; returns its path (see
    :func:`ui.zones.save_block`: only that block changes, validated before it is written)."""
    return save_block(config_path, "tracking", "lines", lines_to_config(lines))


def pending_lines(lines: Sequence[Line], applied: Mapping[str, Line]) -> frozenset[str]:
    """Names of ``lines`` the run does not count as drawn (``applied``: the run's lines by name)."""
    return frozenset(ln.name for ln in lines if applied.get(ln.name) != ln)


def line_texts(lines: Sequence[Line], applied: Mapping[str, Line], totals: Mapping[str, LineCount] | None) -> dict[str, str]:
    """Per line, what the line list says: ``in 5 · out 3``, ``in/out unknown`` (no tracking result
    yet, or unknown), or :data:`ui.tracks.NOT_COUNTED_YET` for a line the run does not count."""
    pending = pending_lines(lines, applied)
    out = {}
    for ln in lines:
        lc = None if totals is None else totals.get(ln.name)
        if ln.name in pending:
            out[ln.name] = NOT_COUNTED_YET
        else:
            out[ln.name] = "in/out unknown" if lc is None else f"in {lc.in_count} · out {lc.out_count}"
    return out


class LineEditor(QObject):
    """The lines of the view and the gestures that edit them (see the module docstring).

    Points passed in are normalised (0..1); the view converts its mouse positions and gives the
    display size for hit tests. ``changed`` is emitted after every edit.
    """

    changed = Signal()

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.lines: list[Line] = []
        self.selected: int | None = None
        self.editing = False
        self.drawing: Point | None = None  # the first end of a line being drawn
        self.cursor: Point | None = None  # where the line being drawn follows the mouse
        self._drag: tuple[str, int, int, Point] | None = None  # ("end"|"line"|"new", line, end, start)
        self._counter = 0

    # -- operations (also the API the tests drive) ---------------------------------------------

    @property
    def names(self) -> list[str]:
        """The lines' names, in order (the line list shows them)."""
        return [ln.name for ln in self.lines]

    def set_lines(self, lines: Sequence[Line]) -> None:
        self.lines = list(lines)
        self.selected = None
        self.drawing = self.cursor = None
        self.changed.emit()

    def _new_name(self) -> str:
        names = set(self.names)
        while True:
            self._counter += 1
            name = f"line {self._counter}"
            if name not in names:
                return name

    def add_line(self, a: Point, b: Point, name: str | None = None, in_side: Side = "left") -> Line:
        a, b = (clip01(a[0]), clip01(a[1])), (clip01(b[0]), clip01(b[1]))
        if a == b:
            raise ValueError(f"a line needs two different ends, got {list(a)} twice")
        line = Line(checked_name(name or self._new_name(), self.names, "line"), a, b, in_side)
        self.lines.append(line)
        self.selected = len(self.lines) - 1
        self.changed.emit()
        return line

    def rename(self, index: int, name: str) -> None:
        name = checked_name(name, (ln.name for i, ln in enumerate(self.lines) if i != index), "line")
        self.lines[index] = replace(self.lines[index], name=name)
        self.changed.emit()

    def delete(self, index: int) -> None:
        del self.lines[index]
        self.selected = None
        self.changed.emit()

    def flip(self, index: int) -> None:
        """Swap the in side of line ``index`` (what counted "in" counts "out")."""
        ln = self.lines[index]
        self.lines[index] = replace(ln, in_side="right" if ln.in_side == "left" else "left")
        self.changed.emit()

    def move_end(self, index: int, end: int, point: Point) -> None:
        """Move end ``end`` (0: a, 1: b) of line ``index``; refused (ValueError) onto its other end."""
        ln = self.lines[index]
        p = (clip01(point[0]), clip01(point[1]))
        if p == (ln.b if end == 0 else ln.a):
            raise ValueError(f"line {ln.name!r}: both ends at {list(p)}; a line needs two")
        self.lines[index] = replace(ln, a=p) if end == 0 else replace(ln, b=p)
        self.changed.emit()

    def move_line(self, index: int, dx: float, dy: float) -> None:
        ln = self.lines[index]
        xs, ys = (ln.a[0], ln.b[0]), (ln.a[1], ln.b[1])
        dx = min(max(dx, -min(xs)), 1 - max(xs))  # the whole line stays on the frame
        dy = min(max(dy, -min(ys)), 1 - max(ys))
        self.lines[index] = replace(ln, a=(ln.a[0] + dx, ln.a[1] + dy), b=(ln.b[0] + dx, ln.b[1] + dy))
        self.changed.emit()

    # -- gestures ------------------------------------------------------------------------------

    def press(self, p: Point, size: tuple[float, float]) -> None:
        if not self.editing:
            return
        if self.drawing is not None:  # the second click of a two-click line
            self._finish(p, size)
            return
        hit = self._end_at(p, size)
        if hit is not None:
            self.selected = hit[0]
            self._drag = ("end", hit[0], hit[1], p)
        elif (on := self._line_at(p, size)) is not None:
            self.selected = on
            self._drag = ("line", on, -1, p)
        else:
            self.selected = None
            self.drawing, self.cursor = p, p
            self._drag = ("new", -1, -1, p)
        self.changed.emit()

    def move(self, p: Point) -> None:
        if self._drag is not None and self._drag[0] == "end":
            with contextlib.suppress(ValueError):  # dragged onto the other end: the end stays where it was
                self.move_end(self._drag[1], self._drag[2], p)
        elif self._drag is not None and self._drag[0] == "line":
            kind, li, end, start = self._drag
            self.move_line(li, p[0] - start[0], p[1] - start[1])
            self._drag = (kind, li, end, p)
        elif self.drawing is not None:
            self.cursor = p
            self.changed.emit()

    def release(self, p: Point, size: tuple[float, float]) -> None:
        drag, self._drag = self._drag, None
        if drag is not None and drag[0] == "new" and self.drawing is not None and _display_px(self.drawing, p, size) >= MIN_LINE_PX:
            self._finish(p, size)  # a drag: the line ends where the mouse was released

    def cancel(self) -> None:
        self.drawing = self.cursor = None
        self._drag = None
        self.changed.emit()

    def _finish(self, p: Point, size: tuple[float, float]) -> Line | None:
        start, self.drawing, self.cursor = self.drawing, None, None
        if start is None or _display_px(start, p, size) < MIN_LINE_PX:
            self.changed.emit()  # both ends on one spot: no line
            return None
        return self.add_line(start, p)

    def _end_at(self, p: Point, size: tuple[float, float]) -> tuple[int, int] | None:
        for li, ln in enumerate(self.lines):
            for end, q in enumerate((ln.a, ln.b)):
                if _display_px(p, q, size) <= VERTEX_PICK_PX:
                    return li, end
        return None

    def _line_at(self, p: Point, size: tuple[float, float]) -> int | None:
        w, h = size
        for li in range(len(self.lines) - 1, -1, -1):
            ln = self.lines[li]
            a = np.array([ln.a[0] * w, ln.a[1] * h])
            d = np.array([ln.b[0] * w, ln.b[1] * h]) - a
            q = np.array([p[0] * w, p[1] * h])
            t = float(np.clip(np.dot(q - a, d) / max(1e-9, float(np.dot(d, d))), 0.0, 1.0))
            if float(np.hypot(*(a + t * d - q))) <= VERTEX_PICK_PX:
                return li
        return None

    # -- drawing -------------------------------------------------------------------------------

    def paint(self, painter: QPainter, target: QRectF) -> None:
        """While editing: every line thin with its ends (``a`` hollow, ``b`` filled), the selected
        one yellow, and the line being drawn dashed. The lines themselves, their in arrows and
        counts are the overlay's (:func:`ui.tracks.draw_lines`)."""
        if not self.editing:
            return

        def to_screen(pt: Point) -> QPointF:
            return QPointF(target.x() + pt[0] * target.width(), target.y() + pt[1] * target.height())

        for li, ln in enumerate(self.lines):
            color = QColor(255, 255, 0) if li == self.selected else QColor(*LINE_COLOR)
            painter.setPen(QPen(color, 1.5))
            painter.drawLine(to_screen(ln.a), to_screen(ln.b))
            painter.setBrush(QBrush())
            painter.drawEllipse(to_screen(ln.a), 5.0, 5.0)
            painter.setBrush(QBrush(color))
            painter.drawEllipse(to_screen(ln.b), 5.0, 5.0)
        if self.drawing is not None:
            painter.setPen(QPen(QColor(255, 255, 0), 2.0, Qt.PenStyle.DashLine))
            painter.drawLine(to_screen(self.drawing), to_screen(self.cursor or self.drawing))
            painter.setBrush(QBrush(QColor(255, 255, 0)))
            painter.drawEllipse(to_screen(self.drawing), 3.5, 3.5)


def _display_px(p: Point, q: Point, size: tuple[float, float]) -> float:
    """The distance between two normalised points on a display of ``size`` (pixels)."""
    return float(np.hypot((p[0] - q[0]) * size[0], (p[1] - q[1]) * size[1]))
