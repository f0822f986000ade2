"""Which encoding an on-disk matrix has, and the registry of row readers keyed by it.

Like anndata's ``read_elem`` registry, the reader is chosen by what the file says the matrix is
(the ``encoding-type`` attribute; a bare 2-D dataset is a dense ``array``), never by guessing.
"""

from __future__ import annotations

from collections.abc import Callable

import h5py
import numpy as np

from gpuload.errors import SchemaError
from gpuload.formats.csc import open_csc_rows
from gpuload.formats.csr import open_csr_rows
from gpuload.formats.dense import open_dense_rows
from gpuload.formats.types import Encoding, RowReader

# Encoding kind -> opener(path, key, node, shape, cache_dir) -> RowReader.
ROW_READERS: dict[str, Callable[..., RowReader]] = {
    "csr": open_csr_rows,
    "csc": open_csc_rows,
    "dense": open_dense_rows,
}


def encoding_of(node: h5py.Group | h5py.Dataset, where: str) -> Encoding:
    kind = node.attrs.get("encoding-type", "array" if isinstance(node, h5py.Dataset) else None)
    if isinstance(kind, bytes):
        kind = kind.decode()
    if not isinstance(kind, str):
        raise SchemaError(
            f"{where} has an encoding-type attribute of {type(kind).__name__}; expected a string"
        )
    if kind in ("csr_matrix", "csc_matrix"):
        for part, kinds in (("indptr", "iu"), ("indices", "iu"), ("data", "iufb")):
            if part not in node:
                raise SchemaError(f"{where} is a {kind} without its '{part}' array")
            array = node[part]
            if not isinstance(array, h5py.Dataset) or array.ndim != 1 or array.dtype.kind not in kinds:
                shape, dtype = getattr(array, "shape", None), getattr(array, "dtype", None)
                raise SchemaError(f"{where}/{part} must be a 1-D numeric array; it is {shape} {dtype}")
        data = node["data"]
        return Encoding(
            kind[:3],
            data.dtype,
            node["indices"].dtype,
            node["indptr"].dtype,
            int(data.shape[0]),
            data.chunks,
            data.compression,
        )
    if kind == "array" and isinstance(node, h5py.Dataset):
        if node.dtype.kind not in "iufb":
            raise SchemaError(f"{where} is a dense array of {node.dtype}; expected numbers")
        return Encoding("dense", node.dtype, None, None, None, node.chunks, node.compression)
    raise SchemaError(f"{where} has encoding-type {kind!r}; expected csr_matrix, csc_matrix or a dense array")


def shape_of(node: h5py.Group | h5py.Dataset, encoding: Encoding, where: str) -> tuple[int, int]:
    raw = node.shape if encoding.kind == "dense" else node.attrs.get("shape", ())
    try:
        shape = tuple(int(s) for s in np.atleast_1d(raw))
    except (TypeError, ValueError):
        raise SchemaError(f"{where} has a shape attribute {raw!r}; expected two integers") from None
    if len(shape) != 2:
        raise SchemaError(f"{where} has shape {shape}; expected a 2-D cells x features matrix")
    return shape
