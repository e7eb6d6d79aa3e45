"""The orchestrator on real threads: frames of a source the test paces, branches that only control
time, real fusion.

Time is the test's: the orchestrator reads a :class:`ManualClock`, a :class:`GatedBranch` finishes
a frame when the test releases it, and a :class:`ManualSource` makes a frame when the test allows
it. Between steps the test waits (in real time, bounded) for the threads to have done what the
step implies, using :class:`FusionProbe` to see what reached fusion; so every assertion holds
however fast or loaded the machine is.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from types import TracebackType

import pytest

import pipeline.orchestrator as orchestrator_module
from config.errors import SourceError, StageError
from config.schema import FusionConfig
from pipeline.fusion import DROPPED, LATE, Fusion, Published
from pipeline.orchestrator import MemorySink, OnFull, Orchestrator
from pipeline.types import BranchResult, CountResult, FusedResult
from tests.conftest_threads import leaked_threads
from tests.timed_branches import (
    REAL_WAIT_S,
    GatedBranch,
    ManualClock,
    ManualSource,
    Occupancy,
    people_in,
    sum_combine,
    wait_until,
)

pytestmark = pytest.mark.timeout(30)  # threads: the suite-wide leak check in tests/conftest.py

STRICT, ASYNC, RAW = "STRICT_SYNC", "ASYNC_OVERLAY", "RAW_STREAM_WITH_METADATA"


class FusionProbe:
    """What the orchestrator handed its fusion, and what fusion gave back, as it happens.

    The orchestrator's own status does not say when fusion has taken a frame or a result (a
    STRICT_SYNC frame shows nothing until it is published), and a test must know that before it
    moves the clock. The probe is the real :class:`~pipeline.fusion.Fusion` with a record of each
    call, made when the call returns: ``frames`` taken, ``results`` taken (branch, frame),
    ``polled_to`` (the latest ``poll`` time) and ``published`` (frame indices of the FusedResults
    fusion returned, in order).
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.frames: list[int] = []
        self.results: set[tuple[str, int]] = set()
        self.polled_to = float("-inf")
        self.published: list[int] = []

    def record(
        self,
        outs: list[Published],
        *,
        frame: int | None = None,
        result: BranchResult | None = None,
        polled: float | None = None,
    ) -> None:
        with self._cond:
            if frame is not None:
                self.frames.append(frame)
            if result is not None:
                self.results.add((result.branch, result.frame.frame_index))
            if polled is not None:
                self.polled_to = max(self.polled_to, polled)
            self.published += [o.frame.frame_index for o in outs if isinstance(o, FusedResult)]
            self._cond.notify_all()

    def reset(self) -> None:
        """Forget everything (before the next run of a test that makes several)."""
        with self._cond:
            self.frames.clear()
            self.results.clear()
            self.polled_to = float("-inf")
            self.published.clear()

    def wait_frame(self, frame_index: int) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: frame_index in self.frames, REAL_WAIT_S)

    def wait_result(self, branch: str, frame_index: int) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: (branch, frame_index) in self.results, REAL_WAIT_S)

    def wait_polled(self, now: float) -> bool:
        """Wait until fusion has applied its timeouts up to ``now`` (clock time)."""
        with self._cond:
            return self._cond.wait_for(lambda: self.polled_to >= now, REAL_WAIT_S)


@pytest.fixture
def probe(monkeypatch: pytest.MonkeyPatch) -> FusionProbe:
    """The orchestrators this test builds get a real fusion that reports to the returned probe."""
    seen = FusionProbe()

    class ProbedFusion(Fusion):
        def on_frame(self, meta, *args, **kwargs):  # type: ignore[no-untyped-def]
            out = super().on_frame(meta, *args, **kwargs)
            seen.record(out, frame=meta.frame_index)
            return out

        def push(self, result: BranchResult) -> list[Published]:
            out = super().push(result)
            seen.record(out, result=result)
            return out

        def poll(self, now: float) -> list[Published]:
            out = super().poll(now)
            seen.record(out, polled=now)
            return out

        def flush(self, now: float | None = None) -> list[Published]:
            out = super().flush(now)
            seen.record(out)
            return out

        def switch(self, name):  # type: ignore[no-untyped-def]
            out = super().switch(name)
            seen.record(out)
            return out

    monkeypatch.setattr(orchestrator_module, "Fusion", ProbedFusion)
    return seen


