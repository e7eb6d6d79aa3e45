"""The data that flows through the pipeline.

Frozen dataclasses of NumPy arrays, validated in ``__post_init__``. Everything here is host data
except ``Frame.image`` and ``PreprocessOutput.tensor``, which may be CuPy arrays on the GPU path
(they never leave the GPU worker). Coordinates are ``xyxy`` in frame pixels unless a name says
otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from pipeline.geometry import PreprocessPlan

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

    ``pts`` is in seconds (stream time base applied); ``decode_ts`` is ``time.perf_counter()``
    when the frame left the decoder, the origin of ``end_to_end_ms``.
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
    """

    meta: FrameMeta
    image: Any
    layout: Literal["rgb", "nv12"] = "rgb"
    device: Literal["cpu", "gpu"] = "cpu"

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

    def __post_init__(self) -> None:
        _check_shape("DensityMap.density", self.density, (None, None))
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


RegionSource = Literal["detections", "density"]


@dataclass(frozen=True, slots=True)
class CountResult:
    """People counts of one frame.

    ``detection``: merged detections; ``density``: density integral (None when no density map is
    available for this frame); ``fused``: the count of the configured policy. ``regions`` holds the
    hybrid decision per region: (rows, cols) arrays of the count used and of the source used
    (``region_source``: 1 = density, 0 = detections). ``zones`` maps zone name to fused count.
    """

    detection: int
    density: float | None
    fused: float
    policy: str
    region_counts: NDArray[np.float32] = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    region_source: NDArray[np.int8] = field(default_factory=lambda: np.zeros((0, 0), np.int8))
    zones: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.region_counts.shape != self.region_source.shape:
            raise ValueError(
                f"CountResult: region_counts {self.region_counts.shape} and region_source "
                f"{self.region_source.shape} must have the same shape"
            )


@dataclass(frozen=True, slots=True)
class BranchResult:
    """What one branch produced for one frame.

    ``detections`` for YOLO branches, ``density`` for density branches; ``error`` is set (and both
    are None) when the branch failed on this frame. ``timings`` are milliseconds by telemetry name
    (``preprocess_ms``, ``inference_model_<name>_ms``, ``prepare_batch_ms``, ``enqueue_ms``,
    ``stream_sync_ms``, ``postprocess_ms``). ``done_ts`` is ``perf_counter()`` at completion.
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
    None. ``partial`` is True when STRICT_SYNC timed out waiting for ``late_branches``.
    ``overlays`` tells, per branch, which frame its part came from and how old it is.
    ``counts_frame_index`` is the frame whose fused set of branch results ``counts`` was computed
    from: the frame itself under STRICT_SYNC, the latest finalized frame under ASYNC_OVERLAY, and
    None when ``counts`` carries no count (a raw RAW_STREAM_WITH_METADATA frame, or ASYNC_OVERLAY
    before its first finalized frame); a sink that stores counts skips results where it is None.
    """

    frame: FrameMeta
    strategy: str
    detections: Detections
    density: DensityMap | None
    counts: CountResult
    timings: Mapping[str, float]
    overlays: tuple[OverlayInfo, ...] = ()
    partial: bool = False
    late_branches: tuple[str, ...] = ()
    frame_image: NDArray[np.uint8] | None = None
    tile_rects: NDArray[np.float32] | None = None
    counts_frame_index: int | None = None
