"""People over time: tracks of the merged detections, counts from confirmed tracks, static objects,
line crossings, zone occupancy and dwell.

:class:`PeopleTracker` is called once per finalized frame, in frame order, with the frame's merged
detections (frame pixels, ``xyxy``) and returns a :class:`TrackedFrame`. It is the one stateful
component of counting: the tracks live between calls (as a fusion strategy's pending frames do);
what it returns is immutable and owns its arrays.

Library: ``supervision.ByteTrack`` from ``supervision>=0.30,<0.31``. ByteTrack (Zhang et al. 2022:
Kalman-predicted boxes matched by IoU, low-score detections used to keep tracks alive) is the
standard tracker for detect-then-track people counting, and supervision's copy is maintained and
tested. supervision 0.31 moved it to the ``trackers`` package, which depends on ``opencv-python``
(the GUI build of OpenCV, whose Qt plugins conflict with PySide6's in one process) and imports
``cv2`` in its package ``__init__``; supervision 0.30 needs no OpenCV (a NumPy fallback, no ``cv2``
import) and is pinned below 0.31. Its ``ByteTrack`` is deprecated since 0.28: the deprecation
warning, and the warning that OpenCV is absent, are silenced where it is imported and built, and
nowhere else. supervision is imported inside ``PeopleTracker.__init__`` (it takes ~2 s): importing
this module costs nothing. To move to ``trackers``, only :meth:`PeopleTracker._associate` changes.

The rules, all in frame pixels and stream time (``FrameMeta.pts``):

- **Ids.** ByteTrack keeps a track through misses of up to ``lost_track_s`` seconds (its
  ``lost_track_buffer``, in frames of the stream's rate). Tiles are merged into one detection per
  person before tracking (``counting.merge_detections``), so a person crossing a tile seam is one
  detection in every frame and keeps one id.
- **Confirmed.** A track counts once it was matched in ``min_confirm_frames`` frames; it keeps
  counting while missed for up to ``miss_hold_frames`` frames. ``TrackedFrame.raw_count`` is the
  frame's detection count, beside ``confirmed_count``. The first ``min_confirm_frames - 1`` frames
  of a stream can confirm no one: their ``confirmed_count`` is unknown (None, ``warming up``).
- **Static.** A confirmed track whose centre stayed within a box of ``static_max_motion`` (0.3) x its box
  diagonal over the last ``static_after_s`` seconds (and that has lived that long) is static: a
  cloth, a bag, a mannequin, detected as a person in every frame. Static tracks are flagged, not
  counted. Overrides: a static track whose feet are inside a ``static_allow`` polygon counts (a
  queue, a desk); :meth:`PeopleTracker.allow_static` lets an operator count one track by id (ids
  live for one run, so this is a run-time call, not config). The flag is re-evaluated every frame:
  a person who stood still and walks on counts again. A static track's spot is remembered for
  ``lost_track_s``: a new track there (ByteTrack switches ids when a person walks over the cloth)
  takes over its motion history, so it is static at once unless it moves.
- **Excluded.** A track whose feet are inside an ``exclude`` polygon counts nowhere (count, lines,
  zones).
- **Lines.** The anchor is the feet (box bottom-centre). Each (track, line) has a side: left,
  right, or none yet. Feet closer to the line than ``line_hysteresis`` x the box height, or past the
  segment's ends, leave the side unchanged; a change from one side to the other is a crossing, once
  per change (a person who crosses back counts once the other way). A track records sides from its
  first frame, but only a counted track (confirmed, not static, not excluded) emits crossings: a
  side change while unconfirmed moves the side without an event. Own geometry rather than
  ``sv.LineZone``: LineZone's hysteresis is in frames, not distance (jitter on the line for that
  many frames counts again), it needs all four box corners across (a person's feet are what crosses
  a doorway), and it keeps every tracker id ever seen (unbounded on a live stream).
- **Zones.** ``counting.zones`` polygons: occupancy = counted tracks whose feet are inside; a
  track's dwell runs from the pts of the first frame its feet were inside to the last; leaving (or
  the track ending, or stopping counting) reports a :class:`ZoneExit`.
- **Unknown frames.** ``update(..., known=False)`` (a branch missing: the detections are partial)
  does not feed the tracker: a partial frame would look like people vanishing. The tracker is
  *skipped* (no predict, no ageing: ByteTrack's frame clock does not advance), no crossing or zone
  event is made, and the counts are None (the count contract: unknown, never 0); ``tracks`` are those
  of the last known frame, ``track_id`` is -1 for every detection.
"""

