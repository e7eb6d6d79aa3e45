"""People over time (pipeline.tracking): tracks of the real detector's detections on vtest.avi,
checked against hand counts (tests/data/vtest_hand_counts.yaml), and the rules on built cases.

The whole clip's detections (global 640 letterbox pass, the demo detector) are computed once per
session: ~795 frames at 0.1-0.3 s a frame on 2 idle cores (444 s measured on 2 busy ones), so the
vtest tests are marked slow and given 900 s (the setup counts towards the first one's timeout).
"""

from __future__ import annotations

import math
from pathlib import Path

import av
import numpy as np
import pytest
import yaml

from config import load_pipeline_config
from config.schema import LineConfig, MergeConfig, TrackingConfig, ZoneConfig
from pipeline.counting import merge_detections
from pipeline.geometry import plan_tiles
from pipeline.tracking import PeopleTracker, TrackedFrame, bench_tracker, resolve_points
from pipeline.types import GLOBAL_SOURCE, Detections, Frame, FrameMeta

ROOT = Path(__file__).resolve().parents[1]
VTEST = ROOT / ".cache/assets/video/vtest.avi"
DETECTOR = ROOT / ".cache/assets/models/person_yolov8s.onnx"
HAND = yaml.safe_load((ROOT / "tests/data/vtest_hand_counts.yaml").read_text())
needs_assets = pytest.mark.skipif(
    not (VTEST.exists() and DETECTOR.exists()),
    reason="demo assets not fetched (run `make run` or `python main.py fetch-assets`)",
)
CLOTH_XY = (112.0, 512.0)  # the yellow cloth on the grass, lower left: detected as "Fall" in every frame


def make_detections(boxes: list[tuple[float, float, float, float]], score: float = 0.8, source: int = GLOBAL_SOURCE) -> Detections:
    n = len(boxes)
    return Detections(
        xyxy=np.array(boxes, np.float32).reshape(-1, 4),
        score=np.full(n, score, np.float32),
        class_id=np.zeros(n, np.int32),
        source=np.full(n, source, np.int32),
    )


def meta(i: int, fps: float = 10.0, wh: tuple[int, int] = (768, 576)) -> FrameMeta:
    return FrameMeta("t", i, i / fps, 0.0, wh[0], wh[1])


def person(cx: float, feet_y: float, h: float = 100.0) -> tuple[float, float, float, float]:
    return (cx - h / 5, feet_y - h, cx + h / 5, feet_y)


# --------------------------------------------------------------------------------------------
# The real clip


@pytest.fixture(scope="session")
def vtest_detections() -> tuple[list[Detections], list[FrameMeta], float]:
    """Merged detections of every vtest frame (global pass), their metas and the stream's rate."""
    if not (VTEST.exists() and DETECTOR.exists()):
        pytest.skip("demo assets not fetched")
    from app.build import make_branches, make_counter

    cfg = load_pipeline_config(ROOT / "config/pipeline.yaml")
    data = cfg.model_dump(mode="json")
    data["models"]["person"]["path"] = str(DETECTOR)
    cfg = type(cfg).model_validate(data)
    (branch,) = make_branches(cfg, only={"yolo_global"})
    counter = make_counter(cfg)
    dets: list[Detections] = []
    metas: list[FrameMeta] = []
    try:
        with av.open(str(VTEST)) as c:
            stream = c.streams.video[0]
            fps = float(stream.average_rate)
            for i, vf in enumerate(c.decode(video=0)):
                img = vf.to_ndarray(format="rgb24")
                m = FrameMeta("vtest", i, float(vf.time or 0.0), 0.0, img.shape[1], img.shape[0])
                merged, _, _ = counter({"yolo_global": branch.run(Frame(m, img))}, m)
                dets.append(merged)
                metas.append(m)
    finally:
        branch.close()
    return dets, metas, fps


def run_clip(dets: list[Detections], metas: list[FrameMeta], fps: float, cfg: TrackingConfig) -> list[TrackedFrame]:
    tracker = PeopleTracker(cfg, fps)
    return [tracker.update(d, m) for d, m in zip(dets, metas, strict=True)]


def hand_line_cfg() -> TrackingConfig:
    return TrackingConfig(lines=[LineConfig(**HAND["line"])])


