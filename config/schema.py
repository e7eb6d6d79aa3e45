"""Pydantic schema of ``config/pipeline.yaml`` and ``config/log.yaml``.

Every model forbids unknown keys, so a typo is an error that names the key path. Defaults here and
in the shipped ``config/pipeline.yaml`` agree (a test checks it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FusionStrategyName(StrEnum):
    """How branch results are combined and published (switchable at run time)."""

    STRICT_SYNC = "STRICT_SYNC"
    ASYNC_OVERLAY = "ASYNC_OVERLAY"
    RAW_STREAM_WITH_METADATA = "RAW_STREAM_WITH_METADATA"


class StreamConfig(_Strict):
    id: str = Field("cam0", description="Stream id, stored with every frame and count.")
    uri: str = Field(
        ...,
        description="Video file path, rtsp:// / http(s):// URL, or synthetic://WxH[?frames=N] for tests.",
    )
    decoder: Literal["pyav", "nvdec", "synthetic"] = Field(
        "pyav", description="pyav: CPU decode (files, RTSP, HTTP); nvdec: GPU decode; synthetic: tests."
    )
    loop: bool = Field(False, description="Restart a file source at its end (demos, soak tests).")
    realtime: bool = Field(
        False,
        description="Deliver a file at its frame rate, as a live camera would (latency measurements, the GUI); "
        "off, a file is read as fast as the pipeline takes it. Network streams are live anyway.",
    )
    reconnect_attempts: int | None = Field(
        None,
        ge=0,
        description="Reconnects tried per outage of a network stream (not up at start, dropped, ended, stalled) "
        "before giving up; null: never give up (the default: a live source is waited for).",
    )
    reconnect_backoff_s: float = Field(
        1.0, ge=0, description="First wait before a reconnect, seconds; doubled per attempt, with jitter."
    )
    reconnect_backoff_max_s: float = Field(5.0, ge=0, description="Longest wait between reconnects, seconds.")
    open_timeout_s: float = Field(10.0, gt=0, description="Timeout to open a network stream, seconds.")
    stall_timeout_s: float = Field(
        10.0,
        gt=0,
        description="A connected network stream that delivers no frame this long is stalled: reported "
        "(stream_stalled) and reconnected, seconds.",
    )

    @model_validator(mode="after")
    def _check_backoff(self) -> StreamConfig:
        if self.reconnect_backoff_max_s < self.reconnect_backoff_s:
            raise ValueError(
                f"reconnect_backoff_max_s ({self.reconnect_backoff_max_s}) is below reconnect_backoff_s "
                f"({self.reconnect_backoff_s})"
            )
        return self


class ModelConfig(_Strict):
    path: str = Field(..., description="ONNX file (onnxruntime) or the ONNX an engine is built from (tensorrt).")
    kind: Literal["yolo", "density"] = Field(..., description="yolo: person detector/segmenter; density: crowd density CNN.")
    head: Literal["auto", "v8_detect", "v8_seg", "e2e_detect", "e2e_seg"] = Field(
        "auto",
        description="YOLO output head: v8_* for YOLOv8/11 [B,4+nc(+32),A]; e2e_* for YOLO26 [B,300,6|38]; auto reads the shapes.",
    )
    person_classes: list[int] = Field(
        default_factory=lambda: [0],
        description="Class ids that count as a person (each below the model's class count; checked at load).",
    )
    score_threshold: float = Field(0.35, ge=0, le=1, description="Minimum class score kept.")
    iou_threshold: float = Field(0.5, ge=0, le=1, description="NMS IoU threshold (v8 heads; e2e heads need no NMS).")
    max_detections: int = Field(300, gt=0, description="Detections kept per image after NMS.")
    output_stride: int = Field(8, gt=0, description="Density models: input pixels per output cell.")
    density_scale: float = Field(1.0, gt=0, description="Density models: multiply the output by this to get people.")

    @model_validator(mode="after")
    def _check_person_classes(self) -> ModelConfig:
        # Ids above the model's class count are refused at load, where the outputs are known
        # (app.build.check_model_outputs); what needs no model is checked here.
        negative = [c for c in self.person_classes if c < 0]
        if negative:
            raise ValueError(f"person_classes {self.person_classes}: class ids start at 0; {negative} are negative")
        if len(set(self.person_classes)) != len(self.person_classes):
            raise ValueError(f"person_classes {self.person_classes}: an id is given twice")
        if self.kind == "yolo" and not self.person_classes:
            raise ValueError("person_classes is empty: a YOLO model would count no one; give the person class ids, e.g. [0]")
        return self


class OnnxRuntimeConfig(_Strict):
    providers: list[str] = Field(
        default_factory=lambda: ["CPUExecutionProvider"],
        description="ONNX Runtime execution providers in order, e.g. [CUDAExecutionProvider] on a GPU.",
    )
    intra_op_threads: int = Field(
        0, ge=0, description="CPU threads per session (0: the cores split over the enabled branches, app.build.intra_op_threads)."
    )
    cpu_batch: int = Field(
        1, ge=0,
        description="CPU sessions run a batch in calls of at most this many images (0: the whole batch in one call). "
        "The detector on 2 cores: 116 ms an image in calls of 1, 164 ms in one call of 33 (docs/BENCHMARKS.md).",
    )


class TensorRTConfig(_Strict):
    engine_dir: str = Field(".cache/engines", description="Where built engines are stored.")
    precision: Literal["fp32", "fp16", "int8"] = Field("fp16", description="Engine precision.")
    calibration_frames: int = Field(64, gt=0, description="Frames drawn from the stream for INT8 calibration.")
    cuda_graphs: bool = Field(True, description="Capture static-shape inference in CUDA graphs.")
    workspace_mib: int = Field(2048, gt=0, description="Builder workspace limit, MiB.")


class BackendConfig(_Strict):
    name: Literal["tensorrt", "onnxruntime"] = Field(
        "onnxruntime", description="Inference backend. tensorrt is production; onnxruntime the explicit second backend."
    )
    device: Literal["cpu", "gpu"] = Field("cpu", description="Where frames and tensors live: cpu (NumPy) or gpu (CuPy).")
    onnxruntime: OnnxRuntimeConfig = Field(default_factory=OnnxRuntimeConfig, description="ONNX Runtime settings.")
    tensorrt: TensorRTConfig = Field(default_factory=TensorRTConfig, description="TensorRT settings.")


class InputSpecConfig(_Strict):
    kind: Literal["letterbox", "tiles", "grid"] = Field(
        ..., description="letterbox: whole frame scaled into one tensor; tiles: overlapping full-size crops; grid: non-overlapping crops, frame padded."
    )
    width: int = Field(640, gt=0, description="Tensor width, pixels.")
    height: int = Field(640, gt=0, description="Tensor height, pixels.")
    overlap: float = Field(0.2, ge=0, lt=1, description="tiles: fraction of a tile shared with its neighbour.")
    dtype: Literal["float32", "float16"] = Field("float32", description="Tensor dtype the model expects.")
    mean: tuple[float, float, float] = Field((0.0, 0.0, 0.0), description="Per-channel mean subtracted after scaling to 0..1 (RGB).")
    std: tuple[float, float, float] = Field((1.0, 1.0, 1.0), description="Per-channel std divided after the mean (RGB).")
    pad_value: int = Field(114, ge=0, le=255, description="Pixel value (0..255) of padding, before normalisation.")
    upscale: float = Field(
        1.0, ge=1.0, le=8.0,
        description="grid only: each cell shows width/upscale x height/upscale frame pixels resized (bilinear) to "
        "width x height, so small people look bigger to the density model (upscale^2 times the cells and the "
        "compute); the density map stays in frame pixels and counts people, not upscaled pixels. 1: plain crops.",
    )

    @field_validator("upscale")
    @classmethod
    def _check_upscale(cls, value: float, info: ValidationInfo) -> float:
        kind = info.data.get("kind")
        if value != 1.0 and kind != "grid":
            raise ValueError(
                f"upscale {value:g} is only for inputs of kind grid (this one is {kind}); remove upscale or set it to 1.0"
            )
        return value

    @model_validator(mode="after")
    def _check_std(self) -> InputSpecConfig:
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std must be positive, got {self.std}")
        return self


class BranchConfig(_Strict):
    model: str = Field(..., description="Key in `models`.")
    input: str | list[str] = Field(
        ...,
        description="Key in `preprocess`, or a list of keys run through the model in ONE call (e.g. "
        "[yolo_global, yolo_tiles]: the frame and its 32 tiles as one batch of 33).",
    )
    enabled: bool = Field(True, description="Run this branch.")
    every_n_frames: int = Field(1, ge=1, description="Run on every n-th frame (e.g. density every 5th).")
    @property
    def inputs(self) -> tuple[str, ...]:
        """The preprocess specs of this branch, in batch order."""
        return (self.input,) if isinstance(self.input, str) else tuple(self.input)

    spread: bool = Field(
        False,
        description="Density grids: run 1/every_n_frames of the tiles on every frame instead of all tiles on every "
        "n-th frame (same work, no burst that makes every n-th frame late; the map mixes tiles up to n-1 frames old).",
    )


class DensityCalibrationConfig(_Strict):
    """How the raw density map becomes people (``pipeline.density_calibration``): background removed,
    then scaled by a fit against the detections where detection is reliable, online, per region."""

    enabled: bool = Field(True, description="Calibrate the density map; off: the raw map (clamped at 0) is counted as it is.")
    min_contrast: float = Field(
        2.0, ge=0,
        description="Cells whose 3x3-cell neighbourhood has no cell with a grey-level std (0..255) above this are flat "
        "(a blank wall, a canvas): density 0 there. 0: off.",
    )
    static_frames: int = Field(
        3, ge=1,
        description="A cell whose density did not change and held no detection over this many density frames is "
        "background: its density is learnt as the floor subtracted from it.",
    )
    change_tolerance: float = Field(
        0.5, ge=0,
        description="Relative change of a cell's density (3x3 cells, against the previous density frame) below which it did not change.",
    )
    background_rate: float = Field(
        0.5, gt=0, le=1, description="Weight of a new static frame in a cell's background floor (a running mean)."
    )
    min_box_height_px: float = Field(
        100.0, gt=0,
        description="Detections are reliable where people are this tall or taller (median box height of a region): only "
        "there are they used to fit the density scale, and there the hybrid counts them whatever the density says.",
    )
    max_reliable_people_per_mpx: float = Field(
        60.0, gt=0, description="...and where the region holds at most this many detections per megapixel (sparse)."
    )
    window: int = Field(
        512, ge=8, description="Region samples (detections vs density) kept for the fit, newest first (bounded memory)."
    )
    min_samples: int = Field(
        8, ge=1, description="Samples a fit needs; a region with fewer uses the global fit, and with fewer globally the prior."
    )
    fit_range_factor: float = Field(
        2.0, ge=1,
        description="A region without a fit of its own takes the global fit only where its foreground density is at "
        "most this many times the densest fitted sample's; a denser crowd (smaller people than where detection is "
        "reliable) keeps prior_scale: a calibration is not extrapolated beyond what it saw.",
    )
    prior_scale: float = Field(
        1.0, gt=0,
        description="People per unit of foreground density before any fit (the model as trained: CSRNet's weights are "
        "for dense crowds of small people, where it is about right).",
    )
    scale_range: tuple[float, float] = Field(
        (0.05, 5.0), description="A fitted scale is clipped to [low, high] (a degenerate fit never zeroes or explodes the map)."
    )

    @model_validator(mode="after")
    def _check_range(self) -> DensityCalibrationConfig:
        lo, hi = self.scale_range
        if not 0 < lo <= self.prior_scale <= hi:
            raise ValueError(f"scale_range {list(self.scale_range)} must be positive and hold prior_scale {self.prior_scale}")
        return self


class HybridConfig(_Strict):
    region_rows: int = Field(3, ge=1, description="Rows of the region grid the hybrid count decides on.")
    region_cols: int = Field(6, ge=1, description="Columns of the region grid.")
    dense_people_per_mpx: float = Field(
        20.0, gt=0, description="A region whose (calibrated) density integral exceeds this many people per megapixel may count by density..."
    )
    min_density_people: float = Field(
        3.0, ge=0, description="...and whose density integral is at least this many people (avoids noise in empty regions)..."
    )
    saturation_ratio: float = Field(
        1.5, ge=1,
        description="...and at least this many times its detections: density counts only where detection saturates "
        "(where the two agree, the detections count).",
    )
    calibration: DensityCalibrationConfig = Field(
        default_factory=DensityCalibrationConfig, description="Density calibration: background floor and online scale fit."
    )


class MergeConfig(_Strict):
    ios_threshold: float = Field(0.6, gt=0, le=1, description="Intersection over smaller above which two detections are one person.")
    edge_margin_px: int = Field(4, ge=0, description="A box this close to a tile edge (inside the frame) is cut by the tile.")


def _polygon_area(polygon: Sequence[tuple[float, float]]) -> float:
    """Shoelace area of a polygon (absolute value; a self-crossing one's parts may cancel)."""
    xs = [p[0] for p in polygon]
    ys = [p[1] for p in polygon]
    n = len(polygon)
    return abs(sum(xs[i] * ys[(i + 1) % n] - xs[(i + 1) % n] * ys[i] for i in range(n))) / 2


class ZoneConfig(_Strict):
    """A named polygon counted apart. Its points are frame pixels (``units: pixels``) or fractions
    of the frame's width and height (``units: normalized``, 0..1, for any resolution).

    A pixel polygon with ``frame_size`` is scaled to the frame when the stream's resolution differs
    from it; without ``frame_size`` it is used as written and must lie inside the frame (checked on
    every frame: an error names the zone and the frame size otherwise).
    """

    name: str = Field(..., min_length=1, description="Zone name shown in counts; unique among the zones.")
    polygon: list[tuple[float, float]] = Field(
        ..., min_length=3, description="Polygon [[x, y], ...], at least 3 points enclosing an area; in `units`."
    )
    units: Literal["pixels", "normalized"] = Field(
        "pixels",
        description="pixels: frame pixels; normalized: fractions 0..1 of the frame width and height (any resolution).",
    )
    frame_size: tuple[int, int] | None = Field(
        None,
        description="pixels only: [width, height] of the frame the polygon was drawn on; at another resolution the "
        "polygon is scaled to the frame. null: used as written, and it must lie inside the frame.",
    )

    @model_validator(mode="after")
    def _check_polygon(self) -> ZoneConfig:
        bad = [list(p) for p in self.polygon if not all(math.isfinite(v) for v in p)]
        if bad:
            raise ValueError(f"zone {self.name!r}: polygon points must be finite numbers; got {bad}")
        xs = [p[0] for p in self.polygon]
        ys = [p[1] for p in self.polygon]
        extent = (max(xs) - min(xs)) * (max(ys) - min(ys))
        # relative to its bounding box, so that rounding of collinear points does not pass
        if extent <= 0 or _polygon_area(self.polygon) <= 1e-9 * extent:
            raise ValueError(
                f"zone {self.name!r}: polygon {[list(p) for p in self.polygon]} encloses no area (its points are "
                "collinear or repeated, or it crosses itself so that its parts cancel)"
            )
        if self.units == "normalized":
            if self.frame_size is not None:
                raise ValueError(f"zone {self.name!r}: frame_size is for units: pixels; a normalized polygon fits any frame")
            limit: tuple[float, float] = (1.0, 1.0)
        elif self.frame_size is not None:
            if min(self.frame_size) <= 0:
                raise ValueError(f"zone {self.name!r}: frame_size {list(self.frame_size)} must be positive [width, height]")
            limit = (float(self.frame_size[0]), float(self.frame_size[1]))
        else:
            limit = (math.inf, math.inf)
        outside = [list(p) for p in self.polygon if not (0 <= p[0] <= limit[0] and 0 <= p[1] <= limit[1])]
        if outside:
            frame = {
                "normalized": "the frame (normalized units are 0..1)",
                "pixels": f"the {limit[0]:g}x{limit[1]:g} frame_size" if self.frame_size else "the frame (x, y >= 0)",
            }[self.units]
            raise ValueError(f"zone {self.name!r}: polygon points {outside} lie outside {frame}")
        return self


class CountingConfig(_Strict):
    policy: Literal["detections", "density", "hybrid"] = Field("hybrid", description="Which count is the fused count.")
    merge: MergeConfig = Field(default_factory=MergeConfig, description="Global/tile detection merging.")
    hybrid: HybridConfig = Field(default_factory=HybridConfig, description="Hybrid count settings.")
    zones: list[ZoneConfig] = Field(default_factory=list, description="Optional named zones counted apart.")

    @model_validator(mode="after")
    def _check_zone_names(self) -> CountingConfig:
        seen: dict[str, int] = {}
        for i, zone in enumerate(self.zones):
            if zone.name in seen:
                raise ValueError(
                    f"zones {seen[zone.name]} and {i} are both named {zone.name!r}: their counts would merge; "
                    "give each zone its own name"
                )
            seen[zone.name] = i
        return self


class LineConfig(_Strict):
    """A counting line: a segment from ``a`` to ``b`` and which side of it is "in".

    ``in_side`` is the side on the left or right hand of someone walking from ``a`` to ``b`` on the
    image as shown (x right, y down): for ``a`` at the bottom and ``b`` at the top of a vertical
    line, ``left`` is the screen's left. A track's feet (box bottom-centre) crossing into
    ``in_side`` count one "in", crossing out of it one "out". Points are frame pixels
    (``units: pixels``) or fractions 0..1 of the frame's width and height (``units: normalized``);
    a pixel line with ``frame_size`` is scaled to the frame when the stream's resolution differs.
    """

    name: str = Field(..., min_length=1, description="Line name shown with its in/out counts; unique among the lines.")
    a: tuple[float, float] = Field(..., description="First end [x, y], in `units`.")
    b: tuple[float, float] = Field(..., description="Second end [x, y], in `units`.")
    in_side: Literal["left", "right"] = Field(
        "left", description="Side that is 'in', as seen walking from a to b on the image (x right, y down)."
    )
    units: Literal["pixels", "normalized"] = Field(
        "pixels", description="pixels: frame pixels; normalized: fractions 0..1 of the frame width and height."
    )
    frame_size: tuple[int, int] | None = Field(
        None,
        description="pixels only: [width, height] of the frame the line was drawn on; at another resolution the line "
        "is scaled to the frame. null: used as written.",
    )

    @model_validator(mode="after")
    def _check_line(self) -> LineConfig:
        if not all(math.isfinite(v) for v in (*self.a, *self.b)):
            raise ValueError(f"line {self.name!r}: a and b must be finite numbers; got {list(self.a)}, {list(self.b)}")
        if self.a == self.b:
            raise ValueError(f"line {self.name!r}: a and b are the same point {list(self.a)}; a line needs two")
        if self.units == "normalized":
            if self.frame_size is not None:
                raise ValueError(f"line {self.name!r}: frame_size is for units: pixels; a normalized line fits any frame")
            outside = [list(p) for p in (self.a, self.b) if not (0 <= p[0] <= 1 and 0 <= p[1] <= 1)]
            if outside:
                raise ValueError(f"line {self.name!r}: points {outside} lie outside 0..1 (normalized units)")
        elif self.frame_size is not None and min(self.frame_size) <= 0:
            raise ValueError(f"line {self.name!r}: frame_size {list(self.frame_size)} must be positive [width, height]")
        return self


class TrackingConfig(_Strict):
    """People over time: tracks of the merged detections (ByteTrack), counts from confirmed tracks,
    static objects, line crossings, zone occupancy and dwell (``pipeline.tracking``)."""

    enabled: bool = Field(True, description="Track the merged detections and count from confirmed tracks.")
    min_confirm_frames: int = Field(
        3, ge=1, description="A track counts once it has been matched in this many frames (a one-frame false positive never counts)."
    )
    miss_hold_frames: int = Field(
        2, ge=0, description="A confirmed track missed for up to this many frames still counts (a one-frame miss does not drop the count)."
    )
    lost_track_s: float = Field(
        3.0, gt=0, description="A track unmatched this long (seconds of stream time) is ended; matched again before, it keeps its id."
    )
    max_gap_s: float = Field(
        0.5, gt=0,
        description="Tracks need frames close in time: when the tracker's previous frame is further back than this "
        "(seconds of stream time: a detector far slower than the stream), tracks cannot count that frame (nor the "
        "next min_confirm_frames): its count is its own detections, labelled so, never 0 for unconfirmed people.",
    )
    engine: Literal["arrays", "supervision"] = Field(
        "arrays",
        description="ByteTrack's implementation: arrays (pipeline.bytetrack: supervision 0.30's algorithm and ids on "
        "arrays, ~9x faster at 130 people) or supervision (its own ByteTrack, one Python object per track).",
    )
    match_threshold: float = Field(
        0.8, gt=0, le=1, description="ByteTrack's largest matching cost (1 - IoU, fused with the score) of a track and a detection."
    )
    activation_score: float = Field(
        0.25, ge=0, le=1,
        description="ByteTrack's track_activation_threshold: detections at or above it start and extend tracks "
        "(new tracks need 0.1 more); those in 0.1..it only extend existing tracks.",
    )
    static_after_s: float = Field(
        8.0, gt=0, description="A track whose centre stays within static_max_motion for this long (seconds) is static: not counted."
    )
    static_max_motion: float = Field(
        0.3, gt=0,
        description="Largest extent of a static track's centre motion over static_after_s, as a fraction of its box "
        "diagonal (a walker covers many diagonals in that time; the cloth's box jitters by 0.1-0.2 when people pass).",
    )
    static_allow: list[ZoneConfig] = Field(
        default_factory=list,
        description="Polygons where a static track still counts (a queue, a desk): a person standing still there is a person.",
    )
    exclude: list[ZoneConfig] = Field(
        default_factory=list,
        description="Polygons where nothing counts: a track whose feet are inside is left out of counts, lines and zones.",
    )
    lines: list[LineConfig] = Field(default_factory=list, description="Counting lines with in/out counts.")
    line_hysteresis: float = Field(
        0.1, ge=0,
        description="Feet within this distance of a line, as a fraction of the box height, are on neither side (jitter on the line counts no crossing).",
    )
    trail_length: int = Field(30, ge=1, description="Recent centres kept per track (the trail drawn behind it).")

    @model_validator(mode="after")
    def _check_names(self) -> TrackingConfig:
        names = [line.name for line in self.lines]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"lines named {twice} more than once: their counts would merge; give each line its own name")
        return self


