"""TensorRT for RTX through ONNX Runtime's plugin EP: registration, device discovery, load_session.

The package (``onnxruntime-ep-nv-tensorrt-rtx-cu13``) is an optional extra, absent in CI: there the
tests check the clear error. Where it is installed, registration needs an NVIDIA driver, and a
session needs an RTX GPU (none on H100/H200): those tests skip, saying which part is missing.
"""

from __future__ import annotations

import types
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from config.errors import GpuUnavailableError, ModelLoadError
from models.onnxruntime_backend import load_session
from models.ort_trt_rtx import (
    EP_NAME,
    PIP_PACKAGE,
    describe_devices,
    find_rtx_ep_library,
    register_rtx_ep,
    rtx_devices,
    session_options_for_rtx,
)

HAS_PACKAGE = find_rtx_ep_library() is not None
needs_package = pytest.mark.skipif(not HAS_PACKAGE, reason=f"{PIP_PACKAGE} is not installed (optional extra `rtx`)")


def _relu_onnx(path: Path) -> Path:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "relu", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def _registered_or_skip() -> str:
    try:
        return register_rtx_ep()
    except GpuUnavailableError as exc:
        # The library links libcuda.so.1: without an NVIDIA driver it cannot load at all.
        assert f"cannot load the {EP_NAME} plugin" in str(exc), exc
        pytest.skip(f"{EP_NAME} installed but not loadable here: {exc}")


@pytest.mark.skipif(HAS_PACKAGE, reason=f"{PIP_PACKAGE} is installed")
def test_missing_package_names_the_pip_package(tmp_path: Path) -> None:
    assert find_rtx_ep_library() is None
    with pytest.raises(GpuUnavailableError, match=f"pip install {PIP_PACKAGE}") as info:
        register_rtx_ep()
    assert "backend.onnxruntime.providers" in str(info.value)
    with pytest.raises(GpuUnavailableError, match=PIP_PACKAGE):
        rtx_devices()
    # Through the backend: the configured provider name leads to the same error, not "unknown provider".
    with pytest.raises(GpuUnavailableError, match=PIP_PACKAGE):
        load_session(_relu_onnx(tmp_path / "relu.onnx"), [EP_NAME])


def test_onnxruntime_without_plugin_api_is_a_clear_error() -> None:
    old = types.ModuleType("onnxruntime")
    old.__version__ = "1.20.0"  # type: ignore[attr-defined]  # before register_execution_provider_library
    with pytest.raises(GpuUnavailableError, match=r"onnxruntime 1\.20\.0 has no plugin .*onnxruntime>=1\.24"):
        register_rtx_ep(old)


def test_installed_onnxruntime_has_the_plugin_api() -> None:
    # load_session relies on these; an older onnxruntime turns RTX into the error above.
    for name in ("register_execution_provider_library", "unregister_execution_provider_library", "get_ep_devices"):
        assert callable(getattr(ort, name)), name
    assert callable(ort.SessionOptions.add_provider_for_devices)


def test_rtx_with_another_gpu_provider_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"cannot be combined with.*CUDAExecutionProvider"):
        load_session(_relu_onnx(tmp_path / "relu.onnx"), [EP_NAME, "CUDAExecutionProvider"])


def test_session_options_without_devices_is_an_error() -> None:
    with pytest.raises(GpuUnavailableError, match=f"no RTX GPU found for {EP_NAME}"):
        session_options_for_rtx([])


def test_session_options_plumb_devices_into_a_session(tmp_path: Path) -> None:
    # No RTX GPU here: the CPU EP's real OrtEpDevice checks the add_provider_for_devices path end to end.
    cpu = [d for d in ort.get_ep_devices() if d.ep_name == "CPUExecutionProvider"]
    assert cpu, describe_devices(ort.get_ep_devices())
    opts = session_options_for_rtx(cpu)
    assert opts.has_providers()
    sess = ort.InferenceSession(str(_relu_onnx(tmp_path / "relu.onnx")), sess_options=opts)
    assert sess.get_providers()[0] == "CPUExecutionProvider"
    x = np.array([[-1.0, 0.5, -2.0, 3.0]], dtype=np.float32)
    np.testing.assert_array_equal(sess.run(None, {"x": x})[0], np.maximum(x, 0))


def test_describe_devices_names_ep_type_and_ids() -> None:
    (text,) = describe_devices([d for d in ort.get_ep_devices() if d.ep_name == "CPUExecutionProvider"][:1])
    assert text.startswith("CPUExecutionProvider on CPU ")
    assert ":0x" in text


@needs_package
def test_package_exposes_library_and_ep_name() -> None:
    helper_module = pytest.importorskip("onnxruntime_ep_nv_tensorrt_rtx")
    assert helper_module.get_ep_name() == EP_NAME
    library = find_rtx_ep_library()
    assert library is not None
    assert library.name == "libonnxruntime_providers_nv_tensorrt_rtx.so"
    assert library.is_file()


@needs_package
def test_registration_is_idempotent() -> None:
    name = _registered_or_skip()
    assert name == EP_NAME
    assert register_rtx_ep() == name  # a second registration would fail inside ONNX Runtime


@needs_package
def test_device_discovery_returns_only_rtx_ep_devices() -> None:
    _registered_or_skip()
    devices = rtx_devices()
    assert isinstance(devices, list)
    assert all(d.ep_name == EP_NAME and d.device.type == ort.OrtHardwareDeviceType.GPU for d in devices)


@needs_package
def test_rtx_session_runs_a_model(tmp_path: Path) -> None:
    _registered_or_skip()
    devices = rtx_devices()
    if not devices:
        pytest.skip(f"no RTX GPU found for {EP_NAME} (found: {describe_devices(ort.get_ep_devices())})")
    sess = load_session(_relu_onnx(tmp_path / "relu.onnx"), [EP_NAME])
    assert sess.get_providers()[0] == EP_NAME
    x = np.array([[-1.0, 0.5, -2.0, 3.0]], dtype=np.float32)
    np.testing.assert_array_equal(sess.run(None, {"x": x})[0], np.maximum(x, 0))


@needs_package
def test_no_rtx_gpu_is_a_clear_error(tmp_path: Path) -> None:
    _registered_or_skip()
    if rtx_devices():
        pytest.skip("an RTX GPU is present")
    with pytest.raises(GpuUnavailableError, match=r"no RTX GPU found for .*\(found: .*CPUExecutionProvider"):
        load_session(_relu_onnx(tmp_path / "relu.onnx"), [EP_NAME])
