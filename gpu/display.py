"""The window's picture on the GPU path: a display-sized RGB copy of a GPU frame on the host.

NVDEC frames stay on the GPU; the window needs pixels. :class:`DisplayCopier` makes, per frame, an
RGB ``uint8`` host image of :func:`pipeline.geometry.display_size` (a 4K frame: 1280 x 720) with
the fused preprocessing kernel (a letterbox of the frame's own aspect, so no padding; the same
colour matrix as the models see, ``Frame.colour``), on its own CUDA stream, and copies it to the
host (2.7 MB a frame instead of 25 MB): one small wait on that stream only. The orchestrator calls
it on the worker thread, before the branches get the frame, and only while a window is open
(``Orchestrator(publish_images=True, display_copy=...)``). Its NumPy counterpart is the host
frame itself: the CPU path publishes its RGB frame, which the window scales the same way.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from gpu.events import to_host
from gpu.imports import require_cuda_device
from gpu.preprocess import GpuPreprocessor
from pipeline.geometry import DISPLAY_MAX_WH, display_size
from pipeline.preprocess import InputSpec
from pipeline.types import Frame

__all__ = ["DisplayCopier"]


class DisplayCopier:
    """``copier(frame) -> (h, w, 3) uint8`` host RGB of a GPU frame, at most ``max_wh``."""

    def __init__(self, max_wh: tuple[int, int] = DISPLAY_MAX_WH) -> None:
        self.max_wh = max_wh
        self._cp = require_cuda_device("the window's picture on the GPU path", "set backend.device: cpu")
        self._stream = self._cp.cuda.Stream(non_blocking=True)
        self._pre: dict[tuple[int, int], GpuPreprocessor] = {}

    def spec(self, frame_w: int, frame_h: int) -> InputSpec:
        """The preprocessing spec of the picture of a frame of this size (its CPU reference:
        ``NumpyPreprocessor(spec)`` on the host frame, times 255)."""
        w, h = display_size(frame_w, frame_h, self.max_wh)
        return InputSpec("display", "letterbox", w, h, dtype="float32", pad_value=0)

    def __call__(self, frame: Frame) -> NDArray[np.uint8]:
        key = (frame.meta.width, frame.meta.height)
        pre = self._pre.get(key)
        if pre is None:
            pre = self._pre[key] = GpuPreprocessor(self.spec(*key), stream=self._stream)
        cp: Any = self._cp
        with self._stream:
            t = pre.run(frame).tensor[0]  # (3, h, w) float32 in 0..1
            img = cp.ascontiguousarray(cp.clip(t * 255.0 + 0.5, 0, 255).astype(cp.uint8).transpose(1, 2, 0))
            out: NDArray[np.uint8] = to_host(img)
        return out
