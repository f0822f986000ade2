"""A bounded ring of page-locked host buffers for reads that are copied to the device.

A read group is read into the next buffer of the ring and copied to the device asynchronously;
the buffer is reused only after the event recorded behind that copy has passed. The ring holds
at most ``slots`` buffers, each grown (never shrunk) to the largest request it served, so the
page-locked memory a loader holds is at most ``slots`` x its largest read (about 2 x 175 MB for
full-width BMMC groups of 4,096 cells with the defaults), whatever the file's size.
"""

from __future__ import annotations

import numpy as np

from gpuload.device.backend import Backend

ALIGN = 256  # bytes: device copies and numpy views start on this boundary
GROWTH = 1 << 23  # buffers grow in steps of 8 MiB, so a slowly growing request does not re-pin each time


class PinnedRing:
    """Page-locked buffers reused in turn (see the module docstring)."""

    def __init__(self, backend: Backend, slots: int = 2) -> None:
        self.backend = backend
        self.buffers: list[np.ndarray | None] = [None] * slots
        self.fences: list[object | None] = [None] * slots
        self.next = 0

    def take(self, nbytes: int) -> tuple[int, np.ndarray]:
        """(slot, a buffer of at least ``nbytes``), once the slot's last copy has passed."""
        slot = self.next
        self.next = (slot + 1) % len(self.buffers)
        if self.fences[slot] is not None:
            self.backend.wait_host(self.fences[slot])
            self.fences[slot] = None
        buffer = self.buffers[slot]
        if buffer is None or buffer.size < nbytes:
            if buffer is not None:
                self.backend.release_pinned(buffer)
                self.buffers[slot] = None
            buffer = self.buffers[slot] = self.backend.pinned(-(-max(nbytes, 1) // GROWTH) * GROWTH)
        return slot, buffer

    def release(self, slot: int, fence) -> None:
        """The copies out of ``slot``'s buffer are ordered before ``fence``."""
        self.fences[slot] = fence

    def close(self) -> None:
        for slot, buffer in enumerate(self.buffers):
            if buffer is not None:
                self.backend.release_pinned(buffer)
            self.buffers[slot] = None
            self.fences[slot] = None


class Carver:
    """``empty(n, dtype)`` for a reader: consecutive aligned views of one buffer."""

    def __init__(self, buffer: np.ndarray) -> None:
        self.buffer, self.offset = buffer, 0

    def __call__(self, n: int, dtype) -> np.ndarray:
        dtype = np.dtype(dtype)
        start = -(-self.offset // ALIGN) * ALIGN
        stop = start + n * dtype.itemsize
        if stop > self.buffer.size:
            raise MemoryError(f"a read of {stop} bytes does not fit its {self.buffer.size}-byte buffer")
        self.offset = stop
        return self.buffer[start:stop].view(dtype)

    @staticmethod
    def size_of(parts: list[tuple[int, np.dtype]]) -> int:
        """Bytes :meth:`__call__` needs for these (count, dtype) allocations, in order."""
        return sum(n * np.dtype(d).itemsize for n, d in parts) + ALIGN * len(parts)
