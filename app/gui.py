"""The operator window: a session of runs, each the same pipeline as headless, with the window as a sink.

:class:`GuiSession` is the window's :class:`ui.window.Controller`. It builds each run from the same
pieces as headless (``app.build``, :class:`~pipeline.orchestrator.Orchestrator`,
:class:`~storage.writer.SqliteWriter`) but on a thread of its own (``pc-gui-run``), so that
building (opening the source, loading models), stopping (cancelling an inference) and flushing the
database never happen on the UI thread, and a run that fails leaves the window usable.

Pause: a file's frames stop being read (the source waits; nothing is decoded, published or
stored while paused, and the file resumes where it stopped); a network stream keeps being read
(so the connection and its buffers stay healthy) but its frames are dropped before the pipeline.
Either way no count is published during a pause: the charts and the database show a gap, never an
invented count. Files are always delivered at their frame rate, as a camera would (the pacing
restarts after a pause instead of catching up).

Several streams (``streams:`` with more than one entry): the session runs one ``_Run`` per stream
at once, each with its config from :func:`app.headless.stream_configs` (``streams: [that one]``,
the CPU thread budget split), its own source, branches, counter, :class:`LatestResultSink`,
writer and run in the same database, like ``headless``. Start, pause, stop, restart and the
fusion strategy act on every camera; a camera that fails (a missing file) fails alone. One camera
is *selected*: ``status``, ``sink``, ``config``, ``allow_static``... are its; :attr:`cameras` lists
them all. :meth:`replace_source` gives one camera another source and restarts that camera only.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

from app.build import close_branches, make_branches, make_counter, make_display_copy, make_source
from app.headless import SummarySink, stream_configs, versions
from config import load_pipeline_config
from config.errors import AppError, ConfigError, StageError
from config.schema import PipelineConfig
from pipeline.frame_counter import FrameCounter
from pipeline.orchestrator import Orchestrator
from pipeline.protocols import Branch
from pipeline.sources import is_network_uri
from pipeline.types import Frame
from storage.export import export_counts
from storage.writer import SqliteWriter
from ui.bridge import CameraStatus, LatestResultSink, PipelineStatus, RunRequest, RunState

log = logging.getLogger("people_counter.app")

STOP_JOIN_S = 1.5
"""How long a stop waits for the pipeline's threads (a cancelled ONNX Runtime run ends in ms)."""

_WRITER_START = threading.Lock()
"""Writers of one database start one after the other (schema, crash recovery), as in headless."""


def build_config(request: RunRequest) -> PipelineConfig:
    """The config of ``request``: the file with the request's overrides, validated again.

    The window paces files itself, so ``realtime`` is turned off here (no ``PacedSource``).
    ``request.source`` replaces ``streams[0]``'s uri, ``request.stream_sources`` those of the
    streams they name.
    """
    cfg = load_pipeline_config(request.config_path)
    data = cfg.model_dump(mode="json")
    streams = data["streams"]
    if request.source:
        streams[0]["uri"] = request.source
    by_id = {s["id"]: s for s in streams}
    for stream_id, uri in request.stream_sources:
        if stream_id not in by_id:
            raise ConfigError(f"{request.config_path}: no stream with id {stream_id!r}; the config has {', '.join(by_id)}")
        by_id[stream_id]["uri"] = uri
    for stream in streams:
        stream["realtime"] = False
    if request.branches is not None:
        unknown = sorted(set(request.branches) - set(data["branches"]))
        if unknown:
            raise ConfigError(f"{request.config_path}: no branch named {', '.join(unknown)}; "
                              f"the config has {', '.join(data['branches'])}")
        for name, branch in data["branches"].items():
            branch["enabled"] = name in request.branches
        if not request.branches:
            raise ConfigError("no branch selected: tick at least one branch in Run ▸ Branches")
    if request.strategy:
        data["fusion"]["strategy"] = request.strategy
    if request.max_frames is not None:
        data["max_frames"] = request.max_frames
    if request.db_path:
        data["storage"]["db_path"] = request.db_path
    try:
        return PipelineConfig.model_validate(data)
    except ValueError as e:
        raise ConfigError(f"{request.config_path}: {e}") from None


