"""What the TensorRT runtime and the engine builder share: the ``tensorrt`` import, the process's
one logger and ``trt.Runtime``, and where an ONNX model's engine lives.

:mod:`models.tensorrt_backend` (running engines) and :mod:`models.engine_build` (building them)
both import this module and not each other. Importing it needs no TensorRT.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from gpu.imports import require

log = logging.getLogger("people_counter.inference")

SWITCH = "set backend.name: onnxruntime in the pipeline config (ONNX Runtime with the CUDA provider)"
"""How to run without TensorRT: every TensorRT ``GpuUnavailableError`` ends with it."""

_lock = threading.Lock()
_runtime: Any = None
_logger: Any = None


def import_tensorrt() -> Any:
    """The ``tensorrt`` module, or GpuUnavailableError naming the backend switch."""
    return require("tensorrt", "backend 'tensorrt'", SWITCH, what="the TensorRT Python package")


def engine_path_for(onnx_path: Path, engine_dir: Path, precision: str) -> Path:
    """Where the engine of ``onnx_path`` at ``precision`` lives: ``<engine_dir>/<stem>.<precision>.engine``."""
    return Path(engine_dir) / f"{Path(onnx_path).stem}.{precision}.engine"


def trt_logger() -> Any:
    """The process's one TensorRT logger; TensorRT messages go to Python logging."""
    global _logger
    trt = import_tensorrt()
    with _lock:
        if _logger is None:
            levels = {
                trt.ILogger.Severity.INTERNAL_ERROR: logging.CRITICAL,
                trt.ILogger.Severity.ERROR: logging.ERROR,
                trt.ILogger.Severity.WARNING: logging.WARNING,
                trt.ILogger.Severity.INFO: logging.INFO,
                trt.ILogger.Severity.VERBOSE: logging.DEBUG,
            }

            class _PyLogger(trt.ILogger):  # type: ignore[misc, name-defined]
                def __init__(self) -> None:
                    trt.ILogger.__init__(self)

                def log(self, severity: Any, msg: str) -> None:
                    log.log(levels.get(severity, logging.INFO), "tensorrt: %s", msg)

            _logger = _PyLogger()
        return _logger


def trt_runtime() -> Any:
    """The process's one ``trt.Runtime``."""
    global _runtime
    trt = import_tensorrt()
    logger = trt_logger()
    with _lock:
        if _runtime is None:
            _runtime = trt.Runtime(logger)
        return _runtime
