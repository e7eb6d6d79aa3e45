"""A model branch: preprocess -> inference -> decode, for one frame.

Implements ``pipeline.protocols.Branch``. The preprocessor matches the frame's device (NumPy
reference on the host, fused CuPy kernels on the GPU); results leave as host data.

Threads, streams and events (GPU path). The decode thread (``pc-worker``) owns the NVDEC
source's stream: the decoded surface is copied into a ring slot on it, and the source waits for
that stream (host, its own stream only) before it yields the frame. Each branch thread
(``pc-branch-<name>``) owns one stream, its backend's (``backend.stream``: the ORT CUDA binding's
``user_compute_stream`` or the TensorRT context's), and :func:`run_branch` runs the branch's whole
body under it (``with stream:`` sets CuPy's current stream for the calling thread), so
preprocessing, casts, batching, the model, and GPU post-processing are all enqueued on that one
stream in order, with no event between them and no other stream involved; branches overlap on
the GPU because their streams are independent. Events order work across streams at two points:
each branch records one on its stream after its last read of the frame (preprocessing) and
hands it to the frame's ring slot (``lease.release(stream)``), and the decoder's stream waits on
those events (GPU-side) before it writes that slot again; a slot a branch still holds (it has
not even started) is never written: the decoder drops that frame instead. The host waits in
three places only, each on one stream or event: the decode thread on its own stream (above), a
branch on the event recorded after its model (``PendingOutputs.wait``: ``stream_sync_ms``), and
a branch on its own stream before each small device-to-host copy of post-processing
(:func:`gpu.events.to_host`). Nothing on this path synchronises the device or the legacy
default stream.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import KW_ONLY, dataclass
from typing import Any, TypeVar, cast

import numpy as np
from numpy.typing import NDArray

from config.errors import ModelLoadError
from models.runner import ModelRunner, array_module
from pipeline.geometry import PreprocessPlan
from pipeline.protocols import ModelAdapter, Preprocessor
from pipeline.types import BranchResult, DensityMap, Detections, Frame, PreprocessOutput

log = logging.getLogger("people_counter.inference")


def failed_result(branch: str, frame: Frame, timings: dict[str, float], exc: Exception) -> BranchResult:
    """The result of a branch that failed on one frame: logged with its traceback, and carried to
    fusion as ``error`` (the frame is still published; the next frame is tried again)."""
    if "terminate flag" in str(exc):  # cancelled by a stop (ONNX Runtime's RunOptions.terminate)
        log.info("branch %s: run on frame %d cancelled (stopping)", branch, frame.meta.frame_index)
    else:
        log.exception("branch %s failed on frame %d", branch, frame.meta.frame_index)
    return BranchResult(
        frame=frame.meta, branch=branch, timings=timings, done_ts=time.perf_counter(),
        error=f"{type(exc).__name__}: {exc}",
    )


@dataclass(frozen=True, slots=True)
class Decoded:
    """What a branch decoded from one frame's outputs: host data, frame pixels."""

    detections: Detections | None = None
    density: DensityMap | None = None
    tile_rects: NDArray[np.float32] | None = None
    """(T, 4) float32 xyxy frame rectangles of the tiles the detections came from, for the merge."""


P = TypeVar("P")


def release_frame(frame: Frame, stream: Any) -> None:
    """A branch is done reading ``frame``: give back its hold on the frame's GPU ring slot, with
    an event on ``stream`` (the branch's; None: CuPy's current stream of this thread). Nothing to
    do for a host frame, or a frame nobody handed over with a hold (a warm-up run, a test): its
    reader reads it before the source decodes the next."""
    lease = frame.lease
    if lease is None or not lease.managed:
        return
    if stream is None and frame.device == "gpu":
        import cupy

        stream = cupy.cuda.get_current_stream()
    lease.release(stream)


def _on_stream(stream: Any) -> AbstractContextManager[Any]:
    """``with`` this: the calling thread's CuPy current stream is ``stream`` (None: unchanged)."""
    return nullcontext() if stream is None else cast(AbstractContextManager[Any], stream)


