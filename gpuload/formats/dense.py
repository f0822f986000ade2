"""Dense row reads: row blocks of a 2-D dataset, compressed to CSR in memory for the kernels."""

from __future__ import annotations

import h5py
import numpy as np
import scipy.sparse as sp

from gpuload.formats.types import RowBlock, kernel_values, row_runs


class DenseRows:
    """Row reads from a dense 2-D dataset, compressed to CSR in memory."""

    sidecar = None

    def __init__(self, dataset: h5py.Dataset) -> None:
        self.dataset = dataset

    def close(self) -> None:
        """Nothing of its own to release: the dataset closes with the file."""

    def stored_values(self, rows: np.ndarray) -> None:
        """Unknown without reading the rows."""
        return None

    def read(self, rows: np.ndarray, empty=np.empty) -> RowBlock:
        starts, stops = row_runs(rows)
        blocks = [self.dataset[int(a) : int(b)] for a, b in zip(starts, stops, strict=True)]
        dense = np.concatenate(blocks) if blocks else np.zeros((0, self.dataset.shape[1]), self.dataset.dtype)
        csr = sp.csr_matrix(kernel_values(dense))
        return RowBlock(rows, csr.indptr.astype(np.int64), csr.indices, csr.data)


def open_dense_rows(path, key: str, node: h5py.Dataset, shape: tuple[int, int], cache_dir=None) -> DenseRows:
    """The reader of an on-disk dense ``array``."""
    return DenseRows(node)
