"""The counting of one frame: the branches' results -> merged detections, density, counts.

:class:`FrameCounter` is the fusion's ``combine`` (``pipeline.protocols.CombineFn``). It knows each
branch only by its role (global letterbox, tiles, both in one call, density), read from the
config by :func:`branch_role`; the merge and the counts are :mod:`pipeline.counting`'s.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np

from config.schema import CountingConfig, PipelineConfig
from pipeline.counting import hybrid_count, merge_detections
from pipeline.density_calibration import DensityCalibrator
from pipeline.types import (
    GLOBAL_SOURCE,
    BranchResult,
    CountResult,
    DensityMap,
    Detections,
    FrameMeta,
    missing_reason,
)

__all__ = ["FrameCounter", "Role", "branch_role"]

Role = Literal["global", "tiles", "global+tiles", "density"]
"""What a branch's result is for the merge: ``global+tiles`` is one call over both (split by
``Detections.source``)."""


def branch_role(cfg: PipelineConfig, name: str) -> Role:
    """The role of config branch ``name``: from its model's kind and its input specs."""
    b = cfg.branches[name]
    if cfg.models[b.model].kind == "density":
        return "density"
    if len(b.inputs) > 1:
        return "global+tiles"
    return "global" if cfg.preprocess[b.inputs[0]].kind == "letterbox" else "tiles"


def _tracks_reason(reason: str | None) -> str:
    reason = reason or "warming up"
    return reason if reason.startswith("tracks") else f"tracks {reason}"


