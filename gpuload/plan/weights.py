"""``weights=``: per-cell sampling weights over the selected cells, from an array or an obs column.

A column name asks for balanced categories: each cell weighs 1 / (selected cells of its value),
so every value is drawn equally often overall, and cells whose value is missing weigh 0 (they
are never drawn). A float column is refused: its distinct values are measurements, not
categories (pass an array of weights computed from it instead).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from gpuload.checks import weight_array
from gpuload.errors import ArgumentError, ObsKeyError
from gpuload.plan.obs import select_columns


def cell_weights(weights, obs: pd.DataFrame, positions: np.ndarray, path: Path | str) -> np.ndarray | None:
    """float64 weights aligned with ``positions`` (the selected file rows, sorted), or None."""
    if weights is None:
        return None
    if isinstance(weights, str):
        return balanced_weights(obs, weights, positions, path)
    return weight_array(weights, positions.size)


def balanced_weights(obs: pd.DataFrame, key: str, positions: np.ndarray, path: Path | str) -> np.ndarray:
    """Weights that make every value of obs column ``key`` equally likely among the selected
    cells (0 for missing values)."""
    try:
        select_columns(obs, [key], [], path)
    except ObsKeyError as e:
        raise ObsKeyError(f"weights={key!r}: {e}") from None
    column = obs[key].iloc[positions]
    if pd.api.types.is_float_dtype(column.dtype):
        raise ArgumentError(
            f"weights={key!r}: obs column {key!r} is {column.dtype}, not categories; expected a "
            "categorical, string, integer or boolean column, or pass an array of per-cell weights"
        )
    codes = pd.factorize(column, use_na_sentinel=True)[0]
    if (codes < 0).all():
        raise ArgumentError(f"weights={key!r}: every selected cell's value is missing, so all weights are 0")
    counts = np.bincount(codes[codes >= 0])
    return np.where(codes >= 0, 1.0 / counts[np.maximum(codes, 0)], 0.0)
