"""Readers of on-disk formats: open files read-only, tell their modalities apart, read row blocks.

Each matrix encoding has its own reader module (``csr``, ``csc``, ``dense``), chosen by what the
file says it is through :data:`~gpuload.formats.encoding.ROW_READERS`; ``h5ad`` and ``h5mu``
open one file of each format, ``modality_files`` a ``{modality: .h5ad}`` mapping (``pairing``
places modalities stored apart side by side, for it and ``h5mu``), ``stacked`` several as one
dataset, ``dataset`` chooses among them; every opener builds the one
:class:`~gpuload.formats.store.MultiomeStore`; ``frames`` reads obs, var and obsm, and ``types``
is the vocabulary they share.
"""

from gpuload.formats.dataset import DataSource, is_file_list, open_multiome
from gpuload.formats.store import MultiomeStore
from gpuload.formats.types import Encoding, Modality, RowBlock, RowReader

__all__ = [
    "DataSource",
    "is_file_list",
    "Encoding",
    "Modality",
    "MultiomeStore",
    "RowBlock",
    "RowReader",
    "open_multiome",
]