class Rig:
    """An orchestrator on a manual clock, a paced source and gated branches; a context manager
    that starts the run and, on leaving, ends the source, opens every gate and stops the run."""

    def __init__(
        self,
        strategy: str,
        branches: Sequence[GatedBranch],
        clock: ManualClock,
        probe: FusionProbe | None = None,
        *,
        frames: int | None = 12,
        paced: bool = True,
        source: ManualSource | None = None,
        sequential: bool = False,
        on_full: OnFull = "wait",
        timeout_ms: float = 5000.0,
        queue_size: int = 4,
        stall_timeout_s: float = 3600.0,
        max_count_age_ms: float = 2000.0,
        sinks: Sequence[object] = (),
    ) -> None:
        self.clock = clock
        self.probe = probe
        self.branches = tuple(branches)
        self.source = source if source is not None else ManualSource(clock, frames, paced=paced)
        self.sink = MemorySink(clock)
        cfg = FusionConfig(
            strict_sync_timeout_ms=timeout_ms,
            queue_size=queue_size,
            live_queue_size=queue_size,
            stall_timeout_s=stall_timeout_s,
            max_count_age_ms=max_count_age_ms,
        )
        self.orch = Orchestrator(
            self.source,
            self.branches,
            sum_combine,
            cfg,
            [self.sink, *sinks],  # type: ignore[list-item]
            strategy=strategy,
            run_sequential=sequential,
            on_full=on_full,
            poll_interval_s=0.005,
            clock=clock,
        )

    def __enter__(self) -> Rig:
        self.orch.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.source.end()
        for b in self.branches:
            b.release_all()
        self.orch.stop(5.0)

    def feed(self, frame_index: int) -> None:
        """Let the source make the next frame (at the clock's time) and wait until fusion has it."""
        assert self.probe is not None, "feed needs the probe"
        self.source.allow()
        assert self.probe.wait_frame(frame_index), f"frame {frame_index} never reached fusion"

    def wait_result(self, branch: str, frame_index: int) -> None:
        assert self.probe is not None, "wait_result needs the probe"
        assert self.probe.wait_result(branch, frame_index), f"{branch}'s result for frame {frame_index} never reached fusion"

    def wait_published(self, n: int) -> None:
        assert wait_until(lambda: len(self.sink.results) >= n), f"{len(self.sink.results)} published, expected {n}"

    def switch(self, strategy: str) -> None:
        """Switch live and wait until fusion has switched (what the switch hands over goes to the sinks
        before anything fusion takes after it)."""
        self.orch.switch_strategy(strategy)
        assert wait_until(lambda: self.orch.status.strategy == strategy), f"no switch to {strategy}"

    def finish(self) -> None:
        """Open every gate and wait for the run to end (its source ends by its frame count)."""
        for b in self.branches:
            b.release_all()
        assert self.orch.wait(REAL_WAIT_S), "the run did not finish"


def publish_ts(r: FusedResult) -> float:
    assert r.timings.end_to_end_ms is not None
    return r.frame.decode_ts + r.timings.end_to_end_ms / 1000.0


def counts_key(c: CountResult) -> tuple[object, ...]:
    return (c.detection, c.density, c.fused, c.policy, c.unknown_reason)


def ms(x: float) -> object:
    """A duration in milliseconds, as exact as float arithmetic on the manual clock allows."""
    return pytest.approx(x, abs=1e-6)


