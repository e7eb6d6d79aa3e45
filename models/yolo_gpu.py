"""YOLO adapter for outputs that are still on the GPU (CuPy): the same ``Detections`` as
:class:`models.yolo.YoloAdapter`, with the decoding and mask assembly on the device.

v8/11 heads are decoded whole on the device (:func:`gpu.postprocess.decode_v8_nms`: score filter,
box decode, NMS, the cap; one kernel, one copy of the kept rows). End-to-end heads (no NMS), and a
v8 image with more candidates than that kernel sorts, copy the candidates that pass the score
filter (one small copy) and the NumPy decoders of :mod:`models.yolo` finish on the compact array.
Seg masks are then assembled on the GPU for the kept detections only (one more small copy of the
packed masks) instead of copying the protos. The host then maps the kept boxes to the frame
(a few array operations on the kept rows).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from config.schema import ModelConfig
from gpu.postprocess import assemble_masks, compact_e2e, compact_v8, decode_v8_nms
from models.yolo import (
    NUM_MASK_COEFS,
    TensorDetections,
    YoloSettings,
    _integer_rects,
    decode_head,
    frame_detections,
    mask_taps,
    person_rows,
    select_outputs,
    visible_frame_boxes,
)
from pipeline.types import Detections, PreprocessOutput


class GpuYoloAdapter:
    """``decode(outputs, pre) -> Detections`` for CuPy outputs (see the module docstring)."""

    def __init__(self, cfg: ModelConfig) -> None:
        self.settings = YoloSettings.from_config(cfg)

    def decode(self, outputs: Mapping[str, Any], pre: PreprocessOutput) -> Detections:
        s = self.settings
        head, pred, protos = select_outputs(outputs, pre, s.head, s.model)
        tdets = self._v8(pred, protos is not None) if head.startswith("v8") else None
        if tdets is None:
            if head.startswith("v8"):
                small = compact_v8(
                    pred, person_rows(s.person_classes, pred.shape, protos is not None), s.score_threshold
                )
            else:
                small = compact_e2e(pred, s.score_threshold)
            tdets = decode_head(head, small, protos, s)
        plan = pre.plan
        tdets, xyxy = visible_frame_boxes(tdets, plan)
        if protos is None:
            return frame_detections(tdets, xyxy, plan)
        rects = _integer_rects(xyxy, plan.frame_wh)
        masks: tuple[Any, ...] = ()
        if len(tdets):
            assert tdets.coef is not None
            _, _, ph, pw = protos.shape
            tx, ty = mask_taps(rects, xyxy, tdets.image, plan, (ph, pw))
            masks = assemble_masks(protos, tdets.image, tdets.coef, ty, tx)
        return frame_detections(tdets, xyxy, plan, masks, rects)

    def _v8(self, pred: Any, seg: bool) -> TensorDetections | None:
        """A v8 head decoded in one kernel (``None``: too many candidates in an image for it)."""
        s = self.settings
        n_coef = NUM_MASK_COEFS if seg else 0
        got = decode_v8_nms(pred, person_rows(s.person_classes, pred.shape, seg), n_coef,
                            s.score_threshold, s.iou_threshold, s.max_detections)  # fmt: skip
        if got is None:
            return None
        rows, image = got
        return TensorDetections(
            rows[:, :4].copy(),
            rows[:, 4].copy(),
            rows[:, 5].astype(np.int32),
            image,
            rows[:, 6:].copy() if seg else None,
        )
