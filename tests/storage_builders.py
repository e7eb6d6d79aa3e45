"""Builders shared by the telemetry, storage and export tests (not a test module)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime, timedelta

import numpy as np

from pipeline.types import CountResult, Detections, FrameMeta, FusedResult, OverlayInfo


def make_result(
    frame_index: int,
    fused: float = 3.0,
    detections: int = 3,
    density: float | None = None,
    timings: Mapping[str, float] | None = None,
    partial: bool = False,
    late_branches: tuple[str, ...] = (),
    zones: Mapping[str, float] | None = None,
    strategy: str = "ASYNC_OVERLAY",
    with_image: bool = False,
) -> FusedResult:
    """A real ``FusedResult`` of a 64x48 frame with ``detections`` boxes and a 2x3 region grid."""
    rng = np.random.default_rng(frame_index)
    xy = rng.uniform(0, 40, size=(detections, 2)).astype(np.float32)
    dets = Detections(
        xyxy=np.concatenate([xy, xy + 8], axis=1),
        score=np.full(detections, 0.9, np.float32),
        class_id=np.zeros(detections, np.int32),
        source=np.full(detections, -1, np.int32),
    )
    region_source = np.array([[0, 1, 0], [1, 1, 0]], np.int8) if density is not None else np.zeros((2, 3), np.int8)
    counts = CountResult(
        detection=detections,
        density=density,
        fused=fused,
        policy="hybrid",
        region_counts=np.ones((2, 3), np.float32),
        region_source=region_source,
        zones=dict(zones or {}),
    )
    meta = FrameMeta(stream_id="cam0", frame_index=frame_index, pts=frame_index / 25, decode_ts=0.0, width=64, height=48)
    return FusedResult(
        frame=meta,
        strategy=strategy,
        detections=dets,
        density=None,
        counts=counts,
        timings=dict(timings if timings is not None else {"decode_ms": 1.0 + frame_index, "end_to_end_ms": 10.0}),
        overlays=(OverlayInfo(branch="yolo", frame_index=frame_index, lag_ms=12.5),),
        partial=partial,
        late_branches=late_branches,
        frame_image=np.zeros((48, 64, 3), np.uint8) if with_image else None,
        counts_frame_index=frame_index,
    )


class StepClock:
    """A wall clock that advances ``step`` on every call (controls ``published_at`` in tests)."""

    def __init__(self, start: datetime, step: timedelta = timedelta(seconds=1)) -> None:
        self._now = start
        self._step = step
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        with self._lock:
            now = self._now
            self._now += self._step
            return now


@contextmanager
def no_new_threads(grace_s: float = 2.0) -> Iterator[None]:
    """Fail if the block leaves a thread running that was not there before it (after ``grace_s``)."""
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + grace_s
    for thread in threading.enumerate():
        if thread not in before:
            thread.join(max(0.0, deadline - time.monotonic()))
    left = [t.name for t in threading.enumerate() if t not in before and t.is_alive()]
    assert not left, f"threads left running: {left}"
