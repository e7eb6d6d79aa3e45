"""PyAV source on real video: decode, missing and corrupt files, unreachable URL, reconnects."""

from __future__ import annotations

import contextlib
import socket
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from config.errors import SourceError
from pipeline.sources import PyAVSource


class Events:
    """An ``on_event`` that records ``(kind, message, frame_index, data)``."""

    def __init__(self) -> None:
        self.items: list[tuple[str, str, int | None, dict[str, Any]]] = []

    def __call__(self, kind: str, message: str, frame_index: int | None = None, data: Any = None) -> None:
        self.items.append((kind, message, frame_index, dict(data or {})))

    def kinds(self) -> list[str]:
        return [k for k, *_ in self.items]

    def of(self, kind: str) -> list[tuple[str, str, int | None, dict[str, Any]]]:
        return [e for e in self.items if e[0] == kind]

VTEST = Path(".cache/assets/video/vtest.avi")
needs_vtest = pytest.mark.skipif(not VTEST.exists(), reason="demo video not fetched (run `make run` or `python main.py fetch-assets`)")


@needs_vtest
def test_decodes_real_frames_with_metadata() -> None:
    with PyAVSource(str(VTEST), stream_id="v") as src:
        frames = []
        for f in src.frames():
            frames.append(f)
            if len(frames) == 5:
                break
    assert src.width == 768 and src.height == 576
    assert [f.meta.frame_index for f in frames] == [0, 1, 2, 3, 4]
    assert all(f.image.shape == (576, 768, 3) and f.image.dtype == np.uint8 for f in frames)
    assert frames[1].meta.pts > frames[0].meta.pts
    assert frames[0].image.std() > 10  # a real picture, not a blank frame


@needs_vtest
def test_loop_restarts_a_file(tmp_path: Path) -> None:
    import av

    short = tmp_path / "short.mp4"
    with av.open(str(VTEST)) as inp, av.open(str(short), "w") as out:
        st = out.add_stream("mpeg4", rate=10)
        st.width, st.height, st.pix_fmt = 768, 576, "yuv420p"
        for i, frame in enumerate(inp.decode(video=0)):
            if i == 3:
                break
            for pkt in st.encode(frame.reformat(format="yuv420p")):
                out.mux(pkt)
        for pkt in st.encode():
            out.mux(pkt)
    with PyAVSource(str(short), loop=True) as src:
        metas = [f.meta for _, f in zip(range(8), src.frames(), strict=False)]
    assert [m.frame_index for m in metas] == list(range(8))
    # the file's own pts start again at each pass; the run's keep going, one frame apart
    # (the tracker ends tracks, and measures dwell and stillness, by pts)
    assert [round(m.pts, 3) for m in metas] == [round(i / 10, 3) for i in range(8)]


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=r"video not found: .*nope\.mp4"):
        PyAVSource(str(tmp_path / "nope.mp4")).open()


def test_corrupt_file_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 40)
    with pytest.raises(SourceError, match=str(bad)), PyAVSource(str(bad)) as src:
        list(src.frames())


