"""Fusion strategies, driven by a hand-moved clock: what each publishes, when, with which counts,
and the count contract (a count is right for its frame, or unknown with the reason; never 0)."""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field, replace

import numpy as np
import pytest

from config.schema import FusionConfig
from pipeline.fusion import STRATEGIES, Fusion, Published
from pipeline.types import (
    BranchResult,
    BranchTimings,
    CountResult,
    FrameMeta,
    FrameTimings,
    FusedResult,
    MaskRLE,
    MetadataRecord,
    WorkRecord,
    counts_to_dict,
    decode_mask_rle,
    encode_mask_rle,
)
from tests.timed_branches import ManualClock, branch_result, make_meta, sum_combine

pytestmark = pytest.mark.timeout(30)

STRICT, ASYNC, RAW = "STRICT_SYNC", "ASYNC_OVERLAY", "RAW_STREAM_WITH_METADATA"
ALL = (STRICT, ASYNC, RAW)

# Three branches as in the product: detections every frame, tiles (with masks) every frame,
# density every 5th frame; latencies in ms.
EVERY = {"global": 1, "tiles": 1, "density": 5}
LATENCY_MS = {"global": 8.0, "tiles": 25.0, "density": 60.0}


def make_fusion(
    strategy: str,
    timeout_ms: float = 500.0,
    *,
    rates: dict[str, int] | None = None,
    max_count_age_ms: float = 2000.0,
) -> tuple[Fusion, ManualClock]:
    clock = ManualClock()
    cfg = FusionConfig(strict_sync_timeout_ms=timeout_ms, max_count_age_ms=max_count_age_ms)
    return Fusion(strategy, sum_combine, cfg, clock=clock, rates=rates), clock


def result_for(branch: str, meta: FrameMeta, clock: ManualClock) -> BranchResult:
    return branch_result(branch, meta, done_ts=clock(), masks=branch != "density", density=branch == "density")


def failed(result: BranchResult, error: str) -> BranchResult:
    return replace(result, detections=None, density=None, error=error)


def counts_key(c: CountResult) -> tuple[object, ...]:
    return (
        c.detection,
        c.density,
        c.fused,
        c.policy,
        c.unknown_reason,
        c.region_counts.tobytes(),
        tuple(sorted(c.zones.items())),
    )


def assert_unknown(c: CountResult, reason: str) -> None:
    """The count contract: unknown is None with its reason, never 0, and stays null in JSON."""
    assert (c.fused, c.detection, c.density) == (None, None, None)
    assert not c.known and c.unknown_reason == reason
    assert json.loads(json.dumps(counts_to_dict(c)))["fused"] is None


def frames_of(outs: list[Published]) -> list[FusedResult]:
    return [o for o in outs if isinstance(o, FusedResult)]


def metadata_of(outs: list[Published]) -> list[MetadataRecord]:
    return [o for o in outs if isinstance(o, MetadataRecord)]


def work_of(outs: list[Published]) -> list[tuple[int, BranchTimings]]:
    """Every branch work a run reported: (frame index of the publication, BranchTimings)."""
    return [(o.timings.frame_index, bt) for o in outs for bt in o.timings.branches]


@dataclass(frozen=True)
class Event:
    t_ms: float
    kind: str  # "frame" | "result"
    frame_index: int
    branches: tuple[str, ...]


