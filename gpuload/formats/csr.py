"""CSR row reads: rows are contiguous on disk, so a set of rows is a few contiguous spans.

Requested rows are coalesced into runs, nearby runs are merged into one span, and each span is one
read per array (``indptr`` is read once and cached). Uncompressed datasets are read with
``os.preadv`` at their chunks' file offsets (:class:`DirectArray`); compressed ones through h5py.
The CSC sidecar (:mod:`gpuload.formats.csc`) is read by the same class over memory maps.
"""

from __future__ import annotations

import os
import threading

import h5py
import numpy as np
from numba import njit

from gpuload.errors import SchemaError
from gpuload.formats.chunk_index import chunk_table
from gpuload.formats.types import RowBlock, row_runs

# Runs of requested rows closer than this many stored values are read as one span, of at most
# SPAN_VALUES values (read into the reading thread's scratch buffer, then compacted).
MERGE_GAP = 1 << 15
SPAN_VALUES = 1 << 20
MAX_READ = 1 << 30  # bytes per system call (Linux reads at most ~2 GiB in one)


@njit(cache=True, nogil=True)
def _compact(span, span_lo, lo, hi, out):
    """Copy the value ranges [lo[i], hi[i]) of a span that starts at ``span_lo`` into ``out``."""
    pos = 0
    for i in range(lo.size):
        n = hi[i] - lo[i]
        start = lo[i] - span_lo
        out[pos : pos + n] = span[start : start + n]
        pos += n


@njit(cache=True, nogil=True)
def _span_breaks(lo, hi, gap, most):
    """Where runs ``[lo[i], hi[i])`` start a new span: a gap over ``gap`` values before the run,
    or a span that would grow past ``most`` values with it (a single longer run is its own)."""
    breaks = [0]
    start = lo[0] if lo.size else 0
    for i in range(1, lo.size):
        if lo[i] - hi[i - 1] > gap or hi[i] - start > most:
            breaks.append(i)
            start = lo[i]
    breaks.append(lo.size)
    return np.array(breaks, dtype=np.int64)


_scratch = threading.local()


def scratch(nbytes: int) -> np.ndarray:
    """The calling thread's scratch bytes, grown to ``nbytes``: a span read to be compacted goes
    here, not into fresh memory each time (a fresh buffer faults in every page, which made a
    fresh process's first reads several times slower). One per thread: two runs reading the
    same file at once never share it."""
    buffer = getattr(_scratch, "buffer", None)
    if buffer is None or buffer.size < nbytes:
        buffer = _scratch.buffer = np.empty(nbytes, dtype=np.uint8)
    return buffer[:nbytes]