def test_strict_sync_publishes_a_frame_when_its_last_branch_finished(probe: FusionProbe) -> None:
    clock = ManualClock()
    a, b = GatedBranch("a", clock, 12.0), GatedBranch("b", clock, 4.0)
    d = GatedBranch("density", clock, 20.0, every_n_frames=3, density=True)
    rig = Rig(STRICT, [a, b, d], clock, probe, frames=7)
    with rig:
        for n in range(7):
            due = [br for br in (b, a, d) if n % br.every_n_frames == 0]  # released in this order
            rig.feed(n)
            assert all(br.wait_started(n) for br in due)
            assert rig.source.wait_requested(n + 1)  # from here the worker waits: the next decode_ms
            for br in due:
                assert probe.published == list(range(n)), f"frame {n} published before {br.name} finished"
                br.release(n)
                rig.wait_result(br.name, n)
            rig.wait_published(n + 1)
        rig.finish()
    st = rig.orch.status
    assert st.state == "FINISHED" and st.frames_decoded == st.frames_published == 7
    assert [r.frame.frame_index for r in rig.sink.results] == list(range(7))
    previous_ms = 0.0
    for r in rig.sink.results:
        n = r.frame.frame_index
        density_due = n % 3 == 0
        took_ms = 36.0 if density_due else 16.0  # b 4 ms, then a 12 ms, then density 20 ms
        assert not r.partial and r.counts.known
        assert publish_ts(r) == pytest.approx(max(br.done[n] for br in (a, b, d) if n in br.done))
        assert r.timings.end_to_end_ms == ms(took_ms)
        assert r.timings.fusion_wait_ms == ms(took_ms - 4.0)  # from b's result, the first
        want_wait = {"a": 12.0, "b": 0.0} | ({"density": 32.0} if density_due else {})
        assert r.timings.wait_for_ms == {k: ms(v) for k, v in want_wait.items()}
        assert r.timings.waited_on() == ("density" if density_due else "a")
        assert r.timings.frame.decode_ms == ms(previous_ms)  # the worker waited for the test's frame
        previous_ms = took_ms
        assert set(r.timings.by_frame()) == {n}  # STRICT_SYNC: only this frame's work
        flat = r.timings.flat()
        assert flat["a.run_ms"] == ms(16.0) and flat["b.run_ms"] == ms(4.0)
        assert flat.get("density.run_ms") == (ms(36.0) if density_due else None)
        assert flat["preprocess_ms"] == ms(3.0 if density_due else 2.0)
        overlays = {o.branch: o.frame_index for o in r.overlays}
        assert overlays == {"a": n, "b": n, "density": n - n % 3}  # the density map of its last density frame
    flat = rig.sink.results[-1].timings.flat()
    for name in (
        "decode_ms", "queue_depth_a", "queue_depth_density", "a.run_ms", "a.preprocess_ms", "preprocess_ms",
        "inference_model_a_ms", "postprocess_ms", "fusion_wait_ms", "wait_for_a_ms", "overlay_lag_ms", "end_to_end_ms",
    ):
        assert name in flat, name
    assert st.waited_on == {"a": 4, "density": 3}


