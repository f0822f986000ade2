"""The per-cell and per-column numbers that transforms need (totals, column sums), computed in
one pass over the selected cells before the first batch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from gpuload.errors import DataValueError

if TYPE_CHECKING:
    from gpuload.formats import MultiomeStore


@dataclass(frozen=True)
class DatasetStats:
    """Per-cell modality totals and full-width column sums over the selected cells."""

    row_totals: dict[str, np.ndarray]  # modality -> [n_cells] (0 outside the selection)
    col_sums: np.ndarray  # [n_vars]
    n_selected: int


def compute_stats(store: MultiomeStore, positions: np.ndarray, block_rows: int = 4096) -> DatasetStats:
    """One pass over the selected rows: totals per cell and modality, sums per column."""
    col_mod = np.full(store.n_vars, -1, dtype=np.int64)
    names = list(store.modalities)
    for i, name in enumerate(names):
        col_mod[store.modalities[name].columns] = i
    totals = np.zeros((store.n_cells, len(names)))
    col_sums = np.zeros(store.n_vars)
    for start in range(0, positions.size, block_rows):
        block = store.read_block(positions[start : start + block_rows])
        bad = (block.indices < 0) | (block.indices >= store.n_vars)
        if bad.any():
            row = block.rows[np.searchsorted(block.indptr, np.flatnonzero(bad)[0], side="right") - 1]
            raise DataValueError(
                f"{store.path}:{store.key} row {row}: a column index lies outside [0, {store.n_vars}); "
                "the file is corrupt"
            )
        values = block.data.astype(np.float64)
        row_of_value = np.repeat(np.arange(block.rows.size), np.diff(block.indptr))
        key = row_of_value * len(names) + col_mod[block.indices]
        sums = np.bincount(key, weights=values, minlength=block.rows.size * len(names))
        totals[block.rows] = sums.reshape(block.rows.size, len(names))
        col_sums += np.bincount(block.indices, weights=values, minlength=store.n_vars)
    return DatasetStats({n: totals[:, i] for i, n in enumerate(names)}, col_sums, int(positions.size))
