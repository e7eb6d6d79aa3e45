"""Fusion strategies: what is published, and when, from the frames and the branch results.

Three strategies, chosen by name from :data:`STRATEGIES` and switchable at run time through
:class:`Fusion`:

- ``STRICT_SYNC`` (:class:`StrictSync`): frame N is published once every branch *scheduled* for N
  has delivered its result for N, or ``strict_sync_timeout_ms`` after the frame (or its first
  result) arrived, then with ``partial=True`` and the missing branches in ``late_branches``.
  Frames are published in frame order.
- ``ASYNC_OVERLAY`` (:class:`AsyncOverlay`): every decoded frame is published at once (from
  ``on_frame``) with each branch's newest result, whatever frame it was computed on; ``overlays``
  give, per branch, that frame and its age.
- ``RAW_STREAM_WITH_METADATA`` (:class:`RawStreamWithMetadata`): every decoded frame is published
  at once without branch data (meta and, when given, the image); separately a
  :class:`MetadataRecord` per frame is published once the frame is finalized, keyed by
  ``(stream_id, frame_index, pts)`` so a consumer can join it to its frame.

Every strategy returns ``list[Published]`` where ``Published = FusedResult | MetadataRecord``: a
:class:`~pipeline.types.FusedResult` is a frame publication (exactly one per decoded frame), a
:class:`MetadataRecord` is the branch data of one frame (at most one per frame; exactly one for
every frame decoded under RAW_STREAM_WITH_METADATA).

The shared bookkeeping (:class:`FusionState`)
-------------------------------------------
Each frame passes through one ledger that all strategies share and hand to each other on a switch.
A frame is *finalized* in frame order, when every branch scheduled for it has delivered (or its
timeout passed). Finalizing frame N builds its **result set** S(N): for a branch scheduled for N,
its result for N (missing if late); for a branch not scheduled for N (it runs every n-th frame, or
its queue was full and the frame was dropped for it), its newest result for a frame <= N. Then
``combine(S(N), meta_N)`` gives detections, density map and counts, once per frame, for every
strategy. Results whose ``error`` is set count as delivered but are left out of ``combine``.

What "the same frames give the same counts" means
-------------------------------------------------
When every result arrives before its timeout, S(N) depends only on which branches were scheduled
for which frames and on the branch results, never on arrival order or strategy, so

- STRICT_SYNC publishes, for frame N, ``counts = combine(S(N), meta_N)`` with
  ``counts_frame_index == N``;
- RAW_STREAM_WITH_METADATA's metadata record for frame N carries the same counts;
- ASYNC_OVERLAY publishes frame N with the counts of the latest finalized frame K <= N (its
  "latest complete set"), ``counts_frame_index == K``, equal to STRICT_SYNC's counts for K; its
  detections and density map are drawn from each branch's newest result instead (fresher, but
  not a set any one frame had), so ``len(detections)`` may differ from ``counts.detection``.
  It never waits, so its results are never ``partial`` (a timed-out frame shows in
  ``FusionState.partial_frames``, and in the counts it gives).

A timed-out frame is finalized without its late branches (counts of the partial set), and a late
result still updates the newest result that later frames use.

Timings (milliseconds, keys of ``FusedResult.timings`` / ``MetadataRecord.timings``)
-----------------------------------------------------------------------------------
- The frame's own timings passed to ``on_frame`` (the orchestrator's ``decode_ms``,
  ``queue_depth_<branch>``).
- For each branch result computed on this frame: every key ``k`` of ``BranchResult.timings`` as
  ``<branch>.<k>`` (``yolo_tiles.preprocess_ms``), and the plain ``k`` as the **sum** over those
  branches (the work spent on the frame; ``inference_model_<model>_ms`` is summed too when two
  branches share a model). Under ASYNC_OVERLAY a result's timings go with the first frame published
  after it arrived.
- ``fusion_wait_ms``: publish time minus the arrival of the frame's first branch result (the frame
  itself when none arrived); 0 for frames published at once. ``wait_for_<branch>_ms``: when each
  scheduled branch's result arrived after that start (a late branch: the whole wait); the largest
  names the branch that made the frame wait (:func:`waited_on`).
- ``overlay_lag_<branch>_ms`` (same as ``OverlayInfo.lag_ms``) and ``overlay_lag_ms``, the largest.
- ``end_to_end_ms``: publish time minus ``decode_ts`` of the published frame (for a metadata
  record: the metadata delay).

Strategies are not thread-safe; :class:`Fusion` serialises calls with a lock. Times come from the
injected ``clock`` (``time.perf_counter``, the clock of ``FrameMeta.decode_ts``), so tests can drive
them by hand.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from config.schema import FusionConfig, FusionStrategyName
from pipeline.types import (
    BranchResult,
    CountResult,
    DensityMap,
    Detections,
    FrameMeta,
    FusedResult,
    OverlayInfo,
)

log = logging.getLogger("people_counter.fusion")

CombineFn = Callable[[Mapping[str, BranchResult], FrameMeta], tuple[Detections, DensityMap | None, CountResult]]
"""``combine(results, frame) -> (detections, density, counts)``: the counting of one result set.