from __future__ import annotations

import time
import warnings
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import islice
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from config.schema import LineConfig, TrackingConfig, ZoneConfig
from pipeline.bytetrack import ArrayByteTrack
from pipeline.counting import feet, points_in_polygon, zone_polygon
from pipeline.types import Detections, FrameMeta

__all__ = [
    "LineCount",
    "LineCrossing",
    "PeopleTracker",
    "Track",
    "TrackedFrame",
    "ZoneExit",
    "bench_tracker",
    "resolve_points",
]

Direction = Literal["in", "out"]


@dataclass(frozen=True, slots=True)
class Track:
    """A confirmed track on one frame, frame pixels.

    ``xyxy`` (4,) float32: the matched detection's box, or the last one while missed.
    ``age_frames``: frames since the track's first frame (1 on its first). ``missed_frames``: frames
    since it was last matched (0: matched on this frame). ``first_pts`` / ``last_pts``: stream time
    of its first and last matched frames. ``static``: flagged static (not counted unless
    ``allowed``); ``counted``: part of ``TrackedFrame.confirmed_count``. ``trail`` (K, 2) float32:
    its last K centres, oldest first, K <= ``trail_length``. ``dwell_s``: seconds so far in each
    zone its feet are in.
    """

    id: int
    xyxy: NDArray[np.float32]
    class_id: int
    score: float
    age_frames: int
    missed_frames: int
    first_pts: float
    last_pts: float
    static: bool
    allowed: bool
    counted: bool
    trail: NDArray[np.float32]
    dwell_s: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class LineCrossing:
    """One track crossing one line: ``direction`` "in" (into the line's ``in_side``) or "out"."""

    line: str
    track_id: int
    direction: Direction
    frame_index: int
    pts: float


@dataclass(frozen=True, slots=True)
class LineCount:
    """Crossings of a line since the tracker started."""

    in_count: int = 0
    out_count: int = 0


@dataclass(frozen=True, slots=True)
class ZoneExit:
    """A track left a zone (or ended, or stopped counting, while in it): ``entered_pts`` is its first
    frame inside, ``left_pts`` its last; ``dwell_s = left_pts - entered_pts``."""

    zone: str
    track_id: int
    entered_pts: float
    left_pts: float
    dwell_s: float
    frame_index: int


@dataclass(frozen=True, slots=True)
class TrackedFrame:
    """What :meth:`PeopleTracker.update` returns for one frame.

    - ``track_id`` (N,) int64: per input detection, its track's id, or -1 (not tracked: a new or
      unconfirmed detection ByteTrack did not output, or the frame is unknown).
    - ``tracks``: confirmed tracks (matched on this frame or missed for up to ``miss_hold_frames``),
      counted or not (static, excluded).
    - ``raw_count``: detections in the frame; ``confirmed_count``: counted tracks (confirmed, not
      static unless allowed, not excluded). Both None on an unknown frame, with ``unknown_reason``.
    - ``crossings``: this frame's line crossings; ``line_counts``: totals per line since the start.
    - ``occupancy``: counted tracks per zone (None per zone on an unknown frame).
    - ``zone_exits``: this frame's zone exits, with their dwell.
    - ``update_ms``: the call's own cost.
    """

    frame: FrameMeta
    track_id: NDArray[np.int64]
    tracks: tuple[Track, ...]
    raw_count: int | None
    confirmed_count: int | None
    crossings: tuple[LineCrossing, ...] = ()
    line_counts: Mapping[str, LineCount] = field(default_factory=dict)
    occupancy: Mapping[str, int | None] = field(default_factory=dict)
    zone_exits: tuple[ZoneExit, ...] = ()
    unknown_reason: str | None = None
    update_ms: float = 0.0

    def __post_init__(self) -> None:
        if self.track_id.ndim != 1:
            raise ValueError(f"TrackedFrame.track_id: expected shape (N,), got {tuple(self.track_id.shape)}")
        if (self.confirmed_count is None) != (self.unknown_reason is not None):
            raise ValueError(
                f"TrackedFrame: confirmed_count={self.confirmed_count!r} with unknown_reason={self.unknown_reason!r}; "
                "a count is either a number or unknown with a reason"
            )

    @property
    def known(self) -> bool:
        return self.confirmed_count is not None