@needs_assets
@pytest.mark.slow
@pytest.mark.timeout(900)  # the first one computes the clip's detections: 2-8 min on 2 cores
def test_line_in_out_match_hand_counts(vtest_detections) -> None:  # type: ignore[no-untyped-def]
    out = run_clip(*vtest_detections, hand_line_cfg())
    counts = out[-1].line_counts[HAND["line"]["name"]]
    events = [c for f in out for c in f.crossings]
    assert abs(counts.in_count - HAND["in_count"]) <= 1, (counts, [(e.frame_index, e.direction, e.track_id) for e in events])
    assert abs(counts.out_count - HAND["out_count"]) <= 1, (counts, [(e.frame_index, e.direction, e.track_id) for e in events])
    # every event is in the totals, each with its frame's time
    assert sum(e.direction == "in" for e in events) == counts.in_count
    assert all(e.pts == pytest.approx(e.frame_index / 10.0) for e in events)


@needs_assets
@pytest.mark.slow
@pytest.mark.timeout(900)  # the first one computes the clip's detections: 2-8 min on 2 cores
def test_both_bytetrack_engines_give_the_same_tracks_on_the_clip(vtest_detections) -> None:  # type: ignore[no-untyped-def]
    """tracking.engine arrays (pipeline.bytetrack) against supervision's own ByteTrack on the real
    detections: every id of every frame, every count and crossing the same."""
    cfg = hand_line_cfg()
    arrays = run_clip(*vtest_detections, cfg.model_copy(update={"engine": "arrays"}))
    ref = run_clip(*vtest_detections, cfg.model_copy(update={"engine": "supervision"}))
    for a, b in zip(arrays, ref, strict=True):
        assert np.array_equal(a.track_id, b.track_id), a.frame.frame_index
        assert (a.confirmed_count, [t.id for t in a.tracks]) == (b.confirmed_count, [t.id for t in b.tracks])
        assert a.crossings == b.crossings
    assert sum(int((f.track_id >= 0).sum()) for f in arrays) > 2000  # ids were compared, not only -1s


@needs_assets
@pytest.mark.slow
@pytest.mark.timeout(900)  # the first one computes the clip's detections: 2-8 min on 2 cores
def test_confirmed_counts_are_closer_to_hand_counts_than_raw_detections(vtest_detections) -> None:  # type: ignore[no-untyped-def]
    out = run_clip(*vtest_detections, TrackingConfig())
    hand = {int(k): v for k, v in HAND["frames"].items()}
    # frame 0: no track can be confirmed yet; unknown, not 0, and left out (statistics skip unknowns)
    assert out[0].confirmed_count is None and out[0].unknown_reason == "warming up"
    hand = {i: n for i, n in hand.items() if out[i].known}
    assert len(hand) >= 9
    raw = np.mean([abs(out[i].raw_count - n) for i, n in hand.items()])
    confirmed = np.mean([abs(out[i].confirmed_count - n) for i, n in hand.items()])
    assert confirmed < raw, (raw, confirmed, {i: (n, out[i].raw_count, out[i].confirmed_count) for i, n in hand.items()})


@needs_assets
@pytest.mark.slow
@pytest.mark.timeout(900)  # the first one computes the clip's detections: 2-8 min on 2 cores
def test_the_cloth_is_static_and_not_counted_unless_allowed(vtest_detections) -> None:  # type: ignore[no-untyped-def]
    dets, metas, fps = vtest_detections

    def centre(t):  # type: ignore[no-untyped-def]
        return ((t.xyxy[0] + t.xyxy[2]) / 2, (t.xyxy[1] + t.xyxy[3]) / 2)

    def cloth(frame: TrackedFrame) -> list:  # type: ignore[type-arg]
        """The tracks on the cloth: none while it is missed (frames 672-697, people walk past it),
        sometimes two (the detector gives it a second, wider box)."""
        near = [t for t in frame.tracks if math.dist(centre(t), CLOTH_XY) < 40]
        assert len(near) <= 2, [(t.id, t.xyxy.tolist()) for t in frame.tracks]
        return near

    out = run_clip(dets, metas, fps, TrackingConfig())
    late = [f for f in out if f.frame.pts >= TrackingConfig().static_after_s + 1][::10]
    assert sum(bool(cloth(f)) for f in late) >= 0.9 * len(late)
    assert all(t.static and not t.counted for f in late for t in cloth(f))
    assert len({t.id for f in late for t in cloth(f)}) <= 2
    # people: static only while standing still for static_after_s (in vtest two men stand talking
    # for 8 s: about 45 frames); anyone walking is never static
    people_static = [(f.frame.frame_index, t.id) for f in out for t in f.tracks if t.static and math.dist(centre(t), CLOTH_XY) > 80]
    assert len(people_static) < 0.1 * len(out), people_static
    for f in out:
        for t in f.tracks:
            if t.static and len(t.trail) == TrackingConfig().trail_length:
                span = t.trail.max(axis=0) - t.trail.min(axis=0)
                assert np.all(span <= 0.3 * math.hypot(t.xyxy[2] - t.xyxy[0], t.xyxy[3] - t.xyxy[1])), (f.frame.frame_index, t.id)
    # the operator's overrides: a static_allow polygon around it, or its id
    x, y = CLOTH_XY
    allow = ZoneConfig(name="allow", polygon=[(x - 60, y - 40), (x + 60, y - 40), (x + 60, y + 40), (x - 60, y + 40)])
    allowed = run_clip(dets, metas, fps, TrackingConfig(static_allow=[allow]))
    for f, g in zip(allowed[-50::10], out[-50::10], strict=True):
        assert cloth(f) and all(t.static and t.counted for t in cloth(f))
        assert f.confirmed_count == g.confirmed_count + len(cloth(f))
    tracker = PeopleTracker(TrackingConfig(), fps)
    for i, (d, m) in enumerate(zip(dets, metas, strict=True)):
        f = tracker.update(d, m)
        if i == 720:
            (first, *_) = cloth(f)
            tracker.allow_static(first.id)
    assert [t.counted for t in cloth(f) if t.id == first.id] == [True]
    assert f.confirmed_count == out[-1].confirmed_count + 1
    # an exclusion polygon: nothing there counts, static or not
    excluded = run_clip(dets, metas, fps, TrackingConfig(static_after_s=1000.0, exclude=[allow]))
    assert all(not t.counted and not t.static for f in excluded[50::50] for t in cloth(f))


