"""Headless mode: the whole pipeline without a window; counts and timings go to SQLite.

Order of checks, so a bad input stops before anything is recorded: config, database (writable?),
source (readable?), models (loadable, expected shapes?). Then the run is recorded; whatever
happens afterwards (a failed branch, a dropped stream, Ctrl-C), everything published so far is
flushed to the database before exit.
"""

from __future__ import annotations

import argparse
import io
import logging
import platform
import re
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from pydantic import ValidationError

from app.build import close_branches, gpu_ring_depth, make_branches, make_counter, make_source, warm_up_branches
from config import load_pipeline_config
from config.errors import AppError, ConfigError, StageError
from config.schema import PipelineConfig
from pipeline.orchestrator import Orchestrator
from pipeline.sources import is_network_uri as is_live
from pipeline.telemetry import StageAccumulator, StageStats, format_table
from pipeline.types import CountResult, FusedResult, MetadataRecord, WorkRecord
from storage.export import export_counts
from storage.writer import SqliteWriter

log = logging.getLogger("people_counter.app")

def load_config_with_overrides(args: argparse.Namespace) -> PipelineConfig:
    """The pipeline config with the command line's overrides applied (then validated again)."""
    cfg = load_pipeline_config(args.config)
    data = cfg.model_dump(mode="json")
    if getattr(args, "source", None):
        data["streams"][0]["uri"] = args.source
    if getattr(args, "realtime", False):
        data["streams"][0]["realtime"] = True
    if getattr(args, "max_frames", None) is not None:
        data["max_frames"] = args.max_frames
    if getattr(args, "fusion", None) and isinstance(args.fusion, str):
        data["fusion"]["strategy"] = args.fusion
    if getattr(args, "db", None):
        data["storage"]["db_path"] = args.db
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"{args.config} with the command line's options: {problems}") from None


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


_REASON_KEYS = 32
"""Distinct unknown-count reasons kept in a summary (the rest are counted under "other")."""


def _reason_key(reason: str) -> str:
    # "stale: counts of frame 812 are 2301 ms old" and the like: one key per kind of reason.
    return re.sub(r"\d+(\.\d+)?", "N", reason)[:120]


@dataclass
class RunSummary:
    """What a run produced, as streaming statistics (bounded memory, any run length; no pixels).

    Counts follow the count contract: ``known`` frames have a number, ``unknown`` frames count
    under their reason; means and maxima are over known frames only.
    """

    warmup: int = 5
    frames: int = 0
    partial: int = 0
    known: int = 0
    unknown: int = 0
    unknown_reasons: Counter[str] = field(default_factory=Counter)
    people_sum: float = 0.0
    people_max: float | None = None
    density_sum: float = 0.0
    density_n: int = 0
    last: CountResult | None = None
    last_frame: int | None = None
    stages: StageAccumulator = field(init=False)

    def __post_init__(self) -> None:
        self.stages = StageAccumulator(self.warmup)

    def add_counts(self, frame_index: int, c: CountResult) -> None:
        self.last, self.last_frame = c, frame_index
        if c.fused is None:
            self.unknown += 1
            key = _reason_key(c.unknown_reason or "unknown")
            if key not in self.unknown_reasons and len(self.unknown_reasons) >= _REASON_KEYS:
                key = "other"
            self.unknown_reasons[key] += 1
        else:
            self.known += 1
            self.people_sum += c.fused
            self.people_max = c.fused if self.people_max is None else max(self.people_max, c.fused)
        if c.density is not None:
            self.density_sum += c.density
            self.density_n += 1

    @property
    def mean_people(self) -> float | None:
        return self.people_sum / self.known if self.known else None


