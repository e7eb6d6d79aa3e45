"""ONNX Runtime CUDA execution provider on CuPy arrays: IOBinding by device pointer, no host copy.

:class:`CudaBinding` binds CuPy inputs by pointer (``IOBinding.bind_input(name, "cuda", device_id,
element_type, shape, ptr)``) and binds outputs to CuPy arrays it allocates from CuPy's pool, with
shapes from the model (dynamic dimensions resolved once per input shape and cached).

Streams: the CUDA EP runs its kernels on ``user_compute_stream`` when one is given (provider option
since ONNX Runtime 1.17; a stream handle of 0 is ignored by ORT, so this is always a CuPy
non-default stream). The binding owns one such stream (one per branch/backend: branches run
concurrently) unless the caller passes one to share; it is :attr:`CudaBinding.stream`, and the
branch runs all its GPU work on it (:func:`models.branch.run_branch`). Inputs made on another
stream are ordered before the model by an event (GPU-side wait, no host block). With ``synchronize=False`` the run
skips ORT's end-of-run stream synchronisation (run option
``disable_synchronize_execution_providers``), so ``run`` returns once the work is enqueued and
:meth:`gpu.events.EventPending.wait` waits on an event; with ``True`` ORT blocks as usual.

Output ownership: every call returns fresh arrays (pool memory) that belong to the caller.
``provider_options`` add CUDA EP options (e.g. ``{"use_tf32": "0"}`` for strict float32; the
default convolves in TF32, about 1e-3 relative per layer).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from config.errors import ModelLoadError
from gpu.events import EventPending, follow_caller
from gpu.imports import require
from pipeline.protocols import TensorInfo

log = logging.getLogger("people_counter.inference")

DISABLE_SYNC_KEY = "disable_synchronize_execution_providers"


class _StreamHandle:
    """A raw ``cudaStream_t`` through the CUDA stream protocol (``__cuda_stream__``), which
    ``cupy.cuda.Stream.from_external`` takes (CuPy 14 deprecates ``ExternalStream``). The CuPy
    stream made from it does not own the handle: it never destroys it."""

    __slots__ = ("handle",)

    def __init__(self, handle: int) -> None:
        self.handle = int(handle)

    def __cuda_stream__(self) -> tuple[int, int]:
        return (0, self.handle)


def external_stream(cupy: Any, handle: int) -> Any:
    """A CuPy stream on the existing stream ``handle``, not owning it (its creator destroys it, or
    nobody: ``_process_lifetime_stream``). Work on it runs on the device current when it is used."""
    return cupy.cuda.Stream.from_external(_StreamHandle(handle))


def _process_lifetime_stream(cupy: Any, priority: str = "normal") -> Any:
    """A non-blocking stream that is never destroyed (a non-owning ``external_stream``).

    ORT keeps the ``user_compute_stream`` handle until the session dies, which may be after any
    Python owner of the stream (at interpreter exit, too); a destroyed stream there is CUDA error
    709. One stream per binding; bindings are few per process.

    ``priority``: "high" for latency-critical branches (YOLO), "low" for background work (the
    density CNN every n-th frame), so the GPU schedules the detector's blocks first when both
    wait for SMs. CUDA numbers priorities downwards: the greatest priority is the lowest number.
    """
    rt = cupy.cuda.runtime
    handle = _create_priority_stream(rt.streamNonBlocking, priority)
    if handle is None:
        handle = rt.streamCreateWithFlags(rt.streamNonBlocking)
    return external_stream(cupy, handle)


def make_stream(device_id: int = 0, priority: str = "normal") -> Any:
    """A stream for one binding, made before its session exists, so that the session is created
    with it (``user_compute_stream`` in the provider options) and never re-set."""
    cupy = require("cupy", "ONNX Runtime on the GPU", "install cupy-cuda13x or set backend.device: cpu", what="CuPy")
    with cupy.cuda.Device(device_id):
        return _process_lifetime_stream(cupy, priority)


def _create_priority_stream(flags: int, priority: str) -> int | None:
    """A stream handle at ``priority`` through cuda-bindings (CuPy's runtime module has no
    priority calls); None where cuda-bindings is absent or for "normal" priority."""
    if priority == "normal":
        return None
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        log.warning("cuda-bindings not installed: CUDA stream priority %r ignored", priority)
        return None
    err, least, greatest = cudart.cudaDeviceGetStreamPriorityRange()
    if int(err) != 0:
        log.warning("cudaDeviceGetStreamPriorityRange failed (%s): stream priority ignored", err)
        return None
    level = greatest if priority == "high" else least
    err, stream = cudart.cudaStreamCreateWithPriority(flags, level)
    if int(err) != 0:
        log.warning("cudaStreamCreateWithPriority failed (%s): stream priority ignored", err)
        return None
    log.info("CUDA stream with priority %s (%d; range %d..%d)", priority, level, least, greatest)
    return int(stream)


def release_session(session: Any, stream: Any, device_id: int = 0) -> None:
    """Destroy an ORT CUDA session now, on this thread, after the work on its stream has ended:
    the first step of the shutdown order (then CuPy's pinned pool and the NVDEC decoders,
    ``app.build.release_gpu``).

    The CUDA EP frees each run's pinned host buffers in a host function queued on the session's
    stream (``cudaLaunchHostFunc``, ``ReleaseCpuBufferCallback`` in ORT's
    ``cuda_stream_handle.cc``), which holds a reference to the pinned-memory arena. That arena is
    the process's, registered with ORT's environment
    (``models.onnxruntime_backend._share_pinned_allocator``), so that no callback ever destroys it
    (``cudaFreeHost`` refused inside a callback: CUDA error 800, the teardown abort). Synchronising
    the stream first means no host function of this session is still queued when it goes.

    The caller drops its own references first (IOBinding objects hold the session too)."""
    import gc

    cupy = require("cupy", "ONNX Runtime on the GPU", "install cupy-cuda13x or set backend.device: cpu", what="CuPy")
    with cupy.cuda.Device(device_id):
        stream.synchronize()
        del session
        gc.collect()


class CudaBinding:
    """Run an ORT session on CUDA with CuPy inputs and outputs (see the module docstring)."""

    def __init__(
        self,
        session: Any,
        inputs: Sequence[TensorInfo],
        outputs: Sequence[TensorInfo],
        device_id: int = 0,
        stream: Any = None,
        synchronize: bool = False,
        provider_options: Mapping[str, str] | None = None,
        priority: str = "normal",
    ) -> None:
        cupy = require("cupy", "ONNX Runtime on the GPU", "install cupy-cuda13x or set backend.device: cpu", what="CuPy")
        import onnxruntime as ort

        if "CUDAExecutionProvider" not in session.get_providers():
            raise ModelLoadError(
                f"the session runs on {session.get_providers()}, not CUDAExecutionProvider; install onnxruntime-gpu "
                "(and its CUDA/cuDNN libraries) or set backend.device: cpu"
            )
        self._cp = cupy
        self.device_id = device_id
        self.inputs = tuple(inputs)
        self.outputs = tuple(outputs)
        with cupy.cuda.Device(device_id):
            self.stream = stream if stream is not None else _process_lifetime_stream(cupy, priority)
        if not self.stream.ptr:
            raise ValueError("CudaBinding needs a non-default CUDA stream (ONNX Runtime ignores stream 0)")
        # A session created with our stream (the backend passes it at creation) is kept as it is:
        # re-setting providers logs "No registered plugin EP device" and re-creates the EP. Only a
        # session made on another stream is re-set, onto CUDA alone (with CPU fallback off a
        # session refuses a provider list that names the CPU EP, and none is wanted).
        cur = dict(session.get_provider_options().get("CUDAExecutionProvider", {}))
        if provider_options or int(str(cur.get("user_compute_stream") or "0"), 0) != int(self.stream.ptr):
            opts = {**cur, **(provider_options or {})}
            opts.update({"has_user_compute_stream": "1", "user_compute_stream": str(self.stream.ptr)})
            if device_id:  # see onnxruntime_backend.cuda_provider_options: 0 is the default, unnamed
                opts["device_id"] = str(device_id)
            session.set_providers(["CUDAExecutionProvider"], [opts])
        self._session = session
        self._synchronize = synchronize
        self._run_options = ort.RunOptions()
        if not synchronize:
            self._run_options.add_run_config_entry(DISABLE_SYNC_KEY, "1")
        self._io = session.io_binding()
        self._out_shapes: dict[tuple[tuple[int, ...], ...], dict[str, tuple[int, ...]]] = {}

    def _static_out_shapes(self, batch: int) -> dict[str, tuple[int, ...]] | None:
        shapes: dict[str, tuple[int, ...]] = {}
        for o in self.outputs:
            dims = list(o.shape)
            if dims and dims[0] is None:
                dims[0] = batch
            if any(d is None for d in dims):
                return None
            shapes[o.name] = tuple(int(d) for d in dims)  # type: ignore[arg-type]
        return shapes

    def _bind_inputs(self, arrays: Mapping[str, Any]) -> tuple[tuple[int, ...], ...]:
        cp = self._cp
        key = []
        for info in self.inputs:
            arr = arrays[info.name]
            if not isinstance(arr, cp.ndarray):
                raise TypeError(f"input {info.name!r}: expected a CuPy array on the GPU path, got {type(arr).__name__}")
            if arr.dtype != np.dtype(info.dtype):
                raise TypeError(f"input {info.name!r}: model wants {info.dtype}, got {arr.dtype}")
            if not arr.flags.c_contiguous:
                raise ValueError(f"input {info.name!r} must be C-contiguous")
            self._io.bind_input(info.name, "cuda", self.device_id, arr.dtype, tuple(arr.shape), arr.data.ptr)
            key.append(tuple(arr.shape))
        return tuple(key)

    def run(self, inputs: Mapping[str, Any]) -> EventPending:
        """Enqueue the model on ``inputs`` (CuPy arrays); outputs are fresh CuPy arrays."""
        cp = self._cp
        with cp.cuda.Device(self.device_id):
            follow_caller(self.stream)  # inputs were written on the caller's stream
            key = self._bind_inputs(inputs)
            shapes = self._out_shapes.get(key)
            if shapes is None:
                batch = key[0][0] if key and key[0] else 1
                shapes = self._static_out_shapes(batch) or self._discover(key)
                self._out_shapes[key] = shapes
            outs: dict[str, Any] = {}
            with self.stream:
                for o in self.outputs:
                    arr = cp.empty(shapes[o.name], dtype=np.dtype(o.dtype))
                    self._io.bind_output(o.name, "cuda", self.device_id, arr.dtype, arr.shape, arr.data.ptr)
                    outs[o.name] = arr
            self._session.run_with_iobinding(self._io, self._run_options)
            event = None if self._synchronize else self.stream.record()
            return EventPending(outs, event, inputs)

    def release(self) -> None:
        """Let the session go, safely (the shutdown order's first step; see :func:`release_session`).

        Call it after the last run has returned (every branch thread stopped)."""
        session, self._session = self._session, None
        self._io = None
        if session is not None:
            release_session(session, self.stream, self.device_id)

    def cancel(self) -> None:
        """Make the current and later runs end at once (a stop)."""
        self._run_options.terminate = True

    def resume(self) -> None:
        self._run_options.terminate = False

    def _discover(self, key: tuple[tuple[int, ...], ...]) -> dict[str, tuple[int, ...]]:
        """One run with ORT-allocated outputs to learn the output shapes of this input shape."""
        import onnxruntime as ort

        for o in self.outputs:
            self._io.bind_output(o.name, "cuda", self.device_id)
        self._session.run_with_iobinding(self._io, ort.RunOptions())
        shapes = {o.name: tuple(v.shape()) for o, v in zip(self.outputs, self._io.get_outputs(), strict=True)}
        self._io.clear_binding_outputs()
        log.debug("output shapes for input shapes %s: %s", key, shapes)
        return shapes
