"""Opening a 10x Genomics feature-barcode matrix ``.h5`` (cellranger, cellranger-arc: format
version 2 and later, the ``filtered_feature_bc_matrix.h5`` every 10x user has) as it is.

The file keeps a features x barcodes matrix in CSC (``matrix/{data,indices,indptr,shape}``):
barcode j's values are contiguous, at ``indptr[j]:indptr[j + 1]``. That *is* a CSR of cells x
features, so its rows are read by the CSR row reader (:mod:`gpuload.formats.csr`) with no
conversion and no sidecar. obs is the barcodes (the index; ``filtered_barcodes`` where a probe
matrix has it) and var follows ``scanpy.read_10x_h5(path, gex_only=False)``: ``features/name``
as the index, ``gene_ids`` (``features/id``), ``feature_types``, then every other feature
dataset (``genome``, ``interval``, ...) as text, so names and columns match scanpy's. The
modalities are the distinct ``feature_types`` (``"Gene Expression"``, ``"Peaks"``, ...); pick
some with the loader's ``modalities=`` (what scanpy's ``gex_only`` does).

Format version 1 (cellranger 2: one group per genome, genes only) is refused with a message
that says how to convert it.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from gpuload.errors import ArgumentError, SchemaError
from gpuload.formats.csr import open_csr_rows
from gpuload.formats.frames import modalities_of
from gpuload.formats.hdf5 import closed_on_error
from gpuload.formats.lazy import LazyReader
from gpuload.formats.store import MultiomeStore
from gpuload.formats.types import Encoding

MATRIX = "matrix"
# The datasets a feature-barcode matrix must have, and the kinds of numbers they hold.
MATRIX_ARRAYS = {"data": "iuf", "indices": "iu", "indptr": "iu", "shape": "iu", "barcodes": "SOU"}
FEATURE_ARRAYS = ("id", "name", "feature_type")
# features/ datasets scanpy does not copy into var under their own name.
NOT_VAR_COLUMNS = ("name", "feature_type", "id", "gene_id", "_all_tag_keys")
ABOUT = ("filetype", "version", "software_version", "chemistry_description", "library_ids")


def is_10x(file: h5py.File) -> bool:
    """What the file says it is: a top-level ``matrix`` group (an AnnData has ``X`` and ``obs``
    instead), so that a 10x file missing a dataset is told so, not called a bad AnnData."""
    return isinstance(file.get(MATRIX), h5py.Group) and "X" not in file and "obs" not in file


def is_legacy_10x(file: h5py.File) -> bool:
    """cellranger 2's layout (format version 1): ``/<genome>/{barcodes,genes,gene_names,...}``."""
    return "X" not in file and any(
        isinstance(group, h5py.Group) and "gene_names" in group and "barcodes" in group
        for group in file.values()
    )


def refuse_legacy_10x(path: Path, file: h5py.File) -> None:
    genomes = [name for name, group in file.items() if isinstance(group, h5py.Group)]
    file.close()
    raise SchemaError(
        f"{path}: a 10x feature-barcode matrix of format version 1 (cellranger 2; genomes {genomes}): "
        "gpuload reads version 2 and later (a top-level 'matrix' group). Convert it once with "
        "scanpy.read_10x_h5(path).write_h5ad('out.h5ad')"
    )


def open_10x(
    path: Path, file: h5py.File, *, layer, feature_type_key: str, lazy: bool = False
) -> MultiomeStore:
    """The store of an open 10x ``.h5`` (closed here when it cannot be read)."""
    with closed_on_error(file, f"{path}: cannot read the 10x matrix"):
        if layer is not None:
            raise ArgumentError(
                f"{path}: a 10x .h5 holds one matrix (the counts) and no layers; got layer={layer!r}, "
                "use layer=None"
            )
        return _open(path, file, feature_type_key, lazy)


def _array(group: h5py.Group, name: str, kinds: str, where: str) -> h5py.Dataset:
    """``group[name]``: a 1-D dataset of one of ``kinds``, or a SchemaError naming it."""
    if name not in group:
        raise SchemaError(f"{where}/{name} is missing; a 10x feature-barcode matrix has {name}")
    node = group[name]
    if not isinstance(node, h5py.Dataset) or node.ndim != 1 or node.dtype.kind not in kinds:
        shape, dtype = getattr(node, "shape", None), getattr(node, "dtype", "a group")
        raise SchemaError(f"{where}/{name} must be a 1-D array of {kinds!r} kind; it is {shape} {dtype}")
    return node


