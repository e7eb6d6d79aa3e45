"""Counting: merge global and tile detections, fuse detections with density, count zones.

All coordinates are frame pixels (``xyxy``). Three public steps:

- :func:`merge_detections`: one detection per person across the global pass and the overlapping
  tiles (intersection-over-smaller matching, the better-placed detection kept, masks stitched).
- :func:`hybrid_count`: region by region, detections where the scene is sparse and the density
  integral where it is dense; records which source each region used; fills zone counts.
- :func:`points_in_polygon` and :func:`count_zones`: zone counts by the feet (box bottom-centre);
  :func:`zone_polygon` places a zone on the frame (pixels, scaled pixels or normalized units).

Placement rule of the merge. A tile cuts a person only along its *inner* edges: tile edges that
are also the frame edge cut the global pass and every tile alike, so they say nothing. A
detection's placement is its distance in frame pixels to the nearest inner edge of the image it
came from; a global detection has no inner edges, so its placement is +inf (it is never cut, and
it wins against a tile detection of the same person, whose box is then united with it). A
detection closer than ``MergeConfig.edge_margin_px`` to an inner edge is *cut*.

Matching rule. Two detections are one person when they come from different images (global or
tile index: inside one image NMS already separated them) and their IoS is at least
``ios_threshold``. A person taller or wider than the tile overlap, cut by both tiles, shows two
partial boxes whose plain IoS is small; for a pair that is cut on both sides the IoS is also
measured on the boxes clipped to the area both tiles see, where both halves show the same part.
Candidate pairs come from a vectorised sweep (:func:`overlapping_pairs`): the cost follows the
number of overlapping boxes, not N^2 (2,700 tile detections of a 4K crowd merge in ~25 ms).

Density fallback. Without a density map for the frame, policies ``density`` and ``hybrid`` count
by detections, and ``CountResult.policy`` says so: ``"hybrid(density unavailable)->detections"``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from config.errors import ConfigError
from config.schema import HybridConfig, MergeConfig, ZoneConfig
from pipeline.types import GLOBAL_SOURCE, CountResult, DensityMap, Detections

__all__ = [
    "Policy",
    "count_zones",
    "feet",
    "grid_in_polygon",
    "hybrid_count",
    "ios",
    "merge_detections",
    "overlapping_pairs",
    "placement",
    "points_in_polygon",
    "region_density",
    "reliable_regions",
    "stitch_masks",
    "zone_polygon",
]

Policy = Literal["detections", "density", "hybrid"]
SOURCE_DETECTIONS = 0
SOURCE_DENSITY = 1


# --------------------------------------------------------------------------------------------
# Merge


def _source_rects(dets: Detections, tile_rects: NDArray[np.floating] | None, frame_wh: tuple[int, int]) -> NDArray[np.float64]:
    """(N, 4) frame rect of the image each detection came from (the whole frame for global)."""
    w, h = frame_wh
    rects = np.tile(np.array([0.0, 0.0, w, h]), (len(dets), 1))
    tiled = dets.source != GLOBAL_SOURCE
    if tiled.any():
        if tile_rects is None or dets.source[tiled].max() >= len(tile_rects) or dets.source[tiled].min() < 0:
            n = 0 if tile_rects is None else len(tile_rects)
            raise ValueError(
                f"merge_detections: tile sources {np.unique(dets.source[tiled]).tolist()} but {n} tile rects given"
            )
        rects[tiled] = np.asarray(tile_rects, np.float64)[dets.source[tiled]]
    return rects


def placement(xyxy: NDArray[np.floating], rects: NDArray[np.floating], frame_wh: tuple[int, int]) -> NDArray[np.float64]:
    """(N,) distance in frame pixels from each box to the nearest inner edge of its image rect.

    ``xyxy``, ``rects`` (N, 4) frame pixels. An edge of the rect on the frame border is not an
    inner edge; a rect with none (the global image) gives +inf. Negative when a box pokes out.
    """
    w, h = frame_wh
    b = np.asarray(xyxy, np.float64)
    r = np.asarray(rects, np.float64)
    gaps = np.stack([b[:, 0] - r[:, 0], b[:, 1] - r[:, 1], r[:, 2] - b[:, 2], r[:, 3] - b[:, 3]], axis=1)
    inner = np.stack([r[:, 0] > 0.5, r[:, 1] > 0.5, r[:, 2] < w - 0.5, r[:, 3] < h - 0.5], axis=1)
    return np.where(inner, gaps, np.inf).min(axis=1, initial=np.inf)


def _area(b: NDArray[np.floating]) -> NDArray[np.floating]:
    return (b[..., 2] - b[..., 0]).clip(0) * (b[..., 3] - b[..., 1]).clip(0)


def _intersect(a: NDArray[np.float64], b: NDArray[np.float64]) -> NDArray[np.float64]:
    return np.concatenate([np.maximum(a[..., :2], b[..., :2]), np.minimum(a[..., 2:], b[..., 2:])], axis=-1)


def ios(a: NDArray[np.floating], b: NDArray[np.floating]) -> NDArray[np.float64]:
    """(K,) intersection over the smaller box of the box pairs ``a[k]``, ``b[k]`` ((K, 4) xyxy each);
    0 where either box is empty."""
    a64 = np.asarray(a, np.float64)
    b64 = np.asarray(b, np.float64)
    smaller = np.minimum(_area(a64), _area(b64))
    inter = _area(_intersect(a64, b64))
    return np.divide(inter, smaller, out=np.zeros_like(inter), where=smaller > 0)


def overlapping_pairs(xyxy: NDArray[np.floating]) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """All pairs (i, j), i != j once each, of boxes (N, 4) whose interiors intersect.

    Sweep along x, vectorised: after sorting by x0, box k can only meet the boxes that start
    before it ends; those form one contiguous run of the sorted order. The y test (and an x test
    for empty boxes) filters the candidates. Cost follows the number of x-overlapping pairs, not N^2.
    """
    b = np.asarray(xyxy, np.float64)
    order = np.argsort(b[:, 0], kind="stable")
    x0 = b[order, 0]
    lo = np.arange(1, len(b))  # candidates of sorted k start at k + 1
    hi = np.searchsorted(x0, b[order[:-1], 2], side="left")  # ... and end where x0 >= its x1
    counts = np.clip(hi - lo, 0, None)
    k = np.repeat(np.arange(len(counts)), counts)
    offsets = np.cumsum(counts) - counts
    partner = np.arange(int(counts.sum())) - np.repeat(offsets, counts) + lo[k]
    i, j = order[k], order[partner]
    ok = (np.minimum(b[i, 3], b[j, 3]) > np.maximum(b[i, 1], b[j, 1])) & (np.minimum(b[i, 2], b[j, 2]) > b[j, 0])
    return i[ok].astype(np.int64), j[ok].astype(np.int64)


def _match_pairs(dets: Detections, rects: NDArray[np.float64], cut: NDArray[np.bool_], threshold: float) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Pairs (i, j) of detections that are the same person (see the module docstring)."""
    i, j = overlapping_pairs(dets.xyxy)
    other = dets.source[i] != dets.source[j]
    i, j = i[other], j[other]
    boxes = dets.xyxy.astype(np.float64)
    match = ios(boxes[i], boxes[j]) >= threshold
    both_cut = cut[i] & cut[j] & ~match
    if both_cut.any():
        shared = _intersect(rects[i[both_cut]], rects[j[both_cut]])
        bi = _intersect(boxes[i[both_cut]], shared)
        bj = _intersect(boxes[j[both_cut]], shared)
        match[both_cut] = ios(bi, bj) >= threshold
    return i[match], j[match]


