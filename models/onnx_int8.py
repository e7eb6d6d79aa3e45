"""Setup-time int8 copy of a YOLOv8/11 detect export for the CPU path (ONNX Runtime's own quantizer).

On an x86 CPU with VNNI (or AMX) ONNX Runtime runs ``QLinearConv`` about 2.6x faster than the
float32 ``Conv``; the whole detector runs about 2x faster (docs/BENCHMARKS.md, "CPU int8"). The
copy is written once by ``app.assets`` and chosen by path in the config, like the float16 copy for
GPUs. What it is:

1. :func:`move_softmax_before_transpose`: the DFL decode of the head does ``Reshape [B,4,16,A]``,
   ``Transpose [0,2,1,3]``, ``Softmax(axis=1)``. ONNX Runtime's CPU softmax is 10x slower on a
   non-last axis of that layout (15 ms a 640 image) than on axis 2 before the transpose (1.5 ms);
   softmax works on each vector alone, so swapping the two gives bitwise the same output (a test
   checks it on real frames).
2. :func:`make_int8`: ``quantize_static`` in the QDQ format, weights int8 per output channel,
   activations uint8 per tensor, ranges from the entropy (KL) calibration on images of the stream
   the model will count (like TensorRT's int8 calibration). The decode tail of the head (from the
   per-level ``Concat`` of box and class logits to the outputs: DFL softmax, anchors, sigmoid) stays
   float32: one uint8 scale for pixel boxes (0-640) and scores (0-1) together loses every score.

On x86 CPUs without VNNI (AVX2 only: many laptops and older servers) ONNX Runtime multiplies
uint8 by int8 with ``VPMADDUBSW``, which sums two products in 16 bits and saturates; the CPU
sessions therefore set ``session.x64quantprecision`` (``models.onnxruntime_backend``), with which
ORT runs those layers as exact uint8 x uint8 on such CPUs only (docs/MODELS.md).

Measured on the 4K demo (12 frames, the frame and its 32 tiles, merged): the int8 copy finds
-1.6 % to +2.3 % of the float32 copy's people per frame, 0.4 % more on average
(tests/test_assets_int8.py holds it to 5 % per frame and 2 % on average).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import onnx
from numpy.typing import NDArray

from models.onnx_prep import _save, _sort_topologically

__all__ = [
    "INT8_RECIPE",
    "UNMARKED_RECIPE",
    "Int8RewriteError",
    "decode_tail",
    "int8_recipe",
    "make_int8",
    "move_softmax_before_transpose",
    "write_int8",
]

INT8_RECIPE = "1: 8-bit weights"
"""Written into each copy's metadata (``RECIPE_KEY``): setup writes again a cached copy made by
another recipe (for one, 7-bit weights, tried on 2026-12-02) instead of keeping it. Copies written
before the mark existed are of this recipe (``UNMARKED_RECIPE``)."""
UNMARKED_RECIPE = "1: 8-bit weights"
RECIPE_KEY = "people_counter.int8_recipe"


class Int8RewriteError(ValueError):
    """The model is not a YOLOv8/11 detect export this quantization covers (the message says why)."""


def move_softmax_before_transpose(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """A copy of ``model`` where each ``Transpose(perm) -> Softmax(axis)`` (the transpose read by
    the softmax alone) becomes ``Softmax(axis=perm[axis]) -> Transpose(perm)``; the count of swaps.

    The same values go through the same per-vector softmax, so the output is bitwise the same."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    producer = {o: n for n in g.node for o in n.output}
    readers: dict[str, int] = {}
    for n in g.node:
        for name in n.input:
            readers[name] = readers.get(name, 0) + 1
    graph_outputs = {o.name for o in g.output}
    swaps = 0
    for sm in g.node:
        if sm.op_type != "Softmax":
            continue
        tr = producer.get(sm.input[0])
        if tr is None or tr.op_type != "Transpose" or readers.get(tr.output[0]) != 1 or tr.output[0] in graph_outputs:
            continue
        perm = next((list(a.ints) for a in tr.attribute if a.name == "perm"), None)
        if not perm:
            continue  # no perm: reverses the axes; not what the YOLO head writes
        axis_attr = next((a for a in sm.attribute if a.name == "axis"), None)
        if axis_attr is None:
            continue  # the default axis differs between opsets; leave it
        axis = axis_attr.i % len(perm)
        axis_attr.i = perm[axis]
        src, mid, dst = tr.input[0], tr.output[0], sm.output[0]
        sm.input[0], sm.output[0] = src, mid
        tr.input[0], tr.output[0] = mid, dst
        swaps += 1
    if swaps:
        del g.value_info[:]  # the tensor between the two now has the other layout
        _sort_topologically(g)
    onnx.checker.check_model(out)
    return out, swaps


