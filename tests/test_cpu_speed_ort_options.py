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
    # device 0 is the EP's default and is not named: a device_id makes ORT >= 1.26 look for a
    # plugin EP device and warn at every session that none is registered
    assert "device_id" not in plain
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


DYN_DETECTOR = ROOT / ".cache/assets/models/person_yolov8s.dyn.onnx"


@pytest.mark.skipif(not DYN_DETECTOR.exists(), reason="demo assets not fetched (`python main.py fetch-assets`)")
def test_a_cpu_batch_runs_in_calls_of_cpu_batch_images_with_the_same_outputs() -> None:
    """The real batch-dynamic detector on 5 letterboxed vtest frames: in calls of 2 images (3 calls)
    the outputs are those of one call of 5."""
    import av

    from pipeline.preprocess import InputSpec, NumpyPreprocessor
    from pipeline.types import Frame, FrameMeta

    pre = NumpyPreprocessor(InputSpec("g", "letterbox", 640, 640))
    images = []
    with av.open(str(ROOT / ".cache/assets/video/vtest.avi")) as c:
        for i, vf in enumerate(c.decode(video=0)):
            if i % 40 == 0:
                img = vf.to_ndarray(format="rgb24")
                images.append(pre.run(Frame(FrameMeta("t", i, 0.0, 0.0, img.shape[1], img.shape[0]), img)).tensor)
            if len(images) == 5:
                break
    batch = np.concatenate(images)
    whole = OnnxRuntimeBackend(DYN_DETECTOR, intra_op_threads=1, cpu_batch=0)
    split = OnnxRuntimeBackend(DYN_DETECTOR, intra_op_threads=1, cpu_batch=2)
    calls = []
    run = split._session.run
    split._session.run = lambda *a, **k: calls.append(len(a[1]["images"])) or run(*a, **k)  # type: ignore[method-assign]
    try:
        a, b = whole.infer({"images": batch}), split.infer({"images": batch})
    finally:
        whole.close()
        split.close()
    assert calls == [2, 2, 1]
    assert a.keys() == b.keys() and all(a[k].shape == b[k].shape == (5, 6, 8400) for k in a)
    assert max(float(np.abs(a[k] - b[k]).max()) for k in a) <= 1e-3
