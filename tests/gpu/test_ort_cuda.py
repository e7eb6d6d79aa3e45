"""ONNX Runtime CUDA (IOBinding on CuPy) against ONNX Runtime CPU on the same inputs, real models."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from pipeline.preprocess import InputSpec, preprocess_numpy
from pipeline.types import Frame, FrameMeta
from tests.gpu.conftest import asset

DETECTOR = (".devcarry/m/person_yolov8s.onnx", ".cache/assets/models/person_yolov8s.onnx")
# the last candidate is written by the setup: the demo detector, batch-dynamic, with a seeded seg head
SEG = (".devcarry/m/yolo26n-seg.onnx", ".cache/models/yolo26n-seg.onnx", ".cache/assets/models/person_yolov8s.seg.dyn.onnx")


@pytest.fixture(scope="module")
def cuda_ep(cp: Any) -> None:
    ort = pytest.importorskip("onnxruntime")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu (CUDAExecutionProvider) not installed")


def frame_tensor(spec: InputSpec, seed: int = 0) -> tuple[np.ndarray, Any]:
    """A preprocessed batch of a smooth random 4K frame (NumPy reference preprocessing)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (68, 120, 3), dtype=np.uint8)
    img = np.repeat(np.repeat(small, 32, axis=0), 32, axis=1)[:2160, :3840]
    frame = Frame(FrameMeta("t", 0, 0.0, 0.0, 3840, 2160), np.ascontiguousarray(img))
    pre = preprocess_numpy(frame, spec)
    return pre.tensor, pre


@pytest.mark.parametrize("synchronize", [False, True])
def test_detector_gpu_matches_cpu(cp: Any, cuda_ep: None, synchronize: bool) -> None:
    from config.schema import ModelConfig
    from models.onnxruntime_backend import OnnxRuntimeBackend
    from models.ort_cuda import CudaBinding
    from models.yolo import YoloAdapter

    path = asset(*DETECTOR)
    x, pre = frame_tensor(InputSpec("yolo_tiles", "tiles", 640, 640, overlap=0.2))
    x = x[:8]
    cpu = OnnxRuntimeBackend(path, device="cpu")
    gpu = OnnxRuntimeBackend(path, device="gpu")
    assert gpu._gpu is not None
    gpu._gpu = CudaBinding(gpu._session, gpu.inputs, gpu.outputs, 0, synchronize=synchronize)
    name = cpu.inputs[0].name
    ref = cpu.infer({name: x[:1]})  # the demo detector has a static batch of 1
    for i in range(len(x)):
        ref_i = cpu.infer({name: x[i : i + 1]})
        got_i = gpu.infer({name: cp.asarray(x[i : i + 1])})
        for key, r in ref_i.items():
            g = cp.asnumpy(got_i[key])
            assert g.shape == r.shape and g.dtype == r.dtype
            # the CUDA EP convolves in TF32 by default: about 1e-3 relative per layer
            err = float(np.abs(g - r).max() / (np.abs(r).max() + 1e-6))
            assert err < 2e-2, f"tile {i} output {key}: max abs error {err:.2e} of the output range"
    del ref
    cfg = ModelConfig(path=str(path), kind="yolo", person_classes=[0, 1], score_threshold=0.25)
    adapter = YoloAdapter(cfg)
    from dataclasses import replace

    plan1 = replace(pre.plan, origins=pre.plan.origins[:1], content_wh=pre.plan.content_wh[:1])
    pre1 = replace(pre, tensor=x[:1], plan=plan1)
    d_cpu = adapter.decode(cpu.infer({name: x[:1]}), pre1)
    d_gpu = adapter.decode(gpu.infer({name: cp.asarray(x[:1])}), pre1)
    assert len(d_cpu) == len(d_gpu), f"{len(d_cpu)} detections on the CPU, {len(d_gpu)} on the GPU"
    if len(d_cpu):
        assert np.abs(d_cpu.xyxy - d_gpu.xyxy).max() < 1.0
        assert np.abs(d_cpu.score - d_gpu.score).max() < 1e-2


def test_seg_model_batch_33_gpu_matches_cpu(cp: Any, cuda_ep: None) -> None:
    """Strict float32 on the GPU (TF32 off), so that rows of the top-300 list line up."""
    from models.onnxruntime_backend import OnnxRuntimeBackend
    from models.ort_cuda import CudaBinding

    path = asset(*SEG)
    rng = np.random.default_rng(1)
    x = rng.random((33, 3, 640, 640), dtype=np.float32)
    cpu = OnnxRuntimeBackend(path, device="cpu")
    gpu = OnnxRuntimeBackend(path, device="gpu")
    gpu._gpu = CudaBinding(gpu._session, gpu.inputs, gpu.outputs, 0, provider_options={"use_tf32": "0"})
    name = cpu.inputs[0].name
    ref = cpu.infer({name: x[:3]})
    got = gpu.infer({name: cp.asarray(x)})
    for key, r in ref.items():
        g = cp.asnumpy(got[key])[:3]
        assert got[key].shape[0] == 33 and g.shape[1:] == r.shape[1:], f"{key}: {got[key].shape} vs {r.shape}"
        if r.ndim == 3:
            # [B, 300, 38]: random weights give near-equal scores, so rows may swap places;
            # compare the sorted scores (an order statistic is continuous in the inputs)
            g, r = np.sort(g[..., 4], axis=1), np.sort(r[..., 4], axis=1)
        err = float(np.abs(g - r).max() / (np.abs(r).max() + 1e-6))
        assert err < 2e-3, f"output {key}: max abs error {err:.2e} of the output range"
    gpu.close()


def test_outputs_are_fresh_per_call(cp: Any, cuda_ep: None) -> None:
    from models.onnxruntime_backend import OnnxRuntimeBackend

    path = asset(*SEG)
    gpu = OnnxRuntimeBackend(path, device="gpu")
    name = gpu.inputs[0].name
    a = gpu.infer({name: cp.zeros((1, 3, 640, 640), cp.float32) + 0.2})
    a_copy = {k: v.copy() for k, v in a.items()}
    gpu.infer({name: cp.zeros((1, 3, 640, 640), cp.float32) + 0.9})
    for k in a:
        assert bool((a[k] == a_copy[k]).all()), f"output {k} was overwritten by the next call"


@pytest.mark.parametrize("priority", ["normal", "high", "low"])
def test_streams_wrap_their_handle_without_the_deprecated_api(cp: Any, priority: str) -> None:
    """The binding's own stream and a given handle are CuPy streams on that very handle, made
    without ``cupy.cuda.ExternalStream`` (deprecated in CuPy 14: a DeprecationWarning per
    session), and kernels run on them."""
    import warnings

    from models import ort_cuda
    from models.onnxruntime_backend import _cuda_stream

    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        own = ort_cuda.make_stream(0, priority)
        given = _cuda_stream(0, "normal", own.ptr)
    assert own.ptr != 0 and given.ptr == own.ptr
    with given:
        total = cp.arange(1000, dtype=cp.int64).sum()
    given.synchronize()
    assert int(total) == 499500
    del given  # not the owner: the handle lives on
    with own:
        again = cp.ones(8).sum()
    own.synchronize()
    assert float(again) == 8.0
