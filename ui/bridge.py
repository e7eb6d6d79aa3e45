"""The bridge from the pipeline worker to the UI thread: a "latest wins" sink.

The worker calls :meth:`LatestResultSink.write` for every published frame and never waits on the
UI; the UI thread calls :meth:`LatestResultSink.take` on its own clock (a ~30 Hz timer). A result
the UI had no time to show is replaced by the next one and counted as skipped, never queued, so
a slow UI costs nothing but skipped frames. Under RAW_STREAM_WITH_METADATA the counts travel apart
from the frames: :meth:`LatestResultSink.write_metadata` keeps the newest metadata record, which
the window shows beside the raw frame, labelled with the frame it belongs to. The sink also tracks a coarse run state from the
stream itself (STARTING until the first result, RUNNING, STOPPED once closed); a failure reaches
the window through the controller's status (the orchestrator's), not through this sink.

No Qt in this module: it is plain threading, so the worker side never touches a Qt object.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from enum import StrEnum

from pipeline.types import FusedResult, MetadataRecord


class RunState(StrEnum):
    """State of the pipeline run, as the window shows it."""

    STARTING = "STARTING"
    RUNNING = "RUNNING"
    STOPPED = "STOPPED"
    FAILED = "FAILED"


_SEVERITY = {RunState.STARTING: 0, RunState.RUNNING: 1, RunState.STOPPED: 2, RunState.FAILED: 3}


@dataclass(frozen=True, slots=True)
class PipelineStatus:
    """A run state and its message (the error text when ``state`` is FAILED)."""

    state: RunState
    message: str = ""

    @property
    def severity(self) -> int:
        """STARTING < RUNNING < STOPPED < FAILED: when two reporters disagree, show the worst."""
        return _SEVERITY[self.state]


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


class LatestResultSink:
    """A :class:`pipeline.protocols.Sink` that keeps only the newest result for the UI thread.

    Thread-safe: ``write`` and ``close`` may be called from any thread (the worker's), ``take``,
    ``status`` and ``stats`` from any other (the UI's). Every call holds one lock for a few
    assignments, so the worker is never blocked for longer than that.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._latest: FusedResult | None = None
        self._metadata: MetadataRecord | None = None
        self._written = 0
        self._taken = 0
        self._skipped = 0
        self._closed = False
        self._status = PipelineStatus(RunState.STARTING)

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
