"""The bench's scenario runners: ``preprocess`` (decode + preprocessing, no inference) and the whole
pipeline (``e2e`` overlapped, ``sequential``), each returning a :class:`RunResult` of per-frame
timing rows and frame rates (definitions in :mod:`app.bench`).

Rows come from the publications' :class:`~pipeline.types.StageTimings`, grouped by the frame each
figure belongs to (``by_frame()``), as SQLite stores them: the bench and the database agree on
which frame a cost belongs to, under every strategy.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from app.build import gpu_ring_depth, make_counter, make_input_spec, make_source
from config.errors import AppError, StageError
from config.schema import PipelineConfig
from pipeline.orchestrator import MemorySink, Orchestrator
from pipeline.preprocess import NumpyPreprocessor
from pipeline.telemetry import StageStats, summarize
from pipeline.types import Frame

log = logging.getLogger("people_counter.telemetry")


@dataclass
class RunResult:
    """One scenario/strategy run."""

    scenario: str
    strategy: str | None
    mode: str  # "preprocess" | "overlapped" | "sequential"
    frames: int = 0
    warmup: int = 0
    fps: float = math.nan
    publish_fps: float = math.nan
    wall_s: float = math.nan
    rows: list[tuple[int, dict[str, float]]] = field(default_factory=list)
    drops: dict[str, int] = field(default_factory=dict)
    partial: int = 0
    waited_on: dict[str, int] = field(default_factory=dict)
    late_results: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return self.scenario if self.strategy is None else f"{self.scenario}/{self.strategy}"

    def measured_rows(self) -> list[dict[str, float]]:
        return [r for i, r in self.rows if i >= self.warmup]

    def stats(self) -> dict[str, StageStats]:
        return summarize(self.measured_rows(), warmup=0)


def _log_event(kind: str, message: str, frame_index: int | None = None, data: Mapping[str, Any] | None = None) -> None:
    del frame_index, data
    log.info("%s: %s", kind, message)


def _rate(n: int, t0: float, t1: float) -> float:
    return n / (t1 - t0) if n > 0 and t1 > t0 else math.nan


def _window_fps(ts: Mapping[int, float], warmup: int, t_start: float) -> tuple[float, int]:
    """Frames with index >= warmup per second, from the last warm-up frame's time (or ``t_start``)."""
    if not ts:
        return math.nan, 0
    measured = [t for i, t in ts.items() if i >= warmup]
    before = [t for i, t in ts.items() if i < warmup]
    t0 = max(before) if before else t_start
    return _rate(len(measured), t0, max(ts.values())), len(measured)


def _sync_device(tensor: Any) -> None:
    """Wait for the GPU work behind ``tensor``: the current stream of this thread, where the
    preprocessor enqueued it (a no-op for host arrays)."""
    if hasattr(tensor, "__cuda_array_interface__"):
        from models.runner import array_module

        array_module(tensor).cuda.get_current_stream().synchronize()


def _make_preprocessors(cfg: PipelineConfig) -> dict[str, Any]:
    """One preprocessor per input spec used by an enabled branch (no model is loaded)."""
    out: dict[str, Any] = {}
    names = dict.fromkeys(i for b in cfg.branches.values() if b.enabled for i in b.inputs)
    for name in names:
        spec = make_input_spec(name, cfg.preprocess[name])
        if cfg.backend.device == "gpu":
            from gpu.preprocess import GpuPreprocessor

            out[name] = GpuPreprocessor(spec)
        else:
            out[name] = NumpyPreprocessor(spec)
    return out


def run_preprocess(cfg: PipelineConfig, frames: int, warmup: int) -> RunResult:
    """Decode + preprocess for every enabled spec, one frame after the other."""
    pres = _make_preprocessors(cfg)
    res = RunResult("preprocess", None, "preprocess", warmup=warmup)
    source = make_source(cfg.streams[0], cfg.backend.device, on_event=_log_event, ring_depth=gpu_ring_depth(cfg))
    done: dict[int, float] = {}
    first_gpu_frame: Frame | None = None
    t_start = time.perf_counter()
    with source as src:
        it = iter(src.frames())
        for _ in range(frames):
            t0 = time.perf_counter()
            frame = next(it, None)
            if frame is None:
                break
            row = {"decode_ms": max(0.0, (frame.meta.decode_ts - t0) * 1e3)}
            total = 0.0
            for name, pre in pres.items():
                a = time.perf_counter()
                out = pre.run(frame)
                _sync_device(out.tensor)
                ms = (time.perf_counter() - a) * 1e3
                row[f"preprocess_{name}_ms"] = ms
                total += ms
            row["preprocess_ms"] = total
            idx = frame.meta.frame_index
            res.rows.append((idx, row))
            done[idx] = time.perf_counter()
            if first_gpu_frame is None and frame.device == "gpu":
                first_gpu_frame = frame
    res.wall_s = time.perf_counter() - t_start
    res.frames = len(res.rows)
    res.fps, _ = _window_fps(done, warmup, t_start)
    res.publish_fps = res.fps
    if first_gpu_frame is not None:
        res.extra["gpu_preprocess_micro"] = _gpu_micro_preprocess(cfg, first_gpu_frame)
    return res


