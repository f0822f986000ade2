"""Opening a MuData ``.h5mu``: one matrix per modality (``mod/<name>``), paired by global cell.

MuData keeps each modality as an AnnData of its own cells and says, in ``obsmap/<name>``, which
row of the modality (1-based; 0: none) belongs to each global cell, in the order of the global
``obs``. The store presents the modalities side by side in ``mod-order``: global cell ``i`` is
row ``i``, and a cell that a modality lacks reads as an empty (all-zero) row of it
(:mod:`~gpuload.formats.pairing`). obs is the
global obs (mudata copies each modality's columns there as ``mod:column``; columns it did not
copy are added the same way); var is the modalities' var frames one after the other.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from gpuload.errors import ArgumentError, GpuloadError, InputFileError, SchemaError
from gpuload.formats.encoding import ROW_READERS
from gpuload.formats.frames import obsm_keys_of, read_obs, read_obsm, read_var
from gpuload.formats.hdf5 import find_matrix, layers_of
from gpuload.formats.lazy import LazyReader
from gpuload.formats.pairing import PairedModality, PairedRows, per_cell, rows_of_cells, spread_rows
from gpuload.formats.store import MultiomeStore
from gpuload.formats.types import Modality, RowReader, combined_encoding


def is_mudata(file: h5py.File) -> bool:
    """What the file says it is: a MuData root ``encoding-type`` (or, in files without one, a
    ``mod`` group and no ``X``)."""
    kind = file.attrs.get("encoding-type", "")
    return (kind.decode() if isinstance(kind, bytes) else kind) == "MuData" or (
        "mod" in file and "X" not in file
    )


def _local_rows(
    file: h5py.File, name: str, obs: pd.DataFrame, mod_obs: pd.DataFrame, where: str
) -> np.ndarray:
    """The modality's row of each global cell (-1: none), from ``obsmap`` (or, in files without
    one, by matching obs names)."""
    n, n_mod = len(obs), len(mod_obs)
    if "obsmap" in file and name in file["obsmap"]:
        raw = file["obsmap"][name][()]
        if raw.shape != (n,) or raw.dtype.kind not in "iu":
            raise SchemaError(f"{where}: obsmap/{name} is {raw.shape} {raw.dtype}; expected ({n},) integers")
        local = raw.astype(np.int64) - 1
    else:
        if not obs.index.is_unique:
            raise SchemaError(f"{where}: no obsmap/{name}, and the global obs names are not unique")
        local = rows_of_cells(obs.index.get_indexer(mod_obs.index), n)
    used = local[local >= 0]
    if local.min(initial=0) < -1 or used.max(initial=-1) >= n_mod or np.unique(used).size != used.size:
        raise SchemaError(
            f"{where}: obsmap/{name} must give each global cell a distinct row of the {n_mod} "
            "cells of the modality, or 0 for none"
        )
    return local


def _pulled_obs(obs: pd.DataFrame, name: str, mod_obs: pd.DataFrame, local: np.ndarray) -> dict:
    """The modality's obs columns the global obs lacks, as ``name:column`` per global cell."""
    own = [c for c in mod_obs.columns if f"{name}:{c}" not in obs.columns]
    return per_cell(mod_obs[own], local, obs.index).add_prefix(f"{name}:").to_dict("series")


def open_h5mu(path: Path, file: h5py.File, *, layer, cache_dir, lazy: bool = False) -> MultiomeStore:
    """The store of an open ``.h5mu`` (closed here when it cannot be read); ``layer`` is None
    (each modality's X), a layer name for every modality, or ``{modality: layer or None}``."""
    readers: list[RowReader] = []  # opened so far: closed again if the file cannot be read
    try:
        return _open(path, file, layer, cache_dir, lazy, readers)
    except BaseException as e:
        for reader in readers:
            reader.close()
        file.close()
        if not isinstance(e, GpuloadError) and isinstance(
            e, (OSError, RuntimeError, KeyError, ValueError, TypeError)
        ):
            raise InputFileError(f"{path}: cannot be read as a MuData file ({e}); the file is corrupt") from e
        raise