def stitch_masks(
    masks: Sequence[NDArray[np.bool_]], rects: NDArray[np.integer]
) -> tuple[NDArray[np.bool_], NDArray[np.int32]]:
    """Union of masks, each over its integer frame rect (K, 4), resampled onto the union rect.

    The output resolution is the finest of the inputs (frame pixels per mask pixel, per axis);
    each output pixel samples each mask at its centre (nearest). Returns (mask, rect (4,) int32).
    """
    r = np.asarray(rects, np.int64)
    union = np.array([r[:, 0].min(), r[:, 1].min(), r[:, 2].max(), r[:, 3].max()], np.int64)
    step_x = min((b[2] - b[0]) / m.shape[1] for m, b in zip(masks, r, strict=True))
    step_y = min((b[3] - b[1]) / m.shape[0] for m, b in zip(masks, r, strict=True))
    ow = max(1, round((union[2] - union[0]) / step_x))
    oh = max(1, round((union[3] - union[1]) / step_y))
    xs = union[0] + (np.arange(ow) + 0.5) * ((union[2] - union[0]) / ow)
    ys = union[1] + (np.arange(oh) + 0.5) * ((union[3] - union[1]) / oh)
    out = np.zeros((oh, ow), bool)
    for m, b in zip(masks, r, strict=True):
        mh, mw = m.shape
        in_x = (xs >= b[0]) & (xs < b[2])
        in_y = (ys >= b[1]) & (ys < b[3])
        cols = np.clip(((xs - b[0]) * mw / (b[2] - b[0])).astype(np.int64), 0, mw - 1)
        rows = np.clip(((ys - b[1]) * mh / (b[3] - b[1])).astype(np.int64), 0, mh - 1)
        out |= m[rows][:, cols] & in_y[:, None] & in_x[None, :]
    return out, union.astype(np.int32)


