"""Drawing a :class:`FusedResult` over its frame, at the displayed resolution.

Pure functions: they take a result and a target size and return a new ``QImage``; the frame array
is never modified. The 4K frame is first scaled to the display size (nearest-neighbour by default:
~5 ms for 4K -> 720p, where a smooth scale costs ~40 ms), then every layer is drawn at that size
with boxes and masks scaled from frame pixels, so the cost follows the window, not the stream.
Masks and the heatmap become premultiplied ARGB32 layers built with NumPy and composited by a
``QPainter`` on the CPU, as are boxes and text; nothing here touches the GPU. At 4K -> 1280x720
with every layer on, a frame costs ~15-20 ms on one core, most of it the frame scale and text.

What a layer shows is labelled with whose it is (the count contract, ``docs/ARCHITECTURE.md``):

- boxes and the heatmap come from each branch's newest result (``FusedResult.overlays``); one older
  than the fusion's ``max_count_age_ms`` and not of the frame on screen is drawn dashed and faded,
  with its age, never as if it were the frame's own (:func:`stale_layers`);
- tracks, line totals, zone occupancy and the hybrid's regions are part of the counts, which under
  ASYNC_OVERLAY belong to ``counts_frame_index``: another frame's are dashed and amber
  (:mod:`ui.tracks`);
- density is shown as the calibrated number with the calibration in force
  (``CountResult.calibration``), and with the heatmap on, a faint grid of the hybrid's regions
  marks which source counted each: ``D`` density, ``K`` detections (``CountResult.region_source``).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray
from PySide6.QtCore import QPointF, QRectF, Qt
from PySide6.QtGui import QBrush, QColor, QFont, QImage, QPainter, QPen

from config.schema import LineConfig
from pipeline.types import (
    GLOBAL_SOURCE,
    CountResult,
    Detections,
    FusedResult,
    MetadataRecord,
    OverlayInfo,
    missing_reason,
)
from ui.qt_fixes import apply_qt_workarounds
from ui.tracks import (
    TracksView,
    draw_lines,
    draw_tracks,
    line_counts_of,
    line_summary,
    resolve_lines,
    tracks_summary,
    tracks_view,
)

if TYPE_CHECKING:
    from config.schema import PipelineConfig

RGB = tuple[int, int, int]

GLOBAL_COLOR: RGB = (0, 200, 255)
"""Boxes and masks of detections from the global (letterbox) pass."""
TILE_COLOR: RGB = (255, 150, 0)
"""Boxes and masks of detections from a tile."""
PARTIAL_COLOR: RGB = (255, 80, 80)

# Blue -> cyan -> green -> yellow -> red, evenly spaced: reads well over any video.
_HEAT_STOPS = np.array([[0, 0, 255], [0, 255, 255], [0, 255, 0], [255, 255, 0], [255, 0, 0]], np.float32)
HEAT_LUT: NDArray[np.uint8] = np.stack(
    [np.interp(np.linspace(0, 1, 256), np.linspace(0, 1, len(_HEAT_STOPS)), _HEAT_STOPS[:, c]) for c in range(3)],
    axis=1,
).astype(np.uint8)
"""(256, 3) uint8 colour map of the density heatmap, low to high."""


@dataclass(frozen=True, slots=True)
class OverlayOptions:
    """Which layers to draw and how.

    ``mask_alpha`` and ``heatmap_alpha`` are opacities in 0..1 (the heatmap's scales with the
    cell's density relative to the frame's densest cell). ``smooth`` scales the frame with
    bilinear filtering (better looking, ~8x slower at 4K).
    """

    boxes: bool = True
    masks: bool = True
    heatmap: bool = False
    text: bool = True
    tracks: bool = True
    """Track ids, trails and static flags (``CountResult.tracking``), and the counting lines."""
    smooth: bool = False
    mask_alpha: float = 0.4
    heatmap_alpha: float = 0.6
    box_width: float = 2.0


BRANCH_LAYERS: Mapping[str, tuple[str, ...]] = {
    "global": ("global",),
    "tiles": ("tiles",),
    "global+tiles": ("global", "tiles"),
    "density": ("density",),
}
"""Which drawn layers (``global`` boxes, ``tiles`` boxes, the ``density`` heatmap) a branch of
each role (``pipeline.frame_counter.branch_role``) feeds."""


@dataclass(frozen=True, slots=True)
class OverlayScene:
    """What the run's config adds to the drawing (one per run; :meth:`from_config`).

    ``max_overlay_age_ms``: the fusion's ``max_count_age_ms``; a branch overlay older than this that
    is not of the frame on screen is drawn stale (dashed, faded, with its age). None: never.
    ``roles``: branch name -> role (``global``, ``tiles``, ``global+tiles``, ``density``), which
    says which layer each overlay feeds; a branch without a role feeds every layer (so an old one
    can only make more drawn stale, never less). ``lines``: the tracker's counting lines (the
    text block lists their totals). ``drawn_lines``: the lines drawn on the video when they are not
    ``lines`` (the window's line editor, :mod:`ui.lines`); ``pending_lines``: names of drawn lines
    the run does not count as drawn, shown "not counted yet", never with a count.
    """

    max_overlay_age_ms: float | None = None
    roles: Mapping[str, str] = field(default_factory=dict)
    lines: tuple[LineConfig, ...] = ()
    drawn_lines: tuple[LineConfig, ...] | None = None
    pending_lines: frozenset[str] = frozenset()

    @classmethod
    def from_config(cls, cfg: PipelineConfig | None) -> OverlayScene:
        """The scene of a run of ``cfg`` (an empty scene for None: nothing known of the run yet)."""
        if cfg is None:
            return cls()
        from pipeline.frame_counter import branch_role

        roles = {name: str(branch_role(cfg, name)) for name, b in cfg.branches.items() if b.enabled}
        lines = tuple(cfg.tracking.lines) if cfg.tracking.enabled else ()
        return cls(cfg.fusion.max_count_age_ms, roles, lines)


def stale_layers(result: FusedResult, scene: OverlayScene) -> dict[str, tuple[OverlayInfo, ...]]:
    """Per drawn layer (``global``, ``tiles``, ``density``), the branch overlays feeding it that are
    stale: older than ``scene.max_overlay_age_ms`` and not of the frame on screen (a STRICT_SYNC
    frame's own boxes are as old as its pixels, and match them). Layers with none are left out."""
    limit = scene.max_overlay_age_ms
    out: dict[str, tuple[OverlayInfo, ...]] = {}
    if limit is None:
        return out
    idx = result.frame.frame_index
    for o in result.overlays:
        if o.frame_index == idx or o.lag_ms <= limit:
            continue
        role = scene.roles.get(o.branch, "")
        for layer in BRANCH_LAYERS.get(role, ("global", "tiles", "density")):
            out[layer] = (*out.get(layer, ()), o)
    return out


def _age_text(infos: Sequence[OverlayInfo]) -> str:
    oldest = max(infos, key=lambda o: o.lag_ms)
    return f"{oldest.lag_ms / 1000:.1f} s old"


def fit_size(frame_w: int, frame_h: int, max_w: int, max_h: int) -> tuple[int, int]:
    """The largest (w, h) with the frame's aspect ratio that fits in (max_w, max_h); at least 1x1."""
    if frame_w <= 0 or frame_h <= 0:
        raise ValueError(f"fit_size: frame size must be positive, got {frame_w}x{frame_h}")
    scale = min(max_w / frame_w, max_h / frame_h)
    return max(1, round(frame_w * scale)), max(1, round(frame_h * scale))


def qimage_to_rgb(image: QImage) -> NDArray[np.uint8]:
    """A (H, W, 3) uint8 RGB copy of ``image`` (any format)."""
    img = image.convertToFormat(QImage.Format.Format_RGB888)
    h, w, bpl = img.height(), img.width(), img.bytesPerLine()
    rows = np.frombuffer(img.constBits(), np.uint8, count=bpl * h).reshape(h, bpl)  # rows padded to 4 bytes
    return rows[:, : 3 * w].reshape(h, w, 3).copy()


def _scaled_frame(image: NDArray[np.uint8] | None, size: tuple[int, int], smooth: bool) -> QImage:
    w, h = size
    if image is None:
        out = QImage(w, h, QImage.Format.Format_RGB32)
        out.fill(QColor(24, 24, 24))
        return out
    arr = np.ascontiguousarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"render_overlay: expected an (H, W, 3) uint8 frame, got {arr.shape} {arr.dtype}")
    ih, iw, _ = arr.shape
    src = QImage(arr.data, iw, ih, 3 * iw, QImage.Format.Format_RGB888)
    if (iw, ih) != (w, h):
        mode = Qt.TransformationMode.SmoothTransformation if smooth else Qt.TransformationMode.FastTransformation
        src = src.scaled(w, h, Qt.AspectRatioMode.IgnoreAspectRatio, mode)
    # A new RGB32 image either way: never draw on the caller's array, and RGB32 is the format
    # QPainter composites fastest onto (~2x RGB888).
    return src.convertToFormat(QImage.Format.Format_RGB32)


def _scaled_boxes(xyxy: NDArray[np.number], sx: float, sy: float) -> NDArray[np.float64]:
    return np.asarray(xyxy, np.float64) * np.array([sx, sy, sx, sy])


def _source_colors(source: NDArray[np.int32]) -> list[RGB]:
    return [GLOBAL_COLOR if s == GLOBAL_SOURCE else TILE_COLOR for s in source.tolist()]


def argb32_premultiplied(color: RGB, alpha: float) -> int:
    """One ``Format_ARGB32_Premultiplied`` pixel (0xAARRGGBB, colour scaled by alpha) as an int."""
    a = round(float(np.clip(alpha, 0.0, 1.0)) * 255)
    r, g, b = (round(c * a / 255) for c in color)
    return (a << 24) | (r << 16) | (g << 8) | b


def mask_layer(detections: Detections, size: tuple[int, int], sx: float, sy: float, alpha: float) -> NDArray[np.uint32]:
    """(h, w) premultiplied ARGB32 layer of every mask, for ``size`` = (w, h) display pixels.

    Each mask is resized (nearest neighbour) to its ``mask_xyxy`` box scaled by (sx, sy) and
    filled with its source's colour at ``alpha``; elsewhere the layer is clear. Where masks overlap
    the later one wins, so overlaps do not darken. One uint32 write per pixel keeps this at tens of
    microseconds a mask (per-channel blending in NumPy costs ~10x more).
    """
    w, h = size
    layer = np.zeros((h, w), np.uint32)
    if detections.masks is None or detections.mask_xyxy is None or not len(detections):
        return layer
    colors = {c: argb32_premultiplied(c, alpha) for c in (GLOBAL_COLOR, TILE_COLOR)}
    boxes = np.rint(_scaled_boxes(detections.mask_xyxy, sx, sy)).astype(np.int64)
    for mask, box, color in zip(detections.masks, boxes, _source_colors(detections.source), strict=True):
        if mask.size == 0:
            continue
        x0, y0, x1, y1 = box.tolist()
        bw, bh = max(1, x1 - x0), max(1, y1 - y0)
        cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x0 + bw, w), min(y0 + bh, h)
        if cx1 <= cx0 or cy1 <= cy0:
            continue
        mh, mw = mask.shape
        # Nearest-neighbour resize of the mask to its box, only for the part inside the image.
        rows = np.minimum((np.arange(cy0 - y0, cy1 - y0) + 0.5) * mh / bh, mh - 1).astype(np.intp)
        cols = np.minimum((np.arange(cx0 - x0, cx1 - x0) + 0.5) * mw / bw, mw - 1).astype(np.intp)
        np.putmask(layer[cy0:cy1, cx0:cx1], mask[rows][:, cols], colors[color])
    return layer


