"""Fusion: what is published, and when, from the frames and the branch results.

One skeleton (:class:`Fusion`) and three strategies that are only the part that differs, chosen
by name from :data:`STRATEGIES` and switchable at run time:

- ``STRICT_SYNC`` (:class:`StrictSync`): frame N is published once every branch *due* for N has
  delivered its result for N, or ``strict_sync_timeout_ms`` after the frame arrived, then
  partial with the missing branches named. Frames are published in frame order.
- ``ASYNC_OVERLAY`` (:class:`AsyncOverlay`): every decoded frame is published at once with each
  branch's newest result, whatever frame it was computed on; ``overlays`` give, per branch, that
  frame and its age. Its counts are those of the newest finalized frame whose count is known,
  while younger than ``max_count_age_ms``.
- ``RAW_STREAM_WITH_METADATA`` (:class:`RawStreamWithMetadata`): every decoded frame is published
  at once without branch data (``raw=True``; meta and, when given, the image); separately a
  :class:`~pipeline.types.MetadataRecord` per frame once the frame is finalized, keyed by
  ``(stream_id, frame_index, pts)``.

Every call returns ``list[Published]`` where ``Published = FusedResult | MetadataRecord``: exactly
one :class:`~pipeline.types.FusedResult` per decoded frame, and under RAW_STREAM_WITH_METADATA
exactly one metadata record per frame.

The shared ledger (:class:`FusionState`)
-----------------------------------------
Each frame passes through one ledger that all strategies share and hand to each other on a switch.
A frame is *finalized* in frame order, when every branch due for it has delivered (or its timeout
passed). Finalizing frame N builds its **result set** S(N):

- a branch due for N (``frame_index % every_n_frames == 0``) contributes its result for N; if
  there is none, the branch is *missing* for N: ``late`` (timed out), ``dropped (queue full)`` (the
  orchestrator could not hand it the frame), or ``failed: <error>`` (its result has ``error``);
- a branch not due for N (it runs every n-th frame) contributes its result for the latest frame
  that was due for it, K = N - N % n; if that one is missing too, the branch is missing for N
  (``stale: no result for frame K``), or ``warming up`` before its first result.

Older results never stand in for a missing one. ``combine(S(N), meta_N, missing)`` gives
detections, density map and counts, once per frame, for every strategy; the counter decides which
missing branches make its count unknown (see the count contract in
:class:`~pipeline.types.FusedResult`).

So, with every result in time, the same frames give the same counts under any strategy and any
arrival order: STRICT_SYNC publishes, for frame N, ``counts = combine(S(N), ...)``;
RAW_STREAM_WITH_METADATA's record for N carries the same counts; ASYNC_OVERLAY publishes frame N
with the counts of the newest finalized frame K <= N whose count is known (``counts_frame_index
== K``), equal to STRICT_SYNC's counts for K, or unknown when they are older than
``max_count_age_ms``; its
detections and density map are each branch's newest instead (fresher, not a set any one frame
had). A late result still updates the newest result that overlays use.

Timings (:class:`~pipeline.types.StageTimings`)
-----------------------------------------------
Each publication carries the frame's own figures (the orchestrator's ``decode_ms`` and queue
depths, ``fusion_wait_ms``, ``wait_for_ms`` per due branch, ``overlay_lag_ms`` per branch,
``end_to_end_ms``) and the branch work not reported before, each :class:`BranchTimings` naming the
frame it was done on: a frame's results are reported when it is finalized, a late result when it
arrives, so every (branch, frame) cost is reported exactly once and credited to its own frame. Raw
frame publications report no work (their metadata records do). Work still unreported when a run
is flushed (under ASYNC_OVERLAY, that of the frames after the last publication) comes out of
``flush`` as one :class:`~pipeline.types.WorkRecord`. The counting of each finalized frame
(``combine``'s own time, ``StageTimings.count_ms``) is reported the same way, on its frame. When the counter tracks people, every
finalized frame also publishes one :class:`~pipeline.types.TrackingRecord` (its line crossings
and zone exits, exactly once per run).

- ``fusion_wait_ms``: publish time minus the arrival of the frame's first branch result (the frame
  itself when none arrived); 0 for frames published at once. ``wait_for_ms[b]``: when each due
  branch's result arrived after that start (a missing one: the whole wait).
- ``overlay_lag_ms[b]`` (same as ``OverlayInfo.lag_ms``): publish time minus ``decode_ts`` of the
  frame the branch's part came from.
- ``end_to_end_ms``: publish time minus ``decode_ts`` of the published frame (for a metadata
  record: the metadata delay).

:class:`Fusion` is serialised by a lock. Times come from the injected ``clock``
(``time.perf_counter``, the clock of ``FrameMeta.decode_ts``), so tests drive them by hand.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from config.schema import FusionConfig, FusionStrategyName
from pipeline.protocols import CombineFn, MergeFn
from pipeline.types import (
    BranchResult,
    BranchTimings,
    CountResult,
    DensityMap,
    DensitySummary,
    Detections,
    FrameMeta,
    FrameTimings,
    FusedResult,
    MetadataRecord,
    OverlayInfo,
    StageTimings,
    TrackingRecord,
    WorkRecord,
    missing_reason,
)

log = logging.getLogger("people_counter.fusion")

Clock = Callable[[], float]

Published = FusedResult | MetadataRecord | WorkRecord | TrackingRecord
"""What fusion returns: a frame publication, a metadata record, or (at the end of a run) the branch
work no publication reported (see the module docs)."""

DROPPED = "dropped (queue full)"
LATE = "late"
WARMING_UP = "warming up"


# --------------------------------------------------------------------------------------------
# The shared ledger
# --------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Pending:
    """A frame that has arrived and is not finalized yet."""

    meta: FrameMeta
    scheduled: frozenset[str]
    """Due branches that took the frame: fusion waits for them."""
    dropped: frozenset[str]
    """Due branches that could not take it (queue full): missing, not waited for."""
    arrived_ts: float
    deadline: float
    image: NDArray[np.uint8] | None
    frame_timings: FrameTimings
    owes_frame: bool
    """Its frame publication is still owed (STRICT_SYNC publishes at finalization)."""
    owes_metadata: bool
    """Its metadata record is still owed (frames published raw)."""
    result_ts: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _Finalized:
    """A finalized frame: its result set, what ``combine`` made of it, and its fusion figures."""

    pending: _Pending
    results: dict[str, BranchResult]
    missing: dict[str, str]
    detections: Detections
    density: DensityMap | None
    counts: CountResult
    overlays: tuple[OverlayInfo, ...]
    fusion_wait_ms: float
    wait_for_ms: dict[str, float]
    finalized_ts: float
    tile_rects: NDArray[np.float32] | None
    work: tuple[BranchTimings, ...]
    """The work of this frame's results (reported by its publication, or by the next one)."""
    count_ms: float | None = None
    """What ``combine`` took for this frame (reported with its work); None once reported."""


