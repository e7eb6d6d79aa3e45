"""A model branch: preprocess -> inference -> decode, for one frame.

Implements ``pipeline.protocols.Branch``. The preprocessor matches the frame's device (NumPy
reference on the host, fused CuPy kernels on the GPU); results leave as host data.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from config.errors import ModelLoadError
from models.runner import ModelRunner, array_module
from pipeline.protocols import ModelAdapter, Preprocessor
from pipeline.types import BranchResult, DensityMap, Detections, Frame, PreprocessOutput

log = logging.getLogger("people_counter.inference")


def failed_result(branch: str, frame: Frame, timings: dict[str, float], exc: Exception) -> BranchResult:
    """The result of a branch that failed on one frame: logged with its traceback, and carried to
    fusion as ``error`` (the frame is still published; the next frame is tried again)."""
    log.exception("branch %s failed on frame %d", branch, frame.meta.frame_index)
    return BranchResult(
        frame=frame.meta, branch=branch, timings=timings, done_ts=time.perf_counter(),
        error=f"{type(exc).__name__}: {exc}",
    )


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
    ) -> None:
        self.name = name
        self.preprocessor = preprocessor
        self.runner = runner
        self.adapter = adapter
        self.every_n_frames = every_n_frames

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
            return failed_result(self.name, frame, timings, exc)
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


class RollingDensityBranch:
    """A density branch spread over ``period`` frames: on frame f it runs only the grid tiles
    ``i`` with ``i % period == f % period`` and returns the whole map stitched from the newest
    result of every tile.

    The GPU work per ``period`` frames is the same as running all tiles every ``period``-th
    frame, without the burst that makes every ``period``-th frame late (STRICT_SYNC waits for
    it). The price: the map mixes tiles up to ``period - 1`` frames old. Until every tile has run
    once (the first ``period - 1`` frames) the result has no map.

    It keeps the newest map of each tile between calls (the orchestrator calls ``run`` from one
    thread, in frame order); a new frame size starts the cache afresh.
    """

    def __init__(
        self,
        name: str,
        *,
        preprocessors: list[Preprocessor],
        whole_spec: Any,
        runner: ModelRunner,
        stride: int,
        density_scale: float = 1.0,
    ) -> None:
        self.name = name
        self.every_n_frames = 1
        self.period = len(preprocessors)
        self.preprocessors = preprocessors
        self.whole_spec = whole_spec
        self.runner = runner
        self.stride = stride
        self.density_scale = density_scale
        self._size: tuple[int, int] | None = None
        self._tiles: dict[int, Any] = {}

    def run(self, frame: Frame) -> BranchResult:
        from models.density import density_output, stitch_grid

        timings: dict[str, float] = {}
        size = (frame.meta.width, frame.meta.height)
        try:
            if size != self._size:
                self._size, self._tiles = size, {}
            t0 = time.perf_counter()
            pre = self.preprocessors[frame.meta.frame_index % self.period].run(frame)
            t1 = time.perf_counter()
            timings["preprocess_ms"] = (t1 - t0) * 1e3
            density = None
            whole = self.whole_spec.plan(*size)
            if pre.plan.count:
                # Every phase runs at the same batch (the largest phase), padding by repeating a
                # tile: ONNX Runtime's CUDA EP re-tunes cuDNN on every change of input shape
                # (measured on an H200: 500 ms a call with batches alternating 4 and 3, 7.6 ms at 4).
                batch = -(-whole.count // self.period)
                tensor = pre.tensor
                if tensor.shape[0] < batch:
                    xp = array_module(tensor)
                    tensor = xp.concatenate([tensor, xp.repeat(tensor[-1:], batch - tensor.shape[0], axis=0)])
                outputs, infer_t = self.runner.run(tensor)
                outputs = {k: v[: pre.plan.count] for k, v in outputs.items()}
                timings.update(infer_t)
                t2 = time.perf_counter()
                maps = density_output(outputs, pre.plan, self.stride) * np.float32(self.density_scale)
                assert pre.plan.indices is not None
                for i, m in zip(pre.plan.indices.tolist(), maps, strict=True):
                    self._tiles[i] = m
            else:
                t2 = time.perf_counter()
            if len(self._tiles) == whole.count:
                stacked = np.stack([self._tiles[i] for i in range(whole.count)])
                density = DensityMap(density=stitch_grid(stacked, whole, self.stride), stride=self.stride)
            timings["postprocess_ms"] = (time.perf_counter() - t2) * 1e3
        except ModelLoadError:
            raise
        except Exception as exc:
            return failed_result(self.name, frame, timings, exc)
        return BranchResult(frame=frame.meta, branch=self.name, density=density, timings=timings,
                            done_ts=time.perf_counter())

    def close(self) -> None:
        self.runner.backend.close()


class OneCallYoloBranch:
    """The global letterbox and the tiles of a frame through the model in ONE call (e.g. a batch
    of 1 + 32 = 33), then decoded per spec: one launch sequence instead of two, and the detector's
    batch fills the GPU better. The result holds both sets of detections (``source`` -1 for the
    global pass, else the tile index) and the tiles' rectangles, for the merge.

    ``prepare(frame)`` returns the specs' ``PreprocessOutput``s in batch order (one fused launch on
    the GPU).
    """

    def __init__(
        self,
        name: str,
        *,
        prepare: Callable[[Frame], list[PreprocessOutput]],
        runner: ModelRunner,
        adapter: ModelAdapter,
        every_n_frames: int = 1,
    ) -> None:
        self.name = name
        self.prepare = prepare
        self.runner = runner
        self.adapter = adapter
        self.every_n_frames = every_n_frames

    def run(self, frame: Frame) -> BranchResult:
        timings: dict[str, float] = {}
        try:
            t0 = time.perf_counter()
            pres = self.prepare(frame)
            xp = array_module(pres[0].tensor)
            tensor = xp.concatenate([p.tensor for p in pres]) if len(pres) > 1 else pres[0].tensor
            t1 = time.perf_counter()
            timings["preprocess_ms"] = (t1 - t0) * 1e3
            outputs, infer_t = self.runner.run(tensor)
            timings.update(infer_t)
            t2 = time.perf_counter()
            parts: list[Detections] = []
            rects = []
            start = 0
            for pre in pres:
                n = pre.plan.count
                part = {k: v[start : start + n] for k, v in outputs.items()}
                start += n
                dets = self.adapter.decode(part, pre)
                assert isinstance(dets, Detections)
                parts.append(dets)
                if pre.plan.kind != "letterbox":
                    rects.append(pre.plan.content_rects().astype(np.float32))
            timings["postprocess_ms"] = (time.perf_counter() - t2) * 1e3
        except ModelLoadError:
            raise
        except Exception as exc:
            return failed_result(self.name, frame, timings, exc)
        return BranchResult(
            frame=frame.meta,
            branch=self.name,
            detections=Detections.merge(parts),
            timings=timings,
            done_ts=time.perf_counter(),
            tile_rects=np.concatenate(rects) if rects else None,
        )

    def close(self) -> None:
        self.runner.backend.close()
