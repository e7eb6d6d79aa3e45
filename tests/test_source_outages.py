"""Outages of a live stream, with a real MPEG-TS server on loopback (raw TCP and HTTP): a drop
and a return, a stall, a source not up at start, a limit on reconnects. Jitter is injected; the
gap is checked against the server's own stop/start timestamps with a generous margin."""

from __future__ import annotations

import contextlib
import io
import itertools
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from config.errors import SourceError
from pipeline.sources import PyAVSource, backoff_delay

VTEST = Path(".cache/assets/video/vtest.avi")
needs_vtest = pytest.mark.skipif(not VTEST.exists(), reason="demo video not fetched (`python main.py fetch-assets`)")

FPS = 25
CLIP_FRAMES = 25


class Events:
    """An ``on_event`` that records ``(kind, message, frame_index, data)``."""

    def __init__(self) -> None:
        self.items: list[tuple[str, str, int | None, dict[str, Any]]] = []

    def __call__(self, kind: str, message: str, frame_index: int | None = None, data: Any = None) -> None:
        self.items.append((kind, message, frame_index, dict(data or {})))

    def kinds(self) -> list[str]:
        return [k for k, *_ in self.items]

    def first(self, kind: str) -> tuple[str, str, int | None, dict[str, Any]]:
        return next(e for e in self.items if e[0] == kind)


def make_ts_clip() -> bytes:
    """A short MPEG-TS (mpeg2video, 384x288) of vtest.avi frames."""
    import av

    buf = io.BytesIO()
    with av.open(str(VTEST)) as inp, av.open(buf, "w", format="mpegts") as out:
        st = out.add_stream("mpeg2video", rate=FPS)
        st.width, st.height, st.pix_fmt = 384, 288, "yuv420p"
        for i, frame in enumerate(inp.decode(video=0)):
            if i == CLIP_FRAMES:
                break
            for pkt in st.encode(frame.reformat(width=384, height=288, format="yuv420p")):
                out.mux(pkt)
        for pkt in st.encode():
            out.mux(pkt)
    return buf.getvalue()