def _gpu_micro_preprocess(cfg: PipelineConfig, frame: Frame) -> dict[str, Any] | None:
    """gpu.bench's fused-preprocess micro-benchmark on one real frame, when that module is there."""
    try:
        from gpu import bench as gbench

        names = dict.fromkeys(i for b in cfg.branches.values() if b.enabled for i in b.inputs)
        specs = [make_input_spec(n, cfg.preprocess[n]) for n in names]
        return dict(gbench.bench_preprocess(frame, specs, iters=50))
    except Exception as exc:  # optional: report why it is missing, never fail the bench for it
        return {"error": f"{type(exc).__name__}: {exc}"}


def _orchestrator(
    cfg: PipelineConfig, branches: Sequence[Any], strategy: str, *, sequential: bool, frames: int
) -> tuple[Orchestrator, MemorySink]:
    source = make_source(cfg.streams[0], cfg.backend.device, on_event=_log_event, ring_depth=gpu_ring_depth(cfg))
    opener = getattr(source, "open", None)
    if opener is not None:
        opener()
    sink = MemorySink()
    orch = Orchestrator(
        source,
        branches,
        make_counter(cfg),
        cfg.fusion,
        sinks=(sink,),
        strategy=strategy,
        run_sequential=sequential,
        # a paced (live-like) source drops frames for a busy branch, as a camera would
        on_full="drop" if cfg.streams[0].realtime else "wait",
        max_frames=frames,
    )
    return orch, sink


def _collect(res: RunResult, orch: Orchestrator, sink: MemorySink, t_start: float) -> RunResult:
    """Fill ``res`` from a finished run: rows by frame, frame rates, drops."""
    st = orch.status
    if st.state == "FAILED":
        err = orch.error
        raise err if isinstance(err, AppError) else StageError(f"bench {res.key}: {st.error}")

    # rows: every figure under the frame it belongs to (frame publications and, under
    # RAW_STREAM_WITH_METADATA, the metadata records that carry the branch work)
    by_frame: dict[int, dict[str, float]] = {}
    done: dict[int, float] = {}
    for t in [r.timings for r in sink.results] + [m.timings for m in sink.metadata] + [w.timings for w in sink.work]:
        for idx, row in t.by_frame().items():
            by_frame.setdefault(idx, {}).update(row)
        for bt in t.branches:
            done[bt.frame_index] = max(done.get(bt.frame_index, 0.0), bt.done_ts)
    res.rows = sorted(by_frame.items())
    res.frames = len(sink.results)
    published = {r.frame.frame_index: ts for r, ts in zip(sink.results, sink.received_ts, strict=True)}
    completed = {idx: done.get(idx, ts) for idx, ts in published.items()}
    res.fps, _ = _window_fps(completed, res.warmup, t_start)
    res.publish_fps, _ = _window_fps(published, res.warmup, t_start)
    res.drops = dict(st.drops)
    res.partial = st.partial_frames
    res.waited_on = dict(st.waited_on)
    res.late_results = st.late_results
    if sink.metadata:
        res.extra["metadata_records"] = len(sink.metadata)
    return res


def run_pipeline_bench(
    cfg: PipelineConfig, branches: Sequence[Any], strategy: str, *, sequential: bool, frames: int, warmup: int
) -> RunResult:
    """The whole pipeline on ``frames`` frames with one strategy, branches overlapped or sequential."""
    scenario = "sequential" if sequential else "e2e"
    res = RunResult(scenario, strategy, "sequential" if sequential else "overlapped", warmup=warmup)
    orch, sink = _orchestrator(cfg, branches, strategy, sequential=sequential, frames=frames)
    t_start = time.perf_counter()
    with orch:
        orch.wait()
    res.wall_s = time.perf_counter() - t_start
    return _collect(res, orch, sink, t_start)


def run_streams_bench(
    cfg: PipelineConfig, branch_sets: Sequence[Sequence[Any]], strategy: str, *, frames: int, warmup: int
) -> list[RunResult]:
    """``len(branch_sets)`` copies of the stream at once in this process, each with its own branches
    (one session per stream and branch), counter and orchestrator, as ``headless`` runs a config
    with several streams; one :class:`RunResult` per stream (``streams<N>.<k>``): its frame rate,
    drops and end-to-end latency while the others run."""
    n = len(branch_sets)
    runs = [_orchestrator(cfg, bs, strategy, sequential=False, frames=frames) for bs in branch_sets]
    results = [RunResult(f"streams{n}.{k + 1}", strategy, "overlapped", warmup=warmup) for k in range(n)]
    t_start = time.perf_counter()
    started: list[Orchestrator] = []
    try:
        for orch, _ in runs:
            orch.__enter__()
            started.append(orch)
        for orch, _ in runs:
            orch.wait()
    finally:
        for orch in reversed(started):
            orch.__exit__(None, None, None)
    wall = time.perf_counter() - t_start
    for res, (orch, sink) in zip(results, runs, strict=True):
        res.wall_s = wall
        res.extra["streams"] = n
        _collect(res, orch, sink, t_start)
    return results
