"""Run a model on N images whatever its batch size, and time the parts.

A model with a fixed batch (e.g. 1, or 33 for a static TensorRT profile) still serves the 32-tile
pass: the N images are cut into chunks of the model's batch, the last chunk is padded by repeating
its last image, and the padding outputs are dropped. A dynamic batch runs all N in one call (or in
chunks of ``max_batch``). Works on NumPy and CuPy arrays alike.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from config.errors import ModelLoadError
from pipeline.protocols import InferenceBackend, TensorInfo


def array_module(arr: Any) -> Any:
    """numpy for host arrays, cupy for device arrays (imported only then)."""
    if hasattr(arr, "__cuda_array_interface__"):
        import cupy

        return cupy
    return np


def check_image_input(model_name: str, info: TensorInfo, width: int, height: int) -> None:
    """A model input must be (B, 3, H, W) with H, W matching the preprocess spec (or dynamic)."""
    shape = info.shape
    if len(shape) != 4 or shape[1] not in (None, 3):
        raise ModelLoadError(
            f"model {model_name!r}: input {info.name!r} has shape {shape}; expected (batch, 3, height, width)"
        )
    h, w = shape[2], shape[3]
    if (h is not None and h != height) or (w is not None and w != width):
        raise ModelLoadError(
            f"model {model_name!r}: input {info.name!r} is {h}x{w} (HxW) but its preprocess spec makes "
            f"{height}x{width}; fix preprocess.<spec>.width/height or use a model exported at that size"
        )


def backend_stream(backend: Any) -> Any:
    """The CUDA stream a GPU backend enqueues its model on (``backend.stream``), None for a CPU
    backend: the branch runs the rest of its GPU work on it too (:func:`models.branch.run_branch`)."""
    return getattr(backend, "stream", None)


class ModelRunner:
    """``run(tensor) -> (outputs, timings)`` for one single-input model. ``stream``: the backend's
    CUDA stream (None on the CPU)."""

    def __init__(self, backend: InferenceBackend, model_name: str, max_batch: int | None = None) -> None:
        if len(backend.inputs) != 1:
            raise ModelLoadError(
                f"model {model_name!r} has {len(backend.inputs)} inputs {[i.name for i in backend.inputs]}; "
                "people-counter models take one image batch"
            )
        self.backend = backend
        self.model_name = model_name
        self.input = backend.inputs[0]
        self.static_batch = self.input.shape[0]
        self.max_batch = self.static_batch or max_batch

    @property
    def stream(self) -> Any:
        return backend_stream(self.backend)

    def run(self, tensor: Any) -> tuple[dict[str, Any], dict[str, float]]:
        """``tensor``: (N, 3, H, W). Returns outputs with leading dim N, and timings in ms:
        ``prepare_batch_ms`` (chunking, padding, dtype), ``enqueue_ms``, ``stream_sync_ms``,
        ``inference_model_<name>_ms`` (the three together)."""
        xp = array_module(tensor)
        t0 = time.perf_counter()
        n = int(tensor.shape[0])
        dtype = self.input.dtype if self.input.dtype in ("float32", "float16") else "float32"
        if tensor.dtype != dtype:
            tensor = tensor.astype(dtype)
        step = self.max_batch or n
        chunks = []
        for start in range(0, n, step):
            chunk = tensor[start : start + step]
            real = int(chunk.shape[0])
            if self.static_batch and real < self.static_batch:
                fill = xp.repeat(chunk[-1:], self.static_batch - real, axis=0)
                chunk = xp.concatenate([chunk, fill], axis=0)
            chunks.append((xp.ascontiguousarray(chunk), real))
        t1 = time.perf_counter()
        pending = [(self.backend.enqueue({self.input.name: c}), real) for c, real in chunks]
        t2 = time.perf_counter()
        results = [(p.wait(), real) for p, real in pending]
        t3 = time.perf_counter()
        outputs: dict[str, Any] = {}
        for info in self.backend.outputs:
            parts = [r[info.name][:real] for r, real in results]
            outputs[info.name] = parts[0] if len(parts) == 1 else xp.concatenate(parts, axis=0)
        t4 = time.perf_counter()
        timings = {
            "prepare_batch_ms": (t1 - t0 + t4 - t3) * 1e3,
            "enqueue_ms": (t2 - t1) * 1e3,
            "stream_sync_ms": (t3 - t2) * 1e3,
            f"inference_model_{self.model_name}_ms": (t4 - t0) * 1e3,
        }
        return outputs, timings
