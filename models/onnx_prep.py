"""Setup-time rewrites of ONNX models: a batch-dynamic copy of a static-batch export, and float16 copies.

Both run once, when the assets are fetched (``app.assets``), never at run time; the run time reads
the written files by path, so ``models.<name>.path`` in the config chooses the variant (for
example ``person_yolov8s.dyn.onnx`` or ``person_yolov8s.dyn.fp16.onnx``).

:func:`make_batch_dynamic`: an Ultralytics export with ``dynamic=False`` bakes its batch (1) into
the input, the outputs and the shape constants of its ``Reshape`` nodes (``[1, 66, -1]``,
``[1, 4, 16, 8400]`` ...). ONNX ``Reshape`` copies the input's dimension where the shape holds 0
(``allowzero=0``, the default), so replacing that leading literal 1 by 0 keeps the batch of the
input, and a symbolic batch on the graph's input and outputs lets callers send any batch. The
arithmetic is untouched: outputs per image are bitwise those of the original (a test checks it on
real frames).

:func:`make_float16`: ONNX Runtime's own converter
(``onnxruntime.transformers.float16.convert_float_to_float16``) with ``keep_io_types=True``: the
graph computes in float16, its input and outputs stay float32, so preprocessing and adapters do
not change.

:func:`make_input_size`: an Ultralytics YOLOv8/11 detect export bakes its input size (640x640) into
the DFL decode: the anchor points (``[1, 2, 8400]``, grid cell centres of strides 8, 16, 32), the
per-anchor strides (``[1, 8400]``) and the ``Reshape`` shapes that name the anchor count
(``[0, 4, 16, 8400]``, ``[0, 4, 8400]``; per-level ``[1, 144, 6400]`` in unsimplified exports).
Convolutions, the x2 nearest ``Resize`` (by scales) and the channel ``Split`` nodes follow any input
size, so rewriting those constants for another H x W (multiples of 32) gives the same network at
that size: bitwise the original at 640x640 (a test checks it), and on smaller inputs the boxes the
model finds at that scale.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from numpy.typing import NDArray
from onnx import numpy_helper

__all__ = [
    "BATCH_DIM",
    "YOLO_STRIDES",
    "InputSizeRewriteError",
    "add_seg_head",
    "e2e_from_v8_seg",
    "make_batch_dynamic",
    "make_float16",
    "make_input_size",
    "v8_anchors",
    "write_batch_dynamic",
    "write_float16",
    "write_input_size",
    "write_seg_head",
    "write_seg_samples",
]

BATCH_DIM = "batch"
"""Name of the symbolic batch dimension written on the input and outputs."""


class BatchRewriteError(ValueError):
    """The model's batch cannot be made dynamic by this rewrite (the message says why)."""


def _static_batch(vi: onnx.ValueInfoProto) -> int:
    dims = vi.type.tensor_type.shape.dim
    return int(dims[0].dim_value) if dims and dims[0].HasField("dim_value") else 0