@functools.lru_cache(maxsize=8)
def _heat_lut(alpha: float) -> NDArray[np.uint32]:
    # sqrt: sparse crowds (a few people on a big map) stay visible next to the densest cell.
    a = np.sqrt(np.linspace(0.0, 1.0, 256)) * float(np.clip(alpha, 0.0, 1.0))
    a8 = np.rint(a * 255).astype(np.uint32)
    rgb = np.rint(HEAT_LUT * a[:, None]).astype(np.uint32)  # premultiplied
    lut = (a8 << 24) | (rgb[:, 0] << 16) | (rgb[:, 1] << 8) | rgb[:, 2]
    return lut.astype(np.uint32)


def heatmap_layer(density: NDArray[np.float32], alpha: float) -> NDArray[np.uint32]:
    """(H', W') premultiplied ARGB32 of a density map: colour and opacity grow with density.

    Normalised to the map's densest cell, so the layer shows where people are, not how many;
    empty (and non-finite) cells are clear. The caller scales it to the frame (one cell = stride px).
    """
    d = np.asarray(density, np.float32)
    finite = np.isfinite(d)
    peak = float(d[finite].max()) if finite.any() else 0.0
    if peak <= 0:
        return np.zeros(d.shape, np.uint32)
    idx = np.clip(np.where(finite, d, 0.0) * (255.0 / peak), 0, 255).astype(np.uint8)
    return _heat_lut(alpha)[idx]


