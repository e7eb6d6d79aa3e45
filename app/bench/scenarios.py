"""The bench's scenario runners: ``preprocess`` (decode + preprocessing, no inference) and the whole
pipeline (``e2e`` overlapped, ``sequential``), each returning a :class:`RunResult` of per-frame
timing rows and frame rates (definitions in :mod:`app.bench`).

The branch wrapping that records each branch's own timings per frame (:class:`_TimedBranch`,
:func:`_with_branch_work`) is kept together here: it works around fusion attaching a branch's
timings to the frame it is published with, and goes once results carry typed stage timings.
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
from pipeline.types import BranchResult, Frame

log = logging.getLogger("people_counter.bench")


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


class _TimedBranch:
    """Wraps a branch: notes when it finished each frame (for the throughput window) and the
    timings of its result for that frame (with ``run_ms``, the wall time of ``run``)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.name = inner.name
        self.every_n_frames = inner.every_n_frames
        self.done: dict[int, float] = {}
        self.timings: dict[int, dict[str, float]] = {}

    def run(self, frame: Frame) -> BranchResult:
        t0 = time.perf_counter()
        result = self.inner.run(frame)
        t1 = time.perf_counter()
        idx = frame.meta.frame_index
        self.timings[idx] = {**result.timings, "run_ms": (t1 - t0) * 1e3}
        self.done[idx] = t1
        return result

    def close(self) -> None:  # the bench closes the real branches once, at the end
        pass


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


def _with_branch_work(rows: Mapping[int, dict[str, float]], timed: Sequence[_TimedBranch]) -> dict[int, dict[str, float]]:
    """Each frame's row with the branch work done ON that frame.

    Fusion attaches a branch result's timings to a published frame: under STRICT_SYNC the frame
    it was computed on, under ASYNC_OVERLAY the first frame published after it arrived (a later
    one; results that arrive after the last publication are never reported). So that strategies
    compare, the bench replaces those keys by what each branch returned for the frame it ran on:
    ``<branch>.<key>`` and the plain ``<key>`` summed over the branches (fusion's own naming).
    Fusion-made keys (``decode_ms``, ``fusion_wait_ms``, ``overlay_lag*``, ``end_to_end_ms``...)
    stay as published.
    """
    names = {b.name for b in timed}
    work_keys = {k for b in timed for t in b.timings.values() for k in t}
    out: dict[int, dict[str, float]] = {}
    for idx, row in rows.items():
        new = {k: v for k, v in row.items() if k not in work_keys and k.split(".", 1)[0] not in names}
        for b in timed:
            t = b.timings.get(idx)
            if t is None:
                continue
            for k, v in t.items():
                new[f"{b.name}.{k}"] = v
                new[k] = new.get(k, 0.0) + v
        out[idx] = new
    return out


def _sync_device(tensor: Any) -> None:
    """Wait for asynchronous GPU work behind ``tensor`` (a no-op for host arrays)."""
    if hasattr(tensor, "__cuda_array_interface__"):
        from models.runner import array_module

        array_module(tensor).cuda.runtime.deviceSynchronize()


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
    source = make_source(cfg.streams[0], cfg.backend.device, on_event=lambda k, m: log.info("%s: %s", k, m), ring_depth=gpu_ring_depth(cfg))
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


def run_pipeline_bench(
    cfg: PipelineConfig, branches: Sequence[Any], strategy: str, *, sequential: bool, frames: int, warmup: int
) -> RunResult:
    """The whole pipeline on ``frames`` frames with one strategy, branches overlapped or sequential."""
    scenario = "sequential" if sequential else "e2e"
    res = RunResult(scenario, strategy, "sequential" if sequential else "overlapped", warmup=warmup)
    source = make_source(cfg.streams[0], cfg.backend.device, on_event=lambda k, m: log.info("%s: %s", k, m), ring_depth=gpu_ring_depth(cfg))
    opener = getattr(source, "open", None)
    if opener is not None:
        opener()
    timed = [_TimedBranch(b) for b in branches]
    sink = MemorySink()
    orch = Orchestrator(
        source,
        timed,
        make_counter(cfg),
        cfg.fusion,
        sinks=(sink,),
        strategy=strategy,
        run_sequential=sequential,
        # a paced (live-like) source drops frames for a busy branch, as a camera would
        on_full="drop" if cfg.streams[0].realtime else "wait",
        max_frames=frames,
    )
    t_start = time.perf_counter()
    with orch:
        orch.wait()
    res.wall_s = time.perf_counter() - t_start
    st = orch.status
    if st.state == "FAILED":
        err = orch.error
        raise err if isinstance(err, AppError) else StageError(f"bench {res.key}: {st.error}")

    # rows: frame publications; RAW_STREAM publishes branch data in metadata records instead
    by_frame: dict[int, dict[str, float]] = {r.frame.frame_index: dict(r.timings) for r in sink.results}
    if sink.metadata:
        for rec in sink.metadata:
            row = by_frame.setdefault(rec.frame_index, {})
            row.update(rec.timings)
    res.rows = sorted(_with_branch_work(by_frame, timed).items())
    res.frames = len(sink.results)
    published = {r.frame.frame_index: ts for r, ts in zip(sink.results, sink.received_ts, strict=True)}
    completed: dict[int, float] = {}
    for idx, ts in published.items():
        finished = [b.done[idx] for b in timed if idx in b.done]
        completed[idx] = max(finished) if finished else ts
    res.fps, _ = _window_fps(completed, warmup, t_start)
    res.publish_fps, _ = _window_fps(published, warmup, t_start)
    res.drops = dict(st.drops)
    res.partial = st.partial_frames
    res.waited_on = dict(st.waited_on)
    res.late_results = st.late_results
    if sink.metadata:
        res.extra["metadata_records"] = len(sink.metadata)
    return res
