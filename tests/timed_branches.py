"""Test helpers for fusion and the orchestrator: branches of controlled latency, a hand-driven clock,
a source the test paces, builders of real detections, and a simple real ``combine``.

``GatedBranch`` and ``SleepyBranch`` stand in for a model only to control time: they return real
``Detections`` (or a real ``DensityMap``) that depend only on the frame index, so every strategy
and every run sees the same results for the same frames. ``GatedBranch`` finishes a frame when the
test releases it, in :class:`ManualClock` time, so nothing a test asserts depends on how fast the
machine is; ``SleepyBranch`` really sleeps (benches, and tests that assert nothing about time).

Every wait on another thread is bounded by ``REAL_WAIT_S`` of real time: a broken test fails, it
does not hang.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from types import TracebackType

import numpy as np

from config.errors import SourceError
from pipeline.sources_synthetic import synthetic_image
from pipeline.types import BranchResult, CountResult, DensityMap, Detections, Frame, FrameMeta, missing_reason

REAL_WAIT_S = 10.0
"""The longest real time a helper waits for another thread; generous, so only a broken test hits it."""


class ManualClock:
    """A clock the test advances by hand (seconds); thread-safe, so pipeline threads may read it
    while the test (or a :class:`GatedBranch`) moves it. ``now`` may also be set directly."""

    def __init__(self, start: float = 1000.0) -> None:
        self._lock = threading.Lock()
        self._now = start

    @property
    def now(self) -> float:
        with self._lock:
            return self._now

    @now.setter
    def now(self, value: float) -> None:
        with self._lock:
            self._now = value

    def __call__(self) -> float:
        return self.now

    def advance_ms(self, ms: float) -> float:
        with self._lock:
            self._now += ms / 1000.0
            return self._now


def wait_until(predicate: Callable[[], bool], timeout_s: float = REAL_WAIT_S) -> bool:
    """Poll ``predicate`` (every millisecond of real time) until it holds; False after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.001)
    return True


def make_meta(index: int, decode_ts: float, *, width: int = 64, height: int = 48, fps: float = 30.0) -> FrameMeta:
    return FrameMeta("cam0", index, index / fps, decode_ts, width, height)


def make_detections(n: int, *, seed: int = 0, width: int = 64, height: int = 48, masks: bool = False) -> Detections:
    """``n`` boxes inside a ``width`` x ``height`` frame; with masks, a seeded random mask per box."""
    rng = np.random.default_rng(seed)
    x0 = rng.uniform(0, width / 2, n)
    y0 = rng.uniform(0, height / 2, n)
    xyxy = np.stack([x0, y0, x0 + rng.uniform(4, width / 2, n), y0 + rng.uniform(4, height / 2, n)], axis=1)
    mask_xyxy = np.round(xyxy).astype(np.int32)
    mask_list = None
    if masks:
        mask_list = tuple(rng.random((int(b[3] - b[1]) or 1, int(b[2] - b[0]) or 1)) > 0.5 for b in mask_xyxy)
    return Detections(
        xyxy=xyxy.astype(np.float32),
        score=rng.uniform(0.4, 1.0, n).astype(np.float32),
        class_id=np.zeros(n, np.int32),
        source=np.full(n, -1, np.int32),
        masks=mask_list,
        mask_xyxy=mask_xyxy if masks else None,
    )


def people_in(branch: str, frame_index: int) -> int:
    """How many detections a branch reports on a frame: a fixed function of both."""
    return (frame_index * 7 + len(branch) * 3) % 5


