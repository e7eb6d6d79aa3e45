"""CPU frame sources: video files and network streams (RTSP, HTTP) through PyAV.

``PyAVSource`` yields RGB host frames. A file that is missing or unreadable raises ``SourceError``
at open; a file that turns corrupt part-way ends the stream with an event (frames already read
stay counted). A network stream that drops is reopened up to ``reconnect_attempts`` times, each
reconnect reported through ``on_event``; after that ``SourceError``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

from config.errors import SourceError
from pipeline.types import Frame, FrameMeta

log = logging.getLogger("people_counter.decode")

EventCallback = Callable[[str, str], None]
"""``on_event(kind, message)``: reconnects and decode errors, for the event log and SQLite."""

NETWORK_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://", "srt://")


LIVE_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "udp://", "tcp://", "srt://")
"""Streams that do not end: their end is a drop, reconnected like an error (HTTP may be a file)."""


def is_network_uri(uri: str) -> bool:
    return uri.lower().startswith(NETWORK_SCHEMES)


def is_live_uri(uri: str) -> bool:
    return uri.lower().startswith(LIVE_SCHEMES)


def _ignore_event(kind: str, message: str) -> None:
    del kind, message


class PyAVSource:
    """Decode a file or URL with PyAV (FFmpeg) into RGB frames on the host.

    ``frames()`` may be called once. ``max_frames`` stops early. ``loop`` restarts a file at its
    end (frame indices keep increasing). Use as a context manager so the container is closed.
    """

    def __init__(
        self,
        uri: str,
        *,
        stream_id: str = "cam0",
        loop: bool = False,
        reconnect_attempts: int = 3,
        reconnect_backoff_s: float = 1.0,
        open_timeout_s: float = 10.0,
        on_event: EventCallback = _ignore_event,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.uri = uri
        self.stream_id = stream_id
        self.loop = loop
        self.reconnect_attempts = reconnect_attempts
        self.reconnect_backoff_s = reconnect_backoff_s
        self.open_timeout_s = open_timeout_s
        self.on_event = on_event
        self._sleep = sleep
        self._container: Any = None
        self.network = is_network_uri(uri)
        self.width = 0
        self.height = 0
        self.fps = 0.0

    def __enter__(self) -> PyAVSource:
        self.open()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def open(self) -> None:
        """Open the container and read the stream's size; raises SourceError with the reason.

        Opening an open source does nothing, so the app can open it early to fail fast.
        """
        import av

        if self._container is not None:
            return

        if not self.network and not Path(self.uri).is_file():
            raise SourceError(
                f"video not found: {self.uri} (check streams[0].uri or --source; `make run` fetches the demo clip)"
            )
        options = {"rtsp_transport": "tcp", "stimeout": str(int(self.open_timeout_s * 1e6))} if self.network else {}
        try:
            self._container = av.open(self.uri, options=options, timeout=self.open_timeout_s if self.network else None)
            stream = self._container.streams.video[0]
        except IndexError:
            self.close()
            raise SourceError(f"{self.uri}: no video stream in this file") from None
        except (av.FFmpegError, OSError) as exc:
            self.close()
            kind = "cannot connect to" if self.network else "cannot read"
            raise SourceError(f"{kind} {self.uri}: {exc} (is the file a video? is the URL reachable?)") from None
        ctx = stream.codec_context
        self.width, self.height = int(ctx.width), int(ctx.height)
        if self.width <= 0 or self.height <= 0:
            self.close()
            raise SourceError(f"{self.uri}: video stream has no frame size (corrupt header?)")
        self.fps = float(stream.average_rate or stream.guessed_rate or 0.0)
        stream.thread_type = "AUTO"

    def close(self) -> None:
        if self._container is not None:
            try:
                self._container.close()
            finally:
                self._container = None

    def frames(self) -> Iterator[Frame]:
        """Yield RGB frames until the stream ends (or forever with ``loop``)."""
        import av

        if self._container is None:
            self.open()
        index = 0
        failures = 0
        while True:
            produced = False
            if self._container is None:  # a reconnect that failed: try again or give up
                try:
                    self.open()
                except SourceError as err:
                    failures += 1
                    if failures > self.reconnect_attempts:
                        raise SourceError(f"{err}; gave up after {self.reconnect_attempts} reconnect attempts") from None
                    self.on_event("reconnect", f"{err}; reconnect {failures}/{self.reconnect_attempts}")
                    self._sleep(self.reconnect_backoff_s)
                    continue
            try:
                stream = self._container.streams.video[0]
                tb = float(stream.time_base) if stream.time_base else 0.0
                for vf in self._container.decode(stream):
                    image = vf.to_ndarray(format="rgb24")
                    meta = FrameMeta(
                        stream_id=self.stream_id,
                        frame_index=index,
                        pts=float(vf.pts * tb) if vf.pts is not None else index / (self.fps or 30.0),
                        decode_ts=time.perf_counter(),
                        width=image.shape[1],
                        height=image.shape[0],
                    )
                    index += 1
                    produced = True
                    failures = 0
                    yield Frame(meta=meta, image=image)
            except (av.FFmpegError, OSError) as exc:
                if not self.network:
                    if index == 0:
                        raise SourceError(f"{self.uri}: cannot decode any frame: {exc} (corrupt or unsupported file?)") from None
                    msg = f"{self.uri}: decoding stopped at frame {index}: {exc}; keeping the {index} frames read"
                    log.warning(msg)
                    self.on_event("decode_error", msg)
                    return
                failures += 1
                if failures > self.reconnect_attempts:
                    raise SourceError(
                        f"{self.uri}: stream lost after {self.reconnect_attempts} reconnect attempts: {exc}"
                    ) from None
                msg = f"{self.uri}: stream dropped ({exc}); reconnect {failures}/{self.reconnect_attempts}"
                log.warning(msg)
                self.on_event("reconnect", msg)
                self.close()
                self._sleep(self.reconnect_backoff_s)
                continue
            if is_live_uri(self.uri):  # a camera does not end: its end is a drop
                failures += 1
                if failures > self.reconnect_attempts:
                    raise SourceError(
                        f"{self.uri}: stream ended and did not come back after {self.reconnect_attempts} reconnect attempts"
                    )
                msg = f"{self.uri}: stream ended; reconnect {failures}/{self.reconnect_attempts}"
                log.warning(msg)
                self.on_event("reconnect", msg)
                self.close()
                self._sleep(self.reconnect_backoff_s)
                continue
            if self.network and not produced and failures == 0:
                raise SourceError(f"{self.uri}: stream ended without a single frame")
            if not (self.loop and produced):
                return
            self._container.seek(0)


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