``results`` maps branch name to the result used (possibly computed on an earlier frame; see the
module docs); ``frame`` is the frame being finalized. The app builds it on ``merge_detections`` and
``hybrid_count``; fusion itself knows no model.
"""

Clock = Callable[[], float]

NO_COUNTS = CountResult(detection=0, density=None, fused=0.0, policy="none")
"""``counts`` of a publication that carries no count (its ``counts_frame_index`` is None)."""


# --------------------------------------------------------------------------------------------
# Compact masks and the metadata record
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MaskRLE:
    """Run-length encoding of a 2-D boolean mask, row-major (C order).

    ``counts``: (K,) uint32 run lengths, alternating False, True, False, ... and starting with a
    run of False (0 when the first pixel is True). ``counts.sum() == shape[0] * shape[1]``.
    """

    shape: tuple[int, int]
    counts: NDArray[np.uint32]

    def __post_init__(self) -> None:
        if self.counts.ndim != 1:
            raise ValueError(f"MaskRLE.counts: expected shape (K,), got {tuple(self.counts.shape)}")
        total = int(self.counts.sum(dtype=np.int64))
        if total != self.shape[0] * self.shape[1]:
            raise ValueError(f"MaskRLE: runs cover {total} pixels, expected {self.shape[0]}x{self.shape[1]}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: ``{"shape": [h, w], "counts": [...]}``."""
        return {"shape": list(self.shape), "counts": self.counts.tolist()}


def encode_mask_rle(mask: NDArray[np.bool_]) -> MaskRLE:
    """Encode a 2-D boolean mask (any truthy dtype) as :class:`MaskRLE`."""
    m = np.asarray(mask).astype(bool, copy=False)
    if m.ndim != 2:
        raise ValueError(f"encode_mask_rle: expected a 2-D mask (H, W), got shape {m.shape}")
    shape = (int(m.shape[0]), int(m.shape[1]))
    flat = m.ravel()
    if flat.size == 0:
        return MaskRLE(shape, np.zeros(0, np.uint32))
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    runs = np.diff(np.concatenate(([0], change, [flat.size])))
    if flat[0]:
        runs = np.concatenate(([0], runs))
    return MaskRLE(shape, runs.astype(np.uint32))


def decode_mask_rle(rle: MaskRLE) -> NDArray[np.bool_]:
    """Decode :class:`MaskRLE` back to the (H, W) bool mask it was made from."""
    values = np.arange(len(rle.counts)) % 2 == 1
    return np.repeat(values, rle.counts.astype(np.int64)).reshape(rle.shape)


@dataclass(frozen=True, slots=True)
class DensitySummary:
    """The density part of a metadata record: the map's integral and geometry, not its cells.

    ``frame_index`` is the frame the map was computed on (it may be older than the record's frame
    when density runs every n-th frame). Per-region counts are in ``CountResult.region_counts``.
    """

    count: float
    shape: tuple[int, int]
    stride: int
    frame_index: int

    def to_dict(self) -> dict[str, Any]:
        return {"count": self.count, "shape": list(self.shape), "stride": self.stride, "frame_index": self.frame_index}