def merge_detections(
    global_dets: Detections | None,
    tile_dets: Detections | None,
    tile_rects: NDArray[np.floating] | None,
    frame_wh: tuple[int, int],
    cfg: MergeConfig,
) -> Detections:
    """One detection per person from the global pass and the tiles, frame pixels.

    ``tile_rects`` (T, 4) frame xyxy of the tiles; ``tile_dets.source`` indexes it. Greedy, best
    placement first (score breaks ties): each kept detection absorbs every not-yet-absorbed
    detection it matches; its box becomes the union of the group's boxes and, when every input
    has masks, its mask the union of the group's masks (:func:`stitch_masks`), so a person on a
    seam has one whole mask. Kept detections stay in input order (global first, then tiles).
    """
    dets = Detections.merge([d for d in (global_dets, tile_dets) if d is not None])
    if len(dets) < 2:
        return dets
    rects = _source_rects(dets, tile_rects, frame_wh)
    place = placement(dets.xyxy, rects, frame_wh)
    i, j = _match_pairs(dets, rects, place < cfg.edge_margin_px, cfg.ios_threshold)
    src, dst = np.concatenate([i, j]), np.concatenate([j, i])  # adjacency lists, both directions
    by_src = np.argsort(src, kind="stable")
    dst = dst[by_src]
    bounds = np.searchsorted(src[by_src], np.arange(len(dets) + 1))
    order = np.lexsort((-dets.score, -place))
    taken = np.zeros(len(dets), bool)
    groups: dict[int, NDArray[np.int64]] = {}
    for k in order:
        if taken[k]:
            continue
        partners = dst[bounds[k] : bounds[k + 1]]
        members = partners[~taken[partners]]
        taken[k] = True
        taken[members] = True
        groups[int(k)] = np.concatenate([[k], members]).astype(np.int64)
    return _merged(dets, groups)


def _merged(dets: Detections, groups: Mapping[int, NDArray[np.int64]]) -> Detections:
    keep = np.array(sorted(groups), np.int64)
    out = dets[keep]
    xyxy = out.xyxy.copy()
    masks = list(out.masks) if out.masks is not None else None
    mask_xyxy = out.mask_xyxy.copy() if out.mask_xyxy is not None else None
    for k, i in enumerate(keep):
        g = groups[int(i)]
        if len(g) == 1:
            continue
        b = dets.xyxy[g]
        xyxy[k] = (b[:, 0].min(), b[:, 1].min(), b[:, 2].max(), b[:, 3].max())
        if masks is not None and mask_xyxy is not None and dets.masks is not None and dets.mask_xyxy is not None:
            masks[k], mask_xyxy[k] = stitch_masks([dets.masks[j] for j in g], dets.mask_xyxy[g])
    return Detections(
        xyxy=xyxy, score=out.score, class_id=out.class_id, source=out.source,
        masks=tuple(masks) if masks is not None else None, mask_xyxy=mask_xyxy,
    )


# --------------------------------------------------------------------------------------------
# Regions, zones, hybrid count


def _region_index(coord: NDArray[np.floating], length: int, n: int) -> NDArray[np.int64]:
    """Index of the equal split of [0, length) into n parts holding each coordinate; coordinates
    on or past the edge fall into the edge part."""
    return np.clip(np.floor(np.asarray(coord, np.float64) * n / length), 0, n - 1).astype(np.int64)