def _work(r: BranchResult) -> BranchTimings:
    return BranchTimings(r.branch, r.frame.frame_index, dict(r.timings), r.done_ts)


def _overlays(results: Mapping[str, BranchResult], now: float) -> tuple[OverlayInfo, ...]:
    return tuple(
        OverlayInfo(b, r.frame.frame_index, (now - r.frame.decode_ts) * 1000.0) for b, r in sorted(results.items())
    )


def _tile_rects(results: Mapping[str, BranchResult]) -> NDArray[np.float32] | None:
    return next((r.tile_rects for _, r in sorted(results.items()) if r.tile_rects is not None), None)


class FusionState:
    """Frames not yet finalized, the branch results they may still need, and unreported work.

    One state lives through a run: a live switch hands it from the old strategy to the new one,
    which is how no frame is lost or published twice. Frames must arrive in increasing
    ``frame_index``; results may arrive before their frame (they are kept until it comes).
    ``rates`` maps every branch to its ``every_n_frames``. A branch not in it is learnt from the
    frames and results that name it, and is due for exactly the frames submitted to it (or dropped
    for it); on the others it contributes its result for the latest frame it was due for.
    """

    def __init__(self, combine: CombineFn, timeout_ms: float, rates: Mapping[str, int] | None = None) -> None:
        self._combine = combine
        self._timeout_s = timeout_ms / 1000.0
        self.rates: dict[str, int] = dict(rates or {})
        self._declared = frozenset(self.rates)
        self.pending: dict[int, _Pending] = {}
        """Frame index -> pending frame, in frame order."""
        self._results: dict[str, dict[int, tuple[BranchResult, float]]] = {}
        """Branch -> frame index -> (result, arrival time), for frames not finalized yet."""
        self._due_result: dict[str, BranchResult | None] = {}
        """Branch -> its result for the latest finalized frame it was due for (None: missing there)."""
        self._due_frame: dict[str, int] = {}
        """Branch -> the latest finalized frame it was due for."""
        self.latest: dict[str, tuple[BranchResult, float]] = {}
        """Branch -> (its newest error-free result, arrival time), for overlays."""
        self.unreported: list[BranchTimings] = []
        self.unreported_count_ms: dict[int, float] = {}  # frame -> its counting's ms, not reported yet
        """Branch work not yet attached to a publication (see the module docs)."""
        self.last_finalized: _Finalized | None = None
        self.last_counted: _Finalized | None = None
        """The newest finalized frame whose count is known (ASYNC_OVERLAY shows its counts)."""
        self.last_frame_index = -1
        self.finalized_upto = -1
        self.late_results = 0
        """Results that arrived after their frame was finalized (timed out)."""
        self.finalized_frames = 0
        self.partial_frames = 0
        """Frames finalized with a missing branch."""

    def add_frame(
        self,
        meta: FrameMeta,
        scheduled: Iterable[str],
        image: NDArray[np.uint8] | None,
        frame_timings: FrameTimings | None,
        now: float,
        *,
        dropped: Iterable[str] = (),
        owes_frame: bool,
        owes_metadata: bool,
    ) -> _Pending:
        """Register a decoded frame, the due branches it was submitted to and those that dropped it."""
        idx = meta.frame_index
        if idx <= self.last_frame_index:
            raise ValueError(
                f"fusion: frame {idx} arrived after frame {self.last_frame_index}; frames must arrive in order, once"
            )
        self.last_frame_index = idx
        p = _Pending(
            meta=meta,
            scheduled=frozenset(scheduled),
            dropped=frozenset(dropped),
            arrived_ts=now,
            deadline=now + self._timeout_s,
            image=image,
            frame_timings=frame_timings or FrameTimings(),
            owes_frame=owes_frame,
            owes_metadata=owes_metadata,
        )
        for b in p.scheduled | p.dropped:
            self.rates.setdefault(b, 1)
        for b in p.scheduled:
            early = self._results.get(b, {}).get(idx)
            if early is not None:
                p.result_ts[b] = early[1]
        self.pending[idx] = p
        return p

    def add_result(self, result: BranchResult, now: float) -> None:
        """Record a branch result (possibly early, possibly late)."""
        b, idx = result.branch, result.frame.frame_index
        self.rates.setdefault(b, 1)
        newest = self.latest.get(b)
        if result.error is None and (newest is None or newest[0].frame.frame_index < idx):
            self.latest[b] = (result, now)
        if idx <= self.finalized_upto:
            # Late: its frame went out without it. Its work is still reported (on its own frame),
            # and it becomes the branch's due result when it is for the latest due frame, so the
            # frames that follow (not due for the branch) can use it.
            self.late_results += 1
            self.unreported.append(_work(result))
            if self._due_frame.get(b) == idx and result.error is None:
                self._due_result[b] = result
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

    def take_unreported(self) -> tuple[BranchTimings, ...]:
        out, self.unreported = tuple(self.unreported), []
        return out

    def take_unreported_count_ms(self) -> dict[int, float]:
        out, self.unreported_count_ms = self.unreported_count_ms, {}
        return out

    def _is_due(self, b: str, p: _Pending) -> bool:
        if b in self._declared:
            return p.meta.frame_index % self.rates[b] == 0
        return b in p.scheduled or b in p.dropped

    def _set_of(self, p: _Pending) -> tuple[dict[str, BranchResult], dict[str, str]]:
        """The result set of a frame and its missing branches (see the module docs)."""
        idx = p.meta.frame_index
        used: dict[str, BranchResult] = {}
        missing: dict[str, str] = {}
        for b in sorted(self.rates):
            if self._is_due(b, p):
                got = self._results.get(b, {}).get(idx)
                if b in p.dropped:
                    missing[b] = DROPPED
                elif got is None:
                    missing[b] = LATE if b in p.scheduled else "not submitted"
                elif got[0].error is not None:
                    missing[b] = f"failed: {got[0].error}"
                else:
                    used[b] = got[0]
                continue
            due_frame = self._due_frame.get(b)
            if due_frame is None:
                missing[b] = WARMING_UP
                continue
            if b in self._declared and due_frame != idx - idx % self.rates[b]:
                missing[b] = f"stale: no result for frame {idx - idx % self.rates[b]}"
                continue
            r = self._due_result.get(b)
            if r is None:
                missing[b] = f"stale: no result for frame {due_frame}"
            else:
                used[b] = r
        return used, missing

    def _finalize(self, p: _Pending, now: float) -> _Finalized:
        idx = p.meta.frame_index
        used, missing = self._set_of(p)
        t0 = time.perf_counter()  # a cost, like a branch's stage times (not the injected clock)
        try:
            dets, density, counts = self._combine(used, p.meta, missing)
        except Exception as exc:
            exc.frame_index = idx  # type: ignore[attr-defined]  # for the orchestrator's failure report
            raise
        count_ms = (time.perf_counter() - t0) * 1000.0
        start = min(p.result_ts.values()) if p.result_ts else p.arrived_ts
        work: list[BranchTimings] = []
        for kept in self._results.values():
            for i in [i for i in kept if i <= idx]:
                (work if i == idx else self.unreported).append(_work(kept.pop(i)[0]))
        fin = _Finalized(
            pending=p,
            results=used,
            missing=missing,
            detections=dets,
            density=density,
            counts=counts,
            overlays=_overlays(used, now),
            fusion_wait_ms=(now - start) * 1000.0,
            wait_for_ms={b: (p.result_ts.get(b, now) - start) * 1000.0 for b in sorted(p.scheduled)},
            finalized_ts=now,
            tile_rects=_tile_rects(used),
            work=tuple(work),
            count_ms=count_ms,
        )
        # Bookkeeping: the frame leaves; each branch due for it remembers its result for the frames after.
        del self.pending[idx]
        self.finalized_upto = idx
        self.last_finalized = fin
        if counts.known:
            self.last_counted = fin
        self.finalized_frames += 1
        self.partial_frames += bool(missing)
        for b in self.rates:
            if self._is_due(b, p):
                self._due_frame[b] = idx
                self._due_result[b] = used.get(b)  # its own result for this frame, or None (missing)
        if missing:
            log.debug("frame %d finalized with branches missing: %s", idx, missing)
        return fin