@dataclass(frozen=True, slots=True)
class MetadataRecord:
    """The branch data of one frame, published apart from the frame (RAW_STREAM_WITH_METADATA).

    Joins its frame publication on ``(stream_id, frame_index, pts)``. Detections are in frame
    pixels (``xyxy`` (N, 4) float32, ``score`` (N,) float32, ``class_id`` / ``source`` (N,)
    int32); masks, when the model has them, are :class:`MaskRLE` encodings of the masks of
    :class:`~pipeline.types.Detections` (mask i covers ``mask_xyxy[i]``). All host data.
    """

    stream_id: str
    frame_index: int
    pts: float
    counts: CountResult
    xyxy: NDArray[np.float32]
    score: NDArray[np.float32]
    class_id: NDArray[np.int32]
    source: NDArray[np.int32]
    mask_xyxy: NDArray[np.int32] | None
    masks_rle: tuple[MaskRLE, ...] | None
    density: DensitySummary | None
    timings: Mapping[str, float]
    overlays: tuple[OverlayInfo, ...] = ()
    partial: bool = False
    late_branches: tuple[str, ...] = ()

    @classmethod
    def from_detections(cls, frame: FrameMeta, dets: Detections, **fields: Any) -> MetadataRecord:
        """Build a record for ``frame``, encoding the masks of ``dets``."""
        return cls(
            stream_id=frame.stream_id,
            frame_index=frame.frame_index,
            pts=frame.pts,
            xyxy=dets.xyxy,
            score=dets.score,
            class_id=dets.class_id,
            source=dets.source,
            mask_xyxy=dets.mask_xyxy,
            masks_rle=None if dets.masks is None else tuple(encode_mask_rle(m) for m in dets.masks),
            **fields,
        )

    def detections(self) -> Detections:
        """The detections, masks decoded."""
        masks = None if self.masks_rle is None else tuple(decode_mask_rle(r) for r in self.masks_rle)
        return Detections(self.xyxy, self.score, self.class_id, self.source, masks, self.mask_xyxy)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (lists and numbers), for a metadata stream or a file."""
        c = self.counts
        return {
            "stream_id": self.stream_id,
            "frame_index": self.frame_index,
            "pts": self.pts,
            "counts": {
                "detection": c.detection,
                "density": c.density,
                "fused": c.fused,
                "policy": c.policy,
                "region_counts": c.region_counts.tolist(),
                "region_source": c.region_source.tolist(),
                "zones": dict(c.zones),
            },
            "detections": {
                "xyxy": self.xyxy.tolist(),
                "score": self.score.tolist(),
                "class_id": self.class_id.tolist(),
                "source": self.source.tolist(),
                "mask_xyxy": None if self.mask_xyxy is None else self.mask_xyxy.tolist(),
                "masks_rle": None if self.masks_rle is None else [r.to_dict() for r in self.masks_rle],
            },
            "density": None if self.density is None else self.density.to_dict(),
            "timings": dict(self.timings),
            "overlays": [{"branch": o.branch, "frame_index": o.frame_index, "lag_ms": o.lag_ms} for o in self.overlays],
            "partial": self.partial,
            "late_branches": list(self.late_branches),
        }


Published = FusedResult | MetadataRecord
"""What a strategy returns: a frame publication or a metadata record (see the module docs)."""


def waited_on(result: FusedResult | MetadataRecord) -> str | None:
    """The branch that made a finalized frame wait longest (largest ``wait_for_<branch>_ms``)."""
    waits = {k[len("wait_for_") : -len("_ms")]: v for k, v in result.timings.items() if k.startswith("wait_for_")}
    return max(waits, key=lambda b: waits[b]) if waits else None


# --------------------------------------------------------------------------------------------
# The shared ledger
# --------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Pending:
    """A frame that has arrived and is not finalized yet."""

    meta: FrameMeta
    scheduled: frozenset[str]
    arrived_ts: float
    deadline: float
    image: NDArray[np.uint8] | None
    frame_timings: dict[str, float]
    owes_frame: bool
    """Its frame publication is still owed (STRICT_SYNC publishes at finalization)."""
    owes_metadata: bool
    """Its metadata record is still owed (frames published raw)."""
    result_ts: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _Finalized:
    """A finalized frame: its result set, what ``combine`` made of it, and its timings."""

    pending: _Pending
    results: dict[str, BranchResult]
    detections: Detections
    density: DensityMap | None
    counts: CountResult
    overlays: tuple[OverlayInfo, ...]
    timings: dict[str, float]
    partial: bool
    late: tuple[str, ...]
    tile_rects: NDArray[np.float32] | None


def _branch_timings(results: Iterable[BranchResult]) -> dict[str, float]:
    """``<branch>.<k>`` per result and the plain ``k`` summed over them (see the module docs)."""
    out: dict[str, float] = {}
    for r in results:
        for k, v in r.timings.items():
            out[f"{r.branch}.{k}"] = float(v)
            out[k] = out.get(k, 0.0) + float(v)
    return out


def _overlays(results: Mapping[str, BranchResult], now: float) -> tuple[OverlayInfo, ...]:
    return tuple(
        OverlayInfo(b, r.frame.frame_index, (now - r.frame.decode_ts) * 1000.0) for b, r in sorted(results.items())
    )


def _lag_timings(overlays: tuple[OverlayInfo, ...]) -> dict[str, float]:
    out = {f"overlay_lag_{o.branch}_ms": o.lag_ms for o in overlays}
    if overlays:
        out["overlay_lag_ms"] = max(o.lag_ms for o in overlays)
    return out


def _tile_rects(results: Mapping[str, BranchResult]) -> NDArray[np.float32] | None:
    return next((r.tile_rects for _, r in sorted(results.items()) if r.tile_rects is not None), None)


class FusionState:
    """Frames not yet finalized and the branch results they may still need.

    One state lives through a run: a live switch hands it from the old strategy to the new one,
    which is how no frame is lost or published twice. Frames must arrive in increasing
    ``frame_index``; results may arrive before their frame (they are kept until it comes).
    """

    def __init__(self, combine: CombineFn, timeout_ms: float) -> None:
        self._combine = combine
        self._timeout_s = timeout_ms / 1000.0
        self.pending: dict[int, _Pending] = {}
        """Frame index -> pending frame, in frame order."""
        self._results: dict[str, dict[int, tuple[BranchResult, float]]] = {}
        """Branch -> frame index -> (result, arrival time), for frames not finalized yet."""
        self._carry: dict[str, BranchResult] = {}
        """Branch -> its newest result for a finalized frame (used by frames it skips)."""
        self.latest: dict[str, tuple[BranchResult, float]] = {}
        """Branch -> (its newest error-free result, arrival time), for overlays."""
        self.last_finalized: _Finalized | None = None
        self.last_frame_index = -1
        self.finalized_upto = -1
        self.late_results = 0
        """Results that arrived after their frame was finalized (timed out)."""
        self.finalized_frames = 0
        self.partial_frames = 0
        """Frames finalized without a scheduled branch's result (timed out)."""

    def add_frame(
        self,
        meta: FrameMeta,
        scheduled: Iterable[str],
        image: NDArray[np.uint8] | None,
        frame_timings: Mapping[str, float] | None,
        now: float,
        *,
        owes_frame: bool,
        owes_metadata: bool,
    ) -> _Pending:
        """Register a decoded frame and the branches it was submitted to."""
        idx = meta.frame_index
        if idx <= self.last_frame_index:
            raise ValueError(
                f"fusion: frame {idx} arrived after frame {self.last_frame_index}; frames must arrive in order, once"
            )
        self.last_frame_index = idx
        p = _Pending(
            meta=meta,
            scheduled=frozenset(scheduled),
            arrived_ts=now,
            deadline=now + self._timeout_s,
            image=image,
            frame_timings=dict(frame_timings or {}),
            owes_frame=owes_frame,
            owes_metadata=owes_metadata,
        )
        for b in p.scheduled:
            early = self._results.get(b, {}).get(idx)
            if early is not None:
                p.result_ts[b] = early[1]
        self.pending[idx] = p
        return p

    def add_result(self, result: BranchResult, now: float) -> None:
        """Record a branch result (possibly early, possibly late)."""
        b, idx = result.branch, result.frame.frame_index
        newest = self.latest.get(b)
        if result.error is None and (newest is None or newest[0].frame.frame_index < idx):
            self.latest[b] = (result, now)
        if idx <= self.finalized_upto:
            self.late_results += 1
            carried = self._carry.get(b)
            if carried is None or carried.frame.frame_index < idx:
                self._carry[b] = result
            log.debug("late result of %s for finalized frame %d", b, idx)
            return
        self._results.setdefault(b, {})[idx] = (result, now)
        p = self.pending.get(idx)
        if p is not None and b in p.scheduled:
            p.result_ts[b] = now

    def advance(self, now: float, *, force: bool = False) -> list[_Finalized]:
        """Finalize, in order, the head frames that are complete or past their deadline (all if ``force``)."""
        out: list[_Finalized] = []
        while self.pending:
            head = next(iter(self.pending.values()))
            complete = head.scheduled <= head.result_ts.keys()
            if not (complete or force or now >= head.deadline):
                break
            out.append(self._finalize(head, now))
        return out

    def _best(self, branch: str, frame_index: int) -> BranchResult | None:
        """The branch's newest result for a frame <= ``frame_index`` (kept results, then carry)."""
        kept = [i for i in self._results.get(branch, {}) if i <= frame_index]
        if kept:
            return self._results[branch][max(kept)][0]
        return self._carry.get(branch)

    def _finalize(self, p: _Pending, now: float) -> _Finalized:
        idx = p.meta.frame_index
        used: dict[str, BranchResult] = {}
        late: list[str] = []
        for b in sorted(set(self._results) | set(self._carry) | p.scheduled):
            if b in p.scheduled:
                got = self._results.get(b, {}).get(idx)
                if got is None:
                    late.append(b)
                    continue
                r: BranchResult | None = got[0]
            else:
                r = self._best(b, idx)
            if r is not None:
                used[b] = r
        ok = {b: r for b, r in used.items() if r.error is None}
        dets, density, counts = self._combine(ok, p.meta)
        overlays = _overlays(ok, now)

        start = min(p.result_ts.values()) if p.result_ts else p.arrived_ts
        timings = dict(p.frame_timings)
        timings.update(_branch_timings(r for r in used.values() if r.frame.frame_index == idx))
        timings["fusion_wait_ms"] = (now - start) * 1000.0
        for b in sorted(p.scheduled):
            arrived = p.result_ts.get(b, now)
            timings[f"wait_for_{b}_ms"] = (arrived - start) * 1000.0
        timings.update(_lag_timings(overlays))
        timings["end_to_end_ms"] = (now - p.meta.decode_ts) * 1000.0

        fin = _Finalized(
            pending=p,
            results=ok,
            detections=dets,
            density=density,
            counts=counts,
            overlays=overlays,
            timings=timings,
            partial=bool(late),
            late=tuple(late),
            tile_rects=_tile_rects(ok),
        )
        # Bookkeeping: the frame leaves; what later frames may need stays in the carry.
        del self.pending[idx]
        self.finalized_upto = idx
        self.last_finalized = fin
        self.finalized_frames += 1
        self.partial_frames += bool(late)
        for b, r in used.items():
            self._carry[b] = r
        for b, kept in self._results.items():
            for i in [i for i in kept if i <= idx]:
                r_old = kept.pop(i)[0]
                carried = self._carry.get(b)
                if carried is None or carried.frame.frame_index < i:
                    self._carry[b] = r_old
        if late:
            log.debug("frame %d finalized partial; late: %s", idx, ", ".join(late))
        return fin


