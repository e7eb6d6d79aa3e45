"""Preprocessing geometry: pure math shared by the CPU and GPU preprocessors and post-processing.

A :class:`PreprocessPlan` says, for each of the N tensors of one input spec, which part of the
frame it shows and how: tensor pixel ``(u, v)`` of tensor ``i`` samples the frame at

    x = (u - pad_x + 0.5) / scale_x - 0.5 + origin_x[i]
    y = (v - pad_y + 0.5) / scale_y - 0.5 + origin_y[i]

(half-pixel centres, as OpenCV's bilinear resize) when ``(u, v)`` lies in the content rectangle
``[pad_x, pad_x + content_w[i]) x [pad_y, pad_y + content_h[i])``; every other tensor pixel is the
pad value. A point in tensor coordinates maps back to the frame by
``x = (u - pad_x) / scale_x + origin_x[i]`` (the edge convention for box corners).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import NDArray

SpecKind = Literal["letterbox", "tiles", "grid"]


@dataclass(frozen=True, slots=True)
class PreprocessPlan:
    """Geometry of one input spec on one frame size.

    - ``origins``: (N, 2) float64, frame pixel of each tensor's content origin (x, y).
    - ``content_wh``: (N, 2) int64, size of the content rectangle in tensor pixels.
    - ``scale``: (sx, sy) tensor pixels per frame pixel (1.0 for tiles; a grid's ``upscale``, 1.0
      by default).
    - ``pad``: (pad_x, pad_y) tensor offset of the content (letterbox padding; 0 for tiles/grid).
    """

    kind: SpecKind
    frame_wh: tuple[int, int]
    out_wh: tuple[int, int]
    origins: NDArray[np.float64]
    content_wh: NDArray[np.int64]
    scale: tuple[float, float]
    pad: tuple[int, int]
    grid_shape: tuple[int, int]
    """(rows, cols) of tiles or grid cells of the whole plan; (1, 1) for a letterbox."""
    indices: NDArray[np.int64] | None = None
    """For a subset of a tiles/grid plan (:meth:`subset`): the index of each tensor in the whole
    plan; None for a whole plan."""

    @property
    def count(self) -> int:
        return len(self.origins)

    def subset(self, indices: NDArray[np.integer] | list[int]) -> PreprocessPlan:
        """The plan of some of this plan's tensors (e.g. every 5th density tile); ``indices``
        record where each sits in the whole plan."""
        idx = np.asarray(indices, np.int64)
        if self.indices is not None:
            raise ValueError("PreprocessPlan.subset: already a subset")
        if idx.size and (idx.min() < 0 or idx.max() >= self.count):
            raise ValueError(f"PreprocessPlan.subset: indices out of range 0..{self.count - 1}: {idx.tolist()}")
        return PreprocessPlan(
            kind=self.kind,
            frame_wh=self.frame_wh,
            out_wh=self.out_wh,
            origins=self.origins[idx],
            content_wh=self.content_wh[idx],
            scale=self.scale,
            pad=self.pad,
            grid_shape=self.grid_shape,
            indices=idx,
        )

    def tensor_to_frame(self, xyxy: NDArray[np.floating], index: int | NDArray[np.integer]) -> NDArray[np.float32]:
        """Map boxes (M, 4) in tensor pixels of tensor(s) ``index`` to frame pixels, clipped to the frame."""
        sx, sy = self.scale
        px, py = self.pad
        org = self.origins[index]
        if org.ndim == 1:
            org = np.broadcast_to(org, (len(xyxy), 2))
        out = np.empty((len(xyxy), 4), np.float32)
        out[:, 0] = (xyxy[:, 0] - px) / sx + org[:, 0]
        out[:, 2] = (xyxy[:, 2] - px) / sx + org[:, 0]
        out[:, 1] = (xyxy[:, 1] - py) / sy + org[:, 1]
        out[:, 3] = (xyxy[:, 3] - py) / sy + org[:, 1]
        w, h = self.frame_wh
        np.clip(out[:, 0::2], 0, w, out=out[:, 0::2])
        np.clip(out[:, 1::2], 0, h, out=out[:, 1::2])
        return out

    def content_rects(self) -> NDArray[np.float64]:
        """(N, 4) frame rectangle (xyxy) each tensor shows, clipped to the frame."""
        sx, sy = self.scale
        x0 = self.origins[:, 0]
        y0 = self.origins[:, 1]
        x1 = x0 + self.content_wh[:, 0] / sx
        y1 = y0 + self.content_wh[:, 1] / sy
        w, h = self.frame_wh
        return np.stack([x0, y0, np.minimum(x1, w), np.minimum(y1, h)], axis=1)


DISPLAY_MAX_WH = (1280, 720)
"""The largest picture the window gets from the GPU path (a 4K frame is shown at 1280 x 720)."""


def display_size(frame_w: int, frame_h: int, max_wh: tuple[int, int] = DISPLAY_MAX_WH) -> tuple[int, int]:
    """(w, h) of the picture of a ``frame_w`` x ``frame_h`` frame for a window: the frame's aspect,
    within ``max_wh``, never larger than the frame, even sizes (at least 2)."""
    if frame_w <= 0 or frame_h <= 0:
        raise ValueError(f"display_size: frame size must be positive, got {frame_w}x{frame_h}")
    r = min(1.0, max_wh[0] / frame_w, max_wh[1] / frame_h)
    return max(2, int(frame_w * r) // 2 * 2), max(2, int(frame_h * r) // 2 * 2)


def tile_origins_1d(length: int, tile: int, overlap: float) -> list[int]:
    """Origins of full-size tiles covering ``[0, length)``; the last tile is shifted inward.

    A frame shorter than the tile gets one tile at 0 (padded by the preprocessor).
    """
    if length <= tile:
        return [0]
    stride = max(1, round(tile * (1.0 - overlap)))
    n = math.ceil((length - tile) / stride) + 1
    origins = [i * stride for i in range(n - 1)] + [length - tile]
    return sorted(set(origins))


def plan_letterbox(frame_w: int, frame_h: int, out_w: int, out_h: int) -> PreprocessPlan:
    """The whole frame scaled to fit ``out_w x out_h``, aspect kept, centred, padded."""
    _check_sizes(frame_w, frame_h, out_w, out_h)
    r = min(out_w / frame_w, out_h / frame_h)
    new_w = max(1, min(out_w, round(frame_w * r)))
    new_h = max(1, min(out_h, round(frame_h * r)))
    pad_x = (out_w - new_w) // 2
    pad_y = (out_h - new_h) // 2
    return PreprocessPlan(
        kind="letterbox",
        frame_wh=(frame_w, frame_h),
        out_wh=(out_w, out_h),
        origins=np.zeros((1, 2), np.float64),
        content_wh=np.array([[new_w, new_h]], np.int64),
        scale=(new_w / frame_w, new_h / frame_h),
        pad=(pad_x, pad_y),
        grid_shape=(1, 1),
    )


def plan_tiles(frame_w: int, frame_h: int, tile_w: int, tile_h: int, overlap: float) -> PreprocessPlan:
    """Overlapping full-size tiles at native scale, row-major; edge tiles shifted inward."""
    _check_sizes(frame_w, frame_h, tile_w, tile_h)
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    xs = tile_origins_1d(frame_w, tile_w, overlap)
    ys = tile_origins_1d(frame_h, tile_h, overlap)
    return _grid_plan("tiles", frame_w, frame_h, tile_w, tile_h, xs, ys)


def plan_grid(frame_w: int, frame_h: int, cell_w: int, cell_h: int, upscale: float = 1.0) -> PreprocessPlan:
    """Non-overlapping cells, row-major, over the frame scaled by ``upscale``; padded right/bottom.

    Each cell shows ``cell_w / upscale x cell_h / upscale`` frame pixels resized to
    ``cell_w x cell_h`` (the bilinear sampling of the module docstring, scale ``upscale``), so the
    cells tile ``[0, W) x [0, H)`` exactly once: ``ceil(W * upscale / cell_w) x
    ceil(H * upscale / cell_h)`` cells (``upscale`` 2: four times as many as at 1). At 1 a cell is
    a plain crop of ``cell_w x cell_h`` frame pixels. A cell's content is the tensor pixels that
    show some of the frame (``ceil((W - origin) * upscale)``, at most the cell).
    """
    _check_sizes(frame_w, frame_h, cell_w, cell_h)
    if not (math.isfinite(upscale) and upscale >= 1.0):
        raise ValueError(f"grid upscale must be a finite number >= 1, got {upscale}")
    step_x, step_y = cell_w / upscale, cell_h / upscale  # frame pixels per cell
    xs = [c * step_x for c in range(_cells(frame_w * upscale, cell_w))]
    ys = [r * step_y for r in range(_cells(frame_h * upscale, cell_h))]
    origins = np.array([(x, y) for y in ys for x in xs], np.float64)
    content = np.array(
        [(_content(frame_w, x, upscale, cell_w), _content(frame_h, y, upscale, cell_h)) for y in ys for x in xs], np.int64
    )
    return PreprocessPlan(
        kind="grid",
        frame_wh=(frame_w, frame_h),
        out_wh=(cell_w, cell_h),
        origins=origins,
        content_wh=content,
        scale=(float(upscale), float(upscale)),
        pad=(0, 0),
        grid_shape=(len(ys), len(xs)),
    )


_EPS = 1e-9
"""Rounding slack of the upscaled grid's float arithmetic (1920 * 1.5 / 640 is 4.5, not 4.5000001)."""