def test_strict_sync_times_out_to_a_partial_frame_naming_the_late_branch(probe: FusionProbe) -> None:
    clock = ManualClock()
    fast, slow = GatedBranch("fast", clock, held=False), GatedBranch("slow", clock)
    rig = Rig(STRICT, [fast, slow], clock, probe, frames=2, timeout_ms=40.0)
    with rig:
        rig.feed(0)
        rig.wait_result("fast", 0)
        assert slow.wait_started(0)
        clock.advance_ms(39.0)
        assert probe.wait_polled(clock())
        assert probe.published == []  # 39 ms: still waiting for slow
        clock.advance_ms(2.0)
        rig.wait_published(1)
        (r,) = rig.sink.results
        assert slow.done == {}  # published while the slow branch was still held
        slow.release(0, 1)
        assert wait_until(lambda: rig.orch.status.late_results == 1)
        rig.feed(1)
        rig.wait_published(2)
        rig.finish()
    assert r.frame.frame_index == 0 and r.partial and r.late_branches == ("slow",)
    assert r.missing == {"slow": LATE}
    assert r.counts.fused is None and r.counts.unknown_reason == "late: slow"
    assert r.timings.end_to_end_ms == ms(41.0)  # the timeout runs from the frame's arrival in fusion
    assert r.timings.wait_for_ms == {"fast": ms(0.0), "slow": ms(41.0)}
    assert r.timings.fusion_wait_ms == ms(41.0)
    assert {o.branch for o in r.overlays} == {"fast"}
    r1 = rig.sink.results[1]
    assert not r1.partial and r1.counts.known
    # the late result's work is reported once, on its own frame
    assert r1.timings.by_frame()[0]["slow.run_ms"] == ms(41.0)
    st = rig.orch.status
    assert st.partial_frames == 1 and st.late_results == 1
    assert st.waited_on.get("slow") == 1


def test_async_overlay_publishes_every_frame_at_once_with_the_age_of_each_overlay(probe: FusionProbe) -> None:
    """Frames 10 ms apart; branch a delivers each frame right after its publication, b two frames
    later. Published at once, frame k shows a's result for k-1 (10 ms old), b's for k-3 (30 ms old),
    and the counts of frame k-3, the latest complete one, until they are older than max_count_age_ms."""
    clock = ManualClock()
    a, b = GatedBranch("a", clock), GatedBranch("b", clock)
    steps_ms = [0, 10, 10, 10, 10, 10, 10, 10, 40]  # the clock moves this much before frame k
    rig = Rig(ASYNC, [a, b], clock, probe, frames=len(steps_ms), on_full="drop", max_count_age_ms=50.0)
    with rig:
        for k, step in enumerate(steps_ms):
            clock.advance_ms(step)
            rig.feed(k)
            rig.wait_published(k + 1)
            a.release(k)
            rig.wait_result("a", k)
            if k >= 2:
                b.release(k - 2)
                rig.wait_result("b", k - 2)
        rig.finish()
    assert [r.frame.frame_index for r in rig.sink.results] == list(range(len(steps_ms)))
    decode_ts = {r.frame.frame_index: r.frame.decode_ts for r in rig.sink.results}
    for r in rig.sink.results:
        k = r.frame.frame_index
        assert r.strategy == ASYNC and r.timings.end_to_end_ms == ms(0.0)  # published at once
        want = ({"a": k - 1} if k >= 1 else {}) | ({"b": k - 3} if k >= 3 else {})
        assert {o.branch: o.frame_index for o in r.overlays} == want
        for o in r.overlays:  # the age runs from the decode of the frame the overlay was computed on
            assert o.lag_ms == ms((decode_ts[k] - decode_ts[o.frame_index]) * 1000.0)
            assert r.timings.overlay_lag_ms[o.branch] == o.lag_ms
        if k < 3:
            assert r.counts_frame_index is None and r.counts.fused is None and r.counts.unknown_reason
            continue
        assert r.counts_frame_index == k - 3
        assert r.counts_age_ms == ms((decode_ts[k] - decode_ts[k - 3]) * 1000.0)
    ages = [(r.timings.overlay_lag_ms.get("a"), r.timings.overlay_lag_ms.get("b")) for r in rig.sink.results[3:]]
    assert ages == [(ms(10.0), ms(30.0))] * 5 + [(ms(40.0), ms(60.0))]
    for r in rig.sink.results[3:8]:
        k = r.frame.frame_index - 3
        assert r.counts.known and r.counts.detection == people_in("a", k) + people_in("b", k)
    last = rig.sink.results[-1]
    assert last.counts.fused is None
    assert last.counts.unknown_reason == "stale: counts of frame 5 are 60 ms old (max 50)"
    assert rig.orch.status.frames_published == len(steps_ms)