# --------------------------------------------------------------------------------------------
# What a finalized frame publishes
# --------------------------------------------------------------------------------------------


def _full_result(fin: _Finalized, strategy: str) -> FusedResult:
    p = fin.pending
    return FusedResult(
        frame=p.meta,
        strategy=strategy,
        detections=fin.detections,
        density=fin.density,
        counts=fin.counts,
        timings=fin.timings,
        overlays=fin.overlays,
        partial=fin.partial,
        late_branches=fin.late,
        frame_image=p.image,
        tile_rects=fin.tile_rects,
        counts_frame_index=p.meta.frame_index,
    )


def _metadata_record(fin: _Finalized) -> MetadataRecord:
    d = fin.density
    summary = None
    if d is not None:
        sources = [r.frame.frame_index for _, r in sorted(fin.results.items()) if r.density is not None]
        src = sources[0] if sources else fin.pending.meta.frame_index
        summary = DensitySummary(d.count, (int(d.density.shape[0]), int(d.density.shape[1])), d.stride, src)
    return MetadataRecord.from_detections(
        fin.pending.meta,
        fin.detections,
        counts=fin.counts,
        density=summary,
        timings=fin.timings,
        overlays=fin.overlays,
        partial=fin.partial,
        late_branches=fin.late,
    )


