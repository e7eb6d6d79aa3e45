"""GPU frame slots are leased (issue 8): the lease's bookkeeping (runs on any machine), the ring's
GPU-side ordering, the orchestrator's holds, and a branch's work on its own stream."""

from __future__ import annotations

import time
from collections.abc import Iterator
from types import TracebackType
from typing import Any

import numpy as np
import pytest

from config.schema import FusionConfig
from gpu.ring import LeaseError, SlotLease
from models.branch import Decoded, run_branch
from pipeline.orchestrator import Orchestrator
from pipeline.types import Detections, Frame, FrameMeta
from tests.timed_branches import sum_combine

# ------------------------------------------------------------------ the lease (no GPU needed)


def test_lease_counts_holds_and_refuses_a_release_too_many() -> None:
    lease = SlotLease(3)
    assert lease.held == 0 and not lease.managed
    lease.hold(2)
    assert lease.held == 2 and lease.managed
    lease.release()
    lease.release()
    assert lease.held == 0 and lease.events == ()
    with pytest.raises(LeaseError, match="slot 3: released more often than held"):
        lease.release()
    with pytest.raises(ValueError, match=">= 0"):
        lease.hold(-1)


def test_a_frame_nobody_handed_over_is_not_released() -> None:
    """A warm-up run or a test calls a branch on a frame without a hold: nothing to release."""
    lease = SlotLease(0)
    frame = Frame(FrameMeta("t", 0, 0.0, 0.0, 8, 6), np.zeros((6, 8, 3), np.uint8), lease=lease)
    result = run_branch("b", frame, lambda f: f, lambda p: ({}, {}), lambda p, o: Decoded())
    assert result.error is None and lease.held == 0 and not lease.managed


def test_a_failing_preprocess_still_releases() -> None:
    lease = SlotLease(0)
    lease.hold(1)
    frame = Frame(FrameMeta("t", 0, 0.0, 0.0, 8, 6), np.zeros((6, 8, 3), np.uint8), lease=lease)

    def prepare(f: Frame) -> None:
        raise RuntimeError("boom")

    result = run_branch("b", frame, prepare, lambda p: ({}, {}), lambda p, o: Decoded())
    assert result.error == "RuntimeError: boom" and lease.held == 0


