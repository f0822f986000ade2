"""Where each full-width column goes in the output: the column routing every kernel reads.

Full-width column ``j`` goes where ``col_dest[j]`` says: -1 when no requested modality has it,
else ``m << DEST_SHIFT | c`` for column ``c`` of modality ``m``'s output (see
:mod:`gpuload.kernels.arithmetic`, which also says why one packed int32 table).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gpuload.errors import ArgumentError
from gpuload.kernels.arithmetic import DEST_MASK, DEST_SHIFT, MAX_MODALITIES


@dataclass(frozen=True)
class Layout:
    """Column routing and per-modality transform codes (numpy arrays)."""

    names: tuple[str, ...]
    widths: tuple[int, ...]
    col_dest: np.ndarray  # [n_vars] int32: -1, or modality << DEST_SHIFT | output column
    mod_code: np.ndarray  # [n_mod] int64
    mod_threshold: np.ndarray  # [n_mod] float64
    col_weight: np.ndarray  # [n_vars] float32

    @property
    def col_mod(self) -> np.ndarray:
        """Each full-width column's modality (-1: none)."""
        return np.where(self.col_dest >= 0, self.col_dest >> DEST_SHIFT, -1)


def column_destinations(n_vars: int, modality_columns: list[np.ndarray]) -> np.ndarray:
    """``col_dest`` for modalities owning the given full-width columns (in output order)."""
    if len(modality_columns) > MAX_MODALITIES:
        raise ArgumentError(
            f"at most {MAX_MODALITIES} modalities can be loaded at once, got {len(modality_columns)}"
        )
    dest = np.full(n_vars, -1, dtype=np.int32)
    for m, columns in enumerate(modality_columns):
        if columns.size > DEST_MASK + 1:
            raise ArgumentError(
                f"a modality of {columns.size} columns is wider than the {DEST_MASK + 1} supported"
            )
        dest[columns] = (m << DEST_SHIFT) | np.arange(columns.size, dtype=np.int32)
    return dest