def schedule(n_frames: int, seed: int, frame_ms: float = 33.0) -> list[Event]:
    """Frames every ``frame_ms``; each due branch's result after a seeded random latency,
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


@dataclass
class Run:
    outs: list[Published] = field(default_factory=list)
    pending_at_switch: list[int] = field(default_factory=list)
    pushed: list[tuple[str, int]] = field(default_factory=list)
    """(branch, frame index) of every result pushed."""


def drive(fusion: Fusion, clock: ManualClock, events: list[Event], switches: dict[int, str] | None = None) -> Run:
    """Play ``events`` into ``fusion``, then flush; ``switches`` maps event position -> strategy to
    switch to before it."""
    run = Run()
    t0 = clock()
    metas = {}
    for k, ev in enumerate(events):
        if switches and k in switches:
            run.pending_at_switch.append(len(fusion.state.pending))
            run.outs += fusion.switch(switches[k])
        clock.now = t0 + ev.t_ms / 1000.0
        run.outs += fusion.poll(clock())
        if ev.kind == "frame":
            metas[ev.frame_index] = make_meta(ev.frame_index, clock())
            run.outs += fusion.on_frame(metas[ev.frame_index], ev.branches)
        else:
            run.outs += fusion.push(result_for(ev.branches[0], metas[ev.frame_index], clock))
            run.pushed.append((ev.branches[0], ev.frame_index))
    run.outs += fusion.flush(clock())
    return run


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
    assert out.strategy == STRICT and not out.partial and out.late_branches == () and out.missing == {}
    assert out.counts_frame_index == 0 and not out.raw
    assert out.counts_age_ms == pytest.approx(35.0)
    _, _, expected = sum_combine({"a": a, "b": b}, meta, {})
    assert out.counts.known and counts_key(out.counts) == counts_key(expected)
    t = out.timings
    assert t.frame_index == 0
    assert t.fusion_wait_ms == pytest.approx(25.0)
    assert t.wait_for_ms == {"a": pytest.approx(0.0), "b": pytest.approx(25.0)}
    assert t.waited_on() == "b"
    assert t.end_to_end_ms == pytest.approx(35.0)
    assert [(o.branch, o.frame_index) for o in out.overlays] == [("a", 0), ("b", 0)]
    assert sorted((bt.branch, bt.frame_index) for bt in t.branches) == [("a", 0), ("b", 0)]


def test_strict_publishes_in_frame_order() -> None:
    fusion, clock = make_fusion(STRICT)
    m0, m1 = make_meta(0, clock()), make_meta(1, clock())
    fusion.on_frame(m0, ("a",))
    fusion.on_frame(m1, ("a",))
    clock.advance_ms(5)
    assert fusion.push(result_for("a", m1, clock)) == []  # frame 1 is complete, frame 0 is not
    outs = fusion.push(result_for("a", m0, clock))
    assert [o.frame.frame_index for o in frames_of(outs)] == [0, 1]
    assert all(o.counts.known and o.counts_frame_index == o.frame.frame_index for o in frames_of(outs))


def test_strict_timeout_publishes_partial_with_unknown_counts_and_a_late_result_is_not_published_again() -> None:
    fusion, clock = make_fusion(STRICT, timeout_ms=100.0)
    m0 = make_meta(0, clock())
    fusion.on_frame(m0, ("a", "b"))
    clock.advance_ms(5)
    a0 = result_for("a", m0, clock)
    assert fusion.push(a0) == []
    assert fusion.poll(clock.now + 0.094) == []  # 99 ms after the frame arrived
    (out,) = fusion.poll(clock.now + 0.095)  # 100 ms
    assert isinstance(out, FusedResult)
    assert out.partial and out.late_branches == ("b",) and out.missing == {"b": "late"}
    # Changed with the count contract: the old test expected the count of a alone
    # (counts.detection == len(a.detections)), a number that is wrong for the frame.
    assert_unknown(out.counts, "late: b")
    assert len(out.detections) == len(a0.detections)  # type: ignore[arg-type]  # what arrived is still drawn
    assert out.timings.fusion_wait_ms == pytest.approx(95.0)
    assert out.timings.wait_for_ms["b"] == pytest.approx(95.0)
    assert out.timings.waited_on() == "b"
    assert fusion.state.partial_frames == 1

    clock.advance_ms(200)
    assert fusion.push(result_for("b", m0, clock)) == []  # late: frame 0 is out already
    assert fusion.state.late_results == 1
    # ...but the late result is b's result for the latest frame b was due for, so frames that do
    # not run b use it; its work is reported once, with the next publication, on its own frame.
    m1 = make_meta(1, clock())
    fusion.on_frame(m1, ("a",))
    (out1,) = fusion.push(result_for("a", m1, clock))
    assert isinstance(out1, FusedResult) and not out1.partial and out1.counts.known
    assert {o.branch: o.frame_index for o in out1.overlays} == {"a": 1, "b": 0}
    assert sorted((bt.branch, bt.frame_index) for bt in out1.timings.branches) == [("a", 1), ("b", 0)]
    assert "b.preprocess_ms" in out1.timings.by_frame()[0]
    assert "b.preprocess_ms" not in out1.timings.by_frame()[1]


def test_strict_does_not_wait_for_a_branch_not_scheduled_and_reports_its_age() -> None:
    fusion, clock = make_fusion(STRICT)
    m0 = make_meta(0, clock())
    fusion.on_frame(m0, ("a", "density"))
    fusion.push(result_for("a", m0, clock))
    clock.advance_ms(40)
    (out0,) = fusion.push(result_for("density", m0, clock))
    clock.advance_ms(10)
    m1 = make_meta(1, clock())  # decoded 50 ms after frame 0
    assert fusion.on_frame(m1, ("a",)) == []  # "density" runs every n-th frame
    clock.advance_ms(7)
    (out1,) = fusion.push(result_for("a", m1, clock))
    assert isinstance(out1, FusedResult) and not out1.partial and out1.counts.known
    lags = {o.branch: (o.frame_index, o.lag_ms) for o in out1.overlays}
    assert lags["a"] == (1, pytest.approx(7.0))
    assert lags["density"] == (0, pytest.approx(57.0))
    assert out1.timings.overlay_lag_ms["density"] == pytest.approx(57.0)
    assert out1.timings.by_frame()[1]["overlay_lag_ms"] == pytest.approx(57.0)
    assert out1.density is not None  # density's result for the latest frame it was due for
    assert "density.preprocess_ms" not in out1.timings.flat()  # its timings went with frame 0
    assert "density.preprocess_ms" in out0.timings.by_frame()[0]  # type: ignore[union-attr]


def test_strict_frame_with_nothing_scheduled_is_published_at_once() -> None:
    fusion, clock = make_fusion(STRICT)
    (out,) = fusion.on_frame(make_meta(0, clock()), ())
    assert isinstance(out, FusedResult) and not out.partial and out.counts.detection == 0


def test_a_result_may_arrive_before_its_frame() -> None:
    fusion, clock = make_fusion(STRICT)
    meta = make_meta(0, clock())
    a = result_for("a", meta, clock)
    assert fusion.push(a) == []
    clock.advance_ms(3)
    (out,) = fusion.on_frame(meta, ("a",))
    assert isinstance(out, FusedResult) and not out.partial
    assert out.counts.detection == len(a.detections)  # type: ignore[arg-type]


def test_frames_must_arrive_in_order() -> None:
    fusion, clock = make_fusion(STRICT)
    fusion.on_frame(make_meta(3, clock()), ())
    with pytest.raises(ValueError, match="in order"):
        fusion.on_frame(make_meta(2, clock()), ())


def test_a_branch_error_is_delivered_but_makes_the_branch_missing() -> None:
    fusion, clock = make_fusion(STRICT)
    meta = make_meta(0, clock())
    fusion.on_frame(meta, ("a", "b"))
    a = result_for("a", meta, clock)
    fusion.push(a)
    (out,) = fusion.push(failed(result_for("b", meta, clock), "bad tensor"))  # no wait for the timeout
    assert isinstance(out, FusedResult)
    # Changed with the count contract: the old test expected a complete (not partial) frame
    # counted from a alone; a failed branch is missing, and the count is unknown.
    assert out.partial and out.missing == {"b": "failed: bad tensor"} and out.late_branches == ()
    assert_unknown(out.counts, "failed: b (bad tensor)")
    assert [o.branch for o in out.overlays] == ["a"]
    assert len(out.detections) == len(a.detections)  # type: ignore[arg-type]


def test_a_strict_publication_by_frame_gives_the_telemetry_names() -> None:
    """The names (and values) the old flat ``timings`` dict had, for the same frame."""
    fusion, clock = make_fusion(STRICT)
    meta = make_meta(0, clock())
    fusion.on_frame(meta, ("a", "b"), frame_timings=FrameTimings(decode_ms=4.0, queue_depths={"a": 1}))
    clock.advance_ms(5)
    fusion.push(result_for("a", meta, clock))
    clock.advance_ms(5)
    (out,) = fusion.push(result_for("b", meta, clock))
    by_frame = out.timings.by_frame()
    assert list(by_frame) == [0]
    # captured from the code before the rewrite (pipeline/fusion.py at 74d9662), same scenario
    old = {
        "a.inference_model_a_ms": 2.0, "a.postprocess_ms": 0.5, "a.preprocess_ms": 1.0,
        "b.inference_model_b_ms": 2.0, "b.postprocess_ms": 0.5, "b.preprocess_ms": 1.0,
        "decode_ms": 4.0, "end_to_end_ms": 10.0, "fusion_wait_ms": 5.0,
        "inference_model_a_ms": 2.0, "inference_model_b_ms": 2.0,
        "overlay_lag_a_ms": 10.0, "overlay_lag_b_ms": 10.0, "overlay_lag_ms": 10.0,
        "postprocess_ms": 1.0, "preprocess_ms": 2.0, "queue_depth_a": 1.0,
        "wait_for_a_ms": 0.0, "wait_for_b_ms": 5.0,
    }  # fmt: skip
    # the counting's own time (perf_counter, not the injected clock): there, not asserted on
    assert by_frame[0].pop("count_ms") >= 0.0
    assert by_frame[0] == pytest.approx(old)
    flat = out.timings.flat()
    assert flat.pop("count_ms") >= 0.0
    assert flat == pytest.approx(old)


# ------------------------------------------------------------------------------------ ASYNC_OVERLAY


def test_async_publishes_every_frame_at_once_with_the_age_of_each_overlay() -> None:
    fusion, clock = make_fusion(ASYNC)
    t0 = clock()
    m0 = make_meta(0, t0)
    (p0,) = fusion.on_frame(m0, ("a", "b"))
    assert isinstance(p0, FusedResult) and p0.overlays == () and p0.counts_frame_index is None
    # Changed: before the first finalized frame the old code published NO_COUNTS (0 people).
    assert p0.counts.fused is None and "warming up" in (p0.counts.unknown_reason or "")
    clock.advance_ms(10)
    a0 = result_for("a", m0, clock)
    assert fusion.push(a0) == []
    clock.advance_ms(20)
    b0 = result_for("b", m0, clock)
    assert fusion.push(b0) == []  # ASYNC_OVERLAY publishes on frames only

    clock.now = t0 + 0.033
    m1 = make_meta(1, clock())
    (p1,) = fusion.on_frame(m1, ("a", "b"))
    assert isinstance(p1, FusedResult)
    assert {o.branch: (o.frame_index, o.lag_ms) for o in p1.overlays} == {
        "a": (0, pytest.approx(33.0)),
        "b": (0, pytest.approx(33.0)),
    }
    assert p1.counts_frame_index == 0 and p1.counts_age_ms == pytest.approx(33.0)
    assert counts_key(p1.counts) == counts_key(sum_combine({"a": a0, "b": b0}, m0, {})[2])
    # Frame 0's work, finalized since the previous publication, is first shown here, on frame 0
    # (the old code credited it to frame 1, the frame published next).
    assert sorted((bt.branch, bt.frame_index) for bt in p1.timings.branches) == [("a", 0), ("b", 0)]
    assert p1.timings.by_frame()[0]["a.preprocess_ms"] == 1.0
    assert "a.preprocess_ms" not in p1.timings.by_frame()[1]

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
    assert p2.timings.overlay_lag_ms["b"] == pytest.approx(66.0)
    assert p2.timings.by_frame()[2]["overlay_lag_ms"] == pytest.approx(66.0)
    assert p2.counts_frame_index == 0  # frame 1 still lacks b
    # the overlay is drawn from the newest results: a of frame 1, b of frame 0
    assert len(p2.detections) == len(a1.detections) + len(b0.detections)  # type: ignore[arg-type]
    # Changed: the old code reported a1's work here, on frame 2; it waits for frame 1's finalization.
    assert p2.timings.branches == ()

    clock.now = t0 + 0.070
    assert fusion.push(result_for("b", m1, clock)) == []
    clock.now = t0 + 0.099
    (p3,) = fusion.on_frame(make_meta(3, clock()), ("a", "b"))
    assert isinstance(p3, FusedResult) and p3.counts_frame_index == 1
    assert sorted((bt.branch, bt.frame_index) for bt in p3.timings.branches) == [("a", 1), ("b", 1)]
    assert set(p3.timings.by_frame()) == {1, 3}


# ------------------------------------------------------------------------------------ RAW_STREAM


def test_raw_stream_publishes_frames_at_once_and_every_metadata_record_joins_its_frame() -> None:
    fusion, clock = make_fusion(RAW, timeout_ms=10_000)
    events = schedule(12, seed=3)
    t0 = clock()
    metas = {}
    frames: list[FusedResult] = []
    records: list[MetadataRecord] = []
    for ev in events:
        clock.now = t0 + ev.t_ms / 1000.0
        if ev.kind == "frame":
            meta = make_meta(ev.frame_index, clock())
            metas[ev.frame_index] = meta
            image = np.full((48, 64, 3), ev.frame_index, np.uint8)
            outs = fusion.on_frame(meta, ev.branches, image)
            raw = frames_of(outs)
            assert [r.frame.frame_index for r in raw] == [ev.frame_index]  # published without waiting
            assert raw[0].raw and raw[0].frame_image is image and raw[0].counts_frame_index is None
            # Changed: a raw frame's counts were NO_COUNTS (0 people); they are unknown, and say where they are.
            assert raw[0].counts.fused is None
            assert raw[0].counts.unknown_reason == "raw frame: counts follow in its metadata record"
            assert len(raw[0].detections) == 0 and raw[0].timings.fusion_wait_ms == 0.0
            assert raw[0].timings.branches == ()  # raw frames report no work; their records do
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
    expected = {r.frame.frame_index: r for r in frames_of(drive(strict, sclock, events).outs)}
    for m in records:
        assert not m.partial and m.counts.known and m.counts_age_ms is not None
        assert counts_key(m.counts) == counts_key(expected[m.frame_index].counts)
        dets, ref = m.detections(), expected[m.frame_index].detections
        np.testing.assert_array_equal(dets.xyxy, ref.xyxy)
        assert ref.masks is not None and dets.masks is not None
        for got, want in zip(dets.masks, ref.masks, strict=True):
            np.testing.assert_array_equal(got, want)
        json.dumps(m.to_dict())  # a metadata stream can send it as it is
    assert any(m.density is not None and m.density.frame_index < m.frame_index for m in records)


# ------------------------------------------------------------------------------------ consistency


@pytest.mark.parametrize("rates", [None, EVERY], ids=["rates-learnt", "rates-declared"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_same_frames_give_the_same_counts_in_every_strategy(seed: int, rates: dict[str, int] | None) -> None:
    """STRICT_SYNC's counts for frame N == RAW's metadata counts for N == ASYNC's counts whenever
    it reports frame N as the source of its counts; arrival order (seed) does not matter."""
    n = 20
    runs = {}
    for k, strategy in enumerate(ALL):
        fusion, clock = make_fusion(strategy, timeout_ms=10_000, rates=rates)
        runs[strategy] = drive(fusion, clock, schedule(n, seed=seed * 10 + k)).outs  # each its own order

    strict = {r.frame.frame_index: counts_key(r.counts) for r in frames_of(runs[STRICT])}
    assert sorted(strict) == list(range(n))
    assert all(
        not r.partial and r.counts.known and r.counts_frame_index == r.frame.frame_index
        for r in frames_of(runs[STRICT])
    )

    raw = {m.frame_index: counts_key(m.counts) for m in metadata_of(runs[RAW])}
    assert raw == strict

    overlay = frames_of(runs[ASYNC])
    assert [r.frame.frame_index for r in overlay] == list(range(n))
    sources = [r.counts_frame_index for r in overlay if r.counts_frame_index is not None]
    assert sources == sorted(sources) and len(set(sources)) > 3  # counts move on
    for r in overlay:
        if r.counts_frame_index is None:
            assert r.counts.fused is None and "warming up" in (r.counts.unknown_reason or "")
            continue
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
    fusion, clock = make_fusion(first, timeout_ms=10_000, rates=EVERY)
    at = {k: (then if j % 2 == 0 else first) for j, k in enumerate(range(7, len(events), 9))}
    run = drive(fusion, clock, events, switches=at)
    assert max(run.pending_at_switch) > 0  # switches happened with frames in flight

    published = [r.frame.frame_index for r in frames_of(run.outs)]
    assert published == list(range(n))  # each frame once, in order

    records = [m.frame_index for m in metadata_of(run.outs)]
    assert len(records) == len(set(records))
    raw_frames = {r.frame.frame_index for r in frames_of(run.outs) if r.raw}
    assert raw_frames <= set(records)  # every frame published raw gets its metadata
    # nor is any branch work reported twice across the switches
    work = [(bt.branch, bt.frame_index) for _, bt in work_of(run.outs)]
    assert len(work) == len(set(work)) and set(work) <= set(run.pushed)


def test_switch_chain_through_every_strategy_and_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    n = 40
    events = schedule(n, seed=11)
    fusion, clock = make_fusion(STRICT, timeout_ms=10_000)
    order = [ASYNC, RAW, STRICT, RAW, ASYNC, STRICT, ASYNC]
    at = {k: order[j % len(order)] for j, k in enumerate(range(5, len(events), 6))}
    with caplog.at_level(logging.INFO, logger="people_counter.fusion"):
        run = drive(fusion, clock, events, switches=at)
    assert [r.frame.frame_index for r in frames_of(run.outs)] == list(range(n))
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


def test_flush_publishes_every_pending_frame_as_partial_with_unknown_counts() -> None:
    fusion, clock = make_fusion(STRICT)
    for i in range(3):
        fusion.on_frame(make_meta(i, clock()), ("a",))
    outs = frames_of(fusion.flush())
    assert [o.frame.frame_index for o in outs] == [0, 1, 2]
    assert all(o.partial and o.late_branches == ("a",) for o in outs)
    for o in outs:
        assert_unknown(o.counts, "late: a")  # the old code counted these frames as 0 people
    assert fusion.state.pending == {}


# ------------------------------------------------------------------------------------ count contract
#
# Each of these fails on the code before the rewrite (74d9662): there a frame missing a branch was
# counted from what arrived, or from that branch's older result, and warm-up counted 0 people.

Counted = FusedResult | MetadataRecord


def counted(outs: list[Published]) -> dict[int, Counted]:
    """What carries each frame's own counts: STRICT_SYNC's publication or RAW's metadata record."""
    out: dict[int, Counted] = {}
    for o in outs:
        if isinstance(o, MetadataRecord):
            out[o.frame_index] = o
        elif isinstance(o, FusedResult) and not o.raw and o.strategy == STRICT:
            out[o.frame.frame_index] = o
    return out


