"""TensorRT for RTX through ONNX Runtime's plugin execution provider (GeForce / RTX GPUs).

The PyPI package ``onnxruntime-ep-nv-tensorrt-rtx-cu13`` ships the plugin library
(``libonnxruntime_providers_nv_tensorrt_rtx.so``) together with the TensorRT-RTX runtime it needs,
and a helper module ``onnxruntime_ep_nv_tensorrt_rtx`` whose import preloads those bundled
libraries and whose ``get_library_path()`` / ``get_ep_name()`` name the plugin. ONNX Runtime
(>= 1.24; the plugin API is ``onnxruntime.register_execution_provider_library``) loads it once per
process; the EP then offers one ``OrtEpDevice`` per supported GPU through
``onnxruntime.get_ep_devices()``, and a session uses it through
``SessionOptions.add_provider_for_devices``.

TensorRT-RTX targets consumer RTX GPUs: on data-centre cards (H100/H200) and on machines without
an NVIDIA driver it offers no device, and the library does not even load without ``libcuda.so.1``.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from config.errors import GpuUnavailableError

EP_NAME = "NvTensorRTRTXExecutionProvider"
PIP_PACKAGE = "onnxruntime-ep-nv-tensorrt-rtx-cu13"
_HELPER_MODULE = "onnxruntime_ep_nv_tensorrt_rtx"
_FALLBACK_HINT = (
    "or set backend.onnxruntime.providers to CUDAExecutionProvider (or use the tensorrt backend) on a non-RTX GPU"
)

_lock = threading.Lock()
_registered: set[str] = set()


def _helper() -> ModuleType | None:
    """The package's helper module; importing it preloads the bundled TensorRT-RTX libraries."""
    try:
        module = importlib.import_module(_HELPER_MODULE)
    except ImportError:
        return None
    # pip uninstall leaves the soname symlinks the helper created, which import as a namespace package.
    return module if hasattr(module, "get_library_path") else None


def find_rtx_ep_library() -> Path | None:
    """Path of the installed plugin library, or None when the package (or its library) is absent."""
    helper = _helper()
    if helper is None:
        return None
    try:
        path = Path(helper.get_library_path())
    except (FileNotFoundError, AttributeError):
        return None
    return path if path.is_file() else None


def _ep_name() -> str:
    get_name = getattr(_helper(), "get_ep_name", None)
    return str(get_name()) if get_name is not None else EP_NAME


def register_rtx_ep(ort_module: Any = None) -> str:
    """Register the TensorRT-RTX plugin with ONNX Runtime once per process; return the EP name.

    Idempotent: later calls return the same name without loading the library again. Raises
    :class:`GpuUnavailableError` when onnxruntime lacks the plugin API, when the package is not
    installed, or when the library cannot be loaded (no NVIDIA driver, for example).
    """
    if ort_module is None:
        ort_module = importlib.import_module("onnxruntime")
    version = getattr(ort_module, "__version__", "?")
    if not hasattr(ort_module, "register_execution_provider_library") or not hasattr(ort_module, "get_ep_devices"):
        raise GpuUnavailableError(
            f"onnxruntime {version} has no plugin execution provider API (register_execution_provider_library); "
            f"{EP_NAME} needs onnxruntime>=1.24: pip install -U onnxruntime {PIP_PACKAGE}, {_FALLBACK_HINT}"
        )
    with _lock:
        library = find_rtx_ep_library()
        if library is None:
            raise GpuUnavailableError(
                f"{EP_NAME} is not installed: pip install {PIP_PACKAGE} (RTX GPUs, CUDA 13 driver), {_FALLBACK_HINT}"
            )
        name = _ep_name()
        if name in _registered:
            return name
        try:
            ort_module.register_execution_provider_library(name, str(library))
        except Exception as exc:  # onnxruntime raises its own Fail class
            # Registered by other code in this process: the EP is usable, so treat it as ours.
            if "already" not in str(exc).lower():
                raise GpuUnavailableError(
                    f"cannot load the {EP_NAME} plugin {library}: {exc}; it needs an NVIDIA driver with CUDA 13 "
                    f"({PIP_PACKAGE} bundles the rest), {_FALLBACK_HINT}"
                ) from None
        _registered.add(name)
        return name


def rtx_devices(ort_module: Any = None) -> list[Any]:
    """The ``OrtEpDevice`` entries of the TensorRT-RTX EP (registering it first); empty without an RTX GPU."""
    if ort_module is None:
        ort_module = importlib.import_module("onnxruntime")
    name = register_rtx_ep(ort_module)
    return [d for d in ort_module.get_ep_devices() if d.ep_name == name]


def describe_devices(devices: Sequence[Any]) -> list[str]:
    """Short ``"EP on TYPE vendor 0xVENDOR:0xDEVICE"`` descriptions for error messages and logs."""
    return [
        f"{d.ep_name} on {d.device.type.name} {d.device.vendor or '?'} "
        f"{d.device.vendor_id:#06x}:{d.device.device_id:#06x}"
        for d in devices
    ]


def session_options_for_rtx(devices: Sequence[Any], provider_options: Mapping[str, Any] | None = None) -> Any:
    """``SessionOptions`` with the EP of ``devices`` added (``add_provider_for_devices``).

    ``provider_options`` are the EP's string options (TensorRT-RTX: ``enable_cuda_graph``,
    ``nv_runtime_cache_path``, ...); values are converted with ``str``. Create the session with
    these options and without a ``providers`` argument, which would override them.
    """
    import onnxruntime as ort

    if not devices:
        raise GpuUnavailableError(f"no RTX GPU found for {EP_NAME}; {_FALLBACK_HINT}")
    opts = ort.SessionOptions()
    opts.add_provider_for_devices(list(devices), {k: str(v) for k, v in (provider_options or {}).items()})
    return opts