def _cells(scaled_length: float, cell: int) -> int:
    """Cells of ``cell`` tensor pixels covering ``scaled_length`` (at least one)."""
    return max(1, math.ceil(scaled_length / cell - _EPS))


def _content(length: int, origin: float, upscale: float, cell: int) -> int:
    """Tensor pixels of a cell at ``origin`` (frame pixels) that show some of ``[0, length)``."""
    return min(cell, math.ceil((length - origin) * upscale - _EPS))


def plan_spec(
    kind: SpecKind, frame_w: int, frame_h: int, width: int, height: int, overlap: float = 0.0, upscale: float = 1.0
) -> PreprocessPlan:
    """Dispatch on the spec kind (``overlap``: tiles only; ``upscale``: grid only)."""
    if upscale != 1.0 and kind != "grid":
        raise ValueError(f"upscale {upscale}: only a grid input has an upscale, not {kind}")
    if kind == "letterbox":
        return plan_letterbox(frame_w, frame_h, width, height)
    if kind == "tiles":
        return plan_tiles(frame_w, frame_h, width, height, overlap)
    if kind == "grid":
        return plan_grid(frame_w, frame_h, width, height, upscale)
    raise ValueError(f"unknown spec kind {kind!r}; expected letterbox, tiles or grid")


def _grid_plan(kind: SpecKind, fw: int, fh: int, tw: int, th: int, xs: list[int], ys: list[int]) -> PreprocessPlan:
    origins = np.array([(x, y) for y in ys for x in xs], np.float64)
    content = np.array([(min(tw, fw - x), min(th, fh - y)) for y in ys for x in xs], np.int64)
    return PreprocessPlan(
        kind=kind,
        frame_wh=(fw, fh),
        out_wh=(tw, th),
        origins=origins,
        content_wh=content,
        scale=(1.0, 1.0),
        pad=(0, 0),
        grid_shape=(len(ys), len(xs)),
    )


def _check_sizes(fw: int, fh: int, ow: int, oh: int) -> None:
    if fw <= 0 or fh <= 0:
        raise ValueError(f"frame size must be positive, got {fw}x{fh}")
    if ow <= 0 or oh <= 0:
        raise ValueError(f"tensor size must be positive, got {ow}x{oh}")
