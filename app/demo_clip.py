"""Build the 4K demo clip: a mosaic of OpenCV's ``vtest.avi`` at native scale, HEVC-encoded.

vtest is 768x576 (10 fps, 795 frames, a pedestrian street seen from above). Tiling it 5 x 4 at native
scale fills 3840 x 2160 (the fourth row is cropped by the frame edge at 432 rows). People are then
~100 px tall in 2160 rows: a single 640x640 letterbox pass over the whole frame (scale 1/6) misses
many of them, while 640x640 tiles at native scale find them. That contrast is what the demo shows.

Each cell plays vtest from a different start frame (wrapping at the end), so cells differ. Pixels
are pasted in yuv420p, the decoder's native format, so there is no colour conversion on the way.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable, Generator
from fractions import Fraction
from pathlib import Path
from typing import Literal

import av
import numpy as np
from numpy.typing import NDArray

__all__ = ["build_mosaic_clip"]

_ENCODERS: dict[str, str] = {"hevc": "libx265", "h264": "libx264"}


def _yuv420_planes(frame: av.VideoFrame) -> tuple[NDArray[np.uint8], ...]:
    """(Y ``[h, w]``, U ``[h/2, w/2]``, V ``[h/2, w/2]``) uint8, views of one fresh array (stride removed)."""
    if frame.format.name != "yuv420p":
        frame = frame.reformat(format="yuv420p")
    yuv = np.asarray(frame.to_ndarray(), dtype=np.uint8)  # [h*3/2, w]: Y, then U and V each as h/4 rows of width w
    h, w = frame.height, frame.width
    u = yuv[h : h + h // 4].reshape(h // 2, w // 2)
    v = yuv[h + h // 4 :].reshape(h // 2, w // 2)
    return yuv[:h], u, v


def _count_frames(path: Path) -> int:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        if stream.frames:
            return int(stream.frames)
        return sum(1 for _ in container.decode(stream))


def _frame_index_fn(stream: av.VideoStream) -> Callable[[av.VideoFrame], int]:
    """Map a decoded frame to its index from its pts (vtest: time base 1/10, pts == index)."""
    rate = stream.average_rate
    tb = stream.time_base
    if rate is None or tb is None:
        counter = iter(range(1 << 62))
        return lambda _frame: next(counter)
    return lambda frame: round((frame.pts or 0) * tb * rate)


def _cell_frames(path: Path, start: int) -> Generator[tuple[NDArray[np.uint8], ...], None, None]:
    """Endless yuv420p planes of ``path`` from frame index ``start``, looping at the end."""
    first = True
    while True:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            skip = start if first else 0
            if skip and stream.time_base is not None and stream.average_rate:
                # Seek lands on the keyframe at or before the target; decode forward from there.
                target_pts = int(skip / (stream.average_rate * stream.time_base))
                container.seek(target_pts, stream=stream, backward=True)
            index_of = _frame_index_fn(stream)
            produced = False
            for frame in container.decode(stream):
                if first and index_of(frame) < skip:
                    continue
                produced = True
                yield _yuv420_planes(frame)
            if not produced:
                raise ValueError(f"{path}: no frames decoded from frame {skip}")
        first = False


def build_mosaic_clip(
    vtest: Path,
    out: Path,
    *,
    width: int = 3840,
    height: int = 2160,
    frames: int = 120,
    fps: int = 30,
    codec: Literal["hevc", "h264"] = "hevc",
    crf: int = 28,
    preset: str = "superfast",
    gop: int = 30,
) -> Path:
    """Encode a ``width`` x ``height`` mosaic of ``vtest`` cells at native scale to ``out``.

    Cells are laid out left to right, top to bottom; the last column/row is cropped by the frame
    edge. Cell ``i`` starts at source frame ``i * n_src // n_cells`` and loops. ``fps`` is the
    rate written into the file (vtest itself is 10 fps; 30 fps paces the demo like a 4K camera).
    Output: yuv420p, ``codec`` via libx265/libx264 with ``crf``/``preset``, keyframe every ``gop``
    frames; container from the suffix (``.mp4`` gets the ``hvc1`` tag for HEVC, ``.mkv`` also works).
    Written to a temporary name beside ``out`` and renamed. Returns ``out``.
    """
    if codec not in _ENCODERS:
        raise ValueError(f"codec must be one of {sorted(_ENCODERS)}, got {codec!r}")
    if width % 2 or height % 2 or width <= 0 or height <= 0:
        raise ValueError(f"width and height must be positive and even (yuv420p), got {width}x{height}")
    if frames <= 0:
        raise ValueError(f"frames must be positive, got {frames}")

    with av.open(str(vtest)) as probe:
        cell_w = probe.streams.video[0].codec_context.width
        cell_h = probe.streams.video[0].codec_context.height
    if cell_w % 2 or cell_h % 2:
        raise ValueError(f"{vtest}: source size {cell_w}x{cell_h} must be even for yuv420p pasting")
    n_src = _count_frames(vtest)
    cols, rows = math.ceil(width / cell_w), math.ceil(height / cell_h)
    n_cells = cols * rows
    readers = [_cell_frames(vtest, i * n_src // n_cells) for i in range(n_cells)]

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.tmp{out.suffix}")
    y = np.empty((height, width), dtype=np.uint8)
    u = np.empty((height // 2, width // 2), dtype=np.uint8)
    v = np.empty((height // 2, width // 2), dtype=np.uint8)
    try:
        with av.open(str(tmp), mode="w") as container:
            stream = container.add_stream(_ENCODERS[codec], rate=Fraction(fps))
            assert isinstance(stream, av.VideoStream)
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            if codec == "hevc":
                # Quiet x265's banner; fixed GOP, no scene-cut keyframes, so seeks are predictable.
                stream.options = {
                    "crf": str(crf),
                    "preset": preset,
                    "x265-params": f"log-level=error:keyint={gop}:min-keyint={gop}:scenecut=0",
                }
                if out.suffix.lower() in {".mp4", ".mov"}:
                    stream.codec_context.codec_tag = "hvc1"  # so Apple/Qt players accept it
            else:
                stream.options = {"crf": str(crf), "preset": preset, "g": str(gop), "sc_threshold": "0"}
            for _ in range(frames):
                for i, reader in enumerate(readers):
                    r, c = divmod(i, cols)
                    y0, x0 = r * cell_h, c * cell_w
                    h, w = min(cell_h, height - y0), min(cell_w, width - x0)
                    cy, cu, cv = next(reader)
                    y[y0 : y0 + h, x0 : x0 + w] = cy[:h, :w]
                    u[y0 // 2 : (y0 + h) // 2, x0 // 2 : (x0 + w) // 2] = cu[: h // 2, : w // 2]
                    v[y0 // 2 : (y0 + h) // 2, x0 // 2 : (x0 + w) // 2] = cv[: h // 2, : w // 2]
                packed = np.concatenate([y, u.reshape(height // 4, width), v.reshape(height // 4, width)], axis=0)
                frame = av.VideoFrame.from_ndarray(packed, format="yuv420p")
                container.mux(stream.encode(frame))
            container.mux(stream.encode(None))
        tmp.replace(out)
    finally:
        for reader in readers:
            reader.close()
        tmp.unlink(missing_ok=True)
    return out


def main(argv: list[str] | None = None) -> None:
    """``python -m app.demo_clip VTEST OUT [--width W --height H --frames N --codec hevc|h264]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("vtest", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--width", type=int, default=3840)
    parser.add_argument("--height", type=int, default=2160)
    parser.add_argument("--frames", type=int, default=120)
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--codec", choices=sorted(_ENCODERS), default="hevc")
    parser.add_argument("--crf", type=int, default=28)
    parser.add_argument("--preset", default="superfast")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    path = build_mosaic_clip(
        args.vtest, args.out, width=args.width, height=args.height, frames=args.frames,
        fps=args.fps, codec=args.codec, crf=args.crf, preset=args.preset,
    )  # fmt: skip
    size_mb = path.stat().st_size / 1e6
    print(f"{path}: {size_mb:.1f} MB in {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
