"""Read-only, lazy access to a multiome ``.h5ad``: modalities, matrix encoding, obs, row reads.

``open_multiome`` opens the file with ``h5py.File(path, "r")`` and loads nothing of X. Row reads
go to the reader that :data:`~gpuload.formats.encoding.ROW_READERS` registers for the matrix's
encoding (csr, csc through a row-major sidecar, dense); every reader returns a
:class:`~gpuload.formats.types.RowBlock`: full-width CSR arrays of sorted, unique rows.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import h5py
import numpy as np
import scipy.sparse as sp

from gpuload.errors import ArgumentError, GpuloadError, InputFileError, SchemaError
from gpuload.formats.encoding import ROW_READERS, encoding_of, shape_of
from gpuload.formats.frames import modalities_of, read_obs, read_var
from gpuload.formats.types import Encoding, Modality, RowBlock, RowReader, kernel_values

if TYPE_CHECKING:
    import pandas as pd


class MultiomeStore:
    """A read-only multiome h5ad: modalities, matrix encoding, obs, and row reads.

    Build it with :func:`open_multiome`. It holds the file open until :meth:`close` (or the end
    of a ``with`` block).
    """

    def __init__(
        self,
        path: Path,
        file: h5py.File,
        key: str,
        encoding: Encoding,
        shape: tuple[int, int],
        modalities: dict[str, Modality],
        obs: pd.DataFrame,
        var: pd.DataFrame,
        reader: RowReader,
    ) -> None:
        self.path, self._file, self.key, self.encoding = path, file, key, encoding
        self.n_cells, self.n_vars = shape
        self.modalities, self.obs, self.var = modalities, obs, var
        self.reader = reader  # the encoding's row reader (see gpuload.formats.encoding)
        self.layers = list(file["layers"].keys()) if "layers" in file else []

    @property
    def sidecar(self) -> Path | None:
        """The folder of a CSC matrix's row-major copy (None for CSR and dense files)."""
        return self.reader.sidecar

    def __repr__(self) -> str:
        mods = ", ".join(f"{m.name}={m.width}" for m in self.modalities.values())
        shape = f"{self.n_cells} x {self.n_vars} {self.encoding.kind}"
        return f"MultiomeStore({str(self.path)!r}, {self.key}: {shape}, {mods})"

    def __enter__(self) -> MultiomeStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.reader.close()
        self._file.close()

    def modality(self, name: str) -> Modality:
        if name not in self.modalities:
            raise ArgumentError(
                f"{self.path}: modality {name!r} is not in this file; it has {list(self.modalities)}"
            )
        return self.modalities[name]

    def stored_values(self, rows: np.ndarray) -> int | None:
        """How many values the given rows store (what a preload of them holds), or None where
        only reading them can tell (dense)."""
        lengths = self.reader.row_lengths()
        return None if lengths is None else int(lengths[rows].sum())

    def read_block(self, rows: np.ndarray, empty=np.empty) -> RowBlock:
        """Full-width CSR of sorted unique ``rows``: the loader's hot path.

        ``empty(n, dtype)`` allocates the value and index buffers (pinned memory on the GPU
        path, so the copy to the device can be asynchronous).
        """
        try:
            block = self.reader.read(np.asarray(rows, dtype=np.int64), empty)
            return RowBlock(block.rows, block.indptr, block.indices, kernel_values(block.data))
        except (OSError, RuntimeError) as e:  # h5py reports truncation / corruption so
            raise InputFileError(
                f"{self.path}: reading {self.key} failed ({e}); is the file truncated?"
            ) from e

    def read_rows(self, rows) -> dict[str, sp.csr_matrix | np.ndarray]:
        """Per modality, the requested rows in the requested order (duplicates allowed).

        Sparse encodings give a ``scipy.sparse.csr_matrix`` whose columns are that modality's;
        a dense encoding gives an ``ndarray``.
        """
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if rows.size and (rows.min() < 0 or rows.max() >= self.n_cells):
            raise ArgumentError(
                f"{self.path}: rows must lie in [0, {self.n_cells}), got {rows.min()}..{rows.max()}"
            )
        unique = np.unique(rows)
        block = self.read_block(unique)
        full = sp.csr_matrix((block.data, block.indices, block.indptr), shape=(unique.size, self.n_vars))
        full = full[block.local(rows)]
        out = {}
        for name, mod in self.modalities.items():
            part = (
                full[:, mod.columns] if not mod.contiguous else full[:, mod.columns[0] : mod.columns[-1] + 1]
            )
            out[name] = part.toarray() if self.encoding.kind == "dense" else part.tocsr()
        return out


def open_multiome(
    path: str | os.PathLike,
    *,
    layer: str | None = None,
    modality_key: str = "feature_types",
    cache_dir: str | os.PathLike | None = None,
) -> MultiomeStore:
    """Open a multiome ``.h5ad`` read-only; nothing of the matrix is loaded.

    Parameters
    ----------
    path
        The ``.h5ad`` file.
    layer
        ``None`` for ``X``, else a key of ``layers`` (e.g. ``"counts"``).
    modality_key
        The var column that names each feature's modality (``"GEX"``, ``"ATAC"``).
    cache_dir
        Where a row-major sidecar of a CSC matrix is built (default ``$GPULOAD_CACHE_DIR`` or
        ``~/.cache/gpuload``); unused for CSR and dense files.
    """
    path = Path(path)
    if not path.exists():
        raise InputFileError(f"{path}: no such file")
    if path.is_dir():
        raise InputFileError(f"{path}: is a directory; expected an .h5ad file")
    if path.stat().st_size == 0:
        raise InputFileError(f"{path}: the file is empty; expected an .h5ad (HDF5) file")
    try:
        file = h5py.File(path, "r")
    except OSError as e:
        kind = "is not an HDF5 file" if not h5py.is_hdf5(path) else "cannot be opened (truncated?)"
        raise InputFileError(f"{path}: {kind} ({e})") from e
    try:
        key = "X" if layer is None else f"layers/{layer}"
        if key not in file:
            if layer is None:
                raise SchemaError(f"{path}: no 'X' in the file; keys are {list(file.keys())}")
            found = list(file["layers"].keys()) if "layers" in file else []
            raise SchemaError(f"{path}: no layer {layer!r}; layers are {found}")
        node = file[key]
        where = f"{path}:{key}"
        encoding = encoding_of(node, where)
        shape = shape_of(node, encoding, where)
        var = read_var(file, str(path))
        modalities = modalities_of(var, modality_key, shape[1], str(path))
        obs = read_obs(file, path)
        if len(obs) != shape[0]:
            raise SchemaError(f"{path}: obs has {len(obs)} rows but {key} has {shape[0]}")
        reader = ROW_READERS[encoding.kind](path, key, node, shape, cache_dir)
    except GpuloadError:
        file.close()
        raise
    except (OSError, RuntimeError, KeyError, ValueError, TypeError) as e:  # h5py on a corrupt file
        file.close()
        raise InputFileError(f"{path}: cannot read {key} ({e}); the file is corrupt") from e
    except BaseException:
        file.close()
        raise
    return MultiomeStore(path, file, key, encoding, shape, modalities, obs, var, reader)