def test_raw_stream_publishes_frames_without_waiting_and_every_record_joins_its_frame(probe: FusionProbe) -> None:
    clock = ManualClock()
    a = GatedBranch("a", clock, masks=True)
    rig = Rig(RAW, [a], clock, probe, frames=6, queue_size=8)
    with rig:
        for n in range(6):
            rig.feed(n)
        rig.wait_published(6)
        assert a.done == {}  # every frame went out while the branch was still held
        assert rig.sink.metadata == []
        rig.finish()
    assert [r.frame.frame_index for r in rig.sink.results] == list(range(6))
    for r in rig.sink.results:
        assert r.raw and r.counts_frame_index is None and len(r.detections) == 0
        assert r.counts.fused is None and r.timings.branches == ()
    frames = {(r.frame.stream_id, r.frame.frame_index, r.frame.pts) for r in rig.sink.results}
    records = [(m.stream_id, m.frame_index, m.pts) for m in rig.sink.metadata]
    assert len(records) == len(set(records)) and set(records) == frames
    for m in rig.sink.metadata:
        assert m.counts.detection == people_in("a", m.frame_index) and not m.partial
    with_people = [m for m in rig.sink.metadata if m.counts.detection]
    assert with_people
    for m in with_people:  # masks travel as RLE
        assert m.masks_rle is not None and len(m.masks_rle) == m.counts.detection
        assert m.detections().masks is not None
    assert rig.orch.status.metadata_published == 6


def test_the_same_frames_give_the_same_counts_under_every_strategy(probe: FusionProbe) -> None:
    def run_one(strategy: str) -> MemorySink:
        clock = ManualClock()
        branches = [
            GatedBranch("global", clock, held=False, masks=True),
            GatedBranch("tiles", clock, held=False, masks=True),
            GatedBranch("density", clock, held=False, every_n_frames=3, density=True),
        ]
        probe.reset()
        with Rig(strategy, branches, clock, probe, frames=9) as rig:
            for n in range(9):  # each frame complete before the next: ASYNC_OVERLAY then counts frame n-1
                rig.feed(n)
                for br in branches:
                    if n % br.every_n_frames == 0:
                        rig.wait_result(br.name, n)
            rig.finish()
        return rig.sink

    out = {s: run_one(s) for s in (STRICT, ASYNC, RAW)}
    strict = {r.frame.frame_index: counts_key(r.counts) for r in out[STRICT].results}
    assert len(strict) == 9 and len(set(strict.values())) > 2
    assert all(r.counts.known for r in out[STRICT].results)
    assert {m.frame_index: counts_key(m.counts) for m in out[RAW].metadata} == strict
    async_counts = {r.frame.frame_index: (r.counts_frame_index, counts_key(r.counts)) for r in out[ASYNC].results}
    assert async_counts[0][0] is None
    assert {n: c for n, c in async_counts.items() if n} == {n: (n - 1, strict[n - 1]) for n in range(1, 9)}


