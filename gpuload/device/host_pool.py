"""Host buffers recycled once nothing references them: batch outputs and, on the CPU, reads."""

from __future__ import annotations

import sys
import threading

import numpy as np
import torch


class HostBufferPool:
    """Recycles host buffers once nothing references them any more.

    A fresh buffer costs a page fault per 4 KB page, which a reused one does not: a batch's
    output (B=256 at BMMC's full width of 129,921 float32 columns: 133 MB) and, on the CPU, a
    read group's stored values (read straight into it). Each buffer is a numpy array; every
    view, and every torch tensor built on one, keeps a reference to it, so a refcount at its
    baseline means nothing the user or the loader still holds shares its memory. A request
    takes the smallest free buffer that holds it (so a short last super-batch reuses a full
    one); a new buffer is rounded up to ``round_to`` elements, so requests that grow slowly
    do not allocate each time.
    """

    def __init__(self, max_buffers: int = 6, round_to: int = 1) -> None:
        self.max_buffers, self.round_to = max_buffers, round_to
        self._buffers: list[np.ndarray] = []
        self._lock = threading.Lock()

    def take(self, n: int, dtype: torch.dtype) -> torch.Tensor:
        """``n`` elements of ``dtype`` as a CPU tensor (an output the batches will view)."""
        return torch.from_numpy(self.take_array(n, torch.empty(0, dtype=dtype).numpy().dtype))

    def take_array(self, n: int, dtype: np.dtype) -> np.ndarray:
        """``n`` elements of ``dtype``: the first ``n`` of a free pooled buffer, or of a new one."""
        with self._lock:
            free = None
            for buf in self._buffers:
                # References: the pool's list, the loop variable and getrefcount's argument.
                fits = buf.dtype == dtype and buf.size >= n and (free is None or buf.size < free.size)
                if fits and sys.getrefcount(buf) <= 3:
                    free = buf
            if free is None:
                free = np.empty(-(-max(n, 1) // self.round_to) * self.round_to, dtype=dtype)
                if len(self._buffers) >= self.max_buffers:
                    forget = self._to_forget()
                    self._buffers = [buf for buf in self._buffers if buf is not forget]
                self._buffers.append(free)
            return free[:n]

    def _to_forget(self) -> np.ndarray:
        """The buffer a full pool forgets for a new one: the smallest free one (a big one costs
        the most page faults to make again), else the oldest (still in use: it goes when its
        last view does)."""
        free = [buf for buf in self._buffers if sys.getrefcount(buf) <= 3]  # list, loop var, arg
        return min(free, key=lambda buf: buf.nbytes) if free else self._buffers[0]
