"""Merging global and tile detections: one person on a seam counts once, neighbours stay apart,
masks are stitched. Tile rects come from the real planner."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from config.schema import MergeConfig
from pipeline.counting import ios, merge_detections, overlapping_pairs, placement, stitch_masks
from pipeline.geometry import plan_tiles
from pipeline.types import GLOBAL_SOURCE, Detections

G = GLOBAL_SOURCE
CFG = MergeConfig(ios_threshold=0.6, edge_margin_px=4)

# Two tiles side by side: 1152x640 -> tile 0 = [0, 0, 640, 640], tile 1 = [512, 0, 1152, 640].
SIDE = (1152, 640)
# Two tiles stacked: 640x1152 -> tile 0 = [0, 0, 640, 640], tile 1 = [0, 512, 640, 1152].
STACK = (640, 1152)


def tile_rects(frame_wh: tuple[int, int]) -> np.ndarray:
    return plan_tiles(*frame_wh, 640, 640, 0.2).content_rects().astype(np.float32)


Row = tuple[float, float, float, float, float, int]  # x0, y0, x1, y1, score, source


def make_detections(rows: Sequence[Row], masks: Sequence[np.ndarray] | None = None) -> Detections:
    """Detections from (x0, y0, x1, y1, score, source) rows; masks over each box's integer rect."""
    arr = np.asarray(rows, np.float32).reshape(-1, 6)
    return Detections(
        xyxy=arr[:, :4].copy(),
        score=arr[:, 4].copy(),
        class_id=np.zeros(len(arr), np.int32),
        source=arr[:, 5].astype(np.int32),
        masks=None if masks is None else tuple(masks),
        mask_xyxy=None if masks is None else np.floor(arr[:, :4]).astype(np.int32),
    )


def split(rows: Sequence[Row]) -> tuple[Detections, Detections]:
    return make_detections([r for r in rows if r[5] == G]), make_detections([r for r in rows if r[5] != G])


def test_tile_layouts() -> None:
    np.testing.assert_array_equal(tile_rects(SIDE), [[0, 0, 640, 640], [512, 0, 1152, 640]])
    np.testing.assert_array_equal(tile_rects(STACK), [[0, 0, 640, 640], [0, 512, 640, 1152]])


@pytest.mark.parametrize(
    ("name", "frame_wh", "rows", "expected"),
    [
        ("whole in the overlap, seen by both tiles", SIDE,
         [(540, 100, 600, 300, 0.8, 0), (541, 101, 601, 299, 0.9, 1)],
         [((540, 100, 601, 300), 0)]),  # tile 0's box is 40 px from its inner edge, tile 1's 29 px
        ("cut by both tiles across a vertical seam", SIDE,
         [(450, 100, 640, 400, 0.8, 0), (512, 100, 700, 400, 0.7, 1)],
         [((450, 100, 700, 400), 0)]),
        ("tall person cut by both tiles across a horizontal seam (plain IoS 0.44)", STACK,
         [(200, 350, 300, 640, 0.8, 0), (200, 512, 300, 850, 0.9, 1)],
         [((200, 350, 300, 850), 1)]),
        ("two people close together in the overlap stay two", SIDE,
         [(520, 100, 570, 300, 0.8, 0), (575, 100, 625, 300, 0.8, 0),
          (520, 100, 570, 300, 0.7, 1), (575, 100, 625, 300, 0.7, 1)],
         [((520, 100, 570, 300), 0), ((575, 100, 625, 300), 1)]),
        ("two tall people side by side, both cut by both tiles, stay two", STACK,
         [(100, 350, 200, 640, 0.8, 0), (220, 350, 320, 640, 0.8, 0),
          (100, 512, 200, 850, 0.8, 1), (220, 512, 320, 850, 0.8, 1)],
         [((100, 350, 200, 850), 0), ((220, 350, 320, 850), 0)]),
        ("occluded person inside a bigger box of the same tile stays", SIDE,
         [(100, 100, 300, 500, 0.9, 0), (150, 150, 230, 300, 0.6, 0)],
         [((100, 100, 300, 500), 0), ((150, 150, 230, 300), 0)]),
        ("global and two cut tile halves: one person, the global box", STACK,
         [(198, 355, 302, 845, 0.6, G), (200, 350, 300, 640, 0.8, 0), (200, 512, 300, 850, 0.9, 1)],
         [((198, 350, 302, 850), G)]),
        ("global duplicate of a whole tile detection", SIDE,
         [(95, 98, 205, 402, 0.5, G), (100, 100, 200, 400, 0.9, 0)],
         [((95, 98, 205, 402), G)]),
        ("global and tile of different people stay two", SIDE,
         [(95, 98, 205, 402, 0.5, G), (300, 100, 400, 400, 0.9, 0)],
         [((95, 98, 205, 402), G), ((300, 100, 400, 400), 0)]),
        ("frame edge does not cut: the edge tile keeps its box", SIDE,
         [(1100, 100, 1152, 300, 0.5, 1)],
         [((1100, 100, 1152, 300), 1)]),
    ],
)
def test_merge(name: str, frame_wh: tuple[int, int], rows: list[Row], expected: list[tuple[tuple[float, ...], int]]) -> None:
    merged = merge_detections(*split(rows), tile_rects(frame_wh), frame_wh, CFG)
    assert len(merged) == len(expected), name
    got = sorted(zip(merged.xyxy.tolist(), merged.source.tolist(), strict=True))
    want = sorted((list(map(float, b)), s) for b, s in expected)
    for (gb, gs), (wb, ws) in zip(got, want, strict=True):
        np.testing.assert_allclose(gb, wb, err_msg=name)
        assert gs == ws, name