def build_configs(request: RunRequest) -> list[PipelineConfig]:
    """One config per camera of ``request``: :func:`build_config` itself for one stream; for
    several, :func:`app.headless.stream_configs` of it (``streams: [that one]``, the CPU thread
    budget split over every stream's branches)."""
    cfg = build_config(request)
    return [cfg] if len(cfg.streams) == 1 else stream_configs(cfg)


class OperatorSource:
    """The window's frame source: paces a file at its frame rate and holds (or drops) frames while paused.

    ``pace``: deliver no faster than the inner source's ``fps`` (files). ``hold``: while paused, stop
    reading (files); otherwise read and drop (live streams, counted in :attr:`dropped_paused`).
    :meth:`stop` ends :meth:`frames` at once, also during a pause or a pacing wait.
    """

    def __init__(self, inner: Any, *, pace: bool, hold: bool, clock: Callable[[], float] = time.perf_counter) -> None:
        self.inner = inner
        self._pace = pace
        self._hold = hold
        self._clock = clock
        self._running = threading.Event()
        self._running.set()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self.dropped_paused = 0

    def open(self) -> None:
        opener = getattr(self.inner, "open", None)
        if opener is not None:
            opener()

    def __enter__(self) -> OperatorSource:
        self.inner.__enter__()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.inner.__exit__(exc_type, exc, tb)

    @property
    def fps(self) -> float:
        return float(getattr(self.inner, "fps", 0.0) or 0.0)

    @property
    def errors(self) -> int:
        return int(getattr(self.inner, "errors", 0) or 0)

    @property
    def paused(self) -> bool:
        return not self._running.is_set()

    def pause(self) -> None:
        self._running.clear()
        self._wake.set()

    def resume(self) -> None:
        self._running.set()
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._running.set()
        self._wake.set()

    def _sleep_until(self, t: float) -> None:
        while not self._stop.is_set() and self._running.is_set():
            left = t - self._clock()
            if left <= 0:
                return
            self._wake.wait(min(left, 0.05))
            self._wake.clear()

    def frames(self) -> Iterator[Frame]:
        frames = iter(self.inner.frames())
        start: float | None = None
        n = 0
        while not self._stop.is_set():
            if not self._running.is_set():
                if self._hold:
                    while not self._running.wait(0.05):
                        pass
                    start = None  # a new schedule from now: no burst to catch up the pause
                    continue
                if next(frames, None) is None:
                    return
                self.dropped_paused += 1
                continue
            fps = self.fps
            if self._pace and fps > 0:
                now = self._clock()
                if start is None:
                    start, n = now, 0
                self._sleep_until(start + n / fps)
                if self._stop.is_set():
                    return
                if not self._running.is_set():
                    continue
            frame = next(frames, None)
            if frame is None:
                return
            n += 1
            yield frame


