"""``python main.py bench``: load the models, run the chosen scenarios, write the report, print it."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, TextIO

from app.bench.compare import format_compare, load_baseline
from app.bench.html_report import render_html
from app.bench.model_only import model_only
from app.bench.report import build_report, format_summary, machine_info
from app.bench.scenarios import RunResult, run_pipeline_bench, run_preprocess, run_streams_bench
from app.build import close_branches, gpu_ring_depth, make_branches, make_source, warm_up_branches
from app.headless import load_config_with_overrides
from config.errors import ConfigError
from config.schema import PipelineConfig
from pipeline.sources import ignore_event

WARMUP_RUNS = 2
"""Runs of each branch on the first frame after loading, before any scenario (besides each run's warm-up frames)."""
MODEL_ONLY_ITERS = {"cpu": 1, "gpu": 20}
"""Timed calls of each model alone, after the warm-up and before the runs (CPU: a 4K detector
batch takes seconds, and the session is warm already)."""


def _frame_size(cfg: PipelineConfig) -> tuple[int, int]:
    """(width, height) of the first frame of the configured stream."""
    from config.errors import SourceError

    source = make_source(cfg.streams[0], cfg.backend.device, on_event=ignore_event, ring_depth=gpu_ring_depth(cfg))
    with source as src:
        for frame in src.frames():
            return frame.meta.width, frame.meta.height
    raise SourceError(f"{cfg.streams[0].uri}: no frame to size the model-only runs")


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
    baseline = load_baseline(args.compare) if getattr(args, "compare", None) else None
    scenarios = list(dict.fromkeys(getattr(args, "scenario", None) or ["preprocess", "e2e"]))
    strategies = list(dict.fromkeys(getattr(args, "fusion", None) or [cfg.fusion.strategy.value]))
    out_dir = Path(args.out)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--out {out_dir}: cannot create the folder: {exc}") from None

    # fail fast on a bad source, before models load
    probe = make_source(cfg.streams[0], cfg.backend.device, on_event=ignore_event, ring_depth=gpu_ring_depth(cfg))
    opener = getattr(probe, "open", None)
    if opener is not None:
        opener()
        closer = getattr(probe, "close", None)
        if closer is not None:
            closer()

    machine = machine_info(cfg)  # load average before the bench loads the CPU itself
    results: list[RunResult] = []
    model: dict[str, object] = {}
    pipeline_scen = [s for s in ("e2e", "sequential") if s in scenarios]
    n_streams = int(getattr(args, "streams", 1) or 1)
    branches = make_branches(cfg) if pipeline_scen or n_streams > 1 else []
    extra_sets: list[list[Any]] = []
    try:
        if pipeline_scen and not branches:
            raise ConfigError(f"{args.config}: no branch is enabled; e2e and sequential need at least one")
        if branches:
            print(f"bench: warming up {len(branches)} branch(es) ...", file=sys.stderr, flush=True)
            warm_up_branches(cfg, branches, WARMUP_RUNS)
            # before the runs: a run's stop cancels its branches' sessions (RunOptions.terminate)
            print("bench: each model alone on random input of its branch's batch ...", file=sys.stderr, flush=True)
            device = cfg.backend.device
            model = model_only(cfg, branches, _frame_size(cfg), iters=MODEL_ONLY_ITERS[device], warmup=int(device == "gpu"))
        if "preprocess" in scenarios:
            print(f"bench: preprocess, {frames} frames ...", file=sys.stderr, flush=True)
            results.append(run_preprocess(cfg, frames, warmup))
        for scen in pipeline_scen:
            for strat in strategies:
                print(f"bench: {scen} {strat}, {frames} frames ...", file=sys.stderr, flush=True)
                results.append(
                    run_pipeline_bench(cfg, branches, strat, sequential=scen == "sequential", frames=frames, warmup=warmup)
                )
        if n_streams > 1:
            for _ in range(n_streams - 1):
                extra_sets.append(make_branches(cfg))
                warm_up_branches(cfg, extra_sets[-1], WARMUP_RUNS)
            for strat in strategies:
                print(f"bench: {n_streams} streams at once, {strat}, {frames} frames each ...", file=sys.stderr, flush=True)
                results.extend(run_streams_bench(cfg, [branches, *extra_sets], strat, frames=frames, warmup=warmup))
    finally:
        close_branches(branches)
        for extra in extra_sets:
            close_branches(extra)

    report = build_report(cfg, args, results, machine, model_only=model)
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