def test_a_live_switch_loses_no_frame_and_publishes_none_twice(probe: FusionProbe) -> None:
    """Switches between frames, each while a frame waits for branch b (released one frame late):
    the frame a switch finds pending is published by whichever strategy owes it, exactly once."""
    clock = ManualClock()
    a, b = GatedBranch("a", clock), GatedBranch("b", clock, masks=True)
    switch_before = {2: ASYNC, 4: RAW, 6: STRICT, 8: ASYNC, 9: STRICT, 11: RAW}
    rig = Rig(STRICT, [a, b], clock, probe, frames=13, on_full="drop")
    with rig:
        for k in range(13):
            if k in switch_before:
                rig.switch(switch_before[k])
            rig.feed(k)
            a.release(k)
            rig.wait_result("a", k)
            if k >= 1:
                b.release(k - 1)
                rig.wait_result("b", k - 1)
        rig.finish()
    published = [(r.frame.frame_index, r.strategy) for r in rig.sink.results]
    s, a_, r = STRICT, ASYNC, RAW
    assert published == [
        (0, s),  # complete under STRICT_SYNC
        (1, a_),  # pending under STRICT_SYNC at the switch: ASYNC_OVERLAY takes it over
        (2, a_), (3, a_),
        (4, r), (5, r),
        (6, s),  # arrived after the switch back to STRICT_SYNC
        (7, a_),  # pending under STRICT_SYNC: taken over
        (8, a_),  # published by ASYNC_OVERLAY on arrival; STRICT_SYNC does not publish it again
        (9, s),
        (10, r),  # pending under STRICT_SYNC: published raw by RAW_STREAM_WITH_METADATA, its record follows
        (11, r), (12, r),
    ]
    assert [m.frame_index for m in rig.sink.metadata] == [4, 5, 10, 11, 12]  # every raw frame, once
    assert all(m.counts.known for m in rig.sink.metadata)
    assert all(x.raw == (x.strategy == RAW) for x in rig.sink.results)
    switches = [(e.data["from"], e.data["to"]) for e in rig.sink.events if e.kind == "strategy_switch"]
    assert switches == list(zip([STRICT, *list(switch_before.values())[:-1]], switch_before.values(), strict=True))
    assert rig.orch.status.frames_published == 13 and rig.orch.status.metadata_published == 5


def test_a_full_queue_drops_the_frame_for_every_branch_and_its_counts_are_unknown(probe: FusionProbe) -> None:
    """Live sources: a frame that finds one due branch's queue full goes to none of its branches
    (a frame some branch never sees cannot be counted), so the branches keep working on the same
    frames and the frames they take come out complete."""
    clock = ManualClock()
    fast, slow = GatedBranch("fast", clock, held=False), GatedBranch("slow", clock)
    rig = Rig(STRICT, [fast, slow], clock, probe, frames=6, on_full="drop", queue_size=1)
    with rig:
        rig.feed(0)
        assert slow.wait_started(0)  # slow is busy on frame 0, its queue empty
        rig.wait_result("fast", 0)
        rig.feed(1)  # fills slow's queue
        rig.wait_result("fast", 1)
        for n in range(2, 6):  # frames 2..5 find slow's queue full: dropped for both
            rig.feed(n)
        assert rig.orch.status.drops == {"slow:queue_full": 4, "fast:frame_skipped": 4}
        rig.finish()
    st = rig.orch.status
    assert st.drops == {"slow:queue_full": 4, "fast:frame_skipped": 4}
    assert sorted(slow.done) == [0, 1] and sorted(fast.done) == [0, 1]
    assert [r.frame.frame_index for r in rig.sink.results] == list(range(6))
    for r in rig.sink.results[:2]:  # taken by both: complete, counted
        assert not r.partial and r.counts.known
        assert {o.branch: o.frame_index for o in r.overlays} == {"fast": r.frame.frame_index, "slow": r.frame.frame_index}
    for r in rig.sink.results[2:]:  # no older result stands in for a dropped one
        assert r.missing == {"fast": DROPPED, "slow": DROPPED}
        assert r.counts.fused is None
        assert r.counts.unknown_reason == "dropped: fast (queue full); dropped: slow (queue full)"
        assert r.timings.wait_for_ms == {}  # nothing waited for
        assert r.overlays == ()
    for r in rig.sink.results[1:]:
        assert r.timings.frame.queue_depths["slow"] == 1
    assert st.partial_frames == 4
    drops = sorted((e.data["branch"], e.data["reason"], e.frame_index) for e in rig.sink.events if e.kind == "drop")
    assert drops == [("fast", "frame_skipped", 2), ("slow", "queue_full", 2)]


