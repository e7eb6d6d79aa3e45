"""CPU frame sources: video files and network streams (RTSP, HTTP, TCP...) through PyAV.

``PyAVSource`` yields RGB host frames.

Files: a file that is missing or unreadable raises ``SourceError`` at open (a config mistake,
not an outage). A packet that does not decode (corrupt data) is a ``decode_error`` event and is
skipped; a file that ends before the frame count its header declares (truncated) is a
``decode_error`` event too. Frames already read stay counted; :attr:`PyAVSource.errors` counts
the decode errors so the app can end the run as completed with errors.

Network streams are waited for, never given up by default: a stream that is not up at start, that
drops, that ends (a live stream does not end) or that stalls (connected, no frame for
``stall_timeout_s``) is reopened with exponential backoff and jitter (``reconnect_backoff_s``
doubling up to ``reconnect_backoff_max_s``), forever unless ``reconnect_attempts`` limits it;
past that limit ``SourceError``. Frame indices go on across reconnects, without duplicates.

Events, through ``on_event(kind, message, frame_index=None, data=None)`` (the signature of
``SqliteWriter.event``, so ``on_event=writer.event`` works):

- ``stream_lost``: frame_index = the last frame delivered before the loss (None: none yet);
  data ``{"reason": "error" | "ended" | "stalled" | "not_up", "error": str}``.
- ``stream_stalled`` (before its ``stream_lost``): connected but no frame for ``stall_s``;
  data ``{"stall_s": float, "stall_timeout_s": float}``.
- ``reconnect``: one per reopen attempt; data ``{"attempt": int, "delay_s": float}``.
- ``stream_restored``: frame_index = the first frame after the gap; data ``{"gap_s": float
  (last frame before to first frame after, by the source's clock), "attempts": int}``.
- ``decode_error``: frame_index = frames delivered so far; data ``{"errors": int, "error": str}``.
"""

from __future__ import annotations

import logging
import random
import socket
import time
from collections.abc import Callable, Generator, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol
from urllib.parse import urlsplit

import numpy as np
from numpy.typing import NDArray

from config.errors import SourceError
from pipeline.preprocess import colour_from_av, yuv420_to_rgb_uint8
from pipeline.types import Frame, FrameMeta

log = logging.getLogger("people_counter.decode")


class EventCallback(Protocol):
    """``on_event(kind, message, frame_index=None, data=None)``: stream and decode events, for the
    event log and SQLite (``SqliteWriter.event`` has this signature)."""

    def __call__(
        self, kind: str, message: str, frame_index: int | None = None, data: Mapping[str, Any] | None = None
    ) -> None: ...


NETWORK_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://", "srt://")


LIVE_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "udp://", "tcp://", "srt://")
"""Streams that do not end: their end is a drop, reconnected like an error. HTTP(S) is live when
the server gives no length (no duration): a file served over HTTP ends."""

_DEFAULT_PORTS = {"http": 80, "https": 443, "rtsp": 554, "rtsps": 322, "rtmp": 1935}

_MAX_CONSECUTIVE_DECODE_ERRORS = 50
"""Packets in a row that fail to decode before the stream counts as unreadable (file) or lost."""


def is_network_uri(uri: str) -> bool:
    return uri.lower().startswith(NETWORK_SCHEMES)


def is_live_uri(uri: str) -> bool:
    return uri.lower().startswith(LIVE_SCHEMES)


def ignore_event(kind: str, message: str, frame_index: int | None = None, data: Mapping[str, Any] | None = None) -> None:
    """An ``on_event`` that drops every event."""
    del kind, message, frame_index, data


def backoff_delay(attempt: int, initial_s: float, max_s: float, rand: Callable[[], float]) -> float:
    """Wait before reconnect ``attempt`` (1, 2, ...): ``initial_s * 2**(attempt-1)`` capped at
    ``max_s``, times a jitter in [0.5, 1) from ``rand()`` (in [0, 1)) so that many clients of
    one server do not retry in step."""
    base = min(max_s, initial_s * 2.0 ** min(attempt - 1, 60))
    return base * (0.5 + 0.5 * rand())


