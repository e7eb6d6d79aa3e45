"""The GPU YOLO post-processing alone, per branch call, on the real detector's outputs (GPU only).

    python tools/bench_postprocess.py [--model .cache/assets/models/person_yolov8s.dyn.fp16.onnx] [--iters 200]

The demo detector runs once (ONNX Runtime CUDA) on the letterbox and the 32 tiles of frame 0 of
the 4K demo; its outputs stay on the GPU. Then, on the same outputs, interleaved call by call:
``kernel`` (``models.yolo_gpu.GpuYoloAdapter.decode``: the one-kernel decode and NMS, one copy) and
``compact`` (the path before it: ``gpu.postprocess.compact_v8`` then the NumPy ``decode_v8`` on the
host). Host wall time per call (what a branch thread holds; the GPU work is inside it, waited for
by the one copy): median and p95 in ms, and whether both give the same detections. One JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from config.schema import ModelConfig
from gpu.bench import card_name
from gpu.postprocess import compact_v8
from models.onnxruntime_backend import OnnxRuntimeBackend
from models.yolo import decode_head, frame_detections, person_rows, select_outputs, visible_frame_boxes
from models.yolo_gpu import GpuYoloAdapter
from pipeline.preprocess import InputSpec, preprocess_numpy
from pipeline.sources import PyAVSource


def _compact_decode(adapter: GpuYoloAdapter, outputs: dict, pre) -> object:  # type: ignore[no-untyped-def]
    s = adapter.settings
    head, pred, protos = select_outputs(outputs, pre, s.head, s.model)
    small = compact_v8(pred, person_rows(s.person_classes, pred.shape, False), s.score_threshold)
    tdets, xyxy = visible_frame_boxes(decode_head(head, small, protos, s), pre.plan)
    return frame_detections(tdets, xyxy, pre.plan)


def main() -> None:
    import cupy

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=".cache/assets/models/person_yolov8s.dyn.fp16.onnx")
    ap.add_argument("--clip", default=".cache/assets/video/demo_4k_hevc.mp4")
    ap.add_argument("--iters", type=int, default=200)
    args = ap.parse_args()

    with PyAVSource(args.clip, stream_id="b") as src:
        frame = next(iter(src.frames()))
    be = OnnxRuntimeBackend(args.model, device="gpu")
    cfg = ModelConfig(path=args.model, kind="yolo", person_classes=[0, 1], score_threshold=0.35)
    adapter = GpuYoloAdapter(cfg)
    result: dict[str, object] = {"card": card_name(), "model": args.model, "iters": args.iters}
    with be.stream:
        for spec in (InputSpec("g", "letterbox", 640, 640), InputSpec("t", "tiles", 640, 640, overlap=0.2)):
            pre = preprocess_numpy(frame, spec)
            outputs = be.infer({be.inputs[0].name: cupy.asarray(pre.tensor)})
            be.stream.synchronize()
            times: dict[str, list[float]] = {"kernel": [], "compact": []}
            for i in range(args.iters + 10):
                for name, fn in (("kernel", adapter.decode), ("compact", lambda o, p: _compact_decode(adapter, o, p))):
                    t0 = time.perf_counter()
                    dets = fn(outputs, pre)
                    if i >= 10:
                        times[name].append((time.perf_counter() - t0) * 1e3)
            a, b = adapter.decode(outputs, pre), _compact_decode(adapter, outputs, pre)
            same = bool(np.array_equal(a.xyxy, b.xyxy) and np.array_equal(a.score, b.score))  # type: ignore[attr-defined]
            result[f"batch_{pre.plan.count}"] = {
                "detections": len(dets),  # type: ignore[arg-type]
                "same": same,
                **{f"{k}_p50_ms": round(float(np.percentile(v, 50)), 3) for k, v in times.items()},
                **{f"{k}_p95_ms": round(float(np.percentile(v, 95)), 3) for k, v in times.items()},
            }
    be.close()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
