"""A synthetic frame source for tests and benches: real RGB host frames with a moving pattern.

Frame ``i`` is a horizontal gradient with a bright square moving one step right (wrapping) and a
darker bar moving down, so consecutive frames differ and a frame's content depends only on ``i``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from types import TracebackType

import numpy as np
from numpy.typing import NDArray

from config.errors import SourceError
from pipeline.types import Frame, FrameMeta

_URI = re.compile(r"^synthetic://(\d+)x(\d+)(?:\?(.*))?$")


def synthetic_image(index: int, width: int, height: int) -> NDArray[np.uint8]:
    """The (H, W, 3) uint8 RGB image of frame ``index``."""
    x = np.linspace(0, 160, width, dtype=np.float32)
    img = np.empty((height, width, 3), np.uint8)
    img[:] = x.astype(np.uint8)[None, :, None]
    side = max(1, min(width, height) // 4)
    x0 = (index * max(1, width // 32)) % max(1, width - side + 1)
    y0 = (height - side) // 2
    img[y0 : y0 + side, x0 : x0 + side] = (250, 240, 200)
    bar = (index * max(1, height // 24)) % height
    img[bar : bar + max(1, height // 16), :, 1] = 30
    return img


class SyntheticSource:
    """Yields ``frames`` RGB host frames of ``width`` x ``height`` (None: without end).

    ``fps`` paces the frames in real time (``pts = i / fps``); None yields them as fast as possible
    (``pts`` then uses a nominal 30 fps). ``decode_ts`` is ``perf_counter()`` when the frame is
    made. Implements :class:`~pipeline.protocols.FrameSource`; ``frames()`` may be called once per
    ``with`` block.
    """

    def __init__(
        self,
        width: int = 64,
        height: int = 48,
        frames: int | None = 100,
        fps: float | None = None,
        *,
        stream_id: str = "synthetic",
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if width <= 0 or height <= 0:
            raise ValueError(f"SyntheticSource: expected a positive size, got {width}x{height}")
        if fps is not None and fps <= 0:
            raise ValueError(f"SyntheticSource: fps must be positive, got {fps}")
        self.width = width
        self.height = height
        self.frame_count = frames
        self.fps = fps
        self.stream_id = stream_id
        self._sleep = sleep
        self._open = False

    @classmethod
    def from_uri(cls, uri: str, *, stream_id: str = "synthetic", fps: float | None = None) -> SyntheticSource:
        """``synthetic://WxH[?frames=N][&fps=F]``; SourceError for anything else."""
        m = _URI.match(uri)
        if m is None:
            raise SourceError(f"{uri}: not a synthetic source URI (expected synthetic://WxH[?frames=N][&fps=F])")
        params: dict[str, str] = {}
        for part in filter(None, (m.group(3) or "").split("&")):
            key, _, value = part.partition("=")
            params[key] = value
        unknown = set(params) - {"frames", "fps"}
        if unknown:
            raise SourceError(f"{uri}: unknown parameter(s) {sorted(unknown)}; known: frames, fps")
        try:
            frames = int(params["frames"]) if "frames" in params else None
            fps = float(params["fps"]) if "fps" in params else fps
            return cls(int(m.group(1)), int(m.group(2)), frames, fps, stream_id=stream_id)
        except ValueError as exc:
            raise SourceError(f"{uri}: {exc}") from None

    def __enter__(self) -> SyntheticSource:
        self._open = True
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._open = False

    def frames(self) -> Iterator[Frame]:
        """Yield the frames; SourceError when the source is not open."""
        if not self._open:
            raise SourceError("SyntheticSource: use it as a context manager before reading frames")
        period = None if self.fps is None else 1.0 / self.fps
        start = time.perf_counter()
        i = 0
        while self.frame_count is None or i < self.frame_count:
            if period is not None:
                wait = start + i * period - time.perf_counter()
                if wait > 0:
                    self._sleep(wait)
            image = synthetic_image(i, self.width, self.height)
            meta = FrameMeta(
                stream_id=self.stream_id,
                frame_index=i,
                pts=i * (period if period is not None else 1.0 / 30.0),
                decode_ts=time.perf_counter(),
                width=self.width,
                height=self.height,
            )
            yield Frame(meta, image)
            i += 1