def accepts_tcp(uri: str, timeout_s: float) -> bool:
    """Whether the host of a TCP-based URL accepts a connection: tells a stall (connected, no
    data) from an unreachable server when an open times out."""
    parts = urlsplit(uri)
    port = parts.port or _DEFAULT_PORTS.get(parts.scheme.lower())
    if parts.scheme.lower() in ("udp", "srt") or not parts.hostname or port is None:
        return False
    try:
        with socket.create_connection((parts.hostname, port), timeout=timeout_s):
            return True
    except OSError:
        return False


class _Unavailable(Exception):
    """The stream could not be opened now (an outage, retried); ``stalled`` when it connected but
    sent nothing within the open timeout."""

    def __init__(self, message: str, stalled: bool = False) -> None:
        super().__init__(message)
        self.stalled = stalled


@dataclass(slots=True)
class _Outage:
    """A loss in progress: when the last frame came (source clock) and the attempts so far."""

    since: float
    error: str
    stalled: bool = False
    attempts: int = 0


@dataclass(frozen=True, slots=True)
class _PassEnd:
    """How one pass over an open container ended: ``ended`` (end of stream), ``error`` (a read
    error, or too many packets in a row that did not decode) or ``stalled``."""

    reason: str
    error: str = ""


_PLANAR_420 = {"yuv420p": None, "yuvj420p": "full"}
"""8-bit planar 4:2:0 formats converted by the NumPy reference, with the range a format implies."""


def av_frame_rgb(vf: Any) -> NDArray[np.uint8]:
    """A decoded PyAV frame as (H, W, 3) uint8 RGB, with the stream's colour matrix and range
    (:func:`pipeline.preprocess.colour_from_av`; unspecified: BT.709 for HD, BT.601 for SD).

    8-bit 4:2:0 (``yuv420p``, ``yuvj420p``) goes through :func:`pipeline.preprocess.yuv420_to_rgb_uint8`,
    the rounded NumPy reference the GPU kernels match, so the CPU and GPU paths feed the models
    the same pixels (within rounding). swscale's own unscaled path truncates (about one level
    darker on average) and takes BT.601 for every unspecified stream (1.7 levels mean, 21.7 max
    off on the 4K demo); other formats still go through it, told the matrix and range.
    """
    fmt = vf.format.name
    width, height = int(vf.width), int(vf.height)
    color_range = vf.color_range
    if not color_range and _PLANAR_420.get(fmt) == "full":
        color_range = 2  # the J formats are full range
    colour = colour_from_av(vf.colorspace, color_range, width, height)
    if fmt in _PLANAR_420:
        ch, cw = (height + 1) // 2, (width + 1) // 2

        def plane(k: int, h: int, w: int) -> NDArray[np.uint8]:
            p = vf.planes[k]
            return np.frombuffer(p, np.uint8).reshape(-1, p.line_size)[:h, :w]

        return yuv420_to_rgb_uint8(plane(0, height, width), plane(1, ch, cw), plane(2, ch, cw), colour)
    from av.video.reformatter import ColorRange, Colorspace

    return vf.reformat(  # type: ignore[no-any-return]
        format="rgb24",
        src_colorspace=Colorspace.ITU709 if colour.matrix == "bt709" else Colorspace.ITU601,
        src_color_range=ColorRange.MPEG if colour.range == "limited" else ColorRange.JPEG,
    ).to_ndarray()


