"""Read-only, lazy access to a multiome ``.h5ad``: modalities, encodings and fast row reads.

``open_multiome`` opens the file with ``h5py.File(path, "r")`` and loads nothing of X. Row reads
dispatch on what the file says X is (anndata's ``encoding-type``):

- ``csr_matrix``: rows are contiguous on disk. Requested rows are coalesced into runs, nearby runs
  are merged into one span, and each span is one h5py read per array (``indptr`` is cached).
- ``csc_matrix``: a row is scattered over every column, so reading a batch means reading the
  whole matrix. A row-major sidecar (``.npy`` files, memory-mapped) is built once, with a progress
  bar, in a cache folder the user controls; the input file is never touched.
- ``array`` (dense): row blocks are read directly and compressed to CSR in memory.

Every reader returns a :class:`RowBlock`: full-width CSR arrays of sorted, unique rows. The
kernels gather batches out of it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import h5py
import numpy as np
import scipy.sparse as sp
from numba import njit
from tqdm.auto import tqdm

from gpuload.errors import ArgumentError, GpuloadError, InputFileError, SchemaError
from gpuload.metadata import read_obs

if TYPE_CHECKING:
    import pandas as pd

KNOWN_MODALITIES = ("GEX", "ATAC", "ADT")
# Runs of requested rows closer than this many stored values are read as one span.
MERGE_GAP = 1 << 15


@dataclass(frozen=True)
class Encoding:
    """How the matrix is stored: what ``gpuload info`` prints and what the reader dispatches on."""

    kind: str  # "csr", "csc" or "dense"
    dtype: np.dtype
    index_dtype: np.dtype | None  # of ``indices`` (sparse only)
    indptr_dtype: np.dtype | None
    nnz: int | None
    chunks: tuple[int, ...] | None
    compression: str | None


@dataclass(frozen=True)
class Modality:
    """One modality's columns in the full-width matrix, in file order."""

    name: str
    columns: np.ndarray  # int64 positions in the full width

    @property
    def width(self) -> int:
        return int(self.columns.size)

    @property
    def contiguous(self) -> bool:
        c = self.columns
        return c.size > 0 and int(c[-1] - c[0]) + 1 == c.size


@dataclass(frozen=True)
class RowBlock:
    """Full-width CSR arrays of ``rows`` (sorted, unique global row ids); ``indptr`` starts at 0."""

    rows: np.ndarray
    indptr: np.ndarray
    indices: np.ndarray
    data: np.ndarray

    def local(self, rows: np.ndarray) -> np.ndarray:
        """Positions of global ``rows`` inside this block."""
        return np.searchsorted(self.rows, rows).astype(np.int64)


def _kernel_dtype(values: np.ndarray) -> np.ndarray:
    """float16 values as float32: neither scipy nor numba's CPU target computes in float16."""
    return values.astype(np.float32) if values.dtype == np.float16 else values