def detections_of(o: Counted) -> int:
    return len(o.detections()) if isinstance(o, MetadataRecord) else len(o.detections)


@pytest.mark.parametrize("rates", [None, {"global": 1, "tiles": 1}], ids=["rates-learnt", "rates-declared"])
@pytest.mark.parametrize("strategy", [STRICT, RAW])
@pytest.mark.parametrize(
    ("how", "why", "reason"),
    [
        ("late", "late", "late: tiles"),
        ("dropped", "dropped (queue full)", "dropped: tiles (queue full)"),
        ("failed", "failed: CUDA out of memory", "failed: tiles (CUDA out of memory)"),
    ],
)
def test_a_due_branch_without_its_result_for_the_frame_makes_its_count_unknown(
    how: str, why: str, reason: str, strategy: str, rates: dict[str, int] | None
) -> None:
    """Frame 0 is complete; frame 1 lacks tiles (timed out, dropped for it, or failed on it): its
    count is unknown and says why, and tiles' result for frame 0 never stands in for it. Old code:
    late and failed gave the count of global alone; dropped used tiles of frame 0 (not partial)."""
    fusion, clock = make_fusion(strategy, timeout_ms=100.0, rates=rates)
    m0 = make_meta(0, clock())
    outs = fusion.on_frame(m0, ("global", "tiles"))
    outs += fusion.push(result_for("global", m0, clock)) + fusion.push(result_for("tiles", m0, clock))
    clock.advance_ms(33)
    m1 = make_meta(1, clock())
    g1 = result_for("global", m1, clock)
    if how == "dropped":
        outs += fusion.on_frame(m1, ("global",), dropped=("tiles",))
    else:
        outs += fusion.on_frame(m1, ("global", "tiles"))
    outs += fusion.push(g1)
    if how == "failed":
        outs += fusion.push(failed(result_for("tiles", m1, clock), "CUDA out of memory"))
    if how == "late":
        assert 1 not in counted(outs)  # it waits for tiles...
        outs += fusion.poll(clock.now + 0.1)  # ...until its timeout
    else:
        assert 1 in counted(outs)  # dropped or failed: nothing to wait for
    clock.advance_ms(200)
    m2 = make_meta(2, clock())
    outs += fusion.on_frame(m2, ("global", "tiles"))
    outs += fusion.push(result_for("global", m2, clock)) + fusion.push(result_for("tiles", m2, clock))

    by_frame = counted(outs)
    assert sorted(by_frame) == [0, 1, 2]
    f1 = by_frame[1]
    assert f1.partial and f1.missing == {"tiles": why}
    assert f1.late_branches == (("tiles",) if how == "late" else ())
    assert_unknown(f1.counts, reason)
    assert [(o.branch, o.frame_index) for o in f1.overlays] == [("global", 1)]  # no tiles of frame 0
    assert detections_of(f1) == len(g1.detections)  # type: ignore[arg-type]
    if isinstance(f1, MetadataRecord):
        sent = json.loads(json.dumps(f1.to_dict()))
        assert sent["counts"]["fused"] is None and sent["counts"]["unknown_reason"] == reason
        assert sent["missing"] == {"tiles": why} and sent["partial"] is True
    for ok in (by_frame[0], by_frame[2]):  # the frames around it are counted
        assert ok.counts.known and not ok.partial


