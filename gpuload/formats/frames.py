"""obs and var through anndata's own element reader (categoricals, nullable ints, strings, and
the older on-disk layouts such as the real starter file's)."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from gpuload.errors import SchemaError
from gpuload.formats.obs_table import ObsTable
from gpuload.formats.types import Modality


def read_obs(f: h5py.File, path: Path | str) -> pd.DataFrame:
    """The obs frame (one row per cell)."""
    return _read_frame(f, "obs", str(path), "expected an AnnData .h5ad")


def lazy_obs(f: h5py.File, path: Path | str) -> ObsTable:
    """The obs of an ``.h5ad``, its columns read on demand; the older layouts (a compound dataset,
    categories kept in ``__categories``), which anndata reads only as a whole, are read whole."""
    where = str(path)
    group = f.get("obs")
    if (
        not isinstance(group, h5py.Group)
        or _text(group.attrs.get("encoding-type")) != "dataframe"
        or ("__categories" in group)
    ):
        return ObsTable.in_memory(read_obs(f, path), where)
    try:
        index_key = _text(group.attrs["_index"])
        columns = [
            _text(c) for c in np.atleast_1d(group.attrs.get("column-order", np.array([], dtype=object)))
        ]
        n_rows = _length(group[index_key])
    except (KeyError, OSError, RuntimeError, TypeError, ValueError) as e:  # h5py on a malformed group
        raise SchemaError(f"{where}: obs cannot be read as an AnnData dataframe ({e})") from e
    missing = [c for c in columns if c not in group]
    if missing:
        raise SchemaError(f"{where}: obs lists columns {missing} that it does not hold")

    def read_column(key: str):
        return _read_element(group, key, where)

    def read_names() -> pd.Index:
        return pd.Index(np.asarray(_read_element(group, index_key, where)), dtype=object).astype(str)

    return ObsTable(n_rows, columns, read_column, read_names, where)


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _length(node: h5py.Dataset | h5py.Group) -> int:
    """Rows of an obs element: a dataset's first axis, a categorical's or nullable's codes/values."""
    for part in (node,) if isinstance(node, h5py.Dataset) else (node.get(p) for p in ("codes", "values")):
        if isinstance(part, h5py.Dataset):
            if part.ndim != 1:
                raise ValueError(f"{part.name} has shape {part.shape}; expected one entry per cell")
            return int(part.shape[0])
    raise ValueError(f"{node.name} is a group without codes or values")


def _read_element(group: h5py.Group, key: str, where: str):
    """One obs element: numeric arrays and categoricals of text straight with h5py (told apart by
    their parts, without reading attributes, which h5py makes slow), anything else through
    anndata's reader."""
    from anndata.io import read_elem

    try:
        node = group[key]
        if isinstance(node, h5py.Dataset):
            if node.ndim == 1 and node.dtype.kind in "biuf":
                return node[()]
        elif "codes" in node and "categories" in node:
            codes, categories = node["codes"], node["categories"]
            if categories.dtype.kind == "O" and codes.dtype.kind in "iu":
                return pd.Categorical.from_codes(
                    codes[()],
                    categories=pd.Index([_text(c) for c in categories[()]], dtype=object),
                    ordered=bool(node.attrs.get("ordered", False)),
                )
        return read_elem(node)
    except Exception as e:  # anndata and h5py raise many kinds on a malformed element
        raise SchemaError(f"{where}: obs column {key!r} cannot be read ({e})") from e


def read_var(f: h5py.File, where: str) -> pd.DataFrame:
    """The var frame (one row per full-width column)."""
    return _read_frame(f, "var", where, "so modalities cannot be told apart")


def _read_frame(f: h5py.File, name: str, where: str, why: str) -> pd.DataFrame:
    """A dataframe element via anndata's element registry (categoricals, nullable ints, strings,
    and the old-format layouts that keep categories apart from the codes), index as text."""
    from anndata.io import read_elem

    if name not in f:
        raise SchemaError(f"{where}: no {name!r} group; {why}")
    try:
        frame = read_elem(f[name])
    except Exception as e:  # anndata raises many kinds on a malformed frame
        raise SchemaError(f"{where}: {name} cannot be read as an AnnData dataframe ({e})") from e
    if not isinstance(frame, pd.DataFrame):
        raise SchemaError(f"{where}: {name} is a {type(frame).__name__}; expected an AnnData dataframe")
    frame.index = frame.index.astype(str)
    return frame


def modalities_of(var: pd.DataFrame, key: str, n_vars: int, where: str) -> dict[str, Modality]:
    """Each modality's columns, told apart by the var column ``key`` (e.g. ``feature_types``):
    one modality per distinct value, whatever it is (``"GEX"``, ``"Gene Expression"``,
    ``"Peaks"``), in the order of its first column."""
    if key not in var.columns:
        raise SchemaError(
            f"{where}: var has no column {key!r} to tell modalities apart (var columns: {list(var.columns)})"
        )
    missing = np.flatnonzero(var[key].isna().to_numpy())
    if missing.size:
        raise SchemaError(
            f"{where}: var[{key!r}] is missing for {missing.size} features (first: column {missing[0]}, "
            f"{var.index[missing[0]]!r}); every feature needs a modality"
        )
    try:
        values = var[key].astype(str).to_numpy()
    except (TypeError, ValueError) as e:
        raise SchemaError(f"{where}: var[{key!r}] cannot be read as text ({e})") from e
    if values.size != n_vars:
        raise SchemaError(f"{where}: var[{key!r}] has {values.size} entries but X has {n_vars} columns")
    names, first, which = np.unique(values, return_index=True, return_inverse=True)
    columns = np.split(np.argsort(which, kind="stable"), np.cumsum(np.bincount(which))[:-1])
    return {str(names[i]): Modality(str(names[i]), columns[i].astype(np.int64)) for i in np.argsort(first)}


def obsm_keys_of(group: h5py.Group) -> list[str]:
    """The keys of ``obsm`` (empty without one)."""
    return list(group["obsm"].keys()) if "obsm" in group else []


def read_obsm(group: h5py.Group, key: str, n_cells: int, where: str) -> np.ndarray:
    """``obsm[key]`` of ``group`` as float32 ``[n_cells, k]``: a dense numeric array only (a 1-D
    one is one column); a sparse matrix or a dataframe is an error that says so."""
    node = group["obsm"][key]
    kind = node.attrs.get("encoding-type", "array")
    if isinstance(kind, bytes):
        kind = kind.decode()
    if kind in ("csr_matrix", "csc_matrix"):
        raise SchemaError(
            f"{where}: obsm[{key!r}] is a sparse {kind}; obsm_keys takes dense arrays (densify it in "
            "the file, or leave it out)"
        )
    if not isinstance(node, h5py.Dataset) or kind != "array" or node.dtype.kind not in "iufb":
        raise SchemaError(
            f"{where}: obsm[{key!r}] is a {kind} of {getattr(node, 'dtype', 'columns')}; "
            "obsm_keys takes dense numeric arrays"
        )
    values = node[()].astype(np.float32)
    values = values.reshape(-1, 1) if values.ndim == 1 else values
    if values.ndim != 2 or values.shape[0] != n_cells:
        raise SchemaError(f"{where}: obsm[{key!r}] has shape {values.shape}; expected ({n_cells}, k)")
    return np.ascontiguousarray(values)
