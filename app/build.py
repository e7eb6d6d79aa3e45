"""Composition root: build sources, branches and the counting function from the config.

Nothing else in the project knows how the parts are wired; every choice (decoder, backend,
preprocessor, adapter) is made here from explicit tables in the config.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from config.errors import ConfigError, ModelLoadError, SourceError
from config.schema import InputSpecConfig, ModelConfig, PipelineConfig, StreamConfig
from models.backends import create_backend
from models.branch import ModelBranch, OneCallYoloBranch, RollingDensityBranch
from models.runner import ModelRunner, check_image_input
from pipeline.counting import hybrid_count, merge_detections
from pipeline.preprocess import InputSpec, NumpyPreprocessor
from pipeline.protocols import Branch, FrameSource, TensorInfo
from pipeline.sources import EventCallback, PacedSource, PyAVSource, is_network_uri
from pipeline.types import (
    GLOBAL_SOURCE,
    BranchResult,
    CountResult,
    DensityMap,
    Detections,
    Frame,
    FrameMeta,
    PreprocessOutput,
)

log = logging.getLogger("people_counter.app")

Role = Literal["global", "tiles", "global+tiles", "density"]


def make_input_spec(name: str, cfg: InputSpecConfig) -> InputSpec:
    return InputSpec(
        name=name,
        kind=cfg.kind,
        width=cfg.width,
        height=cfg.height,
        overlap=cfg.overlap,
        dtype=cfg.dtype,
        mean=cfg.mean,
        std=cfg.std,
        pad_value=cfg.pad_value,
    )


def make_source(
    stream: StreamConfig, device: str, on_event: EventCallback, uri: str | None = None, ring_depth: int = 8
) -> FrameSource:
    """The frame source for a stream: PyAV (CPU), NVDEC (GPU) or synthetic (tests).

    ``ring_depth``: GPU frame slots; a slot is reused ``ring_depth`` frames later, so it must
    exceed how many frames a branch can lag behind decode (see :func:`gpu_ring_depth`).
    """
    uri = uri or stream.uri
    decoder = stream.decoder
    if uri.startswith("synthetic://"):
        decoder = "synthetic"
    source: FrameSource
    if decoder == "synthetic":
        from pipeline.sources_synthetic import SyntheticSource

        source = SyntheticSource.from_uri(uri, stream_id=stream.id)
    elif decoder == "nvdec":
        from gpu.nvdec_source import NvdecSource

        source = NvdecSource(uri, stream_id=stream.id, loop=stream.loop, ring_depth=ring_depth)
    else:
        source = _pyav_source(stream, device, on_event, uri)
    if stream.realtime and not is_network_uri(uri):
        return PacedSource(source)
    return source


def _pyav_source(stream: StreamConfig, device: str, on_event: EventCallback, uri: str) -> FrameSource:
    if device == "gpu":
        raise ConfigError(
            f"streams: decoder pyav decodes to the host but backend.device is gpu; use decoder: nvdec for {uri}"
        )
    return PyAVSource(
        uri,
        stream_id=stream.id,
        loop=stream.loop,
        reconnect_attempts=stream.reconnect_attempts,
        reconnect_backoff_s=stream.reconnect_backoff_s,
        open_timeout_s=stream.open_timeout_s,
        on_event=on_event,
    )


def gpu_ring_depth(cfg: PipelineConfig) -> int:
    """GPU frame slots so that no branch reads a recycled slot: a branch holds at most
    ``queue_size`` queued frames plus the one it runs, each ``every_n_frames`` apart."""
    every = max(b.every_n_frames for b in cfg.branches.values() if b.enabled)
    return (cfg.fusion.queue_size + 2) * every + 4


def branch_role(cfg: PipelineConfig, name: str) -> Role:
    b = cfg.branches[name]
    if cfg.models[b.model].kind == "density":
        return "density"
    if len(b.inputs) > 1:
        return "global+tiles"
    return "global" if cfg.preprocess[b.inputs[0]].kind == "letterbox" else "tiles"


def _make_preprocessor(spec: InputSpec, device: str) -> Any:
    if device == "gpu":
        from gpu.preprocess import GpuPreprocessor

        return GpuPreprocessor(spec)
    return NumpyPreprocessor(spec)


def _make_multi_preprocessor(specs: list[InputSpec], device: str) -> Callable[[Frame], list[PreprocessOutput]]:
    """Several specs of one frame, in order: one fused launch on the GPU."""
    if device == "gpu":
        from gpu.preprocess import GpuMultiPreprocessor

        multi = GpuMultiPreprocessor(specs)
        return lambda frame: list(multi.run_all(frame).values())
    each = [NumpyPreprocessor(s) for s in specs]
    return lambda frame: [p.run(frame) for p in each]


def _make_adapter(cfg: PipelineConfig, model_name: str) -> Any:
    model = cfg.models[model_name]
    if model.kind == "density":
        from models.density import DensityAdapter

        return DensityAdapter(model)
    if cfg.backend.device == "gpu":
        from models.yolo_gpu import GpuYoloAdapter

        return GpuYoloAdapter(model)
    from models.yolo import YoloAdapter

    return YoloAdapter(model)


def make_branches(cfg: PipelineConfig, only: set[str] | None = None) -> list[Branch]:
    """One branch per enabled config branch, each with its own backend instance (its own
    execution context on TensorRT; ONNX Runtime sessions are not shared between threads)."""
    branches: list[Branch] = []
    be = cfg.backend
    try:
        for name, bcfg in cfg.branches.items():
            if not bcfg.enabled or (only is not None and name not in only):
                continue
            specs = [make_input_spec(i, cfg.preprocess[i]) for i in bcfg.inputs]
            spec = specs[0]
            model = cfg.models[bcfg.model]
            kwargs: dict[str, Any]
            if be.name == "onnxruntime":
                kwargs = {
                    "providers": list(be.onnxruntime.providers),
                    "intra_op_threads": be.onnxruntime.intra_op_threads,
                    "device": be.device,
                }
                if be.device == "gpu":  # the detector's stream goes first; density fills the gaps
                    kwargs["stream_priority"] = "low" if model.kind == "density" else "high"
            else:
                kwargs = {"engine_dir": be.tensorrt.engine_dir, "precision": be.tensorrt.precision,
                          "cuda_graphs": be.tensorrt.cuda_graphs}
            backend = create_backend(be.name, model.path, **kwargs)
            runner = ModelRunner(backend, name)  # telemetry: inference_model_<branch>_ms
            check_image_input(bcfg.model, runner.input, spec.width, spec.height)
            check_model_outputs(bcfg.model, model, backend.outputs)
            if bcfg.spread and bcfg.every_n_frames > 1:
                n = bcfg.every_n_frames
                branches.append(
                    RollingDensityBranch(
                        name,
                        preprocessors=[_make_preprocessor(dataclasses.replace(spec, phase=(k, n)), be.device) for k in range(n)],
                        whole_spec=spec,
                        runner=runner,
                        stride=model.output_stride,
                        density_scale=model.density_scale,
                    )
                )
                continue
            if len(specs) > 1:
                branches.append(
                    OneCallYoloBranch(
                        name,
                        prepare=_make_multi_preprocessor(specs, be.device),
                        runner=runner,
                        adapter=_make_adapter(cfg, bcfg.model),
                        every_n_frames=bcfg.every_n_frames,
                    )
                )
                continue
            branches.append(
                ModelBranch(
                    name,
                    preprocessor=_make_preprocessor(spec, be.device),
                    runner=runner,
                    adapter=_make_adapter(cfg, bcfg.model),
                    every_n_frames=bcfg.every_n_frames,
                )
            )
    except BaseException:
        for b in branches:
            b.close()
        raise
    return branches


def check_model_outputs(model_name: str, model: ModelConfig, outputs: tuple[TensorInfo, ...]) -> None:
    """Refuse, at load time, a model whose outputs its adapter cannot decode."""
    shapes = {o.name: o.shape for o in outputs}
    if model.kind == "yolo":
        from models.yolo import check_head_shapes, detect_head

        try:
            check_head_shapes(detect_head(shapes) if model.head == "auto" else model.head, shapes)
        except ModelLoadError as exc:
            raise ModelLoadError(f"model {model_name!r} ({model.path}): {exc}") from None
        return
    dims = [s for s in shapes.values() if len(s) == 4 and s[1] in (1, None)]
    if len(shapes) != 1 or not dims:
        raise ModelLoadError(
            f"model {model_name!r} ({model.path}): density model outputs {shapes}; expected one (batch, 1, h, w) map"
        )


CombineFn = Callable[[Mapping[str, BranchResult], FrameMeta], tuple[Detections, DensityMap | None, CountResult]]


@dataclass(frozen=True, slots=True)
class Counter:
    """Merges the branches' results of one frame and counts (the fusion's ``combine``)."""

    cfg: PipelineConfig
    roles: Mapping[str, Role]

    def __call__(self, results: Mapping[str, BranchResult], frame: FrameMeta) -> tuple[Detections, DensityMap | None, CountResult]:
        counting = self.cfg.counting
        global_parts: list[Detections] = []
        tile_parts: list[Detections] = []
        rects = []
        density: DensityMap | None = None
        for name, res in results.items():
            role = self.roles.get(name)
            if res.error is not None or role is None:
                continue
            if role == "density":
                density = res.density
            elif res.detections is not None:
                if role == "global":
                    global_parts.append(res.detections)
                elif role == "global+tiles":  # one call's result: split by where each came from
                    is_global = res.detections.source == GLOBAL_SOURCE
                    global_parts.append(res.detections[is_global])
                    tile_parts.append(res.detections[~is_global])
                    if res.tile_rects is not None:
                        rects.append(res.tile_rects)
                else:
                    tile_parts.append(res.detections)
                    if res.tile_rects is not None:
                        rects.append(res.tile_rects)
        import numpy as np

        frame_wh = (frame.width, frame.height)
        tile_rects = np.concatenate(rects) if rects else np.zeros((0, 4), np.float32)
        merged = merge_detections(
            Detections.merge(global_parts), Detections.merge(tile_parts), tile_rects, frame_wh, counting.merge
        )
        counts = hybrid_count(merged, density, frame_wh, counting.hybrid, counting.policy, zones=counting.zones)
        return merged, density, counts


def make_counter(cfg: PipelineConfig) -> Counter:
    return Counter(cfg, {name: branch_role(cfg, name) for name, b in cfg.branches.items() if b.enabled})


def warm_up_branches(cfg: PipelineConfig, branches: Sequence[Any], runs: int) -> float:
    """Run every branch ``runs`` times on the stream's first frame (first inferences are slow:
    allocations, cuDNN kernel selection: seconds on the GPU, during which a live stream would drop
    frames); returns the seconds spent. Opens the source once more for that frame."""
    if not branches or runs <= 0:
        return 0.0
    t0 = time.perf_counter()
    source = make_source(cfg.streams[0], cfg.backend.device, on_event=lambda k, m: None, ring_depth=gpu_ring_depth(cfg))
    with source as src:
        frame = next(iter(src.frames()), None)
        if frame is None:
            raise SourceError(f"{cfg.streams[0].uri}: no frame to warm up on")
        for b in branches:
            for _ in range(runs):
                b.run(frame)
    return time.perf_counter() - t0
