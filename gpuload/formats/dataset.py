"""``open_multiome``: one ``.h5ad``, one ``.h5mu``, one 10x ``.h5``, or a list of them as one
dataset.

Which format a file is comes from what the file says (a MuData file's root ``encoding-type``, a
10x file's top-level ``matrix`` group), never from its name.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

from gpuload.errors import InputFileError
from gpuload.formats.h5ad import open_h5ad
from gpuload.formats.h5mu import is_mudata, open_h5mu
from gpuload.formats.hdf5 import open_hdf5
from gpuload.formats.stacked import open_stacked
from gpuload.formats.store import MultiomeStore
from gpuload.formats.tenx import is_10x, is_legacy_10x, open_10x, refuse_legacy_10x


def open_multiome(
    data: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    layer: str | dict | None = None,
    feature_type_key: str = "feature_types",
    cache_dir: str | os.PathLike | None = None,
) -> MultiomeStore:
    """Open a multimodal dataset read-only; nothing of its matrices is loaded.

    Parameters
    ----------
    data
        An ``.h5ad`` (modalities told apart by ``var[feature_type_key]``), an ``.h5mu`` (modalities
        are its ``mod`` entries, cells paired through its ``obsmap``), a 10x feature-barcode
        matrix ``.h5`` (modalities from ``features/feature_type``), or a list of such files with
        the same features, read as their cells one after the other.
    layer
        ``None`` for ``X``, else a key of ``layers`` (e.g. ``"counts"``); for ``.h5mu``, also
        ``{modality: layer or None}``.
    feature_type_key
        The var column that names each feature's modality in an ``.h5ad`` or a 10x ``.h5``
        (whose var is scanpy's): each distinct value is a modality, in order of first appearance
        (``"GEX"``, ``"ATAC"``; ``"Gene Expression"``, ``"Peaks"``).
    cache_dir
        Where a row-major sidecar of a CSC matrix is built (default ``$GPULOAD_CACHE_DIR`` or
        ``~/.cache/gpuload``); unused for CSR and dense files.
    """
    open_one = partial(_open_file, layer=layer, feature_type_key=feature_type_key, cache_dir=cache_dir)
    if is_file_list(data):
        return open_stacked([Path(p) for p in list(data)], partial(open_one, lazy=True))
    return open_one(Path(data), lazy=False)


def is_file_list(data) -> bool:
    """Whether ``data`` names several files (a list, tuple, array or Series of paths)."""
    return isinstance(data, (Sequence, np.ndarray, pd.Series)) and not isinstance(data, (str, bytes))


def _open_file(path: Path, *, layer, feature_type_key: str, cache_dir, lazy: bool) -> MultiomeStore:
    file = open_hdf5(path, ".h5ad, .h5mu or 10x .h5")
    try:
        mudata, tenx = is_mudata(file), is_10x(file)
        legacy_10x = not (mudata or tenx) and is_legacy_10x(file)
    except (OSError, RuntimeError, KeyError, ValueError, TypeError) as e:  # h5py on corrupt metadata
        file.close()
        raise InputFileError(f"{path}: its root attributes cannot be read ({e}); the file is corrupt") from e
    if mudata:
        return open_h5mu(path, file, layer=layer, cache_dir=cache_dir, lazy=lazy)
    if tenx:
        return open_10x(path, file, layer=layer, feature_type_key=feature_type_key, lazy=lazy)
    if legacy_10x:
        refuse_legacy_10x(path, file)
    return open_h5ad(
        path, file, layer=layer, feature_type_key=feature_type_key, cache_dir=cache_dir, lazy=lazy
    )
