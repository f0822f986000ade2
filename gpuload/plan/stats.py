"""The per-cell and per-column numbers that transforms and ``{"top": k}`` feature selection need
(totals, column sums, nonzero counts), computed in one pass over the selected cells before the
first batch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from gpuload.errors import DataValueError

if TYPE_CHECKING:
    from gpuload.formats import Modality, MultiomeStore


@dataclass(frozen=True)
class DatasetStats:
    """Per-cell modality totals, full-width column sums and nonzero counts over the selected
    cells. A modality's totals sum its given columns only (after feature selection: the
    selected ones, as ``adata[:, mask]`` would)."""

    row_totals: dict[str, np.ndarray]  # modality -> [n_cells] (0 outside the selection)
    col_sums: np.ndarray  # [n_vars]
    col_nonzero: np.ndarray  # [n_vars] int64: selected cells with a nonzero value there
    n_measured: dict[str, int]  # modality -> selected cells it measured (an .h5mu lacks some)


def compute_stats(
    store: MultiomeStore, positions: np.ndarray, modalities: list[Modality], block_rows: int = 4096
) -> DatasetStats:
    """One pass over the selected rows: totals per cell over each modality's columns, sums and
    nonzero counts per column."""
    names = [m.name for m in modalities]
    col_mod = np.full(store.n_vars + 1, len(names), dtype=np.int64)  # last slot: no modality
    for i, mod in enumerate(modalities):
        col_mod[mod.columns] = i
    totals = np.zeros((store.n_cells, len(names)))
    col_sums = np.zeros(store.n_vars)
    col_nonzero = np.zeros(store.n_vars, dtype=np.int64)
    for start in range(0, positions.size, block_rows):
        block = store.read_block(positions[start : start + block_rows])
        bad = (block.indices < 0) | (block.indices >= store.n_vars)
        if bad.any():
            row = block.rows[np.searchsorted(block.indptr, np.flatnonzero(bad)[0], side="right") - 1]
            raise DataValueError(
                f"{store.where_row(int(row))}: a column index lies outside [0, {store.n_vars}); "
                "the file is corrupt"
            )
        values = block.data.astype(np.float64)
        row_of_value = np.repeat(np.arange(block.rows.size), np.diff(block.indptr))
        slots = len(names) + 1
        key = row_of_value * slots + col_mod[block.indices]
        sums = np.bincount(key, weights=values, minlength=block.rows.size * slots)
        totals[block.rows] = sums.reshape(block.rows.size, slots)[:, :-1]
        col_sums += np.bincount(block.indices, weights=values, minlength=store.n_vars)
        col_nonzero += np.bincount(block.indices[values != 0], minlength=store.n_vars)
    totals_of = {n: totals[:, i] for i, n in enumerate(names)}
    everyone = np.ones(store.n_cells, dtype=bool)
    measured = {m.name: int(store.measured.get(m.data_name, everyone)[positions].sum()) for m in modalities}
    return DatasetStats(totals_of, col_sums, col_nonzero, measured)
