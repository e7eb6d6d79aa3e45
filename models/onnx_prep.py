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
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

__all__ = ["BATCH_DIM", "make_batch_dynamic", "make_float16", "write_batch_dynamic", "write_float16"]

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


def float_weights_dtype(model: onnx.ModelProto) -> np.dtype:
    """float16 when any initializer is float16, else float32 (what a test or a log line reports)."""
    has16 = any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer)
    return np.dtype(np.float16 if has16 else np.float32)
