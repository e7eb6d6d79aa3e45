"""The setup's int8 copy of the demo detector (models.onnx_int8): the softmax swap is bitwise, the
decode tail stays float, the copy counts what the float32 detector counts on the 4K demo, and
graphs that are not a YOLO head are refused by name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from app.assets import demo_asset_paths
from models.onnx_int8 import Int8RewriteError, decode_tail, move_softmax_before_transpose

ROOT = Path(__file__).resolve().parents[1]
ASSETS = demo_asset_paths(ROOT / ".cache" / "assets")

# Measured 2026-12-02 on 12 frames of the 4K demo (every 10th; the frame and 32 tiles, merged,
# ORT 1.32 CPU): int8 found -1.6 % .. +2.3 % of float32's people per frame, +0.4 % on average.
INT8_FRAME_REL_TOL = 0.05
INT8_MEAN_REL_TOL = 0.02
COUNT_FRAMES = (0, 60, 110)


def _need(*paths: Path) -> None:
    for path in paths:
        if not path.exists():
            pytest.skip(f"{path} missing: run `python main.py fetch-assets` (make assets)")


def _session(path: Path | bytes) -> Any:
    ort = pytest.importorskip("onnxruntime")
    return ort.InferenceSession(path if isinstance(path, bytes) else str(path), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def frames() -> list[Any]:
    _need(ASSETS.demo_4k_clip)
    from pipeline.sources import PyAVSource

    out = []
    with PyAVSource(str(ASSETS.demo_4k_clip), stream_id="t") as src:
        for i, frame in enumerate(src.frames()):
            if i in COUNT_FRAMES:
                out.append(frame)
            if i >= max(COUNT_FRAMES):
                break
    assert len(out) == len(COUNT_FRAMES)
    return out


def test_softmax_before_transpose_is_bitwise_the_original_on_real_tiles(frames: list[Any]) -> None:
    _need(ASSETS.detector_dyn_onnx)
    from pipeline.preprocess import InputSpec, preprocess_numpy

    model = onnx.load(str(ASSETS.detector_dyn_onnx))
    swapped, swaps = move_softmax_before_transpose(model)
    assert swaps == 1  # the DFL softmax of the head
    (sm,) = [n for n in swapped.graph.node if n.op_type == "Softmax"]
    assert [a.i for a in sm.attribute if a.name == "axis"] == [2]
    tiles = preprocess_numpy(frames[0], InputSpec("t", "tiles", 640, 640, overlap=0.2)).tensor[[0, 9, 20, 31]]
    (a,) = _session(ASSETS.detector_dyn_onnx).run(None, {"images": tiles})
    (b,) = _session(swapped.SerializeToString()).run(None, {"images": tiles})
    assert np.array_equal(a, b)


def test_the_decode_tail_is_the_heads_concats_and_what_follows() -> None:
    _need(ASSETS.detector_dyn_onnx)
    model = onnx.load(str(ASSETS.detector_dyn_onnx))
    tail = set(decode_tail(model))
    by_name = {n.name: n for n in model.graph.node}
    concats = [n for n in tail if by_name[n].op_type == "Concat"]
    # three per-level Concats (box + class logits), the level Concat, the output Concat
    assert len(concats) >= 4
    convs = [n for n in tail if by_name[n].op_type == "Conv"]
    assert convs == ["/model.22/dfl/conv/Conv"]  # the DFL's fixed 1x1 conv; every learnt conv is quantized
    assert {"/model.22/dfl/Softmax", "/model.22/Sigmoid"} <= tail
    producers_of_output = {n.name for n in model.graph.node if set(n.output) & {o.name for o in model.graph.output}}
    assert producers_of_output <= tail


def test_a_graph_without_a_yolo_head_is_refused_by_name() -> None:
    w = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w")
    g = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], name="conv"), helper.make_node("Relu", ["y"], ["z"], name="relu")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 4, 6, 6])], [w],
    )  # fmt: skip
    with pytest.raises(Int8RewriteError, match="no Concat of raw Conv outputs"):
        decode_tail(helper.make_model(g))


def test_the_shipped_int8_copy_is_quantized_with_a_float_tail() -> None:
    _need(ASSETS.detector_dyn_int8_onnx)
    model = onnx.load(str(ASSETS.detector_dyn_int8_onnx))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") > 50 and ops.count("DequantizeLinear") > 100
    int8_weights = [t for t in model.graph.initializer if t.data_type == TensorProto.INT8]
    assert len(int8_weights) >= 60  # every learnt conv's weights
    (sm,) = [n for n in model.graph.node if n.op_type == "Softmax"]
    assert [a.i for a in sm.attribute if a.name == "axis"] == [2]
    # the output is computed in float: its producer reads no DequantizeLinear output directly
    producer = {o: n for n in model.graph.node for o in n.output}
    last = producer[model.graph.output[0].name]
    assert last.op_type == "Concat" and all(producer[i].op_type != "DequantizeLinear" for i in last.input)


def _merged_counts(cfg: Any, frames: list[Any]) -> list[int]:
    from app.build import make_branches
    from pipeline.counting import merge_detections

    (branch,) = make_branches(cfg, only={"yolo"})
    try:
        counts = []
        for frame in frames:
            res = branch.run(frame)
            d = res.detections
            merged = merge_detections(d[d.source < 0], d[d.source >= 0], res.tile_rects, (frame.meta.width, frame.meta.height), cfg.counting.merge)
            counts.append(len(merged))
        return counts
    finally:
        branch.close()


def test_int8_counts_the_people_float32_counts_on_the_4k_demo(frames: list[Any]) -> None:
    """The frame and its 32 tiles through the real detector branch, float32 vs the int8 copy."""
    _need(ASSETS.detector_dyn_onnx, ASSETS.detector_dyn_int8_onnx)
    from config.loader import load_pipeline_config

    cfg = load_pipeline_config(ROOT / "config" / "bench_cpu_detector_4k.yaml")
    person = cfg.models["person"]
    def with_model(path: Path) -> Any:
        return cfg.model_copy(update={"models": {**cfg.models, "person": person.model_copy(update={"path": str(path)})}})

    fp32, int8 = with_model(ASSETS.detector_dyn_onnx), with_model(ASSETS.detector_dyn_int8_onnx)
    ref = np.array(_merged_counts(fp32, frames), float)
    got = np.array(_merged_counts(int8, frames), float)
    assert ref.min() > 100  # the demo's crowd: 120-130 people a frame
    rel = (got - ref) / ref
    assert np.abs(rel).max() <= INT8_FRAME_REL_TOL, (ref.tolist(), got.tolist())
    assert abs(rel.mean()) <= INT8_MEAN_REL_TOL, (ref.tolist(), got.tolist())


def test_cpu_sessions_ask_for_exact_int8_products_on_cpus_without_vnni() -> None:
    """ONNX Runtime multiplies uint8 activations by int8 weights with ``VPMADDUBSW`` on x86 CPUs
    without VNNI: two products summed in 16 bits, which saturates (docs/MODELS.md). The sessions
    the CPU path makes for the int8 copy carry ORT's remedy, ``session.x64quantprecision``."""
    _need(ASSETS.detector_dyn_int8_onnx)
    from models.onnxruntime_backend import QUANT_PRECISION_KEY, load_session

    sess = load_session(ASSETS.detector_dyn_int8_onnx, ["CPUExecutionProvider"], 1)
    assert sess.get_session_options().get_session_config_entry(QUANT_PRECISION_KEY) == "1"


