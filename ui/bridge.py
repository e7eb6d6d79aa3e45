"""The bridge from the pipeline's threads to the UI thread, and the words both sides share.

:class:`LatestResultSink` is a "latest wins" sink: the worker calls :meth:`~LatestResultSink.write`
for every published frame and never waits on the UI; the UI thread calls
:meth:`~LatestResultSink.take` on its own clock (a ~30 Hz timer). A result the UI had no time to
show is replaced by the next one and counted as skipped, never queued, so a slow UI costs nothing
but skipped frames. Under RAW_STREAM_WITH_METADATA the counts travel apart from the frames:
:meth:`~LatestResultSink.write_metadata` keeps the newest metadata record. Events (the
orchestrator's, and the source's ``stream_lost`` / ``stream_stalled`` / ``reconnect`` /
``stream_restored``) go through :meth:`~LatestResultSink.event` into a bounded log and a
:class:`StreamHealth` the window shows.

:class:`RunRequest` is what the operator asks to run; :class:`PipelineStatus` what the window
shows about it. No Qt in this module: it is plain threading, so the worker side never touches a
Qt object, and ``app/`` may import it.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from pipeline.types import FusedResult, MetadataRecord

EVENT_LOG = 200
"""Events a sink keeps for the window (the SQLite writer keeps all of them)."""


class RunState(StrEnum):
    """State of the pipeline run, as the window shows it."""

    IDLE = "IDLE"  # nothing asked yet
    STARTING = "STARTING"  # building the run, or running without a frame yet
    RUNNING = "RUNNING"
    PAUSED = "PAUSED"
    STOPPING = "STOPPING"
    STOPPED = "STOPPED"  # ended by the operator (or a signal)
    FINISHED = "FINISHED"  # the source ended
    FAILED = "FAILED"


_SEVERITY = {
    RunState.IDLE: 0,
    RunState.STARTING: 0,
    RunState.RUNNING: 1,
    RunState.PAUSED: 1,
    RunState.STOPPING: 2,
    RunState.STOPPED: 2,
    RunState.FINISHED: 2,
    RunState.FAILED: 3,
}

ACTIVE_STATES = frozenset({RunState.STARTING, RunState.RUNNING, RunState.PAUSED, RunState.STOPPING})
"""States in which a run holds the pipeline (a new start waits for it to end)."""


@dataclass(frozen=True, slots=True)
class PipelineStatus:
    """A run state and its message (the error text, what is wrong and how to fix it, when FAILED).

    ``error_kind``: the error's class name when FAILED (``SourceError``, ``ModelLoadError``,
    ``ConfigError``...), so the window can offer the fitting way out. ``run_id``: the stored run,
    once recorded.
    """

    state: RunState
    message: str = ""
    error_kind: str = ""
    run_id: int | None = None

    @property
    def severity(self) -> int:
        """STARTING < RUNNING < STOPPED < FAILED: when two reporters disagree, show the worst."""
        return _SEVERITY[self.state]

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES


@dataclass(frozen=True, slots=True)
class RunRequest:
    """What the operator asked to run.

    ``source`` overrides ``streams[0].uri`` (None: the config's). ``stream_sources``: (stream id,
    uri) pairs overriding those streams' uris (a config with several streams: the operator opened
    another source for one camera). ``branches``: the config branches to run (None: those the
    config enables). ``strategy`` and ``max_frames`` override the config's; ``db_path`` its
    ``storage.db_path``.
    """

    config_path: str
    source: str | None = None
    branches: frozenset[str] | None = None
    strategy: str | None = None
    max_frames: int | None = None
    db_path: str | None = None
    stream_sources: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class CameraStatus:
    """One camera (one entry of ``streams``) of a session, as the camera list shows it.

    ``status``: its run's state (each camera runs on its own: one can fail while the others
    count); ``sink``: its bridge; ``selected``: the camera the main view shows.
    """

    stream_id: str
    uri: str
    status: PipelineStatus
    sink: LatestResultSink | None
    selected: bool = False


@dataclass(frozen=True, slots=True)
class BridgeStats:
    """Counters of a :class:`LatestResultSink`.

    ``written`` results came from the worker; ``taken`` reached the UI; ``skipped`` were replaced
    by a newer result before the UI took them (or arrived after ``close``). Always
    ``written == taken + skipped + pending``.
    """

    written: int
    taken: int
    skipped: int
    pending: int


@dataclass(frozen=True, slots=True)
class UiEvent:
    """One event as the window lists it; ``seq`` increases by one per event of a sink."""

    seq: int
    kind: str
    message: str
    frame_index: int | None
    data: Mapping[str, Any] = field(default_factory=dict)
    ts: float = 0.0


@dataclass(frozen=True, slots=True)
class StreamHealth:
    """The source's connection, from its events.

    ``state``: ``ok``, ``lost`` (reconnecting), ``stalled`` (connected, no frames). ``since``: the
    ``time.monotonic()`` when it went down (None when ok); ``attempts`` reconnects so far;
    ``last_gap_s`` the length of the last outage once restored; ``message`` the last event's text.
    """

    state: str = "ok"
    since: float | None = None
    attempts: int = 0
    last_gap_s: float | None = None
    message: str = ""


class LatestResultSink:
    """A :class:`pipeline.protocols.Sink` (and ``EventSink``) keeping only the newest result for the UI.

    Thread-safe: ``write``, ``write_metadata``, ``event`` and ``close`` may be called from any
    thread (the worker's, the source's), the readers from any other (the UI's). Every call holds
    one lock for a few assignments, so the worker is never blocked for longer than that.
    """

    def __init__(self, clock: Any = time.monotonic) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self._latest: FusedResult | None = None
        self._metadata: MetadataRecord | None = None
        self._written = 0
        self._taken = 0
        self._skipped = 0
        self._closed = False
        self._status = PipelineStatus(RunState.STARTING)
        self._events: deque[UiEvent] = deque(maxlen=EVENT_LOG)
        self._seq = 0
        self._health = StreamHealth()

    def write(self, result: FusedResult) -> None:
        """Offer ``result`` to the UI, replacing (and counting as skipped) one it has not taken yet."""
        with self._lock:
            self._written += 1
            if self._closed:
                self._skipped += 1
                return
            if self._latest is not None:
                self._skipped += 1
            self._latest = result
            if self._status.state is RunState.STARTING:
                self._status = PipelineStatus(RunState.RUNNING)

    def write_metadata(self, record: MetadataRecord) -> None:
        """Keep the newest metadata record (RAW_STREAM_WITH_METADATA counts, as they arrive)."""
        with self._lock:
            if self._metadata is None or record.frame_index > self._metadata.frame_index:
                self._metadata = record

    def event(
        self, kind: str, message: str, frame_index: int | None = None, data: Mapping[str, Any] | None = None
    ) -> None:
        """Log an event for the window; source events update :attr:`health`."""
        data = dict(data or {})
        with self._lock:
            self._seq += 1
            now = self._clock()
            self._events.append(UiEvent(self._seq, kind, message, frame_index, data, now))
            h = self._health
            if kind == "stream_lost":
                self._health = StreamHealth("lost", h.since if h.since is not None else now, h.attempts, h.last_gap_s, message)
            elif kind == "stream_stalled":
                self._health = StreamHealth("stalled", h.since if h.since is not None else now, h.attempts, h.last_gap_s, message)
            elif kind == "reconnect":
                attempts = int(data.get("attempt", h.attempts + 1))
                self._health = StreamHealth(h.state if h.state != "ok" else "lost", h.since or now, attempts, h.last_gap_s, message)
            elif kind == "stream_restored":
                gap = data.get("gap_s")
                self._health = StreamHealth("ok", None, 0, None if gap is None else float(gap), message)

    def events_after(self, seq: int) -> list[UiEvent]:
        """Events with a sequence number above ``seq``, oldest first (at most :data:`EVENT_LOG`)."""
        with self._lock:
            return [e for e in self._events if e.seq > seq]

    @property
    def health(self) -> StreamHealth:
        with self._lock:
            return self._health

    @property
    def latest_metadata(self) -> MetadataRecord | None:
        """The newest metadata record, or None (it stays until a newer one replaces it)."""
        with self._lock:
            return self._metadata

    def take(self) -> FusedResult | None:
        """The newest result not taken yet, or None when nothing new arrived since the last call."""
        with self._lock:
            result, self._latest = self._latest, None
            if result is not None:
                self._taken += 1
            return result

    @property
    def status(self) -> PipelineStatus:
        """STARTING before the first result, RUNNING after it, STOPPED after ``close``."""
        with self._lock:
            return self._status

    @property
    def stats(self) -> BridgeStats:
        """A consistent snapshot of the counters."""
        with self._lock:
            pending = 0 if self._latest is None else 1
            return BridgeStats(self._written, self._taken, self._skipped, pending)

    def close(self) -> None:
        """End of the stream: the status becomes STOPPED and later writes are counted as skipped.

        A result already waiting stays available to ``take`` so the last frame is still shown.
        """
        with self._lock:
            self._closed = True
            self._status = PipelineStatus(RunState.STOPPED)
