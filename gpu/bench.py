"""GPU micro-benchmarks for ``python main.py bench``: NVDEC decode, fused preprocessing, inference.

Each function returns a plain dict with the card's name, the settings and the figures. Timing
follows the project's method: warm-up first, CUDA events around device work, median and p95 of
many repetitions.

``python -m gpu.bench`` runs the decode and preprocessing benchmarks and prints one JSON object
per line; ``python -m models.ort_cuda_bench`` runs the inference one on ONNX models (the layers keep
``gpu/`` from importing ``models/``).
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from pipeline.preprocess import InputSpec
from pipeline.types import Frame


def card_name() -> str:
    import cupy

    name = cupy.cuda.runtime.getDeviceProperties(0)["name"]
    return name.decode() if isinstance(name, bytes) else str(name)


def _stats(ms: Sequence[float]) -> dict[str, float]:
    a = np.asarray(ms, np.float64)
    return {
        "n": len(a),
        "p50_ms": float(np.percentile(a, 50)),
        "p95_ms": float(np.percentile(a, 95)),
        "mean_ms": float(a.mean()),
        "min_ms": float(a.min()),
    }


def time_events(fn: Callable[[], Any], iters: int, warmup: int = 10, stream: Any = None) -> list[float]:
    """Per-call device time (ms) of ``fn`` (which enqueues on ``stream``), by CUDA events."""
    import cupy

    stream = stream or cupy.cuda.get_current_stream()
    for _ in range(warmup):
        fn()
    stream.synchronize()
    out = []
    for _ in range(iters):
        start, end = cupy.cuda.Event(), cupy.cuda.Event()
        start.record(stream)
        fn()
        end.record(stream)
        end.synchronize()
        out.append(cupy.cuda.get_elapsed_time(start, end))
    return out


def copy_bandwidth_gbs(nbytes: int = 1 << 30, iters: int = 20) -> float:
    """Device-to-device copy rate, bytes read plus bytes written per second (GB/s): the ceiling."""
    import cupy

    a = cupy.empty(nbytes, cupy.uint8)
    b = cupy.empty_like(a)
    a.fill(1)
    ms = time_events(lambda: b.__setitem__(slice(None), a), iters, warmup=3)
    return 2 * nbytes / (float(np.median(ms)) * 1e-3) / 1e9


def bench_preprocess(frame: Frame, specs: Sequence[InputSpec], iters: int = 200) -> dict[str, Any]:
    """Fused preprocessing of ``frame`` (a GPU frame) for ``specs``: one launch per spec, and one
    launch for all. Reports p50/p95 ms, the memory-traffic floor and how far above it we are."""
    import cupy

    from gpu.kernels import memory_floor_bytes
    from gpu.preprocess import GpuMultiPreprocessor, GpuPreprocessor

    w, h = frame.meta.width, frame.meta.height
    frame_bytes = int(frame.image.nbytes)
    pairs = [(s, s.plan(w, h)) for s in specs]
    per_spec = [GpuPreprocessor(s) for s in specs]
    multi = GpuMultiPreprocessor(specs)
    ceiling = copy_bandwidth_gbs()
    result: dict[str, Any] = {
        "bench": "preprocess",
        "card": card_name(),
        "frame": f"{w}x{h} {frame.layout}",
        "specs": {s.name: f"{p.count}x3x{p.out_wh[1]}x{p.out_wh[0]} {s.dtype}" for s, p in pairs},
        "copy_ceiling_gbs": ceiling,
    }
    floor_bytes = memory_floor_bytes(pairs, frame_bytes)
    result["floor_mb"] = floor_bytes / 1e6
    result["floor_ms"] = floor_bytes / (ceiling * 1e9) * 1e3
    for s, pre in zip(specs, per_spec, strict=True):
        run_one: Callable[[], Any] = functools.partial(pre.run, frame)
        result[f"spec_{s.name}"] = _stats(time_events(run_one, iters))
    result["three_launches"] = _stats(time_events(lambda: [p.run(frame) for p in per_spec], iters))
    one = _stats(time_events(lambda: multi.run_all(frame), iters))
    result["one_launch"] = one
    result["one_launch_gbs"] = floor_bytes / (one["p50_ms"] * 1e-3) / 1e9
    result["x_floor"] = one["p50_ms"] / result["floor_ms"]
    cupy.get_default_memory_pool().free_all_blocks()
    return result


def bench_nvdec(uri: str, frames: int = 600, max_streams: int = 8) -> dict[str, Any]:
    """NVDEC decode into the ring: frames/s of one stream, then K decoders at once (one thread
    each); ``streams_at_30fps`` is the largest K whose slowest stream keeps 30 frames/s."""
    from gpu.nvdec_source import NvdecSource

    def run_one(n: int, out: list[float], idx: int, barrier: threading.Barrier | None) -> None:
        with NvdecSource(uri, loop=True, max_frames=n) as src:
            it = src.frames()
            next(it)  # open + first frame outside the timing
            src.stream.synchronize()
            if barrier is not None:
                barrier.wait()
            t0 = time.perf_counter()
            got = 1
            for _ in it:
                got += 1
            src.stream.synchronize()
            out[idx] = (got - 1) / (time.perf_counter() - t0)

    res: list[float] = [0.0]
    run_one(frames, res, 0, None)
    result: dict[str, Any] = {"bench": "nvdec", "card": card_name(), "uri": uri, "frames": frames, "one_stream_fps": res[0]}
    concurrent = {}
    best = 1 if res[0] >= 30 else 0
    for k in range(2, max_streams + 1):
        fps = [0.0] * k
        barrier = threading.Barrier(k)
        threads = [threading.Thread(target=run_one, args=(frames // 2, fps, i, barrier)) for i in range(k)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        concurrent[k] = {"total_fps": sum(fps), "slowest_fps": min(fps)}
        if min(fps) >= 30:
            best = k
        if min(fps) < 30:
            break
    result["concurrent"] = concurrent
    result["streams_at_30fps"] = best
    return result


def bench_inference(
    backend: Any, batch: int, iters: int = 50, warmup: int = 5, hw: tuple[int, int] = (640, 640)
) -> dict[str, Any]:
    """Latency of ``backend.enqueue(x).wait()`` on a random CuPy batch (host clock around a
    finished call: what a branch waits for). Dynamic height/width take ``hw``."""
    import cupy

    info = backend.inputs[0]
    shape = list(info.shape)
    shape[0] = batch
    for axis, size in ((2, hw[0]), (3, hw[1])):
        if len(shape) > axis and shape[axis] is None:
            shape[axis] = size
    rng = cupy.random.default_rng(0)
    x = rng.random(tuple(shape), dtype=cupy.float32).astype(info.dtype)
    for _ in range(warmup):
        backend.enqueue({info.name: x}).wait()
    ms = []
    for _ in range(iters):
        t0 = time.perf_counter()
        backend.enqueue({info.name: x}).wait()
        ms.append((time.perf_counter() - t0) * 1e3)
    return {"bench": "inference", "card": card_name(), "backend": backend.name, "batch": batch, "input": shape, "dtype": info.dtype, **_stats(ms)}


def _demo_specs() -> list[InputSpec]:
    return [
        InputSpec("yolo_global", "letterbox", 640, 640),
        InputSpec("yolo_tiles", "tiles", 640, 640, overlap=0.2),
        InputSpec("density", "grid", 640, 720, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), pad_value=0),
    ]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmarks named on the command line; one JSON line per result."""
    import dataclasses

    ap = argparse.ArgumentParser(prog="python -m gpu.bench")
    ap.add_argument("--clip", help="4K video for NVDEC (and a real frame for preprocessing)")
    ap.add_argument("--preprocess", action="store_true")
    ap.add_argument("--nvdec", action="store_true")
    ap.add_argument("--nvdec-frames", type=int, default=600)
    args = ap.parse_args(argv)
    import cupy

    from pipeline.types import FrameMeta

    def emit(d: dict[str, Any]) -> None:
        print(json.dumps(d), flush=True)

    if args.preprocess:
        if args.clip:
            from gpu.nvdec_source import NvdecSource

            with NvdecSource(args.clip, max_frames=1) as src:
                frame = next(src.frames())
                frame = Frame(frame.meta, frame.image.copy(), layout="nv12", device="gpu")
        else:
            rng = np.random.default_rng(0)
            img = cupy.asarray(rng.integers(0, 256, (3240, 3840), dtype=np.uint8))
            frame = Frame(FrameMeta("b", 0, 0.0, 0.0, 3840, 2160), img, layout="nv12", device="gpu")
        for dtype in ("float32", "float16"):
            specs = [dataclasses.replace(s, dtype=dtype) for s in _demo_specs()]
            emit(bench_preprocess(frame, specs, iters=200))
    if args.nvdec and args.clip:
        emit(bench_nvdec(args.clip, args.nvdec_frames))
    return 0


if __name__ == "__main__":
    sys.exit(main())