def test_a_cached_copy_of_an_older_recipe_is_written_again(tmp_path: Path) -> None:
    """Setup keeps what is in its cache, except an int8 copy made by another recipe (the 7-bit
    weights tried once): that one is deleted, with a line saying why, so the step writes it anew."""
    from app.assets import _drop_stale_int8
    from models.onnx_int8 import INT8_RECIPE, RECIPE_KEY, UNMARKED_RECIPE, int8_recipe

    def tiny(path: Path, props: dict[str, str]) -> Path:
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
        model = helper.make_model(helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y]))
        helper.set_model_props(model, props)
        onnx.save(model, str(path))
        return path

    lines: list[str] = []
    current = tiny(tmp_path / "current.onnx", {RECIPE_KEY: INT8_RECIPE})
    unmarked = tiny(tmp_path / "unmarked.onnx", {})  # written before the mark: this recipe
    seven_bit = tiny(tmp_path / "seven_bit.onnx", {RECIPE_KEY: "2: 7-bit weights"})
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not an onnx file")
    for path in (current, unmarked, seven_bit, broken):
        _drop_stale_int8(path, lines.append)
    assert current.is_file() and int8_recipe(current) == INT8_RECIPE
    assert unmarked.is_file() and int8_recipe(unmarked) == INT8_RECIPE == UNMARKED_RECIPE
    assert not seven_bit.exists() and not broken.exists()
    assert len(lines) == 2 and "2: 7-bit weights" in lines[0] and "unreadable" in lines[1]
    _drop_stale_int8(tmp_path / "absent.onnx", lines.append)  # nothing cached: nothing to say
    assert len(lines) == 2