def resolve_points(
    points: Sequence[tuple[float, float]],
    units: str,
    frame_size: tuple[int, int] | None,
    frame_wh: tuple[int, int],
) -> NDArray[np.float64]:
    """(K, 2) frame pixels of config points (a line's ends): ``normalized`` (0..1 of the frame)
    scaled to the frame; ``pixels`` drawn on ``frame_size`` scaled to the frame; plain pixels as
    written. Polygons go through :func:`pipeline.counting.zone_polygon`, which also checks them."""
    p = np.asarray(points, np.float64).reshape(-1, 2)
    w, h = frame_wh
    if units == "normalized":
        return p * np.array([w, h], np.float64)
    if frame_size is not None and tuple(frame_size) != (w, h):
        return p * np.array([w / frame_size[0], h / frame_size[1]], np.float64)
    return p


@dataclass(slots=True)
class _TrackState:
    """What the tracker remembers of one track between frames (mutable, private)."""

    id: int
    first_index: int
    first_pts: float
    last_index: int
    last_pts: float
    xyxy: NDArray[np.float32]
    class_id: int
    score: float
    hits: int = 0
    trail: NDArray[np.float32] = field(default_factory=lambda: np.zeros((0, 2), np.float32))  # (L, 2) ring of centres
    trail_n: int = 0  # centres written to the ring so far (the newest at (trail_n - 1) % L)
    motion: deque[tuple[float, float, float]] = field(default_factory=deque)  # (pts, cx, cy) over static_after_s
    static_origin_pts: float = 0.0  # start of its motion history (inherited from a static track it replaces)
    sides: dict[str, int] = field(default_factory=dict)  # line name -> -1 | +1
    zones_in: dict[str, tuple[float, float]] = field(default_factory=dict)  # zone -> (entered, last inside) pts


@dataclass(frozen=True, slots=True)
class _Line:
    name: str
    a: NDArray[np.float64]
    b: NDArray[np.float64]
    in_sign: int  # the sign of the signed distance on the in side


