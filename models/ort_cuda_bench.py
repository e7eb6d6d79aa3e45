"""``python -m models.ort_cuda_bench NAME=PATH:B1,B2 ...``: ONNX Runtime CUDA latency per batch, JSON lines.

A benchmark entry point beside the runtime, not part of it: nothing in the pipeline imports this
module (it imports the backend, so living in :mod:`models.ort_cuda` made a cycle).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from gpu.bench import bench_inference
from models.onnxruntime_backend import OnnxRuntimeBackend


def main(argv: Sequence[str] | None = None) -> int:
    """Benchmark each ``NAME=PATH:BATCH[,BATCH...]`` on the CUDA provider; one JSON line per batch."""
    ap = argparse.ArgumentParser(prog="python -m models.ort_cuda_bench")
    ap.add_argument("models", nargs="+", help="NAME=PATH:BATCH[,BATCH...]")
    ap.add_argument("--hw", default="640x640", help="HxW for dynamic input sizes")
    ap.add_argument("--iters", type=int, default=50)
    args = ap.parse_args(argv)
    for item in args.models:
        name, _, rest = item.partition("=")
        path, _, batches = rest.rpartition(":")
        backend = OnnxRuntimeBackend(path, device="gpu")
        try:
            for b in batches.split(","):
                h, w = (int(v) for v in args.hw.split("x"))
                result = bench_inference(backend, int(b), iters=args.iters, hw=(h, w))
                result["model"] = name
                print(json.dumps(result), flush=True)
        finally:
            backend.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