class _LeasedSource:
    """Host frames that carry a lease each, as the NVDEC source's do; keeps every lease."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.leases: list[SlotLease] = []

    def __enter__(self) -> _LeasedSource:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        pass

    def frames(self) -> Iterator[Frame]:
        for i in range(self.n):
            lease = SlotLease(i % 4)
            self.leases.append(lease)
            yield Frame(FrameMeta("t", i, i / 30, time.perf_counter(), 8, 6), np.zeros((6, 8, 3), np.uint8), lease=lease)


class _SlowBranch:
    """Takes ``latency_s`` per frame in preprocessing (controls time only), on the real skeleton."""

    every_n_frames = 1

    def __init__(self, name: str, latency_s: float) -> None:
        self.name = name
        self.latency_s = latency_s

    def run(self, frame: Frame) -> Any:
        return run_branch(self.name, frame, self._prepare, lambda p: ({}, {}), lambda p, o: Decoded(Detections.empty()))

    def _prepare(self, frame: Frame) -> None:
        time.sleep(self.latency_s)

    def cancel(self) -> None:
        pass

    def resume(self) -> None:
        pass

    def close(self) -> None:
        pass


@pytest.mark.parametrize(("on_full", "sequential"), [("drop", False), ("wait", False), ("wait", True)])
def test_every_hold_the_orchestrator_takes_is_given_back(on_full: Any, sequential: bool) -> None:
    """DropWhenFull holds for every due branch of a frame it hands over and never holds a frame it
    drops (it goes to all its branches or none); WaitForRoom and Sequential hold for all; each
    branch releases once: no hold is left and no release is one too many (a LeaseError would fail
    the branch)."""
    source = _LeasedSource(40)
    branches = [_SlowBranch("fast", 0.0), _SlowBranch("slow", 0.01)]
    cfg = FusionConfig(queue_size=1, strict_sync_timeout_ms=5000.0)
    with Orchestrator(source, branches, sum_combine, cfg, on_full=on_full, run_sequential=sequential,
                      poll_interval_s=0.005) as orch:  # fmt: skip
        assert orch.wait(60)
    st = orch.status
    assert st.state == "FINISHED", st.error
    assert len(source.leases) == 40
    assert all(lease.held == 0 for lease in source.leases), [lease.held for lease in source.leases]
    if on_full == "drop":
        per_branch = {b: sum(n for k, n in st.drops.items() if k.startswith(f"{b}:")) for b in ("fast", "slow")}
        dropped = per_branch["slow"]
        assert dropped > 0 and per_branch["fast"] == dropped  # a frame is dropped for all its branches
        assert sum(not lease.managed for lease in source.leases) == dropped  # a dropped frame is never held
    else:
        assert all(lease.managed for lease in source.leases)


# ------------------------------------------------------------------ on the GPU


_SPIN = r"""
extern "C" __global__ void spin_copy(const unsigned char* src, unsigned char* dst, long long n, long long cycles) {
    long long t0 = clock64();
    while (clock64() - t0 < cycles) { }
    for (long long i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) dst[i] = src[i];
}
"""


def spin_copy(cp: Any, src: Any, dst: Any, stream: Any, ms: float) -> None:
    """Enqueue on ``stream``: wait ``ms`` on the GPU, then copy ``src`` to ``dst`` (a late reader)."""
    kernel = cp.RawKernel(_SPIN, "spin_copy")
    cycles = int(cp.cuda.Device().attributes["ClockRate"] * ms)  # kHz * ms
    kernel((64,), (256,), (src, dst, np.int64(src.size), np.int64(cycles)), stream=stream)


def test_ring_skips_held_slots_and_refuses_when_all_are_held(cp: Any) -> None:
    from gpu.ring import FrameRing

    ring = FrameRing((6, 4), depth=3)
    writer = cp.cuda.Stream(non_blocking=True)
    got = [ring.acquire(writer) for _ in range(3)]
    assert [g[0] for g in got if g is not None] == [0, 1, 2]
    got[1][2].hold(1)  # type: ignore[index]
    nxt = ring.acquire(writer)
    assert nxt is not None and nxt[0] == 0
    nxt = ring.acquire(writer)
    assert nxt is not None and nxt[0] == 2  # 1 is held: skipped, not overwritten
    for i in (0, 2):
        ring._leases[i].hold(1)  # type: ignore[union-attr]
    assert ring.acquire(writer) is None and ring.refused == 1
    assert ring.holds() == [1, 1, 1]
    ptrs = ring.slot_pointers()
    ring._leases[1].release()  # type: ignore[union-attr]
    again = ring.acquire(writer)
    assert again is not None and again[0] == 1 and ring.slot_pointers() == ptrs


def test_the_next_writer_waits_on_the_gpu_for_the_readers_event(cp: Any) -> None:
    from gpu.ring import FrameRing

    ring = FrameRing((1024, 1024), depth=2)
    writer = cp.cuda.Stream(non_blocking=True)
    reader = cp.cuda.Stream(non_blocking=True)
    got = ring.acquire(writer)
    assert got is not None
    index, slot, lease = got
    with writer:
        slot.fill(7)
    writer.synchronize()
    lease.hold(1)
    with reader:
        seen = cp.empty_like(slot)
    spin_copy(cp, slot, seen, reader, ms=200.0)  # the read is still queued when the writer comes
    lease.release(reader)
    assert ring.acquire(writer) is not None  # the other slot
    again = ring.acquire(writer)
    assert again is not None and again[0] == index
    with writer:
        again[1].fill(1)  # enqueued at once; must run after the reader's copy
    writer.synchronize()
    reader.synchronize()
    assert int(seen.min()) == 7 and int(seen.max()) == 7


def test_branch_runs_every_step_on_its_stream_and_releases_with_an_event(cp: Any) -> None:
    from gpu.events import to_host

    stream = cp.cuda.Stream(non_blocking=True)
    lease = SlotLease(0)
    lease.hold(1)
    image = cp.arange(6 * 8 * 3, dtype=cp.uint8).reshape(6, 8, 3)
    frame = Frame(FrameMeta("t", 0, 0.0, 0.0, 8, 6), image, device="gpu", lease=lease)
    seen: dict[str, int] = {}

    def prepare(f: Frame) -> Any:
        seen["prepare"] = cp.cuda.get_current_stream().ptr
        return f.image.astype(cp.float32) * 2

    def infer(p: Any) -> tuple[dict[str, Any], dict[str, float]]:
        seen["infer"] = cp.cuda.get_current_stream().ptr
        return {"y": p + 1}, {}

    def decode(p: Any, outputs: dict[str, Any]) -> Decoded:
        seen["decode"] = cp.cuda.get_current_stream().ptr
        seen["sum"] = int(to_host(outputs["y"].sum()))
        return Decoded(detections=Detections.empty())

    before = cp.cuda.get_current_stream().ptr
    result = run_branch("b", frame, prepare, infer, decode, stream=stream)
    assert result.error is None
    assert seen["prepare"] == seen["infer"] == seen["decode"] == stream.ptr != 0
    assert cp.cuda.get_current_stream().ptr == before  # the thread's stream is given back
    assert seen["sum"] == int((np.arange(144) * 2 + 1).sum())
    assert lease.held == 0 and len(lease.events) == 1
    lease.events[0].synchronize()


def test_held_reader_keeps_its_pixels_while_the_ring_comes_round(cp: Any) -> None:
    """A reader that is late (an event-ordered read still queued on its stream) and frames held
    by queued work: the decoder-side ring gives out only free slots, so every read sees its own
    frame's pixels (the synthetic pattern of each frame index)."""
    from gpu.ring import FrameRing

    ring = FrameRing((64, 64), depth=4)
    writer = cp.cuda.Stream(non_blocking=True)
    reader = cp.cuda.Stream(non_blocking=True)
    held: list[tuple[int, Any, SlotLease]] = []
    copies: dict[int, Any] = {}
    dropped = 0
    for i in range(20):
        got = ring.acquire(writer)
        if got is None:
            dropped += 1
            if i == 12:  # the late reader finally reads its frames
                for j, slot, lease in held:
                    with reader:
                        copies[j] = cp.empty_like(slot)
                    spin_copy(cp, slot, copies[j], reader, ms=20.0)
                    lease.release(reader)
                held.clear()
            continue
        _, slot, lease = got
        with writer:
            slot.fill(i)
        lease.hold(1)
        held.append((i, slot, lease))
    reader.synchronize()
    assert dropped == 12  # 0-3 written and held, 4-12 refused, 13-16 written after the release, 17-19 refused
    for j, c in copies.items():
        assert int(c.min()) == j and int(c.max()) == j, f"frame {j} read pixels of another frame"