# --------------------------------------------------------------------------------------------
# What a finalized frame publishes
# --------------------------------------------------------------------------------------------


def _final_timings(fin: _Finalized, state: FusionState) -> StageTimings:
    p = fin.pending
    return StageTimings(
        frame_index=p.meta.frame_index,
        frame=p.frame_timings,
        branches=fin.work + state.take_unreported(),
        count_ms=_count_ms(fin, state),
        fusion_wait_ms=fin.fusion_wait_ms,
        wait_for_ms=fin.wait_for_ms,
        overlay_lag_ms={o.branch: o.lag_ms for o in fin.overlays},
        end_to_end_ms=(fin.finalized_ts - p.meta.decode_ts) * 1000.0,
    )


def _count_ms(fin: _Finalized | None, state: FusionState) -> dict[int, float]:
    out = state.take_unreported_count_ms()
    if fin is not None and fin.count_ms is not None:
        out[fin.pending.meta.frame_index] = fin.count_ms
    return out


def _full_result(fin: _Finalized, strategy: str, state: FusionState) -> FusedResult:
    p = fin.pending
    return FusedResult(
        frame=p.meta,
        strategy=strategy,
        detections=fin.detections,
        density=fin.density,
        counts=fin.counts,
        timings=_final_timings(fin, state),
        overlays=fin.overlays,
        missing=fin.missing,
        frame_image=p.image,
        tile_rects=fin.tile_rects,
        counts_frame_index=p.meta.frame_index,
        counts_age_ms=(fin.finalized_ts - p.meta.decode_ts) * 1000.0,
    )


