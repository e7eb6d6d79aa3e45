"""ONNX Runtime backend: CPU provider with NumPy arrays; CUDA provider with CuPy arrays (IOBinding).

The explicit second backend next to TensorRT. On the CPU path ``enqueue`` runs the model and
returns a finished :class:`ReadyOutputs`. On the GPU path (``device="gpu"``) inputs are CuPy
arrays bound by device pointer and outputs are CuPy arrays; see :mod:`models.ort_cuda`.
"""

from __future__ import annotations

import logging
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


def load_session(path: str | Path, providers: list[str], intra_op_threads: int = 0) -> Any:
    """Create an ``InferenceSession``; missing files and unknown providers are ModelLoadErrors."""
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(
            f"model file not found: {path} (run `make run` once to fetch the demo models, or fix models.<name>.path)"
        )
    if RTX_EP_NAME in providers:
        opts = _rtx_session_options(ort, providers)
        providers = []  # the options carry the EP; a providers argument would override them
    else:
        available = ort.get_available_providers()
        missing = [p for p in providers if p not in available]
        if missing:
            raise ModelLoadError(
                f"ONNX Runtime provider(s) {missing} not available in this onnxruntime build (available: {available}); "
                "install onnxruntime-gpu for CUDAExecutionProvider, or set backend.onnxruntime.providers"
            )
        opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if intra_op_threads:
        opts.intra_op_num_threads = intra_op_threads
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=providers or None)
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph classes
        raise ModelLoadError(f"cannot load ONNX model {path}: {exc}") from None


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
    ) -> None:
        self.name = f"onnxruntime:{Path(path).name}"
        self.device = device
        providers = providers or (["CUDAExecutionProvider"] if device == "gpu" else ["CPUExecutionProvider"])
        self._session = load_session(path, providers, intra_op_threads)
        import onnxruntime as ort

        self._run_options = ort.RunOptions()
        self._closed = False
        self.inputs = tuple(_tensor_info(a) for a in self._session.get_inputs())
        self.outputs = tuple(_tensor_info(a) for a in self._session.get_outputs())
        self._gpu = None
        if device == "gpu":
            from models.ort_cuda import CudaBinding

            self._gpu = CudaBinding(self._session, self.inputs, self.outputs, device_id, priority=stream_priority)
        log.info(
            "loaded %s on %s: inputs %s outputs %s",
            path,
            self._session.get_providers()[0],
            [(i.name, i.shape, i.dtype) for i in self.inputs],
            [(o.name, o.shape) for o in self.outputs],
        )

    def enqueue(self, inputs: Mapping[str, Any]) -> PendingOutputs:
        if self._closed:
            raise StageError(f"{self.name}: the backend was closed (the pipeline is stopping)")
        if self._gpu is not None:
            return self._gpu.run(inputs)
        feeds = {k: np.ascontiguousarray(v) for k, v in inputs.items()}
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

    def close(self) -> None:
        """Release the session. A call still running on another thread keeps its own reference;
        later calls raise ``StageError`` instead of failing on a released session."""
        self._closed = True
        self._gpu = None
        self._session = None

    def __enter__(self) -> OnnxRuntimeBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