def _owed(finals: Iterable[_Finalized], strategy: str) -> list[Published]:
    """Publish what each finalized frame still owes: its frame (STRICT_SYNC) or its metadata."""
    out: list[Published] = []
    for fin in finals:
        if fin.pending.owes_frame:
            out.append(_full_result(fin, strategy))
        if fin.pending.owes_metadata:
            out.append(_metadata_record(fin))
    return out


def _raw_result(p: _Pending, now: float) -> FusedResult:
    timings = dict(p.frame_timings)
    timings["fusion_wait_ms"] = 0.0
    timings["end_to_end_ms"] = (now - p.meta.decode_ts) * 1000.0
    return FusedResult(
        frame=p.meta,
        strategy=FusionStrategyName.RAW_STREAM_WITH_METADATA.value,
        detections=Detections.empty(),
        density=None,
        counts=NO_COUNTS,
        timings=timings,
        frame_image=p.image,
        counts_frame_index=None,
    )


# --------------------------------------------------------------------------------------------
# The strategies
# --------------------------------------------------------------------------------------------


class FusionStrategy(Protocol):
    """One fusion strategy. Every call returns what is published now, in order."""

    name: str
    state: FusionState

    def on_frame(
        self,
        meta: FrameMeta,
        scheduled: tuple[str, ...],
        image: NDArray[np.uint8] | None = None,
        frame_timings: Mapping[str, float] | None = None,
    ) -> list[Published]: ...

    def push(self, result: BranchResult) -> list[Published]: ...

    def poll(self, now: float) -> list[Published]: ...

    def flush(self, now: float) -> list[Published]: ...

    def take_over(self, now: float) -> list[Published]: ...


