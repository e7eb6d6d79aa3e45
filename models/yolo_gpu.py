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

import numpy as np

from config.errors import ModelLoadError
from config.schema import ModelConfig
from gpu.postprocess import assemble_masks, compact_e2e, compact_v8
from models.yolo import (
    NUM_MASK_COEFS,
    _integer_rects,
    _person_lut,
    check_head_shapes,
    decode_e2e,
    decode_v8,
    detect_head,
    mask_taps,
    to_frame_detections,
)
from pipeline.types import Detections, PreprocessOutput


class GpuYoloAdapter:
    """``decode(outputs, pre) -> Detections`` for CuPy outputs (see the module docstring)."""

    def __init__(self, cfg: ModelConfig) -> None:
        self.head = cfg.head
        self.person_classes = tuple(cfg.person_classes)
        self.score_threshold = cfg.score_threshold
        self.iou_threshold = cfg.iou_threshold
        self.max_detections = cfg.max_detections

    def decode(self, outputs: Mapping[str, Any], pre: PreprocessOutput) -> Detections:
        shapes = {name: tuple(a.shape) for name, a in outputs.items()}
        head = detect_head(shapes) if self.head == "auto" else self.head
        pred_name, protos_name = check_head_shapes(head, shapes)
        pred, protos = outputs[pred_name], (outputs[protos_name] if protos_name else None)
        plan = pre.plan
        if pred.shape[0] != plan.count:
            raise ModelLoadError(
                f"YOLO output {pred_name!r} has batch {pred.shape[0]} for {plan.count} input tensors (spec {pre.spec_name!r})"
            )
        if head.startswith("v8"):
            nc = pred.shape[1] - 4 - (NUM_MASK_COEFS if protos is not None else 0)
            lut = _person_lut(self.person_classes, nc, f"a v8 head of shape {list(pred.shape)}")
            small = compact_v8(pred, 4 + np.nonzero(lut)[0], self.score_threshold)
            tdets = decode_v8(
                small, protos, person_classes=self.person_classes, score_threshold=self.score_threshold,
                iou_threshold=self.iou_threshold, max_detections=self.max_detections,
            )  # fmt: skip
        else:
            small = compact_e2e(pred, self.score_threshold)
            tdets = decode_e2e(
                small, protos, person_classes=self.person_classes, score_threshold=self.score_threshold,
                max_detections=self.max_detections,
            )  # fmt: skip
        # Boxes, clipping and the dropping of invisible boxes exactly as the NumPy path does.
        dets = to_frame_detections(tdets, None, plan)
        if protos is None:
            return dets
        xyxy_all = plan.tensor_to_frame(tdets.xyxy, tdets.image)
        keep = np.nonzero((xyxy_all[:, 2] > xyxy_all[:, 0]) & (xyxy_all[:, 3] > xyxy_all[:, 1]))[0]
        if len(keep) != len(dets):
            raise RuntimeError("models.yolo.to_frame_detections changed its box filter; update GpuYoloAdapter")
        tdets, xyxy = tdets.take(keep), dets.xyxy
        rects = _integer_rects(xyxy, plan.frame_wh)
        masks: tuple[Any, ...] = ()
        if len(tdets):
            assert tdets.coef is not None
            _, _, ph, pw = protos.shape
            tx, ty = mask_taps(rects, xyxy, tdets.image, plan, (ph, pw))
            masks = assemble_masks(protos, tdets.image, tdets.coef, ty, tx)
        return Detections(
            xyxy=xyxy, score=dets.score, class_id=dets.class_id, source=dets.source, masks=masks, mask_xyxy=rects
        )