def _metadata_record(fin: _Finalized, state: FusionState) -> MetadataRecord:
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
        timings=_final_timings(fin, state),
        overlays=fin.overlays,
        missing=fin.missing,
        counts_age_ms=(fin.finalized_ts - fin.pending.meta.decode_ts) * 1000.0,
    )


def _raw_result(p: _Pending, now: float) -> FusedResult:
    timings = StageTimings(
        frame_index=p.meta.frame_index,
        frame=p.frame_timings,
        fusion_wait_ms=0.0,
        end_to_end_ms=(now - p.meta.decode_ts) * 1000.0,
    )
    return FusedResult(
        frame=p.meta,
        strategy=FusionStrategyName.RAW_STREAM_WITH_METADATA.value,
        detections=Detections.empty(),
        density=None,
        counts=CountResult.unknown("raw frame: counts follow in its metadata record", "none"),
        timings=timings,
        frame_image=p.image,
        raw=True,
    )


# --------------------------------------------------------------------------------------------
# The strategies: only what differs
# --------------------------------------------------------------------------------------------


class FusionStrategy(Protocol):
    """What one strategy decides; :class:`Fusion` does the rest.

    ``owes_frame``: a frame's publication waits for its finalization (else the strategy publishes
    it from ``on_frame``). ``owes_metadata``: each frame owes a metadata record at finalization.
    ``on_frame`` returns what the strategy publishes at once for a new frame; ``take_over`` what
    it publishes at once on becoming current (frames the previous strategy still owed).
    """

    name: str
    owes_frame: bool
    owes_metadata: bool

    def on_frame(self, state: FusionState, p: _Pending, now: float) -> list[Published]: ...

    def take_over(self, state: FusionState, now: float) -> list[Published]: ...


