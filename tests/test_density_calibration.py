"""Density calibration (``pipeline.density_calibration``): the robust fit, the background floor, the
flat-cell gate and the per-region scale, on built maps; the FrameCounter wiring.

The real-model acceptance (flat grey, empty vtest background, hand-counted vtest frames, dense
scenes) is in ``test_density_background.py``, ``test_density_vtest.py`` and ``test_density_dense.py``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from config.schema import CountingConfig, DensityCalibrationConfig, HybridConfig
from pipeline.density_calibration import DensityCalibrator, fit_scale
from pipeline.frame_counter import FrameCounter
from pipeline.types import BranchResult, DensityMap, Detections, FrameMeta

FRAME = (640, 480)
S = 8
SHAPE = (480 // S, 640 // S)


def make_detections(boxes: Sequence[tuple[float, float, float, float]]) -> Detections:
    xyxy = np.asarray(boxes, np.float32).reshape(-1, 4)
    n = len(xyxy)
    return Detections(xyxy, np.full(n, 0.9, np.float32), np.zeros(n, np.int32), np.full(n, -1, np.int32))


def person_blob(d: np.ndarray, x: float, y: float, mass: float) -> None:
    """Add ``mass`` raw people spread over the 3x6 cells around frame point (x, y)."""
    r, c = int(y // S), int(x // S)
    d[r - 3 : r + 3, c - 1 : c + 2] += mass / 18


def hybrid(**calibration: object) -> HybridConfig:
    return HybridConfig(region_rows=1, region_cols=2, calibration=DensityCalibrationConfig(**calibration))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("f", "k", "want"),
    [
        ([1, 2, 3, 4, 5, 6, 7, 8], [0.5, 1, 1.5, 2, 2.5, 3, 3.5, 4], (0.5, 0.0)),
        # an outlier (a false positive in a region of no density) is trimmed
        ([1, 2, 3, 4, 5, 6, 7, 0.1], [0.5, 1, 1.5, 2, 2.5, 3, 3.5, 4], (0.5, 0.0)),
        # k = 0.5 f - 0.2 (a residual background): the offset is fitted
        ([1, 2, 3, 4, 5, 6, 7, 8], [0.3, 0.8, 1.3, 1.8, 2.3, 2.8, 3.3, 3.8], (0.5, -0.2)),
    ],
)
def test_fit_scale(f: list[float], k: list[float], want: tuple[float, float]) -> None:
    fit = fit_scale(np.array(f), np.array(k), min_samples=6)
    assert fit == pytest.approx(want, abs=1e-6)


def test_fit_refuses_a_positive_offset_and_too_few_samples() -> None:
    scale, offset = fit_scale(np.array([1.0, 2, 3, 4]), np.array([1.5, 2, 2.5, 3]), 4)  # type: ignore[misc]
    assert offset == 0.0 and scale == pytest.approx(9 / 10)  # ratio of sums: people never come from nothing
    assert fit_scale(np.array([1.0, 2]), np.array([1.0, 2]), 3) is None


def test_flat_cells_hold_no_one() -> None:
    d = np.full(SHAPE, 0.016, np.float32)  # what CSRNet gives on flat grey
    contrast = np.zeros(SHAPE, np.float32)
    contrast[:, 40:] = 10.0  # the right half is textured
    out = DensityCalibrator(hybrid())(DensityMap(d, S, contrast), make_detections([]), FRAME, learn=False)
    assert out.density.density[:, :39].sum() == 0  # flat, and not next to texture
    assert out.density.count == pytest.approx(0.016 * SHAPE[0] * 41)  # texture and its 1-cell rim kept
    assert out.calibration.flat == pytest.approx(0.016 * SHAPE[0] * 39, rel=1e-4)


def test_static_background_is_learnt_and_walkers_are_not() -> None:
    rng = np.random.default_rng(0)
    background = rng.uniform(0.002, 0.01, SHAPE).astype(np.float32)  # textured ground: ~20 raw people
    cal = DensityCalibrator(hybrid(static_frames=3, prior_scale=1.0))
    # a walker crosses the frame, detected (tall box): its cells are never learnt
    for t in range(8):
        d = background.copy()
        x = 60 + 60 * t
        person_blob(d, x, 300, 1.0)
        out = cal(DensityMap(d, S), make_detections([(x - 20, 200, x + 20, 320)]), FRAME, learn=True)
    assert out.calibration.background == pytest.approx(background.sum(), rel=0.15)
    # a new person standing where nobody was detected: the floor is taken off, the person stays
    d = background.copy()
    person_blob(d, 320, 120, 1.0)
    out = cal(DensityMap(d, S), make_detections([]), FRAME, learn=False)
    assert out.density.count == pytest.approx(1.0 * out.calibration.region_scale.mean(), rel=0.2)
    assert out.calibration.raw == pytest.approx(background.sum() + 1.0, rel=1e-4)  # what the raw map said


def test_a_new_stream_keeps_its_density_and_a_resize_starts_afresh() -> None:
    cal = DensityCalibrator(hybrid())
    d = np.full(SHAPE, 0.01, np.float32)
    for _ in range(5):
        out = cal(DensityMap(d, S), make_detections([]), FRAME, learn=True)
    assert out.density.count < 0.05 * d.sum()  # static for 5 frames: background
    big = np.full((SHAPE[0] * 2, SHAPE[1] * 2), 0.01, np.float32)
    out = cal(DensityMap(big, S), make_detections([]), (1280, 960), learn=True)
    assert out.density.count == pytest.approx(big.sum(), rel=1e-5)  # nothing learnt of this geometry yet
    assert out.calibration.frames == 1 and out.calibration.source == "prior"


def test_scale_is_fitted_per_region_where_detection_is_reliable() -> None:
    cal = DensityCalibrator(hybrid(min_samples=4, min_box_height_px=100, static_frames=100))
    # left region: tall people, CSRNet gives 0.5 raw each -> scale 2; right region: short people
    # (60 px, unreliable): never sampled, it takes the global fit
    for t in range(6):
        d = np.zeros(SHAPE, np.float32)
        boxes = []
        for j in range(1 + t % 3):
            x = 60 + 80 * j
            person_blob(d, x, 200 + 10 * t, 0.5)
            boxes.append((x - 25, 140.0 + 10 * t, x + 25, 260.0 + 10 * t))
        person_blob(d, 500, 300, 0.5)
        boxes.append((480, 270, 520, 330))
        out = cal(DensityMap(d, S), make_detections(boxes), FRAME, learn=True)
    c = out.calibration
    assert c.source == "fit" and c.samples == 6
    assert c.scale == pytest.approx(2.0, rel=1e-3) and c.offset == pytest.approx(0.0, abs=1e-6)
    assert c.region_scale[0].tolist() == pytest.approx([2.0, 2.0], rel=1e-3)


@pytest.mark.parametrize(("crowd", "factor", "scaled"), [(3.6, 2.0, True), (5.0, 2.0, False), (5.0, 3.0, True)])
def test_the_global_fit_is_not_extrapolated_to_denser_crowds(crowd: float, factor: float, scaled: bool) -> None:
    """Left region: tall, sparse people, 2 raw people of density per person (CSRNet overcounting
    large people): the global fit says 0.5. Right region: nobody detected, ``crowd`` raw people
    per left-region sample. Within ``fit_range_factor`` of the densest sample the right region
    takes the global fit; beyond it, the prior (the model as trained: small, dense people)."""
    cal = DensityCalibrator(hybrid(min_samples=4, min_box_height_px=100, static_frames=100, fit_range_factor=factor))
    for t in range(5):
        d = np.zeros(SHAPE, np.float32)
        x = 100 + 20 * t
        person_blob(d, x, 240, 2.0)  # one tall person (a 120 px box): F 2, K 1
        person_blob(d, 450 + 10 * t, 100, crowd)  # the right region's crowd, undetected
        out = cal(DensityMap(d, S), make_detections([(x - 25, 180.0, x + 25, 300.0)]), FRAME, learn=True)
    c = out.calibration
    assert c.source == "fit" and c.scale == pytest.approx(0.5, rel=1e-3)
    assert c.region_scale[0, 1] == pytest.approx(0.5 if scaled else 1.0, rel=1e-3)
    right = out.density.density[:, SHAPE[1] // 2 :].sum()
    assert right == pytest.approx(crowd * (0.5 if scaled else 1.0), rel=1e-3)


def test_frame_counter_counts_calibrated_density_and_learns_only_from_fresh_frames() -> None:
    counting = CountingConfig(hybrid=HybridConfig(calibration=DensityCalibrationConfig(static_frames=1)))
    counter = FrameCounter(counting, {"det": "global", "density": "density"})
    d = np.full((60, 80), 0.01, np.float32)
    empty = make_detections([])
    seen = []
    for i in range(4):
        meta = FrameMeta("t", i, i / 10, 0.0, 640, 480)
        dens_meta = FrameMeta("t", 0, 0.0, 0.0, 640, 480)  # density ran on frame 0 only
        results = {"det": BranchResult(meta, "det", detections=empty),
                   "density": BranchResult(dens_meta if i else meta, "density", density=DensityMap(d, S))}
        _, dmap, counts = counter(results, meta)
        assert counts.calibration is not None and dmap is not None
        assert counts.density == pytest.approx(dmap.count)
        seen.append(counts.calibration.frames)
    assert seen == [1, 1, 1, 1]  # frames 1-3 reuse frame 0's map: nothing learnt from them
    assert counts.calibration is not None
    assert counts.calibration.raw == pytest.approx(d.sum(), rel=1e-5)


def test_a_spread_density_branch_is_learnt_from_once_per_refresh_cycle() -> None:
    """A density branch spread over 5 frames refreshes the whole map once every 5 frames: the
    calibration learns on the last frame of each cycle (4, 9, ...), and calibrates every frame."""
    from config import load_pipeline_config

    cfg = load_pipeline_config("config/gpu.yaml")
    assert cfg.branches["density"].spread and cfg.branches["density"].every_n_frames == 5
    counter = FrameCounter.from_config(cfg.model_copy(update={"tracking": cfg.tracking.model_copy(update={"enabled": False})}))
    assert counter.density_learn_every == 5
    d = np.full((60, 80), 0.01, np.float32)
    empty = make_detections([])
    learnt = []
    for i in range(12):
        meta = FrameMeta("t", i, i / 30, 0.0, 640, 480)
        results = {name: BranchResult(meta, name, detections=empty) for name, role in counter.roles.items() if role != "density"}
        results["density"] = BranchResult(meta, "density", density=DensityMap(d, S))
        _, dmap, counts = counter(results, meta)
        assert counts.calibration is not None and dmap is not None and counts.density == pytest.approx(dmap.count)
        learnt.append(counts.calibration.frames)
    assert learnt == [0, 0, 0, 0, 1, 1, 1, 1, 1, 2, 2, 2]
    # without spread: every fresh frame
    assert FrameCounter.from_config(cfg.model_copy(update={"branches": {
        **cfg.branches, "density": cfg.branches["density"].model_copy(update={"spread": False})}})).density_learn_every == 1


def test_max3_is_the_maximum_over_each_3x3_neighbourhood() -> None:
    """The separable maximum against its definition: nine shifted copies of the map padded with -inf."""
    from pipeline.density_calibration import _max3

    rng = np.random.default_rng(3)
    for shape in [(1, 1), (1, 7), (6, 1), (2, 2), (5, 9), (270, 480)]:
        a = rng.random(shape).astype(np.float32)
        p = np.pad(a, 1, constant_values=-np.inf)
        h, w = shape
        want = np.max([p[dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3)], axis=0)
        got = _max3(a)
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, want)
