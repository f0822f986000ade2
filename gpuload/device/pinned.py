"""Bounded rings of page-locked host buffers: what copies to and from the device go through.

A read group is read into the next buffer of a ring and copied to the device asynchronously;
the buffer is reused only after the event recorded behind that copy has passed. A ring holds at
most ``slots`` buffers, each grown (never shrunk) to the largest request it served, so the
page-locked memory is at most ``slots`` x the largest request, whatever the file's size.

A run of the loader (one iterator) writes only into the :class:`RunRings` it leased (reads,
super-batch rows, kernel status); a run's rings go back to the loader's
:class:`RingPool` only after its threads have been joined, and the next run that takes them
still waits on each slot's last fence, so no run ever writes into memory another may still read.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from gpuload.device.backend import Backend, Fence

ALIGN = 256  # bytes: device copies and numpy views start on this boundary
GROWTH = 1 << 23  # buffers grow in steps of 8 MiB, so a slowly growing request does not re-pin each time


class PinnedRing:
    """Page-locked buffers reused in turn (see the module docstring)."""

    def __init__(self, backend: Backend, slots: int = 2) -> None:
        self.backend = backend
        self.buffers: list[np.ndarray | None] = [None] * slots
        self.fences: list[Fence | None] = [None] * slots
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
            buffer = self.buffers[slot] = self.backend.staging(-(-max(nbytes, 1) // GROWTH) * GROWTH)
        return slot, buffer

    def release(self, slot: int, fence: Fence | None) -> None:
        """The copies out of (or into) ``slot``'s buffer are ordered before ``fence`` (None: the
        slot's reuse is ordered otherwise, see :class:`RunRings`)."""
        self.fences[slot] = fence

    def close(self) -> None:
        """Release the buffers, each once its last copy has passed."""
        for slot, buffer in enumerate(self.buffers):
            if self.fences[slot] is not None:
                self.backend.wait_host(self.fences[slot])
            if buffer is not None:
                self.backend.release_pinned(buffer)
            self.buffers[slot] = None
            self.fences[slot] = None


class Carver:
    """``empty(n, dtype)`` for a reader: consecutive aligned views of one buffer."""

    def __init__(self, buffer: np.ndarray) -> None:
        self.buffer, self.offset = buffer, 0

    def __call__(self, n: int, dtype: npt.DTypeLike) -> np.ndarray:
        dtype = np.dtype(dtype)
        start = -(-self.offset // ALIGN) * ALIGN
        stop = start + n * dtype.itemsize
        if stop > self.buffer.size:
            raise MemoryError(f"a read of {stop} bytes does not fit its {self.buffer.size}-byte buffer")
        self.offset = stop
        return self.buffer[start:stop].view(dtype)

    @staticmethod
    def size_of(parts: list[tuple[int, npt.DTypeLike]]) -> int:
        """Bytes :meth:`__call__` needs for these (count, dtype) allocations, in order."""
        return sum(n * np.dtype(d).itemsize for n, d in parts) + ALIGN * len(parts)


@dataclass
class RunRings:
    """The page-locked memory one run writes into.

    ``reads``: two buffers of a read group each (the reader fills one while the other's copy
    runs); ``meta``: a super-batch's rows and offsets, one per super-batch in flight; ``status``:
    the kernels' row status copied back, one per super-batch in flight. A status slot's fence
    orders its reuse after the copy into it, not after the consumer's read of it: that read is
    ordered by the queue instead. The assembler can be at most ``prefetch + 1`` super-batches
    ahead of the consumer (its queue holds ``prefetch``), and the consumer reads a super-batch's
    status before it takes the next one from that queue, so ``prefetch + 2`` slots order the
    reuse after the read (the happens-before checker verifies it, and catches one slot fewer).
    """

    reads: PinnedRing
    meta: PinnedRing
    status: PinnedRing

    @classmethod
    def for_run(cls, backend: Backend, prefetch: int) -> RunRings:
        in_flight = prefetch + 2
        return cls(PinnedRing(backend), PinnedRing(backend, in_flight), PinnedRing(backend, in_flight))

    def close(self) -> None:
        for ring in (self.reads, self.meta, self.status):
            ring.close()


class RingPool:
    """The :class:`RunRings` of a loader's runs: one set is kept between runs (so an epoch does
    not page-lock its read buffers again); a run started while another is live gets its own.
    ``None`` throughout on faces without streams."""

    def __init__(self, backend: Backend, prefetch: int) -> None:
        self.backend, self.prefetch = backend, prefetch
        self._idle: list[RunRings] = []
        self._lock = threading.Lock()

    def lease(self) -> RunRings | None:
        if not self.backend.streams:
            return None
        with self._lock:
            if self._idle:
                return self._idle.pop()
        return RunRings.for_run(self.backend, self.prefetch)

    def give_back(self, rings: RunRings | None) -> None:
        """Return a joined run's rings (its threads have ended: nothing more is written)."""
        if rings is None:
            return
        with self._lock:
            if not self._idle:
                self._idle.append(rings)
                return
        rings.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for rings in idle:
            rings.close()