class PeopleTracker:
    """``update(dets, meta, known=True) -> TrackedFrame``, once per finalized frame, in frame order.

    ``cfg``: the tracking settings; ``frame_rate``: the stream's frames per second (ByteTrack's
    lost-track buffer is in frames); ``zones``: the counting zones (``counting.zones``) for
    occupancy and dwell. Polygons and lines in normalized units are resolved on the first frame's
    size (one stream per tracker). Not thread-safe: one tracker per stream, called from one thread.
    """

    def __init__(self, cfg: TrackingConfig, frame_rate: float, zones: Sequence[ZoneConfig] = ()) -> None:
        if not frame_rate > 0:
            raise ValueError(f"PeopleTracker: frame_rate must be positive, got {frame_rate!r}")
        self._cfg = cfg
        self._frame_rate = float(frame_rate)
        self._zone_cfgs = tuple(zones)
        self._byte_track = _make_byte_track(cfg, self._frame_rate)
        self._tracks: dict[int, _TrackState] = {}
        self._allowed_ids: set[int] = set()
        # static tracks' last box, motion history and origin, kept lost_track_s after they were last
        # static: a new track on the same spot (an id switch when someone walks over the cloth) is
        # static at once instead of counting for static_after_s
        self._static_memory: dict[int, tuple[NDArray[np.float32], tuple[tuple[float, float, float], ...], float, float]] = {}
        self._line_counts: dict[str, list[int]] = {line.name: [0, 0] for line in cfg.lines}
        self._geometry: tuple[tuple[int, int], tuple[_Line, ...], dict[str, NDArray[np.float64]], tuple[NDArray[np.float64], ...], tuple[NDArray[np.float64], ...]] | None = None
        self._last_tracks: tuple[Track, ...] = ()
        self._last_index: int | None = None
        self._known_frames = 0

    # ----------------------------------------------------------------------------------------
    # operator overrides

    def allow_static(self, track_id: int, allowed: bool = True) -> None:
        """Count track ``track_id`` even when it is static (an operator's "this is a person")."""
        if allowed:
            self._allowed_ids.add(int(track_id))
        else:
            self._allowed_ids.discard(int(track_id))

    # ----------------------------------------------------------------------------------------

    def update(self, dets: Detections, meta: FrameMeta, *, known: bool = True) -> TrackedFrame:
        """Track one frame's merged detections; see the module docstring for the rules."""
        t0 = time.perf_counter()
        if self._last_index is not None and meta.frame_index <= self._last_index:
            raise ValueError(
                f"PeopleTracker.update: frame {meta.frame_index} after frame {self._last_index}; call it in frame order"
            )
        self._last_index = meta.frame_index
        lines, zones, allow, exclude = self._resolved((meta.width, meta.height))
        if not known:
            return TrackedFrame(
                frame=meta,
                track_id=np.full(len(dets), -1, np.int64),
                tracks=self._last_tracks,
                raw_count=None,
                confirmed_count=None,
                line_counts=self._line_count_view(),
                occupancy=dict.fromkeys(zones),
                unknown_reason="partial frame: not tracked",
                update_ms=(time.perf_counter() - t0) * 1e3,
            )
        self._known_frames += 1
        ids = self._associate(dets)
        self._record_matches(dets, ids, meta)
        exits = self._end_lost_tracks(meta)

        # the confirmed tracks of this frame, as arrays
        confirmed = [
            s for s in self._tracks.values()
            if s.hits >= self._cfg.min_confirm_frames and meta.frame_index - s.last_index <= self._cfg.miss_hold_frames
        ]
        boxes = np.array([s.xyxy for s in confirmed], np.float64).reshape(-1, 4)
        foot = feet(boxes)
        static = np.array([self._is_static(s, meta.pts) for s in confirmed], bool)
        allowed = np.array([s.id in self._allowed_ids for s in confirmed], bool)
        for poly in allow:
            allowed |= points_in_polygon(foot, poly)
        excluded = np.zeros(len(confirmed), bool)
        for poly in exclude:
            excluded |= points_in_polygon(foot, poly)
        counted = (~static | allowed) & ~excluded
        counted_ids = {s.id for s, c in zip(confirmed, counted, strict=True) if c}
        self._remember_static(confirmed, static, meta.pts)

        crossings = self._cross_lines(lines, meta, counted_ids)
        occupancy, zone_exits = self._update_zones(zones, confirmed, foot, counted, meta)
        exits.extend(zone_exits)

        tracks = tuple(
            Track(
                id=s.id,
                xyxy=s.xyxy,  # replaced, never written in place, on each match: the snapshot can share it
                class_id=s.class_id,
                score=s.score,
                age_frames=meta.frame_index - s.first_index + 1,
                missed_frames=meta.frame_index - s.last_index,
                first_pts=s.first_pts,
                last_pts=s.last_pts,
                static=bool(st),
                allowed=bool(al),
                counted=bool(c),
                trail=_trail(s),
                dwell_s={z: s.last_pts - entered for z, (entered, _) in s.zones_in.items()},
            )
            for s, st, al, c in zip(confirmed, static, allowed, counted, strict=True)
        )
        self._last_tracks = tracks
        # no track can be confirmed before min_confirm_frames frames: the count is not 0 but unknown
        warming_up = self._known_frames < self._cfg.min_confirm_frames
        return TrackedFrame(
            frame=meta,
            track_id=ids,
            tracks=tracks,
            raw_count=len(dets),
            confirmed_count=None if warming_up else int(counted.sum()),
            unknown_reason="warming up" if warming_up else None,
            crossings=tuple(crossings),
            line_counts=self._line_count_view(),
            occupancy=occupancy,
            zone_exits=tuple(exits),
            update_ms=(time.perf_counter() - t0) * 1e3,
        )

    # ----------------------------------------------------------------------------------------
    # steps

    def _associate(self, dets: Detections) -> NDArray[np.int64]:
        """(N,) ByteTrack id per detection, -1 where it gave none (unconfirmed by ByteTrack)."""
        if isinstance(self._byte_track, ArrayByteTrack):
            return self._byte_track.update(dets.xyxy, dets.score)
        import supervision as sv

        ids = np.full(len(dets), -1, np.int64)
        sv_dets = sv.Detections(
            xyxy=dets.xyxy.astype(np.float32, copy=True),
            confidence=dets.score.astype(np.float32, copy=True),
            class_id=dets.class_id.astype(np.int64, copy=True),
            data={"index": np.arange(len(dets))},
        )
        out = self._byte_track.update_with_detections(sv_dets)
        if len(out):
            ids[np.asarray(out.data["index"], np.int64)] = np.asarray(out.tracker_id, np.int64)
        return ids

    def _record_matches(self, dets: Detections, ids: NDArray[np.int64], meta: FrameMeta) -> None:
        trail_len = self._cfg.trail_length
        matched = np.flatnonzero(ids >= 0)
        # one array op per frame, not per track: each track's box is its own row of a fresh array
        # (never written in place afterwards) and its centre a pair of Python floats
        boxes = dets.xyxy[matched].astype(np.float32, copy=True)
        centres = ((boxes[:, :2] + boxes[:, 2:]) / 2).tolist()
        class_ids, scores = dets.class_id[matched].tolist(), dets.score[matched].tolist()
        for j, k in enumerate(matched.tolist()):
            tid = int(ids[k])
            box = boxes[j]
            s = self._tracks.get(tid)
            if s is None:
                s = _TrackState(
                    id=tid, first_index=meta.frame_index, first_pts=meta.pts, last_index=meta.frame_index,
                    last_pts=meta.pts, xyxy=box, class_id=int(class_ids[j]), score=float(scores[j]),
                    trail=np.zeros((trail_len, 2), np.float32), static_origin_pts=meta.pts,
                )
                self._inherit_static(s)
                self._tracks[tid] = s
            s.hits += 1
            s.last_index, s.last_pts = meta.frame_index, meta.pts
            s.xyxy, s.class_id, s.score = box, int(class_ids[j]), float(scores[j])
            cx, cy = centres[j]
            if trail_len:
                s.trail[s.trail_n % trail_len] = (cx, cy)
                s.trail_n += 1
            s.motion.append((meta.pts, cx, cy))
            while s.motion and s.motion[0][0] < meta.pts - self._cfg.static_after_s - 1.5 / self._frame_rate:
                s.motion.popleft()

    def _end_lost_tracks(self, meta: FrameMeta) -> list[ZoneExit]:
        """Forget tracks unmatched for longer than ``lost_track_s`` (ByteTrack has dropped them too)."""
        exits: list[ZoneExit] = []
        for tid in [t for t, s in self._tracks.items() if meta.pts - s.last_pts > self._cfg.lost_track_s]:
            s = self._tracks.pop(tid)
            exits.extend(_zone_exit(z, s, entered, last, meta.frame_index) for z, (entered, last) in s.zones_in.items())
            self._allowed_ids.discard(tid)
        return exits

    def _inherit_static(self, s: _TrackState) -> None:
        """A new track on the spot of a remembered static track takes over its motion history."""
        for box, motion, origin, _ in self._static_memory.values():
            if _iou(box, s.xyxy) >= 0.5:
                s.motion.extend(motion)
                s.static_origin_pts = origin
                return

    def _remember_static(self, confirmed: Sequence[_TrackState], static: NDArray[np.bool_], now: float) -> None:
        for s, st in zip(confirmed, static, strict=True):
            if st and s.last_pts == now:  # seen on this frame
                self._static_memory[s.id] = (s.xyxy.copy(), tuple(s.motion), s.static_origin_pts, now)
        for tid in [t for t, m in self._static_memory.items() if now - m[3] > self._cfg.lost_track_s]:
            del self._static_memory[tid]

    def _is_static(self, s: _TrackState, now: float) -> bool:
        """Whether the centre stayed within ``static_max_motion`` x the box diagonal on each axis
        over the last ``static_after_s``. Per confirmed track and frame, so without an array made
        of the whole history: ``motion`` is in time order, the points of the window are its end,
        and a walker is told apart by the window's first and last points alone (their distance on
        an axis is at most the window's extent, float subtraction being monotonic)."""
        window = self._cfg.static_after_s
        motion = s.motion
        if now - s.static_origin_pts < window or not motion:
            return False
        since = now - window - 0.5 / self._frame_rate
        first = 0
        for t, _, _ in motion:  # before the window: the frame or two kept beyond it
            if t >= since:
                break
            first += 1
        if len(motion) - first < 2:
            return False
        limit = self._cfg.static_max_motion * float(np.hypot(s.xyxy[2] - s.xyxy[0], s.xyxy[3] - s.xyxy[1]))
        _, x0, y0 = motion[first]
        _, x1, y1 = motion[-1]
        if abs(x1 - x0) > limit or abs(y1 - y0) > limit:
            return False
        xs = [m[1] for m in islice(motion, first, None)]
        if max(xs) - min(xs) > limit:
            return False
        ys = [m[2] for m in islice(motion, first, None)]
        return max(ys) - min(ys) <= limit

    def _cross_lines(self, lines: Sequence[_Line], meta: FrameMeta, counted_ids: set[int]) -> list[LineCrossing]:
        """Side changes of matched tracks' feet; an event for counted tracks (module docstring)."""
        events: list[LineCrossing] = []
        for s in self._tracks.values():
            if s.last_index != meta.frame_index:
                continue  # not seen on this frame: its side stays
            fx, fy = (float(s.xyxy[0]) + float(s.xyxy[2])) / 2, float(s.xyxy[3])
            margin = self._cfg.line_hysteresis * float(s.xyxy[3] - s.xyxy[1])
            for line in lines:
                d = line.b - line.a
                length = float(np.hypot(d[0], d[1]))
                rx, ry = fx - line.a[0], fy - line.a[1]
                along = (rx * d[0] + ry * d[1]) / length
                if along < 0 or along > length:
                    continue  # past the segment's ends: no side
                signed = (d[0] * ry - d[1] * rx) / length  # > 0 on the right of a->b (y down)
                if abs(signed) <= margin:
                    continue
                side = 1 if signed > 0 else -1
                before = s.sides.get(line.name)
                s.sides[line.name] = side
                if before is None or before == side or s.id not in counted_ids:
                    continue
                direction: Direction = "in" if side == line.in_sign else "out"
                self._line_counts[line.name][0 if direction == "in" else 1] += 1
                events.append(LineCrossing(line.name, s.id, direction, meta.frame_index, meta.pts))
        return events

    def _update_zones(
        self,
        zones: Mapping[str, NDArray[np.float64]],
        confirmed: Sequence[_TrackState],
        foot: NDArray[np.float64],
        counted: NDArray[np.bool_],
        meta: FrameMeta,
    ) -> tuple[dict[str, int | None], list[ZoneExit]]:
        occupancy: dict[str, int | None] = {}
        exits: list[ZoneExit] = []
        confirmed_ids = {s.id for s in confirmed}
        for name, poly in zones.items():
            inside = points_in_polygon(foot, poly) & counted if len(confirmed) else np.zeros(0, bool)
            occupancy[name] = int(inside.sum())
            for s, is_in in zip(confirmed, inside, strict=True):
                if is_in:
                    entered, _ = s.zones_in.get(name, (s.last_pts, s.last_pts))
                    s.zones_in[name] = (entered, s.last_pts)
                elif name in s.zones_in:
                    entered, last = s.zones_in.pop(name)
                    exits.append(_zone_exit(name, s, entered, last, meta.frame_index))
            # tracks past the hold that are still in a zone: they left it when last seen
            for s in self._tracks.values():
                if s.id not in confirmed_ids and name in s.zones_in and meta.frame_index - s.last_index > self._cfg.miss_hold_frames:
                    entered, last = s.zones_in.pop(name)
                    exits.append(_zone_exit(name, s, entered, last, meta.frame_index))
        return occupancy, exits

    # ----------------------------------------------------------------------------------------

    def _resolved(
        self, frame_wh: tuple[int, int]
    ) -> tuple[tuple[_Line, ...], dict[str, NDArray[np.float64]], tuple[NDArray[np.float64], ...], tuple[NDArray[np.float64], ...]]:
        """Lines and polygons in frame pixels, computed on the first frame (one stream, one size)."""
        if self._geometry is None or self._geometry[0] != frame_wh:
            lines = tuple(_resolve_line(line, frame_wh) for line in self._cfg.lines)
            zones = {z.name: zone_polygon(z, frame_wh) for z in self._zone_cfgs}
            allow = tuple(zone_polygon(z, frame_wh) for z in self._cfg.static_allow)
            exclude = tuple(zone_polygon(z, frame_wh) for z in self._cfg.exclude)
            self._geometry = (frame_wh, lines, zones, allow, exclude)
        _, lines, zones, allow, exclude = self._geometry
        return lines, zones, allow, exclude

    def _line_count_view(self) -> dict[str, LineCount]:
        return {name: LineCount(c[0], c[1]) for name, c in self._line_counts.items()}