def test_async_overlay_with_backpressure_publishes_each_frame_before_waiting_for_queue_room(
    probe: FusionProbe,
) -> None:
    """A file source (on_full="wait") blocks the worker on a full branch queue; the frame it
    already decoded must still be published at once, not after that wait."""
    clock = ManualClock()
    slow = GatedBranch("slow", clock)
    rig = Rig(ASYNC, [slow], clock, probe, frames=4, on_full="wait", queue_size=1)
    with rig:
        rig.feed(0)
        assert slow.wait_started(0)
        rig.feed(1)  # fills slow's queue
        rig.feed(2)  # the worker now waits for room in slow's queue...
        rig.wait_published(3)  # ...and frame 2 is out all the same
        assert slow.done == {}
        assert rig.source.requested == 2  # the worker is still busy with frame 2
        rig.source.allow()
        rig.finish()
    assert [r.frame.frame_index for r in rig.sink.results] == list(range(4))
    assert sorted(slow.done) == list(range(4)) and rig.orch.status.drops == {}


def test_overlapped_branches_run_at_the_same_time_and_sequential_ones_never(probe: FusionProbe) -> None:
    """The structure only; how much overlapping buys is the benchmark's (app.bench ``sequential``)."""
    counts: dict[bool, list[tuple[object, ...]]] = {}
    for sequential in (False, True):
        clock = ManualClock()
        occupancy = Occupancy()
        names = ("b30", "b20", "b10")
        branches = [GatedBranch(n, clock, occupancy=occupancy) for n in names]
        probe.reset()
        with Rig(STRICT, branches, clock, probe, frames=4, sequential=sequential) as rig:
            rig.feed(0)
            if sequential:
                assert not [t for t in threading.enumerate() if t.name.startswith("pc-branch-")]
                assert branches[0].wait_started(0)
                assert occupancy.inside == {"b30"}  # the worker itself is inside b30: nobody else can be
            else:
                assert all(b.wait_started(0) for b in branches)
                assert occupancy.inside == set(names)  # all three inside run() at once
            rig.source.allow(3)
            rig.finish()
        for b in branches:
            want = "pc-worker" if sequential else f"pc-branch-{b.name}"
            assert set(b.threads.values()) == {want}
        assert occupancy.most_at_once == (1 if sequential else 3)
        counts[sequential] = [counts_key(r.counts) for r in rig.sink.results]
        assert rig.orch.status.frames_published == 4 and rig.orch.status.partial_frames == 0
    assert counts[True] == counts[False]


def test_the_watchdog_reports_a_stalled_branch_instead_of_hanging(probe: FusionProbe) -> None:
    clock = ManualClock()
    a = GatedBranch("a", clock)
    a.release(0, 2)
    rig = Rig(STRICT, [a], clock, probe, frames=3, stall_timeout_s=0.2)

    def events() -> list[tuple[str, object]]:
        return [(e.kind, e.data.get("branch")) for e in rig.sink.events]

    with rig:
        rig.feed(0)
        rig.wait_published(1)
        rig.feed(1)
        assert a.wait_started(1)
        clock.advance_ms(300.0)  # a has been on frame 1 for 0.3 s of the pipeline's time (timeout 0.2 s)
        assert wait_until(lambda: ("stall", "a") in events())
        assert wait_until(lambda: rig.orch.status.stalled == ("a",))
        assert ("stall_end", "a") not in events()
        a.release(1)
        assert wait_until(lambda: ("stall_end", "a") in events())
        assert wait_until(lambda: rig.orch.status.stalled == ())
        rig.feed(2)
        rig.finish()
    assert events() == [("stall", "a"), ("stall_end", "a")]
    stall = rig.sink.events[0]
    assert stall.frame_index == 1 and stall.data["silent_s"] == pytest.approx(0.3) and stall.data["queued"] == 0
    assert rig.orch.status.state == "FINISHED" and len(rig.sink.results) == 3
    assert not any(r.partial for r in rig.sink.results)


# ---------------------------------------------------------------- failures, stop, names: no time in them


