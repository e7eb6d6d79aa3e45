"""``python main.py bench``: measure the pipeline headless and write ``report.html`` + ``report.json``.

Scenarios (``--scenario``), each on ``--frames N`` frames of the configured (or ``--source``)
stream, after every model is loaded; the first ``telemetry.warmup_frames`` frames of each run are
warm-up and left out of every statistic and of the frame rate:

- ``preprocess``: decode + every enabled branch's preprocessor, no inference. Timings
  ``decode_ms``, ``preprocess_<spec>_ms`` per input spec and ``preprocess_ms`` (their sum).
- ``e2e``: the whole pipeline through the :class:`~pipeline.orchestrator.Orchestrator`, once per
  strategy of ``--fusion`` (default: the config's), branches overlapped (one thread per branch),
  ``on_full="wait"`` (a bench processes every frame; nothing is dropped for being slow).
- ``sequential``: the same with ``run_sequential=True`` (the worker runs the branches one after the
  other): the baseline that shows what overlapping the branches buys.

Frame rates:

- ``fps`` (sustained throughput): frames fully processed after warm-up / wall time after warm-up.
  A frame is fully processed when the last branch scheduled for it has returned; the window runs
  from the moment the last warm-up frame was fully processed to the moment the last frame was.
  The same definition for every strategy and for sequential runs, so they compare.
- ``publish_fps``: frames published after warm-up / the time between the last warm-up frame's
  publication and the last publication. Equal to ``fps`` under STRICT_SYNC in steady state; under
  ASYNC_OVERLAY and RAW_STREAM frames are published at decode, ahead of the branches by up to the
  branch queue size, so on short runs it reads higher.

Statistics (N, mean, p50, p90, p95, p99, max) come from :func:`pipeline.telemetry.summarize` on
the timings of the frames after warm-up (warm-up by frame, so a stage sampled every 5th frame
keeps its samples of measured frames).

Nothing is written to SQLite: results stay in memory (:class:`~pipeline.orchestrator.MemorySink`).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import html
import io
import json
import logging
import math
import os
import platform
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from app.build import gpu_ring_depth, make_branches, make_counter, make_input_spec, make_source, warm_up_branches
from app.headless import load_config_with_overrides, versions
from config.errors import AppError, ConfigError, StageError
from config.schema import PipelineConfig
from pipeline.orchestrator import MemorySink, Orchestrator
from pipeline.preprocess import NumpyPreprocessor
from pipeline.telemetry import STAT_FIELDS, StageStats, summarize
from pipeline.types import BranchResult, Frame

log = logging.getLogger("people_counter.bench")

REPORT_SCHEMA = "people-counter-bench/1"
WARMUP_RUNS = 2
"""Runs of each branch on the first frame after loading, before any scenario (besides each run's warm-up frames)."""

STAGE_HELP: dict[str, str] = {
    "decode_ms": "time to get the next frame from the source (demux + decode + colour conversion to RGB).",
    "preprocess_ms": "letterbox / tiling / grid resampling and normalisation into model tensors; in the "
    "pipeline, the sum over the branches that ran on the frame.",
    "preprocess_<spec>_ms": "preprocessing for one input spec alone.",
    "inference_model_<branch>_ms": "one branch's model call: prepare_batch + enqueue + stream_sync (the "
    "inference itself; on ONNX Runtime the call blocks, so stream_sync is ~0 and enqueue holds it).",
    "prepare_batch_ms": "chunking, padding and dtype conversion of the input batch (summed over branches).",
    "enqueue_ms": "submitting the batch to the backend (on a blocking backend: the whole inference).",
    "stream_sync_ms": "waiting for the device to finish (GPU backends).",
    "postprocess_ms": "decoding raw outputs into detections / a density map (summed over branches).",
    "fusion_wait_ms": "STRICT_SYNC: from the frame's first branch result to its publication, i.e. how long "
    "fusion waited for the slowest branch; 0 for strategies that publish at once.",
    "overlay_lag_ms": "ASYNC_OVERLAY: age of the oldest branch result drawn over the published frame.",
    "end_to_end_ms": "from the frame's decode to its publication (RAW_STREAM: to its metadata record). "
    "Includes the time a decoded frame waits for room in a full branch queue.",
    "run_ms": "<branch>.run_ms: wall time of the branch's whole run (preprocess + inference + postprocess).",
}

FIXED_MAIN = ("decode_ms", "preprocess_ms")
TAIL_MAIN = ("fusion_wait_ms", "overlay_lag_ms", "end_to_end_ms")


# ----------------------------------------------------------------------------------------------
# measuring
# ----------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------
# the report: JSON
# ----------------------------------------------------------------------------------------------


def _clean(v: Any) -> Any:
    """NaN/inf -> None, recursively (strict JSON)."""
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    return v


def main_stages(cfg: PipelineConfig, present: Iterable[str]) -> list[str]:
    """The stages charted and summarised, in pipeline order, that appear in ``present``."""
    have = set(present)
    order = list(FIXED_MAIN)
    order += sorted(k for k in have if k.startswith("preprocess_") and k != "preprocess_ms" and "." not in k)
    order += [f"inference_model_{n}_ms" for n, b in cfg.branches.items() if b.enabled]
    order += list(TAIL_MAIN)
    return [k for k in order if k in have]


def _ordered_stages(cfg: PipelineConfig, stats: Mapping[str, StageStats]) -> list[str]:
    main = main_stages(cfg, stats)
    rest = [k for k in stats if k not in main]
    plain = sorted(k for k in rest if "." not in k and not k.startswith("queue_depth"))
    dotted = sorted(k for k in rest if "." in k)
    queues = sorted(k for k in rest if k.startswith("queue_depth"))
    return main + plain + dotted + queues


def machine_info(cfg: PipelineConfig) -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or None,
        "node": platform.node(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "device": cfg.backend.device,
        "backend": cfg.backend.name,
        "card": None,
    }
    with contextlib.suppress(AttributeError, OSError):
        info["load_avg_1_5_15"] = [round(x, 2) for x in os.getloadavg()]
    with contextlib.suppress(AttributeError, OSError):
        info["cpu_affinity"] = len(os.sched_getaffinity(0))
    if cfg.backend.device == "gpu":
        try:
            from gpu.bench import card_name

            info["card"] = card_name()
        except Exception as exc:  # no CuPy / no card: the report says so
            info["card"] = None
            info["card_error"] = f"{type(exc).__name__}: {exc}"
    return info


def run_to_json(cfg: PipelineConfig, r: RunResult) -> dict[str, Any]:
    stats = r.stats()
    order = _ordered_stages(cfg, stats)
    series: dict[str, dict[str, list[Any]]] = {}
    for name in order:
        idx = [i for i, row in r.rows if name in row]
        series[name] = {"frame": idx, "ms": [row[name] for i, row in r.rows if name in row]}
    e2e = stats.get("end_to_end_ms")
    return {
        "scenario": r.scenario,
        "strategy": r.strategy,
        "mode": r.mode,
        "frames": r.frames,
        "warmup_frames": r.warmup,
        "measured_frames": sum(1 for i, _ in r.rows if i >= r.warmup),
        "fps": r.fps,
        "publish_fps": r.publish_fps,
        "wall_s": r.wall_s,
        "end_to_end_p50_ms": e2e.p50 if e2e else None,
        "end_to_end_p95_ms": e2e.p95 if e2e else None,
        "drops": r.drops,
        "drops_total": sum(r.drops.values()),
        "partial_frames": r.partial,
        "waited_on": r.waited_on,
        "late_results": r.late_results,
        "main_stages": main_stages(cfg, stats),
        "stages": {k: stats[k].as_dict() for k in order},
        "series": series,
        **r.extra,
    }


def _mean_run_ms(run: Mapping[str, Any], branch: str) -> float | None:
    st = run["stages"].get(f"{branch}.run_ms")
    v = st.get("mean") if st else None
    return v if isinstance(v, float) and math.isfinite(v) else None


def comparisons(runs: Mapping[str, Mapping[str, Any]], branches: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """Overlapped vs sequential per strategy (ratio of fps), and the strategies side by side.

    Per branch: mean ``run_ms`` in each mode and the slowdown when overlapped (branches that
    compete for the same cores slow each other down). From the sequential run's branch times:
    ``sequential_bound_fps`` = 1000 / sum over branches of run_ms / every_n_frames (what running
    them one after the other allows) and ``ideal_overlapped_fps`` = 1000 / the largest such term
    (the slowest branch alone: what perfect overlap would give)."""
    ovs = []
    for r in runs.values():
        if r["scenario"] != "e2e":
            continue
        seq = runs.get(f"sequential/{r['strategy']}")
        if seq is None:
            continue
        a, b = r["fps"], seq["fps"]
        ratio = a / b if a is not None and b and math.isfinite(a) and math.isfinite(b) else None
        per_branch: dict[str, dict[str, Any]] = {}
        costs: list[float] = []
        for name, info in (branches or {}).items():
            s_ms, o_ms = _mean_run_ms(seq, name), _mean_run_ms(r, name)
            per_branch[name] = {
                "sequential_run_ms": s_ms,
                "overlapped_run_ms": o_ms,
                "slowdown": o_ms / s_ms if s_ms and o_ms else None,
                "every_n_frames": info["every_n_frames"],
            }
            if s_ms:
                costs.append(s_ms / info["every_n_frames"])
        ovs.append({
            "strategy": r["strategy"], "overlapped_fps": a, "sequential_fps": b, "ratio": ratio,
            "sequential_bound_fps": 1000.0 / sum(costs) if costs else None,
            "ideal_overlapped_fps": 1000.0 / max(costs) if costs else None,
            "branches": per_branch,
        })
    strategies = {
        scen: [k for k, r in runs.items() if r["scenario"] == scen]
        for scen in ("e2e", "sequential")
        if sum(1 for r in runs.values() if r["scenario"] == scen) > 1
    }
    return {"overlapped_vs_sequential": ovs, "strategies": strategies}


def _branch_info(cfg: PipelineConfig) -> dict[str, Any]:
    return {
        n: {"model": b.model, "input": b.input, "every_n_frames": b.every_n_frames}
        for n, b in cfg.branches.items()
        if b.enabled
    }


# ----------------------------------------------------------------------------------------------
# the report: HTML
# ----------------------------------------------------------------------------------------------


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _stage_plot(name: str, series: Mapping[str, list[Any]], warmup: int) -> str:
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    frames, ms = series["frame"], series["ms"]
    meas = [v for i, v in zip(frames, ms, strict=True) if i >= warmup and v is not None]
    fig, (ax_h, ax_t) = plt.subplots(1, 2, figsize=(10, 2.6), gridspec_kw={"width_ratios": [1, 1.6]})
    if meas:
        ax_h.hist(meas, bins=min(30, max(5, len(meas) // 2)), color="#3b75af")
    ax_h.set_xlabel(f"{name} (ms)")
    ax_h.set_ylabel("frames")
    ax_h.set_title("histogram (after warm-up)", fontsize=9)
    wf = [i for i in frames if i < warmup]
    wv = [v for i, v in zip(frames, ms, strict=True) if i < warmup]
    mf = [i for i in frames if i >= warmup]
    mv = [v for i, v in zip(frames, ms, strict=True) if i >= warmup]
    if wf:
        ax_t.plot(wf, wv, "o-", color="#bbbbbb", ms=3, label="warm-up")
    ax_t.plot(mf, mv, "o-", color="#3b75af", ms=3, label="measured")
    if warmup:
        ax_t.axvspan(-0.5, warmup - 0.5, color="#eeeeee", zorder=0)
    ax_t.set_xlabel("frame index")
    ax_t.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_t.set_ylabel("ms")
    ax_t.set_title("per frame", fontsize=9)
    ax_t.grid(alpha=0.3)
    if wf:
        ax_t.legend(fontsize=7, loc="upper right")
    fig.suptitle(name, fontsize=10, x=0.01, ha="left")
    return _png(fig)


def _fps_plot(runs: Mapping[str, Mapping[str, Any]]) -> str:
    import matplotlib.pyplot as plt

    keys = [k for k in runs if runs[k]["mode"] != "preprocess"] or list(runs)
    vals = [runs[k]["fps"] or 0.0 for k in keys]
    colors = {"preprocess": "#999999", "overlapped": "#3b75af", "sequential": "#e08a2c"}
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(keys) + 0.8))
    ax.barh(keys, vals, color=[colors.get(runs[k]["mode"], "#3b75af") for k in keys])
    for y, v in enumerate(vals):
        ax.text(v, y, f" {v:.2f}", va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("frames/s (sustained, after warm-up; the preprocess ceiling is in the table)"
                  if len(keys) < len(runs) else "frames/s (sustained, after warm-up)")
    ax.grid(axis="x", alpha=0.3)
    return _png(fig)


def _e2e_box(runs: Mapping[str, Mapping[str, Any]]) -> str | None:
    import matplotlib.pyplot as plt

    data, labels = [], []
    for k, r in runs.items():
        s = r["series"].get("end_to_end_ms")
        if not s:
            continue
        vals = [v for i, v in zip(s["frame"], s["ms"], strict=True) if i >= r["warmup_frames"] and v is not None]
        if vals:
            data.append(vals)
            labels.append(k)
    if not data:
        return None
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(data) + 0.8))
    ax.boxplot(data, vert=False, whis=(5, 95))
    ax.set_yticks(range(1, len(labels) + 1), labels)
    ax.invert_yaxis()
    ax.set_xlabel("end_to_end_ms (ms; whiskers p5-p95)")
    ax.grid(axis="x", alpha=0.3)
    return _png(fig)


def _f(v: Any, digits: int = 2) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return html.escape(str(v))


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]], cls: str = "") -> str:
    h = "".join(f"<th>{html.escape(c)}</th>" for c in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{h}</tr></thead><tbody>{body}</tbody></table>'


def _stage_rows(stages: Mapping[str, Mapping[str, Any]], names: Iterable[str]) -> list[list[str]]:
    return [[f"<code>{html.escape(n)}</code>", *(_f(stages[n].get(f), 0 if f == "n" else 2) for f in STAT_FIELDS)] for n in names]


_STAT_HEADER = ["stage", "N", "mean ms", "p50 ms", "p90 ms", "p95 ms", "p99 ms", "max ms"]

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1100px;color:#222;padding:0 1em}
h1{font-size:1.6em} h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em} h3{margin-top:1.5em}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em} th,td{border:1px solid #ddd;padding:3px 8px;text-align:right}
th{background:#f3f3f3} td:first-child,th:first-child{text-align:left} code{font-size:.95em}
.note{color:#555;font-size:.9em} dl.help dt{font-family:monospace;margin-top:.4em} dl.help dd{margin-left:1.5em;color:#444}
img{max-width:100%;display:block;margin:.3em 0} details{margin:.5em 0} .good{color:#176e1f;font-weight:600}
"""


def render_html(report: Mapping[str, Any]) -> str:
    runs: Mapping[str, Mapping[str, Any]] = report["runs"]
    m = report["machine"]
    out: list[str] = []
    w = out.append
    w(f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>people-counter bench {html.escape(report['date'])}</title>")
    w(f"<style>{_CSS}</style></head><body>")
    w("<h1>people-counter bench report</h1>")
    card = f", card {html.escape(str(m['card']))}" if m.get("card") else ""
    w(
        "<p>"
        f"<b>Date</b> {html.escape(report['date'])} &nbsp; <b>Machine</b> {html.escape(m['platform'])}, "
        f"{m['cpu_count']} CPUs{card} &nbsp; <b>Backend</b> {html.escape(m['backend'])} on {html.escape(m['device'])}<br>"
        f"<b>Config</b> <code>{html.escape(report['config'])}</code> &nbsp; <b>Source</b> <code>{html.escape(report['source'])}</code>"
        + (f"<br><b>Load average</b> (1/5/15 min) before {m['load_avg_1_5_15']}, after {m.get('load_avg_at_end')} "
           "&mdash; other processes on the machine skew the timings when the load before is above zero."
           if m.get("load_avg_1_5_15") else "")
        + f"<br><b>Frames</b> {report['frames']} per run, the first {report['warmup_frames']} of each are warm-up "
        "(left out of every statistic and frame rate).</p>"
    )
    w(_table(["branch", "model", "input spec", "runs on"],
             [[html.escape(n), html.escape(b["model"]), html.escape(" + ".join([b["input"]] if isinstance(b["input"], str) else b["input"])),
               "every frame" if b["every_n_frames"] == 1 else f"every {b['every_n_frames']}th frame"]
              for n, b in report["branches"].items()]))

    # summary
    w("<h2>Summary</h2>")
    w("<p class='note'><b>fps</b>: sustained throughput, frames fully processed (every scheduled branch returned) "
      "per second of wall time after warm-up. <b>publish fps</b>: frames published per second after warm-up "
      "(ASYNC_OVERLAY / RAW_STREAM publish at decode, ahead of the branches by up to the queue size). "
      "<b>e2e</b>: <code>end_to_end_ms</code>, decode to publication.</p>")
    rows = []
    for k, r in runs.items():
        rows.append([
            f"<b>{html.escape(k)}</b>", html.escape(r["mode"]), _f(r["fps"]), _f(r["publish_fps"]),
            _f(r["end_to_end_p50_ms"], 1), _f(r["end_to_end_p95_ms"], 1), str(r["partial_frames"]),
            html.escape(", ".join(f"{a}: {b}" for a, b in r["drops"].items()) or "none"),
            html.escape(", ".join(f"{a}: {b}" for a, b in r["waited_on"].items()) or "–"),
            _f(r["wall_s"], 1),
        ])
    w(_table(["run", "branches", "fps", "publish fps", "e2e p50 ms", "e2e p95 ms", "partial frames", "drops",
              "STRICT_SYNC waited on", "wall s"], rows))
    w(f"<img alt='fps per run' src='{_fps_plot(runs)}'>")
    box = _e2e_box(runs)
    if box:
        w(f"<img alt='end_to_end_ms per run' src='{box}'>")

    comp = report["comparisons"]
    if comp["overlapped_vs_sequential"]:
        w("<h2>Overlapped vs sequential branches</h2>")
        w("<p class='note'>Overlapped: one thread per branch, each frame goes to all branches at once; the "
          "throughput should be limited by the slowest branch. Sequential: the worker runs the branches one "
          "after the other; the throughput is limited by the sum of the branches. Ratio = overlapped fps / "
          "sequential fps (1.00 means overlapping buys nothing, e.g. when the branches share too few CPU cores).</p>")
        w(_table(["strategy", "overlapped fps", "sequential fps", "ratio", "sequential bound fps",
                  "ideal overlapped fps"],
                 [[html.escape(c["strategy"]), _f(c["overlapped_fps"]), _f(c["sequential_fps"]),
                   f"<b>{_f(c['ratio'])}×</b>", _f(c.get("sequential_bound_fps")), _f(c.get("ideal_overlapped_fps"))]
                  for c in comp["overlapped_vs_sequential"]]))
        w("<p class='note'><b>sequential bound</b> = 1000 / Σ (branch run_ms / every_n_frames) and <b>ideal "
          "overlapped</b> = 1000 / max (branch run_ms / every_n_frames), both from the sequential run's mean branch "
          "times: the first is what running the branches one after the other allows, the second what perfect "
          "overlap would give (the slowest branch alone). When the overlapped fps stays near the sequential bound, "
          "the branches compete for one resource (on a CPU: the cores) and each one slows down, as the table below "
          "shows.</p>")
        for c in comp["overlapped_vs_sequential"]:
            if c.get("branches"):
                w(f"<p>{html.escape(c['strategy'])}: mean branch run time (<code>&lt;branch&gt;.run_ms</code>)</p>")
                w(_table(["branch", "runs on", "sequential ms", "overlapped ms", "slowdown when overlapped"],
                         [[html.escape(b), "every frame" if v["every_n_frames"] == 1 else f"every {v['every_n_frames']}th",
                           _f(v["sequential_run_ms"], 1), _f(v["overlapped_run_ms"], 1), f"{_f(v['slowdown'])}×"]
                          for b, v in c["branches"].items()]))

    for scen, keys in comp["strategies"].items():
        w(f"<h2>Strategy comparison ({html.escape(scen)})</h2>")
        w("<p class='note'>The same frames through each fusion strategy; p50 / p95 in ms.</p>")
        stages: list[str] = []
        for k in keys:
            stages += [s for s in runs[k]["main_stages"] if s not in stages]
        header = ["stage", *[f"{k.split('/', 1)[1]} p50 / p95" for k in keys]]
        trows = [["<b>fps</b>", *[_f(runs[k]["fps"]) for k in keys]],
                 ["<b>publish fps</b>", *[_f(runs[k]["publish_fps"]) for k in keys]],
                 ["<b>partial frames</b>", *[str(runs[k]["partial_frames"]) for k in keys]]]
        for s in stages:
            cells = []
            for k in keys:
                st = runs[k]["stages"].get(s)
                cells.append(f"{_f(st['p50'])} / {_f(st['p95'])}" if st else "–")
            trows.append([f"<code>{html.escape(s)}</code>", *cells])
        w(_table(header, trows))

    w("<h2>What the measures mean</h2><dl class='help'>")
    for k, v in STAGE_HELP.items():
        w(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>")
    w("<dt>&lt;branch&gt;.&lt;key&gt;</dt><dd>the same key for one branch alone (plain keys are summed over the "
      "branches that ran on the frame).</dd>")
    w("<dt>wait_for_&lt;branch&gt;_ms</dt><dd>STRICT_SYNC: when that branch's result arrived, after the frame's "
      "first result; the largest names the branch the frame waited on.</dd>")
    w("<dt>queue_depth_&lt;branch&gt;</dt><dd>frames in that branch's queue right after submission (a count, "
      "not ms).</dd>")
    w("<dt>N, mean, p50…max</dt><dd>samples after warm-up and their statistics, in ms; p95 is the value 95 % "
      "of frames stay under.</dd></dl>")

    for k, r in runs.items():
        w(f"<h2>Run {html.escape(k)}</h2>")
        desc = {
            "preprocess": "decode + every branch's preprocessing, no inference, one frame after the other.",
            "overlapped": f"the whole pipeline, fusion {r['strategy']}, branches overlapped (one thread each).",
            "sequential": f"the whole pipeline, fusion {r['strategy']}, branches one after the other.",
        }[r["mode"]]
        w(f"<p>{html.escape(desc)} {r['frames']} frames, {r['measured_frames']} measured; "
          f"<b>{_f(r['fps'])} frames/s</b>; wall {_f(r['wall_s'], 1)} s.</p>")
        if r["mode"] != "preprocess":
            w(f"<p>Drops: {html.escape(', '.join(f'{a}: {b}' for a, b in r['drops'].items()) or 'none')} "
              f"(frames are not dropped in a bench: full queues make decode wait). "
              f"Partial frames: {r['partial_frames']}. Late results: {r['late_results']}. "
              f"STRICT_SYNC waited on: {html.escape(', '.join(f'{a} ({b} frames)' for a, b in r['waited_on'].items()) or '–')}.</p>")
        st = r["stages"]
        main = r["main_stages"]
        w("<h3>Main stages</h3>")
        w(_table(_STAT_HEADER, _stage_rows(st, main)))
        others = [s for s in st if s not in main]
        if others:
            w(f"<details><summary>All {len(st)} timing keys</summary>")
            w(_table(_STAT_HEADER, _stage_rows(st, others)))
            w("</details>")
        if r.get("gpu_preprocess_micro"):
            w("<h3>GPU preprocess micro-benchmark</h3><pre>"
              + html.escape(json.dumps(r["gpu_preprocess_micro"], indent=1, default=str)) + "</pre>")
        w("<h3>Histograms and time series</h3>")
        for s in main:
            w(f"<img alt='{html.escape(s)}' src='{_stage_plot(s, r['series'][s], r['warmup_frames'])}'>")
    w("<p class='note'>Written by <code>python main.py bench</code>; the same figures are in report.json.</p>")
    w("</body></html>")
    return "\n".join(out)


# ----------------------------------------------------------------------------------------------
# text output and --compare
# ----------------------------------------------------------------------------------------------


def format_summary(report: Mapping[str, Any]) -> str:
    runs = report["runs"]
    lines = [
        f"bench: {report['source']}, {report['frames']} frames per run ({report['warmup_frames']} warm-up), "
        f"{report['machine']['backend']} on {report['machine']['device']}, {report['machine']['cpu_count']} CPUs"
        + (f", {report['machine']['card']}" if report["machine"].get("card") else "")
        + (f", load avg before {report['machine']['load_avg_1_5_15'][0]}" if report["machine"].get("load_avg_1_5_15") else "")
    ]
    w0 = max(len("run"), *(len(k) for k in runs))
    head = f"{'run':<{w0}}  {'fps':>7}  {'e2e p50 ms':>10}  {'e2e p95 ms':>10}  {'partial':>7}  drops"
    lines += [head, "-" * len(head)]
    for k, r in runs.items():
        drops = ", ".join(f"{a}:{b}" for a, b in r["drops"].items()) or "none"
        lines.append(
            f"{k:<{w0}}  {_f(r['fps']):>7}  {_f(r['end_to_end_p50_ms'], 1):>10}  {_f(r['end_to_end_p95_ms'], 1):>10}  "
            f"{r['partial_frames'] if r['mode'] != 'preprocess' else '-':>7}  {drops if r['mode'] != 'preprocess' else '-'}"
        )
    for c in report["comparisons"]["overlapped_vs_sequential"]:
        lines.append(
            f"overlapped / sequential ({c['strategy']}): {_f(c['overlapped_fps'])} / {_f(c['sequential_fps'])} fps "
            f"= {_f(c['ratio'])}x"
            + (f"  (bounds from branch times: sequential {_f(c['sequential_bound_fps'])}, "
               f"ideal overlap {_f(c['ideal_overlapped_fps'])} fps)" if c.get("ideal_overlapped_fps") else "")
        )
    return "\n".join(lines)


def _ratio(a: Any, b: Any) -> float | None:
    if a is None or b is None or not math.isfinite(a) or not math.isfinite(b) or b == 0:
        return None
    return a / b


def format_compare(current: Mapping[str, Any], baseline: Mapping[str, Any], baseline_path: str) -> str:
    """Per run and stage present in both: this run's p50 / baseline's p50, same for p95 (and fps)."""
    lines = [f"compare with {baseline_path} (ratio = this run / baseline; > 1.00 is slower for ms, faster for fps)"]
    common = [k for k in current["runs"] if k in baseline["runs"]]
    if not common:
        lines.append("  no run in common (scenarios/strategies differ)")
        return "\n".join(lines)
    for k in common:
        cur, base = current["runs"][k], baseline["runs"][k]
        lines.append(f"{k}: fps {_f(cur['fps'])} vs {_f(base['fps'])} = {_f(_ratio(cur['fps'], base['fps']))}x")
        names = [s for s in cur["stages"] if s in base["stages"]]
        if not names:
            continue
        w0 = max(len("stage"), *(len(s) for s in names))
        lines.append(f"  {'stage':<{w0}}  {'p50 ms':>9}  {'base p50':>9}  {'p50 ratio':>9}  {'p95 ratio':>9}")
        for s in names:
            c, b = cur["stages"][s], base["stages"][s]
            lines.append(
                f"  {s:<{w0}}  {_f(c.get('p50')):>9}  {_f(b.get('p50')):>9}  {_f(_ratio(c.get('p50'), b.get('p50'))):>9}  "
                f"{_f(_ratio(c.get('p95'), b.get('p95'))):>9}"
            )
    return "\n".join(lines)


def _load_baseline(path: str) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--compare: baseline not found: {path} (pass the report.json of an earlier bench)")
    try:
        data = json.loads(p.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--compare: {path} is not a readable JSON report: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("runs"), dict):
        raise ConfigError(f"--compare: {path} is not a bench report.json (no 'runs')")
    return data


# ----------------------------------------------------------------------------------------------
# the command
# ----------------------------------------------------------------------------------------------


def build_report(
    cfg: PipelineConfig, args: argparse.Namespace, results: Sequence[RunResult], machine: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    runs = {r.key: run_to_json(cfg, r) for r in results}
    m = dict(machine or machine_info(cfg))
    with contextlib.suppress(AttributeError, OSError):
        m["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    return _clean({
        "schema": REPORT_SCHEMA,
        "date": datetime.now(UTC).astimezone().isoformat(timespec="seconds"),
        "machine": m,
        "versions": versions(),
        "config": str(args.config),
        "source": cfg.streams[0].uri,
        "frames": int(args.frames),
        "warmup_frames": cfg.telemetry.warmup_frames,
        "branches": _branch_info(cfg),
        "fusion": {"strict_sync_timeout_ms": cfg.fusion.strict_sync_timeout_ms, "queue_size": cfg.fusion.queue_size},
        "runs": runs,
        "comparisons": comparisons(runs, _branch_info(cfg)),
    })


def bench_command(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    """Run the scenarios, write ``<out>/report.json`` and ``<out>/report.html``, print a summary."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed; before pyplot is imported anywhere

    frames = int(args.frames)
    cfg = load_config_with_overrides(
        argparse.Namespace(config=args.config, source=getattr(args, "source", None), realtime=getattr(args, "realtime", False))
    )
    warmup = cfg.telemetry.warmup_frames
    if frames <= warmup:
        raise ConfigError(
            f"--frames {frames}: must be more than telemetry.warmup_frames ({warmup}) so something is measured"
        )
    baseline = _load_baseline(args.compare) if getattr(args, "compare", None) else None
    scenarios = list(dict.fromkeys(getattr(args, "scenario", None) or ["preprocess", "e2e"]))
    strategies = list(dict.fromkeys(getattr(args, "fusion", None) or [cfg.fusion.strategy.value]))
    out_dir = Path(args.out)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--out {out_dir}: cannot create the folder: {exc}") from None

    # fail fast on a bad source, before models load
    probe = make_source(cfg.streams[0], cfg.backend.device, on_event=lambda k, m: None, ring_depth=gpu_ring_depth(cfg))
    opener = getattr(probe, "open", None)
    if opener is not None:
        opener()
        closer = getattr(probe, "close", None)
        if closer is not None:
            closer()

    machine = machine_info(cfg)  # load average before the bench loads the CPU itself
    results: list[RunResult] = []
    pipeline_scen = [s for s in ("e2e", "sequential") if s in scenarios]
    branches = make_branches(cfg) if pipeline_scen else []
    try:
        if pipeline_scen and not branches:
            raise ConfigError(f"{args.config}: no branch is enabled; e2e and sequential need at least one")
        if branches:
            print(f"bench: warming up {len(branches)} branch(es) ...", file=sys.stderr, flush=True)
            warm_up_branches(cfg, branches, WARMUP_RUNS)
        if "preprocess" in scenarios:
            print(f"bench: preprocess, {frames} frames ...", file=sys.stderr, flush=True)
            results.append(run_preprocess(cfg, frames, warmup))
        for scen in pipeline_scen:
            for strat in strategies:
                print(f"bench: {scen} {strat}, {frames} frames ...", file=sys.stderr, flush=True)
                results.append(
                    run_pipeline_bench(cfg, branches, strat, sequential=scen == "sequential", frames=frames, warmup=warmup)
                )
    finally:
        for b in branches:
            b.close()

    report = build_report(cfg, args, results, machine)
    json_path = out_dir / "report.json"
    html_path = out_dir / "report.html"
    json_path.write_text(json.dumps(report, indent=1, allow_nan=False))
    html_path.write_text(render_html(report), encoding="utf-8")
    out.write(format_summary(report) + "\n")
    if baseline is not None:
        out.write(format_compare(report, baseline, args.compare) + "\n")
    out.write(f"report: {html_path}  data: {json_path}\n")
    out.flush()
    return 0