class TsServer:
    """A live MPEG-TS server on 127.0.0.1 that repeats a clip forever, paced at about FPS.

    ``http``: answer a GET with a length-less 200 (a live HTTP stream). ``stop()`` closes the
    listener and every connection (clients are refused until ``start()``, same port);
    ``silent``: accept and send nothing; ``stall_after``: the next connection sends that many
    bytes, then holds the socket open silent. ``stopped_at`` / ``started_at``: monotonic times.
    """

    def __init__(self, data: bytes, *, http: bool = False) -> None:
        self.data = data
        self.http = http
        self.silent = False
        self.stall_after: int | None = None
        self.connections = 0
        self.started_at: list[float] = []
        self.stopped_at: list[float] = []
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._conns: list[socket.socket] = []
        self._listener: socket.socket | None = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}/live.ts" if self.http else f"tcp://127.0.0.1:{self.port}"

    def start(self) -> TsServer:
        self._stop = threading.Event()
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(8)
        listener.settimeout(0.1)
        self._listener = listener
        thread = threading.Thread(target=self._accept, args=(listener, self._stop), daemon=True)
        self._threads.append(thread)
        thread.start()
        self.started_at.append(time.monotonic())
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(5)
        self._threads.clear()
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        self.stopped_at.append(time.monotonic())

    def _accept(self, listener: socket.socket, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            limit, self.stall_after = self.stall_after, None
            t = threading.Thread(target=self._serve, args=(conn, stop, limit), daemon=True)
            self._threads.append(t)
            t.start()

    def _serve(self, conn: socket.socket, stop: threading.Event, limit: int | None) -> None:
        chunk = max(188, len(self.data) // CLIP_FRAMES // 188 * 188)
        with conn, contextlib.suppress(OSError):
            if self.http:
                conn.settimeout(2.0)
                request = b""
                while b"\r\n\r\n" not in request:
                    request += conn.recv(4096) or b"\r\n\r\n"
                conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: video/mp2t\r\n\r\n")
            sent = 0
            while not stop.is_set():
                if self.silent or (limit is not None and sent >= limit):
                    stop.wait(0.05)
                    continue
                for i in range(0, len(self.data), chunk):
                    if stop.is_set() or (limit is not None and sent >= limit):
                        break
                    conn.sendall(self.data[i : i + chunk])
                    sent += chunk
                    stop.wait(1.0 / FPS)


@pytest.fixture(scope="module")
def clip() -> bytes:
    if not VTEST.exists():
        pytest.skip("demo video not fetched")
    return make_ts_clip()


@pytest.mark.parametrize(
    ("attempt", "expected"),
    [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 10.0), (50, 10.0)],
)
def test_backoff_doubles_up_to_its_cap(attempt: int, expected: float) -> None:
    assert backoff_delay(attempt, 1.0, 10.0, lambda: 0.999999) == pytest.approx(expected, rel=1e-5)
    assert backoff_delay(attempt, 1.0, 10.0, lambda: 0.0) == pytest.approx(expected / 2)  # jitter: [0.5, 1) x


@needs_vtest
@pytest.mark.parametrize("http", [False, True], ids=["tcp", "http"])
def test_outage_of_a_few_seconds_is_survived_with_the_defaults_and_recorded(clip: bytes, http: bool) -> None:
    server = TsServer(clip, http=http).start()
    events = Events()
    down_s = 2.5
    indices: list[int] = []
    pts: list[float] = []
    outage: threading.Thread | None = None

    def go_down_and_back() -> None:
        server.stop()
        time.sleep(down_s)
        server.start()

    try:
        with PyAVSource(server.uri, on_event=events, rand=lambda: 0.0) as src:  # the defaults: never give up
            for frame in src.frames():
                indices.append(frame.meta.frame_index)
                pts.append(frame.meta.pts)
                if len(indices) == 20:
                    outage = threading.Thread(target=go_down_and_back)
                    outage.start()
                if "stream_restored" in events.kinds() and len(indices) >= 20 + 20:
                    break
    finally:
        if outage is not None:
            outage.join(10)
        server.stop()
    assert indices == list(range(len(indices)))  # no duplicate, no hole in the indices
    # the server's stream starts again at its own origin; the run's pts go on (past the outage)
    assert all(b > a for a, b in itertools.pairwise(pts)), pts
    assert events.kinds()[0] == "stream_lost"
    assert events.kinds()[-1] == "stream_restored"
    assert set(events.kinds()[1:-1]) == {"reconnect"}
    _, message, lost_at, lost = events.first("stream_lost")
    _, _, restored_at, restored = events.first("stream_restored")
    assert server.uri in message
    assert lost["reason"] in ("ended", "error")
    assert lost_at is not None and restored_at == lost_at + 1  # last frame before, first frame after
    assert restored["attempts"] == events.kinds().count("reconnect") >= 2
    delays = [d["delay_s"] for k, _, _, d in events.items if k == "reconnect"]
    assert delays == [backoff_delay(n, 1.0, 5.0, lambda: 0.0) for n in range(1, len(delays) + 1)]
    down = server.started_at[1] - server.stopped_at[0]
    # frames buffered before the stop may still come after it, and the backoff adds up to one wait
    assert down - 1.0 <= restored["gap_s"] <= down + delays[-1] + 5.0


@needs_vtest
def test_a_stall_mid_stream_is_reported_then_reconnected(clip: bytes) -> None:
    server = TsServer(clip)
    server.stall_after = len(clip) // 2  # the first connection goes silent half-way, socket open
    server.start()
    events = Events()
    indices: list[int] = []
    try:
        with PyAVSource(server.uri, stall_timeout_s=1.0, open_timeout_s=2.0, reconnect_backoff_s=0.1,
                        on_event=events, rand=lambda: 0.0) as src:
            for frame in src.frames():
                indices.append(frame.meta.frame_index)
                if "stream_restored" in events.kinds() and len(indices) >= CLIP_FRAMES:
                    break
    finally:
        server.stop()
    assert events.kinds()[:2] == ["stream_stalled", "stream_lost"]
    _, message, stalled_at, stall = events.first("stream_stalled")
    assert server.uri in message and stall["stall_timeout_s"] == 1.0
    assert stalled_at is not None and stalled_at > 0
    assert events.first("stream_lost")[3]["reason"] == "stalled"
    assert events.first("stream_restored")[2] == stalled_at + 1
    assert indices == list(range(len(indices)))


@needs_vtest
def test_a_server_that_accepts_and_sends_nothing_is_a_stall_not_an_unreachable_host(clip: bytes) -> None:
    server = TsServer(clip)
    server.silent = True
    server.start()
    events = Events()
    waits: list[float] = []
    try:
        src = PyAVSource(server.uri, open_timeout_s=1.0, stall_timeout_s=1.0, reconnect_attempts=1,
                         on_event=events, sleep=waits.append, rand=lambda: 0.0)
        with pytest.raises(SourceError, match=rf"{server.uri}.*not back after 1 reconnect attempts"), src:
            next(iter(src.frames()))
    finally:
        server.stop()
    assert events.kinds() == ["stream_stalled", "stream_lost", "reconnect"]
    assert "connected but no data" in events.items[0][1]
    assert events.items[1][2] is None  # no frame was delivered before
    assert waits == [0.5]


@needs_vtest
def test_a_source_not_up_at_start_is_waited_for_then_read(clip: bytes) -> None:
    server = TsServer(clip)  # not started: connections are refused
    events = Events()
    waits: list[float] = []

    def sleep(s: float) -> None:  # the server comes up during the 4th wait; no real waiting
        waits.append(s)
        if len(waits) == 4:
            server.start()

    try:
        with PyAVSource(server.uri, on_event=events, sleep=sleep, rand=lambda: 0.0) as src:
            assert src.width == 0  # not up: not an error
            frames = [f for _, f in zip(range(10), src.frames(), strict=False)]
    finally:
        server.stop()
    assert [f.meta.frame_index for f in frames] == list(range(10))
    assert frames[0].image.shape == (288, 384, 3) and src.width == 384
    assert events.kinds() == ["stream_lost", "reconnect", "reconnect", "reconnect", "reconnect", "stream_restored"]
    assert events.items[0][2] is None and events.items[0][3]["reason"] == "not_up"
    assert events.items[-1][2] == 0 and events.items[-1][3]["attempts"] == 4
    assert waits == [0.5, 1.0, 2.0, 2.5]  # doubling, capped at reconnect_backoff_max_s (5 s) x jitter 0.5


def test_a_limit_on_reconnects_gives_up_naming_the_url_and_the_fix() -> None:
    with socket.socket() as s:  # a local port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    uri = f"tcp://127.0.0.1:{port}"
    events = Events()
    waits: list[float] = []
    src = PyAVSource(uri, reconnect_attempts=2, on_event=events, sleep=waits.append, rand=lambda: 0.0)
    fix = rf"{uri}: stream lost and not back after 2 reconnect attempts.*reconnect_attempts"
    with pytest.raises(SourceError, match=fix), src:
        next(iter(src.frames()))
    assert events.kinds() == ["stream_lost", "reconnect", "reconnect"]
    assert waits == [0.5, 1.0]


def test_a_missing_local_file_still_fails_at_once(tmp_path: Path) -> None:
    waits: list[float] = []
    with pytest.raises(SourceError, match="video not found"):
        PyAVSource(str(tmp_path / "gone.mp4"), sleep=waits.append).open()
    assert waits == []