@pytest.mark.parametrize(
    ("how", "at_3", "after_3"),
    [
        ("dropped", ("dropped (queue full)", "dropped: density (queue full)"), "stale: no result for frame 3"),
        ("failed", ("failed: bad tensor", "failed: density (bad tensor)"), "stale: no result for frame 3"),
        ("late", ("late", "late: density"), "stale: no result for frame 3"),
        ("late, then arrives", ("late", "late: density"), None),
        ("not decoded", None, "stale: no result for frame 3"),
    ],
)
def test_a_branch_every_third_frame_missing_on_its_due_frame_is_stale_until_its_next(
    how: str, at_3: tuple[str, str] | None, after_3: str | None
) -> None:
    """density runs on frames 0, 3, 6; on frame 3 it was dropped, failed, late, or frame 3 never
    came (a gap in the stream). Frames 4 and 5 use density's result for frame 3 or are stale; its
    result for frame 0 never stands in (old code: frames 3-5 counted with density of frame 0). A
    late result for frame 3 that arrives before frame 4 is finalized is frame 4's to use."""
    fusion, clock = make_fusion(STRICT, timeout_ms=20.0, rates={"global": 1, "density": 3})
    t0 = clock()
    metas: dict[int, FrameMeta] = {}
    outs: list[Published] = []
    for i in range(8):
        clock.now = t0 + i * 0.033
        if i == 3 and how == "not decoded":
            continue
        meta = metas[i] = make_meta(i, clock())
        due = ("global", "density") if i % 3 == 0 else ("global",)
        if i == 3 and how == "dropped":
            outs += fusion.on_frame(meta, ("global",), dropped=("density",))
        else:
            outs += fusion.on_frame(meta, due)  # frame 4's arrival times frame 3 out (33 > 20 ms)
        if i == 4 and how == "late, then arrives":
            outs += fusion.push(result_for("density", metas[3], clock))
        outs += fusion.push(result_for("global", meta, clock))
        if "density" in due:
            if i != 3:
                outs += fusion.push(result_for("density", meta, clock))
            elif how == "failed":
                outs += fusion.push(failed(result_for("density", meta, clock), "bad tensor"))
    outs += fusion.flush(clock())

    by_frame = counted(outs)
    assert sorted(by_frame) == [i for i in range(8) if i != 3 or how != "not decoded"]
    for i in (0, 1, 2, 6, 7):
        r = by_frame[i]
        assert r.counts.known and not r.partial
        assert {o.branch: o.frame_index for o in r.overlays}["density"] == i - i % 3
    if at_3 is not None:
        why, reason = at_3
        assert by_frame[3].missing == {"density": why}
        assert_unknown(by_frame[3].counts, reason)
    for i in (4, 5):
        r = by_frame[i]
        if after_3 is None:
            assert r.counts.known and not r.partial
            assert {o.branch: o.frame_index for o in r.overlays}["density"] == 3
            continue
        assert r.missing == {"density": after_3}
        assert_unknown(r.counts, "stale: density (no result for frame 3)")
        assert [o.branch for o in r.overlays] == ["global"]
        assert isinstance(r, FusedResult) and r.density is None


