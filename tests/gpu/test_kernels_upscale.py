"""The fused kernel on an upscaled density grid (``upscale`` > 1: bilinear cells, float origins)
against the NumPy reference, on seeded random frames; and the density map it leads to."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest

from pipeline.preprocess import InputSpec, preprocess_numpy
from tests.gpu.test_kernels import GLOBAL, TILES, check, device_frame, host_frame, poison_pool

DENSITY = InputSpec("density", "grid", 640, 720, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), pad_value=0)
SIZES = [(3840, 2160), (1920, 1152), (1282, 722)]
UPSCALES = [1.5, 2.0, 3.0]


@pytest.mark.parametrize("upscale", UPSCALES)
@pytest.mark.parametrize("layout", ["nv12", "rgb"])
@pytest.mark.parametrize(("w", "h"), SIZES)
def test_upscaled_grid_matches_numpy_reference(cp: Any, w: int, h: int, layout: str, upscale: float) -> None:
    from gpu.kernels import memory_floor_bytes
    from gpu.preprocess import GpuPreprocessor

    frame = host_frame(w, h, layout, seed=w * 3 + h + int(upscale * 10))
    dframe = device_frame(cp, frame)
    ref = preprocess_numpy(frame, dataclasses.replace(DENSITY, upscale=upscale)).tensor
    for dtype in ("float32", "float16"):
        spec = dataclasses.replace(DENSITY, upscale=upscale, dtype=dtype)
        plan = spec.plan(w, h)
        poison_pool(cp, memory_floor_bytes([(spec, plan)], 0) + 4096)
        out = GpuPreprocessor(spec).run(dframe)
        assert out.plan.count == plan.count == out.tensor.shape[0]
        check(cp.asnumpy(out.tensor), ref, dtype, f"density x{upscale} {dtype} {w}x{h} {layout}")


def test_upscaled_grid_in_one_launch_with_the_detector_specs(cp: Any) -> None:
    from gpu.preprocess import GpuMultiPreprocessor

    frame = host_frame(3840, 2160, "nv12", seed=11)
    dframe = device_frame(cp, frame)
    specs = [GLOBAL, TILES, dataclasses.replace(DENSITY, upscale=2.0)]
    out = GpuMultiPreprocessor(specs).run_all(dframe)
    assert out["density"].tensor.shape == (72, 3, 720, 640)  # 4x the 18 cells of upscale 1
    for spec in specs:
        check(cp.asnumpy(out[spec.name].tensor), preprocess_numpy(frame, spec).tensor, "float32", f"one launch: {spec.name}")


def test_density_map_of_the_gpu_tensor_is_the_hosts(cp: Any) -> None:
    """The adapter on the device tensor (contrast measured on the GPU) gives the host's map."""
    from config.schema import ModelConfig
    from gpu.preprocess import GpuPreprocessor
    from models.density import DensityAdapter

    frame = host_frame(1920, 1152, "rgb", seed=5)
    spec = dataclasses.replace(DENSITY, upscale=2.0)
    host = preprocess_numpy(frame, spec)
    dev = GpuPreprocessor(spec).run(device_frame(cp, frame))
    rng = np.random.default_rng(0)
    maps = rng.random((host.plan.count, 1, 90, 80)).astype(np.float32)
    adapter = DensityAdapter(ModelConfig(path="unused.onnx", kind="density"), input_std=spec.std)
    a = adapter.decode({"density": maps}, host)
    b = adapter.decode({"density": cp.asarray(maps)}, dev)
    np.testing.assert_allclose(b.density, a.density, rtol=1e-6)
    assert a.contrast is not None and b.contrast is not None
    np.testing.assert_allclose(b.contrast, a.contrast, rtol=1e-3, atol=1e-2)
    assert a.density.shape == (1152 // 8, 1920 // 8)