def test_a_branch_that_raises_fails_the_run_and_stops_it_cleanly() -> None:
    clock = ManualClock()
    a, b = GatedBranch("a", clock, held=False, fail_at=3), GatedBranch("b", clock, held=False)
    with Rig(STRICT, [a, b], clock, frames=200, paced=False) as rig:
        assert rig.orch.wait(REAL_WAIT_S)
        st = rig.orch.status
        assert st.state == "FAILED" and st.failed_stage == "branch a"
        assert st.error is not None and "model blew up on frame 3" in st.error
        err = rig.orch.error
        assert isinstance(err, StageError) and isinstance(err.__cause__, RuntimeError)
        assert err.exit_code == 6
        assert st.frames_decoded < 200  # bounded queues: the worker cannot run far ahead
        errors = [e for e in rig.sink.events if e.kind == "error"]
        assert len(errors) == 1 and errors[0].frame_index == 3 and errors[0].data["stage"] == "branch a"
        assert rig.orch.stop(2.0)


def test_a_source_error_fails_the_run_with_the_source_error() -> None:
    clock = ManualClock()
    source = ManualSource(clock, 10, paced=False, fail_at=3)  # a network stream that dies
    with Rig(ASYNC, [GatedBranch("a", clock, held=False)], clock, source=source) as rig:
        assert rig.orch.wait(REAL_WAIT_S)
    assert rig.orch.status.state == "FAILED" and rig.orch.status.failed_stage == "source"
    assert isinstance(rig.orch.error, SourceError) and rig.orch.error.exit_code == 3
    assert [r.frame.frame_index for r in rig.sink.results] == [0, 1, 2]  # what was decoded is published


class _BrokenSink:
    def write(self, result: FusedResult) -> None:
        raise OSError("disk full")

    def close(self) -> None:
        pass


def test_a_sink_that_raises_fails_the_run() -> None:
    clock = ManualClock()
    branches = [GatedBranch("a", clock, held=False)]
    with Rig(STRICT, branches, clock, frames=50, paced=False, sinks=[_BrokenSink()]) as rig:
        assert rig.orch.wait(REAL_WAIT_S)
    st = rig.orch.status
    assert st.state == "FAILED" and st.failed_stage == "sink _BrokenSink" and "disk full" in (st.error or "")
    assert [e.kind for e in rig.sink.events] == ["error"]  # the other sinks still hear of it


def test_stop_ends_an_endless_run_and_every_thread() -> None:
    clock = ManualClock()
    branches = [GatedBranch("a", clock, held=False), GatedBranch("b", clock, held=False)]
    rig = Rig(ASYNC, branches, clock, frames=None, paced=False, on_full="drop")
    rig.orch.start()
    try:
        assert wait_until(lambda: rig.orch.status.frames_published > 5)
        assert rig.orch.stop(5.0)
    finally:
        rig.orch.stop(5.0)
    st = rig.orch.status
    assert st.state == "STOPPED"
    assert not [t for t in threading.enumerate() if t.name.startswith("pc-")]
    published = [r.frame.frame_index for r in rig.sink.results]
    # every frame handed to fusion is published; only the one the worker held at the stop may be lost
    assert published == list(range(len(published))) and len(published) >= st.frames_decoded - 1 > 4


def test_switch_strategy_rejects_an_unknown_name_and_applies_before_start() -> None:
    clock = ManualClock()
    rig = Rig(STRICT, [GatedBranch("a", clock, held=False)], clock, frames=3, paced=False)
    with pytest.raises(ValueError, match="unknown fusion strategy"):
        rig.orch.switch_strategy("FASTEST")
    rig.orch.switch_strategy(RAW)
    assert rig.orch.status.strategy == RAW and rig.sink.events[0].kind == "strategy_switch"
    with rig:
        assert rig.orch.wait(REAL_WAIT_S)
    assert [r.strategy for r in rig.sink.results] == [RAW] * 3 and len(rig.sink.metadata) == 3


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
