"""The bench's ``report.json``: runs as JSON, the comparisons between them, the machine, and the
text summary printed at the end of a bench."""

from __future__ import annotations

import argparse
import contextlib
import html
import math
import os
import platform
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from app.bench.model_only import model_gaps
from app.bench.scenarios import RunResult
from app.headless import versions
from config.schema import PipelineConfig
from pipeline.telemetry import StageStats

REPORT_SCHEMA = "people-counter-bench/1"

FIXED_MAIN = ("decode_ms", "preprocess_ms")
TAIL_MAIN = ("fusion_wait_ms", "overlay_lag_ms", "end_to_end_ms")


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
    """Platform, CPUs, load average, backend and (on a GPU) the card, for the report's ``machine``."""
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
    """One run of ``report.json["runs"]``: frame rates, per-stage statistics and per-frame series."""
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


def build_report(
    cfg: PipelineConfig,
    args: argparse.Namespace,
    results: Sequence[RunResult],
    machine: Mapping[str, Any] | None = None,
    *,
    model_only: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The whole ``report.json`` (strict JSON: NaN and inf become null) from the runs of one bench.

    ``model_only``: per branch, its model alone at the branch's batch (:mod:`app.bench.model_only`);
    each pipeline run then carries ``model_gap`` (pipeline inference p50 vs the model alone)."""
    runs = {r.key: run_to_json(cfg, r) for r in results}
    for run in runs.values():
        if model_only and run["mode"] != "preprocess":
            run["model_gap"] = model_gaps(run, model_only)
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
        "model_only": dict(model_only or {}),
        "comparisons": comparisons(runs, _branch_info(cfg)),
    })


def fmt(v: Any, digits: int = 2) -> str:
    """A figure for the summary and the HTML page: ``–`` for a missing or non-finite value, floats to
    ``digits`` decimals, anything else as (HTML-escaped) text."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return html.escape(str(v))


def format_summary(report: Mapping[str, Any]) -> str:
    """The text printed after a bench: one line per run and the overlapped / sequential ratios."""
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
            f"{k:<{w0}}  {fmt(r['fps']):>7}  {fmt(r['end_to_end_p50_ms'], 1):>10}  {fmt(r['end_to_end_p95_ms'], 1):>10}  "
            f"{r['partial_frames'] if r['mode'] != 'preprocess' else '-':>7}  {drops if r['mode'] != 'preprocess' else '-'}"
        )
    for name, m in (report.get("model_only") or {}).items():
        if m.get("error"):
            lines.append(f"model alone, {name}: {m['error']}")
            continue
        calls = f" x {m['calls']} calls" if m.get("calls", 1) > 1 else ""
        gaps = "; ".join(
            f"{k}: pipeline {fmt(g['pipeline_p50_ms'], 1)} ms, gap {fmt(g['gap_ms'], 1)} ms ({fmt(g['ratio'])}x)"
            for k, r in runs.items()
            if (g := (r.get("model_gap") or {}).get(name))
        )
        lines.append(
            f"model alone, {name}: batch {m['batch']} as {m['shape'][0]}{calls}, p50 {fmt(m['per_run_p50_ms'], 1)} ms "
            f"per run (n={m['n']})" + (f"  | {gaps}" if gaps else "")
        )
    for c in report["comparisons"]["overlapped_vs_sequential"]:
        lines.append(
            f"overlapped / sequential ({c['strategy']}): {fmt(c['overlapped_fps'])} / {fmt(c['sequential_fps'])} fps "
            f"= {fmt(c['ratio'])}x"
            + (f"  (bounds from branch times: sequential {fmt(c['sequential_bound_fps'])}, "
               f"ideal overlap {fmt(c['ideal_overlapped_fps'])} fps)" if c.get("ideal_overlapped_fps") else "")
        )
    return "\n".join(lines)

