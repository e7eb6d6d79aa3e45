"""TensorRT backend against ONNX Runtime on a small engine built here.

TensorRT cannot be installed on any machine this project has (the GPU host reaches no registry and
no TensorRT wheel is staged), so these tests skip there and here; they run wherever ``tensorrt``
imports (the production Docker image).
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper


@pytest.fixture(scope="module")
def trt(cp: Any) -> Any:
    return pytest.importorskip("tensorrt", reason="TensorRT is not installed on this machine (none of the project's machines has it)")


def conv_onnx(path: Path) -> Path:
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.2, "w")
    b = numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "b")
    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, 64, 64])
    y = helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", 8, 64, 64])
    nodes = [helper.make_node("Conv", ["images", "w", "b"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["out"])]
    graph = helper.make_graph(nodes, "conv", [x], [y], initializer=[w, b])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


@pytest.mark.parametrize("cuda_graphs", [False, True])
def test_small_engine_matches_onnxruntime(cp: Any, trt: Any, tmp_path: Path, cuda_graphs: bool) -> None:
    from models.engine_build import EngineRecipe, build_engine
    from models.onnxruntime_backend import OnnxRuntimeBackend
    from models.tensorrt_backend import TensorRTBackend

    onnx_path = conv_onnx(tmp_path / "conv.onnx")
    engine = tmp_path / "conv.fp32.engine"
    recipe = EngineRecipe("conv", str(onnx_path), "images", (1, 3, 64, 64), (4, 3, 64, 64), (4, 3, 64, 64), "fp32", ())
    build_engine(SimpleNamespace(), recipe, engine, workspace_mib=256, calibration_frames=0)
    backend = TensorRTBackend(onnx_path, engine_path=engine, cuda_graphs=cuda_graphs)
    ref_backend = OnnxRuntimeBackend(onnx_path, device="cpu")
    for batch in (1, 4, 4, 2):
        x = np.random.default_rng(batch).random((batch, 3, 64, 64), dtype=np.float32)
        got = cp.asnumpy(backend.infer({"images": cp.asarray(x)})["out"])
        ref = ref_backend.infer({"images": x})["out"]
        err = float(np.abs(got - ref).max())
        assert err < 1e-3, f"batch {batch}: max abs error {err:.2e} (TF32 allowed)"
    backend.close()
