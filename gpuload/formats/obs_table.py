"""obs read a column at a time: a dataset's obs costs nothing per cell until a column is asked for.

An :class:`ObsTable` knows its length and column names at open; a column's values are read from
the file when asked for (``obs["cell_type"]``), and the obs names only when something needs them
(``obs.index``: pairing files by cell, ``gpuload info``). Nothing read is kept: the plan packs the
columns it delivers into compact arrays and lets the rest go. A table over a frame already in
memory (an ``.h5mu``'s joined obs, the files of a ``{modality: file}`` mapping) and the union of
several files' tables (:func:`stacked_obs`) offer the same face.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from gpuload.errors import SchemaError


class ObsTable:
    """A read-only obs of ``n_rows`` cells whose columns are read on demand (see the module
    docstring). ``obs[key]`` is a Series of one column (positional: its index is not the obs
    names), ``obs[[keys]]`` a frame of several, ``obs.index`` the obs names, ``obs.to_frame()``
    the whole frame with its names (what a pandas query needs)."""

    def __init__(
        self,
        n_rows: int,
        columns: Sequence[str],
        read_column: Callable[[str], pd.Series],
        read_names: Callable[[], pd.Index],
        where: str,
    ) -> None:
        self.n_rows, self.where = n_rows, where
        self.columns = pd.Index([str(c) for c in columns], dtype=object)
        self._read_column, self._read_names = read_column, read_names

    @classmethod
    def in_memory(cls, frame: pd.DataFrame, where: str) -> ObsTable:
        """The table of a frame already read (its index is the obs names)."""
        return cls(
            len(frame),
            list(frame.columns),
            lambda key: frame[key],
            lambda: frame.index,
            where,
        )

    def __len__(self) -> int:
        return self.n_rows

    def __contains__(self, key) -> bool:  # as a frame's: a column name
        return key in self.columns

    def __iter__(self):
        return iter(self.columns)

    def __getitem__(self, key):
        if isinstance(key, str):
            return self.column(key)
        return pd.DataFrame({k: self.column(k) for k in key}, index=pd.RangeIndex(self.n_rows))

    def column(self, key: str) -> pd.Series:
        """One column's values, read now (a positional Series named ``key``)."""
        if key not in self.columns:
            raise KeyError(key)
        values = self._read_column(key)
        if isinstance(values, pd.Series):
            values = values.array  # positional: whatever index it had is dropped
        shape: tuple[int, ...] = getattr(values, "shape", ())
        if len(shape) != 1 or shape[0] != self.n_rows:
            raise SchemaError(
                f"{self.where}: obs column {key!r} has shape {shape}; expected ({self.n_rows},)"
            )
        return pd.Series(values, name=key, index=pd.RangeIndex(self.n_rows), copy=False)

    @property
    def index(self) -> pd.Index:
        """The obs names (read now, not kept)."""
        names = self._read_names()
        if len(names) != self.n_rows:
            raise SchemaError(f"{self.where}: obs has {len(names)} names; expected {self.n_rows}")
        return names

    @property
    def dtypes(self) -> pd.Series:
        """Each column's dtype (reads every column)."""
        return pd.Series({k: self.column(k).dtype for k in self.columns}, dtype=object)

    def to_frame(self, keys: Sequence[str] | None = None) -> pd.DataFrame:
        """The columns ``keys`` (default: all) as a frame indexed by the obs names."""
        keys = list(self.columns) if keys is None else list(keys)
        frame = self[keys]
        frame.index = self.index
        return frame


def stacked_obs(tables: list[ObsTable], where: str) -> ObsTable:
    """The files' obs one after the other: every column of any file (missing values NaN or None),
    a column that is categorical anywhere categorical with the categories merged (the files'
    common category list, else their sorted union, as ``anndata.concat`` merges)."""
    columns = list(dict.fromkeys(c for t in tables for c in t.columns))
    sizes = [len(t) for t in tables]

    def read_column(key: str) -> pd.Series:
        parts = [t.column(key) if key in t.columns else None for t in tables]
        return union_column(parts, sizes)

    def read_names() -> pd.Index:
        return pd.Index(np.concatenate([t.index.to_numpy(dtype=object) for t in tables]), dtype=object)

    return ObsTable(sum(sizes), columns, read_column, read_names, where)


def union_frames(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Frames one after the other, columns merged as :func:`stacked_obs` merges them."""
    columns = list(dict.fromkeys(c for f in frames for c in f.columns))
    sizes = [len(f) for f in frames]
    merged = pd.DataFrame(
        {c: union_column([f[c] if c in f.columns else None for f in frames], sizes) for c in columns},
        index=pd.RangeIndex(sum(sizes)),
    )
    merged.index = pd.Index(np.concatenate([f.index.to_numpy() for f in frames])) if frames else merged.index
    return merged


def union_column(parts: list[pd.Series | None], sizes: list[int]) -> pd.Series:
    """One column of stacked files (``None``: a file without it; see :func:`stacked_obs`)."""
    present = [p for p in parts if p is not None]
    if any(isinstance(p.dtype, pd.CategoricalDtype) for p in present):
        return _union_categorical(parts, sizes)
    if len(present) < len(parts) and all(pd.api.types.is_bool_dtype(p.dtype) for p in present):
        pieces = [
            p.astype("boolean").reset_index(drop=True)
            if p is not None
            else pd.Series(pd.NA, index=range(n), dtype="boolean")
            for p, n in zip(parts, sizes, strict=True)
        ]
        return pd.concat(pieces, ignore_index=True)
    pieces = [
        p.reset_index(drop=True) if p is not None else pd.Series(np.nan, index=range(n))
        for p, n in zip(parts, sizes, strict=True)
    ]
    return pd.concat(pieces, ignore_index=True) if len(pieces) > 1 else pieces[0]


def _union_categorical(parts: list[pd.Series | None], sizes: list[int]) -> pd.Series:
    """A categorical column of stacked files, built from codes (no string per cell)."""
    own = [
        None
        if p is None
        else p.cat.categories
        if isinstance(p.dtype, pd.CategoricalDtype)
        else pd.Index(p.dropna().unique())
        for p in parts
    ]
    lists = [list(c) for c in own if c is not None]
    same = all(c == lists[0] for c in lists)
    categories = pd.Index(lists[0] if same else sorted({c for c in lists for c in c}, key=str))
    dtype = np.int8 if len(categories) < 127 else np.int16 if len(categories) < 32767 else np.int32
    codes = np.full(sum(sizes), -1, dtype=dtype)
    at = 0
    for part, cats, n in zip(parts, own, sizes, strict=True):
        if part is not None and cats is not None:
            local = (
                part.cat.codes.to_numpy()
                if isinstance(part.dtype, pd.CategoricalDtype)
                else cats.get_indexer(part.to_numpy(dtype=object))
            )
            remap = categories.get_indexer(cats)
            codes[at : at + n] = np.where(local >= 0, remap[local], -1)
        at += n
    return pd.Series(pd.Categorical.from_codes(codes, categories=categories))
