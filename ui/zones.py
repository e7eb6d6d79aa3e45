"""Counting zones drawn on the video: add, move, rename, delete; live counts; saved to the config.

A :class:`Zone` is a named polygon in normalised frame units (0..1 of the frame's width and
height), so it fits the video at any display size or stream resolution. :class:`ZoneEditor` holds
the zones and the editing gestures (no widget of its own); the video view forwards its mouse to it
and asks it to paint. Gestures while editing: click on empty video starts a zone; each click adds
a point; double-click (or Enter) closes it (3 points at least); drag a vertex to move it, drag
inside a zone to move the whole zone; Delete removes the selected zone; rename from the zone list.

Live counts (:func:`zone_counts`): a zone the running pipeline counts (the same name and polygon
as the run started with) shows the pipeline's count (``counts.zones``); a zone added or edited
since shows a preview from the frame's detections (people whose feet lie inside), marked ``≈``,
until the run is restarted with it. Unknown counts stay unknown, never 0. With tracking, a zone the
run counts also shows its occupancy (:func:`zone_occupancy`: counted tracks whose feet are inside,
``TrackedFrame.occupancy``). Counts of another frame than the one on screen (ASYNC_OVERLAY) are
amber and say so.

Saving writes ``counting.zones`` back into the config file (only that block: comments elsewhere
stay), as ``units: normalized`` when the config schema has that key, else frame pixels with
``frame_size``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PySide6.QtCore import QObject, QPointF, QRectF, Qt, Signal
from PySide6.QtGui import QBrush, QColor, QFont, QPainter, QPen, QPolygonF

from config.errors import ConfigError
from config.schema import PipelineConfig, ZoneConfig
from pipeline.counting import feet, points_in_polygon
from pipeline.types import FusedResult
from ui.tracks import occupancy_of

Point = tuple[float, float]

VERTEX_PICK_PX = 9.0
"""A press this close (display pixels) to a vertex grabs it."""

SUPPORTS_NORMALIZED = "units" in ZoneConfig.model_fields
"""The config schema takes ``units: normalized`` (new zones are stored normalised then)."""


@dataclass(frozen=True, slots=True)
class Zone:
    """A named polygon; ``points`` in normalised frame units (0..1), at least 3."""

    name: str
    points: tuple[Point, ...]

    def pixels(self, frame_wh: tuple[int, int]) -> np.ndarray:
        w, h = frame_wh
        return np.asarray(self.points, np.float64) * np.array([w, h], np.float64)


def zones_from_config(zones: Sequence[ZoneConfig], frame_wh: tuple[int, int]) -> list[Zone]:
    """The config's zones in normalised units, for a frame of ``frame_wh``."""
    w, h = frame_wh
    out = []
    for z in zones:
        units = getattr(z, "units", "pixels")
        poly = np.asarray(z.polygon, np.float64)
        if units != "normalized":
            fw, fh = getattr(z, "frame_size", None) or (w, h)
            poly = poly / np.array([fw, fh], np.float64)
        out.append(Zone(z.name, tuple((float(x), float(y)) for x, y in np.clip(poly, 0.0, 1.0))))
    return out


def zone_counts(
    result: FusedResult | None, zones: Sequence[Zone], applied: Mapping[str, Zone]
) -> dict[str, tuple[float | None, bool]]:
    """Per zone: (count or None when unknown, True when it is a preview from detections).

    ``applied``: the zones the running pipeline counts (name -> zone), whose counts come from the
    pipeline's results. Without a result, every count is unknown.
    """
    out: dict[str, tuple[float | None, bool]] = {}
    for zone in zones:
        if result is None or result.raw:
            out[zone.name] = (None, applied.get(zone.name) != zone)
            continue
        if applied.get(zone.name) == zone and zone.name in result.counts.zones:
            out[zone.name] = (result.counts.zones[zone.name], False)
            continue
        if result.counts.detection is None:
            out[zone.name] = (None, True)
            continue
        frame_wh = (result.frame.width, result.frame.height)
        dets = result.detections
        n = int(np.count_nonzero(points_in_polygon(feet(dets.xyxy), zone.pixels(frame_wh)))) if len(dets) else 0
        out[zone.name] = (float(n), True)
    return out


