#!/usr/bin/env python3
"""Ours vs roboflow supervision's InferenceSlicer on the same 4K frame, same model, one run.

    .venv/bin/python tools/compare_supervision.py [--svenv /tmp/svenv] [--repeat 2]

Ours: the detector branch of config/bench_cpu_detector_4k.yaml (letterbox + 32 tiles of 640 px,
overlap 0.2, ONNX Runtime calls of ``cpu_batch`` images on the config's detector: the int8 copy as
shipped, the float32 one with ``models.person.path`` set to it; YOLO decode) plus the
global/tile merge (IoS), timed per frame with ``branch.run(frame)``. Theirs: tools/sv_slicer_bench.py
in the side venv (one call per slice on the float32 weights as shipped, NMS merge), with the same ORT thread
count. Frame 0 of the 4K demo clip for both. Prints both and the ratio.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--svenv", default="/tmp/svenv")
    ap.add_argument("--config", default=str(ROOT / "config/bench_cpu_detector_4k.yaml"))
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--sv-batch-size", type=int, nargs="+", default=[1])
    ap.add_argument("--sv-model", help="supervision's model at batch 1 (default: the detector as shipped, float32, "
                    "static batch 1); above batch 1 the batch-dynamic float32 copy")
    a = ap.parse_args()

    import numpy as np

    from app.build import intra_op_threads, make_branches
    from config.loader import load_pipeline_config
    from pipeline.counting import merge_detections
    from pipeline.sources import PyAVSource

    cfg = load_pipeline_config(a.config)
    with PyAVSource(cfg.streams[0].uri, stream_id="cmp") as src:
        frame = next(iter(src.frames()))
    threads = intra_op_threads(cfg)
    (branch,) = make_branches(cfg, only={"yolo"})
    ours = []
    try:
        branch.run(frame)  # warm-up (allocations)
        for _ in range(a.repeat):
            t0 = time.perf_counter()
            res = branch.run(frame)
            dets = res.detections
            g, t = dets[dets.source < 0], dets[dets.source >= 0]
            merged = merge_detections(g, t, res.tile_rects, (frame.meta.width, frame.meta.height), cfg.counting.merge)
            ours.append(time.perf_counter() - t0)
    finally:
        branch.close()
    print(json.dumps({"tool": "people-counter", "threads": threads, "seconds": ours, "detections": len(merged),
                      "timings_ms": {k: round(v, 1) for k, v in res.timings.items()}}), flush=True)

    from app.assets import demo_asset_paths

    assets = demo_asset_paths(ROOT / ".cache" / "assets")
    model = a.sv_model or str(assets.detector_onnx)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        npy = Path(tmp) / "frame.npy"
        np.save(npy, frame.image)
        for bs in a.sv_batch_size:
            m = model if bs == 1 else str(assets.detector_dyn_onnx)
            cmd = [f"{a.svenv}/bin/python", str(ROOT / "tools/sv_slicer_bench.py"), "--frame", str(npy), "--model", m,
                   "--threads", str(threads), "--repeat", str(a.repeat), "--batch-size", str(bs)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
            print(out, flush=True)
            results.append(json.loads(out))
    best_ours = min(ours)
    for r in results:
        print(f"supervision batch_size={r['batch_size']}: best {min(r['seconds']):.2f} s, ours best {best_ours:.2f} s "
              f"-> ours {min(r['seconds']) / best_ours:.2f}x faster")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