class StrictSync:
    """Publish frame N with its own result set, in frame order, at finalization."""

    name = FusionStrategyName.STRICT_SYNC.value
    owes_frame = True
    owes_metadata = False

    def __init__(self, cfg: FusionConfig, combine: CombineFn, merge: MergeFn | None = None) -> None:
        del cfg, combine, merge

    def on_frame(self, state: FusionState, p: _Pending, now: float) -> list[Published]:
        return []

    def take_over(self, state: FusionState, now: float) -> list[Published]:
        return []  # frames already published stay published; owed metadata still follows


class AsyncOverlay:
    """Publish every frame at once with each branch's newest result; counts of the latest finalized
    frame while they are younger than ``max_count_age_ms``, else unknown (stale)."""

    name = FusionStrategyName.ASYNC_OVERLAY.value
    owes_frame = False
    owes_metadata = False

    def __init__(self, cfg: FusionConfig, combine: CombineFn, merge: MergeFn | None = None) -> None:
        self._combine = combine
        self._merge: MergeFn = merge if merge is not None else (lambda r, f: combine(r, f, {})[:2])
        self._max_age_ms = cfg.max_count_age_ms
        # combine() of the newest results, keyed by (branch, frame) of each: recomputed only when
        # a newer result arrived, not per published frame.
        self._overlay_key: tuple[tuple[str, int], ...] | None = None
        self._overlay: tuple[Detections, DensityMap | None] = (Detections.empty(), None)

    def on_frame(self, state: FusionState, p: _Pending, now: float) -> list[Published]:
        return [self._publish(state, p, now)]

    def take_over(self, state: FusionState, now: float) -> list[Published]:
        out: list[Published] = []
        for p in state.pending.values():
            if p.owes_frame:
                p.owes_frame = False
                out.append(self._publish(state, p, now))
        return out

    def _counts(self, state: FusionState, meta: FrameMeta, now: float) -> tuple[CountResult, int | None, float | None]:
        """The counts of the newest finalized frame whose count is known, while younger than
        ``max_count_age_ms``; else unknown: stale, the newest finalized frame's reason, or warming up."""
        fin = state.last_counted
        if fin is not None:
            k = fin.pending.meta
            age_ms = (now - k.decode_ts) * 1000.0
            if age_ms <= self._max_age_ms:
                return fin.counts, k.frame_index, age_ms
        last = state.last_finalized
        if last is None:  # (not through combine: a counter counts each finalized frame once, in order)
            reason = missing_reason(dict.fromkeys(state.rates, WARMING_UP)) or WARMING_UP
            return CountResult.unknown(reason, "none"), None, None
        k = last.pending.meta
        age_ms = (now - k.decode_ts) * 1000.0
        c = last.counts
        if fin is not None:
            kk = fin.pending.meta
            old_ms = (now - kk.decode_ts) * 1000.0
            reason = f"stale: counts of frame {kk.frame_index} are {old_ms:.0f} ms old (max {self._max_age_ms:.0f})"
            c = CountResult.unknown(reason, fin.counts.policy, tuple(fin.counts.zones))
        return c, k.frame_index, age_ms

    def _publish(self, state: FusionState, p: _Pending, now: float) -> FusedResult:
        latest = {b: r for b, (r, _) in state.latest.items()}
        key = tuple(sorted((b, r.frame.frame_index) for b, r in latest.items()))
        if key != self._overlay_key:
            dets, density = self._merge(latest, p.meta)
            self._overlay, self._overlay_key = (dets, density), key
        overlays = _overlays(latest, now)
        counts, counts_frame, age_ms = self._counts(state, p.meta, now)
        fin = state.last_finalized
        timings = StageTimings(
            frame_index=p.meta.frame_index,
            frame=p.frame_timings,
            branches=state.take_unreported(),
            count_ms=_count_ms(None, state),
            fusion_wait_ms=0.0,
            overlay_lag_ms={o.branch: o.lag_ms for o in overlays},
            end_to_end_ms=(now - p.meta.decode_ts) * 1000.0,
        )
        return FusedResult(
            frame=p.meta,
            strategy=self.name,
            detections=self._overlay[0],
            density=self._overlay[1],
            counts=counts,
            timings=timings,
            overlays=overlays,
            missing=dict(fin.missing) if fin is not None else {},
            frame_image=p.image,
            tile_rects=_tile_rects(latest),
            counts_frame_index=counts_frame,
            counts_age_ms=age_ms,
        )