def test_a_branch_not_due_before_its_first_due_frame_is_warming_up() -> None:
    """A stream whose first frame is 1: density (every 3rd frame) has no result to give frames 1
    and 2. Old code: counted without density, as complete."""
    fusion, clock = make_fusion(STRICT, rates={"global": 1, "density": 3})
    outs: list[Published] = []
    for i in (1, 2, 3):
        meta = make_meta(i, clock())
        due = ("global", "density") if i % 3 == 0 else ("global",)
        outs += fusion.on_frame(meta, due)
        for b in due:
            outs += fusion.push(result_for(b, meta, clock))
        clock.advance_ms(33)
    by_frame = counted(outs)
    for i in (1, 2):
        assert by_frame[i].missing == {"density": "warming up"}
        assert_unknown(by_frame[i].counts, "warming up: density")
    assert by_frame[3].counts.known and not by_frame[3].partial


def test_async_counts_before_the_first_finalized_frame_are_unknown_warming_up() -> None:
    """Old code: NO_COUNTS, i.e. 0 people, on every frame before the first finalized one."""
    fusion, clock = make_fusion(ASYNC, rates={"global": 1, "tiles": 1})
    t0 = clock()
    m0 = make_meta(0, t0)
    pubs = frames_of(fusion.on_frame(m0, ("global", "tiles")))
    clock.advance_ms(33)
    pubs += frames_of(fusion.on_frame(make_meta(1, clock()), ("global", "tiles")))
    fusion.push(result_for("global", m0, clock))
    fusion.push(result_for("tiles", m0, clock))  # frame 0 is finalized
    clock.advance_ms(33)
    pubs += frames_of(fusion.on_frame(make_meta(2, clock()), ("global", "tiles")))
    assert [p.frame.frame_index for p in pubs] == [0, 1, 2]
    for p in pubs[:2]:
        assert p.counts_frame_index is None and p.counts_age_ms is None
        assert p.counts.fused is None and p.counts.detection is None
        assert "warming up" in (p.counts.unknown_reason or "")
    assert pubs[2].counts.known and pubs[2].counts_frame_index == 0
    assert pubs[2].counts_age_ms == pytest.approx(66.0)


