"""Inference backends by name: an explicit table, resolved lazily with importlib.

No registry, no global current backend: the app passes the name from the config.
"""

from __future__ import annotations

from typing import Any

from config.errors import ConfigError
from gpu.imports import require
from pipeline.protocols import InferenceBackend

BACKENDS: dict[str, str] = {
    "onnxruntime": "models.onnxruntime_backend:OnnxRuntimeBackend",
    "tensorrt": "models.tensorrt_backend:TensorRTBackend",
}


def resolve_backend(name: str) -> type:
    """The backend class for ``name``; TensorRT missing is a clear error, never a fallback."""
    try:
        target = BACKENDS[name]
    except KeyError:
        raise ConfigError(f"backend.name: unknown backend {name!r}; choose one of {sorted(BACKENDS)}") from None
    module_name, _, cls_name = target.partition(":")
    module = require(
        module_name, f"backend {name!r}", "on a machine without it set backend.name: onnxruntime in the pipeline config"
    )
    cls: type = getattr(module, cls_name)
    return cls


def create_backend(name: str, model_path: str, **kwargs: Any) -> InferenceBackend:
    """Instantiate backend ``name`` for one model file."""
    backend: InferenceBackend = resolve_backend(name)(model_path, **kwargs)
    return backend
