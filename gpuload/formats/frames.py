"""obs and var through anndata's own element reader (categoricals, nullable ints, strings, and
the older on-disk layouts such as the real starter file's)."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from gpuload.errors import SchemaError
from gpuload.formats.types import Modality

# The values of var["feature_types"] gpuload knows as modalities.
KNOWN_MODALITIES = ("GEX", "ATAC", "ADT")


def read_obs(f: h5py.File, path: Path) -> pd.DataFrame:
    """The obs frame via anndata's element registry (categoricals, nullable ints, strings)."""
    from anndata.io import read_elem

    if "obs" not in f:
        raise SchemaError(f"{path}: no 'obs' group; expected an AnnData .h5ad")
    try:
        obs = read_elem(f["obs"])
    except Exception as e:  # anndata raises many kinds on a malformed frame
        raise SchemaError(f"{path}: obs cannot be read as an AnnData dataframe ({e})") from e
    if not isinstance(obs, pd.DataFrame):
        raise SchemaError(f"{path}: obs is a {type(obs).__name__}; expected an AnnData dataframe")
    obs.index = obs.index.astype(str)
    return obs


def read_var(f: h5py.File, where: str) -> pd.DataFrame:
    """The var frame (one row per full-width column) via anndata's element registry."""
    from anndata.io import read_elem

    if "var" not in f:
        raise SchemaError(f"{where}: no 'var' group, so modalities cannot be told apart")
    try:  # the whole frame: old-format files keep categories apart from the codes
        var = read_elem(f["var"])
    except Exception as e:  # anndata raises many kinds on a malformed frame
        raise SchemaError(f"{where}: var cannot be read as an AnnData dataframe ({e})") from e
    if not isinstance(var, pd.DataFrame):
        raise SchemaError(f"{where}: var is a {type(var).__name__}; expected an AnnData dataframe")
    var.index = var.index.astype(str)
    return var


def modalities_of(var: pd.DataFrame, key: str, n_vars: int, where: str) -> dict[str, Modality]:
    """Each modality's columns, told apart by the var column ``key`` (e.g. ``feature_types``)."""
    if key not in var.columns:
        raise SchemaError(
            f"{where}: var has no column {key!r} to tell modalities apart (var columns: {list(var.columns)})"
        )
    try:
        values = var[key].astype(str).to_numpy()
    except (TypeError, ValueError) as e:
        raise SchemaError(f"{where}: var[{key!r}] cannot be read as text ({e})") from e
    if values.size != n_vars:
        raise SchemaError(f"{where}: var[{key!r}] has {values.size} entries but X has {n_vars} columns")
    found = sorted(set(values.tolist()))
    unknown = [v for v in found if v not in KNOWN_MODALITIES]
    if unknown:
        raise SchemaError(f"{where}: var[{key!r}] has values {found}; expected only {list(KNOWN_MODALITIES)}")
    return {m: Modality(m, np.flatnonzero(values == m)) for m in KNOWN_MODALITIES if m in found}
