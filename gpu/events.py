"""Enqueued GPU work and its outputs, waited for on a CUDA event (no CUDA import here)."""

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
