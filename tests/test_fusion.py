"""Fusion strategies, driven by a hand-moved clock: what each publishes, when, and with which counts."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace

import numpy as np
import pytest

from config.schema import FusionConfig
from pipeline.fusion import (
    NO_COUNTS,
    STRATEGIES,
    Fusion,
    MaskRLE,
    MetadataRecord,
    Published,
    decode_mask_rle,
    encode_mask_rle,
    waited_on,
)
from pipeline.types import CountResult, FusedResult
from tests.timed_branches import ManualClock, branch_result, make_meta, sum_combine

pytestmark = pytest.mark.timeout(30)

STRICT, ASYNC, RAW = "STRICT_SYNC", "ASYNC_OVERLAY", "RAW_STREAM_WITH_METADATA"
ALL = (STRICT, ASYNC, RAW)

# Three branches as in the product: detections every frame, tiles (with masks) every frame,
# density every 5th frame; latencies in ms.
EVERY = {"global": 1, "tiles": 1, "density": 5}
LATENCY_MS = {"global": 8.0, "tiles": 25.0, "density": 60.0}


def make_fusion(strategy: str, timeout_ms: float = 500.0) -> tuple[Fusion, ManualClock]:
    clock = ManualClock()
    return Fusion(strategy, sum_combine, FusionConfig(strict_sync_timeout_ms=timeout_ms), clock=clock), clock


def result_for(branch: str, meta, clock: ManualClock):  # type: ignore[no-untyped-def]
    return branch_result(branch, meta, done_ts=clock(), masks=branch != "density", density=branch == "density")


def counts_key(c: CountResult) -> tuple[object, ...]:
    return (c.detection, c.density, c.fused, c.policy, c.region_counts.tobytes(), tuple(sorted(c.zones.items())))


def frames_of(outs: list[Published]) -> list[FusedResult]:
    return [o for o in outs if isinstance(o, FusedResult)]


def metadata_of(outs: list[Published]) -> list[MetadataRecord]:
    return [o for o in outs if isinstance(o, MetadataRecord)]


@dataclass(frozen=True)
class Event:
    t_ms: float
    kind: str  # "frame" | "result"
    frame_index: int
    branches: tuple[str, ...]


def schedule(n_frames: int, seed: int, frame_ms: float = 33.0) -> list[Event]:
    """Frames every ``frame_ms``; each scheduled branch's result after a seeded random latency,
    in frame order per branch (a branch thread works through its queue in order)."""
    rng = np.random.default_rng(seed)
    events: list[Event] = []
    last = dict.fromkeys(EVERY, 0.0)
    for i in range(n_frames):
        t = i * frame_ms
        due = tuple(b for b, n in EVERY.items() if i % n == 0)
        events.append(Event(t, "frame", i, due))
        for b in due:
            last[b] = max(t + LATENCY_MS[b] * rng.uniform(0.3, 3.0), last[b])
            events.append(Event(last[b], "result", i, (b,)))
    return sorted(events, key=lambda e: (e.t_ms, e.kind != "frame"))


def drive(
    fusion: Fusion, clock: ManualClock, events: list[Event], switches: dict[int, str] | None = None
) -> tuple[list[Published], list[int]]:
    """Play ``events`` into ``fusion``; ``switches`` maps event position -> strategy to switch to
    before it. Returns everything published and, per switch, how many frames were pending."""
    outs: list[Published] = []
    pending_at_switch: list[int] = []
    t0 = clock()
    metas = {}
    for k, ev in enumerate(events):
        if switches and k in switches:
            pending_at_switch.append(len(fusion.state.pending))
            outs += fusion.switch(switches[k])
        clock.now = t0 + ev.t_ms / 1000.0
        outs += fusion.poll(clock())
        if ev.kind == "frame":
            metas[ev.frame_index] = make_meta(ev.frame_index, clock())
            outs += fusion.on_frame(metas[ev.frame_index], ev.branches)
        else:
            outs += fusion.push(result_for(ev.branches[0], metas[ev.frame_index], clock))
    outs += fusion.flush(clock())
    return outs, pending_at_switch


# ------------------------------------------------------------------------------------ masks


@pytest.mark.parametrize(
    "mask",
    [
        np.zeros((3, 4), bool),
        np.ones((3, 4), bool),
        np.eye(5, dtype=bool),
        np.random.default_rng(7).random((17, 23)) > 0.5,
        np.array([[True]]),
        np.array([[False, True, True], [True, False, False]]),
        np.zeros((0, 5), bool),
    ],
    ids=["empty", "full", "diagonal", "random", "one-true", "starts-false", "zero-rows"],
)
def test_mask_rle_round_trip(mask: np.ndarray) -> None:
    rle = encode_mask_rle(mask)
    assert rle.counts.dtype == np.uint32
    assert int(rle.counts.sum()) == mask.size
    back = decode_mask_rle(rle)
    assert back.dtype == np.bool_
    np.testing.assert_array_equal(back, mask)
    again = MaskRLE(tuple(rle.to_dict()["shape"]), np.asarray(rle.to_dict()["counts"], np.uint32))  # type: ignore[arg-type]
    np.testing.assert_array_equal(decode_mask_rle(again), mask)


def test_mask_rle_is_compact_for_a_blob() -> None:
    mask = np.zeros((120, 80), bool)
    mask[30:90, 20:60] = True
    rle = encode_mask_rle(mask)
    assert len(rle.counts) == 2 * 60 + 1  # one False/True pair per row of the blob, one tail
    np.testing.assert_array_equal(decode_mask_rle(rle), mask)


def test_mask_rle_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="2-D"):
        encode_mask_rle(np.zeros((2, 2, 2), bool))
    with pytest.raises(ValueError, match="cover"):
        MaskRLE((2, 2), np.array([1, 2], np.uint32))


# ------------------------------------------------------------------------------------ STRICT_SYNC


def test_strict_publishes_only_when_every_scheduled_branch_delivered() -> None:
    fusion, clock = make_fusion(STRICT)
    meta = make_meta(0, clock())
    assert fusion.on_frame(meta, ("a", "b")) == []
    clock.advance_ms(10)
    a = result_for("a", meta, clock)
    assert fusion.push(a) == []
    clock.advance_ms(25)
    assert fusion.poll(clock()) == []
    b = result_for("b", meta, clock)
    (out,) = fusion.push(b)
    assert isinstance(out, FusedResult)
    assert out.strategy == STRICT and not out.partial and out.late_branches == ()
    assert out.counts_frame_index == 0
    _, _, expected = sum_combine({"a": a, "b": b}, meta)
    assert counts_key(out.counts) == counts_key(expected)
    assert out.timings["fusion_wait_ms"] == pytest.approx(25.0)
    assert out.timings["wait_for_a_ms"] == pytest.approx(0.0)
    assert out.timings["wait_for_b_ms"] == pytest.approx(25.0)
    assert waited_on(out) == "b"
    assert out.timings["end_to_end_ms"] == pytest.approx(35.0)
    assert [(o.branch, o.frame_index) for o in out.overlays] == [("a", 0), ("b", 0)]


def test_strict_publishes_in_frame_order() -> None:
    fusion, clock = make_fusion(STRICT)
    m0, m1 = make_meta(0, clock()), make_meta(1, clock())
    fusion.on_frame(m0, ("a",))
    fusion.on_frame(m1, ("a",))
    clock.advance_ms(5)
    assert fusion.push(result_for("a", m1, clock)) == []  # frame 1 is complete, frame 0 is not
    outs = fusion.push(result_for("a", m0, clock))
    assert [o.frame.frame_index for o in frames_of(outs)] == [0, 1]


def test_strict_timeout_publishes_partial_and_a_late_result_is_not_published_again() -> None:
    fusion, clock = make_fusion(STRICT, timeout_ms=100.0)
    m0 = make_meta(0, clock())
    fusion.on_frame(m0, ("a", "b"))
    clock.advance_ms(5)
    assert fusion.push(result_for("a", m0, clock)) == []
    assert fusion.poll(clock.now + 0.094) == []  # 99 ms after the frame arrived
    (out,) = fusion.poll(clock.now + 0.095)  # 100 ms
    assert isinstance(out, FusedResult)
    assert out.partial and out.late_branches == ("b",)
    assert out.counts.detection == len(result_for("a", m0, clock).detections)  # type: ignore[arg-type]
    assert out.timings["fusion_wait_ms"] == pytest.approx(95.0)
    assert out.timings["wait_for_b_ms"] == pytest.approx(95.0)
    assert waited_on(out) == "b"
    assert fusion.state.partial_frames == 1

    clock.advance_ms(200)
    assert fusion.push(result_for("b", m0, clock)) == []  # late: frame 0 is out already
    assert fusion.state.late_results == 1
    # ...but the late result is the newest of b for the frames that do not run b.
    m1 = make_meta(1, clock())
    fusion.on_frame(m1, ("a",))
    (out1,) = fusion.push(result_for("a", m1, clock))
    assert isinstance(out1, FusedResult) and not out1.partial
    assert {o.branch: o.frame_index for o in out1.overlays} == {"a": 1, "b": 0}


def test_strict_does_not_wait_for_a_branch_not_scheduled_and_reports_its_age() -> None:
    fusion, clock = make_fusion(STRICT)
    m0 = make_meta(0, clock())
    fusion.on_frame(m0, ("a", "density"))
    fusion.push(result_for("a", m0, clock))
    clock.advance_ms(40)
    (out0,) = fusion.push(result_for("density", m0, clock))
    clock.advance_ms(10)
    m1 = make_meta(1, clock())  # decoded 50 ms after frame 0
    assert fusion.on_frame(m1, ("a",)) == []  # "density" runs every n-th frame, or its queue was full
    clock.advance_ms(7)
    (out1,) = fusion.push(result_for("a", m1, clock))
    assert isinstance(out1, FusedResult) and not out1.partial
    lags = {o.branch: (o.frame_index, o.lag_ms) for o in out1.overlays}
    assert lags["a"] == (1, pytest.approx(7.0))
    assert lags["density"] == (0, pytest.approx(57.0))
    assert out1.timings["overlay_lag_ms"] == pytest.approx(57.0)
    assert out1.density is not None  # the carried density map
    assert "density.preprocess_ms" not in out1.timings  # its timings went with frame 0
    assert "density.preprocess_ms" in out0.timings  # type: ignore[union-attr]


def test_strict_frame_with_nothing_scheduled_is_published_at_once() -> None:
    fusion, clock = make_fusion(STRICT)
    (out,) = fusion.on_frame(make_meta(0, clock()), ())
    assert isinstance(out, FusedResult) and not out.partial and out.counts.detection == 0


def test_a_result_may_arrive_before_its_frame() -> None:
    fusion, clock = make_fusion(STRICT)
    meta = make_meta(0, clock())
    assert fusion.push(result_for("a", meta, clock)) == []
    clock.advance_ms(3)
    (out,) = fusion.on_frame(meta, ("a",))
    assert isinstance(out, FusedResult) and not out.partial
    assert out.counts.detection == len(result_for("a", meta, clock).detections)  # type: ignore[arg-type]


def test_frames_must_arrive_in_order() -> None:
    fusion, clock = make_fusion(STRICT)
    fusion.on_frame(make_meta(3, clock()), ())
    with pytest.raises(ValueError, match="in order"):
        fusion.on_frame(make_meta(2, clock()), ())


def test_a_branch_error_counts_as_delivered_but_not_in_the_counts() -> None:
    fusion, clock = make_fusion(STRICT)
    meta = make_meta(0, clock())
    fusion.on_frame(meta, ("a", "b"))
    a = result_for("a", meta, clock)
    fusion.push(a)
    (out,) = fusion.push(replace(result_for("b", meta, clock), detections=None, error="bad tensor"))
    assert isinstance(out, FusedResult) and not out.partial
    assert out.counts.detection == len(a.detections)  # type: ignore[arg-type]
    assert [o.branch for o in out.overlays] == ["a"]


def test_timings_are_prefixed_per_branch_and_summed_plain() -> None:
    fusion, clock = make_fusion(STRICT)
    meta = make_meta(0, clock())
    fusion.on_frame(meta, ("a", "b"), frame_timings={"decode_ms": 4.0, "queue_depth_a": 1.0})
    fusion.push(result_for("a", meta, clock))
    (out,) = fusion.push(result_for("b", meta, clock))
    t = out.timings
    assert t["decode_ms"] == 4.0 and t["queue_depth_a"] == 1.0
    assert t["a.preprocess_ms"] == 1.0 and t["b.preprocess_ms"] == 1.0 and t["preprocess_ms"] == 2.0
    assert t["a.inference_model_a_ms"] == 2.0 and t["inference_model_a_ms"] == 2.0
    assert t["postprocess_ms"] == 1.0
    for name in ("fusion_wait_ms", "overlay_lag_ms", "end_to_end_ms", "wait_for_a_ms", "wait_for_b_ms"):
        assert name in t


# ------------------------------------------------------------------------------------ ASYNC_OVERLAY


def test_async_publishes_every_frame_at_once_with_the_age_of_each_overlay() -> None:
    fusion, clock = make_fusion(ASYNC)
    t0 = clock()
    m0 = make_meta(0, t0)
    (p0,) = fusion.on_frame(m0, ("a", "b"))
    assert isinstance(p0, FusedResult) and p0.overlays == () and p0.counts_frame_index is None
    assert p0.counts == NO_COUNTS
    clock.advance_ms(10)
    a0 = result_for("a", m0, clock)
    assert fusion.push(a0) == []
    clock.advance_ms(20)
    b0 = result_for("b", m0, clock)
    assert fusion.push(b0) == []  # ASYNC_OVERLAY publishes on frames only

    clock.now = t0 + 0.033
    m1 = make_meta(1, clock())
    (p1,) = fusion.on_frame(m1, ("a", "b"))
    assert {o.branch: (o.frame_index, o.lag_ms) for o in p1.overlays} == {  # type: ignore[union-attr]
        "a": (0, pytest.approx(33.0)),
        "b": (0, pytest.approx(33.0)),
    }
    assert p1.counts_frame_index == 0  # type: ignore[union-attr]
    assert counts_key(p1.counts) == counts_key(sum_combine({"a": a0, "b": b0}, m0)[2])  # type: ignore[union-attr]
    assert p1.timings["a.preprocess_ms"] == 1.0  # type: ignore[union-attr]  # first shown here

    clock.now = t0 + 0.040
    a1 = result_for("a", m1, clock)
    fusion.push(a1)
    clock.now = t0 + 0.066
    m2 = make_meta(2, clock())
    (p2,) = fusion.on_frame(m2, ("a", "b"))
    assert isinstance(p2, FusedResult)
    assert {o.branch: (o.frame_index, o.lag_ms) for o in p2.overlays} == {
        "a": (1, pytest.approx(33.0)),
        "b": (0, pytest.approx(66.0)),
    }
    assert p2.timings["overlay_lag_ms"] == pytest.approx(66.0)
    assert p2.timings["overlay_lag_b_ms"] == pytest.approx(66.0)
    assert p2.counts_frame_index == 0  # frame 1 still lacks b
    # the overlay is drawn from the newest results: a of frame 1, b of frame 0
    assert len(p2.detections) == len(a1.detections) + len(b0.detections)  # type: ignore[arg-type]
    assert "a.preprocess_ms" in p2.timings and "b.preprocess_ms" not in p2.timings


# ------------------------------------------------------------------------------------ RAW_STREAM


def test_raw_stream_publishes_frames_at_once_and_every_metadata_record_joins_its_frame() -> None:
    fusion, clock = make_fusion(RAW, timeout_ms=10_000)
    events = schedule(12, seed=3)
    t0 = clock()
    metas = {}
    frames: list[FusedResult] = []
    records: list[MetadataRecord] = []
    expected = {}
    for ev in events:
        clock.now = t0 + ev.t_ms / 1000.0
        if ev.kind == "frame":
            meta = make_meta(ev.frame_index, clock())
            metas[ev.frame_index] = meta
            image = np.full((48, 64, 3), ev.frame_index, np.uint8)
            outs = fusion.on_frame(meta, ev.branches, image)
            raw = frames_of(outs)
            assert [r.frame.frame_index for r in raw] == [ev.frame_index]  # published without waiting
            assert raw[0].frame_image is image and raw[0].counts_frame_index is None
            assert len(raw[0].detections) == 0 and raw[0].timings["fusion_wait_ms"] == 0.0
            frames += raw
        else:
            outs = fusion.push(result_for(ev.branches[0], metas[ev.frame_index], clock))
            assert frames_of(outs) == []
        records += metadata_of(outs)
    records += metadata_of(fusion.flush(clock()))

    joined = {(r.frame.stream_id, r.frame.frame_index, r.frame.pts) for r in frames}
    keys = [(m.stream_id, m.frame_index, m.pts) for m in records]
    assert len(keys) == len(set(keys)) == 12
    assert set(keys) == joined
    # masks travel as RLE and decode to the very masks the branch produced
    strict, sclock = make_fusion(STRICT, timeout_ms=10_000)
    for r in frames_of(drive(strict, sclock, events)[0]):
        expected[r.frame.frame_index] = r
    for m in records:
        assert not m.partial
        dets, ref = m.detections(), expected[m.frame_index].detections
        np.testing.assert_array_equal(dets.xyxy, ref.xyxy)
        assert ref.masks is not None and dets.masks is not None
        for got, want in zip(dets.masks, ref.masks, strict=True):
            np.testing.assert_array_equal(got, want)
        json.dumps(m.to_dict())  # a metadata stream can send it as it is
    assert any(m.density is not None and m.density.frame_index < m.frame_index for m in records)


# ------------------------------------------------------------------------------------ consistency


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_same_frames_give_the_same_counts_in_every_strategy(seed: int) -> None:
    """STRICT_SYNC's counts for frame N == RAW's metadata counts for N == ASYNC's counts whenever
    it reports frame N as the source of its counts; arrival order (seed) does not matter."""
    n = 20
    runs = {}
    for k, strategy in enumerate(ALL):
        fusion, clock = make_fusion(strategy, timeout_ms=10_000)
        runs[strategy] = drive(fusion, clock, schedule(n, seed=seed * 10 + k))[0]  # each its own order

    strict = {r.frame.frame_index: counts_key(r.counts) for r in frames_of(runs[STRICT])}
    assert sorted(strict) == list(range(n))
    assert all(not r.partial and r.counts_frame_index == r.frame.frame_index for r in frames_of(runs[STRICT]))

    raw = {m.frame_index: counts_key(m.counts) for m in metadata_of(runs[RAW])}
    assert raw == strict

    overlay = frames_of(runs[ASYNC])
    assert [r.frame.frame_index for r in overlay] == list(range(n))
    sources = [r.counts_frame_index for r in overlay if r.counts_frame_index is not None]
    assert sources == sorted(sources) and len(set(sources)) > 3  # counts move on
    for r in overlay:
        if r.counts_frame_index is not None:
            assert r.counts_frame_index <= r.frame.frame_index
            assert counts_key(r.counts) == strict[r.counts_frame_index]
    distinct = {strict[i] for i in strict}
    assert len(distinct) > 3  # the check compares real, varying counts


# ------------------------------------------------------------------------------------ live switch


SWITCH_PAIRS = [(a, b) for a in ALL for b in ALL if a != b]


@pytest.mark.parametrize(("first", "then"), SWITCH_PAIRS, ids=[f"{a}->{b}" for a, b in SWITCH_PAIRS])
def test_a_live_switch_loses_no_frame_and_publishes_none_twice(first: str, then: str) -> None:
    n = 30
    events = schedule(n, seed=5)
    fusion, clock = make_fusion(first, timeout_ms=10_000)
    at = {k: (then if j % 2 == 0 else first) for j, k in enumerate(range(7, len(events), 9))}
    outs, pending = drive(fusion, clock, events, switches=at)
    assert max(pending) > 0  # switches happened with frames in flight

    published = [r.frame.frame_index for r in frames_of(outs)]
    assert published == list(range(n))  # each frame once, in order

    records = [m.frame_index for m in metadata_of(outs)]
    assert len(records) == len(set(records))
    raw_frames = {r.frame.frame_index for r in frames_of(outs) if r.strategy == RAW}
    assert raw_frames <= set(records)  # every frame published raw gets its metadata


def test_switch_chain_through_every_strategy_and_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    n = 40
    events = schedule(n, seed=11)
    fusion, clock = make_fusion(STRICT, timeout_ms=10_000)
    order = [ASYNC, RAW, STRICT, RAW, ASYNC, STRICT, ASYNC]
    at = {k: order[j % len(order)] for j, k in enumerate(range(5, len(events), 6))}
    with caplog.at_level(logging.INFO, logger="people_counter.fusion"):
        outs, _ = drive(fusion, clock, events, switches=at)
    assert [r.frame.frame_index for r in frames_of(outs)] == list(range(n))
    switches = [r for r in caplog.records if "->" in r.getMessage()]
    changes, current = 0, STRICT
    for _, name in sorted(at.items()):
        changes, current = changes + (name != current), name
    assert len(switches) == changes > 10  # a switch to the current strategy is no switch
    assert switches[0].getMessage().startswith("fusion strategy STRICT_SYNC -> ASYNC_OVERLAY")


def test_switch_to_unknown_or_same_strategy() -> None:
    fusion, clock = make_fusion(STRICT)
    with pytest.raises(ValueError, match="known: STRICT_SYNC, ASYNC_OVERLAY, RAW_STREAM_WITH_METADATA"):
        fusion.switch("FASTEST")
    fusion.on_frame(make_meta(0, clock()), ("a",))
    assert fusion.switch(STRICT) == [] and fusion.name == STRICT
    assert set(STRATEGIES) == set(ALL)


def test_flush_publishes_every_pending_frame_as_partial() -> None:
    fusion, clock = make_fusion(STRICT)
    for i in range(3):
        fusion.on_frame(make_meta(i, clock()), ("a",))
    outs = frames_of(fusion.flush())
    assert [o.frame.frame_index for o in outs] == [0, 1, 2]
    assert all(o.partial and o.late_branches == ("a",) for o in outs)
    assert fusion.state.pending == {}