def branch_result(
    branch: str, meta: FrameMeta, *, done_ts: float = 0.0, masks: bool = False, density: bool = False
) -> BranchResult:
    """The result ``branch`` gives on ``meta``'s frame: detections, or a density map."""
    idx = meta.frame_index
    timings = {"preprocess_ms": 1.0, f"inference_model_{branch}_ms": 2.0, "postprocess_ms": 0.5}
    if density:
        grid = np.full((meta.height // 8, meta.width // 8), (idx % 4 + 1) / 10.0, np.float32)
        return BranchResult(meta, branch, density=DensityMap(grid, 8), timings=timings, done_ts=done_ts)
    dets = make_detections(
        people_in(branch, idx), seed=idx * 31 + len(branch), width=meta.width, height=meta.height, masks=masks
    )
    return BranchResult(meta, branch, detections=dets, timings=timings, done_ts=done_ts)


def sum_combine(
    results: Mapping[str, BranchResult], frame: FrameMeta, missing: Mapping[str, str] | None = None
) -> tuple[Detections, DensityMap | None, CountResult]:
    """A simple real counting: all detections together; the density map of the density branch, if
    any. Unknown (with the reason) when any branch is missing."""
    del frame
    dets = Detections.merge([r.detections for _, r in sorted(results.items()) if r.detections is not None])
    density = next((r.density for _, r in sorted(results.items()) if r.density is not None), None)
    if missing:
        return dets, density, CountResult.unknown(missing_reason(missing), "sum")
    dcount = None if density is None else density.count
    fused = float(len(dets)) if dcount is None else float(len(dets)) + dcount
    return dets, density, CountResult(detection=len(dets), density=dcount, fused=fused, policy="sum")


class SleepyBranch:
    """A branch that takes ``latency_s`` (or ``latency_for(frame_index)``) per frame; controls time only.

    ``fail_at``: raise RuntimeError on that frame. ``done[frame_index]`` is ``perf_counter()`` when
    the result for that frame was ready.
    """

    def __init__(
        self,
        name: str,
        latency_s: float = 0.0,
        *,
        every_n_frames: int = 1,
        fail_at: int | None = None,
        masks: bool = False,
        density: bool = False,
        latency_for: Callable[[int], float] | None = None,
    ) -> None:
        self.name = name
        self.every_n_frames = every_n_frames
        self._latency_s = latency_s
        self._latency_for = latency_for
        self._fail_at = fail_at
        self._masks = masks
        self._density = density
        self._lock = threading.Lock()
        self.done: dict[int, float] = {}

    def run(self, frame: Frame) -> BranchResult:
        idx = frame.meta.frame_index
        latency = self._latency_for(idx) if self._latency_for is not None else self._latency_s
        if latency > 0:
            time.sleep(latency)
        if idx == self._fail_at:
            raise RuntimeError(f"{self.name}: model blew up on frame {idx}")
        done = time.perf_counter()
        with self._lock:
            self.done[idx] = done
        return branch_result(self.name, frame.meta, done_ts=done, masks=self._masks, density=self._density)

    def cancel(self) -> None:
        pass

    def resume(self) -> None:
        pass

    def close(self) -> None:
        pass


class Occupancy:
    """Which branches are inside ``run`` at the same moment (shared by several :class:`GatedBranch`)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._inside: set[str] = set()
        self.most_at_once = 0
        """The largest number of branches that were inside ``run`` together."""

    def enter(self, branch: str) -> None:
        with self._lock:
            self._inside.add(branch)
            self.most_at_once = max(self.most_at_once, len(self._inside))

    def leave(self, branch: str) -> None:
        with self._lock:
            self._inside.discard(branch)

    @property
    def inside(self) -> frozenset[str]:
        with self._lock:
            return frozenset(self._inside)


class GatedBranch:
    """A branch that finishes a frame when the test releases it; controls time only.

    ``run(frame)`` records ``started[i]`` (clock time) and the thread it runs on (``threads[i]``),
    then waits at frame ``i``'s gate until :meth:`release` opens it (``held=False``: every gate is
    open from the start). Once released it advances ``clock`` by ``latency_ms`` (the frame took
    that long; branches released one at a time add up, which is the point: the test orders them),
    raises RuntimeError when ``i == fail_at``, records ``done[i]`` and returns
    :func:`branch_result`. A gate left shut for ``REAL_WAIT_S`` raises TimeoutError, which fails
    the run instead of hanging it. ``occupancy``, when given, is told when ``run`` is entered and left.
    """

    def __init__(
        self,
        name: str,
        clock: ManualClock,
        latency_ms: float = 0.0,
        *,
        every_n_frames: int = 1,
        held: bool = True,
        fail_at: int | None = None,
        masks: bool = False,
        density: bool = False,
        occupancy: Occupancy | None = None,
    ) -> None:
        self.name = name
        self.every_n_frames = every_n_frames
        self._clock = clock
        self._latency_ms = latency_ms
        self._fail_at = fail_at
        self._masks = masks
        self._density = density
        self._occupancy = occupancy
        self._cond = threading.Condition()
        self._open = not held
        self._released: set[int] = set()
        self.started: dict[int, float] = {}
        self.done: dict[int, float] = {}
        self.threads: dict[int, str] = {}

    def release(self, *frame_indices: int) -> None:
        """Open the gates of these frames (a frame not reached yet passes its gate when it comes)."""
        with self._cond:
            self._released.update(frame_indices)
            self._cond.notify_all()

    def release_all(self) -> None:
        """Open every gate, now and from now on."""
        with self._cond:
            self._open = True
            self._cond.notify_all()

    def wait_started(self, frame_index: int, timeout_s: float = REAL_WAIT_S) -> bool:
        """Wait until ``run`` has been entered for this frame; False after ``timeout_s`` of real time."""
        with self._cond:
            return self._cond.wait_for(lambda: frame_index in self.started, timeout_s)

    def wait_done(self, frame_index: int, timeout_s: float = REAL_WAIT_S) -> bool:
        """Wait until ``run`` has finished this frame; False after ``timeout_s`` of real time."""
        with self._cond:
            return self._cond.wait_for(lambda: frame_index in self.done, timeout_s)

    def run(self, frame: Frame) -> BranchResult:
        idx = frame.meta.frame_index
        with self._cond:
            self.started[idx] = self._clock()
            self.threads[idx] = threading.current_thread().name
            self._cond.notify_all()
        if self._occupancy is not None:
            self._occupancy.enter(self.name)
        try:
            with self._cond:
                if not self._cond.wait_for(lambda: self._open or idx in self._released, REAL_WAIT_S):
                    raise TimeoutError(f"{self.name}: frame {idx} was never released (the test forgot it)")
            if self._latency_ms:
                self._clock.advance_ms(self._latency_ms)
            if idx == self._fail_at:
                raise RuntimeError(f"{self.name}: model blew up on frame {idx}")
            done = self._clock()
            result = branch_result(self.name, frame.meta, done_ts=done, masks=self._masks, density=self._density)
            with self._cond:
                self.done[idx] = done
                self._cond.notify_all()
            return result
        finally:
            if self._occupancy is not None:
                self._occupancy.leave(self.name)

    def cancel(self) -> None:
        pass

    def resume(self) -> None:
        pass

    def close(self) -> None:
        pass


class ManualSource:
    """A frame source the test paces: frame ``i`` is made only once the test has allowed it.

    :meth:`allow` permits more frames (``paced=False``: every frame is permitted); a frame is made
    when permitted and asked for, its ``decode_ts`` read from ``clock`` then. The stream ends after
    ``frames`` frames (None: never), or at the next request after :meth:`end`. ``requested`` is
    the index of the frame the consumer asks for now (or last asked for). ``fail_at``: raise
    SourceError instead of making that frame. A permit not given within ``REAL_WAIT_S`` raises
    SourceError, which fails the run instead of hanging it. Frames are real RGB host images
    (:func:`~pipeline.sources_synthetic.synthetic_image`), (``height``, ``width``, 3) uint8.
    """

    def __init__(
        self,
        clock: ManualClock,
        frames: int | None = None,
        *,
        paced: bool = True,
        width: int = 64,
        height: int = 48,
        fail_at: int | None = None,
    ) -> None:
        self._clock = clock
        self._frames = frames
        self._width = width
        self._height = height
        self._fail_at = fail_at
        self._cond = threading.Condition()
        self._allowed: float = 0 if paced else float("inf")
        self._ended = False
        self.requested = -1
        self.made = 0

    def allow(self, n: int = 1) -> None:
        """Permit ``n`` more frames."""
        with self._cond:
            self._allowed += n
            self._cond.notify_all()

    def end(self) -> None:
        """End the stream at the consumer's next request (a waiting request returns at once)."""
        with self._cond:
            self._ended = True
            self._cond.notify_all()

    def wait_requested(self, frame_index: int, timeout_s: float = REAL_WAIT_S) -> bool:
        """Wait until the consumer has asked for this frame (so it is done with the ones before)."""
        with self._cond:
            return self._cond.wait_for(lambda: self.requested >= frame_index, timeout_s)

    def _permitted(self, frame_index: int) -> bool:
        return self._ended or self._allowed > frame_index

    def __enter__(self) -> ManualSource:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        pass

    def frames(self) -> Iterator[Frame]:
        i = 0
        while True:
            with self._cond:
                self.requested = i
                self._cond.notify_all()
                if self._frames is not None and i >= self._frames:
                    return
                permitted = functools.partial(self._permitted, i)
                if not self._cond.wait_for(permitted, REAL_WAIT_S):
                    raise SourceError(f"ManualSource: frame {i} was never allowed (the test forgot it)")
                if self._ended:
                    return
                if i == self._fail_at:
                    raise SourceError(f"ManualSource: stream cut at frame {i}")
                self.made = i + 1
            meta = make_meta(i, self._clock(), width=self._width, height=self._height)
            yield Frame(meta, synthetic_image(i, self._width, self._height))
            i += 1
