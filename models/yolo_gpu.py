"""YOLO adapter for outputs that are still on the GPU (CuPy): the same ``Detections`` as
:class:`models.yolo.YoloAdapter`, with score filtering and mask assembly on the device.

Only the candidates that pass the score filter come to the host (one small copy), where the
NumPy decoders of :mod:`models.yolo` finish the job (NMS for v8 heads, de-duplication for
end-to-end heads) on the compact array; seg masks are then assembled on the GPU for the kept
detections only (one more small copy of the packed masks) instead of copying the protos.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from config.schema import ModelConfig
from gpu.postprocess import assemble_masks, compact_e2e, compact_v8
from models.yolo import (
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
        if head.startswith("v8"):
            small = compact_v8(pred, person_rows(s.person_classes, pred.shape, protos is not None), s.score_threshold)
        else:
            small = compact_e2e(pred, s.score_threshold)
        plan = pre.plan
        tdets, xyxy = visible_frame_boxes(decode_head(head, small, protos, s), plan)
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