def test_async_counts_older_than_max_count_age_are_unknown_stale() -> None:
    """Frame 0 is counted; then the branch stalls. Frames published while frame 0's counts are
    younger than max_count_age_ms carry them; after that the count is unknown (stale), until a
    newer frame is finalized. Old code: frame 0's counts forever."""
    fusion, clock = make_fusion(ASYNC, timeout_ms=10_000, max_count_age_ms=200.0, rates={"global": 1})
    t0 = clock()
    metas = [make_meta(i, t0 + i * 0.033) for i in range(10)]
    pubs: list[FusedResult] = []
    for m in metas:
        clock.now = m.decode_ts
        pubs += frames_of(fusion.on_frame(m, ("global",)))
        if m.frame_index == 0:
            fusion.push(result_for("global", m, clock))
    clock.now = metas[9].decode_ts + 0.001
    for m in metas[1:]:  # the branch comes back and catches up
        fusion.push(result_for("global", m, clock))
    clock.now = t0 + 10 * 0.033
    pubs += frames_of(fusion.on_frame(make_meta(10, clock()), ("global",)))

    by = {p.frame.frame_index: p for p in pubs}
    assert by[6].counts.known and by[6].counts_frame_index == 0
    assert by[6].counts_age_ms == pytest.approx(198.0)  # 6 * 33 ms: still young enough
    for i in (7, 8, 9):  # 231, 264, 297 ms
        p = by[i]
        assert p.counts_frame_index == 0 and p.counts_age_ms == pytest.approx(33.0 * i)
        assert p.counts.fused is None and p.counts.detection is None
        reason = p.counts.unknown_reason or ""
        assert reason.startswith("stale") and "frame 0" in reason
    assert by[10].counts.known and by[10].counts_frame_index == 9
    assert by[10].counts_age_ms == pytest.approx(33.0)