def _draw_layer(painter: QPainter, layer: NDArray[np.uint32], target: QRectF, smooth: bool) -> None:
    h, w = layer.shape
    if h == 0 or w == 0:
        return
    data = np.ascontiguousarray(layer)
    image = QImage(data.data, w, h, 4 * w, QImage.Format.Format_ARGB32_Premultiplied)
    painter.save()
    painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, smooth)
    painter.drawImage(target, image)  # draws synchronously: ``data`` outlives the QImage's use
    painter.restore()


STALE_BOX_ALPHA = 110
"""Opacity (0..255) of boxes from a stale overlay."""


def _draw_boxes(
    painter: QPainter,
    detections: Detections,
    sx: float,
    sy: float,
    width: float,
    stale: Mapping[str, Sequence[OverlayInfo]] | None = None,
    height: int = 0,
) -> None:
    """Boxes in their source's colour; those of a ``stale`` layer (``global``, ``tiles``) dashed and
    faded, each with its overlay's age."""
    stale = stale or {}
    boxes = _scaled_boxes(detections.xyxy, sx, sy)
    pens = {c: QPen(QColor(*c), width) for c in (GLOBAL_COLOR, TILE_COLOR)}
    stale_pens = {}
    for c in (GLOBAL_COLOR, TILE_COLOR):
        faded = QColor(*c)
        faded.setAlpha(STALE_BOX_ALPHA)
        stale_pens[c] = QPen(faded, width, Qt.PenStyle.DashLine)
    ages = {layer: _age_text(infos) for layer, infos in stale.items() if infos}
    if ages:
        font = QFont()
        font.setPixelSize(max(10, height // 65))
        painter.setFont(font)
    painter.setBrush(Qt.BrushStyle.NoBrush)
    for (x0, y0, x1, y1), color, src in zip(boxes.tolist(), _source_colors(detections.source), detections.source.tolist(), strict=True):
        layer = "global" if src == GLOBAL_SOURCE else "tiles"
        if layer in ages:
            painter.setPen(stale_pens[color])
            painter.drawRect(QRectF(x0, y0, x1 - x0, y1 - y0))
            painter.setPen(QColor(*UNKNOWN_COLOR))
            painter.drawText(QPointF(x0 + 2, y1 - 3), ages[layer])
        else:
            painter.setPen(pens[color])
            painter.drawRect(QRectF(x0, y0, x1 - x0, y1 - y0))


def draw_regions(painter: QPainter, counts: CountResult, size: tuple[int, int], fresh: bool) -> None:
    """A faint grid of the hybrid's regions with, in each, ``D`` (counted by density) or ``K``
    (counted by detections) and the region's count; dashed and amber when the counts are another
    frame's. Nothing when the counts carry no regions (unknown)."""
    src = counts.region_source
    if src.size == 0:
        return
    rows, cols = src.shape
    w, h = size
    cw, ch = w / cols, h / rows
    grid = QColor(255, 255, 255, 70) if fresh else QColor(*UNKNOWN_COLOR, 90)
    painter.save()
    try:
        painter.setPen(QPen(grid, 1.0, Qt.PenStyle.SolidLine if fresh else Qt.PenStyle.DashLine))
        painter.setBrush(Qt.BrushStyle.NoBrush)
        for r in range(1, rows):
            painter.drawLine(QPointF(0, r * ch), QPointF(w, r * ch))
        for c in range(1, cols):
            painter.drawLine(QPointF(c * cw, 0), QPointF(c * cw, h))
        font = QFont()
        font.setPixelSize(max(10, int(min(cw, ch) // 7)))
        font.setBold(True)
        painter.setFont(font)
        m = painter.fontMetrics()
        for r in range(rows):
            for c in range(cols):
                density = bool(src[r, c])
                value = float(counts.region_counts[r, c])
                text = f"{'D' if density else 'K'} {value:.1f}" if density else f"K {value:.0f}"
                colour = QColor(255, 120, 200, 200) if density else QColor(0, 200, 255, 170)
                if not fresh:
                    colour = QColor(*UNKNOWN_COLOR, 170)
                painter.setPen(colour)
                painter.drawText(QPointF(c * cw + 4, (r + 1) * ch - m.descent() - 3), text)
    finally:
        painter.restore()


UNKNOWN_COLOR: RGB = (255, 190, 60)
"""Unknown or stale counts: amber, never drawn as a fresh number."""

DIM: RGB = (200, 200, 200)


def density_text(c: CountResult, has_density: bool = True) -> str:
    """The density figure as counted, with the calibration in force: ``density 12.3 (scale 0.42,
    fit on 96 samples)``, ``density 4.0 (prior scale 1.00, 3 samples: too few to fit)``, or
    ``density 7.1 (uncalibrated)``; ``density unknown`` / ``density n/a`` (no density branch)."""
    if c.density is None:
        return "density unknown" if has_density else "density n/a"
    cal = getattr(c, "calibration", None)
    if cal is None:
        return f"density {c.density:.1f} (uncalibrated)"
    if cal.source == "fit":
        how = f"scale {cal.scale:.2f}, fit on {cal.samples} samples"
    else:
        how = f"{cal.source} scale {cal.scale:.2f}, {cal.samples} samples: too few to fit"
    return f"density {c.density:.1f} ({how})"


def _count_text(c: CountResult, has_density: bool = True) -> tuple[str, str]:
    density = density_text(c, has_density)
    if c.fused is None:
        det = "" if c.detection is None else f"   (detections {c.detection}, {density})"
        return "people unknown", f"({c.unknown_reason}){det}"
    det = "unknown" if c.detection is None else str(c.detection)
    return f"people {c.fused:.1f}   (policy {c.policy})", f"detections {det}   {density}"


def _regions_text(c: CountResult) -> str | None:
    if c.region_source.size == 0 or c.policy != "hybrid":
        return None
    d = int(np.count_nonzero(c.region_source))
    return f"regions: {d} by density (D), {c.region_source.size - d} by detections (K)"


def shown_counts(result: FusedResult, metadata: MetadataRecord | None = None) -> tuple[CountResult | None, int | None, float | None]:
    """The counts drawn over ``result`` with the frame they belong to and their age: the result's
    own (``counts_frame_index``), or for a raw RAW_STREAM_WITH_METADATA frame the newest metadata
    record's (None before the first)."""
    if result.raw:
        if metadata is None:
            return None, None, None
        return metadata.counts, metadata.frame_index, metadata.counts_age_ms
    return result.counts, result.counts_frame_index, result.counts_age_ms


def counts_lines(
    result: FusedResult, metadata: MetadataRecord | None = None, scene: OverlayScene | None = None
) -> list[tuple[str, RGB]]:
    """The text block of a result, line by line with its colour.

    The count contract on screen: a count is drawn white only when it is the count of the frame on
    screen; counts of an older frame (ASYNC_OVERLAY) say which frame and how old; unknown counts
    say why, in amber. A raw RAW_STREAM_WITH_METADATA frame shows the newest ``metadata`` record's
    counts, labelled with its frame. Density is the calibrated figure with its calibration; with
    tracking, the tracks (counted, static, raw detections) and each line's totals, white only when
    the frame's own. Then the missing branches, each branch's overlay age, and the overlays
    older than ``scene.max_overlay_age_ms`` (stale: drawn dashed).
    """
    scene = scene or OverlayScene()
    white: RGB = (255, 255, 255)
    idx = result.frame.frame_index
    # None is "unknown" when the run has a density branch, "n/a" when it has none (or no run is known)
    has_density = "density" in scene.roles.values()
    lines: list[tuple[str, RGB]] = []
    counts, _, counts_age = shown_counts(result, metadata)
    if result.raw:
        if metadata is None:
            lines.append(("people: waiting for the first metadata record", UNKNOWN_COLOR))
        else:
            head, detail = _count_text(metadata.counts, has_density)
            color = white if metadata.frame_index == idx and metadata.counts.known else UNKNOWN_COLOR
            lines.append((head, color if metadata.counts.known else UNKNOWN_COLOR))
            lines.append((detail, DIM))
            if metadata.frame_index != idx:
                lines.append((f"counts of frame {metadata.frame_index} ({idx - metadata.frame_index} frames behind)", UNKNOWN_COLOR))
    else:
        c = result.counts
        head, detail = _count_text(c, has_density)
        fresh = c.known and result.counts_frame_index == idx
        lines.append((head, white if fresh else UNKNOWN_COLOR))
        lines.append((detail, DIM))
        if c.known and result.counts_frame_index is not None and result.counts_frame_index != idx:
            age = "" if result.counts_age_ms is None else f", {result.counts_age_ms:.0f} ms old"
            lines.append((f"counts of frame {result.counts_frame_index}{age}", UNKNOWN_COLOR))
    if counts is not None:
        regions = _regions_text(counts)
        if regions:
            lines.append((regions, DIM))
        view = tracks_view(counts, idx, counts_age)
        if view is not None:
            lines.append((tracks_summary(view), white if view.fresh else UNKNOWN_COLOR))
            if view.label:
                lines.append((view.label, UNKNOWN_COLOR))
        totals = line_counts_of(counts)
        for line in scene.lines:
            own = view is not None and view.fresh and totals is not None and line.name in totals
            lines.append((line_summary(line.name, totals), white if own else UNKNOWN_COLOR))
    elif scene.lines:
        lines.extend((line_summary(line.name, None), UNKNOWN_COLOR) for line in scene.lines)
    for line in scene.drawn_lines or ():
        if line.name in scene.pending_lines:
            lines.append((line_summary(line.name, None, pending=True), UNKNOWN_COLOR))
    lines.append((f"{result.strategy}   frame {idx}", DIM))
    if result.missing:
        lines.append(("PARTIAL: " + missing_reason(result.missing), PARTIAL_COLOR))
    if result.overlays:
        ages = "   ".join(f"{o.branch} {o.lag_ms:.0f} ms" for o in result.overlays)
        lines.append((f"age: {ages}", DIM))
    stale = {o.branch: o for infos in stale_layers(result, scene).values() for o in infos}
    if stale:
        limit = scene.max_overlay_age_ms or 0.0
        what = "   ".join(f"{o.branch} of frame {o.frame_index}, {o.lag_ms / 1000:.1f} s old" for o in stale.values())
        lines.append((f"STALE overlay (> {limit / 1000:.1f} s, drawn dashed): {what}", UNKNOWN_COLOR))
    return lines


def _draw_text(painter: QPainter, lines: Sequence[tuple[str, RGB]], height: int) -> None:
    font = QFont()
    font.setPixelSize(max(11, height // 45))
    font.setBold(True)
    painter.setFont(font)
    metrics = painter.fontMetrics()
    pad = max(4, metrics.height() // 3)
    legend = [("global", GLOBAL_COLOR), ("tile", TILE_COLOR)]
    legend_w = sum(metrics.horizontalAdvance(f"■ {t}  ") for t, _ in legend)
    box_w = max([legend_w, *(metrics.horizontalAdvance(t) for t, _ in lines)]) + 2 * pad
    box_h = (len(lines) + 1) * metrics.height() + 2 * pad
    painter.setPen(Qt.PenStyle.NoPen)
    painter.setBrush(QBrush(QColor(0, 0, 0, 160)))
    painter.drawRect(QRectF(0, 0, box_w, box_h))
    y = pad + metrics.ascent()
    for text, color in lines:
        painter.setPen(QColor(*color))
        painter.drawText(QPointF(pad, y), text)
        y += metrics.height()
    x = float(pad)
    for text, color in legend:
        painter.setPen(QColor(*color))
        label = f"■ {text}  "
        painter.drawText(QPointF(x, y), label)
        x += metrics.horizontalAdvance(label)


def render_overlay(
    result: FusedResult,
    size: tuple[int, int],
    options: OverlayOptions = OverlayOptions(),
    image: NDArray[np.uint8] | None = None,
    metadata: MetadataRecord | None = None,
    scene: OverlayScene = OverlayScene(),
) -> QImage:
    """Draw ``result`` over its frame at ``size`` (w, h) and return it as a new RGB32 image.

    ``metadata``: the newest metadata record, whose counts a raw RAW_STREAM_WITH_METADATA frame
    shows (see :func:`counts_lines`). ``scene``: what the run's config adds (counting lines, the
    age beyond which an overlay is stale, branch roles; :class:`OverlayScene`).

    ``image`` replaces ``result.frame_image`` (for example the last frame seen, when a metadata-only
    result carries no pixels); with neither, the layers are drawn on a dark background. Boxes,
    masks and the density map are in frame pixels (``result.frame.width`` x ``height``) and are
    scaled to ``size``. The inputs are not modified.
    """
    apply_qt_workarounds()
    w, h = size
    if w <= 0 or h <= 0:
        raise ValueError(f"render_overlay: size must be positive, got {w}x{h}")
    frame = image if image is not None else result.frame_image
    out = _scaled_frame(frame, size, options.smooth)
    sx, sy = w / result.frame.width, h / result.frame.height
    dets = result.detections
    full = QRectF(0, 0, w, h)
    stale = stale_layers(result, scene)
    counts, _counts_index, counts_age = shown_counts(result, metadata)
    view: TracksView | None = None if counts is None else tracks_view(counts, result.frame.frame_index, counts_age)
    painter = QPainter(out)
    try:
        # Bottom to top: frame, heatmap (and its regions), masks, boxes, tracks, lines, text.
        if options.heatmap and result.density is not None:
            stride = result.density.stride
            dh, dw = result.density.density.shape
            # The map may extend past the frame (padding): cells keep their stride, the painter clips.
            target = QRectF(0, 0, dw * stride * sx, dh * stride * sy)
            # a stale map at half its opacity: where people were, not where they are
            alpha = options.heatmap_alpha * (0.5 if "density" in stale else 1.0)
            _draw_layer(painter, heatmap_layer(result.density.density, alpha), target, smooth=True)
            if counts is not None:
                own = _counts_index == result.frame.frame_index
                draw_regions(painter, counts, size, fresh=own)
        if options.masks and dets.has_masks and len(dets):
            _draw_layer(painter, mask_layer(dets, size, sx, sy, options.mask_alpha), full, smooth=False)
        if options.boxes and len(dets):
            _draw_boxes(painter, dets, sx, sy, options.box_width, stale, h)
        if options.tracks:
            if view is not None:
                draw_tracks(painter, view, sx, sy, h, options.box_width)
            drawn = scene.lines if scene.drawn_lines is None else scene.drawn_lines
            if drawn:
                draw_lines(painter, resolve_lines(drawn, (result.frame.width, result.frame.height)), view, sx, sy, h,
                           pending=scene.pending_lines)  # fmt: skip
        if options.text:
            _draw_text(painter, counts_lines(result, metadata, scene), h)
    finally:
        painter.end()
    return out