@needs_vtest
def test_truncated_file_keeps_frames_read_and_is_a_decode_error(tmp_path: Path) -> None:
    cut = tmp_path / "cut.avi"
    data = VTEST.read_bytes()
    cut.write_bytes(data[: len(data) // 10])
    events = Events()
    with PyAVSource(str(cut), on_event=events) as src:
        n = sum(1 for _ in src.frames())
    assert n > 10  # the frames before the cut are decoded and kept
    assert events.kinds() == ["decode_error"]
    _, message, frame_index, data_ = events.items[0]
    assert str(cut) in message and "truncated" in message
    assert frame_index == n and data_["errors"] == 1
    assert src.errors == 1


@needs_vtest
def test_corrupt_packets_mid_file_are_decode_errors_and_decoding_goes_on(tmp_path: Path) -> None:
    bad = tmp_path / "bad.avi"
    data = bytearray(VTEST.read_bytes())
    start = len(data) // 3
    for i in range(start, start + 200_000, 97):  # scribble over a third of the way in, not the header
        data[i] = (i * 31) % 256
    bad.write_bytes(bytes(data))
    events = Events()
    with PyAVSource(str(bad), on_event=events) as src:
        n = sum(1 for _ in src.frames())
    assert n > 700  # the frames after the damage are decoded too
    assert src.errors >= 1
    assert set(events.kinds()) == {"decode_error"} and len(events.items) == src.errors
    assert all(fi is not None and 0 < fi < n for _, _, fi, _ in events.items)


def test_unreachable_url_with_no_reconnects_fails_at_open() -> None:
    with socket.socket() as s:  # a local port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    src = PyAVSource(f"rtsp://127.0.0.1:{port}/live", reconnect_attempts=0, open_timeout_s=2.0)
    with pytest.raises(SourceError, match=f"cannot connect to rtsp://127.0.0.1:{port}/live"):
        src.open()


@needs_vtest
def test_dropped_http_stream_reconnects_and_goes_on() -> None:
    """A real HTTP server on loopback cuts the first connection a quarter of the way in."""
    import http.server
    import socketserver
    import threading

    data = VTEST.read_bytes()
    requests: list[int] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            requests.append(1)
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            body = data if len(requests) > 1 else data[: len(data) // 4]
            with contextlib.suppress(OSError):
                self.wfile.write(body)
            self.close_connection = True

        def log_message(self, *args: object) -> None:
            return

    server = socketserver.TCPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        events = Events()
        uri = f"http://127.0.0.1:{server.server_address[1]}/vtest.avi"
        with PyAVSource(uri, reconnect_attempts=2, reconnect_backoff_s=0.0, on_event=events) as src:
            indices = [f.meta.frame_index for f in src.frames()]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
    assert events.kinds() == ["stream_lost", "reconnect", "stream_restored"]
    assert uri in events.items[0][1]
    assert (events.items[0][2] or 0) + 1 == events.items[2][2]  # the last frame before, the first after
    assert len(requests) == 2
    assert indices == list(range(len(indices)))  # frame indices go on across the reconnect
    assert len(indices) > 795  # the frames before the drop, then the whole file again


@needs_vtest
def test_live_stream_that_ends_is_a_drop_reconnected_then_given_up(tmp_path: Path) -> None:
    """A camera does not end: a tcp:// MPEG-TS stream (real socket on loopback) that closes is
    reconnected; when it no longer answers, a clear SourceError ends the run."""
    import io
    import threading

    import av

    buf = io.BytesIO()
    with av.open(str(VTEST)) as inp, av.open(buf, "w", format="mpegts") as out:
        st = out.add_stream("mpeg2video", rate=10)
        st.width, st.height, st.pix_fmt = 768, 576, "yuv420p"
        for i, frame in enumerate(inp.decode(video=0)):
            if i == 40:
                break
            for pkt in st.encode(frame.reformat(format="yuv420p")):
                out.mux(pkt)
        for pkt in st.encode():
            out.mux(pkt)
    data = buf.getvalue()
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    port = server.getsockname()[1]
    served: list[int] = []

    def serve() -> None:
        for k in range(2):  # the first connection drops half-way, the second sends it all, then nothing answers
            conn, _ = server.accept()
            served.append(k)
            with contextlib.suppress(OSError):
                conn.sendall(data if k else data[: len(data) // 2])
            conn.close()
        server.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    events = Events()
    frames = 0
    uri = f"tcp://127.0.0.1:{port}"
    src = PyAVSource(uri, reconnect_attempts=1, reconnect_backoff_s=0.0, open_timeout_s=2.0, on_event=events)
    with pytest.raises(SourceError, match=r"not back after 1 reconnect attempts"), src:
        for _ in src.frames():
            frames += 1
    thread.join(5)
    assert served == [0, 1]
    assert events.kinds() == ["stream_lost", "reconnect", "stream_restored", "stream_lost", "reconnect"]
    assert frames > 40  # frames of both connections were delivered before the end