def _region_of(points: NDArray[np.floating], frame_wh: tuple[int, int], rows: int, cols: int) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """(row, col) of the region of an equal rows x cols split of the frame holding each point (M, 2)."""
    w, h = frame_wh
    return _region_index(points[:, 1], h, rows), _region_index(points[:, 0], w, cols)


def reliable_regions(
    dets: Detections, frame_wh: tuple[int, int], rows: int, cols: int, min_box_height_px: float, max_people_per_mpx: float
) -> tuple[NDArray[np.bool_], NDArray[np.int64]]:
    """Where detection is reliable: (rows, cols) mask of the regions whose detections (by box
    centre) have a median box height of at least ``min_box_height_px`` and number at most
    ``max_people_per_mpx`` per megapixel of the region (people large enough for the detector, and
    sparse enough not to hide each other), and the (rows, cols) detection count per region. A
    region without detections is not reliable: nothing in it says the detector sees its people."""
    w, h = frame_wh
    r, c = _region_of(dets.center, frame_wh, rows, cols)
    idx = r * cols + c
    k = np.bincount(idx, minlength=rows * cols)
    ok = np.zeros(rows * cols, bool)
    if len(dets):
        heights = (dets.xyxy[:, 3] - dets.xyxy[:, 1]).astype(np.float64)
        by_region = heights[np.lexsort((heights, idx))]  # sorted by region, then by height
        present = np.flatnonzero(k)
        n = k[present]
        start = np.cumsum(k)[present] - n
        # each region's median: the middle of its run, the mean of the two middle ones for an even count
        median = (by_region[start + (n - 1) // 2] + by_region[start + n // 2]) / 2
        ok[present] = median >= min_box_height_px
        region_mpx = (w / cols) * (h / rows) / 1e6
        ok &= k / region_mpx <= max_people_per_mpx
    return ok.reshape(rows, cols), k.reshape(rows, cols).astype(np.int64)


def _cell_axes(density: DensityMap) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Frame pixel centres of the density cells: (W',) along x and (H',) along y."""
    h, w = density.density.shape
    s = density.stride
    return (np.arange(w, dtype=np.float64) + 0.5) * s, (np.arange(h, dtype=np.float64) + 0.5) * s


def _edges(polygon: NDArray[np.floating] | Sequence[tuple[float, float]]) -> tuple[NDArray[np.float64], ...]:
    poly = np.asarray(polygon, np.float64)
    x0, y0 = poly[:, 0], poly[:, 1]
    return x0, y0, np.roll(x0, -1), np.roll(y0, -1)


def _crossings(y: NDArray[np.float64], polygon: NDArray[np.floating] | Sequence[tuple[float, float]]) -> NDArray[np.float64]:
    """(M, V) x where each polygon edge crosses the horizontal line at y (M, 1); NaN where it does not."""
    x0, y0, x1, y1 = _edges(polygon)
    spans = (y0 > y) != (y1 > y)
    dy = np.where(y1 == y0, 1.0, y1 - y0)
    return np.where(spans, x0 + (y - y0) * (x1 - x0) / dy, np.nan)


def points_in_polygon(points: NDArray[np.floating], polygon: NDArray[np.floating] | Sequence[tuple[float, float]]) -> NDArray[np.bool_]:
    """(M,) bool: which points (M, 2) lie inside ``polygon`` (V, 2), even-odd rule, frame pixels."""
    pts = np.asarray(points, np.float64)
    x_cross = _crossings(pts[:, 1:2], polygon)  # NaN compares False
    return (np.count_nonzero(pts[:, :1] < x_cross, axis=1) % 2) == 1


def grid_in_polygon(xs: NDArray[np.floating], ys: NDArray[np.floating], polygon: NDArray[np.floating] | Sequence[tuple[float, float]]) -> NDArray[np.bool_]:
    """(len(ys), len(xs)) bool: which grid points (x, y) lie inside ``polygon``, even-odd rule.

    Same answer as :func:`points_in_polygon` on the grid, but the edge crossings are computed
    once per row, so a whole density map costs (rows x V) + (rows x cols x V) compares.
    """
    x_cross = _crossings(np.asarray(ys, np.float64)[:, None], polygon)  # (H, V)
    return (np.count_nonzero(np.asarray(xs, np.float64)[None, :, None] < x_cross[:, None, :], axis=2) % 2) == 1


def feet(xyxy: NDArray[np.floating]) -> NDArray[np.float64]:
    """(N, 2) bottom-centre of boxes (N, 4): where a person stands, frame pixels."""
    b = np.asarray(xyxy, np.float64)
    return np.stack([(b[:, 0] + b[:, 2]) / 2, b[:, 3]], axis=1)


def _density_by_region_source(density: DensityMap, region_source: NDArray[np.int8], frame_wh: tuple[int, int]) -> NDArray[np.float64]:
    """The density map with cells of regions that count by detections set to 0."""
    rows, cols = region_source.shape
    xs, ys = _cell_axes(density)
    dense = region_source[_region_index(ys, frame_wh[1], rows)][:, _region_index(xs, frame_wh[0], cols)]
    return np.where(dense == SOURCE_DENSITY, density.density, 0).astype(np.float64)


_EDGE_TOLERANCE_PX = 1e-6
"""How far a pixel polygon may stick out of the frame (rounding of a point on the edge)."""


def zone_polygon(zone: ZoneConfig, frame_wh: tuple[int, int]) -> NDArray[np.float64]:
    """(V, 2) float64 polygon of ``zone`` in pixels of a frame of ``frame_wh`` (width, height).

    ``units: normalized``: the fractions times the frame size. ``units: pixels`` with
    ``frame_size``: scaled from that size to this frame, per axis. Plain pixels: as written, and
    ``ConfigError`` when a point lies outside the frame (a polygon drawn for another resolution,
    which would count the wrong part of the frame).
    """
    poly = np.asarray(zone.polygon, np.float64)
    w, h = frame_wh
    if zone.units == "normalized":
        return poly * np.array([w, h], np.float64)
    if zone.frame_size is not None:
        fw, fh = zone.frame_size
        return poly * np.array([w / fw, h / fh], np.float64)
    out = (poly[:, 0] > w + _EDGE_TOLERANCE_PX) | (poly[:, 1] > h + _EDGE_TOLERANCE_PX)
    if out.any():
        x, y = poly[np.argmax(out)]
        raise ConfigError(
            f"counting.zones {zone.name!r}: polygon point ({x:g}, {y:g}) lies outside the {w}x{h} frame; a pixel "
            f"polygon must fit the stream's frames: add frame_size: [W, H] (the frame it was drawn on) to scale it, "
            "or give it in units: normalized (0..1)"
        )
    return poly


def count_zones(
    dets: Detections,
    density: DensityMap | None,
    region_source: NDArray[np.int8],
    frame_wh: tuple[int, int],
    zones: Sequence[ZoneConfig],
) -> dict[str, float]:
    """Fused count per zone, consistent with the per-region decision.

    A detection counts in a zone when its feet are inside the polygon and the region of its
    centre counts by detections; a density cell counts when its centre is inside the polygon and
    its region counts by density. ``region_source`` (rows, cols): 1 density, 0 detections. Each
    polygon is placed on this frame by :func:`zone_polygon` (normalized or scaled zones follow a
    change of resolution; a plain pixel zone that does not fit the frame raises ``ConfigError``).
    """
    rows, cols = region_source.shape
    r, c = _region_of(dets.center, frame_wh, rows, cols)
    det_ok = region_source[r, c] == SOURCE_DETECTIONS
    # The even-odd test leaves out points on a polygon's bottom and right edges, so a person whose
    # box is cut by the frame's bottom (feet at y == height) would be in no zone drawn to the
    # frame's edge; points are taken at the frame's last pixel centres at most (as the regions
    # take cells centred past the edge).
    last = np.array(frame_wh, np.float64) - 0.5
    foot = np.clip(feet(dets.xyxy), 0.0, last)
    values = None
    if density is not None and (region_source == SOURCE_DENSITY).any():
        values = _density_by_region_source(density, region_source, frame_wh)
        xs, ys = _cell_axes(density)
        xs, ys = np.minimum(xs, last[0]), np.minimum(ys, last[1])
    out: dict[str, float] = {}
    for zone in zones:
        polygon = zone_polygon(zone, frame_wh)
        n = float(np.count_nonzero(det_ok & points_in_polygon(foot, polygon)))
        if values is not None:
            # only the cells inside the polygon's bounding box can be inside it
            (px0, py0), (px1, py1) = polygon.min(axis=0), polygon.max(axis=0)
            c0, c1 = np.searchsorted(xs, [px0, px1])
            r0, r1 = np.searchsorted(ys, [py0, py1])
            inside = grid_in_polygon(xs[c0:c1], ys[r0:r1], polygon)
            n += float(values[r0:r1, c0:c1][inside].sum())
        out[zone.name] = n
    return out


def region_density(density: DensityMap, frame_wh: tuple[int, int], rows: int, cols: int) -> NDArray[np.float64]:
    """(rows, cols) density integral per region; each cell goes to the region of its centre
    (cells centred past the frame edge go to the edge region), so the regions sum to the count."""
    xs, ys = _cell_axes(density)
    row_of = _region_index(ys, frame_wh[1], rows)
    col_of = _region_index(xs, frame_wh[0], cols)
    # one-hot (rows, H') @ map (H', W') @ one-hot (W', cols): two small matrix products, not a
    # scatter-add per cell (np.add.at is ~100x slower on a 4K map of 130,000 cells)
    by_row = np.zeros((rows, len(ys)), np.float64)
    by_row[row_of, np.arange(len(ys))] = 1.0
    by_col = np.zeros((len(xs), cols), np.float64)
    by_col[np.arange(len(xs)), col_of] = 1.0
    out: NDArray[np.float64] = by_row @ density.density.astype(np.float64) @ by_col
    return out


def hybrid_count(
    dets: Detections,
    density: DensityMap | None,
    frame_wh: tuple[int, int],
    cfg: HybridConfig,
    policy: Policy = "hybrid",
    zones: Sequence[ZoneConfig] = (),
) -> CountResult:
    """Counts of one frame from merged detections and an optional density map.

    The frame is split into ``cfg.region_rows x cfg.region_cols`` equal regions. Per region,
    K = detections whose box centre is inside, D = density integral (of the calibrated map:
    ``pipeline.density_calibration``). Policy ``hybrid``: a region counts by density when
    ``D >= min_density_people``, ``D`` per megapixel of the region ``>= dense_people_per_mpx`` and
    ``D >= saturation_ratio * K`` (detection saturates: where the two agree the detections count)
    and detection is not reliable there (``reliable_regions`` with the calibration's criterion,
    ``cfg.calibration.min_box_height_px`` and ``max_reliable_people_per_mpx``: where people are
    large and sparse the detector sees them, and a density above their count is the model's error
    on large people or on the ground, not a crowd the detector missed), else by K; fused = sum of
    region counts. Policy ``detections``:
    fused = len(dets), every region by K. Policy ``density``: fused = density count, every region
    by D. Without a density map, ``density`` and ``hybrid`` fall back to detections and say so in
    ``CountResult.policy``: ``"<policy>(density unavailable)->detections"``; ``density`` is None.
    """
    if policy not in ("detections", "density", "hybrid"):
        raise ValueError(f"hybrid_count: unknown policy {policy!r}; expected detections, density or hybrid")
    rows, cols = cfg.region_rows, cfg.region_cols
    w, h = frame_wh
    cal = cfg.calibration
    reliable, k_int = reliable_regions(dets, frame_wh, rows, cols, cal.min_box_height_px, cal.max_reliable_people_per_mpx)
    k = k_int.astype(np.float64)
    label = str(policy)
    if density is None:
        d = np.zeros((rows, cols), np.float64)
        dense = np.zeros((rows, cols), bool)
        if policy != "detections":
            label = f"{policy}(density unavailable)->detections"
    else:
        d = region_density(density, frame_wh, rows, cols)
        region_mpx = (w / cols) * (h / rows) / 1e6
        dense = {
            "detections": np.zeros((rows, cols), bool),
            "density": np.ones((rows, cols), bool),
            "hybrid": (d >= cfg.min_density_people)
            & (d / region_mpx >= cfg.dense_people_per_mpx)
            & (d >= cfg.saturation_ratio * k)
            & ~reliable,
        }[policy]
    region_counts = np.where(dense, d, k).astype(np.float32)
    region_source = dense.astype(np.int8)
    if density is not None and policy == "density":
        fused = density.count
    elif policy == "hybrid" and density is not None:
        fused = float(np.where(dense, d, k).sum())
    else:
        fused = float(len(dets))
    return CountResult(
        detection=len(dets),
        density=None if density is None else density.count,
        fused=fused,
        policy=label,
        region_counts=region_counts,
        region_source=region_source,
        zones=count_zones(dets, density, region_source, frame_wh, zones),
    )
