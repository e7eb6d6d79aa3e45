"""Geometry planner: letterbox scale/pad, tile origins, density grid, on tables of frame sizes."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.geometry import plan_grid, plan_letterbox, plan_tiles, tile_origins_1d


@pytest.mark.parametrize(
    ("w", "h", "scale", "content", "pad"),
    [
        (3840, 2160, 640 / 3840, (640, 360), (0, 140)),
        (1920, 1080, 1 / 3, (640, 360), (0, 140)),
        (768, 576, 640 / 768, (640, 480), (0, 80)),
        (640, 640, 1.0, (640, 640), (0, 0)),
        (320, 240, 2.0, (640, 480), (0, 80)),
        (1282, 722, None, (640, 360), (0, 140)),
        (577, 1025, None, (360, 640), (140, 0)),
    ],
)
def test_letterbox(w: int, h: int, scale: float | None, content: tuple[int, int], pad: tuple[int, int]) -> None:
    plan = plan_letterbox(w, h, 640, 640)
    assert plan.count == 1
    assert tuple(plan.content_wh[0]) == content
    assert plan.pad == pad
    if scale is not None:
        assert plan.scale == pytest.approx((scale, scale))
    # the frame's corners map to the content rectangle's corners and back
    box = np.array([[pad[0], pad[1], pad[0] + content[0], pad[1] + content[1]]], np.float32)
    np.testing.assert_allclose(plan.tensor_to_frame(box, 0)[0], [0, 0, w, h], atol=1e-3)


@pytest.mark.parametrize(
    ("length", "tile", "overlap", "expected"),
    [
        (3840, 640, 0.2, [0, 512, 1024, 1536, 2048, 2560, 3072, 3200]),
        (2160, 640, 0.2, [0, 512, 1024, 1520]),
        (640, 640, 0.2, [0]),
        (500, 640, 0.2, [0]),
        (641, 640, 0.2, [0, 1]),
        (1152, 640, 0.2, [0, 512]),
        (1153, 640, 0.2, [0, 512, 513]),
        (1280, 640, 0.0, [0, 640]),
    ],
)
def test_tile_origins(length: int, tile: int, overlap: float, expected: list[int]) -> None:
    assert tile_origins_1d(length, tile, overlap) == expected


@pytest.mark.parametrize(("w", "h", "n"), [(3840, 2160, 32), (1920, 1080, 8), (768, 576, 2), (1282, 722, 6), (640, 640, 1)])
def test_tiles_cover_frame_and_are_full_size(w: int, h: int, n: int) -> None:
    plan = plan_tiles(w, h, 640, 640, 0.2)
    assert plan.count == n
    rects = plan.content_rects()
    covered = np.zeros((h, w), bool)
    for x0, y0, x1, y1 in rects.astype(int):
        covered[y0:y1, x0:x1] = True
    assert covered.all()
    if w >= 640 and h >= 640:
        assert (plan.content_wh == 640).all()
        assert (rects[:, 2] <= w).all() and (rects[:, 3] <= h).all()


def test_4k_tiles_overlap_at_least_the_configured_fraction() -> None:
    plan = plan_tiles(3840, 2160, 640, 640, 0.2)
    xs = np.unique(plan.origins[:, 0])
    assert (np.diff(xs) <= 512).all()
    assert plan.grid_shape == (4, 8)


@pytest.mark.parametrize(
    ("w", "h", "grid", "last_content"),
    [(3840, 2160, (3, 6), (640, 720)), (768, 576, (1, 2), (128, 576)), (1920, 1080, (2, 3), (640, 360)), (1282, 722, (2, 3), (2, 2))],
)
def test_density_grid(w: int, h: int, grid: tuple[int, int], last_content: tuple[int, int]) -> None:
    plan = plan_grid(w, h, 640, 720)
    assert plan.grid_shape == grid
    assert plan.count == grid[0] * grid[1]
    assert tuple(plan.content_wh[-1]) == last_content
    assert plan.content_rects()[:, 2].max() == w and plan.content_rects()[:, 3].max() == h


def test_tile_box_maps_to_frame_by_origin() -> None:
    plan = plan_tiles(3840, 2160, 640, 640, 0.2)
    box = np.array([[10, 20, 110, 220]], np.float32)
    i = 9  # second row, second column
    ox, oy = plan.origins[i]
    np.testing.assert_allclose(plan.tensor_to_frame(box, i)[0], [ox + 10, oy + 20, ox + 110, oy + 220])


@pytest.mark.parametrize("bad", [(0, 100), (100, -1)])
def test_bad_sizes_raise(bad: tuple[int, int]) -> None:
    with pytest.raises(ValueError, match="positive"):
        plan_letterbox(bad[0], bad[1], 640, 640)


@pytest.mark.parametrize(
    ("frame", "want"),
    [((3840, 2160), (1280, 720)), ((1920, 1080), (1280, 720)), ((768, 576), (768, 576)), ((1080, 1920), (404, 720)),
     ((641, 481), (640, 480)), ((4096, 2160), (1280, 674))],
)
def test_display_size_keeps_the_aspect_within_1280x720_and_never_upscales(frame: tuple[int, int], want: tuple[int, int]) -> None:
    from pipeline.geometry import display_size

    assert display_size(*frame) == want
    w, h = want
    assert w % 2 == 0 and h % 2 == 0 and w <= 1280 and h <= 720