def _resolve_line(line: LineConfig, frame_wh: tuple[int, int]) -> _Line:
    a, b = resolve_points([line.a, line.b], line.units, line.frame_size, frame_wh)
    # signed distance > 0 is the right of a->b (image coordinates, y down)
    return _Line(line.name, a, b, in_sign=1 if line.in_side == "right" else -1)


def _iou(a: NDArray[np.floating], b: NDArray[np.floating]) -> float:
    iw = max(0.0, min(float(a[2]), float(b[2])) - max(float(a[0]), float(b[0])))
    ih = max(0.0, min(float(a[3]), float(b[3])) - max(float(a[1]), float(b[1])))
    inter = iw * ih
    union = float((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1])) - inter
    return inter / union if union > 0 else 0.0


def _trail(s: _TrackState) -> NDArray[np.float32]:
    """(K, 2) float32 copy of the track's last K <= ``trail_length`` centres, oldest first."""
    size = len(s.trail)
    if s.trail_n <= size:
        return s.trail[: s.trail_n].copy()
    head = s.trail_n % size
    return np.concatenate((s.trail[head:], s.trail[:head]))


def _zone_exit(zone: str, s: _TrackState, entered: float, last: float, frame_index: int) -> ZoneExit:
    return ZoneExit(zone=zone, track_id=s.id, entered_pts=entered, left_pts=last, dwell_s=last - entered, frame_index=frame_index)