@dataclass(frozen=True, slots=True)
class FrameCounter:
    """``counter(results, frame, missing) -> (merged detections, density map or None, counts)``.

    ``roles`` maps branch name to :data:`Role`; results of other branches, and failed results,
    are left out. Global and tile detections are merged (IoS matching over the tiles' rectangles,
    ``counting.merge``), then counted with the density map (``counting.hybrid``, per zone).

    With a tracker, the count is made of confirmed, counted tracks; on a frame where tracks cannot
    count (the first frames; after a gap longer than ``tracking.max_gap_s``, until tracks confirm
    again) it is made of the frame's own detections, and ``CountResult.policy`` says so
    (``detections(tracks warming up)->detections``).

    The count contract: ``missing`` names the branches whose result for this frame is absent, and
    why. The detection count is unknown when a detection branch is missing, the density count when
    the density branch is, and the fused count when a branch its policy needs is missing
    (``detections``: the detection branches; ``density``: the density branch; ``hybrid``: both); a
    missing branch of unknown role is taken as needed. Unknown counts are None with the reason
    (:func:`~pipeline.types.missing_reason`), never 0. The detections of the branches that are
    present are still merged and returned (the window draws them; the count says it is unknown).
    """

    counting: CountingConfig
    roles: Mapping[str, Role]
    max_track_gap_s: float = 1.0
    """``tracking.max_gap_s``: further apart than this, tracked frames give no count from tracks."""
    min_track_frames: int = 3
    """``tracking.min_confirm_frames``: close frames in a row before tracks count again after a gap."""
    _track_state: list[float] = field(default_factory=list)
    """[pts of the previous frame the tracker saw with complete detections, close frames in a row,
    1.0 while those frames follow a gap]."""
    tracker: Any = None
    """A ``pipeline.tracking.PeopleTracker`` (tracking on), fed once per finalized frame: the count
    is then made of confirmed tracks. Stateful: one counter per stream and run."""
    calibrator: DensityCalibrator | None = None
    """Turns the raw density map into people over time (``counting.hybrid.calibration``); made
    here when None and calibration is on. The map :meth:`__call__` returns is the calibrated one."""
    density_learn_every: int = 1
    """The calibration learns (background floor, scale samples) on frames ``f`` with
    ``f % density_learn_every == density_learn_every - 1``: a density branch spread over N frames
    (``spread: true``) refreshes the whole map once every N frames, and its map in between is
    mostly the same tiles again (learning from them would count unchanged tiles as a still
    scene). Every frame is still calibrated with what was learnt."""

    def __post_init__(self) -> None:
        if self.calibrator is None and self.counting.hybrid.calibration.enabled:
            object.__setattr__(self, "calibrator", DensityCalibrator(self.counting.hybrid))

    @classmethod
    def from_config(cls, cfg: PipelineConfig, frame_rate: float | None = None) -> FrameCounter:
        """The counter of the config's enabled branches, with a tracker when ``tracking.enabled``
        (``frame_rate``: the stream's, for the tracker; 30 when unknown)."""
        tracker = None
        if cfg.tracking.enabled:
            from pipeline.tracking import PeopleTracker

            tracker = PeopleTracker(cfg.tracking, frame_rate or 30.0, zones=cfg.counting.zones)
        roles = {name: branch_role(cfg, name) for name, b in cfg.branches.items() if b.enabled}
        spread = [b.every_n_frames for name, b in cfg.branches.items() if b.enabled and b.spread and roles[name] == "density"]
        return cls(
            cfg.counting, roles, tracker=tracker, max_track_gap_s=cfg.tracking.max_gap_s,
            min_track_frames=cfg.tracking.min_confirm_frames, density_learn_every=max(spread, default=1),
        )

    def merge(self, results: Mapping[str, BranchResult], frame: FrameMeta) -> tuple[Detections, DensityMap | None]:
        """The branches' detections merged (global and tiles, IoS over the tiles' rectangles) and
        the density map: what the window draws. Stateless; ASYNC_OVERLAY calls it on the newest
        results of every branch (``pipeline.protocols.MergeFn``)."""
        global_parts: list[Detections] = []
        tile_parts: list[Detections] = []
        rects: list[np.ndarray] = []
        density: DensityMap | None = None
        for name, res in results.items():
            role = self.roles.get(name)
            if res.error is not None or role is None:
                continue
            if role == "density":
                density = res.density
                continue
            if res.detections is None:
                continue
            if role == "global":
                global_parts.append(res.detections)
                continue
            if role == "global+tiles":  # one call's result: split by where each came from
                is_global = res.detections.source == GLOBAL_SOURCE
                global_parts.append(res.detections[is_global])
                tile_parts.append(res.detections[~is_global])
            else:
                tile_parts.append(res.detections)
            if res.tile_rects is not None:
                rects.append(res.tile_rects)
        frame_wh = (frame.width, frame.height)
        tile_rects = np.concatenate(rects) if rects else np.zeros((0, 4), np.float32)
        merged = merge_detections(
            Detections.merge(global_parts), Detections.merge(tile_parts), tile_rects, frame_wh, self.counting.merge
        )
        return merged, density

    def __call__(
        self, results: Mapping[str, BranchResult], frame: FrameMeta, missing: Mapping[str, str] | None = None
    ) -> tuple[Detections, DensityMap | None, CountResult]:
        """The counting of one finalized frame (fusion calls it once per frame, in frame order)."""
        merged, density = self.merge(results, frame)
        c = self.counting
        calibration = None
        if density is not None and self.calibrator is not None:
            # learn only from a map and detections of this very frame, all present
            fresh = all(r.frame.frame_index == frame.frame_index for n, r in results.items() if n in self.roles)
            cycle = frame.frame_index % self.density_learn_every == self.density_learn_every - 1
            calibrated = self.calibrator(density, merged, (frame.width, frame.height), learn=fresh and cycle and not missing)
            density, calibration = calibrated.density, calibrated.calibration
        counted, tracked = self._track(merged, frame, missing)
        counts = hybrid_count(counted, density, (frame.width, frame.height), c.hybrid, c.policy, zones=c.zones)
        counts = replace(counts, detection=len(merged), tracking=tracked)
        if tracked is not None and tracked.confirmed_count is None and not missing:
            # Tracks cannot count this frame (warming up, or frames too far apart for them to
            # follow): the count is the frame's own detections, and its policy label says so.
            counts = replace(counts, policy=f"{counts.policy}({_tracks_reason(tracked.unknown_reason)})->detections")
        counts = replace(counts, calibration=calibration)
        if missing:
            counts = replace(self._with_missing(counts, missing), calibration=calibration)
        return merged, density, counts

    def _track(
        self, merged: Detections, frame: FrameMeta, missing: Mapping[str, str] | None
    ) -> tuple[Detections, Any]:
        """Feed the tracker (once per finalized frame, in order) and return what to count: the
        boxes of the confirmed, counted tracks (not static, not excluded; one missed for a frame
        or two still counts), and the ``TrackedFrame``. Without a tracker: the detections."""
        if self.tracker is None:
            return merged, None
        known = not any(self.roles.get(b) != "density" for b in (missing or {}))
        tracked = self.tracker.update(merged, frame, known=known)
        if known:
            # Tracks confirm over consecutive close frames: after a gap (a detector far slower than
            # the stream) their count is no count until min_confirm_frames close frames again.
            last = self._track_state
            gap = frame.pts - last[0] if last else 0.0
            after_gap = gap > self.max_track_gap_s or (bool(last) and bool(last[2]))
            streak = 1 if gap > self.max_track_gap_s or not last else int(last[1]) + 1
            self._track_state[:] = [frame.pts, streak, float(after_gap and streak <= self.min_track_frames)]
            if gap > self.max_track_gap_s:
                reason = f"tracks: {gap:.1f} s since the last tracked frame (max {self.max_track_gap_s:g})"
                return merged, replace(tracked, confirmed_count=None, unknown_reason=reason)
            # (a track made after a gap is activated on its second frame, then confirmed after
            # min_confirm_frames matches)
            if after_gap and streak <= self.min_track_frames:
                reason = f"tracks warming up after a gap ({streak} of {self.min_track_frames + 1} close frames)"
                return merged, replace(tracked, confirmed_count=None, unknown_reason=reason)
        if tracked.confirmed_count is None:
            return merged, tracked
        boxes = [t for t in tracked.tracks if t.counted]
        counted = Detections(
            xyxy=np.array([t.xyxy for t in boxes], np.float32).reshape(-1, 4),
            score=np.array([t.score for t in boxes], np.float32),
            class_id=np.array([t.class_id for t in boxes], np.int32),
            source=np.full(len(boxes), GLOBAL_SOURCE, np.int32),
        )
        return counted, tracked

    def _with_missing(self, counts: CountResult, missing: Mapping[str, str]) -> CountResult:
        roles = {b: self.roles.get(b) for b in missing}
        det_missing = {b: w for b, w in missing.items() if roles[b] != "density"}
        dens_missing = {b: w for b, w in missing.items() if roles[b] in ("density", None)}
        has_density = any(r == "density" for r in self.roles.values())
        needed = {
            "detections": det_missing,
            "density": dens_missing,
            "hybrid": {**det_missing, **(dens_missing if has_density else {})},
        }[self.counting.policy]
        if not needed:
            return replace(
                counts,
                detection=None if det_missing else counts.detection,
                density=None if dens_missing else counts.density,
            )
        unknown = CountResult.unknown(missing_reason(needed), counts.policy, tuple(counts.zones))
        return replace(
            unknown,
            detection=None if det_missing else counts.detection,
            density=None if dens_missing else counts.density,
            tracking=counts.tracking,
        )