class SummarySink:
    """Keeps streaming statistics of timings and counts for the final table, and prints a progress line."""

    def __init__(self, total: int | None, stream: TextIO | None = sys.stderr, warmup: int = 5) -> None:
        self.summary = RunSummary(warmup=warmup)
        self._total = total
        self._stream = stream
        self._lock = threading.Lock()
        self._t0 = time.perf_counter()
        self._last_print = 0.0

    def write_metadata(self, record: MetadataRecord) -> None:
        """RAW_STREAM_WITH_METADATA: counts arrive in metadata records, apart from the frames."""
        with self._lock:
            self.summary.add_counts(record.frame_index, record.counts)
            self.summary.stages.add(record.timings)

    def write_work(self, record: WorkRecord) -> None:
        """Branch work reported after the last publication (end of an ASYNC_OVERLAY run)."""
        with self._lock:
            self.summary.stages.add(record.timings)

    def write(self, result: FusedResult) -> None:
        with self._lock:
            s = self.summary
            s.frames += 1
            s.partial += int(result.partial)
            if not result.raw:
                s.stages.add(result.timings)
                s.add_counts(result.frame.frame_index, result.counts)
            now = time.perf_counter()
            if s.last is None or self._stream is None:
                return
            if now - self._last_print > 0.5 or s.frames == self._total:
                self._last_print = now
                fps = s.frames / max(now - self._t0, 1e-9)
                total = f"/{self._total}" if self._total else ""
                e2e = result.timings.end_to_end_ms or 0.0
                self._stream.write(
                    f"\rframe {result.frame.frame_index + 1}{total}  {fps:5.2f} fps  people {format_counts(s.last)}"
                    f"  e2e {e2e:8.1f} ms   "
                )
                self._stream.flush()

    def close(self) -> None:
        if self._stream is not None and self.summary.frames:
            self._stream.write("\n")


def format_counts(c: CountResult) -> str:
    """``12.0 (detections 12, density 14.2)``, or ``unknown (late: yolo_tiles)``: never 0 for unknown."""
    if c.fused is None:
        return f"unknown ({c.unknown_reason})"
    det = "unknown" if c.detection is None else str(c.detection)
    dens = "-" if c.density is None else f"{c.density:.1f}"
    return f"{c.fused:.1f} (detections {det}, density {dens})"


_SIGNAL_STATUS = {signal.SIGINT: ("interrupted", 130), signal.SIGTERM: ("terminated", 143)}
"""The run's end status and the exit code of each stop signal."""


class _StopSignals:
    """SIGINT and SIGTERM, once or repeated, ask the pipeline to stop instead of killing it.

    The first signal decides the run's end status (``interrupted`` / ``terminated``) and exit code
    (130 / 143); later ones are logged and ignored, so a double Ctrl-C still ends cleanly with
    everything flushed. Installed only in the main thread (Python's rule); restored on exit unless a
    signal came (then repeats stay ignored until the process ends).
    """

    def __init__(self) -> None:
        self.received: signal.Signals | None = None
        self._on_stop: Callable[[], None] | None = None
        self._previous: dict[signal.Signals, Any] = {}

    def __enter__(self) -> _StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in _SIGNAL_STATUS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.received is not None:
            # stopping on a signal: the process is on its way out (report, export, the GPU
            # teardown still to come). A repeat (a double Ctrl-C lands here 50 ms later on a fast
            # stop) must keep being ignored, not meet the default handler and kill the process
            # with -2 after everything was flushed.
            return
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def on_stop(self, fn: Callable[[], None] | None) -> None:
        self._on_stop = fn
        if fn is not None and self.received is not None:
            fn()

    def _handle(self, signum: int, frame: Any) -> None:
        del frame
        sig = signal.Signals(signum)
        if self.received is not None:
            log.warning("%s again: already stopping, flushing what was recorded", sig.name)
            return
        self.received = sig
        log.warning("%s: stopping; in-flight frames are published as partial, then the database is flushed", sig.name)
        if self._on_stop is not None:
            self._on_stop()

    @property
    def outcome(self) -> tuple[str, int] | None:
        return None if self.received is None else _SIGNAL_STATUS[self.received]