def zone_occupancy(result: FusedResult | None, zones: Sequence[Zone], applied: Mapping[str, Zone]) -> dict[str, int | None]:
    """Per zone the run counts as drawn (``applied``), its tracked occupancy (None: unknown on
    this frame); zones added or edited since, and runs without tracking, are left out (the
    tracker knows only the zones the run started with)."""
    if result is None or result.raw:
        return {}
    occupancy = occupancy_of(result.counts)
    if occupancy is None:
        return {}
    return {z.name: occupancy[z.name] for z in zones if applied.get(z.name) == z and z.name in occupancy}


def zone_label(
    name: str, value: float | None, preview: bool, *, tracked: bool = False, occupancy: int | None = None, of_frame: int | None = None
) -> str:
    """``door: 3``, ``door: ≈2`` (preview), ``door: unknown``; with tracking (``tracked``)
    ``door: 3 · 3 tracked`` (``occupancy`` None: unknown); ``of_frame``: the counts are that
    frame's, not the one on screen."""
    text = f"{name}: " + ("unknown" if value is None else f"{'≈' if preview else ''}{value:g}")
    if tracked:
        text += " · " + ("tracked unknown" if occupancy is None else f"{occupancy} tracked")
    if of_frame is not None and not preview:
        text += f" (frame {of_frame})"
    return text


def zones_to_config(zones: Sequence[Zone], frame_wh: tuple[int, int] | None) -> list[dict[str, Any]]:
    """``counting.zones`` entries: normalised when the schema takes it, else pixels of ``frame_wh``."""
    entries: list[dict[str, Any]] = []
    for z in zones:
        if SUPPORTS_NORMALIZED:
            entries.append({"name": z.name, "polygon": [[round(x, 4), round(y, 4)] for x, y in z.points], "units": "normalized"})
        else:
            if frame_wh is None:
                raise ConfigError("zones: the frame size is not known yet (start the video once), and this config stores pixels")
            w, h = frame_wh
            entries.append({"name": z.name, "polygon": [[round(x * w, 1), round(y * h, 1)] for x, y in z.points]})
    return entries


def save_zones(config_path: str | Path, zones: Sequence[Zone], frame_wh: tuple[int, int] | None) -> Path:
    """Write ``zones`` as ``counting.zones`` of the config file; returns its path.

    Only the ``zones:`` block of ``counting`` is replaced (comments and the rest of the file stay);
    the result is validated before it is written, so a bad zone never breaks the config.
    """
    return save_block(config_path, "counting", "zones", zones_to_config(zones, frame_wh))


def save_block(config_path: str | Path, section: str, key: str, entries: Sequence[Mapping[str, Any]]) -> Path:
    """Write ``entries`` as the list ``<section>.<key>`` of the config file; returns its path.

    Only that block is replaced, one flow-style entry a line (comments and the rest of the file
    stay); without the block, the file is rewritten with it. The new text is validated by
    :class:`PipelineConfig` before it is written (atomically), so a bad entry never breaks the
    config: a :class:`ConfigError` names the file and the problem instead.
    """
    path = Path(config_path)
    text = path.read_text(encoding="utf-8")
    key_line = re.compile(rf"^(?P<indent>[ \t]+){re.escape(key)}:(?P<rest>.*)$")
    lines = text.splitlines()
    start = end = None
    in_section = False
    for i, line in enumerate(lines):
        if re.match(rf"^{re.escape(section)}:\s*(#.*)?$", line):
            in_section = True
            continue
        if in_section and line and not line[0].isspace() and not line.lstrip().startswith("#"):
            break
        m = key_line.match(line)
        if in_section and m:
            indent = m.group("indent")
            start, end = i, i + 1
            while end < len(lines) and (not lines[end].strip() or lines[end].startswith(indent + " ") or lines[end].startswith(indent + "-")):
                end += 1
            while end > start + 1 and not lines[end - 1].strip():
                end -= 1
            break
    if start is not None:
        indent = key_line.match(lines[start]).group("indent")  # type: ignore[union-attr]
        block = [f"{indent}{key}:" + ("" if entries else " []") + "  # edited in the operator window"]
        block += [f"{indent}  - {yaml.safe_dump(dict(e), default_flow_style=True, sort_keys=False, width=10_000).strip()}" for e in entries]
        new_text = "\n".join(lines[:start] + block + lines[end:]) + "\n"
    else:
        data = yaml.safe_load(text) or {}
        data.setdefault(section, {})[key] = [dict(e) for e in entries]
        new_text = yaml.safe_dump(data, sort_keys=False)
    try:
        PipelineConfig.model_validate(yaml.safe_load(new_text))
    except ValueError as e:
        raise ConfigError(f"{path}: the {key} do not make a valid config: {e}") from None
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(new_text, encoding="utf-8")
    tmp.replace(path)
    return path


