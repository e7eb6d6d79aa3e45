"""A ring of preallocated GPU frame slots, leased to the readers of each frame; never reallocated.

The NVDEC source copies each decoded surface (the decoder reuses its own surfaces) into a free
slot and hands the frame out with the slot's :class:`SlotLease` (``Frame.lease``):

- whoever hands the frame to n readers calls ``lease.hold(n)`` first (the orchestrator's submit
  policy, for the branches that took the frame);
- each reader calls ``lease.release(stream)`` once, after its last read, with the CUDA stream its
  reads were enqueued on: an event is recorded there (``None``: nothing was read, no event);
- :meth:`FrameRing.acquire` gives out a slot only when its lease has no hold left, and makes the
  writer's stream wait (on the GPU, not the host) for the readers' events; when every slot is
  still held it returns None and the source drops the decoded frame (counted) instead of
  overwriting pixels a reader has not read yet.

A frame nobody holds (a consumer outside the orchestrator: a test, a warm-up) is read before the
next frame is asked for; its slot is written again when the ring comes round to it, at the
earliest ``depth`` frames later.

Only ``FrameRing`` needs CuPy (imported in its constructor); ``SlotLease`` is plain bookkeeping
that calls ``stream.record()`` on the stream it is given.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import cupy


class LeaseError(RuntimeError):
    """A lease released more often than it was held (a reader released twice, or one that was
    never handed the frame)."""


class SlotLease:
    """The readers' hold on one ring slot for one frame (see the module docstring). Thread-safe:
    branch threads release while the decode thread reads :attr:`held`."""

    __slots__ = ("_events", "_held", "_lock", "_managed", "slot")

    def __init__(self, slot: int) -> None:
        self.slot = slot
        self._lock = threading.Lock()
        self._held = 0
        self._managed = False
        self._events: list[Any] = []

    def hold(self, n: int = 1) -> None:
        """Add ``n`` readers, before the frame is handed to them."""
        if n < 0:
            raise ValueError(f"SlotLease.hold: n must be >= 0, got {n}")
        with self._lock:
            self._held += n
            self._managed = True

    def release(self, stream: Any = None) -> None:
        """One reader is done reading: its reads so far on ``stream`` (a CUDA stream; None when it
        read nothing) are the last before the slot is written again. LeaseError when no hold is
        left."""
        event = stream.record() if stream is not None else None
        with self._lock:
            if self._held <= 0:
                raise LeaseError(f"ring slot {self.slot}: released more often than held")
            if event is not None:
                self._events.append(event)
            self._held -= 1

    @property
    def held(self) -> int:
        """Readers that have not released yet."""
        with self._lock:
            return self._held

    @property
    def managed(self) -> bool:
        """Whether the frame was ever handed over with :meth:`hold` (its readers must release)."""
        with self._lock:
            return self._managed

    @property
    def events(self) -> tuple[Any, ...]:
        """The events recorded by the readers that released (the next writer waits on them)."""
        with self._lock:
            return tuple(self._events)


class FrameRing:
    """``depth`` device buffers of ``shape`` (uint8), leased out by :meth:`acquire`."""

    def __init__(self, shape: tuple[int, ...], depth: int = 8, dtype: str = "uint8", device_id: int = 0) -> None:
        import cupy

        if depth < 2:
            raise ValueError(f"ring depth must be at least 2, got {depth}")
        self.shape = tuple(shape)
        self.depth = depth
        with cupy.cuda.Device(device_id):
            # One allocation for all slots: the slots stay put for the ring's life.
            self._storage = cupy.empty((depth, *self.shape), dtype=dtype)
        self._leases: list[SlotLease | None] = [None] * depth
        self._next = 0
        self.acquired = 0
        """Slots handed out so far (frames written)."""
        self.refused = 0
        """Times :meth:`acquire` found every slot held (frames the source dropped)."""

    def slot(self, index: int) -> cupy.ndarray:
        """The buffer of slot ``index`` (a view; same memory every time)."""
        return self._storage[index]

    def acquire(self, writer: cupy.cuda.Stream) -> tuple[int, cupy.ndarray, SlotLease] | None:
        """The next slot no reader holds, to write on ``writer``, with the new frame's lease; the
        last readers' release events are waited for on the GPU. None when every slot is held."""
        for k in range(self.depth):
            index = (self._next + k) % self.depth
            old = self._leases[index]
            if old is None or old.held == 0:
                break
        else:
            self.refused += 1
            return None
        self._next = (index + 1) % self.depth
        if old is not None:
            for event in old.events:
                writer.wait_event(event)
        lease = self._leases[index] = SlotLease(index)
        self.acquired += 1
        return index, self._storage[index], lease

    def holds(self) -> list[int]:
        """Outstanding holds per slot (tests, diagnostics)."""
        return [0 if lease is None else lease.held for lease in self._leases]

    def slot_pointers(self) -> list[int]:
        """Device addresses of the slots (tests check they never change)."""
        return [int(self._storage[i].data.ptr) for i in range(self.depth)]
