"""A ring of preallocated GPU frame slots, recycled round-robin, never reallocated per frame.

The NVDEC source copies each decoded surface (the decoder reuses its own surfaces) into the next
slot; consumers read the slot until it comes round again, ``depth`` frames later. A consumer that
reads a slot on its own stream may call :meth:`FrameRing.release` with that stream: the next
writer of the slot then waits on the GPU (not the host) for the reads enqueued so far.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import cupy


class FrameRing:
    """``depth`` device buffers of ``shape`` (uint8), handed out in turn by :meth:`acquire`."""

    def __init__(self, shape: tuple[int, ...], depth: int = 8, dtype: str = "uint8", device_id: int = 0) -> None:
        import cupy

        if depth < 2:
            raise ValueError(f"ring depth must be at least 2, got {depth}")
        self.shape = tuple(shape)
        self.depth = depth
        with cupy.cuda.Device(device_id):
            # One allocation for all slots: the slots stay put for the ring's life.
            self._storage = cupy.empty((depth, *self.shape), dtype=dtype)
        self._released: list[Any] = [None] * depth
        self._next = 0
        self.acquired = 0
        """Slots handed out so far (frames written)."""

    def slot(self, index: int) -> cupy.ndarray:
        """The buffer of slot ``index`` (a view; same memory every time)."""
        return self._storage[index]

    def acquire(self, writer: cupy.cuda.Stream) -> tuple[int, cupy.ndarray]:
        """The next slot to write on ``writer``; its pending release (if any) is waited for on the GPU."""
        index = self._next
        self._next = (index + 1) % self.depth
        event = self._released[index]
        if event is not None:
            writer.wait_event(event)
            self._released[index] = None
        self.acquired += 1
        return index, self._storage[index]

    def release(self, index: int, reader: cupy.cuda.Stream) -> None:
        """Mark the reads of slot ``index`` enqueued on ``reader`` so far as the last before reuse."""
        self._released[index] = reader.record()

    def slot_pointers(self) -> list[int]:
        """Device addresses of the slots (tests check they never change)."""
        return [int(self._storage[i].data.ptr) for i in range(self.depth)]