class _StreamStop:
    """One stream's view of the process's :class:`_StopSignals` when several streams run: a signal
    stops every stream (each registers its own orchestrator's stop)."""

    def __init__(self, parent: _StopSignals) -> None:
        self._parent = parent
        self._fn: Callable[[], None] | None = None

    def on_stop(self, fn: Callable[[], None] | None) -> None:
        self._fn = fn
        if fn is not None and self._parent.received is not None:
            fn()

    def fire(self) -> None:
        if self._fn is not None:
            self._fn()

    @property
    def outcome(self) -> tuple[str, int] | None:
        return self._parent.outcome


@dataclass(frozen=True)
class StreamRun:
    """How one stream's run of :func:`run_streams` ended: its exit code, summary and run id (None
    and the error when it could not start: a missing file, an unreachable source, a bad model)."""

    stream_id: str
    code: int
    summary: RunSummary | None
    run_id: int | None
    error: str | None = None


def stream_configs(cfg: PipelineConfig) -> list[PipelineConfig]:
    """One config per entry of ``streams`` (``streams: [that one]``), the rest shared. CPU sessions
    split the cores over every stream's branches (``backend.onnxruntime.intra_op_threads: 0``)."""
    from models.onnxruntime_backend import cpu_thread_budget

    data = cfg.model_dump(mode="json")
    ort = data["backend"]["onnxruntime"]
    if not ort["intra_op_threads"] and cfg.backend.device != "gpu":
        ort["intra_op_threads"] = cpu_thread_budget(len(cfg.streams) * sum(1 for b in cfg.branches.values() if b.enabled))
    out = []
    for stream in data["streams"]:
        one = dict(data, streams=[stream])
        out.append(PipelineConfig.model_validate(one))
    return out


def run_streams(
    cfg: PipelineConfig,
    *,
    out: TextIO = sys.stdout,
    extra_sinks: Callable[[str], tuple[Any, ...]] | None = None,
) -> list[StreamRun]:
    """Every entry of ``streams`` at once in this process, each in its own thread with its own
    source, branches (the same model files; one ONNX Runtime session per stream and branch: a CUDA
    session runs on one compute stream), counter, tracker and run in the same database (its own
    writer connection; rows carry the stream id). A stream that cannot start is reported and the
    others run; a signal stops them all. ``extra_sinks(stream_id)``: more sinks per stream."""
    configs = stream_configs(cfg)
    results: dict[str, StreamRun] = {}
    with _StopSignals() as signals:
        stops = [_StreamStop(signals) for _ in configs]
        def stop_all() -> None:
            for st in stops:
                st.fire()

        signals.on_stop(stop_all)
        # writers start one after the other (schema, crash recovery), then the streams run at once
        writers = [SqliteWriter.from_config(c.storage).start() for c in configs]
        reports: dict[str, str] = {}

        def one(c: PipelineConfig, writer: SqliteWriter, stop: _StreamStop) -> None:
            sid = c.streams[0].id
            buf = io.StringIO()
            try:
                sinks = extra_sinks(sid) if extra_sinks is not None else ()
                code, summary, run_id = _run(c, writer, stop, buf, None, sinks, False, False, None)
                results[sid] = StreamRun(sid, code, summary, run_id)
            except AppError as exc:
                log.error("stream %s: %s", sid, exc)
                results[sid] = StreamRun(sid, exc.exit_code, None, None, str(exc))
            except Exception as exc:
                log.exception("stream %s failed", sid)
                results[sid] = StreamRun(sid, StageError.exit_code, None, None, f"{type(exc).__name__}: {exc}")
            finally:
                reports[sid] = buf.getvalue()

        threads = [
            threading.Thread(target=one, args=(c, w, st), name=f"stream-{c.streams[0].id}", daemon=True)
            for c, w, st in zip(configs, writers, stops, strict=True)
        ]
        try:
            for t in threads:
                t.start()
            for t in threads:
                while t.is_alive():  # short joins: the main thread keeps taking signals
                    t.join(0.2)
        finally:
            signals.on_stop(None)
            for w in writers:
                w.close()
    runs = [results[c.streams[0].id] for c in configs]
    for r in runs:
        out.write(f"\n=== stream {r.stream_id} ===")
        out.write(reports.get(r.stream_id, "") if r.error is None else f"\nerror: {r.error}\n")
    out.flush()
    return runs


