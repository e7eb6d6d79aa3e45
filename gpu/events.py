"""CUDA stream/event helpers of the GPU backends: enqueued work waited for on an event, and
ordering a stream after the caller's. CuPy is imported only inside the functions."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class EventPending:
    """Outputs of work enqueued on a CUDA stream; ``wait()`` blocks on the work's completion event
    (``None``: the work was already waited for) and returns the outputs, which the caller owns.

    The inputs are held until then: pool memory freed early could be reused by the caller's
    stream while the work still reads it.
    """

    __slots__ = ("_event", "_inputs", "_outputs")

    def __init__(self, outputs: dict[str, Any], event: Any, inputs: Mapping[str, Any]) -> None:
        self._outputs = outputs
        self._event = event
        self._inputs: Mapping[str, Any] | None = inputs

    def wait(self) -> dict[str, Any]:
        if self._event is not None:
            self._event.synchronize()
        self._inputs = None
        return self._outputs


def follow_caller(stream: Any) -> None:
    """Order the work enqueued next on ``stream`` after all the caller's current stream has
    enqueued so far (inputs written there), with an event: a wait on the GPU, not the host."""
    import cupy

    caller = cupy.cuda.get_current_stream()
    if caller.ptr != stream.ptr:
        stream.wait_event(caller.record())


def to_host(arr: Any) -> Any:
    """``arr`` (CuPy) copied to a NumPy array on the calling thread's current stream, waiting for
    that stream only (the branch's: never the device or the legacy default stream)."""
    import cupy

    stream = cupy.cuda.get_current_stream()
    out = arr.get(stream=stream)
    stream.synchronize()
    return out
