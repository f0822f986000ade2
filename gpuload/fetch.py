"""How a load request's rows get to the device: read from the store, copied by the backend.

With ``preload``, the whole selection is read once, kept on the device and every request is
served from it; if that does not fit (an allocation fails), the fetcher warns once and streams.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator

import numpy as np

from gpuload.backend import Backend
from gpuload.errors import ArgumentError
from gpuload.formats import MultiomeStore, RowBlock
from gpuload.sampler import LoadRequest


class BlockFetcher:
    """Reads :class:`~gpuload.sampler.LoadRequest` rows into device row blocks.

    Parameters
    ----------
    store
        Where the rows are read from.
    backend
        Where the blocks go (pinned host buffers and an async copy on the GPU).
    positions
        The selected file rows (what a preload reads).
    preload
        Keep the whole selection on the device, read once at the first request.
    """

    def __init__(self, store: MultiomeStore, backend: Backend, positions: np.ndarray, preload: bool) -> None:
        self.store, self.backend, self.positions = store, backend, positions
        self.preload = preload
        self.preloaded: RowBlock | None = None

    def blocks(self, requests: Iterable[LoadRequest]) -> Iterator[tuple[RowBlock, LoadRequest]]:
        """(device block holding the request's rows, the request), in order."""
        if self.preload and self.preloaded is None:
            try:
                self.preloaded = self.to_device(
                    self.store.read_block(self.positions, self.backend.host_empty)
                )
            except MemoryError as e:  # cupy's OutOfMemoryError is a MemoryError
                warnings.warn(
                    f"gpuload: preloading {self.positions.size} cells failed ({e}); streaming instead",
                    RuntimeWarning,
                    stacklevel=2,
                )
                self.preload = False
        for request in requests:
            if self.preload:
                yield self.preloaded, request
            else:
                yield self.to_device(self.store.read_block(request.rows, self.backend.host_empty)), request

    def to_device(self, block: RowBlock) -> RowBlock:
        """``block`` copied to the backend's device (the same arrays on the CPU faces)."""
        b = self.backend
        moved = RowBlock(
            block.rows, b.to_device(block.indptr), b.to_device(block.indices), b.to_device(block.data)
        )
        b.synchronize()  # the pinned host buffers may be reused once this returns
        return moved


def resolve_preload(
    preload: bool | str, store: MultiomeStore, backend: Backend, positions: np.ndarray
) -> bool:
    """``preload`` as a yes or no: ``"auto"`` preloads on a GPU when the selection's CSR fits
    in 60% of the free device memory."""
    if preload not in (True, False, "auto"):
        raise ArgumentError(f"preload must be True, False or 'auto', got {preload!r}")
    if preload != "auto":
        return bool(preload)
    if not backend.on_gpu:
        return False
    nnz = store.stored_values(positions)
    if nnz is None:
        return False
    enc = store.encoding
    need = nnz * (enc.dtype.itemsize + enc.index_dtype.itemsize) + 8 * (positions.size + 1)
    return need < 0.6 * backend.free_memory()