def run_branch(
    name: str,
    frame: Frame,
    prepare: Callable[[Frame], P],
    infer: Callable[[P], tuple[dict[str, Any], dict[str, float]]],
    decode: Callable[[P, dict[str, Any]], Decoded],
    *,
    stream: Any = None,
) -> BranchResult:
    """The one skeleton of every branch: ``prepare`` (timed as ``preprocess_ms``), ``infer``
    (returns outputs and its own timings, see :meth:`models.runner.ModelRunner.run`), ``decode``
    (timed as ``postprocess_ms``), all under ``stream`` (the branch's CUDA stream, None on the
    CPU; see the module docstring).

    ``prepare`` is the only step that reads the frame's pixels: right after it (also when it
    fails) the frame's ring slot is released (:func:`release_frame`), with an event on ``stream``.

    An error of one frame becomes ``BranchResult.error`` (:func:`failed_result`, with the timings
    so far); a ``ModelLoadError`` (outputs the adapter cannot decode) is raised: it will not get
    better next frame.
    """
    timings: dict[str, float] = {}
    try:
        with _on_stream(stream):
            t0 = time.perf_counter()
            try:
                prepared = prepare(frame)
            finally:
                release_frame(frame, stream)
            timings["preprocess_ms"] = (time.perf_counter() - t0) * 1e3
            outputs, infer_t = infer(prepared)
            timings.update(infer_t)
            t2 = time.perf_counter()
            decoded = decode(prepared, outputs)
            timings["postprocess_ms"] = (time.perf_counter() - t2) * 1e3
    except ModelLoadError:
        raise
    except Exception as exc:
        return failed_result(name, frame, timings, exc)
    return BranchResult(
        frame=frame.meta, branch=name, detections=decoded.detections, density=decoded.density,
        timings=timings, done_ts=time.perf_counter(), tile_rects=decoded.tile_rects,
    )  # fmt: skip


def _tile_rects(pre: PreprocessOutput) -> NDArray[np.float32] | None:
    """The tiles' content rectangles of a tiled plan; None for a letterbox."""
    return None if pre.plan.kind == "letterbox" else pre.plan.content_rects().astype(np.float32)


def cancel_backend(backend: Any) -> None:
    """Ask a backend to end its model run in progress (a stop), where it can: ONNX Runtime CPU runs
    take seconds at 4K; GPU calls take milliseconds and need no cancel."""
    cancel = getattr(backend, "cancel", None)
    if cancel is not None:
        cancel()


def resume_backend(backend: Any) -> None:
    """Undo :func:`cancel_backend` before a new run reuses the backend."""
    resume = getattr(backend, "resume", None)
    if resume is not None:
        resume()