class StrictSync:
    """Publish frame N with every scheduled branch's result for N, in frame order (or partial after the timeout).

    ``scheduled`` in ``on_frame`` names the branches the frame was actually submitted to: a branch
    that was skipped (rate) or dropped (full queue) is not waited for.
    """

    name = FusionStrategyName.STRICT_SYNC.value

    def __init__(
        self, combine: CombineFn, cfg: FusionConfig, clock: Clock = time.perf_counter, state: FusionState | None = None
    ) -> None:
        self._clock = clock
        self.state = state if state is not None else FusionState(combine, cfg.strict_sync_timeout_ms)

    def on_frame(
        self,
        meta: FrameMeta,
        scheduled: tuple[str, ...],
        image: NDArray[np.uint8] | None = None,
        frame_timings: Mapping[str, float] | None = None,
    ) -> list[Published]:
        """Register a decoded frame; publishes it only if nothing is scheduled for it (and the frames before are out)."""
        now = self._clock()
        self.state.add_frame(meta, scheduled, image, frame_timings, now, owes_frame=True, owes_metadata=False)
        return _owed(self.state.advance(now), self.name)

    def push(self, result: BranchResult) -> list[Published]:
        """Record a branch result; publishes the frames it completes."""
        now = self._clock()
        self.state.add_result(result, now)
        return _owed(self.state.advance(now), self.name)

    def poll(self, now: float) -> list[Published]:
        """Publish frames whose timeout passed (partial) and the complete frames behind them."""
        return _owed(self.state.advance(now), self.name)

    def flush(self, now: float) -> list[Published]:
        """Publish every pending frame now (partial where results are missing); at the end of a run."""
        return _owed(self.state.advance(now, force=True), self.name)

    def take_over(self, now: float) -> list[Published]:
        """Adopt a state from another strategy: frames it already published stay published."""
        del now
        return []


