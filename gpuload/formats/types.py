"""The vocabulary every reader speaks: how a matrix is stored, which columns a modality owns, and
the block of rows a read returns."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt

# ``empty(n, dtype)``: where a read puts its buffers (np.empty, or a page-locked ring's Carver).
Allocator = Callable[[int, npt.DTypeLike], np.ndarray]


@dataclass(frozen=True)
class Encoding:
    """How the matrix is stored: what ``gpuload info`` prints and what the readers dispatch on."""

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
    # the data's name for it, where a loader delivers it under another key ({"GEX": "rna"})
    source: str | None = None

    @property
    def data_name(self) -> str:
        """Its name in the data (the key of the store's modalities, obs ``name:column`` prefixes)."""
        return self.source or self.name

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


class RowReader(Protocol):
    """What every on-disk encoding's reader offers the store (see :mod:`gpuload.formats.encoding`)."""

    def read(self, rows: np.ndarray, empty: Allocator = np.empty) -> RowBlock:
        """Full-width CSR of sorted unique ``rows``; ``empty(n, dtype)`` allocates the buffers."""

    def stored_values(self, rows: np.ndarray) -> int | None:
        """How many values ``rows`` store, or None where only a read can tell (dense)."""

    def close(self) -> None:
        """Release what the reader opened itself."""

    @property
    def sidecar(self) -> Path | None:
        """The folder of a CSC matrix's row-major copy that the reader reads (None otherwise)."""


def row_runs(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Split sorted unique rows into maximal runs of consecutive ids: (starts, stops)."""
    if rows.size == 0:
        return rows[:0], rows[:0]
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    starts = rows[np.r_[0, breaks]]
    stops = rows[np.r_[breaks - 1, rows.size - 1]] + 1
    return starts, stops


def kernel_values(values: np.ndarray) -> np.ndarray:
    """float16 values as float32: neither scipy nor numba's CPU target computes in float16."""
    return values.astype(np.float32) if values.dtype == np.float16 else values


def combined_encoding(encodings: list[Encoding], index_dtype: npt.DTypeLike) -> Encoding:
    """What a matrix assembled from several stored ones delivers (the modalities of an .h5mu, the
    files of a dataset): their kind if they share one, else "mixed"; their common value type,
    float16 widened as :func:`kernel_values` widens it; ``index_dtype`` for the column indices."""
    kinds = {e.kind for e in encodings}
    nnz = [e.nnz for e in encodings if e.nnz is not None]
    return Encoding(
        kind=kinds.pop() if len(kinds) == 1 else "mixed",
        dtype=np.result_type(*[np.float32 if e.dtype == np.float16 else e.dtype for e in encodings]),
        index_dtype=np.dtype(index_dtype),
        indptr_dtype=np.dtype(np.int64),
        nnz=sum(nnz) if len(nnz) == len(encodings) else None,
        chunks=None,
        compression=None,
    )
