"""Where each chunk of a 1-D chunked HDF5 dataset lies in its file, walked in C.

:class:`~gpuload.formats.csr.DirectArray` reads a dataset at its chunks' file offsets, so a file's
first read needs the whole chunk index. h5py's ``chunk_iter`` calls a Python function per chunk
(about 1 us each with the object it builds), and anndata writes sparse arrays in 16-40 KB chunks:
a 10k-cell narrow file's ``indices`` and ``data`` have 5,032, and its row reader cost 5.7 ms to
open alone, 9-12 ms (median) inside a running loader (benchmarks/RESULTS.md, 2026-12-07).
HDF5's own ``H5Dchunk_iter`` walks the same index with a C callback; here that callback is a numba
``cfunc`` that writes each chunk's (first element, file address) into a numpy array, so the walk
makes no Python call per chunk (the reader then opens in 1.0 ms). The table is exactly what HDF5
reports, never inferred from a pattern. Where that path is not there (an h5py built against an
HDF5 without ``H5Dchunk_iter``, a symbol not found, a walk that reports more chunks than the
shape holds) the table comes from ``chunk_iter``, as before; a dataset with few chunks goes that
way too, so a small file never loads the compiled callback.
"""

from __future__ import annotations

import ctypes
import functools
import threading

import h5py
import numpy as np
from numba import carray, cfunc, types

try:  # h5py's lock over the (not thread-safe) HDF5 library: a call into HDF5 must hold it
    from h5py._objects import phil
except ImportError:  # an h5py that keeps it elsewhere: no C walk (chunk_iter holds it itself)
    phil = None

# Fewer chunks than this are walked by ``chunk_iter`` (~0.3 ms at most): loading the compiled
# callback from numba's cache costs 4-8 ms once per process (numba's own start-up, 0.3-0.7 s, is
# shared with the loader's kernels), compiling it (first use after an install) 0.14-0.16 s.
MIN_CHUNKS_FOR_C_WALK = 256

# ``op_data`` of the walk: [capacity, visited, (first element, address) * capacity].
_HEADER = 2

# H5D_chunk_iter_op_t: int (*)(const hsize_t *offset, unsigned filter_mask, haddr_t addr,
# hsize_t size, void *op_data) (HDF5 1.14 and 2.0). Some development releases declared ``size``
# a uint32_t; it is not read here, and the arguments read (offset, addr, op_data) are passed the
# same way in either signature.
_VISIT = types.int32(types.CPointer(types.uint64), types.uint32, types.uint64, types.uint64, types.voidptr)


def _record_chunk(offset, filter_mask, addr, size, op_data):
    """Append (offset[0], addr) to the table behind ``op_data``; stop (1) when it is full."""
    header = carray(op_data, _HEADER, dtype=np.int64)
    capacity, visited = header[0], header[1]
    if visited >= capacity:
        header[1] = capacity + 1  # more chunks than the shape holds: the caller gives up
        return 1
    table = carray(op_data, _HEADER + 2 * capacity, dtype=np.int64)
    table[_HEADER + 2 * visited] = np.int64(offset[0])
    table[_HEADER + 2 * visited + 1] = np.int64(addr)
    header[1] = visited + 1
    return 0


_RESOLVING = threading.Lock()  # readers open files from several threads: compile once


def hdf5_chunk_iter():
    """``H5Dchunk_iter`` of the libhdf5 that h5py loaded and the compiled callback, or None."""
    with _RESOLVING:
        return _resolve_hdf5_chunk_iter()


@functools.cache
def _resolve_hdf5_chunk_iter():
    if not hasattr(h5py.h5d.DatasetID, "chunk_iter"):
        return None  # h5py was built against an HDF5 whose H5Dchunk_iter it does not know
    try:
        # h5d's handle: dlsym searches its dependencies, so this is the libhdf5 h5py itself uses;
        # a CDLL call releases the GIL while HDF5 reads the index (from disk, if not cached)
        walk = ctypes.CDLL(h5py.h5d.__file__).H5Dchunk_iter
    except (OSError, AttributeError):
        return None
    walk.argtypes = [ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p]
    walk.restype = ctypes.c_int
    return walk, cfunc(_VISIT, cache=True)(_record_chunk)


def _by_first_element(table: np.ndarray) -> np.ndarray:
    return table[np.argsort(table[:, 0], kind="stable")]


def chunk_table_in_c(dataset: h5py.Dataset) -> np.ndarray | None:
    """:func:`chunk_table` through ``H5Dchunk_iter``, or None where it is unavailable or fails."""
    found = hdf5_chunk_iter() if phil is not None else None
    if found is None:
        return None
    walk, visit = found
    capacity = -(-dataset.shape[0] // dataset.chunks[0])  # the chunks the shape holds
    buffer = np.zeros(_HEADER + 2 * capacity, dtype=np.int64)
    buffer[0] = capacity
    with phil:
        status = walk(dataset.id.id, 0, visit.address, buffer.ctypes.data)  # 0: H5P_DEFAULT
    visited = int(buffer[1])
    if status != 0 or visited > capacity:
        return None
    return _by_first_element(buffer[_HEADER : _HEADER + 2 * visited].reshape(visited, 2))


def chunk_table_in_python(dataset: h5py.Dataset) -> np.ndarray | None:
    """:func:`chunk_table` through h5py's ``chunk_iter`` (a Python call per chunk), or None
    where h5py has none."""
    if not hasattr(dataset.id, "chunk_iter"):
        return None
    table: list[tuple[int, int]] = []
    dataset.id.chunk_iter(lambda info: table.append((info.chunk_offset[0], info.byte_offset)))
    return _by_first_element(np.array(table, dtype=np.int64).reshape(len(table), 2))


def chunk_table(dataset: h5py.Dataset) -> np.ndarray | None:
    """(first element, file address) of each allocated chunk of a chunked 1-D dataset, ordered by
    first element, as int64 rows; None where HDF5 cannot say (no ``H5Dchunk_iter``)."""
    table = None
    if -(-dataset.shape[0] // dataset.chunks[0]) >= MIN_CHUNKS_FOR_C_WALK:
        table = chunk_table_in_c(dataset)
    return chunk_table_in_python(dataset) if table is None else table
