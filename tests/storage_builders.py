"""Builders shared by the telemetry, storage and export tests (not a test module)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Literal

import numpy as np

from pipeline.tracking import LineCount, LineCrossing, Track, TrackedFrame, ZoneExit
from pipeline.types import (
    BranchTimings,
    CountResult,
    Detections,
    FrameMeta,
    FrameTimings,
    FusedResult,
    MetadataRecord,
    OverlayInfo,
    StageTimings,
    TrackingRecord,
    missing_reason,
)

RAW = "RAW_STREAM_WITH_METADATA"


def make_timings(frame_index: int, figures: Mapping[str, float]) -> StageTimings:
    """The ``StageTimings`` of frame ``frame_index`` whose ``by_frame()`` gives ``figures`` for it.

    Names: ``decode_ms``, ``fusion_wait_ms``, ``end_to_end_ms``, ``queue_depth_<branch>``,
    ``wait_for_<branch>_ms``, ``overlay_lag_<branch>_ms`` (the frame's own), and
    ``<branch>.<stage>`` (that branch's work on this frame; ``by_frame()`` adds the plain
    ``<stage>`` total). A derived name (``overlay_lag_ms``, a plain stage) is a ValueError: build
    the ``StageTimings`` itself for branch work of other frames.
    """
    own: dict[str, float] = {}
    depths: dict[str, int] = {}
    wait_for: dict[str, float] = {}
    lag: dict[str, float] = {}
    work: dict[str, dict[str, float]] = {}
    for name, ms in figures.items():
        if name in ("decode_ms", "fusion_wait_ms", "end_to_end_ms"):
            own[name] = ms
        elif name.startswith("queue_depth_"):
            depths[name.removeprefix("queue_depth_")] = int(ms)
        elif name.startswith("wait_for_") and name.endswith("_ms"):
            wait_for[name.removeprefix("wait_for_").removesuffix("_ms")] = ms
        elif name.startswith("overlay_lag_") and name.endswith("_ms") and name != "overlay_lag_ms":
            lag[name.removeprefix("overlay_lag_").removesuffix("_ms")] = ms
        elif "." in name:
            branch, _, stage = name.partition(".")
            work.setdefault(branch, {})[stage] = ms
        else:
            raise ValueError(f"make_timings: {name!r} is derived by StageTimings.by_frame(); build StageTimings instead")
    return StageTimings(
        frame_index=frame_index,
        frame=FrameTimings(decode_ms=own.get("decode_ms"), queue_depths=depths),
        branches=tuple(BranchTimings(b, frame_index, stages) for b, stages in work.items()),
        fusion_wait_ms=own.get("fusion_wait_ms"),
        wait_for_ms=wait_for,
        overlay_lag_ms=lag,
        end_to_end_ms=own.get("end_to_end_ms"),
    )


def make_detections(n: int, seed: int) -> Detections:
    """``n`` person boxes 8x8 px inside a 64x48 frame."""
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 40, size=(n, 2)).astype(np.float32)
    return Detections(
        xyxy=np.concatenate([xy, xy + 8], axis=1),
        score=np.full(n, 0.9, np.float32),
        class_id=np.zeros(n, np.int32),
        source=np.full(n, -1, np.int32),
    )


def make_counts(
    fused: float | None = 3.0,
    detection: int | None = 3,
    density: float | None = None,
    zones: Mapping[str, float | None] | None = None,
    unknown_reason: str | None = None,
) -> CountResult:
    """A ``CountResult`` with a 2x3 region grid (empty when ``fused`` is None, as the counter makes it)."""
    known = fused is not None
    shape = (2, 3) if known else (0, 0)
    region_source = np.array([[0, 1, 0], [1, 1, 0]], np.int8) if density is not None else np.zeros((2, 3), np.int8)
    return CountResult(
        detection=detection,
        density=density,
        fused=fused,
        policy="hybrid",
        region_counts=np.ones(shape, np.float32),
        region_source=region_source if known else np.zeros(shape, np.int8),
        zones=dict(zones or {}),
        unknown_reason=None if known else unknown_reason,
    )


def make_result(
    frame_index: int,
    fused: float | None = 3.0,
    detections: int = 3,
    density: float | None = None,
    timings: StageTimings | Mapping[str, float] | None = None,
    missing: Mapping[str, str] | None = None,
    zones: Mapping[str, float | None] | None = None,
    strategy: str = "ASYNC_OVERLAY",
    with_image: bool = False,
    *,
    detection_count: int | Literal["boxes"] | None = "boxes",
    unknown_reason: str | None = None,
    counts_frame_index: int | Literal["self"] | None = "self",
    counts_age_ms: float | None = 5.0,
    raw: bool = False,
) -> FusedResult:
    """A real ``FusedResult`` of a 64x48 frame with ``detections`` boxes and a 2x3 region grid.

    ``fused=None`` is an unknown count: its reason is ``unknown_reason``, else made from
    ``missing`` (``detection_count`` defaults to None then, to the box count otherwise).
    ``counts_frame_index`` defaults to the frame itself. ``timings``: a ``StageTimings``, or the
    frame's figures by telemetry name (:func:`make_timings`); default ``decode_ms`` 1 + index and
    ``end_to_end_ms`` 10. ``raw``: a RAW_STREAM_WITH_METADATA frame publication (no counts).
    """
    meta = FrameMeta(stream_id="cam0", frame_index=frame_index, pts=frame_index / 25, decode_ts=0.0, width=64, height=48)
    if timings is None:
        timings = {"decode_ms": 1.0 + frame_index, "end_to_end_ms": 10.0}
    if not isinstance(timings, StageTimings):
        timings = make_timings(frame_index, timings)
    image = np.zeros((48, 64, 3), np.uint8) if with_image else None
    if raw:
        return FusedResult(
            frame=meta, strategy=RAW, detections=Detections.empty(), density=None,
            counts=CountResult.unknown("raw frame: counts follow in its metadata record", "none"),
            timings=timings, frame_image=image, raw=True,
        )
    missing = dict(missing or {})
    if fused is None and unknown_reason is None:
        unknown_reason = missing_reason(missing)
        if not unknown_reason:
            raise ValueError("make_result: an unknown count needs unknown_reason or missing")
    if detection_count == "boxes":
        detection_count = detections if fused is not None else None
    return FusedResult(
        frame=meta,
        strategy=strategy,
        detections=make_detections(detections, frame_index),
        density=None,
        counts=make_counts(fused, detection_count, density, zones, unknown_reason),
        timings=timings,
        overlays=(OverlayInfo(branch="yolo", frame_index=frame_index, lag_ms=12.5),),
        missing=missing,
        frame_image=image,
        counts_frame_index=frame_index if counts_frame_index == "self" else counts_frame_index,
        counts_age_ms=counts_age_ms,
    )


def make_track(track_id: int, xyxy: tuple[float, float, float, float] = (10, 10, 18, 26), *, static: bool = False,
               allowed: bool = False, missed_frames: int = 0) -> Track:
    """A real confirmed ``pipeline.tracking.Track`` (counted unless static and not allowed)."""
    return Track(
        id=track_id, xyxy=np.array(xyxy, np.float32), class_id=0, score=0.9, age_frames=10,
        missed_frames=missed_frames, first_pts=0.0, last_pts=0.0, static=static, allowed=allowed,
        counted=not static or allowed, trail=np.zeros((0, 2), np.float32),
    )


def make_tracked(
    frame_index: int,
    tracks: tuple[Track, ...] = (),
    crossings: tuple[LineCrossing, ...] = (),
    zone_exits: tuple[ZoneExit, ...] = (),
    line_counts: Mapping[str, LineCount] | None = None,
    occupancy: Mapping[str, int | None] | None = None,
    *,
    confirmed: int | Literal["tracks"] | None = "tracks",
    unknown_reason: str | None = None,
) -> TrackedFrame:
    """A real ``pipeline.tracking.TrackedFrame`` of :func:`make_result`'s frame (cam0, 64x48, 25 fps).

    ``confirmed`` defaults to the counted tracks; None is unknown (``unknown_reason``, default
    ``warming up``)."""
    meta = FrameMeta(stream_id="cam0", frame_index=frame_index, pts=frame_index / 25, decode_ts=0.0, width=64, height=48)
    if confirmed == "tracks":
        confirmed = sum(t.counted for t in tracks)
    return TrackedFrame(
        frame=meta, track_id=np.array([t.id for t in tracks], np.int64), tracks=tracks,
        raw_count=None if confirmed is None else len(tracks), confirmed_count=confirmed,
        crossings=crossings, line_counts=dict(line_counts or {}), occupancy=dict(occupancy or {}),
        zone_exits=zone_exits, unknown_reason=(unknown_reason or "warming up") if confirmed is None else None,
    )


def make_tracking_result(tracked: TrackedFrame, detections: int = 3, strategy: str = "STRICT_SYNC") -> FusedResult:
    """:func:`make_result` of ``tracked``'s frame with ``tracked`` as its counts' tracking (the
    fused count its confirmed count, as the counter makes it; unknown with its reason)."""
    i = tracked.frame.frame_index
    base = make_result(i, fused=None if tracked.confirmed_count is None else float(tracked.confirmed_count),
                       detections=detections, strategy=strategy, unknown_reason=tracked.unknown_reason,
                       detection_count=detections)
    return replace(base, frame=tracked.frame, counts=replace(base.counts, tracking=tracked))


def tracking_record(tracked: TrackedFrame) -> TrackingRecord:
    """The ``TrackingRecord`` fusion publishes for ``tracked``'s frame."""
    m = tracked.frame
    return TrackingRecord(m.stream_id, m.frame_index, m.pts, tracked)


def make_record(frame_index: int, **kwargs: object) -> MetadataRecord:
    """The metadata record of frame ``frame_index`` (RAW_STREAM_WITH_METADATA) with the counts,
    missing branches and timings :func:`make_result` would give it (same keywords)."""
    full = make_result(frame_index, strategy=RAW, **kwargs)  # type: ignore[arg-type]
    return MetadataRecord.from_detections(
        full.frame,
        full.detections,
        counts=full.counts,
        density=None,
        timings=full.timings,
        overlays=full.overlays,
        missing=full.missing,
        counts_age_ms=full.counts_age_ms,
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
