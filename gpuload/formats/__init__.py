"""Readers of on-disk formats: open a file read-only, tell its modalities apart, read row blocks.

Each matrix encoding has its own reader module (``csr``, ``csc``, ``dense``), chosen by what the
file says it is through :data:`~gpuload.formats.encoding.ROW_READERS`; ``h5ad`` opens the file
and holds the store; ``frames`` reads obs and var; ``types`` is the vocabulary they share.
"""

from gpuload.formats.h5ad import MultiomeStore, open_multiome
from gpuload.formats.types import Encoding, Modality, RowBlock, RowReader

__all__ = ["Encoding", "Modality", "MultiomeStore", "RowBlock", "RowReader", "open_multiome"]