def exit_code(runs: list[StreamRun]) -> int:
    """The process's exit code for several streams: a signal's (130 / 143) when one stopped them,
    else the first failing stream's, else 0."""
    codes = [r.code for r in runs]
    for sig_code in (130, 143):
        if sig_code in codes:
            return sig_code
    return next((c for c in codes if c != 0), 0)


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
    default the run goes to the end of the stream (or ``max_frames``). SIGINT / SIGTERM stop it
    cleanly (exit 130 / 143, run ``interrupted`` / ``terminated``); a source that reported decode
    errors ends ``completed_with_errors``.
    """
    with _StopSignals() as signals:
        writer = SqliteWriter.from_config(cfg.storage).start()
        try:
            return _run(cfg, writer, signals, out, progress, extra_sinks, run_sequential, publish_images, drive)
        finally:
            writer.close()


def _run(
    cfg: PipelineConfig,
    writer: SqliteWriter,
    signals: _StopSignals | _StreamStop,
    out: TextIO,
    progress: TextIO | None,
    extra_sinks: tuple[Any, ...],
    run_sequential: bool,
    publish_images: bool,
    drive: Callable[[Orchestrator, int, SqliteWriter], None] | None,
) -> tuple[int, RunSummary, int]:
    stream = cfg.streams[0]
    source = make_source(stream, cfg.backend.device, on_event=writer.event, ring_depth=gpu_ring_depth(cfg))
    opener = getattr(source, "open", None)
    if opener is not None:
        opener()  # a missing or unreadable video fails here, before anything is recorded
    branches = make_branches(cfg)
    try:
        if cfg.backend.device == "gpu":  # cold kernels take seconds: not on the first frames of a live stream
            warm_up_branches(cfg, branches, runs=2)
        run_id = writer.start_run(cfg.model_dump(mode="json"), versions(), stream.uri, cfg.fusion.strategy.value)
        summary_sink = SummarySink(cfg.max_frames, progress, warmup=cfg.telemetry.warmup_frames)
        orch = Orchestrator(
            source,
            branches,
            make_counter(cfg, getattr(source, "fps", None)),
            cfg.fusion,
            sinks=(writer, summary_sink, *extra_sinks),
            max_frames=cfg.max_frames,
            run_sequential=run_sequential,
            # a file is not live: decode waits for the branches instead of dropping frames
            on_full="drop" if is_live(stream.uri) or stream.realtime else "wait",
            publish_images=publish_images,
        )
        status, code = "completed", 0
        try:
            with orch:
                signals.on_stop(orch.request_stop)
                if drive is None:
                    orch.wait()
                else:
                    drive(orch, run_id, writer)
        except KeyboardInterrupt:  # a signal handler other than ours (not the main thread)
            status, code = "interrupted", 130
        finally:
            signals.on_stop(None)
        st = orch.status
        if st.state == "FAILED":
            status = "failed"
            err = orch.error
            code = err.exit_code if isinstance(err, AppError) else StageError.exit_code
            print(f"error: pipeline failed: {st.error}", file=sys.stderr)
        elif signals.outcome is not None:
            status, code = signals.outcome
        elif getattr(source, "errors", 0):
            status = "completed_with_errors"
        summary_sink.close()
        summary = _summary_dict(summary_sink.summary, st)
        writer.end_run(status, summary)
        _print_report(summary_sink.summary, summary, cfg, out)
        return code, summary_sink.summary, run_id
    finally:
        close_branches(branches)


def _summary_dict(s: RunSummary, status: Any) -> dict[str, Any]:
    return {
        "frames_published": s.frames,
        "partial_frames": getattr(status, "partial_frames", s.partial),
        "drops": dict(getattr(status, "drops", {}) or {}),
        "waited_on": dict(getattr(status, "waited_on", {}) or {}),
        "counted_frames": s.known,
        "unknown_frames": s.unknown,
        "unknown_reasons": dict(s.unknown_reasons.most_common()),
        "mean_people": s.mean_people,
        "max_people": s.people_max,
        "stages": {k: v.as_dict() for k, v in s.stages.stats().items()},
    }


def _main_stages(stats: Mapping[str, StageStats]) -> dict[str, StageStats]:
    return {k: v for k, v in stats.items() if "." not in k and not k.startswith("queue_depth")}


def _print_report(s: RunSummary, summary: Mapping[str, Any], cfg: PipelineConfig, out: TextIO) -> None:
    out.write(f"\nper-stage latency (ms, first {cfg.telemetry.warmup_frames} samples of each stage skipped):\n")
    out.write(format_table(_main_stages(s.stages.stats())) + "\n")
    out.write(f"\nframes published: {s.frames}   partial: {summary['partial_frames']}   drops: {summary['drops'] or 'none'}\n")
    if s.last is not None:
        line = f"people: last frame {format_counts(s.last)}"
        if s.known:
            line += f"   mean {s.mean_people:.1f}   max {s.people_max:.1f} over {s.known} counted frames"
        if s.density_n:
            line += f"   density mean {s.density_sum / s.density_n:.1f}"
        out.write(line + f"   [{cfg.counting.policy}]\n")
        if s.unknown:
            reasons = ", ".join(f"{k} ({n})" for k, n in s.unknown_reasons.most_common(5))
            out.write(f"unknown counts: {s.unknown} frames: {reasons}\n")
    out.flush()


def headless_command(args: argparse.Namespace) -> int:
    cfg = load_config_with_overrides(args)
    quiet = getattr(args, "quiet", False)
    if len(cfg.streams) > 1:
        return _several_streams_command(cfg, args)
    code, _summary, run_id = run_pipeline(cfg, progress=None if quiet else sys.stderr)
    db = cfg.storage.db_path
    print(f"stored: {db} (run {run_id})")
    export = getattr(args, "export", None)
    if export:
        n = export_counts(db, export, run_id=run_id)
        print(f"exported {n} rows to {export}")
    return code


def _several_streams_command(cfg: PipelineConfig, args: argparse.Namespace) -> int:
    runs = run_streams(cfg)
    db = cfg.storage.db_path
    stored = ", ".join(f"{r.stream_id}: run {r.run_id}" for r in runs if r.run_id is not None)
    print(f"stored: {db} ({stored or 'no run started'})")
    export = getattr(args, "export", None)
    if export:
        path = Path(export)
        for r in runs:
            if r.run_id is None:
                continue
            target = path.with_name(f"{path.stem}.{r.stream_id}{path.suffix}")
            n = export_counts(db, target, run_id=r.run_id)
            print(f"exported {n} rows of stream {r.stream_id} to {target}")
    return exit_code(runs)


def export_command(args: argparse.Namespace) -> int:
    """``main.py export``: ``--what`` (counts, crossings, visits, static) of ``--db`` to ``--out``."""
    from storage.export import export

    if not Path(args.db).exists():
        from config.errors import StorageError

        raise StorageError(f"database not found: {args.db} (pass the --db of a headless run)")
    what = getattr(args, "what", "counts")
    n = export(args.db, args.out, what, since=args.since, until=args.until, run_id=args.run)
    print(f"exported {n} rows ({what}) to {args.out}")
    return 0


def build_engines_command(args: argparse.Namespace) -> int:
    from models.engine_build import main_build_engines

    cfg = load_pipeline_config(args.config)
    return int(main_build_engines(cfg, precision=args.precision or cfg.backend.tensorrt.precision) or 0)
