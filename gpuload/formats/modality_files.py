"""Per-modality files paired by cell: ``{"GEX": "mod1.h5ad", "ATAC": "mod2.h5ad"}`` as one dataset.

The NeurIPS 2021 competition shipped each modality as an ``.h5ad`` of its own. Here each file is
one modality, named by its key, with all its columns; a file whose ``var["feature_types"]`` names
several modalities is refused (give it alone, not in a mapping). Cells are paired by obs_names:
the dataset's cells are the first file's, in its order, then each next file's cells that no
earlier file has, in its order. Files that list the same names in the same order are paired
row by row with no join; otherwise one vectorised hash join (pandas' ``get_indexer``) pairs them
at open: 0.6 s for two files of 1M cells in different orders, 0.2 s in the same order (the check
for duplicate names), on the 2-core development machine (``benchmarks/pair_join.py``). A cell
a file lacks reads as a zero row of that modality with ``mask`` False, through the same
:class:`~gpuload.formats.pairing.PairedRows` as an ``.h5mu``. ``str(source)`` names the pair in
messages and in ``MultiomeLoader.files``; a row in them is the dataset's row.

obs: a column several files have appears once under its own name, each cell's value taken from
the first file (in mapping order) that has the cell, categories merged as for a list of files (the
first file's list while it holds every cell); a column only one file has is that modality's own,
``mod:column`` as in an ``.h5mu``, missing for cells the modality lacks. obsm: each file's arrays
as ``mod:key``, NaN where the modality lacks the cell. var: the files' var one after the other.
layers: those every file has.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from gpuload.errors import ArgumentError, SchemaError
from gpuload.formats.obs_table import union_frames
from gpuload.formats.pairing import PairedModality, PairedRows, per_cell, rows_of_cells, spread_rows
from gpuload.formats.store import MultiomeStore
from gpuload.formats.types import Modality, combined_encoding


@dataclass(frozen=True, eq=False)
class ModalityFiles:
    """A ``{modality: .h5ad path}`` mapping read as one dataset; ``str()`` is how messages name it."""

    files: dict[str, Path]

    @classmethod
    def of(cls, mapping: Mapping) -> ModalityFiles:
        if not mapping:
            raise ArgumentError("data is an empty mapping; give {modality: .h5ad path} for each modality")
        for name, path in mapping.items():
            if not isinstance(name, str) or not name:
                raise ArgumentError(
                    f"data maps {name!r} to {path!r}; modality names must be non-empty strings"
                )
            if not isinstance(path, (str, os.PathLike)):
                raise ArgumentError(f"data maps {name!r} to {path!r}; expected the path of an .h5ad file")
        return cls({name: Path(path) for name, path in mapping.items()})

    def __str__(self) -> str:
        return "{" + ", ".join(f"{name}: {path}" for name, path in self.files.items()) + "}"


def open_modality_files(
    source: ModalityFiles, open_file: Callable[[Path, str], MultiomeStore], feature_type_key: str
) -> MultiomeStore:
    """The files of ``source`` as one dataset; ``open_file(path, modality)`` opens one ``.h5ad``
    as a store whose every column is ``modality``'s; ``var[feature_type_key]``, where a file has it,
    must name one modality."""
    stores: dict[str, MultiomeStore] = {}
    try:
        for name, path in source.files.items():
            stores[name] = open_file(path, name)
            _check_one_modality(stores[name], feature_type_key)
        return _paired_store(source, stores)
    except BaseException:
        for store in stores.values():
            store.close()
        raise


def _check_one_modality(store: MultiomeStore, feature_type_key: str) -> None:
    if feature_type_key in store.var.columns:
        found = list(dict.fromkeys(store.var[feature_type_key].astype(str)))
        if len(found) > 1:
            raise SchemaError(
                f"{store.path}: var[{feature_type_key!r}] names several modalities {found}; a file of a "
                "{modality: file} mapping holds one modality (open this file alone to read them all)"
            )


def _paired_store(source: ModalityFiles, stores: dict[str, MultiomeStore]) -> MultiomeStore:
    cells, local = paired_cells({name: (store.path, store.obs.index) for name, store in stores.items()})
    parts, modalities, offset = [], {}, 0
    for name, store in stores.items():
        parts.append(PairedModality(store.reader, offset, local[name]))
        modalities[name] = Modality(name, np.arange(offset, offset + store.n_vars, dtype=np.int64))
        offset += store.n_vars
    index_dtype = np.dtype(np.int32 if offset < 2**31 else np.int64)
    encoding = combined_encoding([s.encoding for s in stores.values()], index_dtype)
    obsm_of = {f"{name}:{key}": (name, key) for name, store in stores.items() for key in store.obsm_keys}

    def obsm(key: str) -> np.ndarray:
        name, own = obsm_of[key]
        return spread_rows(stores[name].obsm(own), local[name])

    def close() -> None:
        for store in stores.values():
            store.close()

    keys = list(dict.fromkeys(s.key for s in stores.values()))
    first = next(iter(stores.values()))
    return MultiomeStore(
        str(source),
        keys[0] if len(keys) == 1 else ";".join(f"{name}/{s.key}" for name, s in stores.items()),
        encoding,
        (len(cells), offset),
        modalities,
        paired_obs({name: s.obs.to_frame() for name, s in stores.items()}, local, cells),
        pd.concat([s.var for s in stores.values()], join="outer"),
        PairedRows(parts, encoding.dtype, index_dtype),
        encodings={f"{name} {s.path}:{k}": e for name, s in stores.items() for k, e in s.encodings.items()},
        layers=[layer for layer in first.layers if all(layer in s.layers for s in stores.values())],
        obsm_keys=list(obsm_of),
        read_obsm=obsm,
        files=(str(source),),
        file_starts=np.array([0, len(cells)], dtype=np.int64),
        close=close,
        measured={name: rows >= 0 for name, rows in local.items() if (rows < 0).any()},
    )


def paired_cells(names: dict[str, tuple[object, pd.Index]]) -> tuple[pd.Index, dict[str, np.ndarray]]:
    """The dataset's cells (the first file's, then each next file's new ones, in file order) and
    each modality's row of each cell (-1: none), from ``{modality: (file, obs_names)}``."""
    (first_where, first), *others = names.values()
    same = all(index.equals(first) for _, index in others)
    for where, index in list(names.values())[: 1 if same else None]:
        if not index.is_unique:
            repeated = index[index.duplicated()][0]
            raise SchemaError(
                f"{where}: obs_names are not unique ({repeated!r} appears {int((index == repeated).sum())} "
                "times); the files of a {modality: file} mapping are paired by obs_names"
            )
    if same:  # paired row by row: no join
        return first, {name: np.arange(len(first), dtype=np.int64) for name in names}
    cells, hits = first, [np.arange(len(first), dtype=np.int64)]  # each file's cell of each row
    for where, index in others:
        at = cells.get_indexer(index)
        new = at < 0
        if new.all() and index.size and len(first):
            raise SchemaError(
                f"{where}: none of its obs_names is in an earlier file of the mapping (its first is "
                f"{index[0]!r}, {first_where}'s {first[0]!r}); the files are paired by obs_names"
            )
        at[new] = np.arange(len(cells), len(cells) + int(new.sum()))
        cells = cells.append(index[new])
        hits.append(at)
    return cells, {name: rows_of_cells(at, len(cells)) for name, at in zip(names, hits, strict=True)}