class _Run:
    """One run of the session (one camera), on its own thread: build, run, stop, record. Every step
    is off the UI. ``cfg``: the camera's config (None: built from ``request`` on the thread, where a
    config error becomes the run's FAILED status). ``after``: runs that must end first (they hold
    the database and the models)."""

    def __init__(
        self,
        request: RunRequest,
        cfg: PipelineConfig | None,
        after: tuple[threading.Thread, ...],
        on_end: Callable[[_Run], None],
        name: str = "pc-gui-run",
    ) -> None:
        self.request = request
        self.sink = LatestResultSink()
        self.cfg: PipelineConfig | None = cfg
        self.source: OperatorSource | None = None
        self.orch: Orchestrator | None = None
        self.counter: FrameCounter | None = None
        self.run_id: int | None = None
        self.branch_kinds: dict[str, str] = {}
        self.end_status: str | None = None
        self._after = after
        self._on_end = on_end
        self._lock = threading.Lock()
        self._stop_reason: str | None = None
        self._stop = threading.Event()
        self._state = RunState.STARTING
        self._message = ""
        self._error_kind = ""
        self._pause_pending = False
        self.thread = threading.Thread(target=self._body, name=name, daemon=True)

    @property
    def stream_id(self) -> str:
        """The camera's id ("" until a config built on the thread is known)."""
        cfg = self.cfg
        return "" if cfg is None else cfg.streams[0].id

    @property
    def uri(self) -> str:
        cfg = self.cfg
        return "" if cfg is None else cfg.streams[0].uri

    # -- the UI thread's side (every call returns at once) ------------------------------------

    def request_stop(self, reason: str = "interrupted") -> None:
        with self._lock:
            if self._stop_reason is None:
                self._stop_reason = reason
            if self._state in (RunState.STARTING, RunState.RUNNING, RunState.PAUSED):
                self._state = RunState.STOPPING
        self._stop.set()
        if self.source is not None:
            self.source.stop()
        if self.orch is not None:
            self.orch.request_stop()  # cancels ONNX Runtime runs in progress

    def pause(self, paused: bool, *, when_started: bool = False) -> None:
        """Pause or resume the source. Still starting: raises, or with ``when_started`` the source
        is made paused (one camera of several must not start counting while the others pause)."""
        src = self.source
        if src is None:
            if not when_started:
                raise RuntimeError("nothing to pause yet: the run is still starting")
            with self._lock:
                self._pause_pending = paused
                if self._state in (RunState.RUNNING, RunState.PAUSED, RunState.STARTING):
                    self._state = RunState.PAUSED if paused else RunState.STARTING
            src = self.source  # the source may have been made meanwhile
            if src is None:
                return
        with self._lock:
            if self._state not in (RunState.RUNNING, RunState.PAUSED, RunState.STARTING):
                return
            self._state = RunState.PAUSED if paused else RunState.RUNNING
        if paused:
            src.pause()
        else:
            src.resume()

    @property
    def status(self) -> PipelineStatus:
        with self._lock:
            state, message, kind = self._state, self._message, self._error_kind
        orch = self.orch
        if state is RunState.RUNNING and orch is not None and orch.status.frames_published == 0:
            state = RunState.STARTING  # until the first frame is on its way to the window
        return PipelineStatus(state, message, kind, self.run_id)

    # -- the run's thread ------------------------------------------------------------------

    def _set(self, state: RunState, message: str = "", kind: str = "") -> None:
        with self._lock:
            if self._state is RunState.FAILED:
                return
            if state is RunState.RUNNING and self._state in (RunState.STOPPING, RunState.PAUSED):
                return
            self._state, self._message, self._error_kind = state, message, kind

    def _body(self) -> None:
        try:
            for previous in self._after:
                previous.join()  # the previous runs have released the database and models
            if not self._stop.is_set():
                self._run()
        except AppError as e:
            log.error("run failed: %s", e)
            self._set(RunState.FAILED, str(e), type(e).__name__)
        except Exception as e:  # a thread never dies silently: shown in the window
            log.exception("run failed")
            self._set(RunState.FAILED, f"{type(e).__name__}: {e}", StageError.__name__)
        finally:
            with self._lock:
                if self._state is not RunState.FAILED:
                    self._state = RunState.STOPPED if self._stop_reason else RunState.FINISHED
            self.sink.close()
            self._on_end(self)

    def _run(self) -> None:
        if self.cfg is None:
            self.cfg = build_config(self.request)
        cfg = self.cfg
        stream = cfg.streams[0]
        with _WRITER_START:
            writer = SqliteWriter.from_config(cfg.storage).start()
        branches: list[Branch] = []
        try:
            def on_event(kind: str, message: str, frame_index: int | None = None, data: Mapping[str, Any] | None = None) -> None:
                writer.event(kind, message, frame_index, data)
                self.sink.event(kind, message, frame_index, data)

            live = is_network_uri(stream.uri)
            self.source = source = OperatorSource(
                make_source(stream, cfg.backend.device, on_event=on_event), pace=not live, hold=not live
            )
            with self._lock:
                if self._pause_pending:
                    source.pause()
            if self._stop.is_set():
                source.stop()
            source.open()  # a missing file or a bad URL fails here, before anything is recorded
            branches = make_branches(cfg)
            self.branch_kinds = {b: cfg.models[bc.model].kind for b, bc in cfg.branches.items() if bc.enabled}
            if self._stop.is_set():
                return
            self.run_id = writer.start_run(cfg.model_dump(mode="json"), versions(), stream.uri, cfg.fusion.strategy.value)
            summary = SummarySink(cfg.max_frames, None, warmup=cfg.telemetry.warmup_frames)
            # the counter (and its tracker) is this run's: the operator's overrides go to it
            self.counter = make_counter(cfg, source.fps or None)
            self.orch = orch = Orchestrator(
                source, branches, self.counter, cfg.fusion, sinks=(writer, summary, self.sink),
                max_frames=cfg.max_frames, on_full="drop", publish_images=True,
                display_copy=make_display_copy(cfg),
            )  # fmt: skip
            orch.start()
            self._set(RunState.RUNNING)
            if self._stop.is_set():
                source.stop()
                orch.request_stop()
            while not orch.wait(0.1):
                if self._stop.is_set():
                    orch.request_stop()
                    break
            orch.stop(STOP_JOIN_S)
            st = orch.status
            if st.state == "FAILED":
                status = "failed"
                err = orch.error
                self._set(RunState.FAILED, str(err or st.error), type(err).__name__ if err else "StageError")
            elif self._stop_reason is not None:
                status = self._stop_reason
            elif source.errors:
                status = "completed_with_errors"
            else:
                status = "completed"
            s = summary.summary
            self.end_status = status
            writer.end_run(status, {
                "frames_published": s.frames, "partial_frames": st.partial_frames, "drops": dict(st.drops),
                "counted_frames": s.known, "unknown_frames": s.unknown, "unknown_reasons": dict(s.unknown_reasons),
                "mean_people": s.mean_people, "max_people": s.people_max, "paused_dropped": source.dropped_paused,
                "stopped_by": self._stop_reason,
            })  # fmt: skip
        finally:
            close_branches(branches)
            writer.close()