class PyAVSource:
    """Decode a file or URL with PyAV (FFmpeg) into RGB frames on the host.

    ``frames()`` may be called once. ``loop`` restarts a file at its end (frame indices keep
    increasing). Use as a context manager so the container is closed. ``reconnect_attempts``:
    reopen attempts per outage of a network stream (None: forever); ``reconnect_backoff_s``
    the first wait, doubled per attempt up to ``reconnect_backoff_max_s``, jittered by
    ``rand``; ``open_timeout_s`` bounds one open; ``stall_timeout_s`` how long a connected
    stream may deliver no frame before it counts as stalled. ``sleep``, ``clock`` and ``rand``
    are injectable so that tests control time and jitter. ``errors``: decode errors seen so far.
    """

    def __init__(
        self,
        uri: str,
        *,
        stream_id: str = "cam0",
        loop: bool = False,
        reconnect_attempts: int | None = None,
        reconnect_backoff_s: float = 1.0,
        reconnect_backoff_max_s: float = 5.0,
        open_timeout_s: float = 10.0,
        stall_timeout_s: float = 10.0,
        on_event: EventCallback = ignore_event,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.uri = uri
        self.stream_id = stream_id
        self.loop = loop
        self.reconnect_attempts = reconnect_attempts
        self.reconnect_backoff_s = reconnect_backoff_s
        self.reconnect_backoff_max_s = reconnect_backoff_max_s
        self.open_timeout_s = open_timeout_s
        self.stall_timeout_s = stall_timeout_s
        self.on_event = on_event
        self._sleep = sleep
        self._clock = clock
        self._rand = rand
        self._container: Any = None
        self._not_up: _Unavailable | None = None
        self._live = is_live_uri(uri)
        self.network = is_network_uri(uri)
        self.width = 0
        self.height = 0
        self.fps = 0.0
        self._last_frame_at: float | None = None
        self.errors = 0
        """Decode errors seen (packets that did not decode, a truncated file): > 0 means the run
        completed with errors."""

    def __enter__(self) -> PyAVSource:
        self.open()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def open(self) -> None:
        """Open the container and read the stream's size; raises SourceError with the reason.

        Opening an open source does nothing, so the app can open it early to fail fast. A network
        stream that is not up yet is not an error (unless ``reconnect_attempts`` is 0): it is
        waited for in ``frames()``, and ``width``/``height`` stay 0 until it answers.
        """
        if self._container is not None:
            return
        if not self.network and not Path(self.uri).is_file():
            raise SourceError(
                f"video not found: {self.uri} (check the stream's uri in the config (streams[].uri) or --source; `make run` fetches the demo clip)"
            )
        try:
            self._connect()
        except _Unavailable as err:
            if self.reconnect_attempts == 0:
                raise SourceError(
                    f"cannot connect to {self.uri}: {err} (is the URL reachable? with reconnect_attempts: 0 "
                    "a stream that is not up at start is not waited for)"
                ) from None
            self._not_up = err
            log.warning("%s: not up yet (%s); waiting for it", self.uri, err)

    def _connect(self) -> None:
        """Open the container: ``_Unavailable`` when a network stream does not answer now (an
        outage), ``SourceError`` for what waiting does not fix (not a video, no frame size)."""
        import av

        self._not_up = None
        options = {"rtsp_transport": "tcp", "stimeout": str(int(self.open_timeout_s * 1e6))} if self.network else {}
        try:
            container = av.open(
                self.uri, options=options, timeout=(self.open_timeout_s, self.stall_timeout_s) if self.network else None
            )
        except (av.FFmpegError, OSError) as exc:
            if not self.network:
                raise SourceError(f"cannot read {self.uri}: {exc} (is the file a video?)") from None
            # an open that timed out on a server that accepts connections: connected, nothing sent
            stalled = isinstance(exc, av.ExitError) and accepts_tcp(self.uri, self.open_timeout_s)
            reason = f"connected but no data for {self.open_timeout_s:g} s" if stalled else str(exc)
            raise _Unavailable(reason, stalled=stalled) from None
        try:
            stream = container.streams.video[0]
        except IndexError:
            container.close()
            raise SourceError(f"{self.uri}: no video stream in this file") from None
        ctx = stream.codec_context
        width, height = int(ctx.width), int(ctx.height)
        if width <= 0 or height <= 0:
            container.close()
            raise SourceError(f"{self.uri}: video stream has no frame size (corrupt header?)")
        self._container = container
        self.width, self.height = width, height
        self.fps = float(stream.average_rate or stream.guessed_rate or 0.0)
        # HTTP without a length (no duration) is a live stream: its end is a drop
        self._live = is_live_uri(self.uri) or (self.network and container.duration is None)
        stream.thread_type = "AUTO"

    def close(self) -> None:
        if self._container is not None:
            try:
                self._container.close()
            finally:
                self._container = None

    def frames(self) -> Iterator[Frame]:
        """Yield RGB frames until the stream ends (or forever with ``loop``, or a live stream)."""
        if self._container is None and self._not_up is None:
            self.open()
        index = 0
        first_pass = True
        outage: _Outage | None = None
        # pts never goes back within a run: a looped file starts again at 0 and a reconnected
        # stream at its own origin; an offset continues them one frame after the last pts (plus
        # the outage, for a stream), so that everything timed by pts (tracks ending after
        # lost_track_s, static and dwell windows, gaps, stored times) sees time go on
        offset, last_pts, gap_s = 0.0, None, 0.0
        if self._container is None:  # a network stream not up at start: wait for it
            not_up = self._not_up or _Unavailable("not connected")
            outage = self._lose("not_up", None, str(not_up), stalled=not_up.stalled)
        while True:
            if self._container is None:
                assert outage is not None
                self._reopen(outage)
            stream = self._container.streams.video[0]
            tb = float(stream.time_base) if stream.time_base else 0.0
            declared = int(stream.frames or 0)
            passed = 0
            decoding = self._decode_pass(index)
            while True:
                try:
                    image, pts = next(decoding)
                except StopIteration as stop:
                    end: _PassEnd = stop.value
                    break
                if outage is not None:
                    gap_s = self._restored(outage, index)
                    outage = None
                raw = pts * tb if pts is not None else index / (self.fps or 30.0)
                if last_pts is not None and raw + offset <= last_pts:
                    offset = last_pts + gap_s + 1.0 / (self.fps or 30.0) - raw
                gap_s = 0.0
                last_pts = raw + offset
                meta = FrameMeta(
                    stream_id=self.stream_id,
                    frame_index=index,
                    pts=last_pts,
                    decode_ts=time.perf_counter(),
                    width=image.shape[1],
                    height=image.shape[0],
                )
                index += 1
                passed += 1
                self._last_frame_at = self._clock()
                yield Frame(meta=meta, image=image)
            if not self.network:
                if end.reason != "ended":
                    if index == 0:
                        raise SourceError(f"{self.uri}: cannot decode any frame: {end.error} (corrupt or unsupported file?)")
                    self._decode_error(f"{self.uri}: decoding stopped at frame {index}: {end.error}; keeping the {index} frames read", index, end.error)
                    return
                if first_pass and declared > 0 and passed < declared - max(2, declared // 100):
                    self._decode_error(
                        f"{self.uri}: the file ends after {passed} of the {declared} frames its header declares "
                        "(truncated?); keeping the frames read", index, "truncated",
                    )
                first_pass = False
                if not (self.loop and passed):
                    return
                self._container.seek(0)
                continue
            if end.reason == "ended" and not self._live:
                if passed == 0 and outage is None:
                    raise SourceError(f"{self.uri}: stream ended without a single frame")
                return
            self.close()
            if outage is None:
                reason = "ended" if end.reason == "ended" else end.reason
                error = "the stream ended (a live stream does not end)" if end.reason == "ended" else end.error
                outage = self._lose(reason, index - 1 if index else None, error, stalled=end.reason == "stalled")
            else:  # connected again but lost before a frame: the same outage goes on
                log.warning("%s: lost again before a frame (%s)", self.uri, end.error or end.reason)

    def _decode_pass(self, first_index: int) -> Generator[tuple[Any, int | None], None, _PassEnd]:
        """Yield ``(rgb image, pts)`` from the open container until it ends, fails or stalls;
        returns a :class:`_PassEnd` saying which. Packets that do not decode are counted and
        skipped. The stall clock runs only while this pass waits, not while the consumer works."""
        import av

        stream = self._container.streams.video[0]
        packets = self._container.demux(stream)
        last = self._clock()
        in_a_row = 0
        decoded = 0
        while True:
            try:
                packet = next(packets)
            except StopIteration:
                return _PassEnd("ended")
            except av.ExitError:  # PyAV's interrupt callback: no packet within stall_timeout_s
                return _PassEnd("stalled", f"no data for {self.stall_timeout_s:g} s")
            except (av.FFmpegError, OSError) as exc:
                return _PassEnd("error", str(exc))
            try:
                vframes = packet.decode()
            except (av.FFmpegError, OSError) as exc:
                in_a_row += 1
                self._decode_error(f"{self.uri}: a packet did not decode after frame {first_index + decoded}: {exc}; skipped", first_index + decoded, str(exc))
                if in_a_row >= _MAX_CONSECUTIVE_DECODE_ERRORS:
                    return _PassEnd("error", f"{in_a_row} packets in a row did not decode: {exc}")
                continue
            for vf in vframes:
                in_a_row = 0
                decoded += 1
                yield av_frame_rgb(vf), vf.pts
                last = self._clock()
            if self.network and self._clock() - last > self.stall_timeout_s:  # data comes, frames do not
                return _PassEnd("stalled", f"no frame for {self._clock() - last:.1f} s")

    def _emit(self, kind: str, message: str, frame_index: int | None, data: Mapping[str, Any]) -> None:
        log.warning(message)
        self.on_event(kind, message, frame_index=frame_index, data=dict(data))

    def _decode_error(self, message: str, frame_index: int, error: str) -> None:
        self.errors += 1
        self._emit("decode_error", message, frame_index, {"errors": self.errors, "error": error})

    def _lose(self, reason: str, last_index: int | None, error: str, *, stalled: bool) -> _Outage:
        now = self._clock()
        since = self._last_frame_at if last_index is not None and self._last_frame_at is not None else now
        if stalled:
            stall_s = now - since if last_index is not None else self.open_timeout_s
            self._emit(
                "stream_stalled", f"{self.uri}: stalled ({error})", last_index,
                {"stall_s": round(stall_s, 3), "stall_timeout_s": self.stall_timeout_s},
            )
        what = "not up yet" if reason == "not_up" else "lost"
        self._emit(
            "stream_lost", f"{self.uri}: stream {what} ({error}); reconnecting", last_index,
            {"reason": "stalled" if stalled and reason != "not_up" else reason, "error": error},
        )
        return _Outage(since=since, error=error, stalled=stalled)

    def _reopen(self, outage: _Outage) -> None:
        """Reopen after backoff until it works; SourceError past ``reconnect_attempts``."""
        limit = self.reconnect_attempts
        while True:
            if limit is not None and outage.attempts >= limit:
                raise SourceError(
                    f"{self.uri}: stream lost and not back after {limit} reconnect attempts ({outage.error}); "
                    "check that the source is up and reachable, or raise streams[].reconnect_attempts "
                    "(null: retry forever)"
                )
            outage.attempts += 1
            delay = backoff_delay(outage.attempts, self.reconnect_backoff_s, self.reconnect_backoff_max_s, self._rand)
            of = f"/{limit}" if limit is not None else ""
            self._emit(
                "reconnect", f"{self.uri}: reconnect {outage.attempts}{of} in {delay:.2f} s ({outage.error})", None,
                {"attempt": outage.attempts, "delay_s": round(delay, 3)},
            )
            self._sleep(delay)
            try:
                self._connect()
                return
            except _Unavailable as err:
                outage.error = str(err)
                if err.stalled and not outage.stalled:
                    self._emit(
                        "stream_stalled", f"{self.uri}: stalled ({err})", None,
                        {"stall_s": self.open_timeout_s, "stall_timeout_s": self.stall_timeout_s},
                    )
                outage.stalled = err.stalled

    def _restored(self, outage: _Outage, index: int) -> float:
        """Report the end of an outage; returns its length (s)."""
        gap_s = self._clock() - outage.since
        self._emit(
            "stream_restored",
            f"{self.uri}: stream restored at frame {index} after {gap_s:.1f} s and {outage.attempts} attempt(s)",
            index,
            {"gap_s": round(gap_s, 3), "attempts": outage.attempts},
        )
        return gap_s


class PacedSource:
    """Deliver another source's frames no faster than its frame rate, as a live camera would.

    The wait happens before the inner source decodes the next frame, so ``decode_ts`` is the
    frame's arrival time, the origin of ``end_to_end_ms`` in a live pipeline. A frame that is
    late (the consumer was slow) is decoded at once; the schedule does not drift. ``fps``:
    the inner source's own rate when None (read after it is opened), else 30.
    """

    def __init__(self, inner: Any, fps: float | None = None, clock: Callable[[], float] = time.perf_counter,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.inner = inner
        self._fps = fps
        self._clock = clock
        self._sleep = sleep

    def __enter__(self) -> PacedSource:
        self.inner.__enter__()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.inner.__exit__(exc_type, exc, tb)

    def open(self) -> None:
        opener = getattr(self.inner, "open", None)
        if opener is not None:
            opener()

    @property
    def fps(self) -> float:
        return self._fps or float(getattr(self.inner, "fps", 0.0) or 30.0)

    def frames(self) -> Iterator[Frame]:
        frames = iter(self.inner.frames())
        period = 1.0 / self.fps
        start: float | None = None
        n = 0
        while True:
            now = self._clock()
            if start is None:
                start = now
            delay = start + n * period - now
            if delay > 0:
                self._sleep(delay)
            frame = next(frames, None)
            if frame is None:
                return
            n += 1
            yield frame