class AsyncOverlay:
    """Publish every frame at once with each branch's newest result; counts of the latest finalized frame."""

    name = FusionStrategyName.ASYNC_OVERLAY.value

    def __init__(
        self, combine: CombineFn, cfg: FusionConfig, clock: Clock = time.perf_counter, state: FusionState | None = None
    ) -> None:
        self._combine = combine
        self._clock = clock
        self.state = state if state is not None else FusionState(combine, cfg.strict_sync_timeout_ms)
        # Cache of combine() on the newest results, keyed by (branch, frame) of each: recomputed
        # only when a newer result arrived, not per published frame.
        self._overlay_key: tuple[tuple[str, int], ...] | None = None
        self._overlay: tuple[Detections, DensityMap | None] = (Detections.empty(), None)
        self._reported = {b: r.frame.frame_index for b, (r, _) in self.state.latest.items()}

    def on_frame(
        self,
        meta: FrameMeta,
        scheduled: tuple[str, ...],
        image: NDArray[np.uint8] | None = None,
        frame_timings: Mapping[str, float] | None = None,
    ) -> list[Published]:
        """Publish the frame now, with the newest overlays."""
        now = self._clock()
        p = self.state.add_frame(meta, scheduled, image, frame_timings, now, owes_frame=False, owes_metadata=False)
        out = _owed(self.state.advance(now), self.name)
        out.append(self._publish(p, now))
        return out

    def push(self, result: BranchResult) -> list[Published]:
        """Record a branch result (it shows on the next frame); publishes only owed metadata."""
        now = self._clock()
        self.state.add_result(result, now)
        return _owed(self.state.advance(now), self.name)

    def poll(self, now: float) -> list[Published]:
        """Finalize timed-out frames (they update the counts); publishes only owed metadata."""
        return _owed(self.state.advance(now), self.name)

    def flush(self, now: float) -> list[Published]:
        """Finalize every pending frame; publishes only owed metadata."""
        return _owed(self.state.advance(now, force=True), self.name)

    def take_over(self, now: float) -> list[Published]:
        """Publish at once, in order, the pending frames whose publication is still owed."""
        out: list[Published] = []
        for p in self.state.pending.values():
            if p.owes_frame:
                p.owes_frame = False
                out.append(self._publish(p, now))
        return out

    def _publish(self, p: _Pending, now: float) -> FusedResult:
        latest = {b: r for b, (r, _) in self.state.latest.items()}
        key = tuple(sorted((b, r.frame.frame_index) for b, r in latest.items()))
        if key != self._overlay_key:
            dets, density, _ = self._combine(latest, p.meta)
            self._overlay, self._overlay_key = (dets, density), key
        overlays = _overlays(latest, now)
        fresh = [r for b, r in latest.items() if self._reported.get(b) != r.frame.frame_index]
        for r in fresh:
            self._reported[r.branch] = r.frame.frame_index
        timings = dict(p.frame_timings)
        timings.update(_branch_timings(fresh))
        timings["fusion_wait_ms"] = 0.0
        timings.update(_lag_timings(overlays))
        timings["end_to_end_ms"] = (now - p.meta.decode_ts) * 1000.0
        fin = self.state.last_finalized
        return FusedResult(
            frame=p.meta,
            strategy=self.name,
            detections=self._overlay[0],
            density=self._overlay[1],
            counts=fin.counts if fin is not None else NO_COUNTS,
            timings=timings,
            overlays=overlays,
            frame_image=p.image,
            tile_rects=_tile_rects(latest),
            counts_frame_index=fin.pending.meta.frame_index if fin is not None else None,
        )


class RawStreamWithMetadata:
    """Publish every frame at once without branch data, and a :class:`MetadataRecord` per frame when finalized."""

    name = FusionStrategyName.RAW_STREAM_WITH_METADATA.value

    def __init__(
        self, combine: CombineFn, cfg: FusionConfig, clock: Clock = time.perf_counter, state: FusionState | None = None
    ) -> None:
        self._clock = clock
        self.state = state if state is not None else FusionState(combine, cfg.strict_sync_timeout_ms)

    def on_frame(
        self,
        meta: FrameMeta,
        scheduled: tuple[str, ...],
        image: NDArray[np.uint8] | None = None,
        frame_timings: Mapping[str, float] | None = None,
    ) -> list[Published]:
        """Publish the raw frame now; its metadata follows when its results are in."""
        now = self._clock()
        p = self.state.add_frame(meta, scheduled, image, frame_timings, now, owes_frame=False, owes_metadata=True)
        out: list[Published] = [_raw_result(p, now)]
        out.extend(_owed(self.state.advance(now), self.name))
        return out

    def push(self, result: BranchResult) -> list[Published]:
        """Record a branch result; publishes the metadata records it completes."""
        now = self._clock()
        self.state.add_result(result, now)
        return _owed(self.state.advance(now), self.name)

    def poll(self, now: float) -> list[Published]:
        """Publish metadata of timed-out frames (partial) and of the complete frames behind them."""
        return _owed(self.state.advance(now), self.name)

    def flush(self, now: float) -> list[Published]:
        """Publish the metadata of every pending frame now."""
        return _owed(self.state.advance(now, force=True), self.name)

    def take_over(self, now: float) -> list[Published]:
        """Publish owed frames raw at once, in order; their metadata follows."""
        out: list[Published] = []
        for p in self.state.pending.values():
            if p.owes_frame:
                p.owes_frame, p.owes_metadata = False, True
                out.append(_raw_result(p, now))
        return out