def _open(path: Path, file: h5py.File, layer, cache_dir, lazy: bool, readers: list) -> MultiomeStore:
    where = str(path)
    if int(file.attrs.get("axis", 0)) != 0:
        raise SchemaError(f"{where}: a MuData with axis={file.attrs['axis']} shares features, not cells")
    order = file["mod"].attrs.get("mod-order", None)
    names = [str(n) for n in order] if order is not None else sorted(file["mod"].keys())
    if not names:
        raise SchemaError(f"{where}: the MuData file has no modalities under 'mod'")
    if isinstance(layer, dict):
        unknown = [m for m in layer if m not in names]
        if unknown:
            raise ArgumentError(f"{where}: layer names modalities {unknown}; the file has {names}")
    obs = read_obs(file, path)
    pulled, vars_, parts, encodings, modalities, mod_cells = {}, [], [], {}, {}, {}
    offset = 0
    for name in names:
        group, at = file["mod"][name], f"{where}:mod/{name}"
        mod_layer = layer.get(name) if isinstance(layer, dict) else layer
        key, node, encoding, shape = find_matrix(group, mod_layer, at)
        var, mod_obs = read_var(group, at), read_obs(group, at)
        if len(var) != shape[1] or len(mod_obs) != shape[0]:
            raise SchemaError(f"{at}: {key} is {shape} but obs x var is {len(mod_obs)} x {len(var)}")
        local = _local_rows(file, name, obs, mod_obs, where)
        pulled.update(_pulled_obs(obs, name, mod_obs, local))

        def open_reader(node=node, key=f"mod/{name}/{key}", shape=shape, encoding=encoding):
            return ROW_READERS[encoding.kind](path, key, node, shape, cache_dir)

        reader = LazyReader(open_reader, encoding) if lazy else open_reader()
        readers.append(reader)
        parts.append(PairedModality(reader, offset, local))
        encodings[f"{name}/{key}"] = encoding
        modalities[name] = Modality(name, np.arange(offset, offset + shape[1], dtype=np.int64))
        vars_.append(var)
        mod_cells[name] = shape[0]
        offset += shape[1]
    obs = pd.concat([obs, pd.DataFrame(pulled, index=obs.index)], axis=1) if pulled else obs
    var = pd.concat(vars_, join="outer")
    key = ";".join(encodings) if isinstance(layer, dict) else "X" if layer is None else f"layers/{layer}"
    index_dtype = np.dtype(np.int32 if offset < 2**31 else np.int64)
    encoding = combined_encoding(list(encodings.values()), index_dtype)
    reader = PairedRows(parts, encoding.dtype, index_dtype)
    mod_obsm = {f"{m}:{k}": (m, k) for m in names for k in obsm_keys_of(file["mod"][m])}

    def obsm(name: str) -> np.ndarray:
        """A global obsm array, or ``mod:key`` (a modality's own) per global cell, NaN where the
        modality lacks the cell."""
        if name not in mod_obsm:
            return read_obsm(file, name, len(obs), where)
        mod, own_key = mod_obsm[name]
        local = parts[names.index(mod)].local
        return spread_rows(read_obsm(file["mod"][mod], own_key, mod_cells[mod], where), local)

    common = set.intersection(*(set(layers_of(file["mod"][m])) for m in names))
    return MultiomeStore(
        path,
        key,
        encoding,
        (len(obs), offset),
        modalities,
        obs,
        var,
        reader,
        encodings=encodings,
        layers=sorted(common),
        obsm_keys=[*obsm_keys_of(file), *mod_obsm],
        read_obsm=obsm,
        files=(path,),
        file_starts=np.array([0, len(obs)], dtype=np.int64),
        close=file.close,
        measured={n: p.local >= 0 for n, p in zip(names, parts, strict=True) if (p.local < 0).any()},
    )
