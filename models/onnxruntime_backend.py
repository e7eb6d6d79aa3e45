"""ONNX Runtime backend: CPU provider with NumPy arrays; CUDA provider with CuPy arrays (IOBinding).

The explicit second backend next to TensorRT. On the CPU path ``enqueue`` runs the model and
returns a finished :class:`ReadyOutputs`. On the GPU path (``device="gpu"``) inputs are CuPy
arrays bound by device pointer and outputs are CuPy arrays; see :mod:`models.ort_cuda`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np

from config.errors import GpuUnavailableError, ModelLoadError, StageError
from models.ort_trt_rtx import EP_NAME as RTX_EP_NAME
from models.ort_trt_rtx import describe_devices, rtx_devices, session_options_for_rtx
from pipeline.protocols import PendingOutputs, TensorInfo

log = logging.getLogger("people_counter.inference")

_ORT_TYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(uint8)": "uint8",
    "tensor(bool)": "bool",
}


class ReadyOutputs:
    """Outputs that are already computed (blocking backends)."""

    __slots__ = ("_outputs",)

    def __init__(self, outputs: dict[str, Any]) -> None:
        self._outputs = outputs

    def wait(self) -> dict[str, Any]:
        return self._outputs


def _tensor_info(arg: Any) -> TensorInfo:
    shape = tuple(d if isinstance(d, int) and d > 0 else None for d in arg.shape)
    return TensorInfo(name=arg.name, shape=shape, dtype=_ORT_TYPES.get(arg.type, arg.type))


CPU_FALLBACK_KEY = "session.disable_cpu_ep_fallback"
"""Session config key (onnxruntime_session_options_config_keys.h, ``kOrtSessionOptionsDisableCPUEPFallback``):
"1" makes session creation fail when a node would run on the CPU EP behind a device EP."""

CUDNN_CONV_ALGO_SEARCH = "EXHAUSTIVE"
"""cuDNN convolution algorithm choice: EXHAUSTIVE benchmarks every algorithm once per input shape
(cached per shape; paid in the warm-up, since our shapes are fixed: batch 1, 32/33 tiles, a padded
density batch) and keeps the fastest; HEURISTIC asks cuDNN's heuristics, which start faster but
can pick a slower kernel for the life of the run. ORT's own default is EXHAUSTIVE too."""


