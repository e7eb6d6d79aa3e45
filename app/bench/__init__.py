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

Modules: :mod:`~app.bench.scenarios` (the runners), :mod:`~app.bench.report` (``report.json`` and
the text summary), :mod:`~app.bench.html_report` and :mod:`~app.bench.plots` (``report.html``),
:mod:`~app.bench.compare` (``--compare``), :mod:`~app.bench.cli` (the command).
"""

from __future__ import annotations

from app.bench.cli import WARMUP_RUNS, bench_command
from app.bench.compare import format_compare, load_baseline
from app.bench.html_report import STAGE_HELP, render_html
from app.bench.report import (
    REPORT_SCHEMA,
    build_report,
    comparisons,
    format_summary,
    machine_info,
    main_stages,
    run_to_json,
)
from app.bench.scenarios import RunResult, run_pipeline_bench, run_preprocess

__all__ = [
    "REPORT_SCHEMA",
    "STAGE_HELP",
    "WARMUP_RUNS",
    "RunResult",
    "bench_command",
    "build_report",
    "comparisons",
    "format_compare",
    "format_summary",
    "load_baseline",
    "machine_info",
    "main_stages",
    "render_html",
    "run_pipeline_bench",
    "run_preprocess",
    "run_to_json",
]