class RawStreamWithMetadata:
    """Publish every frame at once without branch data, and its metadata record when finalized."""

    name = FusionStrategyName.RAW_STREAM_WITH_METADATA.value
    owes_frame = False
    owes_metadata = True

    def __init__(self, cfg: FusionConfig, combine: CombineFn, merge: MergeFn | None = None) -> None:
        del cfg, combine, merge

    def on_frame(self, state: FusionState, p: _Pending, now: float) -> list[Published]:
        return [_raw_result(p, now)]

    def take_over(self, state: FusionState, now: float) -> list[Published]:
        out: list[Published] = []
        for p in state.pending.values():
            if p.owes_frame:
                p.owes_frame, p.owes_metadata = False, True
                out.append(_raw_result(p, now))
        return out


StrategyFactory = Callable[[FusionConfig, CombineFn, MergeFn | None], FusionStrategy]

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
    """The skeleton every strategy shares, with the current strategy switchable at run time.

    ``on_frame`` registers a frame (and publishes what the strategy publishes at once), ``push``
    a branch result, ``poll`` applies timeouts, ``flush`` finalizes everything (end of a run); each
    then publishes what finalized frames owe: their frame (STRICT_SYNC) or their metadata record
    (frames published raw). ``switch(name)`` hands the :class:`FusionState` to the new strategy:
    frames the old one had already published are not published again, frames it still owed are
    published by the new one, and owed metadata is published whatever the strategy. So every frame
    passed to ``on_frame`` is published exactly once, in frame order, across any sequence of
    switches. ``rates`` maps each branch to its ``every_n_frames``. ``combine`` counts each
    finalized frame once, in frame order; ``merge`` (default: ``combine.merge`` when it has one)
    makes ASYNC_OVERLAY's overlays without counting.
    """

    def __init__(
        self,
        strategy: str | FusionStrategyName,
        combine: CombineFn,
        cfg: FusionConfig,
        clock: Clock = time.perf_counter,
        rates: Mapping[str, int] | None = None,
        merge: MergeFn | None = None,
    ) -> None:
        self._combine = combine
        self._merge = merge if merge is not None else getattr(combine, "merge", None)
        self._cfg = cfg
        self._clock = clock
        self._lock = threading.Lock()
        self.state = FusionState(combine, cfg.strict_sync_timeout_ms, rates)
        self._current: FusionStrategy = STRATEGIES[strategy_name(strategy)](cfg, combine, self._merge)

    @property
    def name(self) -> str:
        """The current strategy's name."""
        return self._current.name

    def on_frame(
        self,
        meta: FrameMeta,
        scheduled: tuple[str, ...],
        image: NDArray[np.uint8] | None = None,
        frame_timings: FrameTimings | None = None,
        dropped: tuple[str, ...] = (),
    ) -> list[Published]:
        """A new decoded frame, the due branches it was submitted to, and those that dropped it."""
        with self._lock:
            now = self._clock()
            s = self._current
            p = self.state.add_frame(
                meta, scheduled, image, frame_timings, now,
                dropped=dropped, owes_frame=s.owes_frame, owes_metadata=s.owes_metadata,
            )
            out = self._owed(self.state.advance(now))
            out.extend(s.on_frame(self.state, p, now))
            return out

    def push(self, result: BranchResult) -> list[Published]:
        """A branch result; publishes what the frames it completes owe."""
        with self._lock:
            now = self._clock()
            self.state.add_result(result, now)
            return self._owed(self.state.advance(now))

    def poll(self, now: float) -> list[Published]:
        """Timeouts up to ``now``."""
        with self._lock:
            return self._owed(self.state.advance(now))

    def flush(self, now: float | None = None) -> list[Published]:
        """Finalize every pending frame (end of a run); then any work no publication reported."""
        with self._lock:
            out = self._owed(self.state.advance(self._clock() if now is None else now, force=True))
            work = self.state.take_unreported()
            count_ms = self.state.take_unreported_count_ms()
            if work or count_ms:
                newest = max([w.frame_index for w in work] + list(count_ms))
                out.append(WorkRecord(StageTimings(frame_index=newest, branches=work, count_ms=count_ms)))
            return out

    def switch(self, name: str | FusionStrategyName) -> list[Published]:
        """Make ``name`` the current strategy; returns what it publishes on taking over."""
        key = strategy_name(name)
        with self._lock:
            old = self._current
            if key == old.name:
                return []
            new = STRATEGIES[key](self._cfg, self._combine, self._merge)
            out = new.take_over(self.state, self._clock())
            self._current = new
        log.info(
            "fusion strategy %s -> %s after frame %d (%d pending frames handed over)",
            old.name, key, self.state.last_frame_index, len(self.state.pending),
        )
        return out

    def _owed(self, finals: Iterable[_Finalized]) -> list[Published]:
        """What each finalized frame still owes: its frame (at finalization) or its metadata."""
        out: list[Published] = []
        for fin in finals:
            p = fin.pending
            if p.owes_frame:
                out.append(_full_result(fin, self._current.name, self.state))
            if p.owes_metadata:
                # A frame owes one publication at most, except a frame published by STRICT_SYNC
                # that owes a record too (switched mid-flight): its work went with the frame.
                out.append(_metadata_record(fin if not p.owes_frame else replace(fin, work=(), count_ms=None), self.state))
            if not (p.owes_frame or p.owes_metadata):
                self.state.unreported.extend(fin.work)  # published at once: the next publication reports it
                if fin.count_ms is not None:
                    self.state.unreported_count_ms[p.meta.frame_index] = fin.count_ms
            if fin.counts.tracking is not None:  # once per finalized frame, whatever the strategy
                out.append(TrackingRecord(p.meta.stream_id, p.meta.frame_index, p.meta.pts, fin.counts.tracking))
        return out
