#!/usr/bin/env python3
"""Per-image CPU cost of the batch-dynamic detector at several batch sizes, interleaved rounds
(docs/BENCHMARKS.md): ``python tools/cpu_batch_ab.py MODEL [--threads 2] [--images 33] [--rounds 2]``.
33 random 640x640 images, split into calls of 1, 4, 11 and 33 images."""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--images", type=int, default=33)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--chunks", type=int, nargs="+", default=[1, 4, 11, 33])
    a = ap.parse_args()
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = a.threads
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(a.model, so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    x = np.random.default_rng(0).random((a.images, 3, 640, 640), dtype=np.float32)
    sess.run(None, {name: x[:1]})
    out: dict[int, list[float]] = {c: [] for c in a.chunks}
    for _ in range(a.rounds):
        for c in a.chunks:
            t0 = time.perf_counter()
            for s in range(0, a.images, c):
                sess.run(None, {name: x[s : s + c]})
            out[c].append(time.perf_counter() - t0)
    print(json.dumps({"onnxruntime": ort.__version__, "threads": a.threads, "images": a.images,
                      "seconds_per_call_size": out,
                      "best_ms_per_image": {c: round(min(v) / a.images * 1e3, 1) for c, v in out.items()}}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