class GuiSession:
    """The window's controller (``ui.window.Controller``): one set of runs at a time (one per camera),
    started, paused, stopped together.

    Every method returns at once; the work happens on the runs' threads. ``start`` while runs are
    active stops them first (the new runs wait for the old ones to release the database and
    models). ``shutdown`` stops the session for good; :attr:`idle` tells when everything is
    flushed. With several cameras, ``status``, ``sink``, ``config``, ``branch_kinds``,
    ``source_fps``, ``end_status`` and ``allow_static`` are the selected camera's (:meth:`select`).
    """

    def __init__(self, db_path: str | None = None) -> None:
        self._lock = threading.Lock()
        self._runs: tuple[_Run, ...] = ()
        self._selected: str | None = None
        self._last_request: RunRequest | None = None
        self._db_override = db_path
        self._closed = False
        self._signal_status: str | None = None
        self.started_at = datetime.now(UTC)
        self.run_ids: list[int] = []

    # -- runs --------------------------------------------------------------------------------

    def _with_db(self, request: RunRequest) -> RunRequest:
        if self._db_override and not request.db_path:
            return dataclasses.replace(request, db_path=self._db_override)
        return request

    @staticmethod
    def _plan(request: RunRequest) -> list[PipelineConfig] | None:
        """The cameras' configs, or None when the config cannot be built here: one run then builds
        it on its thread and shows the error as its FAILED status."""
        try:
            return build_configs(request)
        except AppError:
            return None

    def start(self, request: RunRequest) -> None:
        request = self._with_db(request)
        configs = self._plan(request)  # a YAML file and pydantic: milliseconds, nothing opened
        with self._lock:
            if self._closed:
                raise RuntimeError("the session is shut down")
            old = self._runs
            for r in old:
                r.request_stop("interrupted")
            after = tuple(r.thread for r in old if r.thread.is_alive())
            if configs is None or len(configs) == 1:
                runs: tuple[_Run, ...] = (_Run(request, configs[0] if configs else None, after, self._ended),)
            else:
                runs = tuple(_Run(request, c, after, self._ended, f"pc-gui-run-{c.streams[0].id}") for c in configs)
            self._runs = runs
            if self._selected not in {r.stream_id for r in runs}:
                self._selected = runs[0].stream_id or None
            self._last_request = request
        for r in runs:
            r.thread.start()

    def replace_source(self, stream_id: str, uri: str) -> None:
        """Give camera ``stream_id`` the source ``uri`` and restart that camera only (the others
        keep running); later restarts keep it. Raises KeyError for an id not in the session."""
        with self._lock:
            if self._closed:
                raise RuntimeError("the session is shut down")
            request = self._last_request
            index = next((i for i, r in enumerate(self._runs) if r.stream_id == stream_id), None)
            if request is None or index is None:
                raise KeyError(f"no camera {stream_id!r} in this session")
        sources = dict(request.stream_sources)
        sources[stream_id] = uri
        request = dataclasses.replace(request, stream_sources=tuple(sources.items()))
        cfg = next(c for c in build_configs(request) if c.streams[0].id == stream_id)
        with self._lock:
            old = self._runs[index]
            old.request_stop("interrupted")
            after = (old.thread,) if old.thread.is_alive() else ()
            run = _Run(request, cfg, after, self._ended, f"pc-gui-run-{stream_id}")
            self._runs = (*self._runs[:index], run, *self._runs[index + 1 :])
            self._last_request = request
        run.thread.start()

    def _ended(self, run: _Run) -> None:
        if run.run_id is not None:
            with self._lock:
                self.run_ids.append(run.run_id)

    def restart(self) -> None:
        if self._last_request is None:
            raise RuntimeError("nothing to restart: open a source first")
        self.start(self._last_request)

    def pause(self) -> None:
        self._pause(True)

    def resume(self) -> None:
        self._pause(False)

    def _pause(self, paused: bool) -> None:
        runs = self._alive()
        if len(runs) == 1 and len(self._runs) == 1:
            runs[0].pause(paused)  # one camera: still starting is the operator's to hear about
            return
        for run in runs:
            run.pause(paused, when_started=True)

    def stop(self) -> None:
        for run in self._runs:
            run.request_stop(self._signal_status or "interrupted")

    def shutdown(self, status: str = "interrupted") -> None:
        """Stop for good: the runs end with ``status`` (``interrupted``, ``terminated``), then are flushed."""
        with self._lock:
            self._closed = True
            self._signal_status = status
        for run in self._runs:
            run.request_stop(status)

    def wait_idle(self, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        for run in self._runs:
            run.thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return self.idle

    def switch_strategy(self, name: str) -> None:
        """Every running camera switches (one selector for all); raises when none is running or
        the orchestrator refuses ``name``."""
        orchs = [r.orch for r in self._alive() if r.orch is not None]
        if not orchs:
            raise RuntimeError("no run yet: the strategy applies to the next start")
        for orch in orchs:
            orch.switch_strategy(name)

    def allow_static(self, track_id: int, allowed: bool = True) -> None:
        """Count static track ``track_id`` of the running run (the selected camera's), an
        operator's "this is a person", or stop counting it (``allowed=False``), from the next
        finalized frame on.

        Calls the run's ``PeopleTracker.allow_static`` from the UI thread while the fusion thread
        tracks: the override is one set insertion or removal, atomic under the GIL, that the tracker
        reads once per frame. Raises RuntimeError when no run is going or tracking is off."""
        run = self._active()
        counter = None if run is None else run.counter
        if counter is None:
            raise RuntimeError("no run is going (track ids live for one run)")
        tracker = counter.tracker
        if tracker is None:
            raise RuntimeError("tracking is off in this run (tracking.enabled in the config)")
        tracker.allow_static(int(track_id), allowed)

    def _alive(self) -> list[_Run]:
        return [r for r in self._runs if r.thread.is_alive()]

    def _current(self) -> _Run | None:
        """The selected camera's run (the only one with one stream)."""
        runs = self._runs
        return next((r for r in runs if r.stream_id == self._selected), runs[0] if runs else None)

    def _active(self) -> _Run | None:
        run = self._current()
        return run if run is not None and run.thread.is_alive() else None

    # -- cameras -----------------------------------------------------------------------------

    def select(self, stream_id: str) -> None:
        """Make camera ``stream_id`` the one ``status``, ``sink``... describe (the main view's)."""
        if stream_id not in {r.stream_id for r in self._runs}:
            raise KeyError(f"no camera {stream_id!r}; the session has {', '.join(r.stream_id for r in self._runs)}")
        self._selected = stream_id

    @property
    def selected(self) -> str | None:
        run = self._current()
        return None if run is None else run.stream_id or None

    @property
    def cameras(self) -> list[CameraStatus]:
        """Every camera of the current runs, in the config's order (one entry for one stream)."""
        current = self._current()
        return [CameraStatus(r.stream_id, r.uri, r.status, r.sink, r is current) for r in self._runs]

    # -- what the window reads ---------------------------------------------------------------

    @property
    def idle(self) -> bool:
        """No run thread alive: nothing to wait for (everything stored is flushed)."""
        return not self._alive()

    @property
    def status(self) -> PipelineStatus:
        run = self._current()
        return PipelineStatus(RunState.IDLE) if run is None else run.status

    @property
    def sink(self) -> LatestResultSink | None:
        run = self._current()
        return None if run is None else run.sink

    @property
    def request(self) -> RunRequest | None:
        return self._last_request

    @property
    def config(self) -> PipelineConfig | None:
        run = self._current()
        return None if run is None else run.cfg

    @property
    def branch_kinds(self) -> dict[str, str]:
        """Branches of the current run and their model kind (``yolo``, ``density``)."""
        run = self._current()
        return {} if run is None else dict(run.branch_kinds)

    @property
    def source_fps(self) -> float:
        run = self._current()
        return 0.0 if run is None or run.source is None else run.source.fps

    @property
    def db_path(self) -> str | None:
        if self._db_override:
            return self._db_override
        cfg = self.config
        return cfg.storage.db_path if cfg is not None else None

    @property
    def end_status(self) -> str | None:
        run = self._current()
        return None if run is None else run.end_status


def run_gui(args: argparse.Namespace) -> int:
    """``gui`` / ``run`` with a display: the window, whatever the config or source (errors show in it).

    Exit code: 0 when the window is closed; 130 / 143 after SIGINT / SIGTERM (the run then ends
    ``interrupted`` / ``terminated``). ``--export FILE`` writes the count history of this session's
    runs at the end.
    """
    import ui.app

    request = RunRequest(
        config_path=args.config,
        source=getattr(args, "source", None),
        strategy=getattr(args, "fusion", None),
        max_frames=getattr(args, "max_frames", None),
    )
    session = GuiSession(db_path=getattr(args, "db", None))
    code = ui.app.run_window(session, request)
    session.wait_idle(10.0)
    db = session.db_path
    if session.run_ids and db:
        print(f"stored: {db} (run {', '.join(map(str, session.run_ids))})")
    export = getattr(args, "export", None)
    if export and db and session.run_ids:
        try:
            n = export_counts(db, export, since=session.started_at.isoformat())
        except AppError as e:
            print(f"error: {e}", file=sys.stderr)
            return code or e.exit_code
        print(f"exported {n} rows to {export}")
    return code
