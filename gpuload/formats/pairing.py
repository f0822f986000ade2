"""Modalities stored apart, paired by global cell: the rows of each modality's own reader placed
side by side (:class:`PairedRows`), and what follows each modality's cells to the global ones.

Two formats store modalities apart: a MuData ``.h5mu`` (its ``obsmap`` says which row of each
modality is which global cell) and a ``{modality: file}`` mapping of ``.h5ad`` files (paired by
obs_names, :func:`rows_of_cells`). Both say it as ``local``: the modality's row of each global
cell, -1 where it has none; a cell a modality lacks reads as an empty (all-zero) row of it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from numba import njit

from gpuload.formats.types import RowBlock, RowReader, kernel_values


@njit(cache=True, nogil=True)
def _place_rows(indptr, before, present, position, src_indptr, src_indices, src_data, offset, indices, data):
    """Copy row ``position[k]`` of one modality's block into full-width row ``present[k]``, after
    the ``before`` values of the modalities before it, its columns shifted by ``offset``."""
    for k in range(present.size):
        lo, hi = src_indptr[position[k]], src_indptr[position[k] + 1]
        at = indptr[present[k]] + before[present[k]]
        for t in range(hi - lo):
            indices[at + t] = src_indices[lo + t] + offset
            data[at + t] = src_data[lo + t]


@dataclass(frozen=True)
class PairedModality:
    """One modality's reader, where its columns start, and its row of each global cell."""

    reader: RowReader
    offset: int  # first full-width column
    local: np.ndarray  # [n_cells] int64: the modality's row of each global cell, -1 where none


class PairedRows:
    """Full-width CSR rows of global cells, from each modality's own reader (see the module)."""

    sidecar = None

    def __init__(self, parts: list[PairedModality], dtype: np.dtype, index_dtype: np.dtype) -> None:
        self.parts, self.dtype, self.index_dtype = parts, dtype, index_dtype

    def close(self) -> None:
        for part in self.parts:
            part.reader.close()

    def stored_values(self, rows: np.ndarray) -> int | None:
        total = 0
        for part in self.parts:
            local = part.local[rows]
            n = part.reader.stored_values(np.sort(local[local >= 0]))
            if n is None:
                return None
            total += n
        return total

    def read(self, rows: np.ndarray, empty=np.empty) -> RowBlock:
        lengths = np.zeros((rows.size, len(self.parts)), dtype=np.int64)
        pieces = []
        for m, part in enumerate(self.parts):
            local = part.local[rows]
            present = np.flatnonzero(local >= 0)
            order = np.argsort(local[present], kind="stable")
            block = part.reader.read(local[present][order])
            block = RowBlock(block.rows, block.indptr, block.indices, kernel_values(block.data))
            position = np.empty(present.size, dtype=np.int64)  # each present row's place in block
            position[order] = np.arange(present.size)
            lengths[present, m] = np.diff(block.indptr)[position]
            pieces.append((present, position, block))
        indptr = np.zeros(rows.size + 1, dtype=np.int64)
        np.cumsum(lengths.sum(axis=1), out=indptr[1:])
        total = int(indptr[-1])
        indices = empty(total, self.index_dtype)  # the order fetch sizes page-locked reads in
        data = empty(total, self.dtype)
        before = np.cumsum(lengths, axis=1) - lengths  # a row's values of earlier modalities
        for m, (part, (present, position, block)) in enumerate(zip(self.parts, pieces, strict=True)):
            _place_rows(
                indptr, np.ascontiguousarray(before[:, m]), present, position, block.indptr,
                block.indices, block.data, part.offset, indices, data,
            )  # fmt: skip
        return RowBlock(rows, indptr, indices, data)


def rows_of_cells(hits: np.ndarray, n_cells: int) -> np.ndarray:
    """Each of ``n_cells`` cells' row in a modality (-1: none) from each row's cell ``hits`` (-1:
    none; what ``cells.get_indexer(the modality's obs_names)`` gives)."""
    local = np.full(n_cells, -1, dtype=np.int64)
    local[hits[hits >= 0]] = np.flatnonzero(hits >= 0)
    return local


def per_cell(frame: pd.DataFrame, local: np.ndarray, cells: pd.Index) -> pd.DataFrame:
    """A modality's obs rows for each global cell (``local``), missing where it lacks the cell."""
    return frame.reset_index(drop=True).reindex(local).set_axis(cells)


def spread_rows(values: np.ndarray, local: np.ndarray) -> np.ndarray:
    """A modality's float32 rows (an obsm array) for each global cell, NaN where it lacks one."""
    out = np.full((local.size, values.shape[1]), np.nan, dtype=np.float32)
    out[local >= 0] = values[local[local >= 0]]
    return out