def cpu_thread_budget(concurrent_sessions: int, cpu_count: int | None = None) -> int:
    """Intra-op threads for each of ``concurrent_sessions`` CPU sessions that run at once: the cores
    split between them (at least 1 each), so that they do not oversubscribe the machine (ORT's
    default gives every session all cores: three sessions in threads then fight over them)."""
    cores = cpu_count if cpu_count is not None else (os.cpu_count() or 1)
    return max(1, cores // max(1, concurrent_sessions))


def cuda_provider_options(
    device_id: int = 0,
    stream_handle: int | None = None,
    *,
    prefer_nhwc: bool = True,
    cudnn_conv_algo_search: str = CUDNN_CONV_ALGO_SEARCH,
    use_tf32: bool = True,
) -> dict[str, str]:
    """The CUDA EP's provider options, given when the session is created (setting them later with
    ``set_providers`` re-creates the session, and ORT warns about plugin devices each time).

    ``stream_handle``: the ``cudaStream_t`` (as an int) the EP enqueues on (``user_compute_stream``;
    ``has_user_compute_stream`` with it); None: the EP's own stream. ``prefer_nhwc``: NHWC
    convolutions (tensor-core kernels are NHWC; saves the layout transposes cuDNN otherwise does,
    most for float16). ``use_tf32``: False for strict float32 (parity tests).

    ``device_id`` is given only for a device other than 0 (the EP's default): since ONNX Runtime
    1.26 a ``device_id`` option makes session creation look for a plugin EP device first, and ORT
    warns "No registered plugin EP device found for 'CUDAExecutionProvider'" at every session when
    none is registered (the built-in CUDA EP never is) before it uses the built-in EP anyway."""
    if cudnn_conv_algo_search not in ("EXHAUSTIVE", "HEURISTIC", "DEFAULT"):
        raise ValueError(f"cudnn_conv_algo_search: EXHAUSTIVE, HEURISTIC or DEFAULT, got {cudnn_conv_algo_search!r}")
    if stream_handle == 0:
        raise ValueError("stream_handle 0 is the legacy default stream, which ONNX Runtime ignores; pass a stream")
    opts = {
        **({"device_id": str(device_id)} if device_id else {}),
        "cudnn_conv_algo_search": cudnn_conv_algo_search,
        "prefer_nhwc": "1" if prefer_nhwc else "0",
        "use_tf32": "1" if use_tf32 else "0",
    }
    if stream_handle is not None:
        opts["has_user_compute_stream"] = "1"
        opts["user_compute_stream"] = str(int(stream_handle))
    return opts


QUANT_PRECISION_KEY = "session.x64quantprecision"
"""ORT's ``kOrtSessionOptionsAvx2PrecisionMode``: exact uint8 x uint8 products for int8 models on x86
CPUs without VNNI (see :func:`make_session_options`)."""


def make_session_options(
    ort: Any,
    providers: list[str],
    intra_op_threads: int = 0,
    *,
    inter_op_threads: int = 1,
    cpu_fallback_off: bool | None = None,
) -> Any:
    """``SessionOptions`` for ``providers``: thread counts (0 intra: ORT's default), sequential
    execution, no silent CPU fallback when a device EP is listed without CPU behind it
    (``cpu_fallback_off`` None; True/False to force), and exact int8 products on CPUs without VNNI
    (``QUANT_PRECISION_KEY``)."""
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if intra_op_threads:
        opts.intra_op_num_threads = intra_op_threads
    # inter-op threads only serve parallel execution mode, which our graphs (one chain) do not use
    opts.inter_op_num_threads = inter_op_threads
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if strict_device(providers) if cpu_fallback_off is None else cpu_fallback_off:
        opts.add_session_config_entry(CPU_FALLBACK_KEY, "1")
    # int8 models (the CPU path's detector copy) on x86 CPUs without VNNI: ORT's uint8 x int8
    # kernel sums two products in 16 bits (VPMADDUBSW) and saturates; with this entry ORT turns the
    # int8 weights into uint8 and runs the exact uint8 x uint8 kernel, on those CPUs only (no effect
    # with VNNI or AMX, nor on float models). docs/MODELS.md, "The int8 copy".
    opts.add_session_config_entry(QUANT_PRECISION_KEY, "1")
    return opts


def strict_device(providers: list[str]) -> bool:
    """True when a device EP is listed and the CPU EP is not: every node must then run on the
    device (an explicit ``CPUExecutionProvider`` in the list is the operator's choice of fallback)."""
    return bool(providers) and "CPUExecutionProvider" not in providers


_PINNED_SHARED: set[int] = set()
"""CUDA devices whose pinned-memory arena is registered with ONNX Runtime's environment."""


def _share_pinned_allocator(ort: Any, device_id: int) -> None:
    """Register one CUDA pinned-memory arena per device with ORT's environment, which every CUDA
    session of the process then uses (``session.use_env_allocators``) and which lives as long as
    the process.

    Why: the CUDA EP frees a run's pinned buffers in a host function it queues on the session's
    stream (``cudaLaunchHostFunc``; ``ReleaseCpuBufferCallback`` in ORT's
    ``cuda_stream_handle.cc``), and that function holds a reference to the pinned arena. With
    the arena owned by the session, a function still queued, or queued while the session is being
    destroyed, can drop the last reference: the arena's destructor then calls ``cudaFreeHost``
    inside a CUDA callback, where CUDA calls are refused (error 800, ``GPU=-1``), and the
    process ends in ``std::terminate`` (1-3 of 10 GPU processes on an H200 at the end of a run).
    An arena the environment owns is never destroyed by a session or a callback."""
    if device_id in _PINNED_SHARED:
        return
    info = ort.OrtMemoryInfo("CudaPinned", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, device_id, ort.OrtMemType.CPU)
    try:
        ort.create_and_register_allocator_v2("CUDAExecutionProvider", info, {"device_id": str(device_id)}, ort.OrtArenaCfg(0, -1, -1, -1))
    except Exception as exc:  # onnxruntime raises its own Fail class
        raise ModelLoadError(f"cannot register ONNX Runtime's CUDA pinned-memory arena for device {device_id}: {exc}") from None
    _PINNED_SHARED.add(device_id)
    log.info("CUDA pinned-memory arena of device %d shared by the process's ONNX Runtime sessions", device_id)


def load_session(
    path: str | Path,
    providers: list[str],
    intra_op_threads: int = 0,
    *,
    provider_options: Mapping[str, Mapping[str, str]] | None = None,
    cpu_fallback_off: bool | None = None,
) -> Any:
    """Create an ``InferenceSession``; missing files, unknown providers and nodes a device EP cannot
    run (no CPU fallback, see :func:`make_session_options`) are ModelLoadErrors naming the model.

    ``provider_options``: per provider name, its options (e.g. :func:`cuda_provider_options`).
    ``cpu_fallback_off``: None: off when a device EP is listed without the CPU EP
    (:func:`strict_device`); True/False to force."""
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(
            f"model file not found: {path} (run `make run` once to fetch the demo models, or fix models.<name>.path)"
        )
    listed: list[Any]
    if RTX_EP_NAME in providers:
        opts = _rtx_session_options(ort, providers)
        listed = []  # the options carry the EP; a providers argument would override them
        opts.log_severity_level = 3
        if intra_op_threads:
            opts.intra_op_num_threads = intra_op_threads
    else:
        available = ort.get_available_providers()
        missing = [p for p in providers if p not in available]
        if missing:
            raise ModelLoadError(
                f"ONNX Runtime provider(s) {missing} not available in this onnxruntime build (available: {available}); "
                "install onnxruntime-gpu for CUDAExecutionProvider, or set backend.onnxruntime.providers"
            )
        opts = make_session_options(ort, providers, intra_op_threads, cpu_fallback_off=cpu_fallback_off)
        listed = [(p, dict((provider_options or {}).get(p, {}))) for p in providers]
        if "CUDAExecutionProvider" in providers:
            device_id = int(dict((provider_options or {}).get("CUDAExecutionProvider", {})).get("device_id", 0))
            _share_pinned_allocator(ort, device_id)
            opts.add_session_config_entry("session.use_env_allocators", "1")
    strict = RTX_EP_NAME not in providers and (strict_device(providers) if cpu_fallback_off is None else cpu_fallback_off)
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=listed or None)
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph classes
        text = " ".join(str(exc).split())
        if strict and "fallback" in text.lower():
            raise ModelLoadError(
                f"model {path}: some of its nodes cannot run on {providers} and CPU fallback is off (no silent "
                f"CPU work on a device backend): {text}. Export the model with operators the EP supports, or list "
                "CPUExecutionProvider after it in backend.onnxruntime.providers to accept the fallback"
            ) from None
        raise ModelLoadError(f"cannot load ONNX model {path}: {text}") from None


