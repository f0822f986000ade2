"""``open_multiome``: one ``.h5ad``, one ``.h5mu``, one 10x ``.h5``, a ``{modality: .h5ad}``
mapping, or a list of them as one dataset.

Which format a file is comes from what the file says (a MuData file's root ``encoding-type``, a
10x file's top-level ``matrix`` group), never from its name.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import TypeGuard

import numpy as np
import pandas as pd

from gpuload.errors import ArgumentError, InputFileError
from gpuload.formats.h5ad import open_h5ad
from gpuload.formats.h5mu import is_mudata, open_h5mu
from gpuload.formats.hdf5 import open_hdf5
from gpuload.formats.modality_files import ModalityFiles, open_modality_files
from gpuload.formats.stacked import open_stacked
from gpuload.formats.store import MultiomeStore
from gpuload.formats.tenx import is_10x, is_legacy_10x, open_10x, refuse_legacy_10x

# One dataset's source: a file, or a {modality: .h5ad} mapping
DataSource = str | os.PathLike | Mapping[str, str | os.PathLike]


def open_multiome(
    data: DataSource | Sequence[DataSource],
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
        matrix ``.h5`` (modalities from ``features/feature_type``), a ``{modality: .h5ad}``
        mapping (one file per modality, cells paired by obs_names, see
        :mod:`~gpuload.formats.modality_files`), or a list of such files or mappings with the same
        features, read as their cells one after the other.
    layer
        ``None`` for ``X``, else a key of ``layers`` (e.g. ``"counts"``); for ``.h5mu`` and a
        mapping, also ``{modality: layer or None}``.
    feature_type_key
        The var column that names each feature's modality in an ``.h5ad`` or a 10x ``.h5``
        (whose var is scanpy's): each distinct value is a modality, in order of first appearance
        (``"GEX"``, ``"ATAC"``; ``"Gene Expression"``, ``"Peaks"``); in a mapping, each file's
        must name one modality (or be absent).
    cache_dir
        Where a row-major sidecar of a CSC matrix is built (default ``$GPULOAD_CACHE_DIR`` or
        ``~/.cache/gpuload``); unused for CSR and dense files.
    """
    open_one = partial(_open_source, layer=layer, feature_type_key=feature_type_key, cache_dir=cache_dir)
    if is_file_list(data):
        sources = [_source(d) for d in list(data)]
        _check_no_file_twice(sources)
        return open_stacked(sources, partial(open_one, lazy=True))
    return open_one(_source(data), lazy=False)


def is_file_list(data: object) -> TypeGuard[Iterable[DataSource]]:
    """Whether ``data`` names several files (a list, tuple, array or Series of paths)."""
    return isinstance(data, (Sequence, np.ndarray, pd.Series)) and not isinstance(data, (str, bytes))


def _source(data) -> Path | ModalityFiles:
    return ModalityFiles.of(data) if isinstance(data, Mapping) else Path(data)


def _files_of(source: Path | ModalityFiles) -> list[Path]:
    return list(source.files.values()) if isinstance(source, ModalityFiles) else [source]


def _check_no_file_twice(sources: list[Path | ModalityFiles]) -> None:
    if not sources:
        raise ArgumentError("data is an empty list; give one or more .h5ad/.h5mu paths")
    seen: set[Path] = set()
    for path in (p for source in sources for p in _files_of(source)):
        if path.resolve() in seen:
            raise ArgumentError(f"data lists {path} more than once; a file's cells would be repeated")
        seen.add(path.resolve())


def _open_source(
    source: Path | ModalityFiles, *, layer, feature_type_key: str, cache_dir, lazy: bool
) -> MultiomeStore:
    if isinstance(source, Path):
        return _open_file(
            source, layer=layer, feature_type_key=feature_type_key, cache_dir=cache_dir, lazy=lazy
        )
    if isinstance(layer, dict):
        unknown = [m for m in layer if m not in source.files]
        if unknown:
            raise ArgumentError(
                f"{source}: layer names modalities {unknown}; the mapping has {list(source.files)}"
            )

    def open_file(path: Path, modality: str) -> MultiomeStore:
        own = layer.get(modality) if isinstance(layer, dict) else layer
        return _open_file(
            path,
            layer=own,
            feature_type_key=feature_type_key,
            cache_dir=cache_dir,
            lazy=lazy,
            modality=modality,
        )

    return open_modality_files(source, open_file, feature_type_key)


def _open_file(
    path: Path, *, layer, feature_type_key: str, cache_dir, lazy: bool, modality: str | None = None
) -> MultiomeStore:
    """One file; ``modality`` names the one modality of a mapping's ``.h5ad``."""
    file = open_hdf5(path, ".h5ad, .h5mu or 10x .h5")
    try:
        mudata, tenx = is_mudata(file), is_10x(file)
        legacy_10x = not (mudata or tenx) and is_legacy_10x(file)
    except (OSError, RuntimeError, KeyError, ValueError, TypeError) as e:  # h5py on corrupt metadata
        file.close()
        raise InputFileError(f"{path}: its root attributes cannot be read ({e}); the file is corrupt") from e
    if (mudata or tenx) and modality is not None:
        file.close()
        raise ArgumentError(
            f"{path}: is a {'MuData' if mudata else '10x .h5'} file; a {{modality: file}} mapping takes "
            "one .h5ad per modality (give this file alone: its modalities are paired already)"
        )
    if mudata:
        return open_h5mu(path, file, layer=layer, cache_dir=cache_dir, lazy=lazy)
    if tenx:
        return open_10x(path, file, layer=layer, feature_type_key=feature_type_key, lazy=lazy)
    if legacy_10x:
        refuse_legacy_10x(path, file)
    return open_h5ad(
        path,
        file,
        layer=layer,
        feature_type_key=feature_type_key,
        cache_dir=cache_dir,
        lazy=lazy,
        modality=modality,
    )