class FusionConfig(_Strict):
    strategy: FusionStrategyName = Field(FusionStrategyName.ASYNC_OVERLAY, description="Initial fusion strategy.")
    strict_sync_timeout_ms: float = Field(500.0, gt=0, description="STRICT_SYNC publishes a frame as partial after this wait.")
    queue_size: int = Field(4, ge=1, description="Bound of every inter-thread queue (files read as fast as possible).")
    live_queue_size: int = Field(
        1,
        ge=1,
        description="Branch queue bound for live sources and realtime files: a frame that finds a due branch's queue "
        "full is dropped for all its due branches (so that the branches work on the same frames); a short queue keeps "
        "a slow branch on recent frames (latency <= about (live_queue_size + 1) x the slowest branch's time).",
    )
    stall_timeout_s: float = Field(30.0, gt=0, description="Watchdog: a branch silent this long is reported stalled.")
    max_count_age_ms: float = Field(
        2000.0,
        gt=0,
        description="ASYNC_OVERLAY: a published frame carries the counts of the latest finalized frame only while "
        "they are younger than this (publish time minus that frame's decode time); older, the count is unknown (stale).",
    )


class StorageConfig(_Strict):
    db_path: str = Field("runs/people.db", description="SQLite database file (WAL mode).")
    batch_size: int = Field(64, ge=1, description="Rows per insert batch.")
    flush_interval_s: float = Field(0.5, gt=0, description="Longest time a row waits before it is written.")


