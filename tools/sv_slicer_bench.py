#!/usr/bin/env python3
"""Roboflow supervision's InferenceSlicer on one frame, for the comparison in docs/BENCHMARKS.md.

Runs in a SIDE venv, never the project's (supervision is not a project dependency):

    python3 -m venv /tmp/svenv && /tmp/svenv/bin/pip install supervision onnxruntime numpy pillow opencv-python-headless
    /tmp/svenv/bin/python tools/sv_slicer_bench.py --frame frame.npy --model person_yolov8s.onnx --threads 2

The callback is what a supervision user writes for an ONNX YOLOv8 detector: letterbox the slice to
640 (edge slices are smaller), one ONNX Runtime call per slice, decode [1, 4+nc, 8400]
(cx, cy, w, h, class scores), score threshold, per-slice NMS; the slicer then merges the slices with
NMS (IoU 0.5). Slices 640 px, overlap 0.2 (128 px). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frame", required=True, help=".npy of an (H, W, 3) uint8 RGB frame")
    ap.add_argument("--model", required=True)
    ap.add_argument("--threads", type=int, default=0, help="ORT intra-op threads (0: ORT default)")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=1, help="InferenceSlicer batch_size (needs a batch-dynamic model above 1)")
    ap.add_argument("--score", type=float, default=0.35)
    a = ap.parse_args()

    import onnxruntime as ort
    import supervision as sv
    from PIL import Image

    frame = np.load(a.frame)
    so = ort.SessionOptions()
    if a.threads:
        so.intra_op_num_threads = a.threads
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(a.model, so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name

    def letterbox(img: np.ndarray) -> tuple[np.ndarray, float, int, int]:
        h, w = img.shape[:2]
        r = min(640 / h, 640 / w)
        nh, nw = round(h * r), round(w * r)
        if (nh, nw) != (h, w):
            img = np.asarray(Image.fromarray(img).resize((nw, nh), Image.BILINEAR))
        canvas = np.full((640, 640, 3), 114, np.uint8)
        top, left = (640 - nh) // 2, (640 - nw) // 2
        canvas[top : top + nh, left : left + nw] = img
        return canvas.transpose(2, 0, 1).astype(np.float32) / 255.0, r, left, top

    def decode(out: np.ndarray, r: float, left: int, top: int) -> sv.Detections:
        pred = out.T  # (8400, 4+nc)
        scores = pred[:, 4:].max(axis=1)
        keep = scores >= a.score
        pred, scores = pred[keep], scores[keep]
        cls = pred[:, 4:].argmax(axis=1) if len(pred) else np.zeros(0, int)
        cx, cy, bw, bh = pred[:, 0], pred[:, 1], pred[:, 2], pred[:, 3]
        xyxy = np.stack([cx - bw / 2 - left, cy - bh / 2 - top, cx + bw / 2 - left, cy + bh / 2 - top], axis=1) / r
        dets = sv.Detections(xyxy=xyxy.astype(np.float32), confidence=scores.astype(np.float32), class_id=cls)
        return dets.with_nms(threshold=0.5) if len(dets) else dets

    def callback(image):  # one slice, or a list of slices with batch_size > 1
        images = image if isinstance(image, list) else [image]
        boxes = [letterbox(img) for img in images]
        (out,) = sess.run(None, {name: np.stack([b[0] for b in boxes])})
        dets = [decode(o, *b[1:]) for o, b in zip(out, boxes)]
        return dets if isinstance(image, list) else dets[0]

    slicer = sv.InferenceSlicer(
        callback=callback, slice_wh=(640, 640), overlap_wh=(128, 128), iou_threshold=0.5,
        overlap_filter=sv.OverlapFilter.NON_MAX_SUPPRESSION, batch_size=a.batch_size,
    )
    times, n = [], 0
    for _ in range(a.repeat):
        t0 = time.perf_counter()
        dets = slicer(frame)
        times.append(time.perf_counter() - t0)
        n = len(dets)
    print(json.dumps({"tool": "supervision.InferenceSlicer", "version": sv.__version__, "onnxruntime": ort.__version__,
                      "batch_size": a.batch_size, "threads": a.threads, "seconds": times, "detections": n}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