def _rtx_session_options(ort: Any, providers: list[str]) -> Any:
    """Options for the TensorRT-RTX plugin EP on the RTX GPUs it finds (CPU stays the fallback)."""
    others = [p for p in providers if p not in (RTX_EP_NAME, "CPUExecutionProvider")]
    if others:
        raise ModelLoadError(
            f"{RTX_EP_NAME} cannot be combined with {others}; list it alone (CPU is the fallback) "
            "in backend.onnxruntime.providers"
        )
    devices = rtx_devices(ort)
    if not devices:
        found = describe_devices(ort.get_ep_devices())
        raise GpuUnavailableError(
            f"no RTX GPU found for {RTX_EP_NAME} (found: {found}); use CUDAExecutionProvider or the tensorrt backend"
        )
    return session_options_for_rtx(devices)


def _cuda_stream(device_id: int, priority: str, handle: int | None) -> Any:
    """The stream a GPU session is created with: a given ``handle`` wrapped (not owned), else a
    stream of ``priority`` made for this backend (``models.ort_cuda.make_stream``)."""
    from models import ort_cuda

    if handle is not None:
        import cupy

        return ort_cuda.external_stream(cupy, int(handle))
    return ort_cuda.make_stream(device_id, priority)


class OnnxRuntimeBackend:
    """One ONNX model on ONNX Runtime. ``enqueue(inputs)`` with arrays on ``device``.

    CPU: NumPy in, NumPy out; the call blocks (the orchestrator runs each branch in its own thread).
    GPU: CuPy in, CuPy out through IOBinding; outputs are fresh arrays the caller owns.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        providers: list[str] | None = None,
        intra_op_threads: int = 0,
        device: Literal["cpu", "gpu"] = "cpu",
        device_id: int = 0,
        stream_priority: Literal["high", "normal", "low"] = "normal",
        stream_handle: int | None = None,
        cuda_options: Mapping[str, str] | None = None,
        cpu_batch: int = 0,
    ) -> None:
        """``intra_op_threads``: CPU threads of this session (0: ORT's default, every core; the app
        passes :func:`cpu_thread_budget`). GPU: ``stream_handle`` a ``cudaStream_t`` to enqueue on
        (None: a stream of ``stream_priority`` made for this backend), ``cuda_options`` overrides of
        :func:`cuda_provider_options` (e.g. ``{"use_tf32": "0"}``); both go into the session when it
        is created. ``cpu_batch``: on the CPU, a batch runs in calls of at most this many images
        (0: one call), outputs concatenated; smaller calls keep the activations in cache (the
        detector on 2 cores: 116 ms an image at 1, 164 ms at 33)."""
        self.name = f"onnxruntime:{Path(path).name}"
        self.cpu_batch = int(cpu_batch)
        self.device = device
        providers = providers or (["CUDAExecutionProvider"] if device == "gpu" else ["CPUExecutionProvider"])
        stream = None
        provider_options: dict[str, dict[str, str]] = {}
        if device == "gpu" and "CUDAExecutionProvider" in providers:
            stream = _cuda_stream(device_id, stream_priority, stream_handle)
            opts = cuda_provider_options(device_id, int(stream.ptr))
            opts.update(cuda_options or {})
            provider_options["CUDAExecutionProvider"] = opts
        self._session = load_session(path, providers, intra_op_threads, provider_options=provider_options)
        import onnxruntime as ort

        self._run_options = ort.RunOptions()
        self._closed = False
        self.inputs = tuple(_tensor_info(a) for a in self._session.get_inputs())
        self.outputs = tuple(_tensor_info(a) for a in self._session.get_outputs())
        # every input and output with a symbolic first dimension: a batch that can be split
        self._splittable = all(t.shape and t.shape[0] is None for t in (*self.inputs, *self.outputs))
        self._gpu = None
        if device == "gpu":
            from models.ort_cuda import CudaBinding

            self._gpu = CudaBinding(self._session, self.inputs, self.outputs, device_id, stream=stream)
        log.info(
            "loaded %s on %s: inputs %s outputs %s",
            path,
            self._session.get_providers()[0],
            [(i.name, i.shape, i.dtype) for i in self.inputs],
            [(o.name, o.shape) for o in self.outputs],
        )

    @property
    def stream(self) -> Any:
        """The CUDA stream the model is enqueued on (a CuPy stream), None on the CPU."""
        return None if self._gpu is None else self._gpu.stream

    def enqueue(self, inputs: Mapping[str, Any]) -> PendingOutputs:
        if self._closed:
            raise StageError(f"{self.name}: the backend was closed (the pipeline is stopping)")
        if self._gpu is not None:
            return self._gpu.run(inputs)
        feeds = {k: np.ascontiguousarray(v) for k, v in inputs.items()}
        batch = min((len(v) for v in feeds.values() if v.ndim), default=0)
        step = self.cpu_batch
        if step and batch > step and self._splittable:
            parts = [
                self._session.run(None, {k: v[s : s + step] for k, v in feeds.items()}, self._run_options)
                for s in range(0, batch, step)
            ]
            outs = [np.concatenate(chunks) for chunks in zip(*parts, strict=True)]
        else:
            outs = self._session.run(None, feeds, self._run_options)
        return ReadyOutputs({o.name: arr for o, arr in zip(self.outputs, outs, strict=True)})

    def infer(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        return self.enqueue(inputs).wait()

    def cancel(self) -> None:
        """End a model run in progress on another thread, and every later one (a stop): ONNX
        Runtime's ``RunOptions.terminate``. The running call raises; seconds of a 4K CPU
        inference are not waited for. Safe from any thread."""
        self._run_options.terminate = True
        if self._gpu is not None:
            self._gpu.cancel()

    def resume(self) -> None:
        """Undo :meth:`cancel` before the backend runs again (a new run reusing the branch)."""
        self._run_options.terminate = False
        if self._gpu is not None:
            self._gpu.resume()

    def close(self) -> None:
        """Release the session. A call still running on another thread keeps its own reference;
        later calls raise ``StageError`` instead of failing on a released session."""
        self._closed = True
        gpu, self._gpu, self._session = self._gpu, None, None
        if gpu is not None:
            # the binding holds the session too; it synchronises the stream, then destroys it
            # (models.ort_cuda.release_session: the shutdown order)
            gpu.release()

    def __enter__(self) -> OnnxRuntimeBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