@pytest.mark.parametrize(
    ("rows", "kept_source"),
    [
        # same person whole in both tiles: tile 0's box is 10 px from its inner edge (640), tile 1's
        # 88 px from its inner edge (512): tile 1 is better placed, though its score is lower
        ([(600, 100, 630, 300, 0.9, 0), (600, 100, 630, 300, 0.5, 1)], 1),
        ([(520, 100, 560, 300, 0.5, 0), (520, 100, 560, 300, 0.9, 1)], 0),  # 80 px vs 8 px
        # equal placement (44 px each, mirror positions in the overlap): the score decides
        ([(556, 100, 596, 300, 0.5, 0), (556, 100, 596, 300, 0.9, 1)], 1),
        ([(556, 100, 596, 300, 0.9, 0), (556, 100, 596, 300, 0.5, 1)], 0),
    ],
)
def test_better_placed_detection_is_kept(rows: list[Row], kept_source: int) -> None:
    merged = merge_detections(*split(rows), tile_rects(SIDE), SIDE, CFG)
    assert merged.source.tolist() == [kept_source]
    assert merged.score[0] == pytest.approx(rows[kept_source][4])


def test_placement_ignores_frame_edges() -> None:
    rects = tile_rects(SIDE)
    boxes = np.array([[10, 10, 100, 630], [600, 10, 700, 100], [1000, 0, 1152, 640], [300, 300, 400, 400]], np.float32)
    got = placement(boxes, np.stack([rects[0], rects[1], rects[1], np.array([0, 0, 1152, 640])]), SIDE)
    np.testing.assert_allclose(got, [540, 88, 488, np.inf])


