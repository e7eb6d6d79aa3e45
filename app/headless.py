"""Headless mode: the whole pipeline without a window; counts and timings go to SQLite.

Order of checks, so a bad input stops before anything is recorded: config, database (writable?),
source (readable?), models (loadable, expected shapes?). Then the run is recorded; whatever
happens afterwards (a failed branch, a dropped stream, Ctrl-C), everything published so far is
flushed to the database before exit.
"""

from __future__ import annotations

import argparse
import platform
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from app.build import gpu_ring_depth, make_branches, make_counter, make_source, warm_up_branches
from config import load_pipeline_config
from config.errors import AppError, StageError
from config.schema import PipelineConfig
from pipeline.orchestrator import Orchestrator
from pipeline.sources import is_network_uri as is_live
from pipeline.telemetry import format_table, summarize
from pipeline.types import FusedResult
from storage.export import export_counts
from storage.writer import SqliteWriter


def load_config_with_overrides(args: argparse.Namespace) -> PipelineConfig:
    """The pipeline config with the command line's overrides applied (then validated again)."""
    cfg = load_pipeline_config(args.config)
    data = cfg.model_dump(mode="json")
    if getattr(args, "source", None):
        data["streams"][0]["uri"] = args.source
    if getattr(args, "realtime", False):
        data["streams"][0]["realtime"] = True
    if getattr(args, "max_frames", None):
        data["max_frames"] = args.max_frames
    if getattr(args, "fusion", None) and isinstance(args.fusion, str):
        data["fusion"]["strategy"] = args.fusion
    if getattr(args, "db", None):
        data["storage"]["db_path"] = args.db
    return PipelineConfig.model_validate(data)


