"""Density adapter: CSRNet-style outputs -> one frame-space ``DensityMap``.

The model sees N tensors of one plan and returns (N, 1, H/s, W/s) (or (N, H/s, W/s)) people per
output cell, s = ``ModelConfig.output_stride``, times ``ModelConfig.density_scale``.

- ``grid`` plans (non-overlapping tiles, row-major, frame padded right/bottom): the tile maps are
  placed side by side into one (rows*H/s, cols*W/s) map (:func:`stitch_grid`). Cells wholly in
  the padding beyond the frame edge are zeroed, so padding never counts; a cell that straddles
  the edge keeps its value (it saw real pixels). With the grid's ``upscale`` u = 1 that map is
  the frame's, stride s. With u > 1 a map cell covers s/u frame pixels; :func:`frame_cells` sums
  it onto frame cells of s pixels (each map cell's people split by the share of its in-frame area
  in each frame cell: sum-preserving; for an integral u, plain u x u sums), so the map has the
  same frame geometry at every upscale and counts people, not upscaled pixels: upscaling shows
  the model bigger people, it does not multiply them by u^2.
- ``letterbox`` plans (one scaled image): the map is redistributed onto frame cells of
  ``round(s / scale)`` pixels, each output cell's mass split by area overlap (sum-preserving);
  cells wholly in the letterbox padding are dropped.
- ``tiles`` plans (overlapping) are refused: overlapping tiles would count people twice.

The map is clamped at 0 (:func:`density_output`): CSRNet's last layer is a plain 1x1 convolution
with no ReLU, and its negative cells (measured: -20 "people" on a 4K frame of 25-38 px people)
would cancel real people elsewhere. Beside the map, the adapter measures each cell's *contrast* (the
std of its grey levels, 0..255, from the tensor the model saw): a flat cell cannot hold a person,
and ``pipeline.density_calibration`` zeroes the density of flat areas (CSRNet gives 0.016 people
per cell on flat grey: 2,100 phantom people on a flat 4K frame).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from numpy.typing import NDArray

from config.errors import ModelLoadError
from config.schema import ModelConfig
from models.csrnet_onnx import CSRNET_STD_RGB
from models.yolo import check_finite
from pipeline.geometry import PreprocessPlan
from pipeline.types import DensityMap, PreprocessOutput

__all__ = ["DensityAdapter", "cell_contrast", "density_output", "frame_cells", "grid_density", "resample_letterbox", "stitch_grid"]


def density_output(
    outputs: Mapping[str, Any], plan: PreprocessPlan, stride: int, model: str = "density model"
) -> NDArray[np.float32]:
    """The single model output as (N, h, w) float32 host array, checked against the plan, clamped at 0.

    Expected (N, 1, H//s, W//s) or (N, H//s, W//s) with N = ``plan.count`` and (W, H) =
    ``plan.out_wh``, every value finite. Raises ``ModelLoadError`` naming ``model``, the output,
    the shape found and expected, or how many values are NaN / Inf (a NaN map would make every
    count NaN; an Inf one, infinite).
    """
    if len(outputs) != 1:
        found = ", ".join(f"{n} {list(np.shape(a))}" for n, a in outputs.items()) or "none"
        raise ModelLoadError(f"{model}: expected exactly one output, got {found}")
    ((name, raw),) = outputs.items()
    arr = raw.get() if hasattr(raw, "get") and not isinstance(raw, np.ndarray) else np.asarray(raw)
    w, h = plan.out_wh
    want = (plan.count, h // stride, w // stride)
    got = tuple(arr.shape)
    if got not in (want, (want[0], 1, *want[1:])):
        raise ModelLoadError(
            f"{model}: output {name!r} has shape {list(got)}; expected {[want[0], 1, *want[1:]]} "
            f"(or {list(want)}) for {plan.count} tensors of {w}x{h} at stride {stride}"
        )
    check_finite(model, name, arr)
    # ReLU in post-processing: a density below 0 is no count (CSRNet's output layer has no ReLU).
    return np.maximum(arr.reshape(want).astype(np.float32), np.float32(0))


def _to_host(a: Any) -> NDArray[np.float32]:
    return np.asarray(a.get() if hasattr(a, "get") and not isinstance(a, np.ndarray) else a, np.float32)


def cell_contrast(tensor: Any, stride: int, std: tuple[float, float, float] = CSRNET_STD_RGB) -> NDArray[np.float32]:
    """(N, H//s, W//s) float32 host array: std of the grey level (0..255) of each s x s cell.

    ``tensor`` (N, 3, H, W) NumPy or CuPy, normalised as ``(x / 255 - mean) / std`` per channel
    (``std`` of the input spec); the grey level is the mean of the de-normalised channels. Works on
    the device for a CuPy tensor (array methods only) and copies the small result to the host.
    """
    n, _, h, w = tensor.shape
    hs, ws = h // stride, w // stride
    t = tensor[:, :, : hs * stride, : ws * stride]
    # the mean each channel lost is a constant: it does not change a std
    grey = (t[:, 0].astype("float32") * std[0] + t[:, 1].astype("float32") * std[1] + t[:, 2].astype("float32") * std[2]) * (255.0 / 3.0)
    cells = grey.reshape(n, hs, stride, ws, stride)
    return _to_host(cells.std(axis=(2, 4)))


def stitch_grid(maps: NDArray[np.float32], plan: PreprocessPlan, stride: int) -> NDArray[np.float32]:
    """(N, h, w) tile maps of a ``grid`` plan -> (rows*h, cols*w) map, padding zeroed.

    Tile i of the row-major grid lands at cell (r*h, c*w); within it, cells past
    ``ceil(content / stride)`` (wholly beyond the frame edge) are set to zero. A cell covers
    ``stride / upscale`` frame pixels: the frame's map at upscale 1, else see :func:`frame_cells`.
    """
    rows, cols = plan.grid_shape
    _, h, w = maps.shape
    if plan.out_wh[0] % stride or plan.out_wh[1] % stride:
        raise ModelLoadError(
            f"density grid tiles of {plan.out_wh[0]}x{plan.out_wh[1]} are not a multiple of the output stride "
            f"{stride}: the tile maps would not line up; choose a tile size divisible by {stride}"
        )
    keep_w = np.ceil(plan.content_wh[:, 0] / stride).astype(np.int64)  # (N,)
    keep_h = np.ceil(plan.content_wh[:, 1] / stride).astype(np.int64)
    valid = (np.arange(h)[None, :, None] < keep_h[:, None, None]) & (np.arange(w)[None, None, :] < keep_w[:, None, None])
    tiles = np.where(valid, maps, np.float32(0)).reshape(rows, cols, h, w)
    return np.ascontiguousarray(tiles.transpose(0, 2, 1, 3).reshape(rows * h, cols * w))


def _axis_shares(n_in: int, in_step: float, n_out: int, out_step: int, limit: int) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    """Along one axis: input cells ``idx`` (n_out, K) overlapping each output cell and the share
    ``w`` (n_out, K) of each one's in-frame length that falls in it (0 where it does not overlap).

    Input cell i covers ``[i * in_step, (i + 1) * in_step)`` clipped to ``[0, limit)``, output cell
    o ``[o * out_step, (o + 1) * out_step)``; an input cell with nothing inside the frame has no
    share anywhere, every other one's shares sum to 1. K = ceil(out_step / in_step) + 1.
    """
    lo = np.clip(np.arange(n_in) * in_step, 0, limit)
    hi = np.clip((np.arange(n_in) + 1) * in_step, 0, limit)
    k = math.ceil(out_step / in_step) + 1
    first = np.floor(np.arange(n_out) * out_step / in_step).astype(np.int64)
    idx = np.minimum(first[:, None] + np.arange(k)[None, :], n_in - 1)
    o0 = (np.arange(n_out) * out_step)[:, None].astype(np.float64)
    overlap = (np.minimum(o0 + out_step, hi[idx]) - np.maximum(o0, lo[idx])).clip(0)
    length = (hi - lo)[idx]
    w = np.divide(overlap, length, out=np.zeros_like(overlap), where=length > 0)
    dup = np.zeros(idx.shape, bool)
    dup[:, 1:] = idx[:, 1:] == idx[:, :-1]  # clipped at the last cell: count it once
    return idx, np.where(dup, 0.0, w)


def frame_cells(grid_map: NDArray[np.float32], plan: PreprocessPlan, stride: int, reduce: str = "sum") -> NDArray[np.float32]:
    """A grid plan's stitched map (:func:`stitch_grid`) on frame cells of ``stride`` pixels.

    ``upscale`` 1 (``plan.scale == (1, 1)``): the map itself, which already is. Upscale u: the
    map's cells are ``stride / u`` frame pixels; the result is (ceil(H / stride), ceil(W /
    stride)). ``reduce="sum"`` (density, people): each frame cell gets every map cell's people
    times the share of that cell's in-frame area inside it, so the total is kept. ``"max"``
    (contrast): the largest value of the map cells it overlaps (a frame cell is flat only when all
    of its parts are).
    """
    sx, sy = plan.scale
    if (sx, sy) == (1.0, 1.0):
        return grid_map
    if reduce not in ("sum", "max"):
        raise ValueError(f"frame_cells: reduce must be 'sum' or 'max', got {reduce!r}")
    fw, fh = plan.frame_wh
    n_x, n_y = math.ceil(fw / stride), math.ceil(fh / stride)
    ix, wx = _axis_shares(grid_map.shape[1], stride / sx, n_x, stride, fw)
    iy, wy = _axis_shares(grid_map.shape[0], stride / sy, n_y, stride, fh)
    a = grid_map.astype(np.float64)
    if reduce == "sum":
        cols = (a[:, ix] * wx[None]).sum(axis=2)  # (rows_in, n_x)
        out = (cols[iy] * wy[:, :, None]).sum(axis=1)
    else:
        cols = np.where(wx[None] > 0, a[:, ix], 0.0).max(axis=2)
        out = np.where(wy[:, :, None] > 0, cols[iy], 0.0).max(axis=1)
    return out.astype(np.float32)


def grid_density(
    maps: NDArray[np.float32], plan: PreprocessPlan, stride: int, contrast: NDArray[np.float32] | None = None
) -> DensityMap:
    """(N, h, w) tile maps (people) of a whole grid plan, and their (N, h, w) cell contrast if
    measured, -> the frame's ``DensityMap`` at ``stride`` frame pixels (:func:`stitch_grid`, then
    :func:`frame_cells`)."""
    density = frame_cells(stitch_grid(maps, plan, stride), plan, stride, "sum")
    if contrast is None:
        return DensityMap(density=density, stride=stride)
    return DensityMap(density=density, stride=stride, contrast=frame_cells(stitch_grid(contrast, plan, stride), plan, stride, "max"))


def _overlap_matrix(n_in: int, in_stride: float, pad: int, scale: float, content: int, n_out: int, out_stride: int, limit: int) -> NDArray[np.float64]:
    """(n_out, n_in): share of input cell i's mass that lands in output cell o, along one axis.

    Input cell i covers tensor pixels [i*s, (i+1)*s), clipped to the content [pad, pad+content)
    and mapped to frame pixels by ``(u - pad) / scale``; its mass is split over output cells
    [o*out_stride, (o+1)*out_stride) by overlap length. Cells with no content get zero weight
    (padding never counts).
    """
    u0 = np.clip(np.arange(n_in) * in_stride, pad, pad + content)
    u1 = np.clip((np.arange(n_in) + 1) * in_stride, pad, pad + content)
    f0 = np.clip((u0 - pad) / scale, 0, limit)
    f1 = np.clip((u1 - pad) / scale, 0, limit)
    o0 = np.arange(n_out)[:, None] * out_stride
    o1 = o0 + out_stride
    overlap = (np.minimum(o1, f1[None, :]) - np.maximum(o0, f0[None, :])).clip(0)
    length = f1 - f0
    return np.divide(overlap, length[None, :], out=np.zeros_like(overlap), where=length[None, :] > 0)


def resample_letterbox(dmap: NDArray[np.float32], plan: PreprocessPlan, stride: int) -> tuple[NDArray[np.float32], int]:
    """(h, w) map of one letterboxed tensor -> (frame map, frame stride), sum-preserving.

    The frame stride is ``max(1, round(stride / scale))`` pixels; the output covers the frame with
    ``ceil(W / stride_out) x ceil(H / stride_out)`` cells. Input cells wholly in the padding drop.
    """
    sx, sy = plan.scale
    fw, fh = plan.frame_wh
    out_stride = max(1, round(stride / min(sx, sy)))
    n_x, n_y = math.ceil(fw / out_stride), math.ceil(fh / out_stride)
    cw, ch = (int(v) for v in plan.content_wh[0])
    px, py = plan.pad
    mx = _overlap_matrix(dmap.shape[1], stride, px, sx, cw, n_x, out_stride, fw)
    my = _overlap_matrix(dmap.shape[0], stride, py, sy, ch, n_y, out_stride, fh)
    return (my @ dmap.astype(np.float64) @ mx.T).astype(np.float32), out_stride


class DensityAdapter:
    """``decode(outputs, pre) -> DensityMap`` for a density CNN (CSRNet) on a grid or letterbox plan."""

    def __init__(self, cfg: ModelConfig, input_std: tuple[float, float, float] = CSRNET_STD_RGB) -> None:
        self.stride = cfg.output_stride
        self.scale = cfg.density_scale
        self.model = f"density model {cfg.path}"
        self.input_std = input_std
        """The input spec's std, to read grey levels back from the tensor (contrast)."""

    def decode(self, outputs: Mapping[str, Any], pre: PreprocessOutput) -> DensityMap:
        plan = pre.plan
        maps = density_output(outputs, plan, self.stride, self.model) * np.float32(self.scale)
        if plan.kind == "grid":
            return grid_density(maps, plan, self.stride, cell_contrast(pre.tensor, self.stride, self.input_std))
        if plan.kind == "letterbox":
            frame_map, out_stride = resample_letterbox(maps[0], plan, self.stride)
            return DensityMap(density=frame_map, stride=out_stride)
        raise ModelLoadError(
            f"density model on spec {pre.spec_name!r} of kind {plan.kind!r}: overlapping tiles would count "
            "people twice; use an input spec of kind grid (or letterbox)"
        )
