"""How a load request's rows get to the device: read from the store, copied by the backend.

On the stream faces a request is read into the next page-locked buffer of the calling run's ring
(:class:`~gpuload.device.RunRings`) and copied to the device on the loader's copy stream; an
event behind the copy (the block's ``ready``) is what the compute stream waits on, and the
buffer is reused once that copy has passed. On the CPU a request is read into pooled host
buffers (:meth:`~gpuload.device.Backend.read_empty`), reused once no block views them. With
``preload``, the whole selection is read once, piece by piece through a ring, into one device
block that serves every request of every run after (built under a lock, read-only once built).
Whether a preload is wanted (``"auto"``), and whether it fits, is decided when it happens: any
allocation failure, page-locked or device, ends it with one warning and the loader streams instead.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from gpuload.device import Backend, Carver, Fence, PinnedRing
from gpuload.errors import ArgumentError
from gpuload.formats import MultiomeStore, RowBlock
from gpuload.kernels.cpu import count_modalities
from gpuload.plan import Layout
from gpuload.sampler import LoadRequest

PRELOAD_MODES = (True, False, "auto")
# "auto" preloads when the selection and the outputs in flight take at most this much of the
# device memory that is free (counting what torch's allocator caches but does not use).
PRELOAD_SHARE = 0.8
# A preload reads the selection in pieces of about this many cells through the ring.
PRELOAD_PIECE = 4096


@dataclass(frozen=True)
class DeviceBlock:
    """A block of rows where the kernels read them.

    ``rows`` (sorted file rows) stay on the host; ``indptr``, ``indices`` and ``data`` are the
    kernels' views of device memory (``tensors``: the same memory as torch tensors); ``counts``
    (host, ``[rows, modalities]``) are the stored values per modality, which the sparse output
    needs before its kernel runs; ``ready`` is the event after the block's copies.
    """

    rows: np.ndarray
    indptr: object
    indices: object
    data: object
    counts: np.ndarray | None
    tensors: tuple[torch.Tensor, ...] = ()
    ready: Fence | None = None

    def local(self, rows: np.ndarray) -> np.ndarray:
        """Positions of file ``rows`` inside this block: a subtraction when the block's rows are
        one range (a preload of every cell; 17 us against 2 for a 1,000-row super-batch)."""
        held = self.rows
        if held.size and int(held[-1]) - int(held[0]) + 1 == held.size:  # sorted and unique
            return np.subtract(rows, held[0], dtype=np.int64)
        return np.searchsorted(held, rows).astype(np.int64)


class BlockFetcher:
    """Reads :class:`~gpuload.sampler.LoadRequest` rows into :class:`DeviceBlock` s.

    Parameters
    ----------
    store
        Where the rows are read from.
    backend
        Where the blocks go.
    positions
        The selected file rows (what a preload reads).
    preload
        ``True``, ``False`` or ``"auto"`` (on a GPU, when the selection fits; see the module).
    counts_for
        When given (the plan's layout), stored values per row are counted per modality, for the
        sparse output.
    reserve
        Device bytes a preload must leave free (the outputs in flight).
    """

    def __init__(
        self,
        store: MultiomeStore,
        backend: Backend,
        positions: np.ndarray,
        preload: bool | str,
        *,
        counts_for: Layout | None = None,
        reserve: int = 0,
    ) -> None:
        if preload not in PRELOAD_MODES:
            raise ArgumentError(f"preload must be True, False or 'auto', got {preload!r}")
        self.store, self.backend, self.positions = store, backend, positions
        self.preload = preload
        self.counts_for, self.reserve = counts_for, reserve
        self.preloaded: DeviceBlock | None = None
        self._preloading = threading.Lock()  # runs that start together build one preload

    def blocks(
        self, requests: Iterable[LoadRequest], ring: PinnedRing | None, stopped: threading.Event
    ) -> Iterator[tuple[DeviceBlock, LoadRequest]]:
        """(device block holding the request's rows, the request), in order, read through the
        calling run's ``ring`` (None on the CPU) until ``stopped`` is set. Call it in a thread
        where the backend's device is current."""
        with self._preloading:
            if self.preload and self.preloaded is None:
                self.preloaded = self._try_preload(ring)
        preloaded = self.preloaded  # None unless a preload was wanted and fitted
        for request in requests:
            if stopped.is_set():
                return
            yield (preloaded if preloaded is not None else self.read(request.rows, ring)), request

    # -- streaming ----------------------------------------------------------------------------
    def read(self, rows: np.ndarray, ring: PinnedRing | None) -> DeviceBlock:
        """The sorted unique file ``rows`` as a device block (copied on the copy stream)."""
        with self.backend.on_stream("copy"):
            slot, buffer = self._take(ring, rows)
            host = self._read(rows, buffer, "block read")
            block = self._upload(host, "block")
            if ring is not None and slot is not None:
                ring.release(slot, block.ready)
            return block

    def _take(self, ring: PinnedRing | None, rows: np.ndarray) -> tuple[int | None, np.ndarray | None]:
        """A slot of ``ring`` and its buffer for a read of ``rows``, or (None, None) where the
        read allocates (no ring: the CPU; a read that takes no page-locked bytes)."""
        size = self._read_size(rows) if ring is not None else 0
        return ring.take(size) if ring is not None and size else (None, None)

    def _read(self, rows: np.ndarray, buffer: np.ndarray | None, name: str) -> RowBlock:
        if buffer is None:
            # Without streams nothing reads the memory asynchronously: recycled host buffers,
            # each as large as the reader asks (whatever dtypes it reads); with streams, fresh.
            return self.store.read_block(rows, np.empty if self.backend.streams else self.backend.read_empty)
        host = self.store.read_block(rows, Carver(buffer))
        self.backend.note_host("host_write", name, arrays=(buffer,))
        return host

    def _read_size(self, rows: np.ndarray) -> int:
        """Buffer bytes a read of ``rows`` takes; 0 where it takes none: for a dense file (its
        reader allocates) and for float16 values (widened after the read)."""
        nnz = self.store.stored_values(rows)
        enc = self.store.encoding
        if nnz is None or enc.index_dtype is None or enc.dtype.itemsize < 4:
            return 0
        return Carver.size_of([(nnz, enc.index_dtype), (nnz, enc.dtype)])

    def _upload(self, host: RowBlock, name: str) -> DeviceBlock:
        b = self.backend
        tensors = tuple(
            b.upload(a, f"{name} {part}")
            for part, a in zip(
                ("indptr", "indices", "data"), (host.indptr, host.indices, host.data), strict=True
            )
        )
        ready = b.fence(f"{name} copied")
        indptr, indices, data = (b.kernel_view(t) for t in tensors)
        return DeviceBlock(host.rows, indptr, indices, data, self._counts(host), tensors, ready)

    def _counts(self, host: RowBlock) -> np.ndarray | None:
        if self.counts_for is None:
            return None
        layout = self.counts_for
        return count_modalities(host.indptr, host.indices, layout.col_dest, len(layout.names))

    # -- preload ------------------------------------------------------------------------------
    def _try_preload(self, ring: PinnedRing | None) -> DeviceBlock | None:
        """The whole selection on the device, or None (and streaming) when it does not fit."""
        b = self.backend
        if self.preload == "auto":
            self.preload = b.on_gpu and self._fits()
            if not self.preload:
                return None
        try:
            with b.on_stream("copy"):
                return self._preload(ring)
        except b.allocation_errors as e:
            warnings.warn(
                f"gpuload: preloading {self.positions.size} cells failed ({e}); streaming instead",
                RuntimeWarning,
                stacklevel=3,
            )
            self.preload = False
            return None

    def _fits(self) -> bool:
        nnz = self.store.stored_values(self.positions)
        enc = self.store.encoding
        if nnz is None or enc.index_dtype is None:
            return False
        need = nnz * (enc.dtype.itemsize + enc.index_dtype.itemsize) + 8 * (self.positions.size + 1)
        return need + self.reserve < PRELOAD_SHARE * self.backend.free_memory()

    def _preload(self, ring: PinnedRing | None) -> DeviceBlock:
        """Read the selection in pieces through ``ring`` into one device block."""
        b, rows = self.backend, self.positions
        nnz = self.store.stored_values(rows)
        if ring is None or nnz is None or self._read_size(rows) == 0:  # no buffer is page-locked
            return self._upload(self.store.read_block(rows), "preload")
        enc = self.store.encoding
        indices = b.empty(nnz, torch.from_numpy(np.empty(0, enc.index_dtype)).dtype, "preload indices")
        data = b.empty(nnz, torch.from_numpy(np.empty(0, enc.dtype)).dtype, "preload data")
        indptr = np.zeros(rows.size + 1, dtype=np.int64)
        counts: list[np.ndarray] = []
        for start in range(0, rows.size, PRELOAD_PIECE):
            piece = rows[start : start + PRELOAD_PIECE]
            slot, buffer = self._take(ring, piece)
            host = self._read(piece, buffer, "preload read")
            lo = int(indptr[start])
            indptr[start + 1 : start + piece.size + 1] = lo + host.indptr[1:]
            hi = int(indptr[start + piece.size])
            b.upload_into(indices[lo:hi], host.indices, "preload indices")
            b.upload_into(data[lo:hi], host.data, "preload data")
            if slot is not None:
                ring.release(slot, b.fence("preload piece copied"))
            if (piece_counts := self._counts(host)) is not None:
                counts.append(piece_counts)
        block_counts = None if self.counts_for is None else np.concatenate(counts)
        device_indptr = b.upload(indptr, "preload indptr")
        tensors = (device_indptr, indices, data)
        device_indptr, device_indices, device_data = (b.kernel_view(t) for t in tensors)
        ready = b.fence("preload copied")
        return DeviceBlock(rows, device_indptr, device_indices, device_data, block_counts, tensors, ready)
