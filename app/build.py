"""Composition root: build sources, branches and the counting function from the config.

Nothing else in the project knows how the parts are wired; every choice (decoder, backend,
preprocessor, adapter) is made here from explicit tables in the config.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from config.errors import ConfigError, ModelLoadError, SourceError
from config.schema import BranchConfig, InputSpecConfig, ModelConfig, PipelineConfig, StreamConfig
from models.backends import create_backend
from models.branch import ModelBranch, OneCallYoloBranch, RollingDensityBranch
from models.runner import ModelRunner, check_image_input
from pipeline.frame_counter import FrameCounter
from pipeline.preprocess import InputSpec, NumpyPreprocessor
from pipeline.protocols import Branch, FrameSource, TensorInfo
from pipeline.sources import EventCallback, PacedSource, PyAVSource, is_network_uri
from pipeline.types import Frame, PreprocessOutput

log = logging.getLogger("people_counter.app")


def make_input_spec(name: str, cfg: InputSpecConfig) -> InputSpec:
    """The ``InputSpec`` of config entry ``preprocess.<name>`` (:meth:`InputSpec.from_config`)."""
    return InputSpec.from_config(name, cfg)


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

        source = NvdecSource(uri, stream_id=stream.id, loop=stream.loop, ring_depth=ring_depth, on_event=on_event)
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
        reconnect_backoff_max_s=stream.reconnect_backoff_max_s,
        open_timeout_s=stream.open_timeout_s,
        stall_timeout_s=stream.stall_timeout_s,
        on_event=on_event,
    )


def gpu_ring_depth(cfg: PipelineConfig) -> int:
    """GPU frame slots so that no branch reads a recycled slot: a branch holds at most
    ``queue_size`` queued frames plus the one it runs, each ``every_n_frames`` apart."""
    every = max(b.every_n_frames for b in cfg.branches.values() if b.enabled)
    return (cfg.fusion.queue_size + 2) * every + 4


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


def _make_adapter(cfg: PipelineConfig, model_name: str, spec: InputSpec) -> Any:
    model = cfg.models[model_name]
    if model.kind == "density":
        from models.density import DensityAdapter

        return DensityAdapter(model, input_std=spec.std)  # the contrast reads grey levels back through the spec's std
    if cfg.backend.device == "gpu":
        from models.yolo_gpu import GpuYoloAdapter

        return GpuYoloAdapter(model)
    from models.yolo import YoloAdapter

    return YoloAdapter(model)


def make_branches(cfg: PipelineConfig, only: set[str] | None = None) -> list[Branch]:
    """One branch per enabled config branch, each with its own backend instance (its own
    execution context on TensorRT; ONNX Runtime sessions are not shared between threads)."""
    branches: list[Branch] = []
    try:
        for name, bcfg in cfg.branches.items():
            if bcfg.enabled and (only is None or name in only):
                branches.append(_make_branch(cfg, name, bcfg))
    except BaseException:
        for b in branches:
            b.close()
        raise
    return branches


def _make_branch(cfg: PipelineConfig, name: str, bcfg: BranchConfig) -> Branch:
    """The parts every branch has (specs, backend, runner, load-time checks), then its kind."""
    device = cfg.backend.device
    specs = [make_input_spec(i, cfg.preprocess[i]) for i in bcfg.inputs]
    model = cfg.models[bcfg.model]
    runner = _make_runner(cfg, name, bcfg.model, specs[0])
    if bcfg.spread and bcfg.every_n_frames > 1:
        n = bcfg.every_n_frames
        return RollingDensityBranch(
            name,
            preprocessors=[_make_preprocessor(dataclasses.replace(specs[0], phase=(k, n)), device) for k in range(n)],
            whole_spec=specs[0],
            runner=runner,
            stride=model.output_stride,
            density_scale=model.density_scale,
        )
    adapter = _make_adapter(cfg, bcfg.model, specs[0])
    if len(specs) > 1:
        return OneCallYoloBranch(
            name, prepare=_make_multi_preprocessor(specs, device), runner=runner, adapter=adapter,
            every_n_frames=bcfg.every_n_frames,
        )  # fmt: skip
    return ModelBranch(
        name, preprocessor=_make_preprocessor(specs[0], device), runner=runner, adapter=adapter,
        every_n_frames=bcfg.every_n_frames,
    )  # fmt: skip


def intra_op_threads(cfg: PipelineConfig) -> int:
    """CPU threads per ONNX Runtime session: ``backend.onnxruntime.intra_op_threads``, or for 0 the
    cores split over the enabled branches, which run at once, one thread each
    (:func:`models.onnxruntime_backend.cpu_thread_budget`). GPU sessions keep ORT's default."""
    from models.onnxruntime_backend import cpu_thread_budget

    ort_cfg = cfg.backend.onnxruntime
    if ort_cfg.intra_op_threads or cfg.backend.device == "gpu":
        return ort_cfg.intra_op_threads
    return cpu_thread_budget(sum(1 for b in cfg.branches.values() if b.enabled))