@needs_assets
@pytest.mark.slow
@pytest.mark.timeout(900)  # the first one computes the clip's detections: 2-8 min on 2 cores
def test_a_partial_frame_is_not_fed_to_the_tracker(vtest_detections) -> None:  # type: ignore[no-untyped-def]
    dets, metas, fps = vtest_detections
    tracker = PeopleTracker(TrackingConfig(), fps)
    for d, m in zip(dets[:100], metas[:100], strict=True):
        before = tracker.update(d, m)
    unknown = tracker.update(dets[100][:1], metas[100], known=False)  # a branch missing: one detection left
    assert unknown.confirmed_count is None and unknown.raw_count is None and unknown.unknown_reason
    assert (unknown.track_id == -1).all() and unknown.tracks == before.tracks
    after = tracker.update(dets[101], metas[101])
    # nobody was dropped by the partial frame: the same people, the same ids
    assert {t.id for t in after.tracks} >= {t.id for t in before.tracks if t.missed_frames == 0} - {
        t.id for t in after.tracks if t.missed_frames
    }
    assert abs(after.confirmed_count - before.confirmed_count) <= 1


# --------------------------------------------------------------------------------------------
# Built cases: the rules one by one


def test_one_frame_false_positive_never_counts_and_one_frame_miss_keeps_the_count() -> None:
    tracker = PeopleTracker(TrackingConfig(min_confirm_frames=3, miss_hold_frames=2), 10.0)
    counts = []
    for i in range(12):
        boxes = [person(100 + 5 * i, 300)]
        if i == 4:
            boxes.append(person(600, 400))  # a cone, one frame
        if i == 7:
            boxes = []  # the walker missed for a frame
        counts.append(tracker.update(make_detections(boxes), meta(i)).confirmed_count)
    assert counts == [None, None, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]  # None: warming up, no track can be confirmed yet


def test_ids_survive_a_short_miss_and_end_after_lost_track_s() -> None:
    tracker = PeopleTracker(TrackingConfig(lost_track_s=1.0), 10.0)
    ids = []
    for i in range(30):
        boxes = [] if 10 <= i < 16 else [person(100 + 4 * i, 300)]  # 0.6 s unseen
        f = tracker.update(make_detections(boxes), meta(i))
        ids.extend(f.track_id.tolist())
    assert len(set(ids)) == 1
    for i in range(30, 60):  # gone for 3 s: the track ends, a new walker gets a new id
        f = tracker.update(make_detections([] if i < 50 else [person(100, 300)]), meta(i))
    assert f.track_id[0] not in ids


def test_jitter_on_a_line_counts_no_crossing_and_a_crossing_counts_once() -> None:
    line = LineConfig(name="door", a=(300, 576), b=(300, 0), in_side="left")
    tracker = PeopleTracker(TrackingConfig(lines=[line]), 10.0)
    xs = list(range(360, 306, -6)) + [305, 296, 304, 297, 303, 298] * 3 + list(range(294, 240, -6))  # in, once
    xs += list(range(246, 360, 6))  # and back out
    events = []
    for i, x in enumerate(xs):
        events.extend(tracker.update(make_detections([person(x, 300)]), meta(i)).crossings)
    assert [e.direction for e in events] == ["in", "out"]
    assert events[0].line == "door" and events[0].pts == pytest.approx(events[0].frame_index / 10.0)


