"""GPU preprocessing: a device frame (NV12 or RGB CuPy array) -> model input tensors on the GPU.

Same contract as :class:`pipeline.preprocess.NumpyPreprocessor` (and parity-tested against it):
``run(frame) -> PreprocessOutput`` whose ``tensor`` is a CuPy (N, 3, H, W) array of the spec's
dtype. One fused kernel launch per call (:mod:`gpu.kernels`); the job table of a frame size is
built and uploaded once, then cached.

Buffers: each call allocates its output from CuPy's memory pool (no ``cudaMalloc`` once warm), so
the caller owns the returned tensor. The work is enqueued on ``stream`` (the pipeline's stream;
default: CuPy's current stream) and is not waited for: consumers on the same stream are ordered
after it, others must synchronise on the stream or an event.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from gpu import kernels
from gpu.imports import require_cuda_device
from pipeline.geometry import PreprocessPlan
from pipeline.preprocess import InputSpec
from pipeline.types import Frame, PreprocessOutput

if TYPE_CHECKING:
    import cupy


_SWITCH = "install cupy-cuda13x, or set backend.device: cpu"


def import_cupy() -> Any:
    """``cupy`` with a CUDA device, or a GpuUnavailableError that says what to install or switch."""
    return require_cuda_device("the GPU path", _SWITCH)


class _Prepared:
    """A frame size's plans, job table and its device copy."""

    __slots__ = ("jobs_device", "plans", "table")

    def __init__(self, specs: Sequence[InputSpec], width: int, height: int) -> None:
        cp = import_cupy()
        self.plans: tuple[PreprocessPlan, ...] = tuple(spec.plan(width, height) for spec in specs)
        self.table = kernels.build_jobs(list(zip(specs, self.plans, strict=True)))
        self.jobs_device = cp.asarray(self.table.records.view("u1"))


class GpuMultiPreprocessor:
    """Several specs of one frame in ONE launch: ``run(frame) -> {spec name: PreprocessOutput}``.

    The tensors are views into one pooled allocation (kept alive by the views).
    """

    def __init__(self, specs: Sequence[InputSpec], stream: cupy.cuda.Stream | None = None) -> None:
        if not specs:
            raise ValueError("GpuMultiPreprocessor needs at least one spec")
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise ValueError(f"spec names must be unique, got {names}")
        self.specs = tuple(specs)
        self.stream = stream
        self._prepared: dict[tuple[int, int, str], _Prepared] = {}

    def _prepare(self, frame: Frame) -> _Prepared:
        key = (frame.meta.width, frame.meta.height, frame.layout)
        prep = self._prepared.get(key)
        if prep is None:
            prep = self._prepared[key] = _Prepared(self.specs, frame.meta.width, frame.meta.height)
        return prep

    def run_all(self, frame: Frame) -> dict[str, PreprocessOutput]:
        cp = import_cupy()
        if frame.device != "gpu":
            raise ValueError("GPU preprocessing takes GPU frames (device='gpu'); use NumpyPreprocessor for host frames")
        prep = self._prepare(frame)
        table = prep.table
        stream = self.stream if self.stream is not None else cp.cuda.get_current_stream()
        with stream:
            buf = cp.empty(table.total_bytes, cp.uint8)
        image = frame.image
        if not image.flags.c_contiguous:
            with stream:
                image = cp.ascontiguousarray(image)
        kernels.launch(
            image, frame.layout, frame.meta.width, frame.meta.height, prep.jobs_device, table.grid, buf, stream,
            colour=frame.colour,
        )  # fmt: skip
        out: dict[str, PreprocessOutput] = {}
        for spec, plan, slot in zip(self.specs, prep.plans, table.slots, strict=True):
            n = 1
            for d in slot.shape:
                n *= d
            nbytes = n * cp.dtype(slot.dtype).itemsize
            tensor = buf[slot.offset : slot.offset + nbytes].view(slot.dtype).reshape(slot.shape)
            out[spec.name] = PreprocessOutput(spec_name=spec.name, tensor=tensor, plan=plan)
        return out


class GpuPreprocessor:
    """``run(frame) -> PreprocessOutput`` for one spec on the GPU; one kernel launch per call."""

    def __init__(self, spec: InputSpec, stream: cupy.cuda.Stream | None = None) -> None:
        self.spec = spec
        self._multi = GpuMultiPreprocessor([spec], stream)

    def run(self, frame: Frame) -> PreprocessOutput:
        return self._multi.run_all(frame)[self.spec.name]