def versions() -> dict[str, str]:
    """Versions recorded with each run."""
    import importlib.metadata as md

    out = {"python": platform.python_version(), "platform": platform.platform()}
    for pkg in ("numpy", "onnxruntime", "onnxruntime-gpu", "av", "pydantic", "sqlite-utils", "cupy-cuda13x", "tensorrt"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            continue
    return out


@dataclass
class RunSummary:
    """What a run produced, collected in memory by :class:`SummarySink` (no pixels kept)."""

    frames: int = 0
    partial: int = 0
    timings: list[Mapping[str, float]] = field(default_factory=list)
    counts: list[tuple[int, float, int, float | None]] = field(default_factory=list)
    """(frame_index, fused, detection, density) per published frame."""


class SummarySink:
    """Keeps timings and counts for the final table, and prints a progress line."""

    def __init__(self, total: int | None, stream: TextIO | None = sys.stderr) -> None:
        self.summary = RunSummary()
        self._total = total
        self._stream = stream
        self._lock = threading.Lock()
        self._t0 = time.perf_counter()
        self._last_print = 0.0

    def write_metadata(self, record: Any) -> None:
        """RAW_STREAM_WITH_METADATA: counts arrive in metadata records, apart from the frames."""
        with self._lock:
            c = record.counts
            self.summary.counts.append((record.frame_index, c.fused, c.detection, c.density))
            self.summary.timings.append(dict(record.timings))

    def write(self, result: FusedResult) -> None:
        with self._lock:
            s = self.summary
            s.frames += 1
            s.partial += int(result.partial)
            c = result.counts
            if result.counts_frame_index is not None:
                s.timings.append(dict(result.timings))
                s.counts.append((result.frame.frame_index, c.fused, c.detection, c.density))
            now = time.perf_counter()
            if not s.counts:
                return
            _c_frame, fused, det, dens_v = s.counts[-1]
            if self._stream is not None and (now - self._last_print > 0.5 or s.frames == self._total):
                self._last_print = now
                fps = s.frames / max(now - self._t0, 1e-9)
                total = f"/{self._total}" if self._total else ""
                dens = "-" if dens_v is None else f"{dens_v:.1f}"
                self._stream.write(
                    f"\rframe {result.frame.frame_index + 1}{total}  {fps:5.2f} fps  people {fused:6.1f} "
                    f"(detections {det}, density {dens})  e2e {result.timings.get('end_to_end_ms', 0):8.1f} ms   "
                )
                self._stream.flush()

    def close(self) -> None:
        if self._stream is not None and self.summary.frames:
            self._stream.write("\n")


def run_pipeline(
    cfg: PipelineConfig,
    *,
    out: TextIO = sys.stdout,
    progress: TextIO | None = sys.stderr,
    extra_sinks: tuple[Any, ...] = (),
    run_sequential: bool = False,
    publish_images: bool = False,
    drive: Callable[[Orchestrator, int, SqliteWriter], None] | None = None,
) -> tuple[int, RunSummary, int]:
    """Run the configured pipeline to its end. Returns (exit code, summary, run id).

    ``drive(orchestrator, run_id, writer)`` blocks while the run goes on (the GUI's event loop); by
    default the run goes to the end of the stream (or ``max_frames``).
    """
    writer = SqliteWriter.from_config(cfg.storage).start()
    try:
        source = make_source(
            cfg.streams[0], cfg.backend.device, on_event=lambda k, m: writer.event(k, m), ring_depth=gpu_ring_depth(cfg)
        )
        opener = getattr(source, "open", None)
        if opener is not None:
            opener()  # a missing or unreadable video fails here, before anything is recorded
        branches = make_branches(cfg)
        if cfg.backend.device == "gpu":  # cold kernels take seconds: not on the first frames of a live stream
            warm_up_branches(cfg, branches, runs=2)
        run_id = writer.start_run(
            cfg.model_dump(mode="json"), versions(), cfg.streams[0].uri, cfg.fusion.strategy.value
        )
        summary_sink = SummarySink(cfg.max_frames, progress)
        orch = Orchestrator(
            source,
            branches,
            make_counter(cfg),
            cfg.fusion,
            sinks=(writer, summary_sink, *extra_sinks),
            max_frames=cfg.max_frames,
            run_sequential=run_sequential,
            # a file is not live: decode waits for the branches instead of dropping frames
            on_full="drop" if is_live(cfg.streams[0].uri) or cfg.streams[0].realtime else "wait",
            publish_images=publish_images,
        )
        status = "completed"
        code = 0
        try:
            with orch:
                if drive is None:
                    orch.wait()
                else:
                    drive(orch, run_id, writer)
            st = orch.status
            if st.state == "FAILED":
                status = "failed"
                err = orch.error
                code = err.exit_code if isinstance(err, AppError) else StageError.exit_code
                print(f"error: pipeline failed: {st.error}", file=sys.stderr)
        except KeyboardInterrupt:
            status = "interrupted"
            code = 130
        finally:
            summary_sink.close()
            for b in branches:
                b.close()
            st = orch.status
            summary = _summary_dict(summary_sink.summary, st, cfg)
            writer.end_run(status, summary)
        _print_report(summary_sink.summary, summary, cfg, out)
        return code, summary_sink.summary, run_id
    finally:
        writer.close()


def _summary_dict(s: RunSummary, status: Any, cfg: PipelineConfig) -> dict[str, Any]:
    stats = summarize(s.timings, warmup=cfg.telemetry.warmup_frames)
    fused = [c[1] for c in s.counts]
    return {
        "frames_published": s.frames,
        "partial_frames": getattr(status, "partial_frames", s.partial),
        "drops": dict(getattr(status, "drops", {}) or {}),
        "waited_on": dict(getattr(status, "waited_on", {}) or {}),
        "mean_people": (sum(fused) / len(fused)) if fused else None,
        "max_people": max(fused) if fused else None,
        "stages": {k: v.as_dict() for k, v in stats.items()},
    }


def _print_report(s: RunSummary, summary: Mapping[str, Any], cfg: PipelineConfig, out: TextIO) -> None:
    stats = summarize(s.timings, warmup=cfg.telemetry.warmup_frames)
    main_stages = {k: v for k, v in stats.items() if "." not in k and not k.startswith("queue_depth")}
    out.write(f"\nper-stage latency (ms, first {cfg.telemetry.warmup_frames} frames skipped when there are more):\n")
    if all(v.n == 0 for v in main_stages.values()):
        main_stages = summarize(s.timings, warmup=0)
        main_stages = {k: v for k, v in main_stages.items() if "." not in k and not k.startswith("queue_depth")}
    out.write(format_table(main_stages) + "\n")
    out.write(f"\nframes published: {s.frames}   partial: {summary['partial_frames']}   drops: {summary['drops'] or 'none'}\n")
    if s.counts:
        last = s.counts[-1]
        dens = [c[3] for c in s.counts if c[3] is not None]
        out.write(
            f"people: last frame {last[1]:.1f} (detections {last[2]}"
            + (f", density {last[3]:.1f}" if last[3] is not None else "")
            + f")   mean {summary['mean_people']:.1f}   max {summary['max_people']:.1f}"
            + (f"   density mean {sum(dens) / len(dens):.1f}" if dens else "")
            + f"   [{cfg.counting.policy}]\n"
        )
    out.flush()


def headless_command(args: argparse.Namespace) -> int:
    cfg = load_config_with_overrides(args)
    quiet = getattr(args, "quiet", False)
    code, _summary, run_id = run_pipeline(cfg, progress=None if quiet else sys.stderr)
    db = cfg.storage.db_path
    print(f"stored: {db} (run {run_id})")
    export = getattr(args, "export", None)
    if export:
        n = export_counts(db, export, run_id=run_id)
        print(f"exported {n} rows to {export}")
    return code


def export_command(args: argparse.Namespace) -> int:
    if not Path(args.db).exists():
        from config.errors import StorageError

        raise StorageError(f"database not found: {args.db} (pass the --db of a headless run)")
    n = export_counts(args.db, args.out, since=args.since, until=args.until, run_id=args.run)
    print(f"exported {n} rows to {args.out}")
    return 0


def build_engines_command(args: argparse.Namespace) -> int:
    from models.engine_build import main_build_engines

    cfg = load_pipeline_config(args.config)
    return int(main_build_engines(cfg, precision=args.precision or cfg.backend.tensorrt.precision) or 0)
