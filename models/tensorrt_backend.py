"""TensorRT backend (TensorRT 10/11, name-based I/O API): CuPy in, CuPy out, asynchronous.

- One logger (routed to the ``people_counter.inference`` logger) and one ``trt.Runtime`` per
  process (:mod:`models.trt_runtime`); each engine file is deserialised once per process and shared.
- One ``IExecutionContext`` per backend instance: the app creates one backend per branch, so
  concurrent branches never share a context. Each instance enqueues on its own CUDA stream (or a
  given one), exposed as ``stream``: the branch runs all its GPU work on it
  (:func:`models.branch.run_branch`), so the caller's stream is this one and no event is needed;
  a caller on another stream is ordered before the model with an event (no host wait).
- ``set_input_shape`` / ``set_tensor_address`` / ``execute_async_v3(stream)``.
- CUDA graphs (``cuda_graphs=True``): for an input shape seen before, the enqueue is captured
  once into a graph on static input/output buffers and replayed; inputs are copied into the
  static buffer and outputs out of it (a few MB on the device, microseconds), which keeps the
  "fresh output arrays" contract of :class:`models.onnxruntime_backend.OnnxRuntimeBackend`.
- The tiled pass uses a static batch (the engine's profile: batch = tile count, optionally + 1 so
  that the global letterbox rides in the same call); :class:`models.runner.ModelRunner` pads.

Importing this module needs neither TensorRT nor CuPy. Constructing a backend without TensorRT
raises ``GpuUnavailableError`` that says to set ``backend.name: onnxruntime``.

The engine for ``model_path`` (the ONNX named in the config) is looked up with
:func:`models.trt_runtime.engine_path_for`; ``python main.py build-engines`` builds it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from config.errors import GpuUnavailableError, ModelLoadError
from gpu.events import EventPending, follow_caller
from gpu.imports import require
from models.trt_runtime import SWITCH, engine_path_for, import_tensorrt, trt_runtime
from pipeline.protocols import TensorInfo

log = logging.getLogger("people_counter.inference")

_lock = threading.Lock()
_engines: dict[str, Any] = {}


def load_engine(path: str | Path) -> Any:
    """Deserialise ``path`` once per process (later calls return the same engine)."""
    key = str(Path(path).resolve())
    runtime = trt_runtime()
    with _lock:
        engine = _engines.get(key)
        if engine is None:
            p = Path(path)
            if not p.is_file():
                raise ModelLoadError(f"TensorRT engine not found: {p}; build it with `python main.py build-engines --config FILE`")
            engine = runtime.deserialize_cuda_engine(p.read_bytes())
            if engine is None:
                raise ModelLoadError(
                    f"cannot deserialise {p} (built by another TensorRT version or GPU?); rebuild with "
                    "`python main.py build-engines --config FILE`"
                )
            _engines[key] = engine
        return engine


class _Graph:
    """A captured enqueue for one input shape, on static buffers."""

    __slots__ = ("graph", "inputs", "outputs")

    def __init__(self, graph: Any, inputs: dict[str, Any], outputs: dict[str, Any]) -> None:
        self.graph = graph
        self.inputs = inputs
        self.outputs = outputs


class TensorRTBackend:
    """One TensorRT engine, one execution context (see the module docstring)."""

    def __init__(
        self,
        model_path: str | Path,
        *,
        engine_path: str | Path | None = None,
        engine_dir: str | Path = ".cache/engines",
        precision: str = "fp16",
        device: str = "gpu",
        device_id: int = 0,
        stream: Any = None,
        cuda_graphs: bool = True,
        profile_index: int = 0,
    ) -> None:
        trt = import_tensorrt()
        if device != "gpu":
            raise GpuUnavailableError(f"backend 'tensorrt' runs on the GPU only (device={device!r}); {SWITCH}")
        cupy = require("cupy", "backend 'tensorrt'", SWITCH, what="CuPy")
        self._cp = cupy
        self._trt = trt
        path = Path(engine_path) if engine_path else engine_path_for(Path(model_path), Path(engine_dir), precision)
        self.name = f"tensorrt:{path.name}"
        self.device_id = device_id
        with cupy.cuda.Device(device_id):
            self.engine = load_engine(path)
            self.context = self.engine.create_execution_context()
            if self.context is None:
                raise ModelLoadError(f"cannot create an execution context for {path} (out of GPU memory?)")
            self.stream = stream if stream is not None else cupy.cuda.Stream(non_blocking=True)
            if profile_index:
                self.context.set_optimization_profile_async(profile_index, self.stream.ptr)
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_input = {n: self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.inputs = tuple(self._info(n) for n in names if is_input[n])
        self.outputs = tuple(self._info(n) for n in names if not is_input[n])
        self.cuda_graphs = cuda_graphs
        self._graphs: dict[tuple[tuple[int, ...], ...], _Graph] = {}
        self._shapes: tuple[tuple[int, ...], ...] | None = None
        log.info("tensorrt: %s inputs %s outputs %s", path, self.inputs, self.outputs)

    def _info(self, name: str) -> TensorInfo:
        shape = tuple(None if d < 0 else int(d) for d in self.engine.get_tensor_shape(name))
        dtype = np.dtype(self._trt.nptype(self.engine.get_tensor_dtype(name))).name
        return TensorInfo(name=name, shape=shape, dtype=dtype)

    def _set_shapes(self, key: tuple[tuple[int, ...], ...]) -> dict[str, tuple[int, ...]]:
        if key != self._shapes:
            for info, shape in zip(self.inputs, key, strict=True):
                if not self.context.set_input_shape(info.name, shape):
                    raise ValueError(f"{self.name}: input {info.name!r} shape {shape} is outside the engine's profile")
            self._shapes = key
        return {o.name: tuple(int(d) for d in self.context.get_tensor_shape(o.name)) for o in self.outputs}

    def _execute(self, inputs: Mapping[str, Any], outputs: Mapping[str, Any]) -> None:
        for name, arr in (*inputs.items(), *outputs.items()):
            self.context.set_tensor_address(name, int(arr.data.ptr))
        if not self.context.execute_async_v3(self.stream.ptr):
            raise RuntimeError(f"{self.name}: execute_async_v3 failed (see the tensorrt log lines)")

    def _capture(self, key: tuple[tuple[int, ...], ...], out_shapes: Mapping[str, tuple[int, ...]]) -> _Graph:
        cp = self._cp
        with self.stream:
            ins = {i.name: cp.empty(s, dtype=i.dtype) for i, s in zip(self.inputs, key, strict=True)}
            outs = {o.name: cp.empty(out_shapes[o.name], dtype=o.dtype) for o in self.outputs}
        self._execute(ins, outs)  # TensorRT's lazy set-up must happen outside the capture
        self.stream.synchronize()
        self.stream.begin_capture()
        try:
            self._execute(ins, outs)
        finally:
            graph = self.stream.end_capture()
        return _Graph(graph, ins, outs)

    def enqueue(self, inputs: Mapping[str, Any]) -> EventPending:
        cp = self._cp
        with cp.cuda.Device(self.device_id):
            follow_caller(self.stream)
            arrays = {}
            for info in self.inputs:
                arr = inputs[info.name]
                if arr.dtype != np.dtype(info.dtype) or not arr.flags.c_contiguous:
                    raise TypeError(f"{self.name}: input {info.name!r} must be a C-contiguous {info.dtype} CuPy array")
                arrays[info.name] = arr
            key = tuple(tuple(int(d) for d in arrays[i.name].shape) for i in self.inputs)
            out_shapes = self._set_shapes(key)
            with self.stream:
                if self.cuda_graphs:
                    g = self._graphs.get(key)
                    if g is None:
                        g = self._graphs[key] = self._capture(key, out_shapes)
                    for name, arr in arrays.items():
                        g.inputs[name][...] = arr
                    g.graph.launch(self.stream)
                    outs = {name: buf.copy() for name, buf in g.outputs.items()}
                else:
                    outs = {o.name: cp.empty(out_shapes[o.name], dtype=o.dtype) for o in self.outputs}
                    self._execute(arrays, outs)
            return EventPending(outs, self.stream.record(), inputs)

    def infer(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        return self.enqueue(inputs).wait()

    def close(self) -> None:
        """The shutdown order's first step, as for ONNX Runtime: the work on the stream ends
        before the graphs and the execution context are destroyed."""
        if self.context is not None:
            self.stream.synchronize()
        self._graphs.clear()
        self.context = None

    def __enter__(self) -> TensorRTBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