# ------------------------------------------------------------------------------------ work telemetry


def own_work(run: Run) -> dict[int, float]:
    """Per frame, the ``preprocess_ms`` of the results computed on it (1 ms each)."""
    return {i: float(n) for i, n in Counter(i for _, i in run.pushed).items()}


def reported_work(outs: list[Published]) -> dict[int, float]:
    """Per frame, the plain ``preprocess_ms`` that the publications' ``by_frame`` credit to it."""
    total: dict[int, float] = {}
    for o in outs:
        for idx, row in o.timings.by_frame().items():
            if "preprocess_ms" in row:
                total[idx] = total.get(idx, 0.0) + row["preprocess_ms"]
    return total


@pytest.mark.parametrize("strategy", ALL)
def test_branch_work_is_reported_exactly_once_on_the_frame_it_was_done_on(strategy: str) -> None:
    """Over a run, every (branch, frame) cost is reported exactly once, as a BranchTimings naming
    the frame its result was computed on; what no publication took comes out of flush as one
    WorkRecord (under ASYNC_OVERLAY: the frames after the last publication). A 60 ms timeout
    makes some results late. Old code: under ASYNC_OVERLAY a result's cost went to the next
    published frame, and the costs of the last frames were lost."""
    fusion, clock = make_fusion(strategy, timeout_ms=60.0, rates=EVERY)
    run = drive(fusion, clock, schedule(40, seed=4))
    assert fusion.state.late_results > 0  # the run has late results, reported apart
    keys = [(bt.branch, bt.frame_index) for _, bt in work_of(run.outs)]
    assert sorted(keys) == sorted(run.pushed)  # each once, none lost
    assert fusion.state.unreported == []
    for _, bt in work_of(run.outs):  # (that a publication reports no newer frame's work: the test below)
        assert bt.stages == branch_result(bt.branch, make_meta(bt.frame_index, 0.0)).timings
        assert bt.done_ts > 0.0
    # by_frame credits each cost to its own frame: summed over the run, a frame gets its own work
    assert reported_work(run.outs) == own_work(run)
    if strategy == RAW:
        assert all(not o.timings.branches for o in frames_of(run.outs))  # the records carry it
    records = [o for o in run.outs if isinstance(o, WorkRecord)]
    if strategy == ASYNC:
        assert len(records) == 1 and run.outs[-1] is records[0]  # from flush, last
        (w,) = records
        assert w.timings.branches and w.timings.frame_index == max(bt.frame_index for bt in w.timings.branches)
        assert w.timings.by_frame()[w.timings.frame_index].keys() <= {
            k for bt in w.timings.branches for s in bt.stages for k in (s, f"{bt.branch}.{s}")
        } | {"count_ms"}  # no figures of its own
    assert len(records) <= 1 and all(o is run.outs[-1] for o in records)
    # the counting of every frame is reported once, on its frame, whatever the strategy
    counted = [idx for o in run.outs if hasattr(o, "timings") for idx in o.timings.count_ms]
    assert sorted(counted) == sorted(set(counted)) == list(range(fusion.state.finalized_upto + 1))
    assert fusion.state.unreported_count_ms == {}


@pytest.mark.parametrize("strategy", [STRICT, RAW])
def test_a_strict_publication_or_a_metadata_record_reports_its_own_frame_s_work(strategy: str) -> None:
    """No result is late (10 s timeout), so each frame's publication (STRICT_SYNC) or metadata
    record carries exactly the work done on that frame, as StageTimings documents."""
    fusion, clock = make_fusion(strategy, timeout_ms=10_000, rates=EVERY)
    run = drive(fusion, clock, schedule(30, seed=5))
    pushed: dict[int, list[str]] = {}
    for b, i in run.pushed:
        pushed.setdefault(i, []).append(b)
    by_frame = counted(run.outs)
    assert sorted(by_frame) == list(range(30))
    for i, o in by_frame.items():
        assert sorted((bt.branch, bt.frame_index) for bt in o.timings.branches) == sorted((b, i) for b in pushed[i])