def decode_tail(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes of the head's decode tail: each ``Concat`` whose inputs are all raw
    ``Conv`` outputs (a level's box and class logits) and every node downstream of them.

    Raises :class:`Int8RewriteError` when there is no such ``Concat`` (not a YOLOv8/11 head)."""
    g = model.graph
    producer = {o: n for n in g.node for o in n.output}
    starts = [
        n for n in g.node
        if n.op_type == "Concat" and len(n.input) > 1
        and all(producer.get(i) is not None and producer[i].op_type == "Conv" for i in n.input)
    ]  # fmt: skip
    if not starts:
        raise Int8RewriteError("no Concat of raw Conv outputs (a YOLOv8/11 detect head's box and class logits) in the graph")
    tail: set[str] = set()
    frontier = [o for n in starts for o in n.output]
    tail.update(n.name for n in starts)
    readers: dict[str, list[onnx.NodeProto]] = {}
    for n in g.node:
        for name in n.input:
            readers.setdefault(name, []).append(n)
    while frontier:
        name = frontier.pop()
        for n in readers.get(name, []):
            if n.name not in tail:
                tail.add(n.name)
                frontier.extend(n.output)
    return [n.name for n in g.node if n.name in tail]


class _Images:
    """An ONNX Runtime ``CalibrationDataReader`` (it checks for ``get_next``) over float32 CHW images."""

    def __init__(self, name: str, images: Iterable[NDArray[np.float32]]) -> None:
        self._name = name
        self._it: Iterator[NDArray[np.float32]] = iter(images)

    def get_next(self) -> dict[str, NDArray[np.float32]] | None:
        img = next(self._it, None)
        return None if img is None else {self._name: img[None] if img.ndim == 3 else img}


def make_int8(model: onnx.ModelProto, images: Iterable[NDArray[np.float32]], work_dir: Path) -> onnx.ModelProto:
    """The int8 QDQ copy of a YOLOv8/11 detect export (module docstring), calibrated on ``images``
    (float32 ``[3, H, W]`` as the model reads them, 0..1). ``work_dir`` holds the quantizer's files."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    swapped, _ = move_softmax_before_transpose(model)
    for n, node in enumerate(swapped.graph.node):
        if not node.name:
            node.name = f"node_{n}"  # the exclusion list below names nodes
    tail = decode_tail(swapped)
    if len(swapped.graph.input) != 1:
        raise Int8RewriteError(f"expected one graph input, got {[i.name for i in swapped.graph.input]}")
    src = work_dir / "float.onnx"
    dst = work_dir / "int8.onnx"
    onnx.save(swapped, str(src))
    quantize_static(
        str(src), str(dst), _Images(swapped.graph.input[0].name, images),  # type: ignore[arg-type]
        quant_format=QuantFormat.QDQ, per_channel=True,
        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.Entropy, nodes_to_exclude=tail,
    )  # fmt: skip
    out = onnx.load(str(dst))
    onnx.checker.check_model(out)
    onnx.helper.set_model_props(out, {**{p.key: p.value for p in out.metadata_props}, RECIPE_KEY: INT8_RECIPE})
    return out


def int8_recipe(path: Path) -> str:
    """The recipe a written int8 copy was made by (``INT8_RECIPE`` of its time)."""
    props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    return props.get(RECIPE_KEY, UNMARKED_RECIPE)


def write_int8(src: Path, out: Path, images: Iterable[NDArray[np.float32]]) -> None:
    """Read ``src``, write its int8 copy calibrated on ``images`` to ``out`` (whole or absent)."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="int8-", dir=out.parent) as tmp:
        _save(make_int8(onnx.load(str(src)), images, Path(tmp)), out)