def make_batch_dynamic(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` with a symbolic batch: leading 1 of each ``Reshape`` shape constant -> 0,
    input and output dim 0 -> ``batch``, intermediate shapes dropped (ONNX Runtime infers them).

    Raises :class:`BatchRewriteError` for what the rewrite does not cover: a batch other than 1, a
    ``Reshape`` whose shape is computed or whose ``allowzero`` is set, or batch-bearing constants
    it cannot see (checked by running shape inference on the result)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    if len(g.input) != 1:
        raise BatchRewriteError(f"expected one graph input, got {[i.name for i in g.input]}")
    batch = _static_batch(g.input[0])
    if batch == 0:
        return out  # already dynamic
    if batch != 1:
        raise BatchRewriteError(f"input batch is {batch}; the rewrite keeps a leading 1 only")
    inits = {t.name: t for t in g.initializer}
    consts = {n.output[0]: n for n in g.node if n.op_type == "Constant"}
    for node in g.node:
        if node.op_type != "Reshape":
            continue
        if any(a.name == "allowzero" and a.i for a in node.attribute):
            raise BatchRewriteError(f"{node.name}: allowzero=1, a 0 in its shape would mean size 0")
        shape_name = node.input[1]
        if shape_name in inits:
            tensor = inits[shape_name]
        elif shape_name in consts:
            tensor = consts[shape_name].attribute[0].t
        else:
            continue  # computed shape (Shape -> Gather ...): follows the input already
        shape = numpy_helper.to_array(tensor)
        if shape.ndim == 1 and shape.size and int(shape[0]) == 0:
            continue  # a constant shared by two Reshapes: already rewritten
        if shape.ndim != 1 or shape.size == 0 or int(shape[0]) != 1:
            raise BatchRewriteError(f"{node.name}: shape {shape.tolist()} does not begin with the batch 1")
        fixed = shape.copy()
        fixed[0] = 0
        tensor.CopyFrom(numpy_helper.from_array(fixed.astype(shape.dtype), tensor.name))
    for vi in list(g.input) + list(g.output):
        dims = vi.type.tensor_type.shape.dim
        if dims:
            dims[0].Clear()
            dims[0].dim_param = BATCH_DIM
    del g.value_info[:]  # batch-1 intermediate shapes would contradict other batches
    for prop in out.metadata_props:
        if prop.key == "batch":
            prop.value = BATCH_DIM
    inferred = onnx.shape_inference.infer_shapes(out)
    for vi in inferred.graph.output:
        dims = vi.type.tensor_type.shape.dim
        if dims and dims[0].HasField("dim_value") and dims[0].dim_value == 1:
            raise BatchRewriteError(f"output {vi.name} still has batch 1 after the rewrite (a constant the rewrite missed)")
    onnx.checker.check_model(out)
    return out


YOLO_STRIDES = (8, 16, 32)
"""Strides of the three detect levels (P3, P4, P5) of YOLOv8/11."""


class InputSizeRewriteError(ValueError):
    """The model's input size cannot be changed by this rewrite (not a YOLOv8/11 detect export as
    expected; the message says what is missing)."""


def v8_anchors(height: int, width: int, strides: tuple[int, ...] = YOLO_STRIDES) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """Anchor points ``(2, A)`` (row 0 x, row 1 y, in grid cells) and strides ``(A,)`` of an
    ``height x width`` input, float32: Ultralytics' ``make_anchors`` (cell centres, +0.5, row-major
    within a level, levels in stride order), transposed as the export stores them."""
    points, stride_of = [], []
    for s in strides:
        h, w = height // s, width // s
        sy, sx = np.meshgrid(np.arange(h, dtype=np.float32) + 0.5, np.arange(w, dtype=np.float32) + 0.5, indexing="ij")
        points.append(np.stack([sx.ravel(), sy.ravel()]))
        stride_of.append(np.full(h * w, s, np.float32))
    return np.concatenate(points, axis=1), np.concatenate(stride_of)


def _static_hw(vi: onnx.ValueInfoProto) -> tuple[int, int]:
    dims = vi.type.tensor_type.shape.dim
    if len(dims) != 4 or not all(d.HasField("dim_value") for d in dims[2:]):
        shape = [d.dim_param or d.dim_value for d in dims]
        raise InputSizeRewriteError(f"input {vi.name} is {shape}; expected [B, 3, H, W] with a static H and W")
    return int(dims[2].dim_value), int(dims[3].dim_value)


def _constant_tensors(g: onnx.GraphProto) -> dict[str, onnx.TensorProto]:
    """Name -> tensor of every initializer and ``Constant`` node output (``value`` attribute)."""
    out = {t.name: t for t in g.initializer}
    for node in g.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    out[node.output[0]] = a.t
    return out


def make_input_size(model: onnx.ModelProto, height: int, width: int) -> onnx.ModelProto:
    """A copy of a YOLOv8/11 detect export taking ``[B, 3, height, width]`` input (multiples of 32).

    Rewrites the anchor points, the strides and every ``Reshape`` shape that holds the anchor count
    (or a level's cell count) for the new size; sets the input's H, W and the output's anchor count;
    keeps the batch (static or symbolic). Raises :class:`InputSizeRewriteError` when the graph does
    not hold exactly those constants as a YOLOv8 detect export does (a size not a multiple of 32,
    no anchor or stride constant, no ``Reshape`` naming the anchor count, a ``Resize`` by sizes, or
    shape inference disagreeing with the new anchor count afterwards)."""
    if height <= 0 or width <= 0 or height % YOLO_STRIDES[-1] or width % YOLO_STRIDES[-1]:
        raise InputSizeRewriteError(f"input {width}x{height}: H and W must be positive multiples of {YOLO_STRIDES[-1]}")
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    if len(g.input) != 1 or len(g.output) != 1:
        raise InputSizeRewriteError(
            f"expected one input and one output (a YOLOv8 detect export), got inputs "
            f"{[i.name for i in g.input]}, outputs {[o.name for o in g.output]}"
        )
    old_h, old_w = _static_hw(g.input[0])
    if old_h % YOLO_STRIDES[-1] or old_w % YOLO_STRIDES[-1]:
        raise InputSizeRewriteError(f"input {old_w}x{old_h} is not a multiple of {YOLO_STRIDES[-1]}: not a YOLOv8 export")
    old_points, old_strides = v8_anchors(old_h, old_w)
    new_points, new_strides = v8_anchors(height, width)
    old_a, new_a = old_points.shape[1], new_points.shape[1]
    # Shape entries to map: the anchor count, and each level's cell count (distinct for any
    # size: the levels shrink by 4x).
    count_map = {old_a: new_a}
    for s in YOLO_STRIDES:
        count_map[(old_h // s) * (old_w // s)] = (height // s) * (width // s)
    tensors = _constant_tensors(g)
    found = {"anchor points": 0, "strides": 0, "reshape": 0}
    for node in g.node:
        if node.op_type == "Resize" and len(node.input) > 3 and node.input[3]:
            raise InputSizeRewriteError(f"{node.name}: Resize by sizes bakes the spatial size; the rewrite covers Resize by scales")
    for name, tensor in tensors.items():
        if tensor.data_type != onnx.TensorProto.FLOAT or not tensor.dims or tensor.dims[-1] != old_a:
            continue
        arr = numpy_helper.to_array(tensor)
        if arr.size == 2 * old_a and np.array_equal(arr.reshape(2, old_a), old_points):
            tensor.CopyFrom(numpy_helper.from_array(new_points.reshape(*arr.shape[:-2], 2, new_a), name))
            found["anchor points"] += 1
        elif arr.size == old_a and np.array_equal(arr.reshape(old_a), old_strides):
            tensor.CopyFrom(numpy_helper.from_array(new_strides.reshape(*arr.shape[:-1], new_a), name))
            found["strides"] += 1
        else:
            raise InputSizeRewriteError(f"{name}: float constant of shape {list(arr.shape)} is neither the anchor points nor the strides of a {old_w}x{old_h} input")
    rewritten: set[str] = set()
    for node in g.node:
        if node.op_type != "Reshape" or node.input[1] not in tensors or node.input[1] in rewritten:
            continue
        tensor = tensors[node.input[1]]
        shape = numpy_helper.to_array(tensor)
        if shape.ndim == 1 and any(int(v) in count_map for v in shape):
            fixed = np.array([count_map.get(int(v), int(v)) for v in shape], shape.dtype)
            tensor.CopyFrom(numpy_helper.from_array(fixed, tensor.name))
            rewritten.add(node.input[1])
            found["reshape"] += 1
    missing = [k for k, n in found.items() if n == 0]
    if missing:
        raise InputSizeRewriteError(
            f"no {', '.join(missing)} constant of a {old_w}x{old_h} YOLOv8 detect export "
            f"({old_a} anchors of strides {YOLO_STRIDES}) in the graph: not a YOLOv8/11 detect export"
        )
    in_dims = g.input[0].type.tensor_type.shape.dim
    in_dims[2].dim_value, in_dims[3].dim_value = height, width
    out_dims = g.output[0].type.tensor_type.shape.dim
    if len(out_dims) != 3 or out_dims[2].dim_value != old_a:
        raise InputSizeRewriteError(f"output {g.output[0].name} is not [B, 4+nc, {old_a}]")
    out_dims[2].dim_value = new_a
    del g.value_info[:]  # intermediate shapes of the old size would contradict the new one
    for prop in out.metadata_props:
        if prop.key == "imgsz":
            prop.value = f"[{height}, {width}]"
    try:
        inferred = onnx.shape_inference.infer_shapes(out, strict_mode=True)
    except onnx.shape_inference.InferenceError as exc:
        raise InputSizeRewriteError(f"shape inference fails at {width}x{height} (a size constant the rewrite missed): {exc}") from exc
    got = inferred.graph.output[0].type.tensor_type.shape.dim
    if len(got) != 3 or got[2].dim_value not in (0, new_a):
        raise InputSizeRewriteError(f"output has {got[2].dim_value} anchors after the rewrite, expected {new_a} (a constant the rewrite missed)")
    onnx.checker.check_model(out)
    return out


def make_float16(model: onnx.ModelProto) -> onnx.ModelProto:
    """A float16 copy of ``model`` with float32 input and outputs (ONNX Runtime's converter)."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    fp16 = convert_float_to_float16(model, keep_io_types=True)
    _sort_topologically(fp16.graph)  # the converter appends its input Casts last; TensorRT's parser wants order
    onnx.checker.check_model(fp16)
    return fp16


def _sort_topologically(graph: onnx.GraphProto) -> None:
    """Reorder ``graph.node`` so that every node follows the producers of its inputs (Kahn, stable)."""
    ready = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending = list(graph.node)
    ordered: list[onnx.NodeProto] = []
    while pending:
        rest = []
        for node in pending:
            if all(name in ready for name in node.input):
                ordered.append(node)
                ready.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            raise ValueError(f"graph has a cycle or a missing input at {[n.name for n in rest[:3]]}")
        pending = rest
    copies = [onnx.NodeProto() for _ in ordered]
    for dst, src in zip(copies, ordered, strict=True):
        dst.CopyFrom(src)
    del graph.node[:]
    graph.node.extend(copies)


def _save(model: onnx.ModelProto, out: Path) -> None:
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        onnx.save(model, str(tmp))
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)


def write_batch_dynamic(src: Path, out: Path) -> None:
    """Read ``src``, write its batch-dynamic copy to ``out`` (whole or absent)."""
    _save(make_batch_dynamic(onnx.load(str(src))), out)


def write_float16(src: Path, out: Path) -> None:
    """Read ``src``, write its float16 copy (float32 I/O) to ``out`` (whole or absent)."""
    _save(make_float16(onnx.load(str(src))), out)


def write_input_size(src: Path, out: Path, height: int, width: int) -> None:
    """Read ``src``, write its ``height x width`` input copy (:func:`make_input_size`) to ``out`` (whole or absent)."""
    _save(make_input_size(onnx.load(str(src)), height, width), out)


def write_seg_head(src: Path, out: Path) -> None:
    """Read ``src`` (batch-dynamic YOLOv8 detect), write :func:`add_seg_head` of it to ``out``."""
    _save(add_seg_head(onnx.load(str(src))), out)


def float_weights_dtype(model: onnx.ModelProto) -> np.dtype:
    """float16 when any initializer is float16, else float32 (what a test or a log line reports)."""
    has16 = any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer)
    return np.dtype(np.float16 if has16 else np.float32)


NUM_SEG_COEFS = 32
"""Mask coefficients per anchor and prototype channels of a YOLO seg head."""


def add_seg_head(model: onnx.ModelProto, seed: int = 0) -> onnx.ModelProto:
    """A YOLOv8-seg-layout copy of a batch-dynamic YOLOv8 detect export, for the seg-head tests.

    The detector's backbone, boxes and class scores stay (real weights, real boxes on real
    frames); a seeded random head is added: per level, a 1x1 convolution of the head's
    ``[B, 4*16+nc, h, w]`` features to 32 mask coefficients per anchor, and a 1x1 convolution of
    the finest level upsampled x2 to 32 prototypes. Outputs: ``output0`` ``[B, 4+nc+32, A]`` and
    ``output1`` ``[B, 32, 2h, 2w]`` (160x160 at 640), the layout of an Ultralytics seg export.
    The masks mean nothing; the layout, batch handling and mask arithmetic are what it tests."""
    from onnx import TensorProto, helper

    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    (final,) = [n for n in g.node if list(n.output) == [g.output[0].name]]
    concat = next(n for n in g.node if n.op_type == "Concat" and len(n.input) == 3 and all(
        any(m.op_type == "Reshape" and m.output[0] == i for m in g.node) for i in n.input))  # fmt: skip
    level_feats = [next(m.input[0] for m in g.node if m.output[0] == i) for i in concat.input]
    shapes = onnx.shape_inference.infer_shapes(model).graph.value_info
    chans = {vi.name: vi.type.tensor_type.shape.dim[1].dim_value for vi in shapes}
    rng = np.random.default_rng(seed)
    nodes, inits, coefs = [], [], []
    for k, feat in enumerate(level_feats):
        c_in = chans.get(feat) or 66
        w = (rng.standard_normal((NUM_SEG_COEFS, c_in, 1, 1)) / np.sqrt(c_in)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"seg/coef{k}/w"))
        nodes.append(helper.make_node("Conv", [feat, f"seg/coef{k}/w"], [f"seg/coef{k}"], name=f"seg/coef{k}/Conv"))
        nodes.append(helper.make_node("Reshape", [f"seg/coef{k}", "seg/shape"], [f"seg/coef{k}/flat"], name=f"seg/coef{k}/Reshape"))
        coefs.append(f"seg/coef{k}/flat")
    inits.append(numpy_helper.from_array(np.array([0, NUM_SEG_COEFS, -1], np.int64), "seg/shape"))
    nodes.append(helper.make_node("Concat", coefs, ["seg/coefs"], axis=2, name="seg/coefs/Concat"))
    det_name = "seg/det"
    final.output[0] = det_name
    nodes.append(helper.make_node("Concat", [det_name, "seg/coefs"], [g.output[0].name], axis=1, name="seg/output0"))
    c0 = chans.get(level_feats[0]) or 66
    wp = (rng.standard_normal((NUM_SEG_COEFS, c0, 1, 1)) / np.sqrt(c0)).astype(np.float32)
    inits += [numpy_helper.from_array(wp, "seg/proto/w"), numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "seg/scales")]
    nodes.append(helper.make_node("Conv", [level_feats[0], "seg/proto/w"], ["seg/proto"], name="seg/proto/Conv"))
    nodes.append(helper.make_node("Resize", ["seg/proto", "", "seg/scales"], ["output1"], mode="nearest", name="seg/proto/Resize"))
    g.node.extend(nodes)
    g.initializer.extend(inits)
    dims0 = [d.dim_param or d.dim_value for d in g.output[0].type.tensor_type.shape.dim]
    rows = int(dims0[1]) + NUM_SEG_COEFS
    del g.output[:]
    g.output.extend([
        helper.make_tensor_value_info("output0", TensorProto.FLOAT, [dims0[0], rows, dims0[2]]),
        helper.make_tensor_value_info("output1", TensorProto.FLOAT, [dims0[0], NUM_SEG_COEFS, None, None]),
    ])  # fmt: skip
    _sort_topologically(g)
    onnx.checker.check_model(out)
    return out


def e2e_from_v8_seg(output0: np.ndarray, max_det: int = 300) -> np.ndarray:
    """``[B, 4+nc+32, A]`` (cx, cy, w, h, scores, coefs) -> the YOLO26 end-to-end layout
    ``[B, max_det, 6+32]`` (x1, y1, x2, y2, score, class, coefs), best ``max_det`` anchors by score."""
    b, rows, _ = output0.shape
    nc = rows - 4 - NUM_SEG_COEFS
    out = np.zeros((b, max_det, 6 + NUM_SEG_COEFS), np.float32)
    for i in range(b):
        p = output0[i].T
        scores = p[:, 4 : 4 + nc]
        best = scores.max(axis=1)
        order = np.argsort(-best, kind="stable")[:max_det]
        cx, cy, w, h = p[order, 0], p[order, 1], p[order, 2], p[order, 3]
        out[i, : len(order), :4] = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
        out[i, : len(order), 4] = best[order]
        out[i, : len(order), 5] = scores[order].argmax(axis=1)
        out[i, : len(order), 6:] = p[order, 4 + nc :]
    return out


def write_seg_samples(seg_onnx: Path, frame_rgb: np.ndarray, out_dir: Path) -> tuple[Path, Path]:
    """Run ``seg_onnx`` (ORT CPU) on ``frame_rgb`` letterboxed to 640 and save the outputs as
    ``v8_seg.sample.npz`` and, converted, ``e2e_seg.sample.npz`` (keys ``input``, ``output0``,
    ``output1``): what the GPU post-processing tests decode on both paths."""
    import onnxruntime as ort

    from pipeline.preprocess import InputSpec, preprocess_numpy
    from pipeline.types import Frame, FrameMeta

    h, w = frame_rgb.shape[:2]
    frame = Frame(FrameMeta("sample", 0, 0.0, 0.0, w, h), np.ascontiguousarray(frame_rgb))
    x = preprocess_numpy(frame, InputSpec("yolo_global", "letterbox", 640, 640)).tensor
    sess = ort.InferenceSession(str(seg_onnx), providers=["CPUExecutionProvider"])
    out0, out1 = sess.run(["output0", "output1"], {sess.get_inputs()[0].name: x})
    out_dir.mkdir(parents=True, exist_ok=True)
    v8, e2e = out_dir / "v8_seg.sample.npz", out_dir / "e2e_seg.sample.npz"
    np.savez_compressed(v8, input=x, output0=out0, output1=out1)
    np.savez_compressed(e2e, input=x, output0=e2e_from_v8_seg(out0), output1=out1)
    return v8, e2e
