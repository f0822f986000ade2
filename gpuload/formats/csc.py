"""CSC matrices: a row is scattered over every column, so a shuffled batch would read the whole
matrix. A row-major sidecar (``.npy`` files, memory-mapped) is built once, with a progress bar,
in a cache folder the user controls, and read like any CSR matrix; the input file is never
touched. The sidecar is keyed by the file's path, size, mtime and the matrix key, and renamed
into place atomically, so a half-built one is never used.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path

import h5py
import numpy as np
from numba import njit

from gpuload.errors import ArgumentError, SchemaError
from gpuload.formats.csr import CsrRows, checked_indptr
from gpuload.user_cache import default_cache_dir


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
    from tqdm.auto import tqdm  # the progress bar of a rare, long build: not worth loading with gpuload

    n_cells, n_vars = shape
    col_indptr = checked_indptr(group, n_vars + 1, label)
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
        try:
            tmp.rename(folder)
        except OSError:
            # Another process (a DDP rank) built the same sidecar meanwhile: use its copy.
            if not (folder / "meta.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def open_csc_rows(
    path: Path, key: str, group: h5py.Group, shape: tuple[int, int], cache_dir: Path | None
) -> CsrRows:
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
    return CsrRows(indptr, indices, data, shape[1], sidecar=folder)
