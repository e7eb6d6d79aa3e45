"""The setup's rewrites of the demo detector: batch-dynamic (bitwise the original per image, batch
33 in one call) and float16 (within measured tolerances of float32), on real frames of the demo
clip; and the rewrite's refusals on graphs it does not cover."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from app.assets import demo_asset_paths
from models.onnx_prep import BATCH_DIM, BatchRewriteError, make_batch_dynamic, make_float16

ROOT = Path(__file__).resolve().parents[1]
ASSETS = demo_asset_paths(ROOT / ".cache" / "assets")

# float16 vs float32 on the global pass + 7 tiles of demo clip frame 0, measured 2026-12-01 (ORT
# 1.32 CPU): class scores differ by at most 1.7e-3, boxes of anchors scoring > 0.25 by 0.28 px,
# any box (low-score anchors: large, vague boxes) by 3.5 px. Tolerances about 3x those.
FP16_SCORE_ATOL = 5e-3
FP16_CONFIDENT_BOX_ATOL_PX = 1.0
FP16_ANY_BOX_ATOL_PX = 10.0


def _session(path: Path) -> Any:
    ort = pytest.importorskip("onnxruntime")
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def frame_batch() -> np.ndarray:
    """(33, 3, 640, 640): the letterboxed frame and its 32 tiles, frame 0 of the 4K demo clip."""
    for path in (ASSETS.detector_onnx, ASSETS.detector_dyn_onnx, ASSETS.detector_dyn_fp16_onnx, ASSETS.demo_4k_clip):
        if not path.exists():
            pytest.skip(f"{path} missing: run `python main.py fetch-assets` (make assets)")
    from pipeline.preprocess import InputSpec, preprocess_numpy
    from pipeline.sources import PyAVSource

    with PyAVSource(str(ASSETS.demo_4k_clip), stream_id="t") as src:
        frame = next(iter(src.frames()))
    glob = preprocess_numpy(frame, InputSpec("g", "letterbox", 640, 640)).tensor
    tiles = preprocess_numpy(frame, InputSpec("t", "tiles", 640, 640, overlap=0.2)).tensor
    batch = np.concatenate([glob, tiles])
    assert batch.shape == (33, 3, 640, 640)
    return batch


def test_batch_dynamic_detector_is_bitwise_the_original_per_image_at_batch_33(frame_batch: np.ndarray) -> None:
    dyn = _session(ASSETS.detector_dyn_onnx)
    orig = _session(ASSETS.detector_onnx)
    assert dyn.get_inputs()[0].shape == [BATCH_DIM, 3, 640, 640]
    assert dyn.get_outputs()[0].shape == [BATCH_DIM, 6, 8400]
    name = dyn.get_inputs()[0].name
    (batched,) = dyn.run(None, {name: frame_batch})
    assert batched.shape == (33, 6, 8400)
    for i in (0, 1, 16, 32):  # the global pass, the first, a middle and the last tile
        (single,) = orig.run(None, {name: frame_batch[i : i + 1]})
        assert np.array_equal(batched[i : i + 1], single), f"image {i}: max abs {np.abs(batched[i] - single[0]).max()}"
    assert float(batched[:, 4:].max()) > 0.5, "the frame should hold confident people (a real frame, real weights)"


def test_float16_detector_is_within_measured_tolerance_of_float32(frame_batch: np.ndarray) -> None:
    fp32 = _session(ASSETS.detector_dyn_onnx)
    fp16 = _session(ASSETS.detector_dyn_fp16_onnx)
    assert fp16.get_inputs()[0].type == "tensor(float)" and fp16.get_outputs()[0].type == "tensor(float)"
    weights = onnx.load(str(ASSETS.detector_dyn_fp16_onnx)).graph.initializer
    assert any(t.data_type == TensorProto.FLOAT16 for t in weights), "the copy should hold float16 weights"
    x = frame_batch[:8]
    name = fp32.get_inputs()[0].name
    (ref,) = fp32.run(None, {name: x})
    (got,) = fp16.run(None, {name: x})
    score_err = float(np.abs(ref[:, 4:] - got[:, 4:]).max())
    box_err = np.abs(ref[:, :4] - got[:, :4]).max(axis=1)  # (B, anchors)
    confident = ref[:, 4:].max(axis=1) > 0.25
    assert confident.sum() > 10
    assert score_err <= FP16_SCORE_ATOL, f"scores differ by {score_err:.2e}"
    assert float(box_err[confident].max()) <= FP16_CONFIDENT_BOX_ATOL_PX, f"confident boxes: {box_err[confident].max():.3f} px"
    assert float(box_err.max()) <= FP16_ANY_BOX_ATOL_PX, f"boxes: {box_err.max():.3f} px"


def _reshape_model(batch: int, shape: list[int], allowzero: int | None = None) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 4, 6])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, *shape[1:]])
    init = numpy_helper.from_array(np.array(shape, np.int64), "shape")
    kwargs = {} if allowzero is None else {"allowzero": allowzero}
    node = helper.make_node("Reshape", ["x", "shape"], ["y"], **kwargs)
    graph = helper.make_graph([node], "g", [x], [y], initializer=[init])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_rewrite_keeps_the_input_batch_in_reshapes() -> None:
    model = make_batch_dynamic(_reshape_model(1, [1, 24]))
    assert numpy_helper.to_array(model.graph.initializer[0]).tolist() == [0, 24]
    sess = pytest.importorskip("onnxruntime").InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.arange(3 * 24, dtype=np.float32).reshape(3, 4, 6)
    (y,) = sess.run(None, {"x": x})
    np.testing.assert_array_equal(y, x.reshape(3, 24))


@pytest.mark.parametrize(
    ("batch", "shape", "allowzero", "match"),
    [(2, [2, 24], None, "batch is 2"), (1, [4, 6], None, "does not begin with the batch"), (1, [1, 24], 1, "allowzero")],
)
def test_rewrite_refuses_what_it_does_not_cover(batch: int, shape: list[int], allowzero: int | None, match: str) -> None:
    with pytest.raises(BatchRewriteError, match=match):
        make_batch_dynamic(_reshape_model(batch, shape, allowzero))


def test_float16_copy_keeps_float32_io_and_sorted_nodes() -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 3])
    w = numpy_helper.from_array(np.array([0.5, 2.0, -1.0], np.float32), "w")
    graph = helper.make_graph([helper.make_node("Mul", ["x", "w"], ["y"])], "g", [x], [y], initializer=[w])
    fp16 = make_float16(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    assert fp16.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert fp16.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    seen = {i.name for i in fp16.graph.input} | {t.name for t in fp16.graph.initializer}
    for node in fp16.graph.node:  # topological: what TensorRT's parser needs
        assert all(i in seen for i in node.input if i), f"{node.name} before its inputs"
        seen.update(node.output)
    sess = pytest.importorskip("onnxruntime").InferenceSession(fp16.SerializeToString(), providers=["CPUExecutionProvider"])
    (out,) = sess.run(None, {"x": np.array([[1.0, 1.0, 1.0]], np.float32)})
    np.testing.assert_allclose(out, [[0.5, 2.0, -1.0]])