def _make_runner(cfg: PipelineConfig, branch: str, model_name: str, spec: InputSpec) -> ModelRunner:
    """The model's backend, in a runner named after the branch (telemetry:
    ``inference_model_<branch>_ms``), checked against the spec and the adapter's needs; the
    backend is closed again when a check fails."""
    be = cfg.backend
    model = cfg.models[model_name]
    kwargs: dict[str, Any]
    if be.name == "onnxruntime":
        kwargs = {
            "providers": list(be.onnxruntime.providers),
            "intra_op_threads": intra_op_threads(cfg),
            "device": be.device,
        }
        if be.device == "cpu":
            kwargs["cpu_batch"] = be.onnxruntime.cpu_batch
        if be.device == "gpu":  # the detector's stream goes first; density fills the gaps
            kwargs["stream_priority"] = "low" if model.kind == "density" else "high"
    else:
        kwargs = {"engine_dir": be.tensorrt.engine_dir, "precision": be.tensorrt.precision,
                  "cuda_graphs": be.tensorrt.cuda_graphs}  # fmt: skip
    backend = create_backend(be.name, model.path, **kwargs)
    try:
        runner = ModelRunner(backend, branch)
        check_image_input(model_name, runner.input, spec.width, spec.height)
        check_model_outputs(model_name, model, backend.outputs)
    except BaseException:
        backend.close()
        raise
    return runner


def check_model_outputs(model_name: str, model: ModelConfig, outputs: tuple[TensorInfo, ...]) -> None:
    """Refuse, at load time, a model whose outputs its adapter cannot decode.

    For a YOLO v8 head with a static class count (``[B, 4+nc(+32), A]``), every id in
    ``person_classes`` must be below ``nc``; end-to-end heads carry the class in a column, so their
    count is not in the shapes (an id they never output just matches nothing).
    """
    shapes = {o.name: o.shape for o in outputs}
    if model.kind == "yolo":
        from models.yolo import NUM_MASK_COEFS, check_head_shapes, detect_head

        try:
            head = detect_head(shapes) if model.head == "auto" else model.head
            pred_name, _ = check_head_shapes(head, shapes)
        except ModelLoadError as exc:
            raise ModelLoadError(f"model {model_name!r} ({model.path}): {exc}") from None
        rows = shapes[pred_name][1]
        if head.startswith("v8") and rows is not None:
            nc = rows - 4 - (NUM_MASK_COEFS if head == "v8_seg" else 0)
            bad = [c for c in model.person_classes if c >= nc]
            if bad:
                raise ModelLoadError(
                    f"model {model_name!r} ({model.path}) has {nc} class{'es' if nc != 1 else ''} (ids 0..{nc - 1}) "
                    f"but person_classes is {model.person_classes}: {bad} out of range; "
                    f"set models.{model_name}.person_classes to ids in 0..{nc - 1}"
                )
        return
    dims = [s for s in shapes.values() if len(s) == 4 and s[1] in (1, None)]
    if len(shapes) != 1 or not dims:
        raise ModelLoadError(
            f"model {model_name!r} ({model.path}): density model outputs {shapes}; expected one (batch, 1, h, w) map"
        )


def make_display_copy(cfg: PipelineConfig) -> Any:
    """The window's picture of GPU frames (``gpu.display.DisplayCopier``) on the GPU path; None on
    the CPU path, whose frames are host images already."""
    if cfg.backend.device != "gpu":
        return None
    from gpu.display import DisplayCopier

    return DisplayCopier()


def make_counter(cfg: PipelineConfig, frame_rate: float | None = None) -> FrameCounter:
    """The fusion's ``combine`` for ``cfg`` (:meth:`pipeline.frame_counter.FrameCounter.from_config`):
    a new one per run and stream, since its tracker keeps state; ``frame_rate``: the stream's."""
    return FrameCounter.from_config(cfg, frame_rate)


def close_branches(branches: Sequence[Any]) -> None:
    """Close a run's branches, after its threads have stopped: the first step of the GPU
    shutdown order. Each ONNX Runtime CUDA session is destroyed here, on this thread, once the
    work on its stream has ended (:func:`models.ort_cuda.release_session` says why that order
    matters: a session destroyed with a host function still queued on its stream aborted the
    process in ``cudaFreeHost``, CUDA error 800). The rest of the order is
    :func:`release_gpu`, once per process."""
    for b in branches:
        b.close()


def release_gpu() -> None:
    """The rest of the GPU shutdown order, once every run of the process has ended and its
    branches are closed: CuPy's pooled pinned buffers, then the NVDEC decoders of closed sources
    (:func:`gpu.nvdec_source.release_retired_decoders`); the CUDA primary context goes with the
    process. Nothing is done in a process that never imported CuPy."""
    if "cupy" not in sys.modules:
        return
    from gpu.nvdec_source import release_after_sessions

    release_after_sessions()


def warm_up_branches(cfg: PipelineConfig, branches: Sequence[Any], runs: int) -> float:
    """Run every branch ``runs`` times on the stream's first frame (first inferences are slow:
    allocations, cuDNN kernel selection: seconds on the GPU, during which a live stream would drop
    frames); returns the seconds spent. Opens the source once more for that frame."""
    if not branches or runs <= 0:
        return 0.0
    t0 = time.perf_counter()
    source = make_source(cfg.streams[0], cfg.backend.device, on_event=lambda *_a, **_k: None, ring_depth=gpu_ring_depth(cfg))
    with source as src:
        frame = next(iter(src.frames()), None)
        if frame is None:
            raise SourceError(f"{cfg.streams[0].uri}: no frame to warm up on")
        for b in branches:
            for _ in range(runs):
                b.run(frame)
    return time.perf_counter() - t0