def _text(node: h5py.Dataset) -> np.ndarray:
    """A string dataset (fixed-length bytes, as cellranger writes, or variable-length) as str."""
    return node.asstr()[()].astype(str) if node.dtype.kind in "SO" else node[()].astype(str)


def _open(path: Path, file: h5py.File, feature_type_key: str, lazy: bool) -> MultiomeStore:
    where = f"{path}:{MATRIX}"
    version = file.attrs.get("version", 2)
    if int(np.asarray(version).reshape(-1)[0]) < 2:
        raise SchemaError(f"{path}: 10x format version {version}; gpuload reads version 2 and later")
    node = file[MATRIX]
    arrays = {name: _array(node, name, kinds, where) for name, kinds in MATRIX_ARRAYS.items()}
    shape = arrays["shape"][()]
    if shape.size != 2:
        raise SchemaError(f"{where}/shape is {shape.tolist()}; expected (features, barcodes)")
    n_features, n_cells = (int(s) for s in shape)
    if "features" not in node or not isinstance(node["features"], h5py.Group):
        raise SchemaError(f"{where}/features is missing; a 10x feature-barcode matrix has a features group")
    features = node["features"]
    for name in FEATURE_ARRAYS:
        _array(features, name, "SOU", f"{where}/features")
    barcodes = _text(arrays["barcodes"])
    if barcodes.size != n_cells:
        raise SchemaError(f"{where}/barcodes has {barcodes.size} entries but shape says {n_cells} barcodes")
    var = _var(features, n_features, f"{where}/features")
    obs = pd.DataFrame(index=pd.Index(barcodes))
    if "filtered_barcodes" in node:
        obs["filtered_barcodes"] = _array(node, "filtered_barcodes", "biu", where)[()].astype(bool)
    modalities = modalities_of(var, feature_type_key, n_features, str(path))
    data = arrays["data"]
    encoding = Encoding(
        "csr",
        data.dtype,
        arrays["indices"].dtype,
        arrays["indptr"].dtype,
        int(data.shape[0]),
        data.chunks,
        data.compression,
    )

    def open_reader():
        return open_csr_rows(path, MATRIX, node, (n_cells, n_features))

    reader = LazyReader(open_reader, encoding) if lazy else open_reader()
    about = {k: _attr(file.attrs[k]) for k in ABOUT if k in file.attrs}
    return MultiomeStore(
        path,
        MATRIX,
        encoding,
        (n_cells, n_features),
        modalities,
        obs,
        var,
        reader,
        encodings={MATRIX: encoding},
        layers=[],
        obsm_keys=[],
        read_obsm=lambda name: np.zeros((n_cells, 0), dtype=np.float32),  # never called: no obsm keys
        files=(path,),
        file_starts=np.array([0, n_cells], dtype=np.int64),
        close=file.close,
        about={"format": "10x Genomics feature-barcode matrix (HDF5)", **about},
    )


def _var(features: h5py.Group, n_features: int, where: str) -> pd.DataFrame:
    """scanpy's var of a feature-barcode matrix: names as the index, ``gene_ids``,
    ``feature_types``, then the other feature datasets (text, booleans kept)."""
    columns = {}
    if "gene_id" in features:  # a probe-barcode matrix: id names the probe
        columns["gene_ids"] = _text(_array(features, "gene_id", "SOU", where))
        columns["probe_ids"] = _text(features["id"])
    else:
        columns["gene_ids"] = _text(features["id"])
    columns["feature_types"] = _text(features["feature_type"])
    for name, item in features.items():
        if isinstance(item, h5py.Dataset) and name not in NOT_VAR_COLUMNS:
            columns[name] = item[()].astype(bool) if item.dtype.kind == "b" else _text(item)
    names = _text(features["name"])
    for name, values in {"name": names, **columns}.items():
        if len(values) != n_features:
            raise SchemaError(
                f"{where}: {name} has {len(values)} entries but shape says {n_features} features"
            )
    return pd.DataFrame(columns, index=pd.Index(names))


def _attr(value) -> str:
    """A root attribute as text (cellranger writes bytes, arrays of bytes, or numbers)."""
    values = np.asarray(value).reshape(-1).tolist()
    return ", ".join(v.decode() if isinstance(v, bytes) else str(v) for v in values)
