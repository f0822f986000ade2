"""Feature selection: which of a modality's columns the loader delivers.

A spec per modality (or one for all) narrows each :class:`~gpuload.formats.Modality` to the
chosen columns; the kernels then write only those (columns left out route to -1 in the
layout). Every kind of spec keeps the chosen columns in file order, so a sparse batch's column
indices stay sorted and ``loader.var_names(modality)`` says what each output column is:

- ``None``: every column;
- a boolean mask over the modality's columns;
- a sequence of var names (delivered in file order, whatever order they are given in);
- the name of a boolean var column, e.g. ``"highly_variable"``;
- ``{"top": k}``: the ``k`` columns nonzero in the most selected cells (ties: file order).
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from gpuload.checks import is_int
from gpuload.errors import ArgumentError
from gpuload.formats import Modality

TOP = "top"


def needs_counts(specs: dict[str, object]) -> bool:
    """Whether any spec is ``{"top": k}``, which needs the per-column nonzero counts."""
    return any(_is_top(spec) for spec in specs.values())


def parse_feature_specs(features, names: list[str]) -> dict[str, object]:
    """One spec per loaded modality, from one spec for all or a ``{modality: spec}`` dict."""
    if isinstance(features, Mapping) and not _is_top(features):
        unknown = [k for k in features if k not in names]
        if unknown:
            raise ArgumentError(f"features names modalities {unknown} that are not loaded; loaded: {names}")
        return {n: features.get(n) for n in names}
    return dict.fromkeys(names, features)


def select_features(
    modality: Modality, spec, var: pd.DataFrame, col_nonzero: np.ndarray | None, where: str
) -> Modality:
    """``modality`` narrowed to the columns ``spec`` chooses (see the module docstring).

    ``col_nonzero`` holds, per full-width column, the number of selected cells with a nonzero
    value there (needed by ``{"top": k}`` only).
    """
    if spec is None:
        return modality
    what = f"features[{modality.name!r}]"
    if _is_top(spec):
        keep = _top_columns(modality, spec, col_nonzero, what)
    elif isinstance(spec, str):
        keep = _var_column_mask(modality, spec, var, where, what)
    else:
        keep = _mask_or_names(modality, spec, var, where, what)
    if not keep.any():
        raise ArgumentError(f"{what} selects no features; at least one column is needed")
    return Modality(modality.name, modality.columns[keep])


def _is_top(spec) -> bool:
    return isinstance(spec, Mapping) and TOP in spec


def _top_columns(modality: Modality, spec: Mapping, col_nonzero: np.ndarray | None, what: str) -> np.ndarray:
    extra = [key for key in spec if key != TOP]
    if extra:
        raise ArgumentError(f"{what} = {dict(spec)!r}: the only key of a top-k spec is 'top', got {extra}")
    k = spec[TOP]
    if not is_int(k):
        raise ArgumentError(f"{what}: 'top' must be an integer number of features, got {k!r}")
    if not 1 <= k <= modality.width:
        raise ArgumentError(f"{what}: 'top' must be in [1, {modality.width}] (the modality's width), got {k}")
    assert col_nonzero is not None, "the plan counts nonzeros where a spec needs them (needs_counts)"
    counts = col_nonzero[modality.columns]
    # A stable sort on -count keeps the earlier column first among equal counts.
    chosen = np.argsort(-counts, kind="stable")[: int(k)]
    keep = np.zeros(modality.width, dtype=bool)
    keep[chosen] = True
    return keep


def _var_column_mask(modality: Modality, column: str, var: pd.DataFrame, where: str, what: str) -> np.ndarray:
    if column not in var.columns:
        close = difflib.get_close_matches(column, [str(c) for c in var.columns], n=3)
        hint = f"; did you mean {close}?" if close else f"; var columns: {list(var.columns)}"
        raise ArgumentError(f"{where}: {what} = {column!r} is not a var column{hint}")
    values = var[column].iloc[modality.columns]
    if not pd.api.types.is_bool_dtype(values.dtype) or values.isna().any():
        raise ArgumentError(
            f"{where}: {what}: var[{column!r}] must be a boolean column without missing values, "
            f"got dtype {values.dtype}"
        )
    return values.to_numpy(dtype=bool)


def _mask_or_names(modality: Modality, spec, var: pd.DataFrame, where: str, what: str) -> np.ndarray:
    if not isinstance(spec, (Sequence, np.ndarray, pd.Index, pd.Series)):
        raise ArgumentError(
            f"{what} must be None, a boolean mask, a list of var names, a boolean var column's name "
            f"or {{'top': k}}; got {type(spec).__name__}"
        )
    values = np.asarray(spec)
    if values.dtype == bool:
        if values.shape != (modality.width,):
            raise ArgumentError(
                f"{what}: a boolean mask must have one entry per {modality.name} feature "
                f"({modality.width}), got shape {values.shape}"
            )
        return values
    if values.size == 0:
        raise ArgumentError(f"{what} selects no features; at least one column is needed")
    if values.ndim != 1 or not all(isinstance(v, str) for v in values.tolist()):
        raise ArgumentError(
            f"{what}: expected a boolean mask or a list of var names (str), got {values[:3]!r}..."
        )
    names = var.index[modality.columns]
    position = pd.Index(names).get_indexer(values) if names.is_unique else None
    if position is None:
        raise ArgumentError(f"{where}: the {modality.name} var names are not unique; select by mask instead")
    missing = values[position < 0]
    if missing.size:
        close = difflib.get_close_matches(str(missing[0]), names.tolist(), n=3)
        hint = f"; did you mean {close}?" if close else ""
        raise ArgumentError(
            f"{where}: {what}: {missing.size} name(s) are not {modality.name} features, "
            f"e.g. {str(missing[0])!r}{hint}"
        )
    if np.unique(position).size != position.size:
        raise ArgumentError(f"{what}: the list of names repeats a feature")
    keep = np.zeros(modality.width, dtype=bool)
    keep[position] = True
    return keep
