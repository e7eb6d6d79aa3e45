"""Lazy imports of the CUDA libraries: the module, or a ``GpuUnavailableError`` that says what is
missing and how to run without it.

The CUDA import contract: only ``gpu/`` and the GPU backends in ``models/`` import ``cupy``,
``tensorrt``, ``PyNvVideoCodec`` or ``cuda``, and only when a GPU part is built or run, through
these helpers; so every module imports on a machine without a GPU.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from config.errors import GpuUnavailableError

__all__ = ["require", "require_cuda_device"]


def require(module_name: str, needed_by: str, how_to_fix: str, *, what: str | None = None) -> ModuleType:
    """``importlib.import_module(module_name)``, or ``GpuUnavailableError``:
    ``"<needed_by> needs <what> (<import error>); <how_to_fix>"``.

    ``what`` names the missing thing for a person (e.g. "the TensorRT Python package"); default
    ``module_name``.
    """
    try:
        return importlib.import_module(module_name)
    except ImportError as exc:
        raise GpuUnavailableError(f"{needed_by} needs {what or module_name} ({exc}); {how_to_fix}") from None


def require_cuda_device(needed_by: str, how_to_fix: str) -> ModuleType:
    """``cupy`` with at least one usable CUDA device, or ``GpuUnavailableError`` naming which of
    the two is missing and ``how_to_fix``."""
    cupy = require("cupy", needed_by, how_to_fix, what="CuPy")
    try:
        cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # CUDARuntimeError when there is no driver or no device
        raise GpuUnavailableError(f"{needed_by} found no usable CUDA device ({exc}); {how_to_fix}") from None
    return cupy
