"""YOLO adapter: raw Ultralytics outputs -> person ``Detections`` in frame pixels.

Supported heads (``ModelConfig.head``; ``auto`` reads the output shapes, see :func:`detect_head`):

- ``v8_detect``  YOLOv8/11 detect: one output ``[B, 4+nc, A]``; per anchor ``cx, cy, w, h`` in input
  (tensor) pixels, then ``nc`` class scores already passed through a sigmoid.
- ``v8_seg``     YOLOv8/11 seg: ``[B, 4+nc+32, A]`` (the last 32 rows are mask coefficients) and
  protos ``[B, 32, h, w]`` (the 4-D output; names and order vary between exports).
- ``e2e_detect`` YOLO26 end-to-end: ``[B, N, 6]``, rows ``x1, y1, x2, y2, score, class`` in input
  pixels, N = max_det (300), already NMS-free.
- ``e2e_seg``    YOLO26 end-to-end seg: ``[B, N, 38]`` (+32 coefficients) and protos ``[B, 32, h, w]``.

The free functions (:func:`detect_head`, :func:`decode_v8`, :func:`decode_e2e`, :func:`nms`,
:func:`decode_masks`) work alone on NumPy arrays; :class:`YoloAdapter` chains them and maps tensor
pixels to frame pixels with ``PreprocessPlan.tensor_to_frame``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from config.errors import ModelLoadError
from config.schema import ModelConfig
from pipeline.geometry import PreprocessPlan
from pipeline.types import GLOBAL_SOURCE, Detections, PreprocessOutput

__all__ = [
    "NUM_MASK_COEFS",
    "HeadName",
    "TensorDetections",
    "YoloAdapter",
    "YoloSettings",
    "check_finite",
    "check_head_shapes",
    "decode_e2e",
    "decode_head",
    "decode_masks",
    "decode_v8",
    "detect_head",
    "frame_detections",
    "mask_taps",
    "nms",
    "person_rows",
    "select_outputs",
    "to_frame_detections",
    "visible_frame_boxes",
]

HeadName = Literal["v8_detect", "v8_seg", "e2e_detect", "e2e_seg"]
NUM_MASK_COEFS = 32
"""Mask coefficients per detection (and proto channels) of Ultralytics seg heads."""
_E2E_COLS = 6
_EXPECTED = {
    "v8_detect": "one output [B, 4+nc, A] (e.g. [1, 84, 8400])",
    "v8_seg": f"[B, 4+nc+{NUM_MASK_COEFS}, A] and protos [B, {NUM_MASK_COEFS}, h, w] (e.g. [1, 116, 8400] + [1, 32, 160, 160])",
    "e2e_detect": "one output [B, N, 6] (e.g. [1, 300, 6])",
    "e2e_seg": f"[B, N, {_E2E_COLS + NUM_MASK_COEFS}] and protos [B, {NUM_MASK_COEFS}, h, w] (e.g. [1, 300, 38] + [1, 32, 160, 160])",
}
_ALL_EXPECTED = "; ".join(f"{k}: {v}" for k, v in _EXPECTED.items())

Shape = Sequence[int | None]


@dataclass(frozen=True, slots=True)
class TensorDetections:
    """Detections of a batch of B input tensors, in TENSOR pixels (before mapping to the frame).

    - ``xyxy``: (M, 4) float32, input-tensor pixels of image ``image[m]``.
    - ``score``: (M,) float32; ``class_id``: (M,) int32.
    - ``image``: (M,) int64, index of the tensor in the batch (the tile index for tiled plans).
    - ``coef``: (M, 32) float32 mask coefficients for seg heads, else None.

    Rows are grouped by image (ascending), score descending within an image.
    """

    xyxy: NDArray[np.float32]
    score: NDArray[np.float32]
    class_id: NDArray[np.int32]
    image: NDArray[np.int64]
    coef: NDArray[np.float32] | None = None

    def __len__(self) -> int:
        return len(self.xyxy)

    def take(self, idx: NDArray[np.integer[Any]]) -> TensorDetections:
        return TensorDetections(
            self.xyxy[idx], self.score[idx], self.class_id[idx], self.image[idx],
            None if self.coef is None else self.coef[idx],
        )


# --------------------------------------------------------------------------------------------
# Output shapes


def _fmt(shape: Shape) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def check_finite(model: str, name: str, output: Any) -> None:
    """Raise ``ModelLoadError`` when a model output (NumPy or CuPy) holds NaN or Inf.

    A broken export, or an fp16/int8 build whose activations overflow, gives non-finite outputs on
    every frame; decoded, NaN scores fail every threshold and such a model would count 0 people
    without a word. The screen is one reduction (a float64 sum of finite float32/float16 values
    stays finite; NaN and Inf propagate), so the counting happens only for a broken output.
    """
    if math.isfinite(float(output.sum(dtype=np.float64))):
        return
    n_nan = int((output != output).sum())
    n_inf = int((abs(output) == np.inf).sum())
    raise ModelLoadError(
        f"{model}: output {name!r} {_fmt(output.shape)} holds {n_nan} NaN and {n_inf} infinite values of "
        f"{output.size}: a model must output finite numbers; check the model file (a fp16/int8 build that "
        "overflows: rebuild it in fp32)"
    )


def _split_outputs(shapes: Mapping[str, Shape]) -> tuple[str, str | None]:
    """Names of the prediction output (the only 3-D one) and of the protos (the only 4-D one)."""
    preds = [n for n, s in shapes.items() if len(s) == 3]
    protos = [n for n, s in shapes.items() if len(s) == 4]
    odd = [n for n, s in shapes.items() if len(s) not in (3, 4)]
    if odd or len(preds) != 1 or len(protos) > 1:
        found = ", ".join(f"{n} {_fmt(s)}" for n, s in shapes.items()) or "no outputs"
        raise ModelLoadError(
            f"YOLO model outputs {found}: expected one 3-D prediction output and at most one 4-D "
            f"protos output; supported heads: {_ALL_EXPECTED}"
        )
    return preds[0], (protos[0] if protos else None)


def detect_head(output_shapes: Mapping[str, Shape]) -> HeadName:
    """The head of a YOLO model from its output shapes (``None`` for a dynamic dimension).

    With a 4-D protos output the model is a seg model. The prediction ``[B, d1, d2]`` is
    end-to-end when ``d2`` is 6 (38 for seg): rows of ``x1, y1, x2, y2, score, class``; otherwise
    it is a v8/11 head ``[B, 4+nc(+32), A]``. Transposed v8 exports (``[B, A, 4+nc]``) are not
    supported. Raises ``ModelLoadError`` naming the output, its shape and the shapes expected.
    """
    pred_name, protos_name = _split_outputs(output_shapes)
    seg = protos_name is not None
    _, d1, d2 = output_shapes[pred_name]
    if d2 == _E2E_COLS + (NUM_MASK_COEFS if seg else 0):
        head: HeadName = "e2e_seg" if seg else "e2e_detect"
    elif d1 is not None and d1 >= 5 + (NUM_MASK_COEFS if seg else 0):
        head = "v8_seg" if seg else "v8_detect"
    else:
        raise ModelLoadError(
            f"YOLO output {pred_name!r} has shape {_fmt(output_shapes[pred_name])}"
            + (f" (with protos {protos_name!r} {_fmt(output_shapes[protos_name])})" if protos_name else "")
            + f": no supported head matches; expected {_ALL_EXPECTED}"
        )
    check_head_shapes(head, output_shapes)
    return head


def check_head_shapes(head: HeadName, output_shapes: Mapping[str, Shape]) -> tuple[str, str | None]:
    """Check the outputs fit ``head``; returns (prediction name, protos name or None).

    Raises ``ModelLoadError`` naming the output, the shape found and the shapes expected.
    """
    pred_name, protos_name = _split_outputs(output_shapes)
    pred = output_shapes[pred_name]
    seg = head.endswith("_seg")
    want = f"head {head} expects {_EXPECTED[head]}"
    if seg != (protos_name is not None):
        extra = f", protos {protos_name!r} {_fmt(output_shapes[protos_name])}" if protos_name else ", no protos"
        raise ModelLoadError(f"YOLO output {pred_name!r} {_fmt(pred)}{extra}: {want}")
    n_coef = NUM_MASK_COEFS if seg else 0
    e2e_ok = pred[2] == _E2E_COLS + n_coef
    v8_ok = pred[1] is not None and pred[1] >= 5 + n_coef
    ok = e2e_ok if head.startswith("e2e") else v8_ok
    if not ok:
        raise ModelLoadError(f"YOLO output {pred_name!r} has shape {_fmt(pred)}: {want}")
    if protos_name is not None:
        protos = output_shapes[protos_name]
        if protos[1] != NUM_MASK_COEFS or (None not in (pred[0], protos[0]) and pred[0] != protos[0]):
            raise ModelLoadError(
                f"YOLO protos output {protos_name!r} has shape {_fmt(protos)} beside {pred_name!r} {_fmt(pred)}: {want}"
            )
    return pred_name, protos_name


# --------------------------------------------------------------------------------------------
# Decoding in tensor pixels


_NMS_DENSE_MAX = 4096
"""Up to this many boxes NMS precomputes the full IoU matrix (4096^2 float32 = 64 MiB)."""


def _iou_rows(boxes: NDArray[np.float32], area: NDArray[np.float32], rows: NDArray[np.int64] | slice) -> NDArray[np.float32]:
    """IoU of ``boxes[rows]`` against every box: (len(rows), M)."""
    b = boxes[rows]
    iw = (np.minimum(b[:, None, 2], boxes[None, :, 2]) - np.maximum(b[:, None, 0], boxes[None, :, 0])).clip(0)
    ih = (np.minimum(b[:, None, 3], boxes[None, :, 3]) - np.maximum(b[:, None, 1], boxes[None, :, 1])).clip(0)
    inter = iw * ih
    return inter / np.maximum(area[rows][:, None] + area[None, :] - inter, np.float32(1e-9))


def nms(xyxy: NDArray[np.floating], score: NDArray[np.floating], iou_threshold: float) -> NDArray[np.int64]:
    """Greedy non-maximum suppression; indices kept, by descending score.

    ``xyxy`` (M, 4), ``score`` (M,). A box is dropped when its IoU with a kept, higher-scoring
    box exceeds ``iou_threshold``. Class-agnostic on purpose: for counting, every person class
    (e.g. "Normal" and "Fall") is one person, so two labels on one body must suppress each other.
    The IoU matrix is computed at once (row by row above ``_NMS_DENSE_MAX`` boxes); the loop
    over kept boxes only ORs precomputed rows.
    """
    order = np.argsort(-np.asarray(score), kind="stable")
    boxes = np.asarray(xyxy, np.float32)[order]
    area = (boxes[:, 2] - boxes[:, 0]).clip(0) * (boxes[:, 3] - boxes[:, 1]).clip(0)
    dense = _iou_rows(boxes, area, slice(None)) > iou_threshold if len(boxes) <= _NMS_DENSE_MAX else None
    suppressed = np.zeros(len(boxes), bool)
    keep: list[int] = []
    for i in range(len(boxes)):
        if suppressed[i]:
            continue
        keep.append(i)
        row = dense[i] if dense is not None else _iou_rows(boxes, area, np.array([i]))[0] > iou_threshold
        suppressed |= row
    return order[np.array(keep, np.int64)]


def _person_lut(person_classes: Sequence[int], nc: int, where: str) -> NDArray[np.bool_]:
    bad = [c for c in person_classes if not 0 <= c < nc]
    if bad:
        raise ModelLoadError(f"person_classes {list(person_classes)}: {bad} not among the {nc} classes of {where}")
    lut = np.zeros(nc, bool)
    lut[list(person_classes)] = True
    return lut


def _nms_per_image(dets: TensorDetections, iou_threshold: float, max_detections: int) -> TensorDetections:
    """NMS and the ``max_detections`` cap, image by image (a loop over images, not anchors)."""
    keep: list[NDArray[np.int64]] = []
    for b in np.unique(dets.image):
        rows = np.nonzero(dets.image == b)[0]
        keep.append(rows[nms(dets.xyxy[rows], dets.score[rows], iou_threshold)[:max_detections]])
    return dets.take(np.concatenate(keep) if keep else np.zeros(0, np.int64))


def decode_v8(
    pred: NDArray[np.floating],
    protos: NDArray[np.floating] | None,
    *,
    person_classes: Sequence[int],
    score_threshold: float,
    iou_threshold: float,
    max_detections: int,
) -> TensorDetections:
    """Decode a YOLOv8/11 head: ``pred`` [B, 4+nc(+32), A], ``protos`` [B, 32, h, w] or None.

    Each anchor takes its best class over all ``nc`` classes (as Ultralytics does); it is kept when
    that class is a person class and its score is at least ``score_threshold``. The score filter
    runs first on the person rows only, so the rest of the work sees few anchors. Then
    class-agnostic NMS per image and the ``max_detections`` cap. Boxes: ``cx, cy, w, h`` -> xyxy,
    tensor pixels; boxes with w or h <= 0 (possible in YOLO26 raw layouts) are dropped. ``protos``
    only says whether the last 32 rows are mask coefficients.
    """
    pred = np.asarray(pred)
    n_coef = NUM_MASK_COEFS if protos is not None else 0
    nc = pred.shape[1] - 4 - n_coef
    lut = _person_lut(person_classes, nc, f"a v8 head of shape {list(pred.shape)}")
    person_rows = 4 + np.nonzero(lut)[0]
    other_rows = 4 + np.nonzero(~lut)[0]
    best_person = pred[:, person_rows, :].max(axis=1)  # (B, A)
    b_idx, a_idx = np.nonzero(best_person >= score_threshold)
    cand = pred[b_idx, :, a_idx].astype(np.float32)  # (K, 4+nc(+32))
    cls_scores = cand[:, 4 : 4 + nc]
    score = best_person[b_idx, a_idx].astype(np.float32)
    if len(other_rows):  # drop anchors whose best class is not a person
        ok = score >= cls_scores[:, other_rows - 4].max(axis=1)
        cand, cls_scores, score, b_idx = cand[ok], cls_scores[ok], score[ok], b_idx[ok]
    ok = (cand[:, 2] > 0) & (cand[:, 3] > 0)  # YOLO26 raw layouts (reg_max 1) can give w, h <= 0
    cand, cls_scores, score, b_idx = cand[ok], cls_scores[ok], score[ok], b_idx[ok]
    person_cols = person_rows - 4
    class_id = person_cols[np.argmax(cls_scores[:, person_cols], axis=1)].astype(np.int32)
    cx, cy, w, h = cand[:, 0], cand[:, 1], cand[:, 2] / 2, cand[:, 3] / 2
    xyxy = np.stack([cx - w, cy - h, cx + w, cy + h], axis=1).astype(np.float32)
    dets = TensorDetections(
        xyxy, score, class_id, b_idx.astype(np.int64), cand[:, 4 + nc :].copy() if n_coef else None
    )
    return _nms_per_image(dets, iou_threshold, max_detections)


def decode_e2e(
    pred: NDArray[np.floating],
    protos: NDArray[np.floating] | None,
    *,
    person_classes: Sequence[int],
    score_threshold: float,
    max_detections: int,
) -> TensorDetections:
    """Decode a YOLO26 end-to-end head: ``pred`` [B, N, 6|38], ``protos`` [B, 32, h, w] or None.

    Rows ``x1, y1, x2, y2, score, class[, 32 coefs]``, boxes in input pixels (not clipped), NMS-free
    (docs/MODELS.md). Keeps rows of a person class with ``score >= score_threshold`` and a box of
    positive size (YOLO26 has no DFL: x2 < x1 is possible). The head's top-k runs over
    (anchor, class) pairs, so one anchor can appear once per class: rows whose box is identical to
    a higher-scoring row of the same image are dropped, so one person is counted once. No IoU NMS
    (that would undo what the end-to-end head is for: close people in a crowd).
    Raises ``ModelLoadError`` when the class column is not whole numbers (a transposed v8 output).
    """
    pred = np.asarray(pred)
    b_idx, n_idx = np.nonzero(pred[:, :, 4] >= score_threshold)
    rows = pred[b_idx, n_idx].astype(np.float32)
    cls = rows[:, 5]
    if not np.all(cls == np.round(cls)) or (len(cls) and cls.min() < 0):
        raise ModelLoadError(
            f"YOLO end-to-end output of shape {list(pred.shape)}: column 5 (class) holds non-integer or negative values; "
            f"is this a transposed v8 output? expected {_EXPECTED['e2e_detect']}"
        )
    lut = np.zeros(max(int(cls.max(initial=0)) + 1, max(person_classes, default=0) + 1), bool)
    lut[list(person_classes)] = True
    ok = lut[cls.astype(np.int64)] & (rows[:, 2] > rows[:, 0]) & (rows[:, 3] > rows[:, 1])  # drop degenerate boxes
    rows, b_idx = rows[ok], b_idx[ok]
    order = np.lexsort((-rows[:, 4], b_idx))  # by image, then score descending
    rows, b_idx = rows[order], b_idx[order]
    key = np.concatenate([b_idx[:, None].astype(np.float32), rows[:, :4]], axis=1)
    _, first = np.unique(key, axis=0, return_index=True)
    first.sort()
    rows, b_idx = rows[first], b_idx[first]
    rank = np.arange(len(b_idx)) - np.searchsorted(b_idx, b_idx)  # rank within its image
    rows, b_idx = rows[rank < max_detections], b_idx[rank < max_detections]
    return TensorDetections(
        rows[:, :4].copy(), rows[:, 4].copy(), rows[:, 5].astype(np.int32), b_idx.astype(np.int64),
        rows[:, _E2E_COLS:].copy() if protos is not None else None,
    )


# --------------------------------------------------------------------------------------------
# Masks


def _integer_rects(xyxy: NDArray[np.float32], frame_wh: tuple[int, int]) -> NDArray[np.int32]:
    """(M, 4) int32 frame pixel rects covering each box (floor/ceil), clipped, at least 1x1."""
    w, h = frame_wh
    rect = np.empty((len(xyxy), 4), np.int64)
    rect[:, 0] = np.clip(np.floor(xyxy[:, 0]), 0, w - 1)
    rect[:, 1] = np.clip(np.floor(xyxy[:, 1]), 0, h - 1)
    rect[:, 2] = np.clip(np.ceil(xyxy[:, 2]), rect[:, 0] + 1, w)
    rect[:, 3] = np.clip(np.ceil(xyxy[:, 3]), rect[:, 1] + 1, h)
    return rect.astype(np.int32)


@dataclass(frozen=True, slots=True)
class _AxisTaps:
    """Bilinear taps of every detection's mask samples along one axis, concatenated.

    Detection m owns samples ``start[m]:start[m+1]``; its logits are computed on proto cells
    ``lo[m]:hi[m]``, and ``q0``/``q1`` index into that window; ``w`` is the weight of ``q1``;
    ``inside`` says whether the sample centre lies inside the detection's box.
    """

    start: NDArray[np.int64]
    lo: NDArray[np.int64]
    hi: NDArray[np.int64]
    q0: NDArray[np.int64]
    q1: NDArray[np.int64]
    w: NDArray[np.float32]
    inside: NDArray[np.bool_]


def _axis_taps(
    r0: NDArray[np.int64], r1: NDArray[np.int64], n: NDArray[np.int64], origin: NDArray[np.float64],
    box0: NDArray[np.float32], box1: NDArray[np.float32], scale: float, pad: int, ratio: float, size: int,
) -> _AxisTaps:
    """Taps for n[m] samples evenly over frame pixels [r0[m], r1[m]) of each detection, vectorised.

    A sample centre x (frame) maps to tensor ``(x - origin) * scale + pad`` and to proto cell
    coordinates ``tensor / ratio - 0.5`` (cell k centred at k), clamped to the proto grid.
    """
    start = np.concatenate([[0], np.cumsum(n)]).astype(np.int64)
    det = np.repeat(np.arange(len(n)), n)
    i = np.arange(start[-1]) - start[det]
    x = r0[det] + (i + 0.5) * ((r1 - r0) / n)[det]
    q = np.clip(((x - origin[det]) * scale + pad) / ratio - 0.5, 0.0, size - 1)
    q0 = np.floor(q).astype(np.int64)
    q1 = np.minimum(q0 + 1, size - 1)
    lo = np.minimum.reduceat(q0, start[:-1])
    hi = np.maximum.reduceat(q1, start[:-1]) + 1
    inside = (x >= box0[det]) & (x < box1[det])
    return _AxisTaps(start, lo, hi, q0 - lo[det], q1 - lo[det], (q - q0).astype(np.float32), inside)


def mask_taps(
    rects: NDArray[np.int32],
    frame_xyxy: NDArray[np.float32],
    image: NDArray[np.integer[Any]],
    plan: PreprocessPlan,
    proto_hw: tuple[int, int],
) -> tuple[_AxisTaps, _AxisTaps]:
    """Where each mask pixel samples the protos, per axis (x taps, y taps): mask i covers the
    integer frame rect ``rects[i]`` at proto resolution. Shared by the NumPy and GPU mask paths."""
    ph, pw = proto_hw
    sx, sy = plan.scale
    ratio_x, ratio_y = plan.out_wh[0] / pw, plan.out_wh[1] / ph
    r = rects.astype(np.int64)
    origin = plan.origins[image]
    mw = np.maximum(1, np.round((r[:, 2] - r[:, 0]) * sx / ratio_x)).astype(np.int64)
    mh = np.maximum(1, np.round((r[:, 3] - r[:, 1]) * sy / ratio_y)).astype(np.int64)
    tx = _axis_taps(r[:, 0], r[:, 2], mw, origin[:, 0], frame_xyxy[:, 0], frame_xyxy[:, 2], sx, plan.pad[0], ratio_x, pw)
    ty = _axis_taps(r[:, 1], r[:, 3], mh, origin[:, 1], frame_xyxy[:, 1], frame_xyxy[:, 3], sy, plan.pad[1], ratio_y, ph)
    return tx, ty


def decode_masks(
    dets: TensorDetections,
    protos: NDArray[np.floating],
    plan: PreprocessPlan,
    frame_xyxy: NDArray[np.float32],
) -> tuple[tuple[NDArray[np.bool_], ...], NDArray[np.int32]]:
    """Instance masks of seg detections, cut to each box's integer frame rect.

    ``protos`` [B, 32, h, w] of the input tensors (h = H/4 for Ultralytics), ``frame_xyxy`` (M, 4)
    the boxes already in frame pixels. For detection m, ``mask_xyxy[m]`` is the integer frame rect
    around its box and ``masks[m]`` a bool array over that rect at proto resolution (one proto cell
    ~ one mask pixel: rect size * tensor scale / (H/h)). Each mask pixel samples
    ``coef @ protos`` bilinearly at its centre (the logits, mapped frame -> tensor -> proto), as
    Ultralytics upsamples logits; keeps pixels whose centre is inside the box (Ultralytics'
    ``crop_mask``) and thresholds ``sigmoid > 0.5``, i.e. logit > 0. The logits are computed only
    on the proto cells under each box.
    """
    if dets.coef is None:
        raise ValueError("decode_masks: detections carry no mask coefficients (not a seg head)")
    protos = np.asarray(protos, np.float32)
    _, n_coef, ph, pw = protos.shape
    rects = _integer_rects(frame_xyxy, plan.frame_wh)
    if not len(dets):
        return (), rects
    tx, ty = mask_taps(rects, frame_xyxy, dets.image, plan, (ph, pw))
    masks = []
    for m in range(len(dets)):
        xs = slice(tx.start[m], tx.start[m + 1])
        ys = slice(ty.start[m], ty.start[m + 1])
        window = protos[dets.image[m], :, ty.lo[m] : ty.hi[m], tx.lo[m] : tx.hi[m]]
        logit = (dets.coef[m] @ window.reshape(n_coef, -1)).reshape(window.shape[1:])
        wy = ty.w[ys][:, None]
        rows = logit[ty.q0[ys]] * (1 - wy) + logit[ty.q1[ys]] * wy  # (mh, window w)
        wx = tx.w[xs]
        value = rows[:, tx.q0[xs]] * (1 - wx) + rows[:, tx.q1[xs]] * wx  # (mh, mw)
        masks.append((value > 0) & ty.inside[ys][:, None] & tx.inside[xs][None, :])
    return tuple(masks), rects


# --------------------------------------------------------------------------------------------
# The adapter


def _to_host(a: Any) -> NDArray[Any]:
    """NumPy view of an output (CuPy arrays have ``.get()``); float16 becomes float32."""
    arr = a.get() if hasattr(a, "get") and not isinstance(a, np.ndarray) else np.asarray(a)
    return arr.astype(np.float32) if arr.dtype == np.float16 else arr


@dataclass(frozen=True, slots=True)
class YoloSettings:
    """What the YOLO adapters (NumPy and GPU) read from ``ModelConfig``."""

    head: HeadName | Literal["auto"]
    person_classes: tuple[int, ...]
    score_threshold: float
    iou_threshold: float
    max_detections: int
    model: str = "YOLO model"
    """How errors name the model: ``YOLO model <path>``."""

    @classmethod
    def from_config(cls, cfg: ModelConfig) -> YoloSettings:
        return cls(
            cfg.head, tuple(cfg.person_classes), cfg.score_threshold, cfg.iou_threshold, cfg.max_detections,
            f"YOLO model {cfg.path}",
        )  # fmt: skip


def select_outputs(
    outputs: Mapping[str, Any], pre: PreprocessOutput, head: HeadName | Literal["auto"], model: str = "YOLO model"
) -> tuple[HeadName, Any, Any]:
    """(head, prediction output, protos output or None) of a model's outputs (NumPy or CuPy).

    ``head`` ``auto`` is read from the shapes (:func:`detect_head`). Raises ``ModelLoadError`` when
    the shapes do not fit the head, the batch is not the plan's tensor count, or an output it
    returns holds NaN or Inf (:func:`check_finite`; ``model`` names the model there). The NumPy and
    the GPU adapter both start here, so both refuse non-finite outputs.
    """
    shapes = {name: tuple(a.shape) for name, a in outputs.items()}
    found: HeadName = detect_head(shapes) if head == "auto" else head
    pred_name, protos_name = check_head_shapes(found, shapes)
    pred = outputs[pred_name]
    if pred.shape[0] != pre.plan.count:
        raise ModelLoadError(
            f"YOLO output {pred_name!r} has batch {pred.shape[0]} for {pre.plan.count} input tensors "
            f"(spec {pre.spec_name!r}); expected shape [{pre.plan.count}, ...]"
        )
    check_finite(model, pred_name, pred)
    if protos_name is not None:
        check_finite(model, protos_name, outputs[protos_name])
    return found, pred, (outputs[protos_name] if protos_name else None)


def person_rows(person_classes: Sequence[int], pred_shape: Shape, seg: bool) -> NDArray[np.int64]:
    """Rows of a v8 prediction ``[B, 4+nc(+32), A]`` that hold person class scores."""
    nc = int(pred_shape[1] or 0) - 4 - (NUM_MASK_COEFS if seg else 0)
    return 4 + np.nonzero(_person_lut(person_classes, nc, f"a v8 head of shape {list(pred_shape)}"))[0]


def decode_head(head: HeadName, pred: NDArray[np.floating], protos: Any, s: YoloSettings) -> TensorDetections:
    """:func:`decode_v8` or :func:`decode_e2e` with the settings; ``protos`` only says seg or not."""
    if head.startswith("v8"):
        return decode_v8(
            pred, protos, person_classes=s.person_classes, score_threshold=s.score_threshold,
            iou_threshold=s.iou_threshold, max_detections=s.max_detections,
        )  # fmt: skip
    return decode_e2e(
        pred, protos, person_classes=s.person_classes, score_threshold=s.score_threshold,
        max_detections=s.max_detections,
    )  # fmt: skip


class YoloAdapter:
    """``decode(outputs, pre) -> Detections``: a YOLO model's raw outputs on one preprocessed input.

    Settings come from ``ModelConfig`` (``head``, ``person_classes``, ``score_threshold``,
    ``iou_threshold``, ``max_detections``). Boxes leave in frame pixels; ``source`` is
    ``GLOBAL_SOURCE`` for a letterbox plan, else the tile index. Seg heads fill ``masks`` and
    ``mask_xyxy`` (see :func:`decode_masks`).
    """

    def __init__(self, cfg: ModelConfig) -> None:
        self.settings = YoloSettings.from_config(cfg)

    def decode(self, outputs: Mapping[str, Any], pre: PreprocessOutput) -> Detections:
        host = {name: _to_host(a) for name, a in outputs.items()}
        head, pred, protos = select_outputs(host, pre, self.settings.head, self.settings.model)
        return to_frame_detections(decode_head(head, pred, protos, self.settings), protos, pre.plan)


def visible_frame_boxes(tdets: TensorDetections, plan: PreprocessPlan) -> tuple[TensorDetections, NDArray[np.float32]]:
    """The detections whose box keeps an area in the frame, and their boxes in frame pixels.

    Boxes are mapped to the frame and clipped to it; a box left with no area (wholly in letterbox
    padding or off the frame) is dropped. The one box filter of both YOLO adapters.
    """
    xyxy = plan.tensor_to_frame(tdets.xyxy, tdets.image)
    visible = (xyxy[:, 2] > xyxy[:, 0]) & (xyxy[:, 3] > xyxy[:, 1])
    if visible.all():
        return tdets, xyxy
    keep = np.nonzero(visible)[0]
    return tdets.take(keep), xyxy[keep]


def frame_detections(
    tdets: TensorDetections,
    xyxy: NDArray[np.float32],
    plan: PreprocessPlan,
    masks: tuple[Any, ...] | None = None,
    mask_xyxy: NDArray[np.int32] | None = None,
) -> Detections:
    """``Detections`` of ``tdets`` with frame boxes ``xyxy``; ``source`` from the plan (the global
    source for a letterbox, else the tile index)."""
    source = (
        np.full(len(tdets), GLOBAL_SOURCE, np.int32) if plan.kind == "letterbox" else tdets.image.astype(np.int32)
    )
    return Detections(xyxy=xyxy, score=tdets.score, class_id=tdets.class_id, source=source,
                      masks=masks, mask_xyxy=mask_xyxy)  # fmt: skip


def to_frame_detections(
    tdets: TensorDetections, protos: NDArray[np.floating] | None, plan: PreprocessPlan
) -> Detections:
    """Map tensor-pixel detections to frame ``Detections`` (boxes, source, masks when ``protos``).

    Boxes are clipped to the frame; a box left with no area is dropped (:func:`visible_frame_boxes`).
    """
    tdets, xyxy = visible_frame_boxes(tdets, plan)
    if protos is None:
        return frame_detections(tdets, xyxy, plan)
    masks, mask_xyxy = decode_masks(tdets, protos, plan, xyxy)
    return frame_detections(tdets, xyxy, plan, masks, mask_xyxy)