@pytest.mark.parametrize(
    ("a", "b", "want"),
    [
        ((0, 0, 10, 10), (5, 0, 15, 10), 0.5),
        ((0, 0, 10, 10), (1, 1, 3, 3), 1.0),  # contained
        ((0, 0, 10, 10), (20, 20, 30, 30), 0.0),
        ((0, 0, 10, 10), (10, 0, 20, 10), 0.0),  # touching edges
        ((0, 0, 4, 4), (2, 2, 2, 8), 0.0),  # empty box
    ],
)
def test_ios(a: tuple, b: tuple, want: float) -> None:
    got = ios(np.array([a, b], np.float32), np.array([b, a], np.float32))
    np.testing.assert_allclose(got, [want, want])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_overlapping_pairs_match_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 500, (300, 2)).round()  # rounding makes ties and touching edges
    boxes = np.concatenate([xy, xy + rng.uniform(0, 60, (300, 2)).round()], axis=1).astype(np.float32)
    i, j = overlapping_pairs(boxes)
    got = {(min(a, b), max(a, b)) for a, b in zip(i.tolist(), j.tolist(), strict=True)}
    assert len(got) == len(i)  # each pair once
    iw = np.minimum(boxes[:, None, 2], boxes[None, :, 2]) - np.maximum(boxes[:, None, 0], boxes[None, :, 0])
    ih = np.minimum(boxes[:, None, 3], boxes[None, :, 3]) - np.maximum(boxes[:, None, 1], boxes[None, :, 1])
    want = {(int(a), int(b)) for a, b in zip(*np.nonzero(np.triu((iw > 0) & (ih > 0), 1)), strict=True)}
    assert got == want and len(want) > 50


def test_masks_stitched_across_a_seam() -> None:
    # A tall person cut by the horizontal seam; each tile has a 4x-subsampled mask of a vertical
    # bar in the middle of its half. The merged mask covers both halves as one whole bar.
    top_box, bot_box = (200, 352, 300, 640), (200, 512, 300, 852)
    top = np.zeros((72, 25), bool)
    top[:, 10:15] = True  # frame x 240..260
    bot = np.zeros((85, 25), bool)
    bot[:, 10:15] = True
    rows = [(*top_box, 0.8, 0), (*bot_box, 0.9, 1)]
    tiles = make_detections(rows, masks=[top, bot])
    merged = merge_detections(None, tiles, tile_rects(STACK), STACK, CFG)
    assert len(merged) == 1 and merged.masks is not None and merged.mask_xyxy is not None
    assert merged.mask_xyxy[0].tolist() == [200, 352, 300, 852]
    np.testing.assert_allclose(merged.xyxy[0], [200, 352, 300, 852])
    mask = merged.masks[0]
    assert mask.shape == (125, 25)  # the finer resolution of the two (4 frame px per mask px)
    want = np.zeros((125, 25), bool)
    want[:, 10:15] = True
    np.testing.assert_array_equal(mask, want)


def test_stitch_masks_union_of_different_resolutions() -> None:
    coarse = np.ones((2, 2), bool)  # rect 0..40 x 0..40, 20 px per mask pixel
    coarse[1, 1] = False
    fine = np.ones((10, 10), bool)  # rect 40..60 x 40..60, 2 px per mask pixel
    mask, rect = stitch_masks([coarse, fine], np.array([[0, 0, 40, 40], [40, 40, 60, 60]]))
    assert rect.tolist() == [0, 0, 60, 60]
    assert mask.shape == (30, 30)
    assert mask[:10, :20].all() and mask[10:20, :10].all()  # coarse True quadrants
    assert not mask[10:20, 10:20].any()  # coarse False quadrant
    assert mask[20:, 20:].all()  # fine
    assert not mask[20:, :20].any() and not mask[:20, 20:].any()  # outside both rects


def test_masks_dropped_when_one_branch_has_none() -> None:
    glob = make_detections([(95, 98, 205, 402, 0.5, G)])
    tiles = make_detections([(100, 100, 200, 400, 0.9, 0)], masks=[np.ones((75, 25), bool)])
    merged = merge_detections(glob, tiles, tile_rects(SIDE), SIDE, CFG)
    assert len(merged) == 1 and merged.masks is None


@pytest.mark.parametrize(("glob", "tiles"), [(None, None), (Detections.empty(), None), (None, Detections.empty())])
def test_merge_empty(glob: Detections | None, tiles: Detections | None) -> None:
    assert len(merge_detections(glob, tiles, None, SIDE, CFG)) == 0


def test_tile_source_without_rects_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"tile sources \[0, 3\] but 2 tile rects"):
        merge_detections(None, make_detections([(0, 0, 5, 5, 0.5, 0), (9, 9, 20, 20, 0.5, 3)]), tile_rects(SIDE), SIDE, CFG)
