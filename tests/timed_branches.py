"""Test helpers for fusion and the orchestrator: branches of controlled latency, a hand-driven clock,
builders of real detections, and a simple real ``combine``.

``SleepyBranch`` stands in for a model only to control time: it sleeps a given latency and returns
real ``Detections`` (or a real ``DensityMap``) that depend only on the frame index, so every
strategy and every run sees the same results for the same frames.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping

import numpy as np

from pipeline.types import BranchResult, CountResult, DensityMap, Detections, Frame, FrameMeta, missing_reason


class ManualClock:
    """A clock the test advances by hand (seconds)."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance_ms(self, ms: float) -> float:
        self.now += ms / 1000.0
        return self.now


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

    def close(self) -> None:
        pass
