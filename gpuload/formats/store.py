"""The one read-only store every format opens into: modalities, obs, var, obsm and row reads.

Whatever the files are (one ``.h5ad``, one ``.h5mu``, several of either), the store presents one
matrix of cells x features whose columns are the modalities' columns side by side, one obs row
per cell, and a :class:`~gpuload.formats.types.RowReader` that returns full-width CSR blocks of
sorted, unique rows. The opener of each format builds it (:mod:`~gpuload.formats.h5ad`,
:mod:`~gpuload.formats.h5mu`, :mod:`~gpuload.formats.stacked`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from gpuload.errors import ArgumentError, InputFileError, ObsKeyError
from gpuload.formats.obs_table import ObsTable
from gpuload.formats.types import Allocator, Encoding, Modality, RowBlock, RowReader, kernel_values

if TYPE_CHECKING:
    import pandas as pd


def file_of(file_starts: np.ndarray, rows: npt.ArrayLike) -> np.ndarray:
    """The file holding each global row: ``files[i]`` holds rows ``file_starts[i]:file_starts[i + 1]``."""
    return np.searchsorted(file_starts, rows, side="right") - 1


def row_location(files: tuple, file_starts: np.ndarray, key: str, row: int) -> str:
    """``file:key row r``: the file of ``files`` that holds global ``row``, and its row there."""
    i = int(file_of(file_starts, row))
    return f"{files[i]}:{key} row {row - int(file_starts[i])}"


class MultiomeStore:
    """A read-only multimodal dataset: modalities, matrix encoding, obs, obsm and row reads.

    Build it with :func:`~gpuload.formats.open_multiome`. It holds its files open until
    :meth:`close` (or the end of a ``with`` block).

    ``path`` names the dataset in messages (the file, or the list of files); ``files`` are its
    files and ``file_starts`` the first global row of each (``files[i]`` holds rows
    ``file_starts[i]:file_starts[i + 1]``); ``encodings`` says how each stored matrix is
    encoded (``"X"``, or ``"rna/X"`` for a modality of an ``.h5mu``); ``measured`` which cells a
    modality that lacks some has; ``about`` what a file says about itself beyond its data (a
    10x file's format, chemistry and library ids), for ``gpuload info``.
    """

    def __init__(
        self,
        path: Path | str,
        key: str,
        encoding: Encoding,
        shape: tuple[int, int],
        modalities: dict[str, Modality],
        obs: ObsTable | pd.DataFrame,
        var: pd.DataFrame,
        reader: RowReader,
        *,
        encodings: dict[str, Encoding],
        layers: list[str],
        obsm_keys: list[str],
        read_obsm: Callable[[str], np.ndarray],
        files: tuple[Path | str, ...],
        file_starts: np.ndarray,
        close: Callable[[], None],
        measured: dict[str, np.ndarray] | None = None,
        about: dict[str, str] | None = None,
    ) -> None:
        self.path, self.key, self.encoding = path, key, encoding
        self.n_cells, self.n_vars = shape
        # obs is read a column at a time (see gpuload.formats.obs_table); a frame is wrapped
        self.obs = obs if isinstance(obs, ObsTable) else ObsTable.in_memory(obs, str(path))
        self.modalities, self.var = modalities, var
        self.reader = reader  # the encoding's row reader (see gpuload.formats.encoding)
        self.encodings, self.layers, self.obsm_keys = encodings, layers, obsm_keys
        self.files, self.file_starts = files, file_starts
        # modality -> bool [n_cells]: which cells it measured, for modalities that lack some
        # (an .h5mu's obsmap); a modality not in it measured every cell
        self.measured = measured or {}
        self.about = about or {}
        self._read_obsm, self._close = read_obsm, close

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

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.reader.close()
        self._close()

    def modality(self, name: str) -> Modality:
        if name not in self.modalities:
            raise ArgumentError(
                f"{self.path}: modality {name!r} is not in this file; it has {list(self.modalities)}"
            )
        return self.modalities[name]

    def where_row(self, row: int) -> str:
        """``file:key row r`` for global ``row``: the file that holds it and its row there."""
        return row_location(self.files, self.file_starts, self.key, row)

    def obsm(self, key: str) -> np.ndarray:
        """``obsm[key]`` as float32 ``[n_cells, k]`` (a dense array; a sparse one is an error)."""
        if key not in self.obsm_keys:
            raise ObsKeyError(f"{self.path}: obsm has no key {key!r}; its keys are {self.obsm_keys}")
        return self._read_obsm(key)

    def stored_values(self, rows: np.ndarray) -> int | None:
        """How many values the given rows store (what a preload of them holds), or None where
        only reading them can tell (dense)."""
        return self.reader.stored_values(np.asarray(rows, dtype=np.int64))

    def read_block(self, rows: np.ndarray, empty: Allocator = np.empty) -> RowBlock:
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

    def read_rows(self, rows: npt.ArrayLike) -> dict[str, sp.csr_matrix | np.ndarray]:
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