@dataclass(eq=False, slots=True)
class ModelBranch:
    """``run(frame) -> BranchResult`` for one input spec and one adapter (detections or density).
    Errors: see :func:`run_branch`."""

    name: str
    _: KW_ONLY
    preprocessor: Preprocessor
    runner: ModelRunner
    adapter: ModelAdapter
    every_n_frames: int = 1

    def run(self, frame: Frame) -> BranchResult:
        return run_branch(self.name, frame, self.preprocessor.run, self._infer, self._decode, stream=self.runner.stream)

    def _infer(self, pre: PreprocessOutput) -> tuple[dict[str, Any], dict[str, float]]:
        return self.runner.run(pre.tensor)

    def _decode(self, pre: PreprocessOutput, outputs: dict[str, Any]) -> Decoded:
        result = self.adapter.decode(outputs, pre)
        if isinstance(result, DensityMap):
            return Decoded(density=result, tile_rects=_tile_rects(pre))
        return Decoded(detections=result, tile_rects=_tile_rects(pre))

    def cancel(self) -> None:
        cancel_backend(self.runner.backend)

    def resume(self) -> None:
        resume_backend(self.runner.backend)

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

    Like :class:`models.density.DensityAdapter` it measures each cell's contrast (flat cells are
    zeroed by the calibration) and puts an upscaled grid's map on frame cells
    (:func:`models.density.grid_density`).

    It keeps the newest map and contrast of each tile between calls (the orchestrator calls ``run`` from one
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
        return run_branch(self.name, frame, self._prepare, self._infer, self._decode, stream=self.runner.stream)

    def _prepare(self, frame: Frame) -> tuple[PreprocessOutput, PreprocessPlan]:
        size = (frame.meta.width, frame.meta.height)
        if size != self._size:
            self._size, self._tiles = size, {}
        pre = self.preprocessors[frame.meta.frame_index % self.period].run(frame)
        return pre, self.whole_spec.plan(*size)

    def _infer(self, prepared: tuple[PreprocessOutput, PreprocessPlan]) -> tuple[dict[str, Any], dict[str, float]]:
        pre, whole = prepared
        if not pre.plan.count:
            return {}, {}
        # Every phase runs at the same batch (the largest phase), padding by repeating a tile:
        # ONNX Runtime's CUDA EP re-tunes cuDNN on every change of input shape (measured on an
        # H200: 500 ms a call with batches alternating 4 and 3, 7.6 ms at 4).
        batch = -(-whole.count // self.period)
        tensor = pre.tensor
        if tensor.shape[0] < batch:
            xp = array_module(tensor)
            tensor = xp.concatenate([tensor, xp.repeat(tensor[-1:], batch - tensor.shape[0], axis=0)])
        outputs, timings = self.runner.run(tensor)
        return {k: v[: pre.plan.count] for k, v in outputs.items()}, timings

    def _decode(self, prepared: tuple[PreprocessOutput, PreprocessPlan], outputs: dict[str, Any]) -> Decoded:
        from models.density import cell_contrast, density_output, grid_density

        pre, whole = prepared
        if pre.plan.count:
            maps = density_output(outputs, pre.plan, self.stride) * np.float32(self.density_scale)
            # the contrast of the tiles this frame ran, from the tensor the model saw, as the
            # DensityAdapter measures it: the calibration zeroes flat cells on either branch
            contrast = cell_contrast(pre.tensor, self.stride, tuple(self.whole_spec.std))
            assert pre.plan.indices is not None
            for i, m, c in zip(pre.plan.indices.tolist(), maps, contrast, strict=True):
                self._tiles[i] = (m, c)
        if len(self._tiles) != whole.count:
            return Decoded()
        maps_all = np.stack([self._tiles[i][0] for i in range(whole.count)])
        contrast_all = np.stack([self._tiles[i][1] for i in range(whole.count)])
        return Decoded(density=grid_density(maps_all, whole, self.stride, contrast_all))

    def cancel(self) -> None:
        cancel_backend(self.runner.backend)

    def resume(self) -> None:
        resume_backend(self.runner.backend)

    def close(self) -> None:
        self.runner.backend.close()


@dataclass(eq=False, slots=True)
class OneCallYoloBranch:
    """The global letterbox and the tiles of a frame through the model in ONE call (e.g. a batch
    of 1 + 32 = 33), then decoded per spec: one launch sequence instead of two, and the detector's
    batch fills the GPU better. The result holds both sets of detections (``source`` -1 for the
    global pass, else the tile index) and the tiles' rectangles, for the merge.

    ``prepare(frame)`` returns the specs' ``PreprocessOutput``s in batch order (one fused launch on
    the GPU).
    """

    name: str
    _: KW_ONLY
    prepare: Callable[[Frame], list[PreprocessOutput]]
    runner: ModelRunner
    adapter: ModelAdapter
    every_n_frames: int = 1

    def run(self, frame: Frame) -> BranchResult:
        return run_branch(self.name, frame, self._prepare, self._infer, self._decode, stream=self.runner.stream)

    def _prepare(self, frame: Frame) -> tuple[list[PreprocessOutput], Any]:
        """The specs' outputs and their tensors as one batch."""
        pres = self.prepare(frame)
        xp = array_module(pres[0].tensor)
        return pres, (xp.concatenate([p.tensor for p in pres]) if len(pres) > 1 else pres[0].tensor)

    def _infer(self, prepared: tuple[list[PreprocessOutput], Any]) -> tuple[dict[str, Any], dict[str, float]]:
        return self.runner.run(prepared[1])

    def _decode(self, prepared: tuple[list[PreprocessOutput], Any], outputs: dict[str, Any]) -> Decoded:
        parts: list[Detections] = []
        rects = []
        start = 0
        for pre in prepared[0]:
            n = pre.plan.count
            dets = self.adapter.decode({k: v[start : start + n] for k, v in outputs.items()}, pre)
            start += n
            assert isinstance(dets, Detections)
            parts.append(dets)
            r = _tile_rects(pre)
            if r is not None:
                rects.append(r)
        return Decoded(detections=Detections.merge(parts), tile_rects=np.concatenate(rects) if rects else None)

    def cancel(self) -> None:
        cancel_backend(self.runner.backend)

    def resume(self) -> None:
        resume_backend(self.runner.backend)

    def close(self) -> None:
        self.runner.backend.close()
