"""Per-cell metadata (obs) for a loader: which columns, which cells, and the columns as arrays.

Numeric columns become float32 (NaN kept) or int64, booleans bool, and categoricals or strings
int64 codes plus their category list, packed by kind (:class:`ObsColumns`). Where they live on
the device is the assembler's business; nothing here knows which face runs.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from gpuload.errors import ArgumentError, ObsKeyError, SchemaError


def modality_of_column(column: str, modalities: Sequence[str]) -> str | None:
    """The modality of ``modalities`` (the data's) a column belongs to by its name
    (``GEX_n_counts``, ``nCount_ATAC``, a MuData's ``rna:n_genes``), None for shared columns."""
    for m in modalities:
        if column.startswith((f"{m}_", f"{m}:")) or column.endswith(f"_{m}"):
            return m
    return None


def select_columns(obs: pd.DataFrame, keys, modalities, path, known: Sequence[str] = ()) -> list[str]:
    """Resolve ``obs_keys``: None = all columns, or a list (each must exist).

    With a single modality of ``known`` (the data's modalities) and ``keys=None``, only that
    modality's columns and the shared ones are kept (``GEX_n_counts`` but not
    ``ATAC_nCount_peaks``).
    """
    if keys is None:
        if len(modalities) == 1 and modalities[0] in known:
            keep = {modalities[0], None}
            return [c for c in obs.columns if modality_of_column(c, known) in keep]
        return list(obs.columns)
    if isinstance(keys, str):
        keys = [keys]
    for k in keys:
        if k not in obs.columns:
            close = difflib.get_close_matches(k, list(obs.columns), n=3, cutoff=0.5)
            hint = f"; did you mean {close}?" if close else f"; obs columns are {list(obs.columns)}"
            raise ObsKeyError(f"{path}: obs has no column {k!r}{hint}")
    return list(keys)


def find_column(obs: pd.DataFrame, candidates: tuple[str, ...]) -> str | None:
    """The first of ``candidates`` that obs has (the real files disagree on prefixes)."""
    return next((c for c in candidates if c in obs.columns), None)


def query_mask(obs: pd.DataFrame, expression: str) -> np.ndarray:
    """The boolean mask of the rows ``obs.query(expression)`` selects (pandas evaluates it)."""
    hits = obs.assign(_gpuload_pos=np.arange(len(obs))).query(expression)["_gpuload_pos"].to_numpy()
    mask = np.zeros(len(obs), dtype=bool)
    mask[hits] = True
    return mask


def subset_positions(
    obs: pd.DataFrame,
    subset,
    split: Mapping[str, Collection] | None,
    path: Path | str,
    query: Callable = query_mask,
) -> np.ndarray:
    """Sorted row positions selected by ``subset`` (query string, bool mask or int indices)
    and ``split`` (``{obs column: allowed values}``: the cells whose every named column holds an
    allowed value; a named split such as the competition's is resolved to this by the options);
    ``query(obs, expression)`` evaluates a query string (a GPU face evaluates it with cuDF)."""
    n = len(obs)
    keep = np.ones(n, dtype=bool)
    if subset is not None:
        keep &= _subset_mask(obs, subset, path, query)
    for column, allowed in (split or {}).items():
        if column not in obs.columns:
            raise ObsKeyError(
                f"{path}: split selects cells by obs {column!r}, which obs lacks; its columns are "
                f"{list(obs.columns)}"
            )
        keep &= obs[column].isin(list(allowed)).to_numpy(dtype=bool)
    positions = np.flatnonzero(keep)
    if positions.size == 0:
        what = repr(subset) if isinstance(subset, str | None) else f"<{len(subset)} entries>"
        chosen = None if split is None else {column: list(values) for column, values in split.items()}
        raise ArgumentError(f"{path}: subset={what} split={chosen!r} selects no cells")
    return positions


def _subset_mask(obs: pd.DataFrame, subset, path: Path | str, query: Callable) -> np.ndarray:
    n = len(obs)
    if isinstance(subset, str):
        named = [c for c in obs.columns if c in subset]  # read only the columns it can name
        try:
            return query(obs.to_frame(named), subset)
        except Exception as e:  # pandas raises several kinds for a bad expression
            raise ArgumentError(f"{path}: subset query {subset!r} failed: {e}") from e
    arr = np.asarray(subset)
    if arr.dtype == bool:
        if arr.shape != (n,):
            raise ArgumentError(f"{path}: a boolean subset must have {n} entries, got shape {arr.shape}")
        return arr
    if arr.dtype.kind in "iu":
        arr = arr.reshape(-1).astype(np.int64)
        if arr.size and (arr.min() < 0 or arr.max() >= n):
            raise ArgumentError(f"{path}: subset indices must lie in [0, {n}), got {arr.min()}..{arr.max()}")
        if np.unique(arr).size != arr.size:
            raise ArgumentError(f"{path}: subset indices contain duplicates; a subset is a set of cells")
        mask = np.zeros(n, dtype=bool)
        mask[arr] = True
        return mask
    raise ArgumentError(f"subset must be a query string, a boolean mask or integer indices, got {arr.dtype}")


@dataclass(frozen=True)
class ObsColumns:
    """The delivered obs columns packed by kind into matrices with one row per column, so that a
    super-batch gathers every column of a kind in one pass over its rows.

    ``floats`` (float32, NaN kept), ``ints`` (int64 columns, then the categoricals' codes, -1 for
    missing) and ``bools`` (uint8) are ``[columns, n_cells]``; ``numeric`` lists the numeric
    columns in obs order with their kind, ``categories`` each categorical's category list.
    """

    float_keys: tuple[str, ...]
    int_keys: tuple[str, ...]
    code_keys: tuple[str, ...]
    bool_keys: tuple[str, ...]
    floats: np.ndarray
    ints: np.ndarray
    bools: np.ndarray
    numeric: tuple[tuple[str, str], ...]  # (key, "float" | "int" | "bool") in obs order
    categories: dict[str, list[str]]

    @classmethod
    def from_frame(cls, obs: pd.DataFrame, keys: list[str], where: str = "obs") -> ObsColumns:
        """Pack ``obs[keys]``; ``where`` (the file) names a column that cannot be batched."""
        columns: dict[str, list] = {"float": [], "int": [], "code": [], "bool": []}
        names: dict[str, list[str]] = {kind: [] for kind in columns}
        numeric, categories = [], {}
        for k in keys:
            try:
                kind, values, column_categories = _column_values(obs[k])
            except (TypeError, ValueError, NotImplementedError) as e:  # pandas on a malformed column
                raise SchemaError(f"{where}: obs column {k!r} cannot be batched ({e})") from e
            if values.shape != (len(obs),):
                raise SchemaError(
                    f"{where}: obs column {k!r} has shape {values.shape}; expected ({len(obs)},)"
                )
            if column_categories is not None:
                categories[k] = column_categories
            columns[kind].append(values)
            names[kind].append(k)
            if kind != "code":
                numeric.append((k, kind))

        def matrix(parts: list[np.ndarray], dtype) -> np.ndarray:
            return np.stack(parts).astype(dtype, copy=False) if parts else np.zeros((0, len(obs)), dtype)

        return cls(
            float_keys=tuple(names["float"]),
            int_keys=tuple(names["int"]),
            code_keys=tuple(names["code"]),
            bool_keys=tuple(names["bool"]),
            floats=matrix(columns["float"], np.float32),
            ints=matrix(columns["int"] + columns["code"], np.int64),
            bools=matrix(columns["bool"], np.uint8),
            numeric=tuple(numeric),
            categories=categories,
        )

    def codes(self, key: str) -> np.ndarray:
        """The host codes of categorical ``key`` for every cell."""
        return self.ints[len(self.int_keys) + self.code_keys.index(key)]


def _column_values(col: pd.Series) -> tuple[str, np.ndarray, list[str] | None]:
    """(kind, values, categories) of one obs column: how :class:`ObsColumns` packs it."""
    dtype = col.dtype
    if (
        isinstance(dtype, pd.CategoricalDtype)
        or pd.api.types.is_object_dtype(dtype)
        or pd.api.types.is_string_dtype(dtype)
    ):
        cat = col.astype("category")
        return "code", cat.cat.codes.to_numpy().astype(np.int64), [str(c) for c in cat.cat.categories]
    if pd.api.types.is_bool_dtype(dtype):
        return "bool", col.to_numpy(dtype=bool, na_value=False).astype(np.uint8), None
    if pd.api.types.is_integer_dtype(dtype) and not col.isna().any():
        return "int", col.to_numpy(dtype=np.int64), None
    if pd.api.types.is_numeric_dtype(dtype):
        return "float", col.to_numpy(dtype=np.float32, na_value=np.nan), None
    raise SchemaError(f"obs column {col.name!r} has dtype {dtype}, which gpuload cannot batch")
