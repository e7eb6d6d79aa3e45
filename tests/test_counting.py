"""Hybrid count (detections where sparse, density where dense, per region), policies, zones."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from config.errors import ConfigError
from config.schema import HybridConfig, ZoneConfig
from pipeline.counting import (
    _region_of,
    grid_in_polygon,
    hybrid_count,
    points_in_polygon,
    region_density,
    reliable_regions,
    zone_polygon,
)
from pipeline.types import DensityMap, Detections

FRAME = (1920, 1080)
# Default grid 3x6: regions of 320x360 px = 0.1152 Mpx; dense = D >= 3 and D >= 40/Mpx (4.608 people).
CFG = HybridConfig(dense_people_per_mpx=40.0)  # the tables below are written for this rate


def make_detections(feet_points: Sequence[tuple[float, float]], w: float = 24, h: float = 60) -> Detections:
    """Person boxes of w x h standing at each (x, y) feet point (box centre h/2 above the feet).
    The default 60 px is below the calibration's ``min_box_height_px`` (100): people small enough
    that a crowd of them can saturate the detector (``reliable_regions``)."""
    pts = np.asarray(feet_points, np.float32).reshape(-1, 2)
    xyxy = np.stack([pts[:, 0] - w / 2, pts[:, 1] - h, pts[:, 0] + w / 2, pts[:, 1]], axis=1)
    n = len(pts)
    return Detections(xyxy=xyxy.astype(np.float32), score=np.full(n, 0.9, np.float32),
                      class_id=np.zeros(n, np.int32), source=np.full(n, -1, np.int32))


def make_density(people: Sequence[tuple[float, float, float]], frame_wh: tuple[int, int] = FRAME, stride: int = 8) -> DensityMap:
    """A density map with ``n`` people in the cell containing each (x, y, n)."""
    w, h = frame_wh
    d = np.zeros((-(-h // stride), -(-w // stride)), np.float32)
    for x, y, n in people:
        d[int(y // stride), int(x // stride)] += n
    return DensityMap(density=d, stride=stride)


def region_centre(r: int, c: int) -> tuple[float, float]:
    return (c + 0.5) * 320, (r + 0.5) * 360


def people_in(r: int, c: int, n: int) -> list[tuple[float, float]]:
    """n feet points in region (r, c) whose box centres stay in that region."""
    x, y = region_centre(r, c)
    return [(x - 100 + 20 * i, y + 50) for i in range(n)]


@pytest.mark.parametrize(
    ("name", "feet_pts", "density", "fused", "dense_regions"),
    [
        ("sparse scene: detections everywhere",
         people_in(0, 0, 2) + people_in(2, 5, 3),
         [(*region_centre(0, 0), 1.0), (*region_centre(1, 1), 1.0), (*region_centre(2, 5), 2.0)],
         5.0, []),
        ("dense region counts by density",
         people_in(0, 0, 3) + people_in(2, 5, 2),
         [(*region_centre(0, 0), 50.0)],
         52.0, [(0, 0)]),
        ("mixed: two dense regions, one just below the rate",
         people_in(0, 0, 3) + people_in(1, 2, 4) + people_in(2, 3, 6),
         [(*region_centre(0, 0), 50.0), (*region_centre(1, 2), 10.0), (*region_centre(2, 3), 4.5)],
         50.0 + 10.0 + 6.0, [(0, 0), (1, 2)]),  # 4.5 people = 39 / Mpx: detections
        ("no people", [], [], 0.0, []),
    ],
)
def test_hybrid_regions(name: str, feet_pts: list, density: list, fused: float, dense_regions: list) -> None:
    result = hybrid_count(make_detections(feet_pts), make_density(density), FRAME, CFG, "hybrid")
    assert result.fused == pytest.approx(fused), name
    assert result.policy == "hybrid"
    assert result.detection == len(feet_pts)
    assert result.density == pytest.approx(sum(n for *_, n in density))
    want_source = np.zeros((3, 6), np.int8)
    for r, c in dense_regions:
        want_source[r, c] = 1
    np.testing.assert_array_equal(result.region_source, want_source)
    assert result.region_counts.sum() == pytest.approx(fused)


@pytest.mark.parametrize(
    ("cfg", "people", "dense"),
    [
        # 1x1 region: 50 people over 2.07 Mpx = 24 / Mpx, not dense
        (HybridConfig(region_rows=1, region_cols=1, dense_people_per_mpx=40.0), 50.0, False),
        (HybridConfig(region_rows=1, region_cols=1, dense_people_per_mpx=20.0), 50.0, True),
        # 10x10 regions of 0.0207 Mpx: 2.5 people = 120 / Mpx, but fewer than min_density_people
        (HybridConfig(region_rows=10, region_cols=10, dense_people_per_mpx=40.0), 2.5, False),
        (HybridConfig(region_rows=10, region_cols=10, min_density_people=2.0, dense_people_per_mpx=40.0), 2.5, True),
    ],
)
def test_hybrid_thresholds(cfg: HybridConfig, people: float, dense: bool) -> None:
    result = hybrid_count(make_detections([(100, 130)]), make_density([(96, 50, people)]), FRAME, cfg, "hybrid")
    assert bool(result.region_source[0, 0]) is dense
    assert result.fused == pytest.approx(people if dense else 1.0)
    assert result.region_source.shape == (cfg.region_rows, cfg.region_cols)


@pytest.mark.parametrize(
    ("name", "heights", "n", "by_density"),
    [
        ("large and sparse: the detector sees them, the density's 50 is its error", [120.0], 3, False),
        ("small people: a crowd the detector misses", [60.0], 3, True),
        ("median below the limit: two small, one large", [60.0, 60.0, 130.0], 3, True),
        ("large but packed: 8 in 0.1152 Mpx is 69 / Mpx, above 60", [120.0], 8, True),
        ("exactly the limit is reliable", [100.0], 3, False),
    ],
)
def test_hybrid_keeps_detections_where_they_are_reliable(name: str, heights: list[float], n: int, by_density: bool) -> None:
    """Issue 11: a region whose detections are reliable (the calibration's criterion: median box
    height >= min_box_height_px, at most max_reliable_people_per_mpx) counts by detections even where
    the density says far more; elsewhere density counts where detection saturates."""
    feet_pts = people_in(1, 2, n)
    h = np.resize(np.asarray(heights, np.float32), n)
    dets = make_detections(feet_pts)
    dets = Detections(  # the same feet, boxes of the given heights
        xyxy=np.stack([dets.xyxy[:, 0], dets.xyxy[:, 3] - h, dets.xyxy[:, 2], dets.xyxy[:, 3]], axis=1),
        score=dets.score, class_id=dets.class_id, source=dets.source,
    )
    result = hybrid_count(dets, make_density([(*region_centre(1, 2), 50.0)]), FRAME, CFG, "hybrid")
    assert bool(result.region_source[1, 2]) is by_density, name
    assert result.fused == pytest.approx(50.0 if by_density else float(n)), name


def test_reliable_regions_counts_and_medians() -> None:
    feet_pts = people_in(0, 0, 2) + people_in(2, 5, 3)
    dets = make_detections(feet_pts, h=110)
    ok, k = reliable_regions(dets, FRAME, 3, 6, 100.0, 60.0)
    want_k = np.zeros((3, 6), np.int64)
    want_k[0, 0], want_k[2, 5] = 2, 3
    np.testing.assert_array_equal(k, want_k)
    np.testing.assert_array_equal(ok, want_k > 0)
    ok, _ = reliable_regions(dets, FRAME, 3, 6, 111.0, 60.0)
    assert not ok.any()
    ok, k = reliable_regions(Detections.empty(), FRAME, 3, 6, 100.0, 60.0)
    assert not ok.any() and not k.any()


def test_reliable_regions_medians_match_numpy() -> None:
    """The per-region median (odd and even counts, ties at the limit) against np.median region by region."""
    rng = np.random.default_rng(7)
    for trial in range(300):
        n = int(rng.integers(1, 120))
        x, y = rng.uniform(-40, FRAME[0], n), rng.uniform(-40, FRAME[1], n)
        h = rng.choice([60.0, 99.5, 100.0, 100.5, 140.0], n) if trial % 2 else rng.uniform(20, 200, n)
        dets = Detections(
            xyxy=np.stack([x, y, x + 0.4 * h, y + h], axis=1).astype(np.float32),
            score=np.ones(n, np.float32), class_id=np.zeros(n, np.int32), source=np.full(n, -1, np.int32),
        )
        rows, cols = int(rng.integers(1, 6)), int(rng.integers(1, 8))
        ok, k = reliable_regions(dets, FRAME, rows, cols, 100.0, 1e9)
        r, c = _region_of(dets.center, FRAME, rows, cols)
        heights = dets.xyxy[:, 3] - dets.xyxy[:, 1]
        for i in range(rows):
            for j in range(cols):
                mine = (r == i) & (c == j)
                assert k[i, j] == mine.sum()
                assert ok[i, j] == (mine.any() and np.median(heights[mine].astype(np.float64)) >= 100.0), (trial, i, j)


@pytest.mark.parametrize(
    ("policy", "with_density", "fused", "label", "source"),
    [
        ("detections", True, 5.0, "detections", 0),
        ("density", True, 57.0, "density", 1),
        ("hybrid", True, 52.0 + 5.0, "hybrid", None),
        ("detections", False, 5.0, "detections", 0),
        ("density", False, 5.0, "density(density unavailable)->detections", 0),
        ("hybrid", False, 5.0, "hybrid(density unavailable)->detections", 0),
    ],
)
def test_policies(policy: str, with_density: bool, fused: float, label: str, source: int | None) -> None:
    dets = make_detections(people_in(0, 0, 3) + people_in(2, 5, 2))
    density = make_density([(*region_centre(0, 0), 50.0), (*region_centre(2, 5), 2.0), (*region_centre(1, 3), 5.0)])
    result = hybrid_count(dets, density if with_density else None, FRAME, CFG, policy)  # type: ignore[arg-type]
    assert result.fused == pytest.approx(fused)
    assert result.policy == label
    assert result.detection == 5
    assert result.density == (pytest.approx(57.0) if with_density else None)
    if source is not None:
        assert (result.region_source == source).all()
    else:  # hybrid: (0, 0) and (1, 3) dense, the rest by detections
        assert result.region_source.sum() == 2 and result.region_source[0, 0] == 1 and result.region_source[1, 3] == 1


def test_unknown_policy() -> None:
    with pytest.raises(ValueError, match="unknown policy 'average'"):
        hybrid_count(Detections.empty(), None, FRAME, CFG, "average")  # type: ignore[arg-type]


# --- zones ---------------------------------------------------------------------------------------

LEFT_THIRD = ZoneConfig(name="left", polygon=[(0, 0), (640, 0), (640, 1080), (0, 1080)])
TRIANGLE = ZoneConfig(name="door", polygon=[(1300, 1080), (1900, 1080), (1900, 700)])


@pytest.mark.parametrize(
    ("policy", "left", "door"),
    [
        # region (0, 0) is dense: its 3 detections give way to its 50 density people
        ("hybrid", 50.0 + 2.0, 1.0),
        ("detections", 3.0 + 2.0, 1.0),
        ("density", 50.0 + 1.0, 3.0),
    ],
)
def test_zones(policy: str, left: float, door: float) -> None:
    feet_pts = [
        *people_in(0, 0, 3),  # dense region, inside "left"
        (400, 700), (600, 1000),  # sparse, inside "left"
        (700, 1000),  # right of "left"
        (1800, 1000),  # inside "door"
        (1500, 800),  # above the door's hypotenuse: outside
    ]
    density = make_density([(*region_centre(0, 0), 50.0), (500, 900, 1.0), (1850, 1050, 3.0)])
    result = hybrid_count(make_detections(feet_pts), density, FRAME, CFG, policy, zones=[LEFT_THIRD, TRIANGLE])  # type: ignore[arg-type]
    assert dict(result.zones) == pytest.approx({"left": left, "door": door})


def test_zone_uses_the_feet_not_the_centre() -> None:
    zone = ZoneConfig(name="floor", polygon=[(0, 500), (1920, 500), (1920, 1080), (0, 1080)])
    dets = make_detections([(100, 520), (300, 480)], h=200)  # centres at y 420 and 380, both outside
    result = hybrid_count(dets, None, FRAME, CFG, "detections", zones=[zone])
    assert result.zones == {"floor": 1.0}


# --- zones at any resolution ------------------------------------------------------------------

HALVES = {  # the left and right halves of a 768x576 frame, written three ways
    "normalized": [
        ZoneConfig(name="left", polygon=[(0, 0), (0.5, 0), (0.5, 1), (0, 1)], units="normalized"),
        ZoneConfig(name="right", polygon=[(0.5, 0), (1, 0), (1, 1), (0.5, 1)], units="normalized"),
    ],
    "pixels with frame_size": [
        ZoneConfig(name="left", polygon=[(0, 0), (384, 0), (384, 576), (0, 576)], frame_size=(768, 576)),
        ZoneConfig(name="right", polygon=[(384, 0), (768, 0), (768, 576), (384, 576)], frame_size=(768, 576)),
    ],
}
WHOLE = ZoneConfig(name="all", polygon=[(0, 0), (1, 0), (1, 1), (0, 1)], units="normalized")


def people_at(frame_wh: tuple[int, int], fractions: Sequence[tuple[float, float]]) -> Detections:
    """People standing at fractions of the frame (the same scene at any resolution)."""
    w, h = frame_wh
    return make_detections([(fx * w, fy * h) for fx, fy in fractions], w=0.05 * w, h=0.2 * h)


SCENE = [(0.1, 0.5), (0.3, 0.9), (0.6, 0.4), (0.7, 0.6), (0.9, 0.95)]  # 2 left, 3 right


@pytest.mark.parametrize("units", list(HALVES))
@pytest.mark.parametrize("frame_wh", [(768, 576), (384, 288), (1920, 1440), (1000, 576)])
def test_zones_follow_a_change_of_resolution(units: str, frame_wh: tuple[int, int]) -> None:
    """One zone config, frames of several sizes: the left half counts the left half (the old pixel
    zone made for 768x576 counted everyone at 384x288)."""
    result = hybrid_count(people_at(frame_wh, SCENE), None, frame_wh, CFG, "detections", zones=[*HALVES[units], WHOLE])
    assert result.zones == {"left": 2.0, "right": 3.0, "all": 5.0}


@pytest.mark.parametrize("units", list(HALVES))
def test_density_in_zones_follows_a_change_of_resolution(units: str) -> None:
    for frame_wh in [(768, 576), (384, 288)]:
        w, h = frame_wh
        density = make_density([(0.25 * w, 0.5 * h, 10.0), (0.75 * w, 0.5 * h, 30.0)], frame_wh)
        result = hybrid_count(people_at(frame_wh, []), density, frame_wh, CFG, "density", zones=[*HALVES[units], WHOLE])
        assert dict(result.zones) == pytest.approx({"left": 10.0, "right": 30.0, "all": 40.0}), frame_wh


def test_a_pixel_zone_drawn_for_a_larger_frame_is_refused() -> None:
    """Without frame_size, a pixel zone is used as written; one that does not fit the frame is an
    error naming the zone and the frame, not a count of the wrong area."""
    zone = ZoneConfig(name="left", polygon=[(0, 0), (384, 0), (384, 576), (0, 576)])
    assert hybrid_count(people_at((768, 576), SCENE), None, (768, 576), CFG, "detections", zones=[zone]).zones == {"left": 2.0}
    with pytest.raises(ConfigError, match=r"zones 'left': polygon point \(384, 576\) lies outside the 384x288 frame.*frame_size"):
        hybrid_count(people_at((384, 288), SCENE), None, (384, 288), CFG, "detections", zones=[zone])


@pytest.mark.parametrize(
    ("zone", "frame_wh", "expected"),
    [
        (ZoneConfig(name="z", polygon=[(0, 0), (0.5, 0), (0.5, 1)], units="normalized"), (768, 576), [(0, 0), (384, 0), (384, 576)]),
        (ZoneConfig(name="z", polygon=[(0, 0), (384, 0), (384, 576)], frame_size=(768, 576)), (1920, 1080), [(0, 0), (960, 0), (960, 1080)]),
        (ZoneConfig(name="z", polygon=[(0, 0), (768, 0), (768, 576)]), (768, 576), [(0, 0), (768, 0), (768, 576)]),  # on the edge: fits
    ],
)
def test_zone_polygon_in_frame_pixels(zone: ZoneConfig, frame_wh: tuple[int, int], expected: list) -> None:
    np.testing.assert_allclose(zone_polygon(zone, frame_wh), expected)


def test_zones_to_the_frame_edge_count_people_cut_by_it() -> None:
    """A person whose box the frame's bottom cuts stands at y == height: on the zone's edge, where
    the even-odd rule says outside; they are counted in the zone drawn to that edge, and halves
    that split the frame sum to the total, detections and density cells alike."""
    frame_wh = (768, 576)
    dets = make_detections([(100, 576), (500, 576), (767.9, 300)])
    density = DensityMap(density=np.full((73, 97), 0.01, np.float32), stride=8)  # cells centred past both edges
    for policy in ("detections", "density"):
        result = hybrid_count(dets, density, frame_wh, CFG, policy, zones=[*HALVES["normalized"], WHOLE])  # type: ignore[arg-type]
        assert result.zones["all"] == pytest.approx(result.fused), policy
        assert result.zones["left"] + result.zones["right"] == pytest.approx(result.fused), policy
        assert 0 < result.zones["left"] < result.fused


L_SHAPE = [(0, 0), (10, 0), (10, 4), (4, 4), (4, 10), (0, 10)]


@pytest.mark.parametrize(
    ("polygon", "points", "inside"),
    [
        ([(0, 0), (10, 0), (10, 10), (0, 10)], [(5, 5), (15, 5), (-1, 5), (5, 11), (9.9, 0.1)], [1, 0, 0, 0, 1]),
        (L_SHAPE, [(2, 2), (8, 2), (2, 8), (8, 8), (5, 5)], [1, 1, 1, 0, 0]),  # the notch is outside
        ([(0, 0), (10, 5), (0, 10)], [(1, 5), (9, 5), (9, 1), (5, 7.4)], [1, 1, 0, 1]),
    ],
)
def test_points_in_polygon(polygon: list, points: list, inside: list[int]) -> None:
    got = points_in_polygon(np.asarray(points, np.float64), polygon)
    assert got.astype(int).tolist() == inside


@pytest.mark.parametrize("polygon", [L_SHAPE, [(0, 0), (10, 5), (0, 10)], [(1, 1), (9, 2), (3, 5), (8, 9), (0.5, 7)]])
def test_grid_in_polygon_matches_points(polygon: list) -> None:
    xs = np.linspace(-1, 11, 37)
    ys = np.linspace(-1, 11, 29)
    gx, gy = np.meshgrid(xs, ys)
    want = points_in_polygon(np.stack([gx.ravel(), gy.ravel()], axis=1), polygon).reshape(gy.shape)
    np.testing.assert_array_equal(grid_in_polygon(xs, ys, polygon), want)
    assert want.any() and not want.all()


@pytest.mark.parametrize(("frame_wh", "rows", "cols"), [((1920, 1080), 3, 6), ((1804, 1003), 3, 6), ((1000, 600), 7, 5)])
def test_region_density_partitions_the_map(frame_wh: tuple[int, int], rows: int, cols: int) -> None:
    rng = np.random.default_rng(1)
    w, h = frame_wh
    dmap = DensityMap(density=rng.uniform(0, 1, (-(-h // 8), -(-w // 8))).astype(np.float32), stride=8)
    got = region_density(dmap, frame_wh, rows, cols)
    assert got.sum() == pytest.approx(dmap.count, rel=1e-9)
    # inner regions agree with DensityMap.integral (same cell-centre rule)
    rw, rh = w / cols, h / rows
    for r in range(rows - 1):
        for c in range(cols - 1):
            assert got[r, c] == pytest.approx(dmap.integral(c * rw, r * rh, (c + 1) * rw, (r + 1) * rh), rel=1e-6)