class DirectArray:
    """A 1-D uncompressed HDF5 dataset read with ``os.preadv`` at its chunks' file offsets.

    HDF5 walks its chunk index and cache for every chunk it reads, holding the GIL; anndata
    writes sparse arrays in ~40 KB chunks, so a 4 MB span is ~100 trips through that machinery.
    Reading the bytes straight into the output buffer (offsets from :func:`chunk_table`; the GIL is
    released during each system call) is faster: ``benchmarks/store_reads.py`` times gpuload's row
    reads against anndata's (benchmarks/RESULTS.md, 2026-11-24 10:22 UTC). A short
    read is an ``OSError``, never a crash (a memory map of a file truncated under it would be).
    """

    def __init__(self, fd: int, dtype: np.dtype, chunk_len: int, offsets: np.ndarray) -> None:
        self.fd, self.dtype, self.chunk_len, self.offsets = fd, dtype, chunk_len, offsets
        # Chunks written one after another lie back to back in the file: a read spanning them is
        # one system call. run_end[c]: the last chunk of the back-to-back run chunk c is in.
        ends = np.flatnonzero(np.diff(offsets) != chunk_len * dtype.itemsize)
        ends = np.append(ends, offsets.size - 1)
        self.run_end = ends[np.searchsorted(ends, np.arange(offsets.size))]

    @classmethod
    def open_direct(cls, dataset: h5py.Dataset, fd: int, file_size: int) -> DirectArray | None:
        """The direct reader, or None where h5py must read (filters, odd layouts, missing chunks)."""
        dtype = dataset.dtype
        if dataset.ndim != 1 or dtype.byteorder == ">" or dtype.kind not in "iuf":
            return None
        plist = dataset.id.get_create_plist()
        if plist.get_nfilters() != 0:
            return None
        size = dataset.shape[0]
        if plist.get_layout() == h5py.h5d.CONTIGUOUS:
            offset = dataset.id.get_offset()
            if offset is None:
                return None
            chunk_len, offsets = max(size, 1), np.array([offset], dtype=np.int64)
        elif plist.get_layout() == h5py.h5d.CHUNKED and (table := chunk_table(dataset)) is not None:
            chunk_len = dataset.chunks[0]
            starts = table[:, 0]
            if starts.size != -(-size // chunk_len) or np.any(starts != np.arange(starts.size) * chunk_len):
                return None  # unallocated chunks: only HDF5 knows their fill value
            offsets = table[:, 1].copy()
        else:
            return None
        if offsets.size and offsets.max() + chunk_len * dtype.itemsize > file_size:
            return None  # a truncated file: let h5py report it
        return cls(fd, dtype, chunk_len, offsets)

    def read_into(self, lo: int, hi: int, out: np.ndarray) -> None:
        """``out[:] = dataset[lo:hi]``."""
        raw = out.view(np.uint8)
        item = self.dtype.itemsize
        pos = lo
        while pos < hi:
            chunk = pos // self.chunk_len
            last = min(int(self.run_end[chunk]), (hi - 1) // self.chunk_len)
            n = min((last + 1) * self.chunk_len, hi, pos + MAX_READ // item) - pos
            dest = raw[(pos - lo) * item : (pos - lo + n) * item]
            at = int(self.offsets[chunk]) + (pos - chunk * self.chunk_len) * item
            # numpy's stubs give ndarray the buffer protocol (__buffer__) only for Python >= 3.12
            got = os.preadv(self.fd, [dest], at)  # type: ignore[list-item]
            if got != dest.size:
                raise OSError(f"short read ({got} of {dest.size} bytes): the file was truncated")
            pos += n


class CsrRows:
    """Row reads from CSR arrays; ``indices``/``data`` are h5py datasets or memory maps."""

    def __init__(self, indptr: np.ndarray, indices, data, n_vars: int, raw=None, sidecar=None) -> None:
        # held compactly: 4 bytes a row while the matrix has under 2**32 stored values
        self.indptr = np.asarray(indptr, dtype=np.uint32 if indptr[-1] < 2**32 else np.int64)
        self.indices, self.data, self.n_vars = indices, data, n_vars
        self.raw = raw  # the unbuffered file the direct reads use, if any
        self.sidecar = sidecar  # the folder of a CSC matrix's row-major copy, if that is what is read
        self._stamp = self._file_stamp()

    def _file_stamp(self) -> tuple[int, int, int] | None:
        if self.raw is None:
            return None
        st = os.fstat(self.raw.fileno())  # the open file: a file renamed over the path is not ours
        return st.st_ino, st.st_size, st.st_mtime_ns

    def _check_unchanged(self) -> None:
        """The bytes read must be the file's as it was opened: an in-place overwrite (``cp``
        onto it) or a truncation is an error, before or after a read, never mixed-in data."""
        if self._file_stamp() != self._stamp:
            raise OSError("the file was modified in place while being read")

    def close(self) -> None:
        if self.raw is not None:
            self.raw.close()

    def stored_values(self, rows: np.ndarray) -> int:
        """Stored values of ``rows``: what a preload of them would hold."""
        return int((self.indptr[rows + 1] - self.indptr[rows]).sum(dtype=np.int64))

    @staticmethod
    def _read_into(source, lo: int, hi: int, out: np.ndarray) -> None:
        """``out[:] = source[lo:hi]`` without an intermediate copy."""
        if isinstance(source, np.ndarray):
            out[:] = source[lo:hi]
        elif isinstance(source, DirectArray):
            source.read_into(lo, hi, out)
        elif hi > lo:
            source.read_direct(out, np.s_[lo:hi])

    def read(self, rows: np.ndarray, empty=np.empty) -> RowBlock:
        self._check_unchanged()
        block = self._read(rows, empty)
        self._check_unchanged()
        return block

    def _read(self, rows: np.ndarray, empty) -> RowBlock:
        starts, stops = row_runs(rows)
        lo, hi = self.indptr[starts].astype(np.int64), self.indptr[stops].astype(np.int64)
        lengths = self.indptr[rows + 1].astype(np.int64) - self.indptr[rows]  # the rows' only
        indptr = np.zeros(rows.size + 1, dtype=np.int64)
        np.cumsum(lengths, out=indptr[1:])
        total = int(indptr[-1])
        indices = empty(total, dtype=self.indices.dtype)
        data = empty(total, dtype=self.data.dtype)
        # Merge runs separated by small gaps into spans: one read per array per span.
        breaks = _span_breaks(lo, hi, MERGE_GAP, SPAN_VALUES) if lo.size else lo[:1]
        pos = 0
        for a, b in zip(breaks[:-1], breaks[1:], strict=True):
            s_lo, s_hi = int(lo[a]), int(hi[b - 1])
            n = int((hi[a:b] - lo[a:b]).sum())
            for source, out in ((self.indices, indices), (self.data, data)):
                if b - a == 1:
                    self._read_into(source, s_lo, s_hi, out[pos : pos + n])
                else:
                    span = scratch((s_hi - s_lo) * source.dtype.itemsize).view(source.dtype)
                    self._read_into(source, s_lo, s_hi, span)
                    _compact(span, s_lo, lo[a:b], hi[a:b], out[pos : pos + n])
            pos += n
        return RowBlock(rows, indptr, indices, data)


def checked_indptr(group: h5py.Group, size: int, where: str) -> np.ndarray:
    """``indptr`` as int64, checked so that no later read can run outside ``data``."""
    indptr = group["indptr"][:].astype(np.int64)
    nnz = group["data"].shape[0]
    if indptr.size != size:
        raise SchemaError(f"{where}: indptr has {indptr.size} entries; expected {size}")
    if indptr[0] != 0 or indptr[-1] != nnz or np.any(np.diff(indptr) < 0):
        raise SchemaError(f"{where}: indptr must rise from 0 to len(data)={nnz}; the file is corrupt")
    if group["indices"].shape[0] != nnz:
        raise SchemaError(f"{where}: indices has {group['indices'].shape[0]} entries, data has {nnz}")
    return indptr


def open_csr_rows(path, key: str, node: h5py.Group, shape: tuple[int, int], cache_dir=None) -> CsrRows:
    """The reader of an on-disk ``csr_matrix``: direct reads where the layout allows them."""
    indptr = checked_indptr(node, shape[0] + 1, f"{path}:{key}")
    raw = open(path, "rb", buffering=0)  # noqa: SIM115 - a file object closes itself when collected
    size = os.fstat(raw.fileno()).st_size
    indices, data = (
        DirectArray.open_direct(node[k], raw.fileno(), size) or node[k] for k in ("indices", "data")
    )
    return CsrRows(indptr, indices, data, shape[1], raw)