StrategyFactory = Callable[[CombineFn, FusionConfig, Clock, FusionState | None], FusionStrategy]

STRATEGIES: dict[str, StrategyFactory] = {
    FusionStrategyName.STRICT_SYNC.value: StrictSync,
    FusionStrategyName.ASYNC_OVERLAY.value: AsyncOverlay,
    FusionStrategyName.RAW_STREAM_WITH_METADATA.value: RawStreamWithMetadata,
}
"""Strategies by name (the values of :class:`~config.schema.FusionStrategyName`)."""


def strategy_name(name: str | FusionStrategyName) -> str:
    """The table key of ``name``; ValueError naming the known strategies when unknown."""
    key = name.value if isinstance(name, FusionStrategyName) else str(name)
    if key not in STRATEGIES:
        raise ValueError(f"unknown fusion strategy {key!r}; known: {', '.join(STRATEGIES)}")
    return key


class Fusion:
    """The current strategy, switchable at run time; every call is serialised by a lock.

    ``switch(name)`` hands the :class:`FusionState` to the new strategy: frames the old one had
    already published are not published again, frames it still owed are published by the new one
    (at once under ASYNC_OVERLAY and RAW_STREAM_WITH_METADATA, at finalization under STRICT_SYNC),
    and metadata owed for raw frames is published whatever the strategy. So every frame passed to
    ``on_frame`` is published exactly once, in frame order, across any sequence of switches.
    """

    def __init__(
        self,
        strategy: str | FusionStrategyName,
        combine: CombineFn,
        cfg: FusionConfig,
        clock: Clock = time.perf_counter,
    ) -> None:
        self._combine = combine
        self._cfg = cfg
        self._clock = clock
        self._lock = threading.Lock()
        self._current: FusionStrategy = STRATEGIES[strategy_name(strategy)](combine, cfg, clock, None)

    @property
    def name(self) -> str:
        """The current strategy's name."""
        return self._current.name

    @property
    def state(self) -> FusionState:
        return self._current.state

    def on_frame(
        self,
        meta: FrameMeta,
        scheduled: tuple[str, ...],
        image: NDArray[np.uint8] | None = None,
        frame_timings: Mapping[str, float] | None = None,
    ) -> list[Published]:
        """A new decoded frame and the branches it was submitted to."""
        with self._lock:
            return self._current.on_frame(meta, scheduled, image, frame_timings)

    def push(self, result: BranchResult) -> list[Published]:
        """A branch result."""
        with self._lock:
            return self._current.push(result)

    def poll(self, now: float) -> list[Published]:
        """Timeouts up to ``now``."""
        with self._lock:
            return self._current.poll(now)

    def flush(self, now: float | None = None) -> list[Published]:
        """Finalize every pending frame (end of a run)."""
        with self._lock:
            return self._current.flush(self._clock() if now is None else now)

    def switch(self, name: str | FusionStrategyName) -> list[Published]:
        """Make ``name`` the current strategy; returns what it publishes on taking over."""
        key = strategy_name(name)
        with self._lock:
            old = self._current
            if key == old.name:
                return []
            new = STRATEGIES[key](self._combine, self._cfg, self._clock, old.state)
            out = new.take_over(self._clock())
            self._current = new
        log.info(
            "fusion strategy %s -> %s after frame %d (%d pending frames handed over)",
            old.name,
            key,
            old.state.last_frame_index,
            len(old.state.pending),
        )
        return out
