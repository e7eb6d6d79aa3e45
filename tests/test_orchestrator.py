"""The orchestrator on real threads: synthetic frames, branches that only control time, real fusion."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence

import pytest

from config.errors import SourceError, StageError
from config.schema import FusionConfig
from pipeline.orchestrator import MemorySink, OnFull, Orchestrator
from pipeline.sources_synthetic import SyntheticSource
from pipeline.types import CountResult, Frame, FusedResult
from tests.conftest_threads import leaked_threads
from tests.timed_branches import SleepyBranch, sum_combine

pytestmark = pytest.mark.timeout(30)  # threads: the suite-wide leak check in tests/conftest.py

STRICT, ASYNC, RAW = "STRICT_SYNC", "ASYNC_OVERLAY", "RAW_STREAM_WITH_METADATA"


def build(
    strategy: str,
    branches: Sequence[SleepyBranch],
    *,
    frames: int | None = 12,
    fps: float | None = None,
    sequential: bool = False,
    on_full: OnFull = "wait",
    timeout_ms: float = 5000.0,
    queue_size: int = 4,
    stall_timeout_s: float = 10.0,
    source: SyntheticSource | None = None,
    sinks: Sequence[object] = (),
) -> tuple[Orchestrator, MemorySink]:
    sink = MemorySink()
    cfg = FusionConfig(strict_sync_timeout_ms=timeout_ms, queue_size=queue_size, stall_timeout_s=stall_timeout_s)
    orch = Orchestrator(
        source if source is not None else SyntheticSource(64, 48, frames, fps),
        branches,
        sum_combine,
        cfg,
        [sink, *sinks],  # type: ignore[list-item]
        strategy=strategy,
        run_sequential=sequential,
        on_full=on_full,
        poll_interval_s=0.005,
    )
    return orch, sink


def run(strategy: str, branches: Sequence[SleepyBranch], **kw: object) -> tuple[Orchestrator, MemorySink]:
    orch, sink = build(strategy, branches, **kw)  # type: ignore[arg-type]
    with orch:
        assert orch.wait(20), "the run did not finish"
    return orch, sink


def publish_ts(r: FusedResult) -> float:
    return r.frame.decode_ts + r.timings["end_to_end_ms"] / 1000.0


def counts_key(c: CountResult) -> tuple[object, ...]:
    return (c.detection, c.density, c.fused, c.policy)


def test_strict_sync_publishes_a_frame_only_after_its_branches_finished() -> None:
    a, b, d = (
        SleepyBranch("a", 0.012),
        SleepyBranch("b", 0.004),
        SleepyBranch("density", 0.02, every_n_frames=3, density=True),
    )
    orch, sink = run(STRICT, [a, b, d], frames=10)
    st = orch.status
    assert st.state == "FINISHED" and st.frames_decoded == st.frames_published == 10
    assert [r.frame.frame_index for r in sink.results] == list(range(10))
    for r, received in zip(sink.results, sink.received_ts, strict=True):
        n = r.frame.frame_index
        assert not r.partial
        due = [br for br in (a, b, d) if n % br.every_n_frames == 0]
        for br in due:
            assert br.done[n] <= publish_ts(r) <= received  # never before its branches finished
        overlays = {o.branch: o.frame_index for o in r.overlays}
        assert all(overlays[br.name] == n for br in due)
        assert overlays["density"] == n - n % 3  # the density map of its last density frame
    t = sink.results[-1].timings
    for name in (
        "decode_ms",
        "queue_depth_a",
        "queue_depth_density",
        "a.run_ms",
        "a.preprocess_ms",
        "preprocess_ms",
        "inference_model_a_ms",
        "postprocess_ms",
        "fusion_wait_ms",
        "wait_for_a_ms",
        "overlay_lag_ms",
        "end_to_end_ms",
    ):
        assert name in t, name
    assert sum(st.waited_on.values()) == 10 and st.waited_on.get("a", 0) > 0


def test_strict_sync_times_out_to_a_partial_frame_naming_the_late_branch() -> None:
    fast, slow = SleepyBranch("fast", 0.002), SleepyBranch("slow", 0.15)
    orch, sink = run(STRICT, [fast, slow], frames=4, timeout_ms=40.0)
    assert [r.frame.frame_index for r in sink.results] == [0, 1, 2, 3]
    for r, received in zip(sink.results, sink.received_ts, strict=True):
        assert r.partial and r.late_branches == ("slow",)
        assert received < slow.done[r.frame.frame_index]  # published before the slow branch was done
        assert r.timings["end_to_end_ms"] >= 40.0  # the timeout runs from the frame's arrival in fusion
        assert r.timings["wait_for_slow_ms"] == r.timings["fusion_wait_ms"] > 0
    st = orch.status
    assert st.partial_frames == 4 and st.late_results == 4
    assert st.waited_on == {"slow": 4}


def test_async_overlay_publishes_every_frame_with_the_right_overlay_age() -> None:
    a, b = SleepyBranch("a", 0.01), SleepyBranch("b", 0.03)
    orch, sink = run(ASYNC, [a, b], frames=20, fps=100.0, on_full="drop")
    assert [r.frame.frame_index for r in sink.results] == list(range(20))
    decode_ts = {r.frame.frame_index: r.frame.decode_ts for r in sink.results}
    lagging = 0
    for r in sink.results:
        assert r.strategy == ASYNC
        for o in r.overlays:
            assert o.frame_index <= r.frame.frame_index
            # the age is measured from the decode of the frame the overlay was computed on
            expected = r.timings["end_to_end_ms"] + (r.frame.decode_ts - decode_ts[o.frame_index]) * 1000.0
            assert o.lag_ms == pytest.approx(expected, abs=1e-6)
            branch = a if o.branch == "a" else b
            assert branch.done[o.frame_index] <= publish_ts(r)
            lagging += o.frame_index < r.frame.frame_index
        if r.counts_frame_index is not None:
            assert r.counts_frame_index <= r.frame.frame_index
    assert lagging > 0
    assert {o.branch for o in sink.results[-1].overlays} == {"a", "b"}
    assert orch.status.frames_published == 20


def test_raw_stream_publishes_frames_without_waiting_and_every_record_joins_its_frame() -> None:
    a = SleepyBranch("a", 0.06, masks=True)
    orch, sink = run(RAW, [a], frames=6, fps=50.0, queue_size=8)
    assert [r.frame.frame_index for r in sink.results] == list(range(6))
    for r, received in zip(sink.results, sink.received_ts, strict=True):
        assert r.counts_frame_index is None and len(r.detections) == 0
        assert received < a.done[r.frame.frame_index]  # the frame did not wait for its branch
    frames = {(r.frame.stream_id, r.frame.frame_index, r.frame.pts) for r in sink.results}
    records = [(m.stream_id, m.frame_index, m.pts) for m in sink.metadata]
    assert len(records) == len(set(records)) and set(records) == frames
    with_people = [m for m in sink.metadata if m.counts.detection > 0]
    assert with_people
    for m in with_people:  # masks travel as RLE
        assert m.masks_rle is not None and len(m.masks_rle) == m.counts.detection
        assert m.detections().masks is not None
    assert orch.status.metadata_published == 6


def test_the_same_frames_give_the_same_counts_under_every_strategy() -> None:
    def branches() -> list[SleepyBranch]:
        return [
            SleepyBranch("global", 0.003, masks=True),
            SleepyBranch("tiles", 0.006, masks=True),
            SleepyBranch("density", 0.009, every_n_frames=3, density=True),
        ]

    out = {s: run(s, branches(), frames=9)[1] for s in (STRICT, ASYNC, RAW)}
    strict = {r.frame.frame_index: counts_key(r.counts) for r in out[STRICT].results}
    assert len(strict) == 9 and len(set(strict.values())) > 2
    assert {m.frame_index: counts_key(m.counts) for m in out[RAW].metadata} == strict
    checked = 0
    for r in out[ASYNC].results:
        if r.counts_frame_index is not None:
            assert counts_key(r.counts) == strict[r.counts_frame_index]
            checked += 1
    assert checked > 0


def test_a_live_switch_loses_no_frame_and_publishes_none_twice() -> None:
    a, b = SleepyBranch("a", 0.003), SleepyBranch("b", 0.012, masks=True)
    orch, sink = build(STRICT, [a, b], frames=60, fps=200.0, on_full="drop")
    cycle = [ASYNC, RAW, STRICT, ASYNC, STRICT, RAW]
    switched = 0
    with orch:
        while not orch.wait(0.02):
            orch.switch_strategy(cycle[switched % len(cycle)])
            switched += 1
    assert switched >= 4
    assert [r.frame.frame_index for r in sink.results] == list(range(60))
    records = [m.frame_index for m in sink.metadata]
    assert len(records) == len(set(records))
    assert {r.frame.frame_index for r in sink.results if r.strategy == RAW} <= set(records)
    switches = [e for e in sink.events if e.kind == "strategy_switch"]
    assert 4 <= len(switches) <= switched
    assert switches[0].data["from"] == STRICT and switches[0].data["to"] == ASYNC
    assert {r.strategy for r in sink.results} >= {STRICT, ASYNC}


def test_a_full_queue_drops_the_frame_for_that_branch_and_counts_it() -> None:
    fast, slow = SleepyBranch("fast", 0.0), SleepyBranch("slow", 0.04)
    orch, sink = run(STRICT, [fast, slow], frames=12, on_full="drop", queue_size=1)
    st = orch.status
    assert st.drops.get("slow:queue_full", 0) > 0
    for branch in (fast, slow):  # every frame either ran on the branch or was dropped for it, counted
        assert len(branch.done) + st.drops.get(f"{branch.name}:queue_full", 0) == 12
    assert [r.frame.frame_index for r in sink.results] == list(range(12))
    assert st.partial_frames == 0  # a frame does not wait for a branch it was dropped for
    for r in sink.results:
        n = r.frame.frame_index
        for branch in (fast, slow):
            used = next((o.frame_index for o in r.overlays if o.branch == branch.name), None)
            assert (used == n) == (n in branch.done)
    drops = [e for e in sink.events if e.kind == "drop" and e.data["branch"] == "slow"]
    assert drops and drops[0].data["reason"] == "queue_full" and drops[0].data["count"] == 1


def test_a_branch_that_raises_fails_the_run_and_stops_it_cleanly() -> None:
    a, b = SleepyBranch("a", 0.003, fail_at=3), SleepyBranch("b", 0.003)
    orch, sink = build(STRICT, [a, b], frames=200)
    with orch:
        assert orch.wait(10)
    st = orch.status
    assert st.state == "FAILED" and st.failed_stage == "branch a"
    assert st.error is not None and "model blew up on frame 3" in st.error
    err = orch.error
    assert isinstance(err, StageError) and isinstance(err.__cause__, RuntimeError)
    assert err.exit_code == 6
    assert st.frames_decoded < 200
    errors = [e for e in sink.events if e.kind == "error"]
    assert len(errors) == 1 and errors[0].frame_index == 3 and errors[0].data["stage"] == "branch a"
    assert orch.stop(2.0)


class _CutSource(SyntheticSource):
    """A synthetic stream that is cut after three frames (as a network stream that dies)."""

    def frames(self) -> Iterator[Frame]:
        for frame in super().frames():
            if frame.meta.frame_index == 3:
                raise SourceError("synthetic://cut: stream ended unexpectedly")
            yield frame


def test_a_source_error_fails_the_run_with_the_source_error() -> None:
    orch, sink = build(ASYNC, [SleepyBranch("a", 0.001)], source=_CutSource(64, 48, 10))
    with orch:
        assert orch.wait(10)
    assert orch.status.state == "FAILED" and orch.status.failed_stage == "source"
    assert isinstance(orch.error, SourceError) and orch.error.exit_code == 3
    assert [r.frame.frame_index for r in sink.results] == [0, 1, 2]  # what was decoded is published


class _BrokenSink:
    def write(self, result: FusedResult) -> None:
        raise OSError("disk full")

    def close(self) -> None:
        pass


def test_a_sink_that_raises_fails_the_run() -> None:
    orch, sink = build(STRICT, [SleepyBranch("a", 0.001)], frames=50, sinks=[_BrokenSink()])
    with orch:
        assert orch.wait(10)
    st = orch.status
    assert st.state == "FAILED" and st.failed_stage == "sink _BrokenSink" and "disk full" in (st.error or "")
    assert [e.kind for e in sink.events] == ["error"]  # the other sinks still hear of it


def test_the_watchdog_reports_a_stalled_branch_instead_of_hanging() -> None:
    a = SleepyBranch("a", latency_for=lambda i: 0.4 if i == 1 else 0.001)
    orch, sink = build(STRICT, [a], frames=12, fps=20.0, stall_timeout_s=0.1)
    seen_stalled = False
    with orch:
        while not orch.wait(0.01):
            seen_stalled |= "a" in orch.status.stalled
    kinds = [(e.kind, e.data.get("branch")) for e in sink.events]
    assert ("stall", "a") in kinds and ("stall_end", "a") in kinds
    assert kinds.index(("stall", "a")) < kinds.index(("stall_end", "a"))
    stall = next(e for e in sink.events if e.kind == "stall")
    assert stall.frame_index == 1 and stall.data["silent_s"] > 0.1
    assert seen_stalled
    assert orch.status.state == "FINISHED" and len(sink.results) == 12


def test_stop_ends_an_endless_run_and_every_thread() -> None:
    orch, sink = build(
        ASYNC, [SleepyBranch("a", 0.002), SleepyBranch("b", 0.004)], frames=None, fps=200.0, on_full="drop"
    )
    orch.start()
    time.sleep(0.15)
    assert orch.stop(2.0)
    st = orch.status
    assert st.state == "STOPPED"
    assert not [t for t in threading.enumerate() if t.name.startswith("pc-")]
    published = [r.frame.frame_index for r in sink.results]
    assert published == list(range(len(published))) and len(published) >= st.frames_decoded - 1 > 5


def test_switch_strategy_rejects_an_unknown_name_and_applies_before_start() -> None:
    orch, sink = build(STRICT, [SleepyBranch("a")], frames=3)
    with pytest.raises(ValueError, match="unknown fusion strategy"):
        orch.switch_strategy("FASTEST")
    orch.switch_strategy(RAW)
    assert orch.status.strategy == RAW and sink.events[0].kind == "strategy_switch"
    with orch:
        assert orch.wait(10)
    assert [r.strategy for r in sink.results] == [RAW] * 3 and len(sink.metadata) == 3


def test_overlapped_branches_are_bounded_by_the_slowest_not_the_sum() -> None:
    """Branches of 30, 20 and 10 ms: about 30 ms a frame overlapped, 60 ms one after the other."""

    def branches() -> list[SleepyBranch]:
        return [SleepyBranch("b30", 0.03), SleepyBranch("b20", 0.02), SleepyBranch("b10", 0.01)]

    elapsed = {}
    counts = {}
    for sequential in (False, True):
        orch, sink = build(STRICT, branches(), frames=16, sequential=sequential)
        t0 = time.perf_counter()
        with orch:
            if sequential:
                assert not [t for t in threading.enumerate() if t.name.startswith("pc-branch-")]
            assert orch.wait(20)
        elapsed[sequential] = time.perf_counter() - t0
        counts[sequential] = [counts_key(r.counts) for r in sink.results]
        assert orch.status.frames_published == 16 and orch.status.partial_frames == 0
    ratio = elapsed[True] / elapsed[False]
    assert ratio > 1.4, f"sequential {elapsed[True]:.3f} s vs overlapped {elapsed[False]:.3f} s"
    assert counts[True] == counts[False]


def test_leaked_threads_names_a_thread_left_running() -> None:
    before = set(threading.enumerate())
    release = threading.Event()
    t = threading.Thread(target=release.wait, name="left-running")
    t.start()
    try:
        assert [x.name for x in leaked_threads(before, grace_s=0.05)] == ["left-running"]
    finally:
        release.set()
        t.join()
    assert leaked_threads(before, grace_s=0.5) == []


def test_async_overlay_with_backpressure_publishes_each_frame_before_waiting_for_queue_room() -> None:
    """A file source (on_full="wait") blocks the worker on a full branch queue; the frame it
    already decoded must still be published at once, not after that wait."""
    slow = SleepyBranch("slow", 0.05)
    _, sink = run(ASYNC, [slow], frames=12, fps=None, on_full="wait", queue_size=1)
    assert [r.frame.frame_index for r in sink.results] == list(range(12))
    waits = [r.timings["end_to_end_ms"] for r in sink.results[3:]]
    assert max(waits) < 25.0, waits  # the branch takes 50 ms per frame: a wait would show here