def _make_byte_track(cfg: TrackingConfig, frame_rate: float) -> Any:
    """ByteTrack (``tracking.engine``): :class:`~pipeline.bytetrack.ArrayByteTrack`, or supervision's,
    its deprecation (and OpenCV-absent) warnings silenced here only. The same parameters for both."""
    if cfg.engine == "arrays":
        return ArrayByteTrack(
            track_activation_threshold=cfg.activation_score,
            lost_track_buffer=max(1, round(cfg.lost_track_s * 30.0)),
            minimum_matching_threshold=cfg.match_threshold,
            frame_rate=frame_rate,
            minimum_consecutive_frames=1,
        )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*OpenCV.*", category=UserWarning)
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"(supervision|deprecate)(\..*)?")
        warnings.filterwarnings("ignore", message=r".*ByteTrack.*deprecated.*")
        import supervision as sv

        # max_time_lost = frame_rate / 30 * lost_track_buffer frames: lost_track_s of stream time
        return sv.ByteTrack(
            track_activation_threshold=cfg.activation_score,
            lost_track_buffer=max(1, round(cfg.lost_track_s * 30.0)),
            minimum_matching_threshold=cfg.match_threshold,
            frame_rate=frame_rate,
            minimum_consecutive_frames=1,
        )


# --------------------------------------------------------------------------------------------
# Cost