def _runs(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Split sorted unique rows into maximal runs of consecutive ids: (starts, stops)."""
    if rows.size == 0:
        return rows[:0], rows[:0]
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    starts = rows[np.r_[0, breaks]]
    stops = rows[np.r_[breaks - 1, rows.size - 1]] + 1
    return starts, stops


@njit(cache=True, nogil=True)
def _compact(span, span_lo, lo, hi, out):
    """Copy the value ranges [lo[i], hi[i]) of a span that starts at ``span_lo`` into ``out``."""
    pos = 0
    for i in range(lo.size):
        n = hi[i] - lo[i]
        start = lo[i] - span_lo
        out[pos : pos + n] = span[start : start + n]
        pos += n


class _DirectArray:
    """A 1-D uncompressed HDF5 dataset read with ``os.preadv`` at its chunks' file offsets.

    HDF5 walks its chunk index and cache for every chunk it reads, holding the GIL; anndata
    writes sparse arrays in ~40 KB chunks, so a 4 MB span is ~100 trips through that machinery.
    Reading the bytes straight into the output buffer (offsets from ``chunk_iter``; the GIL is
    released during each system call) measured 1.6x h5py's rate here (4.9 vs 3.0 GB/s). A short
    read is an ``OSError``, never a crash (a memory map of a file truncated under it would be).
    """

    def __init__(self, fd: int, dtype: np.dtype, chunk_len: int, offsets: np.ndarray) -> None:
        self.fd, self.dtype, self.chunk_len, self.offsets = fd, dtype, chunk_len, offsets

    @classmethod
    def open_direct(cls, dataset: h5py.Dataset, fd: int, file_size: int) -> _DirectArray | None:
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
        elif plist.get_layout() == h5py.h5d.CHUNKED and hasattr(dataset.id, "chunk_iter"):
            chunk_len = dataset.chunks[0]
            table: list[tuple[int, int]] = []
            dataset.id.chunk_iter(lambda info: table.append((info.chunk_offset[0], info.byte_offset)))
            table.sort()
            starts = np.array([t[0] for t in table], dtype=np.int64)
            if starts.size != -(-size // chunk_len) or np.any(starts != np.arange(starts.size) * chunk_len):
                return None  # unallocated chunks: only HDF5 knows their fill value
            offsets = np.array([t[1] for t in table], dtype=np.int64)
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
            n = min((chunk + 1) * self.chunk_len, hi) - pos
            dest = raw[(pos - lo) * item : (pos - lo + n) * item]
            got = os.preadv(self.fd, [dest], int(self.offsets[chunk]) + (pos - chunk * self.chunk_len) * item)
            if got != dest.size:
                raise OSError(f"short read ({got} of {dest.size} bytes): the file was truncated")
            pos += n


class _CompressedRows:
    """Row reads from CSR arrays; ``indices``/``data`` are h5py datasets or memory maps."""

    def __init__(self, indptr: np.ndarray, indices, data, n_vars: int, raw=None) -> None:
        self.indptr = np.asarray(indptr, dtype=np.int64)
        self.indices, self.data, self.n_vars = indices, data, n_vars
        self.raw = raw  # the unbuffered file the direct reads use, if any
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

    @staticmethod
    def _read_into(source, lo: int, hi: int, out: np.ndarray) -> None:
        """``out[:] = source[lo:hi]`` without an intermediate copy."""
        if isinstance(source, np.ndarray):
            out[:] = source[lo:hi]
        elif isinstance(source, _DirectArray):
            source.read_into(lo, hi, out)
        elif hi > lo:
            source.read_direct(out, np.s_[lo:hi])

    def read(self, rows: np.ndarray, empty=np.empty) -> RowBlock:
        self._check_unchanged()
        block = self._read(rows, empty)
        self._check_unchanged()
        return block

    def _read(self, rows: np.ndarray, empty) -> RowBlock:
        starts, stops = _runs(rows)
        lo, hi = self.indptr[starts], self.indptr[stops]
        lengths = np.diff(self.indptr)[rows]
        indptr = np.zeros(rows.size + 1, dtype=np.int64)
        np.cumsum(lengths, out=indptr[1:])
        total = int(indptr[-1])
        indices = empty(total, dtype=self.indices.dtype)
        data = empty(total, dtype=self.data.dtype)
        # Merge runs separated by small gaps into spans: one read per array per span.
        gap_break = np.flatnonzero(lo[1:] - hi[:-1] > MERGE_GAP) + 1
        span_first = np.r_[0, gap_break] if lo.size else lo[:0]
        span_last = np.r_[gap_break, lo.size] if lo.size else lo[:0]
        pos = 0
        for a, b in zip(span_first, span_last, strict=True):
            s_lo, s_hi = int(lo[a]), int(hi[b - 1])
            n = int((hi[a:b] - lo[a:b]).sum())
            for source, out in ((self.indices, indices), (self.data, data)):
                if b - a == 1:
                    self._read_into(source, s_lo, s_hi, out[pos : pos + n])
                else:
                    span = np.empty(s_hi - s_lo, dtype=source.dtype)
                    self._read_into(source, s_lo, s_hi, span)
                    _compact(span, s_lo, lo[a:b], hi[a:b], out[pos : pos + n])
            pos += n
        return RowBlock(rows, indptr, indices, data)


class _DenseRows:
    """Row reads from a dense 2-D dataset, compressed to CSR in memory."""

    def __init__(self, dataset: h5py.Dataset) -> None:
        self.dataset = dataset

    def close(self) -> None:
        """Nothing of its own to release: the dataset closes with the file."""

    def read(self, rows: np.ndarray, empty=np.empty) -> RowBlock:
        starts, stops = _runs(rows)
        blocks = [self.dataset[int(a) : int(b)] for a, b in zip(starts, stops, strict=True)]
        dense = np.concatenate(blocks) if blocks else np.zeros((0, self.dataset.shape[1]), self.dataset.dtype)
        csr = sp.csr_matrix(_kernel_dtype(dense))
        return RowBlock(rows, csr.indptr.astype(np.int64), csr.indices, csr.data)


def default_cache_dir() -> Path:
    """Where CSC sidecars go unless the caller says otherwise: ``$GPULOAD_CACHE_DIR`` or ~/.cache."""
    return Path(os.environ.get("GPULOAD_CACHE_DIR", Path.home() / ".cache" / "gpuload"))


@njit(cache=True, nogil=True)
def _scatter_columns(col_indptr, row_ids, values, col_offset, cursor, out_indices, out_data):
    """Scatter a block of CSC columns into row-major arrays; returns False on an out-of-range row."""
    for c in range(col_indptr.size - 1):
        for k in range(col_indptr[c], col_indptr[c + 1]):
            r = row_ids[k]
            if r < 0 or r >= cursor.size:
                return False
            p = cursor[r]
            out_indices[p] = col_offset + c
            out_data[p] = values[k]
            cursor[r] = p + 1
    return True


def _build_csr_sidecar(group: h5py.Group, shape: tuple[int, int], folder: Path, label: str) -> None:
    """Transpose an on-disk CSC matrix into row-major .npy files, reading it in column blocks."""
    n_cells, n_vars = shape
    col_indptr = _checked_indptr(group, n_vars + 1, label)
    nnz = int(col_indptr[-1])
    index_dtype = np.int32 if n_vars < 2**31 else np.int64
    block_cols = max(1, int(n_vars * min(1.0, 2e8 / max(nnz, 1))))
    blocks = range(0, n_vars, block_cols)
    counts = np.zeros(n_cells, dtype=np.int64)
    for c0 in tqdm(blocks, desc=f"CSC->CSR {label}: count", unit="block"):
        c1 = min(c0 + block_cols, n_vars)
        rows = group["indices"][col_indptr[c0] : col_indptr[c1]]
        if rows.size and (rows.min() < 0 or rows.max() >= n_cells):
            raise SchemaError(f"{label}: a row index lies outside [0, {n_cells}); the file is corrupt")
        counts += np.bincount(rows, minlength=n_cells)
    indptr = np.zeros(n_cells + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    tmp = Path(tempfile.mkdtemp(prefix=".sidecar-", dir=folder.parent))
    try:
        np.save(tmp / "indptr.npy", indptr)
        indices = np.lib.format.open_memmap(tmp / "indices.npy", "w+", index_dtype, (nnz,))
        value_dtype = np.float32 if group["data"].dtype == np.float16 else group["data"].dtype
        data = np.lib.format.open_memmap(tmp / "data.npy", "w+", value_dtype, (nnz,))
        cursor = indptr[:-1].copy()
        for c0 in tqdm(blocks, desc=f"CSC->CSR {label}: write", unit="block"):
            c1 = min(c0 + block_cols, n_vars)
            lo, hi = col_indptr[c0], col_indptr[c1]
            if not _scatter_columns(
                col_indptr[c0 : c1 + 1] - lo,
                group["indices"][lo:hi],
                group["data"][lo:hi].astype(value_dtype, copy=False),  # numba has no float16
                c0,
                cursor,
                indices,
                data,
            ):
                raise SchemaError(f"{label}: a row index lies outside [0, {n_cells}); the file is corrupt")
        indices.flush()
        data.flush()
        del indices, data
        (tmp / "meta.json").write_text(json.dumps({"shape": list(shape), "nnz": nnz}))
        tmp.rename(folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _checked_indptr(group: h5py.Group, size: int, where: str) -> np.ndarray:
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


def _sidecar_rows(path: Path, key: str, group: h5py.Group, shape: tuple[int, int], cache_dir: Path | None):
    """Open (building it first if needed) the row-major copy of a CSC matrix."""
    stat = path.stat()
    tag = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{key}"
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ArgumentError(
            f"cache_dir {str(cache_dir)!r} cannot be created for the CSC sidecar of {path}: {e}"
        ) from e
    folder = (
        cache_dir
        / f"{path.stem}-{key.strip('/').replace('/', '_')}-{hashlib.sha1(tag.encode()).hexdigest()[:16]}"
    )
    if not (folder / "meta.json").exists():
        _build_csr_sidecar(group, shape, folder, f"{path.name}:{key}")
    indptr = np.load(folder / "indptr.npy")
    indices = np.load(folder / "indices.npy", mmap_mode="r")
    data = np.load(folder / "data.npy", mmap_mode="r")
    return _CompressedRows(indptr, indices, data, shape[1]), folder


def _encoding_of(node: h5py.Group | h5py.Dataset, where: str) -> Encoding:
    kind = node.attrs.get("encoding-type", "array" if isinstance(node, h5py.Dataset) else None)
    if isinstance(kind, bytes):
        kind = kind.decode()
    if not isinstance(kind, str):
        raise SchemaError(
            f"{where} has an encoding-type attribute of {type(kind).__name__}; expected a string"
        )
    if kind in ("csr_matrix", "csc_matrix"):
        for part, kinds in (("indptr", "iu"), ("indices", "iu"), ("data", "iufb")):
            if part not in node:
                raise SchemaError(f"{where} is a {kind} without its '{part}' array")
            array = node[part]
            if not isinstance(array, h5py.Dataset) or array.ndim != 1 or array.dtype.kind not in kinds:
                shape, dtype = getattr(array, "shape", None), getattr(array, "dtype", None)
                raise SchemaError(f"{where}/{part} must be a 1-D numeric array; it is {shape} {dtype}")
        data = node["data"]
        return Encoding(
            kind[:3],
            data.dtype,
            node["indices"].dtype,
            node["indptr"].dtype,
            int(data.shape[0]),
            data.chunks,
            data.compression,
        )
    if kind == "array" and isinstance(node, h5py.Dataset):
        if node.dtype.kind not in "iufb":
            raise SchemaError(f"{where} is a dense array of {node.dtype}; expected numbers")
        return Encoding("dense", node.dtype, None, None, None, node.chunks, node.compression)
    raise SchemaError(f"{where} has encoding-type {kind!r}; expected csr_matrix, csc_matrix or a dense array")


def _shape_of(node: h5py.Group | h5py.Dataset, encoding: Encoding, where: str) -> tuple[int, int]:
    raw = node.shape if encoding.kind == "dense" else node.attrs.get("shape", ())
    try:
        shape = tuple(int(s) for s in np.atleast_1d(raw))
    except (TypeError, ValueError):
        raise SchemaError(f"{where} has a shape attribute {raw!r}; expected two integers") from None
    if len(shape) != 2:
        raise SchemaError(f"{where} has shape {shape}; expected a 2-D cells x features matrix")
    return shape  # type: ignore[return-value]


def _read_modalities(f: h5py.File, key: str, n_vars: int, where: str) -> dict[str, Modality]:
    from anndata.io import read_elem

    if "var" not in f:
        raise SchemaError(f"{where}: no 'var' group, so modalities cannot be told apart")
    try:  # the whole frame: old-format files keep categories apart from the codes
        var = read_elem(f["var"])
    except Exception as e:  # anndata raises many kinds on a malformed frame
        raise SchemaError(f"{where}: var cannot be read as an AnnData dataframe ({e})") from e
    if key not in var.columns:
        raise SchemaError(
            f"{where}: var has no column {key!r} to tell modalities apart (var columns: {list(var.columns)})"
        )
    try:
        values = var[key].astype(str).to_numpy()
    except (TypeError, ValueError) as e:
        raise SchemaError(f"{where}: var[{key!r}] cannot be read as text ({e})") from e
    if values.size != n_vars:
        raise SchemaError(f"{where}: var[{key!r}] has {values.size} entries but X has {n_vars} columns")
    found = sorted(set(values.tolist()))
    unknown = [v for v in found if v not in KNOWN_MODALITIES]
    if unknown:
        raise SchemaError(f"{where}: var[{key!r}] has values {found}; expected only {list(KNOWN_MODALITIES)}")
    return {m: Modality(m, np.flatnonzero(values == m)) for m in KNOWN_MODALITIES if m in found}


class MultiomeStore:
    """A read-only multiome h5ad: modalities, matrix encoding, obs, and row reads.

    Build it with :func:`open_multiome`. It holds the file open until :meth:`close` (or the end
    of a ``with`` block).
    """

    def __init__(
        self,
        path: Path,
        file: h5py.File,
        key: str,
        encoding: Encoding,
        shape: tuple[int, int],
        modalities: dict[str, Modality],
        obs: pd.DataFrame,
        reader,
        sidecar: Path | None,
    ) -> None:
        self.path, self._file, self.key, self.encoding = path, file, key, encoding
        self.n_cells, self.n_vars = shape
        self.modalities, self.obs, self._reader, self.sidecar = modalities, obs, reader, sidecar

    def __repr__(self) -> str:
        mods = ", ".join(f"{m.name}={m.width}" for m in self.modalities.values())
        shape = f"{self.n_cells} x {self.n_vars} {self.encoding.kind}"
        return f"MultiomeStore({str(self.path)!r}, {self.key}: {shape}, {mods})"

    def __enter__(self) -> MultiomeStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._reader.close()
        self._file.close()

    def modality(self, name: str) -> Modality:
        if name not in self.modalities:
            raise ArgumentError(
                f"{self.path}: modality {name!r} is not in this file; it has {list(self.modalities)}"
            )
        return self.modalities[name]

    def read_block(self, rows: np.ndarray, empty=np.empty) -> RowBlock:
        """Full-width CSR of sorted unique ``rows``: the loader's hot path.

        ``empty(n, dtype)`` allocates the value and index buffers (pinned memory on the GPU
        path, so the copy to the device can be asynchronous).
        """
        try:
            block = self._reader.read(np.asarray(rows, dtype=np.int64), empty)
            return RowBlock(block.rows, block.indptr, block.indices, _kernel_dtype(block.data))
        except (OSError, RuntimeError) as e:  # h5py reports truncation / corruption so
            raise InputFileError(
                f"{self.path}: reading {self.key} failed ({e}); is the file truncated?"
            ) from e

    def read_rows(self, rows) -> dict[str, sp.csr_matrix | np.ndarray]:
        """Per modality, the requested rows in the requested order (duplicates allowed).

        Sparse encodings give a ``scipy.sparse.csr_matrix`` whose columns are that modality's;
        a dense encoding gives an ``ndarray``.
        """
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if rows.size and (rows.min() < 0 or rows.max() >= self.n_cells):
            raise ArgumentError(
                f"{self.path}: rows must lie in [0, {self.n_cells}), got {rows.min()}..{rows.max()}"
            )
        unique = np.unique(rows)
        block = self.read_block(unique)
        full = sp.csr_matrix((block.data, block.indices, block.indptr), shape=(unique.size, self.n_vars))
        full = full[block.local(rows)]
        out = {}
        for name, mod in self.modalities.items():
            part = (
                full[:, mod.columns] if not mod.contiguous else full[:, mod.columns[0] : mod.columns[-1] + 1]
            )
            out[name] = part.toarray() if self.encoding.kind == "dense" else part.tocsr()
        return out


def open_multiome(
    path: str | os.PathLike,
    *,
    layer: str | None = None,
    modality_key: str = "feature_types",
    cache_dir: str | os.PathLike | None = None,
) -> MultiomeStore:
    """Open a multiome ``.h5ad`` read-only; nothing of the matrix is loaded.

    Parameters
    ----------
    path
        The ``.h5ad`` file.
    layer
        ``None`` for ``X``, else a key of ``layers`` (e.g. ``"counts"``).
    modality_key
        The var column that names each feature's modality (``"GEX"``, ``"ATAC"``).
    cache_dir
        Where a row-major sidecar of a CSC matrix is built (default ``$GPULOAD_CACHE_DIR`` or
        ``~/.cache/gpuload``); unused for CSR and dense files.
    """
    path = Path(path)
    if not path.exists():
        raise InputFileError(f"{path}: no such file")
    if path.is_dir():
        raise InputFileError(f"{path}: is a directory; expected an .h5ad file")
    if path.stat().st_size == 0:
        raise InputFileError(f"{path}: the file is empty; expected an .h5ad (HDF5) file")
    try:
        file = h5py.File(path, "r")
    except OSError as e:
        kind = "is not an HDF5 file" if not h5py.is_hdf5(path) else "cannot be opened (truncated?)"
        raise InputFileError(f"{path}: {kind} ({e})") from e
    try:
        key = "X" if layer is None else f"layers/{layer}"
        if key not in file:
            if layer is None:
                raise SchemaError(f"{path}: no 'X' in the file; keys are {list(file.keys())}")
            found = list(file["layers"].keys()) if "layers" in file else []
            raise SchemaError(f"{path}: no layer {layer!r}; layers are {found}")
        node = file[key]
        where = f"{path}:{key}"
        encoding = _encoding_of(node, where)
        shape = _shape_of(node, encoding, where)
        modalities = _read_modalities(file, modality_key, shape[1], str(path))
        obs = read_obs(file, path)
        if len(obs) != shape[0]:
            raise SchemaError(f"{path}: obs has {len(obs)} rows but {key} has {shape[0]}")
        sidecar = None
        if encoding.kind == "csr":
            indptr = _checked_indptr(node, shape[0] + 1, where)
            raw = open(path, "rb", buffering=0)  # noqa: SIM115 - a file object closes itself when collected
            size = os.fstat(raw.fileno()).st_size
            indices, data = (
                _DirectArray.open_direct(node[k], raw.fileno(), size) or node[k] for k in ("indices", "data")
            )
            reader = _CompressedRows(indptr, indices, data, shape[1], raw)
        elif encoding.kind == "csc":
            reader, sidecar = _sidecar_rows(path, key, node, shape, cache_dir)
        else:
            reader = _DenseRows(node)
    except GpuloadError:
        file.close()
        raise
    except (OSError, RuntimeError, KeyError, ValueError, TypeError) as e:  # h5py on a corrupt file
        file.close()
        raise InputFileError(f"{path}: cannot read {key} ({e}); the file is corrupt") from e
    except BaseException:
        file.close()
        raise
    return MultiomeStore(path, file, key, encoding, shape, modalities, obs, reader, sidecar)
