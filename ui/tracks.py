"""People over time on the video: track ids and trails, static tracks, counting lines with their
in/out totals (``pipeline.tracking.TrackedFrame``, carried by ``CountResult.tracking``).

Pure helpers: :func:`tracks_view` says which tracking a published frame carries and whether it is
that frame's own; the ``draw_*`` functions paint it with a ``QPainter`` already on the display
image (frame pixels scaled by ``sx``, ``sy``); :func:`track_at` finds the track under a point for
the operator's "count this static track" override.

The count contract applies to tracks as to numbers: under ASYNC_OVERLAY a result's counts (and so
its tracking) belong to ``counts_frame_index``, the latest finalized frame, not the frame on
screen. Tracking of another frame is drawn dashed and faded and labelled with its frame; line
totals of another frame, or unknown ones, are amber. Only the frame's own tracking is drawn solid.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from PySide6.QtCore import QPointF, QRectF, Qt
from PySide6.QtGui import QBrush, QColor, QFont, QPainter, QPen, QPolygonF

from config.schema import LineConfig
from pipeline.tracking import LineCount, Track, TrackedFrame, resolve_points
from pipeline.types import CountResult

RGB = tuple[int, int, int]

TRACK_COLOR: RGB = (90, 230, 120)
"""A counted track: box, id and trail."""
STATIC_COLOR: RGB = (150, 150, 150)
"""A static track that is not counted (a cloth, a bag): dimmed, dotted."""
LINE_COLOR: RGB = (255, 80, 210)
"""Counting lines."""
STALE_COLOR: RGB = (255, 190, 60)
"""Labels of tracking from another frame, and unknown totals (the overlay's amber)."""

STALE_ALPHA = 120
"""Opacity (0..255) of tracks drawn from another frame than the one on screen."""


@dataclass(frozen=True, slots=True)
class TracksView:
    """The tracking a published frame carries, and whose it is.

    ``frame_index``: the frame the tracking was made on (``TrackedFrame.frame``); ``fresh``: it is
    the frame on screen and it was tracked (a partial frame keeps the previous frame's tracks);
    ``age_ms``: how old the counts were at publication (None: not measured, or fresh).
    """

    tracking: TrackedFrame
    frame_index: int
    fresh: bool
    age_ms: float | None = None

    @property
    def label(self) -> str:
        """One line for the operator: whose tracks these are, when not the frame's own."""
        if self.fresh:
            return ""
        if not self.tracking.known and self.tracking.unknown_reason != "warming up":
            return f"tracks of an earlier frame ({self.tracking.unknown_reason}): drawn dashed"
        age = "" if self.age_ms is None else f", {self.age_ms:.0f} ms old"
        return f"tracks of frame {self.frame_index}{age}: drawn dashed, not this frame's"


def tracking_of(counts: CountResult) -> TrackedFrame | None:
    """``counts.tracking`` where the counts carry one (tracking on), else None."""
    t = getattr(counts, "tracking", None)
    return t if isinstance(t, TrackedFrame) else None


def tracks_view(counts: CountResult, shown_index: int, age_ms: float | None = None) -> TracksView | None:
    """The tracking of ``counts`` as drawn over frame ``shown_index`` (None without tracking)."""
    t = tracking_of(counts)
    if t is None:
        return None
    own = t.frame.frame_index == shown_index
    fresh = own and (t.known or t.unknown_reason == "warming up")
    return TracksView(t, t.frame.frame_index, fresh, None if own else age_ms)


@dataclass(frozen=True, slots=True)
class ScreenLine:
    """A counting line in frame pixels: ``a``, ``b`` (2,) float64, and the unit normal pointing
    into its ``in`` side (image coordinates, y down)."""

    name: str
    a: NDArray[np.float64]
    b: NDArray[np.float64]
    in_normal: NDArray[np.float64]


def resolve_lines(lines: Sequence[LineConfig], frame_wh: tuple[int, int]) -> tuple[ScreenLine, ...]:
    """The config's lines in frame pixels, as the tracker resolves them
    (:func:`pipeline.tracking.resolve_points`), with their in side."""
    out = []
    for line in lines:
        a, b = resolve_points([line.a, line.b], line.units, line.frame_size, frame_wh)
        d = b - a
        # (-dy, dx) is the right hand of someone walking a -> b with y down (the tracker's sign)
        right = np.array([-d[1], d[0]], np.float64) / max(1e-9, float(np.hypot(d[0], d[1])))
        out.append(ScreenLine(line.name, a, b, right if line.in_side == "right" else -right))
    return tuple(out)


def track_at(tracking: TrackedFrame, x: float, y: float, margin: float = 4.0) -> Track | None:
    """The track whose box holds the frame point (x, y) (within ``margin`` pixels); of several,
    the smallest box (the one in front, for people in a crowd). None where there is none."""
    best: Track | None = None
    best_area = np.inf
    for t in tracking.tracks:
        x0, y0, x1, y1 = (float(v) for v in t.xyxy)
        if x0 - margin <= x <= x1 + margin and y0 - margin <= y <= y1 + margin:
            area = (x1 - x0) * (y1 - y0)
            if area < best_area:
                best, best_area = t, area
    return best


def tracks_summary(view: TracksView) -> str:
    """``tracks: 5 counted · 1 static (dimmed) · 7 raw detections`` for the text block."""
    t = view.tracking
    counted = sum(1 for tr in t.tracks if tr.counted)
    static = sum(1 for tr in t.tracks if tr.static and not tr.allowed)
    allowed = sum(1 for tr in t.tracks if tr.static and tr.allowed)
    excluded = sum(1 for tr in t.tracks if not tr.counted and not tr.static)
    confirmed = "warming up" if t.confirmed_count is None and t.unknown_reason == "warming up" else None
    parts = [f"tracks: {counted} counted" if confirmed is None else f"tracks: {confirmed}"]
    if static:
        parts.append(f"{static} static (dimmed, right-click to count)")
    if allowed:
        parts.append(f"{allowed} static counted by the operator")
    if excluded:
        parts.append(f"{excluded} excluded")
    raw = "unknown" if t.raw_count is None else str(t.raw_count)
    parts.append(f"{raw} raw detections")
    return " · ".join(parts)


NOT_COUNTED_YET = "not counted yet — restart to apply"
"""The label of a line drawn or edited in the window that the running pipeline does not count."""


def line_summary(name: str, counts: Mapping[str, LineCount] | None, pending: bool = False) -> str:
    """``walkway: in 5 · out 3``, or unknown (tracking off, or counts unknown); ``pending``: the
    run does not count this line as drawn (added or edited since it started): no count at all."""
    if pending:
        return f"{name}: {NOT_COUNTED_YET}"
    lc = None if counts is None else counts.get(name)
    if lc is None:
        return f"{name}: in/out unknown"
    return f"{name}: in {lc.in_count} · out {lc.out_count}"


def _font(painter: QPainter, height: float, divisor: int = 55) -> None:
    font = QFont()
    font.setPixelSize(max(10, int(height // divisor)))
    font.setBold(True)
    painter.setFont(font)


def _label(painter: QPainter, at: QPointF, text: str, color: QColor, bg_alpha: int = 170) -> None:
    """Text on a dark box whose bottom-left is ``at``."""
    m = painter.fontMetrics()
    box = QRectF(at.x(), at.y() - m.height(), m.horizontalAdvance(text) + 6, m.height())
    painter.setPen(Qt.PenStyle.NoPen)
    painter.setBrush(QBrush(QColor(0, 0, 0, bg_alpha)))
    painter.drawRect(box)
    painter.setPen(color)
    painter.drawText(QPointF(box.x() + 3, box.y() + m.ascent()), text)


def _track_style(track: Track, fresh: bool, width: float) -> tuple[QPen, QColor]:
    dimmed = not track.counted  # static (not allowed) or excluded
    color = QColor(*(STATIC_COLOR if dimmed else TRACK_COLOR))
    if not fresh:
        color.setAlpha(STALE_ALPHA)
    pen = QPen(color, width if not dimmed else max(1.0, width * 0.75))
    # dotted: not counted (static); dashed: another frame's track; both: a dash-dot
    if dimmed and not fresh:
        pen.setStyle(Qt.PenStyle.DashDotLine)
    elif dimmed:
        pen.setStyle(Qt.PenStyle.DotLine)
    elif not fresh:
        pen.setStyle(Qt.PenStyle.DashLine)
    return pen, color


def track_label(track: Track) -> str:
    """``#12``, ``#12 static``, ``#12 static, counted`` (operator override or allow zone), ``#12 excluded``."""
    if track.static:
        return f"#{track.id} static, counted" if track.allowed else f"#{track.id} static"
    return f"#{track.id}" if track.counted else f"#{track.id} excluded"


def draw_tracks(painter: QPainter, view: TracksView, sx: float, sy: float, height: float, width: float = 2.0) -> None:
    """Every track of ``view``: box, id label and trail (its last centres); static tracks dotted
    grey, another frame's tracks dashed and faded (see the module docstring)."""
    _font(painter, height, 60)
    painter.save()
    try:
        for track in view.tracking.tracks:
            pen, color = _track_style(track, view.fresh, width)
            x0, y0, x1, y1 = (float(v) for v in track.xyxy)
            painter.setBrush(Qt.BrushStyle.NoBrush)
            painter.setPen(pen)
            painter.drawRect(QRectF(x0 * sx, y0 * sy, (x1 - x0) * sx, (y1 - y0) * sy))
            if len(track.trail) >= 2:
                trail_pen = QPen(color, max(1.0, width * 0.75))
                trail_pen.setStyle(pen.style())
                painter.setPen(trail_pen)
                painter.drawPolyline(QPolygonF([QPointF(float(px) * sx, float(py) * sy) for px, py in track.trail]))
            label_color = QColor(color)
            label_color.setAlpha(255 if view.fresh else 200)
            _label(painter, QPointF(x0 * sx, y0 * sy), track_label(track), label_color, 170 if view.fresh else 110)
    finally:
        painter.restore()


def draw_lines(
    painter: QPainter,
    lines: Sequence[ScreenLine],
    view: TracksView | None,
    sx: float,
    sy: float,
    height: float,
    width: float = 3.0,
    pending: Collection[str] = (),
) -> None:
    """Each counting line with an ``in`` arrow on its in side and its totals. Totals are white only
    when they are the frame's own (``view.fresh``); another frame's totals are amber with the frame,
    and without tracking (or before it runs) they are unknown, never 0. Lines named in ``pending``
    (drawn or edited in the window, not counted by the run) say :data:`NOT_COUNTED_YET` instead."""
    _font(painter, height, 50)
    counts = None if view is None else view.tracking.line_counts
    painter.save()
    try:
        for line in lines:
            a = QPointF(float(line.a[0]) * sx, float(line.a[1]) * sy)
            b = QPointF(float(line.b[0]) * sx, float(line.b[1]) * sy)
            painter.setPen(QPen(QColor(*LINE_COLOR), width, Qt.PenStyle.SolidLine, Qt.PenCapStyle.RoundCap))
            painter.drawLine(a, b)
            # the "in" arrow at the middle, pointing into the in side
            mid = QPointF((a.x() + b.x()) / 2, (a.y() + b.y()) / 2)
            n = QPointF(float(line.in_normal[0]) * sx, float(line.in_normal[1]) * sy)
            norm = max(1e-9, (n.x() ** 2 + n.y() ** 2) ** 0.5)
            size = max(14.0, height / 18)
            tip = QPointF(mid.x() + n.x() / norm * size, mid.y() + n.y() / norm * size)
            painter.drawLine(mid, tip)
            along = QPointF(b.x() - a.x(), b.y() - a.y())
            along_n = max(1e-9, (along.x() ** 2 + along.y() ** 2) ** 0.5)
            ux, uy = along.x() / along_n, along.y() / along_n
            back = QPointF(tip.x() - n.x() / norm * size * 0.4, tip.y() - n.y() / norm * size * 0.4)
            head = QPolygonF([tip, QPointF(back.x() + ux * size * 0.3, back.y() + uy * size * 0.3),
                              QPointF(back.x() - ux * size * 0.3, back.y() - uy * size * 0.3)])  # fmt: skip
            painter.setBrush(QBrush(QColor(*LINE_COLOR)))
            painter.drawPolygon(head)
            painter.setPen(QColor(*LINE_COLOR))
            m = painter.fontMetrics()
            painter.drawText(QPointF(tip.x() - m.horizontalAdvance("in") / 2 + n.x() / norm * m.height() * 0.9,
                                     tip.y() + m.ascent() / 2 + n.y() / norm * m.height() * 0.9), "in")  # fmt: skip
            waiting = line.name in pending
            text = line_summary(line.name, counts, waiting)
            fresh = view is not None and view.fresh and line.name in (counts or {}) and not waiting
            if view is not None and not view.fresh and line.name in (counts or {}) and not waiting:
                text += f"  (frame {view.frame_index})"
            # the label by the lower end (the text block holds the top left), kept on the image
            low = a if (a.y(), a.x()) >= (b.y(), b.x()) else b
            tw = m.horizontalAdvance(text) + 6
            device = painter.device()
            right = float(device.width()) if device is not None else low.x() + tw
            bottom = float(device.height()) if device is not None else low.y()
            x = min(max(0.0, low.x() + 6), max(0.0, right - tw))
            y = min(max(float(m.height()), low.y() - 8), bottom - 2)
            _label(painter, QPointF(x, y), text, QColor(255, 255, 255) if fresh else QColor(*STALE_COLOR))
    finally:
        painter.restore()


def line_counts_of(counts: CountResult) -> Mapping[str, LineCount] | None:
    """Line totals carried by ``counts`` (None: tracking off or not carried)."""
    t = tracking_of(counts)
    return None if t is None else t.line_counts


def occupancy_of(counts: CountResult) -> Mapping[str, int | None] | None:
    """Zone occupancy (counted tracks whose feet are inside) carried by ``counts`` (None: no tracking)."""
    t = tracking_of(counts)
    return None if t is None else t.occupancy
