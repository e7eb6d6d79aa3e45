"""The interfaces between stages, as ``typing.Protocol``s (one verb each)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol, runtime_checkable

from pipeline.types import (
    BranchResult,
    CountResult,
    DensityMap,
    Detections,
    Frame,
    FrameMeta,
    FusedResult,
    MetadataRecord,
    PreprocessOutput,
    TrackingRecord,
    WorkRecord,
)

CombineFn = Callable[
    [Mapping[str, BranchResult], FrameMeta, Mapping[str, str]], tuple[Detections, DensityMap | None, CountResult]
]
"""``combine(results, frame, missing) -> (detections, density, counts)``: the counting of one result set.

``results`` maps branch name to the result used (possibly computed on an earlier frame, for a
branch that runs every n-th frame: see :mod:`pipeline.fusion`); ``frame`` is the frame being
finalized; ``missing`` maps each branch whose result is absent to why (``late``, ``dropped (queue
full)``, ``failed: ...``, ``warming up``, ``stale: ...``). The counts are unknown (with a reason)
when a missing branch is one the count needs. Fusion knows no model; the counter of
:mod:`pipeline.frame_counter` is the one implementation.
"""


MergeFn = Callable[[Mapping[str, BranchResult], FrameMeta], tuple[Detections, DensityMap | None]]
"""``merge(results, frame) -> (detections, density)``: what the window draws of a set of results,
without counting (ASYNC_OVERLAY's overlays of each branch's newest result). Stateless; the counter's
``merge`` method. Counting (``CombineFn``) happens once per finalized frame, in frame order, so a
counter may keep state over time (tracks, calibration)."""


@runtime_checkable
class FrameSource(Protocol):
    """Yields decoded frames; a context manager that owns the decoder.

    ``frames()`` raises ``SourceError`` for a source that cannot be opened or read; a stream that
    ends returns. A GPU source's frame memory is valid until the next frame is requested plus the
    ring depth (see the source's docs).
    """

    def __enter__(self) -> FrameSource: ...

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None: ...

    def frames(self) -> Iterator[Frame]: ...


class Preprocessor(Protocol):
    """Frame -> one model input tensor (N, 3, H, W) on the frame's device."""

    def run(self, frame: Frame) -> PreprocessOutput: ...


@dataclass(frozen=True, slots=True)
class TensorInfo:
    """A model input or output: name, shape (None for a dynamic dimension), NumPy dtype name."""

    name: str
    shape: tuple[int | None, ...]
    dtype: str


class PendingOutputs(Protocol):
    """Inference that was enqueued; ``wait()`` blocks until its outputs are ready."""

    def wait(self) -> dict[str, Any]: ...


class InferenceBackend(Protocol):
    """Runs one model. Inputs and outputs live on the backend's device (NumPy or CuPy arrays).

    ``enqueue`` returns at once on asynchronous backends (GPU) and after the work on blocking ones
    (ONNX Runtime CPU). Output arrays belong to the caller after ``wait()`` returns, except where a
    backend documents reused output buffers.
    """

    name: str
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]

    def enqueue(self, inputs: Mapping[str, Any]) -> PendingOutputs: ...

    def close(self) -> None: ...


class ModelAdapter(Protocol):
    """Raw outputs of one model on one preprocessed input -> results in frame pixels."""

    def decode(self, outputs: Mapping[str, Any], pre: PreprocessOutput) -> Detections | DensityMap: ...


class Branch(Protocol):
    """One model branch: preprocess, infer, decode. ``run`` never raises for a bad frame: it
    returns a ``BranchResult`` with ``error`` set; it raises only for unrecoverable faults.

    A GPU frame's ring slot is leased (``Frame.lease``): a branch that was handed the frame
    releases it exactly once after its last read of the pixels (``models.branch.run_branch``
    does, after preprocessing, with an event on the branch's stream)."""

    name: str
    every_n_frames: int

    def run(self, frame: Frame) -> BranchResult: ...

    def cancel(self) -> None:
        """End a ``run`` in progress on another thread as soon as the backend allows (a stop);
        that ``run`` then returns a failed result or raises. Safe from any thread. A cancelled
        branch stays cancelled until :meth:`resume`."""
        ...

    def resume(self) -> None:
        """Undo :meth:`cancel`: the orchestrator calls it when a run starts (a bench reuses its
        branches run after run)."""
        ...

    def close(self) -> None: ...


class Sink(Protocol):
    """Consumes published results (SQLite writer, UI bridge, metadata stream)."""

    def write(self, result: FusedResult) -> None: ...

    def close(self) -> None: ...


@runtime_checkable
class MetadataSink(Protocol):
    """A sink that also takes RAW_STREAM_WITH_METADATA metadata records (optional)."""

    def write_metadata(self, record: MetadataRecord) -> None: ...


@runtime_checkable
class WorkSink(Protocol):
    """A sink that also takes branch work no publication reported (optional; see
    :class:`~pipeline.types.WorkRecord`): the SQLite writer stores it, summaries count it."""

    def write_work(self, record: WorkRecord) -> None: ...


@runtime_checkable
class TrackingSink(Protocol):
    """A sink that also takes each finalized frame's tracking (optional; see
    :class:`~pipeline.types.TrackingRecord`): the SQLite writer stores crossings and zone visits."""

    def write_tracking(self, record: TrackingRecord) -> None: ...


@runtime_checkable
class EventSink(Protocol):
    """A sink that also records pipeline events (optional; the SQLite writer is one).

    Kinds include ``strategy_switch``, ``drop``, ``stall``, ``stall_end``, ``error`` and the
    sources' stream events; ``frame_index`` is the frame the event concerns, ``data`` its details.
    """

    def event(
        self, kind: str, message: str, frame_index: int | None = None, data: Mapping[str, Any] | None = None
    ) -> None: ...
