"""Opening a multiome ``.h5ad``: one matrix whose modalities are told apart by a var column.

The file is opened with ``h5py.File(path, "r")`` and nothing of X is loaded. Row reads go to the
reader that :data:`~gpuload.formats.encoding.ROW_READERS` registers for the matrix's encoding
(csr, csc through a row-major sidecar, dense).
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from gpuload.errors import SchemaError
from gpuload.formats.encoding import ROW_READERS
from gpuload.formats.frames import lazy_obs, modalities_of, obsm_keys_of, read_obsm, read_var
from gpuload.formats.hdf5 import closed_on_error, find_matrix, layers_of
from gpuload.formats.lazy import LazyReader
from gpuload.formats.store import MultiomeStore
from gpuload.formats.types import Modality
from gpuload.formats.var_cache import shared_var


def open_h5ad(
    path: Path,
    file: h5py.File,
    *,
    layer: str | None,
    feature_type_key: str,
    cache_dir,
    lazy: bool = False,
    modality: str | None = None,
) -> MultiomeStore:
    """The store of an open ``.h5ad`` (closed here when it cannot be read); ``lazy`` opens the row
    reader at the first read (what a file of several does, so a rank opens only what it reads);
    ``modality`` names the one modality of a file that holds only one (a ``{modality: file}``
    mapping's), whose every column is then that modality's."""
    key = "X" if layer is None else f"layers/{layer}"
    with closed_on_error(file, f"{path}: cannot read {key}"):
        key, node, encoding, shape = find_matrix(file, layer, str(path))
        if modality is None:
            var, modalities = shared_var(
                file,
                feature_type_key,
                lambda: _var_and_modalities(file, feature_type_key, shape[1], str(path)),
            )
        else:
            var = read_var(file, str(path))
            modalities = {modality: Modality(modality, np.arange(shape[1], dtype=np.int64))}
        obs = lazy_obs(file, path)
        if len(obs) != shape[0]:
            raise SchemaError(f"{path}: obs has {len(obs)} rows but {key} has {shape[0]}")

        def open_reader():
            return ROW_READERS[encoding.kind](path, key, node, shape, cache_dir)

        reader = LazyReader(open_reader, encoding) if lazy else open_reader()
    return MultiomeStore(
        path,
        key,
        encoding,
        shape,
        modalities,
        obs,
        var,
        reader,
        encodings={key: encoding},
        layers=layers_of(file),
        obsm_keys=obsm_keys_of(file),
        read_obsm=lambda name: read_obsm(file, name, shape[0], str(path)),
        files=(path,),
        file_starts=np.array([0, shape[0]], dtype=np.int64),
        close=file.close,
    )


def _var_and_modalities(file: h5py.File, feature_type_key: str, n_vars: int, where: str):
    var = read_var(file, where)
    return var, modalities_of(var, feature_type_key, n_vars, where)
