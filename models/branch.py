"""A model branch: preprocess -> inference -> decode, for one frame.

Implements ``pipeline.protocols.Branch``. The preprocessor matches the frame's device (NumPy
reference on the host, fused CuPy kernels on the GPU); results leave as host data.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from models.runner import ModelRunner
from pipeline.errors import ModelLoadError
from pipeline.protocols import ModelAdapter, Preprocessor
from pipeline.types import BranchResult, DensityMap, Detections, Frame

log = logging.getLogger("people_counter.inference")


class ModelBranch:
    """``run(frame) -> BranchResult``. Errors of one frame become ``BranchResult.error``;
    a ``ModelLoadError`` (wrong model outputs) is raised: it will not get better next frame."""

    def __init__(
        self,
        name: str,
        *,
        preprocessor: Preprocessor,
        runner: ModelRunner,
        adapter: ModelAdapter,
        every_n_frames: int = 1,
        spec_kind: str = "letterbox",
    ) -> None:
        self.name = name
        self.preprocessor = preprocessor
        self.runner = runner
        self.adapter = adapter
        self.every_n_frames = every_n_frames
        self.spec_kind = spec_kind

    def run(self, frame: Frame) -> BranchResult:
        timings: dict[str, float] = {}
        try:
            t0 = time.perf_counter()
            pre = self.preprocessor.run(frame)
            t1 = time.perf_counter()
            timings["preprocess_ms"] = (t1 - t0) * 1e3
            outputs, infer_t = self.runner.run(pre.tensor)
            timings.update(infer_t)
            t2 = time.perf_counter()
            result: Any = self.adapter.decode(outputs, pre)
            t3 = time.perf_counter()
            timings["postprocess_ms"] = (t3 - t2) * 1e3
        except ModelLoadError:
            raise
        except Exception as exc:
            log.exception("branch %s failed on frame %d", self.name, frame.meta.frame_index)
            return BranchResult(
                frame=frame.meta,
                branch=self.name,
                timings=timings,
                done_ts=time.perf_counter(),
                error=f"{type(exc).__name__}: {exc}",
            )
        tile_rects = None
        if pre.plan.kind != "letterbox":
            tile_rects = pre.plan.content_rects().astype(np.float32)
        return BranchResult(
            frame=frame.meta,
            branch=self.name,
            detections=result if isinstance(result, Detections) else None,
            density=result if isinstance(result, DensityMap) else None,
            timings=timings,
            done_ts=time.perf_counter(),
            tile_rects=tile_rects,
        )

    def close(self) -> None:
        self.runner.backend.close()