def bench_tracker(
    people: int = 130,
    frames: int = 200,
    frame_wh: tuple[int, int] = (3840, 2160),
    frame_rate: float = 10.0,
    person_h: float = 100.0,
    seed: int = 0,
    cfg: TrackingConfig | None = None,
) -> dict[str, float]:
    """Milliseconds per :meth:`PeopleTracker.update` on ``people`` synthetic walkers (boxes
    ``person_h`` tall walking at ~1.2 m/s with 2 px jitter, 5% of detections missed per frame)
    in a ``frame_wh`` frame: ``{"people", "frames", "mean_ms", "p50_ms", "p95_ms", "max_ms"}``
    (the first 5 frames left out). Lines and zones of ``cfg`` are included."""
    rng = np.random.default_rng(seed)
    w, h = frame_wh
    pos = rng.uniform([0, person_h], [w, h], size=(people, 2))
    speed = person_h / 1.7 * 1.2 / frame_rate  # pixels per frame
    heading = rng.uniform(0, 2 * np.pi, people)
    tracker = PeopleTracker(cfg or TrackingConfig(), frame_rate)
    times: list[float] = []
    for i in range(frames):
        heading += rng.normal(0, 0.05, people)
        pos += speed * np.stack([np.cos(heading), np.sin(heading)], axis=1)
        pos[:, 0] %= w
        pos[:, 1] = np.clip(pos[:, 1], person_h, h)
        jit = rng.normal(0, 2, size=(people, 4))
        xyxy = np.stack([pos[:, 0] - person_h / 5, pos[:, 1] - person_h, pos[:, 0] + person_h / 5, pos[:, 1]], axis=1) + jit
        keep = rng.random(people) > 0.05
        n = int(keep.sum())
        dets = Detections(
            xyxy=xyxy[keep].astype(np.float32),
            score=rng.uniform(0.4, 0.9, n).astype(np.float32),
            class_id=np.zeros(n, np.int32),
            source=np.full(n, -1, np.int32),
        )
        t0 = time.perf_counter()
        tracker.update(dets, FrameMeta("bench", i, i / frame_rate, 0.0, w, h))
        times.append((time.perf_counter() - t0) * 1e3)
    t = np.array(times[5:] or times)
    return {
        "people": float(people),
        "frames": float(frames),
        "mean_ms": float(t.mean()),
        "p50_ms": float(np.percentile(t, 50)),
        "p95_ms": float(np.percentile(t, 95)),
        "max_ms": float(t.max()),
    }