class TelemetryConfig(_Strict):
    warmup_frames: int = Field(5, ge=0, description="Frames skipped before statistics.")


class PipelineConfig(_Strict):
    streams: list[StreamConfig] = Field(
        ..., min_length=1,
        description="Video sources, ids unique. Headless runs them all at once (one run per stream in the database); "
        "the window and the bench take the first.",
    )
    models: dict[str, ModelConfig] = Field(..., description="Models by name.")
    backend: BackendConfig = Field(default_factory=BackendConfig, description="Inference backend.")
    preprocess: dict[str, InputSpecConfig] = Field(..., description="Model input specs by name.")
    branches: dict[str, BranchConfig] = Field(..., min_length=1, description="Model branches by name.")
    counting: CountingConfig = Field(default_factory=CountingConfig, description="Counting.")
    tracking: TrackingConfig = Field(default_factory=TrackingConfig, description="People over time: tracks, lines, dwell.")
    fusion: FusionConfig = Field(default_factory=FusionConfig, description="Fusion.")
    storage: StorageConfig = Field(default_factory=StorageConfig, description="Storage.")
    telemetry: TelemetryConfig = Field(default_factory=TelemetryConfig, description="Telemetry.")
    max_frames: int | None = Field(None, ge=1, description="Stop after this many frames (None: until the stream ends).")

    @model_validator(mode="after")
    def _check_references(self) -> PipelineConfig:
        ids = [st.id for st in self.streams]
        if len(set(ids)) != len(ids):
            dup = sorted({i for i in ids if ids.count(i) > 1})
            raise ValueError(f"streams: ids must be unique (each stream's counts are stored under its id); repeated: {dup}")
        for name, branch in self.branches.items():
            if branch.model not in self.models:
                raise ValueError(
                    f"branches.{name}.model: unknown model {branch.model!r}; known: {sorted(self.models)}"
                )
            for spec in branch.inputs:
                if spec not in self.preprocess:
                    raise ValueError(
                        f"branches.{name}.input: unknown preprocess spec {spec!r}; known: {sorted(self.preprocess)}"
                    )
            if not branch.inputs or len(set(branch.inputs)) != len(branch.inputs):
                raise ValueError(f"branches.{name}.input: give one spec or a list of distinct specs")
            if len(branch.inputs) > 1:
                kinds = [self.preprocess[i].kind for i in branch.inputs]
                if self.models[branch.model].kind != "yolo" or sorted(kinds) != ["letterbox", "tiles"]:
                    raise ValueError(
                        f"branches.{name}.input: one call over several specs is for a YOLO model on one letterbox "
                        f"and one tiles spec; got {dict(zip(branch.inputs, kinds, strict=True))}"
                    )
                sizes = {(self.preprocess[i].width, self.preprocess[i].height, self.preprocess[i].dtype) for i in branch.inputs}
                if len(sizes) != 1:
                    raise ValueError(f"branches.{name}.input: specs in one call need the same width, height and dtype")
        for name, branch in self.branches.items():
            if branch.spread and (
                self.models[branch.model].kind != "density" or [self.preprocess[i].kind for i in branch.inputs] != ["grid"]
            ):
                raise ValueError(f"branches.{name}.spread: only a density model on a grid input can be spread over frames")
        if not any(b.enabled for b in self.branches.values()):
            raise ValueError("branches: every branch is disabled; enable at least one")
        if self.backend.name == "tensorrt" and self.backend.device != "gpu":
            raise ValueError("backend.device: tensorrt needs device: gpu (or set backend.name: onnxruntime for the CPU)")
        return self


class LogConfig(_Strict):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Root log level.")
    format: str = Field(
        "%(asctime)s %(levelname)-7s %(name)s: %(message)s", description="logging format string."
    )
    file: str | None = Field(None, description="Also log to this file.")
    channels: dict[str, Literal["DEBUG", "INFO", "WARNING", "ERROR"]] = Field(
        default_factory=dict,
        description="Level per channel: decode, preprocess, inference, fusion, storage, ui, app.",
    )
