"""ONNX Runtime session settings (issue 13): the CPU thread budget, the CUDA provider options given
at session creation, no silent CPU fallback behind a device EP; the CPU path on a real model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from models.onnxruntime_backend import (
    CPU_FALLBACK_KEY,
    OnnxRuntimeBackend,
    cpu_thread_budget,
    cuda_provider_options,
    make_session_options,
    strict_device,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("sessions", "cores", "threads"),
    [(1, 2, 2), (2, 2, 1), (3, 2, 1), (1, 16, 16), (2, 16, 8), (3, 16, 5), (0, 4, 4)],
)
def test_thread_budget_splits_the_cores_over_concurrent_sessions(sessions: int, cores: int, threads: int) -> None:
    assert cpu_thread_budget(sessions, cores) == threads
    assert cpu_thread_budget(sessions, cores) * max(1, sessions) <= max(cores, sessions)  # never oversubscribed past 1 each


def _entry(opts: ort.SessionOptions, key: str) -> str | None:
    try:
        return opts.get_session_config_entry(key)
    except RuntimeError:  # ORT raises for a key never set
        return None


@pytest.mark.parametrize(
    ("providers", "strict"),
    [(["CUDAExecutionProvider"], True), (["CUDAExecutionProvider", "CPUExecutionProvider"], False), (["CPUExecutionProvider"], False)],
)
def test_cpu_fallback_is_off_behind_a_device_ep_only(providers: list[str], strict: bool) -> None:
    assert strict_device(providers) is strict
    opts = make_session_options(ort, providers, 3)
    assert _entry(opts, CPU_FALLBACK_KEY) == ("1" if strict else None)
    assert opts.intra_op_num_threads == 3 and opts.inter_op_num_threads == 1
    assert opts.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL


def test_cuda_provider_options_carry_the_stream_and_the_kernel_choices() -> None:
    opts = cuda_provider_options(1, 0x7F00AB)
    assert opts == {
        "device_id": "1",
        "cudnn_conv_algo_search": "EXHAUSTIVE",
        "prefer_nhwc": "1",
        "use_tf32": "1",
        "has_user_compute_stream": "1",
        "user_compute_stream": str(0x7F00AB),
    }
    plain = cuda_provider_options(0, None, prefer_nhwc=False, cudnn_conv_algo_search="HEURISTIC", use_tf32=False)
    assert "user_compute_stream" not in plain and plain["prefer_nhwc"] == "0" and plain["use_tf32"] == "0"
    assert plain["cudnn_conv_algo_search"] == "HEURISTIC"
    with pytest.raises(ValueError, match="stream_handle 0"):
        cuda_provider_options(0, 0)
    with pytest.raises(ValueError, match="cudnn_conv_algo_search"):
        cuda_provider_options(0, None, cudnn_conv_algo_search="FAST")


def _relu(path: Path) -> Path:
    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, 8, 8])
    y = helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", 3, 8, 8])
    graph = helper.make_graph([helper.make_node("Relu", ["images"], ["out"])], "g", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_cpu_backend_runs_with_its_thread_budget_and_no_stream(tmp_path: Path) -> None:
    be = OnnxRuntimeBackend(_relu(tmp_path / "relu.onnx"), intra_op_threads=1)
    assert be.stream is None
    assert be._session.get_providers() == ["CPUExecutionProvider"]
    x = np.linspace(-1, 1, 2 * 3 * 8 * 8, dtype=np.float32).reshape(2, 3, 8, 8)
    np.testing.assert_array_equal(be.infer({"images": x})["out"], np.maximum(x, 0))
    be.close()


def test_cuda_without_onnxruntime_gpu_is_a_clear_model_load_error(tmp_path: Path) -> None:
    from config.errors import ModelLoadError

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA (tests/gpu covers it)")
    with pytest.raises(ModelLoadError, match="CUDAExecutionProvider"):
        OnnxRuntimeBackend(_relu(tmp_path / "relu.onnx"), device="cpu", providers=["CUDAExecutionProvider"])


@pytest.mark.parametrize(
    ("config", "expected"),
    [("config/pipeline.yaml", "budget3"), ("config/bench_cpu_detector_4k.yaml", "budget1"), ("config/gpu.yaml", 0)],
)
def test_app_gives_each_cpu_session_its_share_of_the_cores(config: str, expected: str | int) -> None:
    import os

    from app.build import intra_op_threads
    from config.loader import load_pipeline_config

    cfg = load_pipeline_config(ROOT / config)
    cores = os.cpu_count() or 1
    want = {"budget3": max(1, cores // 3), "budget1": cores}.get(str(expected), expected)
    assert intra_op_threads(cfg) == want
    data = cfg.model_dump(mode="json")
    data["backend"]["onnxruntime"]["intra_op_threads"] = 7
    assert intra_op_threads(type(cfg).model_validate(data)) == 7  # an explicit count is kept