def paired_obs(
    frames: dict[str, pd.DataFrame], local: dict[str, np.ndarray], cells: pd.Index
) -> pd.DataFrame:
    """The dataset's obs from each modality's (see the module docstring for the naming)."""
    holders: dict[str, list[str]] = {}  # column -> the modalities whose file has it
    for name, frame in frames.items():
        for column in frame.columns:
            holders.setdefault(column, []).append(name)
    groups: dict[tuple[str, ...], list[str]] = {}  # the same holders: read together
    for column, names in holders.items():
        groups.setdefault(tuple(names), []).append(column)
    parts = []
    for group, columns in groups.items():
        if len(group) == 1:
            parts.append(
                per_cell(frames[group[0]][columns], local[group[0]], cells).add_prefix(f"{group[0]}:")
            )
        else:
            parts.append(_first_holders({n: frames[n][columns] for n in group}, local, cells))
    order = [c if len(held) > 1 else f"{held[0]}:{c}" for c, held in holders.items()]
    return pd.concat(parts, axis=1)[order] if parts else pd.DataFrame(index=cells)


def _first_holders(
    frames: dict[str, pd.DataFrame], local: dict[str, np.ndarray], cells: pd.Index
) -> pd.DataFrame:
    """Columns several files have: each cell's values from the first of ``frames`` with the cell."""
    holder = np.full(len(cells), -1, dtype=np.int64)
    for j, name in reversed(list(enumerate(frames))):
        holder[local[name] >= 0] = j
    pieces = []
    for j, (name, frame) in enumerate(frames.items()):
        at = np.flatnonzero(holder == j)
        if at.size or j == 0:
            pieces.append(frame.iloc[local[name][at]].set_axis(at))
    lacking = np.flatnonzero(holder < 0)  # cells only files without these columns have
    if lacking.size:
        pieces.append(pd.DataFrame(index=lacking))
    return union_frames(pieces).sort_index().set_axis(cells)