def checked_name(name: str, taken: Iterable[str], kind: str) -> str:
    """``name`` stripped, or ValueError naming the problem: empty, or taken by another ``kind``."""
    name = name.strip()
    if not name:
        raise ValueError(f"a {kind} needs a name")
    if name in set(taken):
        raise ValueError(f"a {kind} named {name!r} exists; choose another name")
    return name


class ZoneEditor(QObject):
    """The zones of the view and the gestures that edit them (see the module docstring).

    Coordinates passed in are normalised (0..1); the view converts its mouse positions and gives
    the display size for hit tests. ``changed`` is emitted after every edit.
    """

    changed = Signal()

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.zones: list[Zone] = []
        self.selected: int | None = None
        self.editing = False
        self.drawing: list[Point] = []
        self._drag: tuple[str, int, int, Point] | None = None  # ("vertex"|"zone", zone, vertex, start)
        self._counter = 0

    # -- operations (also the API the tests drive) ---------------------------------------------

    @property
    def names(self) -> list[str]:
        """The zones' names, in order (the zone list shows them)."""
        return [z.name for z in self.zones]

    def set_zones(self, zones: Sequence[Zone]) -> None:
        self.zones = list(zones)
        self.selected = None
        self.drawing = []
        self.changed.emit()

    def _new_name(self) -> str:
        names = {z.name for z in self.zones}
        while True:
            self._counter += 1
            name = f"zone {self._counter}"
            if name not in names:
                return name

    def add_zone(self, points: Sequence[Point], name: str | None = None) -> Zone:
        if len(points) < 3:
            raise ValueError(f"a zone needs 3 points at least, got {len(points)}")
        name = checked_name(name or self._new_name(), self.names, "zone")
        zone = Zone(name, tuple((clip01(x), clip01(y)) for x, y in points))
        self.zones.append(zone)
        self.selected = len(self.zones) - 1
        self.changed.emit()
        return zone

    def rename(self, index: int, name: str) -> None:
        name = checked_name(name, (z.name for i, z in enumerate(self.zones) if i != index), "zone")
        self.zones[index] = Zone(name, self.zones[index].points)
        self.changed.emit()

    def delete(self, index: int) -> None:
        del self.zones[index]
        self.selected = None
        self.changed.emit()

    def move_zone(self, index: int, dx: float, dy: float) -> None:
        z = self.zones[index]
        xs = [p[0] for p in z.points]
        ys = [p[1] for p in z.points]
        dx = min(max(dx, -min(xs)), 1 - max(xs))  # the whole zone stays on the frame
        dy = min(max(dy, -min(ys)), 1 - max(ys))
        self.zones[index] = Zone(z.name, tuple((x + dx, y + dy) for x, y in z.points))
        self.changed.emit()

    def move_vertex(self, index: int, vertex: int, point: Point) -> None:
        z = self.zones[index]
        pts = list(z.points)
        pts[vertex] = (clip01(point[0]), clip01(point[1]))
        self.zones[index] = Zone(z.name, tuple(pts))
        self.changed.emit()

    # -- gestures ------------------------------------------------------------------------------

    def press(self, p: Point, size: tuple[float, float]) -> None:
        if not self.editing:
            return
        if self.drawing:
            self.drawing.append(p)
            self.changed.emit()
            return
        hit = self._vertex_at(p, size)
        if hit is not None:
            self.selected = hit[0]
            self._drag = ("vertex", hit[0], hit[1], p)
            self.changed.emit()
            return
        inside = self._zone_at(p)
        if inside is not None:
            self.selected = inside
            self._drag = ("zone", inside, -1, p)
            self.changed.emit()
            return
        self.selected = None
        self.drawing = [p]
        self.changed.emit()

    def move(self, p: Point) -> None:
        if self._drag is None:
            return
        kind, zi, vi, start = self._drag
        if kind == "vertex":
            self.move_vertex(zi, vi, p)
        else:
            self.move_zone(zi, p[0] - start[0], p[1] - start[1])
            self._drag = (kind, zi, vi, p)

    def release(self) -> None:
        self._drag = None

    def finish(self) -> Zone | None:
        """Close the polygon being drawn (None, and it is dropped, with fewer than 3 points)."""
        points, self.drawing = self.drawing, []
        if len(points) >= 3:
            return self.add_zone(points)
        self.changed.emit()
        return None

    def cancel(self) -> None:
        self.drawing = []
        self._drag = None
        self.changed.emit()

    def _vertex_at(self, p: Point, size: tuple[float, float]) -> tuple[int, int] | None:
        w, h = size
        for zi, z in enumerate(self.zones):
            for vi, (x, y) in enumerate(z.points):
                if ((x - p[0]) * w) ** 2 + ((y - p[1]) * h) ** 2 <= VERTEX_PICK_PX**2:
                    return zi, vi
        return None

    def _zone_at(self, p: Point) -> int | None:
        for zi in range(len(self.zones) - 1, -1, -1):
            if points_in_polygon(np.array([p]), self.zones[zi].points)[0]:
                return zi
        return None

    # -- drawing -------------------------------------------------------------------------------

    def paint(
        self,
        painter: QPainter,
        target: QRectF,
        counts: Mapping[str, tuple[float | None, bool]],
        occupancy: Mapping[str, int | None] | None = None,
        counts_of: int | None = None,
    ) -> None:
        """Draw every zone, its name and count, into ``target`` (the image's rectangle on screen).

        ``occupancy``: tracked occupancy per zone (:func:`zone_occupancy`); ``counts_of``: the
        frame the pipeline's counts belong to when it is not the frame on screen (amber labels)."""
        occupancy = occupancy or {}

        def to_screen(pt: Point) -> QPointF:
            return QPointF(target.x() + pt[0] * target.width(), target.y() + pt[1] * target.height())

        font = QFont()
        font.setPixelSize(max(11, int(target.height() // 40)))
        font.setBold(True)
        painter.setFont(font)
        for zi, z in enumerate(self.zones):
            selected = zi == self.selected
            color = QColor(120, 255, 120) if not selected else QColor(255, 255, 0)
            poly = QPolygonF([to_screen(p) for p in z.points])
            painter.setPen(QPen(color, 2.5 if selected else 2.0))
            fill = QColor(color)
            fill.setAlpha(45)
            painter.setBrush(QBrush(fill))
            painter.drawPolygon(poly)
            if self.editing:
                painter.setBrush(QBrush(color))
                for p in z.points:
                    painter.drawEllipse(to_screen(p), 4.0, 4.0)
            value, preview = counts.get(z.name, (None, True))
            label = zone_label(z.name, value, preview, tracked=z.name in occupancy, occupancy=occupancy.get(z.name),
                               of_frame=None if preview else counts_of)  # fmt: skip
            anchor = poly.boundingRect().topLeft()
            metrics = painter.fontMetrics()
            box = QRectF(anchor.x(), anchor.y() - metrics.height() - 2, metrics.horizontalAdvance(label) + 8, metrics.height() + 2)
            painter.setPen(Qt.PenStyle.NoPen)
            painter.setBrush(QBrush(QColor(0, 0, 0, 170)))
            painter.drawRect(box)
            painter.setPen(QColor(255, 190, 60) if value is None or (counts_of is not None and not preview) else color)
            painter.drawText(box.adjusted(4, 0, 0, 0), Qt.AlignmentFlag.AlignVCenter, label)
        if self.drawing:
            painter.setPen(QPen(QColor(255, 255, 0), 2.0, Qt.PenStyle.DashLine))
            painter.setBrush(Qt.BrushStyle.NoBrush)
            screen_pts = [to_screen(p) for p in self.drawing]
            painter.drawPolyline(QPolygonF(screen_pts))
            painter.setBrush(QBrush(QColor(255, 255, 0)))
            for sp in screen_pts:
                painter.drawEllipse(sp, 3.5, 3.5)


def clip01(v: float) -> float:
    """``v`` clipped to 0..1 (a normalised coordinate on the frame)."""
    return float(min(1.0, max(0.0, v)))
