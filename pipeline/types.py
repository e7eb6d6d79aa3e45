"""The data that flows through the pipeline.

Frozen dataclasses of NumPy arrays, validated in ``__post_init__``. Everything here is host data
except ``Frame.image`` and ``PreprocessOutput.tensor``, which may be CuPy arrays on the GPU path
(they never leave the GPU worker). Coordinates are ``xyxy`` in frame pixels unless a name says
otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from numpy.typing import NDArray

from pipeline.geometry import PreprocessPlan

if TYPE_CHECKING:
    from pipeline.preprocess import ColourSpec

GLOBAL_SOURCE = -1
"""``Detections.source`` of a detection from the global (letterbox) pass; tiles are 0..N-1."""


def _check_shape(name: str, arr: NDArray[Any], shape: tuple[int | None, ...]) -> None:
    ok = arr.ndim == len(shape) and all(s is None or s == a for s, a in zip(shape, arr.shape, strict=True))
    if not ok:
        want = "(" + ", ".join("N" if s is None else str(s) for s in shape) + ")"
        raise ValueError(f"{name}: expected shape {want}, got {tuple(arr.shape)}")


@dataclass(frozen=True, slots=True)
class FrameMeta:
    """Identity and timing of one decoded frame.

    ``pts`` is in seconds (stream time base applied), increasing over a run: a looped file and a
    reconnected stream continue after the last frame (``PyAVSource``) instead of starting again at
    their own origin. ``decode_ts`` is ``time.perf_counter()`` when the frame left the decoder, the
    origin of ``end_to_end_ms``.
    """

    stream_id: str
    frame_index: int
    pts: float
    decode_ts: float
    width: int
    height: int


@dataclass(frozen=True, slots=True)
class Frame:
    """A decoded frame.

    ``image``: ``rgb`` is (H, W, 3) uint8; ``nv12`` is (H*3/2, W) uint8 (Y plane then interleaved
    UV). ``device`` says whether ``image`` is a NumPy array ("cpu") or a CuPy array ("gpu"). A GPU
    frame's memory belongs to the source's ring buffer and is valid until the slot is released.

    ``colour``: the YUV matrix and range of an ``nv12`` image (from the stream's metadata); None:
    :meth:`pipeline.preprocess.ColourSpec.default_for` the frame size. Unused for ``rgb``.

    ``lease``: a GPU frame's hold on its ring slot (``gpu.ring.SlotLease``), None on the CPU path.
    Whoever hands the frame to n readers calls ``lease.hold(n)`` first; each reader calls
    ``lease.release(stream)`` once after its last read (``stream``: the CUDA stream its reads were
    enqueued on; None: nothing was read); the slot is not written again while a hold remains.
    """

    meta: FrameMeta
    image: Any
    layout: Literal["rgb", "nv12"] = "rgb"
    device: Literal["cpu", "gpu"] = "cpu"
    # colour and lease: added for the colour contract (issue 13) and GPU slot leases (issue 8)
    colour: ColourSpec | None = None
    lease: Any = None

    def __post_init__(self) -> None:
        h, w = self.meta.height, self.meta.width
        shape = tuple(self.image.shape)
        want = (h, w, 3) if self.layout == "rgb" else (h * 3 // 2, w)
        if shape != want:
            raise ValueError(f"Frame.image ({self.layout}): expected shape {want}, got {shape}")


@dataclass(frozen=True, slots=True)
class PreprocessOutput:
    """One model input: ``tensor`` (N, 3, H, W) float32/float16 NCHW RGB, plus the plan that made it.

    NumPy on the CPU path, CuPy on the GPU path. ``plan.count == N``.
    """

    spec_name: str
    tensor: Any
    plan: PreprocessPlan


@dataclass(frozen=True, slots=True)
class Detections:
    """Person detections of one frame, in frame pixels.

    - ``xyxy``: (N, 4) float32, frame pixels.
    - ``score``: (N,) float32 in 0..1; ``class_id``: (N,) int32, the model's class.
    - ``source``: (N,) int32, ``GLOBAL_SOURCE`` (-1) or the tile index that produced it.
    - ``masks``: None for detect heads, else a tuple of N boolean arrays; mask i covers the integer
      box ``mask_xyxy[i]`` (frame pixels, clipped to the frame) at its own resolution (a consumer
      resizes it to the box). Masks are host arrays.
    """

    xyxy: NDArray[np.float32]
    score: NDArray[np.float32]
    class_id: NDArray[np.int32]
    source: NDArray[np.int32]
    masks: tuple[NDArray[np.bool_], ...] | None = None
    mask_xyxy: NDArray[np.int32] | None = None

    def __post_init__(self) -> None:
        n = len(self.xyxy)
        _check_shape("Detections.xyxy", self.xyxy, (None, 4))
        for name in ("score", "class_id", "source"):
            _check_shape(f"Detections.{name}", getattr(self, name), (n,))
        if (self.masks is None) != (self.mask_xyxy is None):
            raise ValueError("Detections: masks and mask_xyxy must both be set or both be None")
        if self.masks is not None and self.mask_xyxy is not None:
            if len(self.masks) != n:
                raise ValueError(f"Detections.masks: expected {n} masks, got {len(self.masks)}")
            _check_shape("Detections.mask_xyxy", self.mask_xyxy, (n, 4))

    def __len__(self) -> int:
        return len(self.xyxy)

    @classmethod
    def empty(cls, with_masks: bool = False) -> Detections:
        return cls(
            xyxy=np.zeros((0, 4), np.float32),
            score=np.zeros(0, np.float32),
            class_id=np.zeros(0, np.int32),
            source=np.zeros(0, np.int32),
            masks=() if with_masks else None,
            mask_xyxy=np.zeros((0, 4), np.int32) if with_masks else None,
        )

    def __getitem__(self, index: NDArray[np.bool_] | NDArray[np.integer[Any]] | slice) -> Detections:
        """Select detections by boolean mask, index array or slice."""
        idx = np.arange(len(self))[index]
        masks = None if self.masks is None else tuple(self.masks[i] for i in idx)
        return Detections(
            xyxy=self.xyxy[idx],
            score=self.score[idx],
            class_id=self.class_id[idx],
            source=self.source[idx],
            masks=masks,
            mask_xyxy=None if self.mask_xyxy is None else self.mask_xyxy[idx],
        )

    @property
    def has_masks(self) -> bool:
        return self.masks is not None

    @property
    def center(self) -> NDArray[np.float32]:
        """(N, 2) box centres, frame pixels."""
        return np.stack([(self.xyxy[:, 0] + self.xyxy[:, 2]) / 2, (self.xyxy[:, 1] + self.xyxy[:, 3]) / 2], axis=1)

    @staticmethod
    def merge(parts: list[Detections]) -> Detections:
        """Concatenate; masks are kept only if every non-empty part has them."""
        parts = [p for p in parts if len(p)]
        if not parts:
            return Detections.empty()
        with_masks = all(p.masks is not None for p in parts)
        return Detections(
            xyxy=np.concatenate([p.xyxy for p in parts]).astype(np.float32, copy=False),
            score=np.concatenate([p.score for p in parts]).astype(np.float32, copy=False),
            class_id=np.concatenate([p.class_id for p in parts]).astype(np.int32, copy=False),
            source=np.concatenate([p.source for p in parts]).astype(np.int32, copy=False),
            masks=tuple(m for p in parts for m in (p.masks or ())) if with_masks else None,
            mask_xyxy=np.concatenate([p.mask_xyxy for p in parts if p.mask_xyxy is not None]) if with_masks else None,
        )


@dataclass(frozen=True, slots=True)
class DensityMap:
    """A crowd density map of the whole frame.

    ``density``: (H', W') float32, people per cell; cell (r, c) covers frame pixels
    ``[c*stride, (c+1)*stride) x [r*stride, (r+1)*stride)``. The map may extend past the frame's
    right/bottom edge (padding), where it is zero. ``count`` is ``density.sum()``.
    """

    density: NDArray[np.float32]
    stride: int
    contrast: NDArray[np.float32] | None = None
    """(H', W') float32 or None: std of the grey level (0..255) of each cell's pixels (0 past the
    frame edge); a flat cell cannot hold a person. None where the branch did not measure it."""

    def __post_init__(self) -> None:
        _check_shape("DensityMap.density", self.density, (None, None))
        if self.contrast is not None and self.contrast.shape != self.density.shape:
            raise ValueError(f"DensityMap.contrast: expected shape {self.density.shape}, got {self.contrast.shape}")
        if self.stride <= 0:
            raise ValueError(f"DensityMap.stride: expected a positive int, got {self.stride}")

    @property
    def count(self) -> float:
        return float(self.density.sum(dtype=np.float64))

    def integral(self, x0: float, y0: float, x1: float, y1: float) -> float:
        """People in the frame rectangle ``[x0, x1) x [y0, y1)``, by whole cells (cell centre inside)."""
        s = self.stride
        h, w = self.density.shape
        c0 = int(np.clip(np.ceil(x0 / s - 0.5), 0, w))
        c1 = int(np.clip(np.ceil(x1 / s - 0.5), 0, w))
        r0 = int(np.clip(np.ceil(y0 / s - 0.5), 0, h))
        r1 = int(np.clip(np.ceil(y1 / s - 0.5), 0, h))
        return float(self.density[r0:r1, c0:c1].sum(dtype=np.float64))


@dataclass(frozen=True, slots=True)
class DensityCalibration:
    """The density calibration in force for one frame (``pipeline.density_calibration``).

    People = ``scale`` x foreground density + ``offset`` per region, where the foreground is the raw
    map clamped at 0, less the learnt background floor, with flat cells zeroed. ``scale`` and
    ``offset`` are the global fit (per-region scales are ``region_scale``, (rows, cols) float32, the
    hybrid's regions). ``source`` says where the global figures come from: ``"fit"`` (``samples``
    region samples of reliable detections, of ``frames`` density frames) or ``"prior"`` (too few
    samples: the configured prior scale). ``background`` and ``flat`` are the raw people removed
    this frame as learnt background and as flat cells; ``raw`` the raw integral (clamped at 0).
    """

    scale: float
    offset: float
    samples: int
    frames: int
    source: str
    raw: float
    background: float
    flat: float
    region_scale: NDArray[np.float32] = field(default_factory=lambda: np.zeros((0, 0), np.float32))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "scale": self.scale, "offset": self.offset, "samples": self.samples, "frames": self.frames,
            "source": self.source, "raw": self.raw, "background": self.background, "flat": self.flat,
            "region_scale": self.region_scale.tolist(),
        }


@dataclass(frozen=True, slots=True)
class CountResult:
    """People counts of one frame, or why they are unknown.

    ``detection``: people from the merged detections; ``density``: the density integral;
    ``fused``: the count of the configured ``policy``. Each is None when unknown: a count is never
    0 for "unknown". ``unknown_reason`` says why ``fused`` is None (``late: yolo_tiles``,
    ``dropped: yolo_tiles (queue full)``, ``failed: density``, ``warming up``, ``stale: ...``).
    ``regions`` holds the hybrid decision per region: (rows, cols) arrays of the count used and of
    the source used (``region_source``: 1 = density, 0 = detections); empty when unknown.
    ``zones`` maps zone name to its fused count (None when unknown).
    """

    detection: int | None
    density: float | None
    fused: float | None
    policy: str
    region_counts: NDArray[np.float32] = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    region_source: NDArray[np.int8] = field(default_factory=lambda: np.zeros((0, 0), np.int8))
    zones: Mapping[str, float | None] = field(default_factory=dict)
    unknown_reason: str | None = None
    calibration: DensityCalibration | None = None
    """How ``density`` was made from the raw map (None: no density map, or calibration off, and
    then ``density`` is the raw integral clamped at 0)."""
    tracking: Any = None
    """The frame's ``pipeline.tracking.TrackedFrame`` when tracking is on (tracks with ids, trails
    and static flags, the confirmed count, line totals, zone occupancy), else None. With tracking,
    ``fused`` counts confirmed, counted tracks and ``detection`` stays the raw detection count."""

    def __post_init__(self) -> None:
        if self.region_counts.shape != self.region_source.shape:
            raise ValueError(
                f"CountResult: region_counts {self.region_counts.shape} and region_source "
                f"{self.region_source.shape} must have the same shape"
            )
        if (self.fused is None) != (self.unknown_reason is not None):
            raise ValueError(
                f"CountResult: fused={self.fused!r} with unknown_reason={self.unknown_reason!r}; "
                "a count is either a number or unknown with a reason"
            )

    @property
    def known(self) -> bool:
        return self.fused is not None

    @classmethod
    def unknown(cls, reason: str, policy: str, zone_names: tuple[str, ...] = ()) -> CountResult:
        """A count that cannot be given for this frame, and why."""
        return cls(
            detection=None, density=None, fused=None, policy=policy,
            zones=dict.fromkeys(zone_names), unknown_reason=reason,
        )


def late_branches(missing: Mapping[str, str]) -> tuple[str, ...]:
    """The branches of ``missing`` that were late (STRICT_SYNC timeout), in its order."""
    return tuple(b for b, why in missing.items() if why == "late")


def missing_reason(missing: Mapping[str, str]) -> str:
    """One line naming each missing branch and why: ``late: yolo_tiles; dropped: density (queue
    full)``. ``missing`` maps branch to fusion's reason (``late``, ``dropped (queue full)``,
    ``failed: <error>``, ``warming up``, ``stale: <detail>``)."""
    parts = []
    for b, why in sorted(missing.items()):
        kind, _, detail = why.partition(": ")
        if not detail and " (" in kind:
            kind, _, rest = kind.partition(" (")
            detail = rest.rstrip(")")
        parts.append(f"{kind}: {b}" + (f" ({detail})" if detail else ""))
    return "; ".join(parts)


@dataclass(frozen=True, slots=True)
class BranchTimings:
    """One branch's work on one frame: milliseconds by stage (``preprocess_ms``,
    ``inference_model_<name>_ms``, ``prepare_batch_ms``, ``enqueue_ms``, ``stream_sync_ms``,
    ``postprocess_ms``, ``run_ms``). ``frame_index`` is the frame the work was done on;
    ``done_ts`` the clock time the branch finished it (``BranchResult.done_ts``; throughput)."""

    branch: str
    frame_index: int
    stages: Mapping[str, float]
    done_ts: float = 0.0


@dataclass(frozen=True, slots=True)
class FrameTimings:
    """What the orchestrator measured for a frame before fusion: how long the worker waited for it
    (``decode_ms``: decode, and pacing of a live source) and each branch queue's depth when the
    frame was handed to fusion (after it entered the queues that took it; under the WaitForRoom
    policy, which hands the frame to fusion first, before)."""

    decode_ms: float | None = None
    queue_depths: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class StageTimings:
    """The timings a publication carries, each attached to the frame it belongs to.

    ``frame_index`` is the published frame; ``frame`` and the fusion figures (``fusion_wait_ms``,
    ``wait_for_ms`` per scheduled branch, ``overlay_lag_ms`` per branch, ``end_to_end_ms``) belong
    to it. ``branches`` is the branch work this publication reports, once per (branch, frame) over
    a run, each naming its own frame: under STRICT_SYNC and in metadata records, the frame's own
    work plus that of late results which arrived since (on their older frames); under
    ASYNC_OVERLAY, the work of the frames finalized since the previous publication (its overlays
    come from them). A cost is never credited to another frame.
    Fusion latencies are kept apart from work. Times are milliseconds; None is "not measured".
    """

    frame_index: int
    frame: FrameTimings = field(default_factory=FrameTimings)
    branches: tuple[BranchTimings, ...] = ()
    count_ms: Mapping[int, float] = field(default_factory=dict)
    """frame index -> what counting that frame took on the fusion thread (merge, tracker, density
    calibration, counts), reported once per frame like branch work: ``count_ms`` in ``by_frame()``."""
    fusion_wait_ms: float | None = None
    wait_for_ms: Mapping[str, float] = field(default_factory=dict)
    overlay_lag_ms: Mapping[str, float] = field(default_factory=dict)
    end_to_end_ms: float | None = None

    def waited_on(self) -> str | None:
        """The branch that made this frame wait longest (STRICT_SYNC; None when nothing was waited for)."""
        if not self.wait_for_ms or max(self.wait_for_ms.values()) <= 0.0:
            return None  # nothing was waited for
        return max(self.wait_for_ms, key=lambda b: self.wait_for_ms[b])

    def by_frame(self) -> dict[int, dict[str, float]]:
        """The figures under their telemetry names, grouped by the frame each belongs to.

        The published frame gets ``decode_ms``, ``queue_depth_<branch>``, ``fusion_wait_ms``,
        ``wait_for_<branch>_ms``, ``overlay_lag_<branch>_ms`` and ``overlay_lag_ms`` (the largest),
        ``end_to_end_ms``; each counted frame gets ``count_ms``. Each branch's work goes to its own frame as ``<branch>.<stage>`` and,
        summed over the branches of that frame, plain ``<stage>`` (the work spent on the frame).
        This is what SQLite stores (``frame_timings`` rows) and what summaries are made of.
        """
        own: dict[str, float] = {}
        f = self.frame
        if f.decode_ms is not None:
            own["decode_ms"] = f.decode_ms
        for b, depth in f.queue_depths.items():
            own[f"queue_depth_{b}"] = float(depth)
        out: dict[int, dict[str, float]] = {self.frame_index: own}
        for bt in self.branches:
            row = out.setdefault(bt.frame_index, {})
            for k, v in bt.stages.items():
                row[f"{bt.branch}.{k}"] = float(v)
                row[k] = row.get(k, 0.0) + float(v)
        for idx, ms in self.count_ms.items():
            out.setdefault(idx, {})["count_ms"] = float(ms)
        if self.fusion_wait_ms is not None:
            own["fusion_wait_ms"] = self.fusion_wait_ms
        for b, v in self.wait_for_ms.items():
            own[f"wait_for_{b}_ms"] = v
        for b, v in self.overlay_lag_ms.items():
            own[f"overlay_lag_{b}_ms"] = v
        if self.overlay_lag_ms:
            own["overlay_lag_ms"] = max(self.overlay_lag_ms.values())
        if self.end_to_end_ms is not None:
            own["end_to_end_ms"] = self.end_to_end_ms
        return out

    def flat(self) -> dict[str, float]:
        """Every figure under its telemetry name in one dict (for display; the published frame's
        figures win a name clash with an older frame's work): the UI's charts and progress line."""
        merged: dict[str, float] = {}
        groups = self.by_frame()
        for idx in sorted(groups, key=lambda i: i == self.frame_index):
            merged.update(groups[idx])
        return merged


@dataclass(frozen=True, slots=True)
class BranchResult:
    """What one branch produced for one frame.

    ``detections`` for YOLO branches, ``density`` for density branches; ``error`` is set (and both
    are None) when the branch failed on this frame. ``timings`` are the branch's own stages in
    milliseconds (``preprocess_ms``, ``inference_model_<name>_ms``, ``prepare_batch_ms``,
    ``enqueue_ms``, ``stream_sync_ms``, ``postprocess_ms``; the orchestrator adds ``run_ms``);
    fusion reports them as :class:`BranchTimings` of this frame. ``done_ts`` is ``perf_counter()``
    at completion.
    """

    frame: FrameMeta
    branch: str
    detections: Detections | None = None
    density: DensityMap | None = None
    timings: Mapping[str, float] = field(default_factory=dict)
    done_ts: float = 0.0
    error: str | None = None
    tile_rects: NDArray[np.float32] | None = None
    """(N, 4) frame rectangles (xyxy) of the tiles the branch ran on (tiled branches), so the
    merge knows tile edges and the UI can assemble masks without seams."""


@dataclass(frozen=True, slots=True)
class OverlayInfo:
    """Where one branch's part of a published result came from: its frame and its age."""

    branch: str
    frame_index: int
    lag_ms: float
    """Age of the overlay: publish time minus the decode time of the frame it was computed on."""


@dataclass(frozen=True, slots=True)
class FusedResult:
    """What the pipeline publishes for one frame.

    ``frame_image`` is the RGB host image (H, W, 3) uint8 when the consumer asked for pixels, else
    None. ``overlays`` tells, per branch, which frame its part came from and how old it is.

    The count contract: ``counts`` is the count of ``counts_frame_index`` (the frame itself under
    STRICT_SYNC; under ASYNC_OVERLAY the newest finalized frame with a known count, None before the first), made of
    that frame's results, ``counts_age_ms`` old at publication; or it is unknown
    (``counts.fused is None``) with its reason. ``missing`` names the branches whose result for
    the counted frame is absent, and why (``late``, ``dropped (queue full)``, ``failed: ...``);
    ``partial`` is ``bool(missing)`` and ``late_branches`` the ``late`` ones. A ``raw`` publication
    (RAW_STREAM_WITH_METADATA) carries no counts at all: they follow in its :class:`MetadataRecord`.
    """

    frame: FrameMeta
    strategy: str
    detections: Detections
    density: DensityMap | None
    counts: CountResult
    timings: StageTimings
    overlays: tuple[OverlayInfo, ...] = ()
    missing: Mapping[str, str] = field(default_factory=dict)
    frame_image: NDArray[np.uint8] | None = None
    tile_rects: NDArray[np.float32] | None = None
    counts_frame_index: int | None = None
    counts_age_ms: float | None = None
    raw: bool = False

    @property
    def partial(self) -> bool:
        return bool(self.missing)

    @property
    def late_branches(self) -> tuple[str, ...]:
        return late_branches(self.missing)


@dataclass(frozen=True, slots=True)
class WorkRecord:
    """Branch work that no publication reported: results that finished after the last frame was
    published (ASYNC_OVERLAY publishes each frame at once, so the work of the last frames ends up
    here at the end of a run). ``timings.branches`` holds the work, each item on its own frame;
    ``timings.frame_index`` is the newest of those frames and carries no figures of its own."""

    timings: StageTimings


@dataclass(frozen=True, slots=True)
class TrackingRecord:
    """What tracking produced on one finalized frame, published once per frame whatever the
    strategy, so that each line crossing and zone exit is stored exactly once: ``tracking`` is the
    frame's ``pipeline.tracking.TrackedFrame`` (its ``crossings``, ``zone_exits``, ``line_counts``
    after the frame, ``occupancy``, and the tracks with their static flags)."""

    stream_id: str
    frame_index: int
    pts: float
    tracking: Any


# --------------------------------------------------------------------------------------------
# The metadata record of RAW_STREAM_WITH_METADATA, and its compact masks
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


def counts_to_dict(c: CountResult) -> dict[str, Any]:
    """JSON-ready counts; unknown numbers are null, with ``unknown_reason``."""
    return {
        "detection": c.detection,
        "density": c.density,
        "fused": c.fused,
        "policy": c.policy,
        "unknown_reason": c.unknown_reason,
        "region_counts": c.region_counts.tolist(),
        "region_source": c.region_source.tolist(),
        "zones": dict(c.zones),
        "calibration": None if c.calibration is None else c.calibration.to_dict(),
    }


@dataclass(frozen=True, slots=True)
class MetadataRecord:
    """The branch data of one frame, published apart from the frame (RAW_STREAM_WITH_METADATA).

    Joins its frame publication on ``(stream_id, frame_index, pts)``. ``counts`` follow the count
    contract of :class:`FusedResult` for this very frame. Detections are in frame pixels (``xyxy``
    (N, 4) float32, ``score`` (N,) float32, ``class_id`` / ``source`` (N,) int32); masks, when the
    model has them, are :class:`MaskRLE` encodings of the masks of :class:`Detections` (mask i
    covers ``mask_xyxy[i]``). All host data.
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
    timings: StageTimings
    overlays: tuple[OverlayInfo, ...] = ()
    missing: Mapping[str, str] = field(default_factory=dict)
    counts_age_ms: float | None = None

    @property
    def partial(self) -> bool:
        return bool(self.missing)

    @property
    def late_branches(self) -> tuple[str, ...]:
        return late_branches(self.missing)

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
        return {
            "stream_id": self.stream_id,
            "frame_index": self.frame_index,
            "pts": self.pts,
            "counts": counts_to_dict(self.counts),
            "counts_age_ms": self.counts_age_ms,
            "detections": {
                "xyxy": self.xyxy.tolist(),
                "score": self.score.tolist(),
                "class_id": self.class_id.tolist(),
                "source": self.source.tolist(),
                "mask_xyxy": None if self.mask_xyxy is None else self.mask_xyxy.tolist(),
                "masks_rle": None if self.masks_rle is None else [r.to_dict() for r in self.masks_rle],
            },
            "density": None if self.density is None else self.density.to_dict(),
            "timings": {str(k): v for k, v in self.timings.by_frame().items()},
            "overlays": [{"branch": o.branch, "frame_index": o.frame_index, "lag_ms": o.lag_ms} for o in self.overlays],
            "partial": self.partial,
            "missing": dict(self.missing),
        }