def test_passing_beyond_the_end_of_a_line_is_no_crossing() -> None:
    line = LineConfig(name="half", a=(0.5, 1.0), b=(0.5, 0.5), units="normalized")  # lower half of x = 384
    tracker = PeopleTracker(TrackingConfig(lines=[line]), 10.0)
    n = 0
    for i, x in enumerate(range(200, 600, 20)):
        f = tracker.update(make_detections([person(x, 250), person(x, 500)]), meta(i))  # upper: beyond b
        n += len(f.crossings)
    assert f.line_counts["half"].out_count == 1 and f.line_counts["half"].in_count == 0 and n == 1


def test_zone_occupancy_and_dwell_from_pts() -> None:
    zone = ZoneConfig(name="bench", polygon=[(200, 250), (400, 250), (400, 350), (200, 350)])
    tracker = PeopleTracker(TrackingConfig(), 10.0, zones=[zone])
    exits, occ = [], []
    for i in range(40):
        f = tracker.update(make_detections([person(100 + 10 * i, 300)]), meta(i))
        exits.extend(f.zone_exits)
        occ.append(f.occupancy["bench"])
    # feet inside for x in [200, 400): frames 10..29
    assert occ[5] == 0 and occ[15] == 1 and occ[35] == 0
    (e,) = exits
    assert (e.zone, e.entered_pts, e.left_pts) == ("bench", pytest.approx(1.0), pytest.approx(2.9))
    assert e.dwell_s == pytest.approx(1.9)
    assert e.frame_index == 30


def test_a_person_crossing_a_tile_seam_of_a_4k_frame_keeps_one_id() -> None:
    """A walker's vtest-sized box crosses the seam between two 640 tiles (20% overlap) of a 4K
    frame: the tiles see it cut, the merge makes one box, the tracker keeps one id."""
    plan = plan_tiles(3840, 2160, 640, 640, 0.2)
    rects = np.concatenate([plan.origins, plan.origins + 640], axis=1).astype(np.float32)
    seam_x = float(rects[1, 0])  # left edge of the second tile column, inside the first tile
    tracker = PeopleTracker(TrackingConfig(), 10.0)
    ids: set[int] = set()
    for i in range(40):
        box = np.array(person(seam_x - 100 + 6 * i, 400), np.float32)
        parts = []
        for t, r in enumerate(rects):  # what each tile sees of it, clipped to the tile
            clip = np.array([max(box[0], r[0]), max(box[1], r[1]), min(box[2], r[2]), min(box[3], r[3])])
            if clip[2] - clip[0] > 4 and clip[3] - clip[1] > 4:
                parts.append(make_detections([tuple(clip)], source=t))
        tiles = Detections.merge(parts)
        merged = merge_detections(make_detections([]), tiles, rects, (3840, 2160), MergeConfig())
        assert len(merged) == 1, (i, merged.xyxy.tolist())
        f = tracker.update(merged, meta(i, wh=(3840, 2160)))
        ids.update(int(t) for t in f.track_id)
    assert ids == {min(ids)} and min(ids) >= 1


def test_normalized_and_scaled_points_resolve_to_frame_pixels() -> None:
    np.testing.assert_allclose(resolve_points([(0.5, 0.25)], "normalized", None, (3840, 2160)), [[1920, 540]])
    np.testing.assert_allclose(resolve_points([(384, 288)], "pixels", (768, 576), (3840, 2160)), [[1920, 1080]])
    np.testing.assert_allclose(resolve_points([(384, 288)], "pixels", None, (3840, 2160)), [[384, 288]])


@pytest.mark.parametrize(
    "bad",
    [
        {"name": "l", "a": (1, 1), "b": (1, 1)},
        {"name": "l", "a": (0, 0), "b": (1.5, 1), "units": "normalized"},
        {"name": "l", "a": (0, 0), "b": (1, 1), "units": "normalized", "frame_size": (768, 576)},
    ],
)
def test_line_config_refuses_bad_lines(bad: dict) -> None:  # type: ignore[type-arg]
    with pytest.raises(ValueError):
        LineConfig(**bad)


def test_frames_out_of_order_are_refused() -> None:
    tracker = PeopleTracker(TrackingConfig(), 10.0)
    tracker.update(make_detections([]), meta(5))
    with pytest.raises(ValueError, match="frame order"):
        tracker.update(make_detections([]), meta(5))


def test_bench_tracker_reports_ms_per_frame() -> None:
    r = bench_tracker(people=20, frames=20, frame_wh=(1920, 1080))
    assert r["people"] == 20 and r["frames"] == 20
    assert 0 < r["p50_ms"] <= r["p95_ms"] <= r["max_ms"]
