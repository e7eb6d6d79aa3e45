"""The pipeline runner: source -> branches -> fusion -> sinks, on threads, with a watchdog.

Threads (all named ``pc-*``, all daemon, all ended by :meth:`Orchestrator.stop`):

- ``pc-worker`` owns the source (it enters and leaves its context) and, for each frame, submits
  it to the branches scheduled for it (``frame_index % every_n_frames == 0``), each through its
  own BOUNDED queue (``FusionConfig.queue_size``). When a branch's queue is full the frame is
  dropped for that branch (``on_full="drop"``, the live default; counted per
  ``"<branch>:queue_full"`` in :attr:`OrchestratorStatus.drops`, logged, and reported as a
  ``drop`` event for the 1st and every 100th drop): fusion does not wait for that branch on that
  frame, and the frame's counts say that branch is missing (``dropped (queue full)``);
  ``on_full="wait"`` blocks the worker instead (files and benches, where every frame must be
  processed). It hands the frame, with the branches that took it and those that dropped it, to
  fusion. How a frame is handed over is one of three submit policies: :class:`DropWhenFull`,
  :class:`WaitForRoom`, :class:`Sequential`.
- ``pc-branch-<name>``, one per branch, runs ``branch.run(frame)`` (a blocking call such as
  ONNX Runtime's) on the frames of its queue and hands each result to fusion.
  With ``run_sequential=True`` there are no branch threads: the worker runs the scheduled branches
  one after the other (the baseline a bench compares overlapped branches with).
- ``pc-fusion`` drives the :class:`~pipeline.fusion.Fusion` from one bounded inbox (frames, results,
  and a small command queue for live switches) and calls the sinks; only this thread calls sinks,
  so a sink need not be thread-safe. It polls fusion for timeouts every ``poll_interval_s``.
- ``pc-watchdog`` reads the heartbeat of each branch and reports a branch that has work (running
  a frame, or frames queued) but made no progress for ``stall_timeout_s`` as a ``stall`` event
  (and ``stall_end`` when it moves again); it never blocks the pipeline.

Failures: an exception in any thread (the source, a branch's ``run``, a sink, fusion) sets the state
to ``FAILED`` with the error text, sends an ``error`` event to the sinks, and stops every thread;
frames already handed to fusion are still published (partial where results are missing), except
to a sink that failed. :attr:`Orchestrator.error` holds the exception for headless to map to an
exit code: an :class:`~config.errors.AppError` as raised (``SourceError``, ``ModelLoadError``...),
anything else wrapped in ``StageError`` (its ``__cause__`` is the original).

Sinks: ``write(result)`` gets every :class:`~pipeline.types.FusedResult`; a sink that has
``write_metadata(record)`` (:class:`~pipeline.protocols.MetadataSink`) also gets the
:class:`~pipeline.types.MetadataRecord` s, and one that has
``event(kind, message, frame_index=None, data=None)`` (:class:`~pipeline.protocols.EventSink`, as
the SQLite writer) gets the events: ``strategy_switch``, ``drop``, ``stall``, ``stall_end``,
``error``. The caller owns the source's object, the branches and the sinks: the orchestrator
closes none of them.

Timings (:class:`~pipeline.types.StageTimings`; see :mod:`pipeline.fusion` for the fusion-made
ones): :class:`~pipeline.types.FrameTimings` (``decode_ms``: the time the worker waited for the
frame, decode and pacing of a live source; each branch queue's depth right after the frame was
submitted), and per branch ``run_ms`` (wall time of ``run``) besides the branch's own stages.

Time: every timestamp, deadline and duration comes from the injected ``clock``
(``time.perf_counter``, the clock of ``FrameMeta.decode_ts``); threads wait on queues with short
real timeouts and re-read the clock, so a test drives timeouts and the watchdog by hand.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import Any, Literal, Protocol

import numpy as np
from numpy.typing import NDArray

from config.errors import AppError, StageError
from config.schema import FusionConfig, FusionStrategyName
from pipeline.fusion import Clock, Fusion, Published, strategy_name
from pipeline.protocols import Branch, CombineFn, EventSink, FrameSource, MetadataSink, Sink, TrackingSink, WorkSink
from pipeline.types import (
    BranchResult,
    Frame,
    FrameMeta,
    FrameTimings,
    FusedResult,
    MetadataRecord,
    TrackingRecord,
    WorkRecord,
)

log = logging.getLogger("people_counter.fusion")

RunState = Literal["IDLE", "RUNNING", "FINISHED", "STOPPED", "FAILED"]
OnFull = Literal["drop", "wait"]

_DROP_EVENT_EVERY = 100


@dataclass(frozen=True, slots=True)
class PipelineEvent:
    """Something that happened during a run (also sent to every :class:`EventSink`)."""

    kind: str
    message: str
    frame_index: int | None = None
    data: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class OrchestratorStatus:
    """A snapshot of a run.

    ``drops``: ``"<branch>:<reason>"`` -> frames dropped for that branch. ``partial_frames``:
    frames finalized without a scheduled branch (STRICT_SYNC timeout). ``waited_on``: per branch,
    how many STRICT_SYNC frames waited longest for it. ``stalled``: branches the watchdog reports
    stalled now. ``error`` / ``failed_stage``: the first failure, when ``state == "FAILED"``.
    """

    state: RunState
    strategy: str
    frames_decoded: int
    frames_published: int
    metadata_published: int
    partial_frames: int
    late_results: int
    drops: Mapping[str, int]
    waited_on: Mapping[str, int]
    queue_depths: Mapping[str, int]
    stalled: tuple[str, ...]
    error: str | None
    failed_stage: str | None


class MemorySink:
    """A sink that keeps everything in memory (tests, benches): results, metadata and work records, events.

    ``received_ts[i]`` is the clock's time when ``results[i]`` arrived. Unbounded: for finite runs.
    """

    def __init__(self, clock: Clock = time.perf_counter) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self.results: list[FusedResult] = []
        self.received_ts: list[float] = []
        self.metadata: list[MetadataRecord] = []
        self.work: list[WorkRecord] = []
        self.tracking: list[TrackingRecord] = []
        self.events: list[PipelineEvent] = []
        self.closed = False

    def write(self, result: FusedResult) -> None:
        with self._lock:
            self.results.append(result)
            self.received_ts.append(self._clock())

    def write_metadata(self, record: MetadataRecord) -> None:
        with self._lock:
            self.metadata.append(record)

    def write_work(self, record: WorkRecord) -> None:
        with self._lock:
            self.work.append(record)

    def write_tracking(self, record: TrackingRecord) -> None:
        with self._lock:
            self.tracking.append(record)

    def event(
        self, kind: str, message: str, frame_index: int | None = None, data: Mapping[str, Any] | None = None
    ) -> None:
        with self._lock:
            self.events.append(PipelineEvent(kind, message, frame_index, dict(data or {})))

    def close(self) -> None:
        self.closed = True


@dataclass(frozen=True, slots=True)
class _FrameItem:
    meta: FrameMeta
    scheduled: tuple[str, ...]
    image: NDArray[np.uint8] | None
    timings: FrameTimings
    dropped: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class _Done:
    """A producer (the worker or a branch thread) will put nothing more into the inbox."""

    producer: str


_SENTINEL: Any = object()
"""Put into a branch queue: no more frames."""


@dataclass(slots=True)
class _Heartbeat:
    """Written by the thread running a branch, read by the watchdog (single attribute writes)."""

    last_beat: float
    busy_since: float | None = None
    frame_index: int | None = None


class _Ports(Protocol):
    """What a submit policy may do with a frame (the orchestrator's own methods)."""

    def put_inbox(self, item: _FrameItem | BranchResult) -> bool: ...

    def has_room(self, branch: str) -> bool: ...


    def enqueue_now(self, branch: str, frame: Frame) -> None: ...

    def count_drop(self, branch: str, frame: Frame, reason: str) -> None: ...

    def wait_enqueue(self, branch: str, frame: Frame) -> bool: ...

    def run_inline(self, branch: Branch, frame: Frame) -> BranchResult | None: ...

    def queue_depths(self) -> dict[str, int]: ...


def _let_go(frame: Frame, n: int) -> None:
    """Give back ``n`` holds of a GPU frame's ring slot that were taken for branches the frame
    could not be handed to (they read nothing: no event)."""
    if frame.lease is not None:
        for _ in range(n):
            frame.lease.release()


# Slot leases (issue 8): a GPU frame's ring slot (``Frame.lease``) is held for each branch
# the frame is handed to, BEFORE the hand-over (the branch may release at once); what is not
# handed over is let go here, and each branch releases once after its last read
# (``models.branch.run_branch``). A CPU frame has no lease.


class DropWhenFull:
    """Live sources and realtime files: a frame goes to all its due branches or to none. When a
    due branch's queue is full, the frame is dropped for every due branch (counted per branch:
    ``<branch>:queue_full`` for the full one, ``<branch>:frame_skipped`` for the others), since a
    frame some branch never sees cannot be counted; the branches keep working on the same frames,
    so the frames they take come out complete. Fusion gets every frame, with the branches that
    took it or the ones it was dropped for. Queues hold ``fusion.live_queue_size`` frames (1 by
    default), so a slow branch works on a recent frame instead of falling further behind."""

    threaded = True

    def submit(self, ports: _Ports, frame: Frame, due: Sequence[Branch], item: _FrameItem) -> bool:
        full = [b.name for b in due if not ports.has_room(b.name)]
        if full:
            for b in due:
                ports.count_drop(b.name, frame, "queue_full" if b.name in full else "frame_skipped")
            accepted: tuple[str, ...] = ()
            dropped = tuple(b.name for b in due)
        else:
            if frame.lease is not None:
                frame.lease.hold(len(due))
            for b in due:  # the worker is the queues' only producer: the room it saw is still there
                ports.enqueue_now(b.name, frame)
            accepted, dropped = tuple(b.name for b in due), ()
        timings = replace(item.timings, queue_depths=ports.queue_depths())
        return ports.put_inbox(replace(item, scheduled=accepted, dropped=dropped, timings=timings))


class WaitForRoom:
    """Files and benches: every due branch takes every frame; the worker waits for room. Fusion gets
    the frame first, so ASYNC_OVERLAY and RAW publish it at once instead of after that wait."""

    threaded = True

    def submit(self, ports: _Ports, frame: Frame, due: Sequence[Branch], item: _FrameItem) -> bool:
        if frame.lease is not None:
            frame.lease.hold(len(due))
        timings = replace(item.timings, queue_depths=ports.queue_depths())
        if not ports.put_inbox(replace(item, scheduled=tuple(b.name for b in due), timings=timings)):
            _let_go(frame, len(due))
            return False
        for i, b in enumerate(due):
            if not ports.wait_enqueue(b.name, frame):  # stopping
                _let_go(frame, len(due) - i)
                return False
        return True


class Sequential:
    """No branch threads: the worker runs the due branches one after the other (the baseline a
    bench compares overlapped branches with)."""

    threaded = False

    def submit(self, ports: _Ports, frame: Frame, due: Sequence[Branch], item: _FrameItem) -> bool:
        if frame.lease is not None:
            frame.lease.hold(len(due))
        if not ports.put_inbox(replace(item, scheduled=tuple(b.name for b in due))):
            _let_go(frame, len(due))
            return False
        for i, b in enumerate(due):
            result = ports.run_inline(b, frame)  # the branch releases its hold
            if result is None or not ports.put_inbox(result):
                _let_go(frame, len(due) - i - 1)
                return False
        return True


SubmitPolicy = DropWhenFull | WaitForRoom | Sequential


class Orchestrator:
    """Runs a source through branches and a fusion strategy into sinks (a context manager).

    ``with Orchestrator(...) as run: run.wait()`` starts the threads and stops them on leaving;
    ``wait`` returns when the source has ended and every frame is published, or on a failure.
    ``strategy`` overrides ``cfg.strategy``. ``max_frames`` stops the source early.
    ``publish_images`` passes each frame's RGB host image on to fusion (``FusedResult.frame_image``);
    off, results carry no pixels. A GPU frame has no host image: ``display_copy(frame)`` makes one
    (``gpu.display.DisplayCopier``: a display-sized RGB copy; the window's picture on the NVDEC
    path), on the worker thread before the branches get the frame; without it GPU frames carry no
    pixels. A failing copy is logged once and turned off; counting goes on. ``run_sequential`` and ``on_full`` choose the submit policy.
    ``clock`` gives every time the orchestrator and its fusion read.
    """

    def __init__(
        self,
        source: FrameSource,
        branches: Sequence[Branch],
        combine: CombineFn,
        cfg: FusionConfig,
        sinks: Sequence[Sink] = (),
        *,
        strategy: str | FusionStrategyName | None = None,
        run_sequential: bool = False,
        on_full: OnFull = "drop",
        max_frames: int | None = None,
        publish_images: bool = False,
        display_copy: Callable[[Frame], Any] | None = None,
        poll_interval_s: float = 0.01,
        stop_timeout_s: float = 5.0,
        clock: Clock = time.perf_counter,
    ) -> None:
        names = [b.name for b in branches]
        if len(set(names)) != len(names):
            raise ValueError(f"Orchestrator: branch names must be unique, got {names}")
        if on_full not in ("drop", "wait"):
            raise ValueError(f"Orchestrator: on_full must be 'drop' or 'wait', got {on_full!r}")
        self._source = source
        self._branches = tuple(branches)
        self._cfg = cfg
        self._sinks = tuple(sinks)
        self._policy: SubmitPolicy = Sequential() if run_sequential else (DropWhenFull() if on_full == "drop" else WaitForRoom())
        self._clock = clock
        self._max_frames = max_frames
        self._publish_images = publish_images
        self._display_copy = display_copy
        self._poll_s = poll_interval_s
        self._stop_timeout_s = stop_timeout_s

        self._fusion = Fusion(
            strategy if strategy is not None else cfg.strategy,
            combine,
            cfg,
            clock=clock,
            rates={b.name: b.every_n_frames for b in branches},
        )
        self._queues: dict[str, queue.Queue[Any]] = (
            {b.name: queue.Queue(maxsize=self._queue_size(cfg)) for b in branches} if self._policy.threaded else {}
        )
        # Holds what the worker and the branches hand to fusion; bounded, and sized so that it
        # only fills when fusion or a sink falls behind (then the producers wait).
        self._inbox: queue.Queue[_FrameItem | BranchResult | _Done] = queue.Queue(
            maxsize=max(16, 2 * cfg.queue_size * (len(branches) + 1))
        )
        self._commands: queue.Queue[str] = queue.Queue(maxsize=16)
        self._events: queue.Queue[PipelineEvent] = queue.Queue(maxsize=256)
        self._event_log: deque[PipelineEvent] = deque(maxlen=1000)
        self._heartbeats = {b.name: _Heartbeat(clock()) for b in branches}

        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._state: RunState = "IDLE"
        self._frames_decoded = 0
        self._frames_published = 0
        self._metadata_published = 0
        self._last_frame_index: int | None = None
        self._drops: Counter[str] = Counter()
        self._waited_on: Counter[str] = Counter()
        self._stalled: tuple[str, ...] = ()
        self._error: BaseException | None = None
        self._error_text: str | None = None
        self._failed_stage: str | None = None
        self._failed_sinks: set[int] = set()
        self._threads: list[threading.Thread] = []
        self._fusion_thread: threading.Thread | None = None

    def _queue_size(self, cfg: FusionConfig) -> int:
        return cfg.live_queue_size if isinstance(self._policy, DropWhenFull) else cfg.queue_size

    # ---------------------------------------------------------------- public API

    def __enter__(self) -> Orchestrator:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop(self._stop_timeout_s)

    def start(self) -> None:
        """Start the threads; once per orchestrator."""
        with self._lock:
            if self._state != "IDLE":
                raise RuntimeError(f"Orchestrator.start: already {self._state.lower()}; an orchestrator runs once")
            self._state = "RUNNING"
        for b in self._branches:  # branches cancelled by an earlier run's stop run again
            try:
                b.resume()
            except Exception:
                log.exception("branch %s: resume failed", b.name)
        self._fusion_thread = threading.Thread(target=self._fusion_loop, name="pc-fusion", daemon=True)
        threads = [self._fusion_thread]
        threads += [
            threading.Thread(target=self._branch_loop, args=(b,), name=f"pc-branch-{b.name}", daemon=True)
            for b in self._branches
            if self._policy.threaded
        ]
        threads.append(threading.Thread(target=self._watchdog, name="pc-watchdog", daemon=True))
        threads.append(threading.Thread(target=self._worker, name="pc-worker", daemon=True))
        self._threads = threads
        for t in threads:
            t.start()
        log.info(
            "pipeline started: strategy %s, branches %s (%s)",
            self._fusion.name,
            ", ".join(f"{b.name}/{b.every_n_frames}" for b in self._branches),
            type(self._policy).__name__,
        )

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the run has finished (source ended, all published), failed or been stopped; False on timeout."""
        if self._fusion_thread is None:
            raise RuntimeError("Orchestrator.wait: not started")
        self._fusion_thread.join(timeout)
        return not self._fusion_thread.is_alive()

    def request_stop(self) -> None:
        """Ask every thread to stop, without waiting (safe from a signal handler): the source stops
        at its next frame, branch runs in progress are cancelled, frames already handed to fusion
        are published (partial where results are missing), and :meth:`wait` returns once that is
        done."""
        self._stop.set()
        self._cancel_branches()

    def _cancel_branches(self) -> None:
        # All of them, busy or not: one that takes a queued frame just before it sees the stop
        # must not start a run of seconds. A cancelled backend stays cancelled; the run is over.
        for b in self._branches:
            try:
                b.cancel()
            except Exception:  # a stop goes on whatever one branch does
                log.exception("branch %s: cancel failed", b.name)

    def stop(self, timeout: float | None = None) -> bool:
        """Stop every thread and wait up to ``timeout`` seconds in all; False if some are still running.

        Frames already handed to fusion are published (partial where results are missing).
        Branch runs in progress are cancelled (``Branch.cancel``: ONNX Runtime ends a CPU run at
        once). A thread still stuck past ``timeout`` is named in the log; it is a daemon, so it
        does not keep the process alive.
        """
        self._stop.set()
        self._cancel_branches()
        limit = self._stop_timeout_s if timeout is None else timeout
        deadline = time.monotonic() + limit
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        alive = [t.name for t in self._threads if t.is_alive()]
        with self._lock:
            if self._state == "RUNNING":
                self._state = "STOPPED"
        if alive:
            log.error("pipeline threads still running %.1f s after stop: %s", limit, ", ".join(alive))
            return False
        self._deliver_events()  # the fusion thread is gone: the rest is ours to send
        return True

    def switch_strategy(self, name: str | FusionStrategyName) -> None:
        """Switch the fusion strategy (live: takes effect on the fusion thread within ``poll_interval_s``).

        ValueError for an unknown name. Logged, and sent to the sinks as a ``strategy_switch`` event.
        """
        key = strategy_name(name)
        t = self._fusion_thread
        if t is not None and t.is_alive():
            try:
                self._commands.put_nowait(key)
            except queue.Full:
                raise RuntimeError("Orchestrator.switch_strategy: too many switches waiting; try again") from None
            return
        self._switch(key)

    @property
    def status(self) -> OrchestratorStatus:
        """A snapshot of the run (thread-safe)."""
        state = self._fusion.state
        with self._lock:
            return OrchestratorStatus(
                state=self._state,
                strategy=self._fusion.name,
                frames_decoded=self._frames_decoded,
                frames_published=self._frames_published,
                metadata_published=self._metadata_published,
                partial_frames=state.partial_frames,
                late_results=state.late_results,
                drops=dict(self._drops),
                waited_on=dict(self._waited_on),
                queue_depths={name: q.qsize() for name, q in self._queues.items()},
                stalled=self._stalled,
                error=self._error_text,
                failed_stage=self._failed_stage,
            )

    @property
    def error(self) -> BaseException | None:
        """The first failure: an AppError as raised, anything else as StageError (``__cause__``: the original)."""
        with self._lock:
            return self._error

    @property
    def events(self) -> tuple[PipelineEvent, ...]:
        """The last 1000 events of the run."""
        with self._lock:
            return tuple(self._event_log)

    # ---------------------------------------------------------------- the worker

    def _worker(self) -> None:
        frame_index: int | None = None
        try:
            with self._source as src:
                frames: Iterator[Frame] = iter(src.frames())
                while not self._stop.is_set():
                    t0 = self._clock()
                    frame = next(frames, None)
                    if frame is None:
                        break
                    meta = frame.meta
                    frame_index = meta.frame_index
                    with self._lock:
                        self._frames_decoded += 1
                        decoded = self._frames_decoded
                    if not self._submit(frame, FrameTimings(decode_ms=max(0.0, (meta.decode_ts - t0) * 1000.0))):
                        break
                    if self._max_frames is not None and decoded >= self._max_frames:
                        break
        except Exception as exc:
            self._fail("source", exc, frame_index)
        finally:
            for q in self._queues.values():
                self._put(q, _SENTINEL)
            self._put(self._inbox, _Done("worker"))

    def _submit(self, frame: Frame, timings: FrameTimings) -> bool:
        """Hand one frame to its due branches and to fusion (the submit policy); False when stopping."""
        meta = frame.meta
        due = [b for b in self._branches if meta.frame_index % b.every_n_frames == 0]
        image = None
        if self._publish_images:
            if frame.device == "cpu" and frame.layout == "rgb":
                image = frame.image
            elif frame.device == "gpu" and self._display_copy is not None:
                image = self._display_image(frame)
        return self._policy.submit(self, frame, due, _FrameItem(meta, (), image, timings))

    def _display_image(self, frame: Frame) -> Any:
        assert self._display_copy is not None
        try:
            return self._display_copy(frame)
        except Exception as exc:  # the picture is not the product: counting goes on without it
            log.warning("display copy of GPU frames failed (%s: %s); the window shows no video from now on", type(exc).__name__, exc)
            self._display_copy = None
            return None

    # The ports a submit policy uses.

    def put_inbox(self, item: _FrameItem | BranchResult) -> bool:
        return self._put(self._inbox, item)

    def queue_depths(self) -> dict[str, int]:
        return {name: q.qsize() for name, q in self._queues.items()}

    def wait_enqueue(self, branch: str, frame: Frame) -> bool:
        return self._put(self._queues[branch], frame)

    def run_inline(self, branch: Branch, frame: Frame) -> BranchResult | None:
        try:
            return self._run_branch(branch, frame)
        except Exception as exc:
            self._fail(f"branch {branch.name}", exc, frame.meta.frame_index)
            return None

    def has_room(self, branch: str) -> bool:
        return not self._queues[branch].full()

    def enqueue_now(self, branch: str, frame: Frame) -> None:
        self._queues[branch].put_nowait(frame)

    def count_drop(self, branch: str, frame: Frame, reason: str) -> None:
        with self._lock:
            key = f"{branch}:{reason}"
            self._drops[key] += 1
            n = self._drops[key]
        idx = frame.meta.frame_index
        why = "queue full" if reason == "queue_full" else "another branch's queue was full"
        if n == 1 or n % _DROP_EVENT_EVERY == 0:
            message = f"frame {idx} dropped for branch {branch}: {why} ({n} so far)"
            log.warning(message)
            self._emit_event("drop", message, idx, {"branch": branch, "reason": reason, "count": n})
        else:
            log.debug("frame %d dropped for branch %s: %s (%d so far)", idx, branch, why, n)

    def _put(self, q: queue.Queue[Any], item: Any) -> bool:
        """Put, waiting for room while the run goes on; False once it is stopping."""
        while True:
            try:
                q.put(item, timeout=self._poll_s)
                return True
            except queue.Full:
                if self._stop.is_set():
                    return False

    # ---------------------------------------------------------------- branches

    def _run_branch(self, branch: Branch, frame: Frame) -> BranchResult:
        hb = self._heartbeats[branch.name]
        t0 = self._clock()
        hb.frame_index = frame.meta.frame_index
        hb.busy_since = t0
        try:
            result = branch.run(frame)
        finally:
            hb.busy_since = None
            hb.last_beat = self._clock()
        t1 = hb.last_beat
        if result.branch != branch.name or result.frame.frame_index != frame.meta.frame_index:
            raise StageError(
                f"branch {branch.name} returned a result for branch {result.branch!r}, frame "
                f"{result.frame.frame_index}; expected frame {frame.meta.frame_index}"
            )
        timings = {**result.timings, "run_ms": (t1 - t0) * 1000.0}
        return replace(result, timings=timings, done_ts=result.done_ts or t1)

    def _branch_loop(self, branch: Branch) -> None:
        q = self._queues[branch.name]
        hb = self._heartbeats[branch.name]
        frame_index: int | None = None
        try:
            while not self._stop.is_set():
                hb.last_beat = self._clock()
                try:
                    item = q.get(timeout=self._poll_s)
                except queue.Empty:
                    continue
                if item is _SENTINEL:
                    break
                frame_index = item.meta.frame_index
                if not self._put(self._inbox, self._run_branch(branch, item)):
                    break
        except Exception as exc:
            self._fail(f"branch {branch.name}", exc, frame_index)
        finally:
            self._put(self._inbox, _Done(branch.name))

    # ---------------------------------------------------------------- fusion and sinks

    def _fusion_loop(self) -> None:
        producers = {"worker", *self._queues}
        finished = False
        try:
            while not self._stop.is_set():
                self._run_commands()
                try:
                    item: _FrameItem | BranchResult | _Done | None = self._inbox.get(timeout=self._poll_s)
                except queue.Empty:
                    item = None
                if isinstance(item, _Done):
                    producers.discard(item.producer)
                elif item is not None:
                    self._deliver(self._handle(item))
                self._deliver(self._fusion.poll(self._clock()))
                self._deliver_events()
                if not producers:
                    finished = True
                    break
        except Exception as exc:
            self._fail("fusion", exc, self._last_frame_index)
        finally:
            try:
                self._run_commands()
                # Stopping or failed: publish what reached fusion, then every pending frame.
                while True:
                    try:
                        item = self._inbox.get_nowait()
                    except queue.Empty:
                        break
                    if not isinstance(item, _Done):
                        self._deliver(self._handle(item))
                self._deliver(self._fusion.flush())
            except Exception as exc:
                self._fail("fusion", exc, self._last_frame_index)
            with self._lock:
                if finished and self._state == "RUNNING":
                    self._state = "FINISHED"
            if finished:
                st = self.status
                log.info(
                    "pipeline finished: %d frames decoded, %d published, %d partial, drops %s",
                    st.frames_decoded,
                    st.frames_published,
                    st.partial_frames,
                    dict(st.drops) or "none",
                )
            self._stop.set()  # lets the watchdog go
            self._deliver_events()

    def _handle(self, item: _FrameItem | BranchResult) -> list[Published]:
        if isinstance(item, _FrameItem):
            with self._lock:
                self._last_frame_index = item.meta.frame_index
            return self._fusion.on_frame(item.meta, item.scheduled, item.image, item.timings, item.dropped)
        return self._fusion.push(item)

    def _run_commands(self) -> None:
        while True:
            try:
                key = self._commands.get_nowait()
            except queue.Empty:
                return
            self._switch(key)

    def _switch(self, key: str) -> None:
        old = self._fusion.name
        handed_over = self._fusion.switch(key)
        if self._fusion.name != old:
            self._emit_event(
                "strategy_switch",
                f"fusion strategy {old} -> {key}",
                self._last_frame_index,
                {"from": old, "to": key, "handed_over": len(handed_over)},
            )
        self._deliver_events()
        self._deliver(handed_over)

    def _live_sinks(self) -> list[Sink]:
        return [s for s in self._sinks if id(s) not in self._failed_sinks]

    def _sink_failed(self, sink: Sink, exc: Exception, frame_index: int | None) -> None:
        self._failed_sinks.add(id(sink))
        self._fail(f"sink {type(sink).__name__}", exc, frame_index)

    def _deliver(self, outs: list[Published]) -> None:
        for out in outs:
            if isinstance(out, FusedResult):
                idx: int | None = out.frame.frame_index
                branch = out.timings.waited_on()
                with self._lock:
                    self._frames_published += 1
                    if branch is not None:
                        self._waited_on[branch] += 1
            elif isinstance(out, MetadataRecord):
                idx = out.frame_index
                with self._lock:
                    self._metadata_published += 1
            elif isinstance(out, TrackingRecord):
                idx = out.frame_index
            else:
                idx = out.timings.frame_index
            for sink in self._live_sinks():
                try:
                    if isinstance(out, FusedResult):
                        sink.write(out)
                    elif isinstance(out, MetadataRecord):
                        if isinstance(sink, MetadataSink):
                            sink.write_metadata(out)
                    elif isinstance(out, TrackingRecord):
                        if isinstance(sink, TrackingSink):
                            sink.write_tracking(out)
                    elif isinstance(sink, WorkSink):
                        sink.write_work(out)
                except Exception as exc:
                    self._sink_failed(sink, exc, idx)

    def _emit_event(self, kind: str, message: str, frame_index: int | None, data: Mapping[str, Any]) -> None:
        ev = PipelineEvent(kind, message, frame_index, dict(data))
        with self._lock:
            self._event_log.append(ev)
        try:
            self._events.put_nowait(ev)
        except queue.Full:
            with self._lock:
                self._drops["events:queue_full"] += 1
            log.warning("event queue full; %s event not sent to the sinks: %s", kind, message)

    def _deliver_events(self) -> None:
        while True:
            try:
                ev = self._events.get_nowait()
            except queue.Empty:
                return
            for sink in self._live_sinks():
                if isinstance(sink, EventSink):
                    try:
                        sink.event(ev.kind, ev.message, ev.frame_index, data=dict(ev.data))
                    except Exception as exc:
                        self._sink_failed(sink, exc, ev.frame_index)

    # ---------------------------------------------------------------- failures and the watchdog

    def _fail(self, stage: str, exc: BaseException, frame_index: int | None) -> None:
        frame_index = getattr(exc, "frame_index", frame_index)  # fusion knows the frame it was counting
        where = "" if frame_index is None else f" on frame {frame_index}"
        message = f"{stage} failed{where}: {type(exc).__name__}: {exc}"
        with self._lock:
            first = self._error is None
            if first:
                err: BaseException
                if isinstance(exc, AppError):
                    err = exc
                else:
                    err = StageError(message)
                    err.__cause__ = exc
                self._error = err
                self._error_text = message
                self._failed_stage = stage
                self._state = "FAILED"
        if first:
            # An AppError's message says what is wrong and how to fix it: no traceback for it.
            log.error("%s; stopping the pipeline", message, exc_info=None if isinstance(exc, AppError) else exc)
            self._emit_event("error", message, frame_index, {"stage": stage, "error": type(exc).__name__})
        else:
            log.warning("after the first failure: %s", message)
        self._stop.set()

    def _watchdog(self) -> None:
        timeout = self._cfg.stall_timeout_s
        interval = min(0.5, timeout / 4)
        stalled: set[str] = set()
        try:
            while not self._stop.wait(interval):
                now = self._clock()
                for name, hb in self._heartbeats.items():
                    q = self._queues.get(name)
                    queued = q.qsize() if q is not None else 0
                    busy = hb.busy_since
                    if busy is not None:
                        silent = now - busy
                    elif queued:
                        silent = now - hb.last_beat
                    else:
                        silent = 0.0
                    if silent > timeout and name not in stalled:
                        stalled.add(name)
                        message = (
                            f"branch {name} made no progress for {silent:.1f} s "
                            f"(frame {hb.frame_index}, {queued} queued)"
                        )
                        log.warning(message)
                        self._emit_event(
                            "stall", message, hb.frame_index, {"branch": name, "silent_s": silent, "queued": queued}
                        )
                    elif silent <= timeout and name in stalled:
                        stalled.discard(name)
                        message = f"branch {name} moves again"
                        log.info(message)
                        self._emit_event("stall_end", message, hb.frame_index, {"branch": name})
                with self._lock:
                    self._stalled = tuple(sorted(stalled))
        except Exception as exc:
            self._fail("watchdog", exc, None)
