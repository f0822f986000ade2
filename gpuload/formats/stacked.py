"""Several files as one dataset: their cells one after the other, their features checked equal.

Each file (``.h5ad``, ``.h5mu`` or a ``{modality: .h5ad}`` mapping) is opened for its obs, var and
shape; its row reader opens at the first read of one of its rows, so a rank that reads only some
files opens only those. Global row ``g`` is row ``g - file_starts[i]`` of file ``i``. obs is the
union of the files' columns (missing values NaN or None; a categorical column's categories merged
in order of appearance).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from gpuload.errors import SchemaError
from gpuload.formats.obs_table import stacked_obs
from gpuload.formats.pairing import PairedRows
from gpuload.formats.store import MultiomeStore
from gpuload.formats.types import Encoding, RowBlock, combined_encoding


class StackedRows:
    """Row reads of global rows, split by file (see the module docstring).

    ``touched`` holds the files whose readers have been asked for rows or sizes: the files a
    rank has opened.
    """

    sidecar = None

    def __init__(self, stores: list[MultiomeStore], starts: np.ndarray, encoding: Encoding) -> None:
        self.stores, self.starts, self.encoding = stores, starts, encoding
        self.touched: set[int] = set()
        # A file's rows can be read straight into the caller's buffers when its reader allocates
        # what the stack delivers (the same value and index types): a CSR file's reader, or an
        # .h5mu's, allocates its encoding's types (a CSC sidecar and a dense read choose their own).
        self.direct = [
            (s.encoding.kind == "csr" or isinstance(s.reader, PairedRows))
            and s.encoding.dtype == encoding.dtype
            and s.encoding.index_dtype == encoding.index_dtype
            for s in stores
        ]

    def close(self) -> None:
        for store in self.stores:
            store.close()

    def _by_file(self, rows: np.ndarray) -> list[tuple[int, np.ndarray]]:
        """(file, its local rows) for each file that ``rows`` (sorted) touch."""
        bounds = np.searchsorted(rows, self.starts)
        parts = [
            (i, rows[bounds[i] : bounds[i + 1]] - self.starts[i])
            for i in range(len(self.stores))
            if bounds[i + 1] > bounds[i]
        ]
        self.touched.update(i for i, _ in parts)
        return parts

    def stored_values(self, rows: np.ndarray) -> int | None:
        total = 0
        for i, local in self._by_file(np.sort(rows)):
            n = self.stores[i].stored_values(local)
            if n is None:
                return None
            total += n
        return total

    def read(self, rows: np.ndarray, empty=np.empty) -> RowBlock:
        parts = self._by_file(rows)
        counted = [self.stores[i].stored_values(local) if self.direct[i] else None for i, local in parts]
        sizes = [n for n in counted if n is not None]
        if len(sizes) == len(counted):  # each file reads straight into its slice
            indices, data = (
                empty(sum(sizes), self.encoding.index_dtype),
                empty(sum(sizes), self.encoding.dtype),
            )
            starts = np.cumsum([0, *sizes])
            blocks = [
                self.stores[i].read_block(local, _Slices(indices[a:b], data[a:b]))
                for (i, local), a, b in zip(parts, starts[:-1], starts[1:], strict=True)
            ]
        else:
            blocks = [self.stores[i].read_block(local) for i, local in parts]
            total = sum(b.indices.size for b in blocks)
            indices, data = empty(total, self.encoding.index_dtype), empty(total, self.encoding.dtype)
            at = 0
            for b in blocks:
                n = b.indices.size
                indices[at : at + n], data[at : at + n] = b.indices, b.data
                at += n
        indptr = np.zeros(rows.size + 1, dtype=np.int64)
        np.cumsum(np.concatenate([np.diff(b.indptr) for b in blocks] or [indptr[:0]]), out=indptr[1:])
        return RowBlock(rows, indptr, indices, data)


class _Slices:
    """``empty(n, dtype)`` for one file's read: its slices of the stack's index and value
    buffers, in the order a reader asks (indices, then values)."""

    def __init__(self, *views: np.ndarray) -> None:
        self.views = list(views)

    def __call__(self, n: int, dtype) -> np.ndarray:
        view = self.views.pop(0)
        assert view.size == n and view.dtype == np.dtype(dtype), "a reader asked for other buffers"
        return view


def _check_same_features(stores: list[MultiomeStore]) -> None:
    first = stores[0]
    for store in stores[1:]:
        if store.var is first.var and store.modalities is first.modalities:
            continue  # one var read once for both (formats.var_cache)
        if store.n_vars != first.n_vars:
            raise SchemaError(
                f"{store.path}: {store.n_vars} features, but {first.path} has {first.n_vars}; "
                "files of one dataset need the same features"
            )
        mods = {m: s.width for m, s in store.modalities.items()}
        if mods != {m: s.width for m, s in first.modalities.items()}:
            raise SchemaError(
                f"{store.path}: modalities {mods}, but {first.path} has "
                f"{ {m: s.width for m, s in first.modalities.items()} }"
            )
        moved = [
            m
            for m, mod in store.modalities.items()
            if not np.array_equal(mod.columns, first.modalities[m].columns)
        ]
        if moved:
            raise SchemaError(
                f"{store.path}: the columns of modality {moved[0]!r} are not those of {first.path} "
                "(var['feature_types'] differs); files of one dataset need the same features"
            )
        names, expected = store.var.index.to_numpy(), first.var.index.to_numpy()
        differ = np.flatnonzero(names != expected)
        if differ.size:
            j = int(differ[0])
            raise SchemaError(
                f"{store.path}: var differs from {first.path}'s at feature {j}: {names[j]!r} there is "
                f"{expected[j]!r} in {first.path} ({differ.size} features differ)"
            )


def describe_files(paths: Sequence) -> str:
    """How messages name a dataset of several files."""
    shown = ", ".join(str(p) for p in paths[:3])
    return f"[{shown}{f', and {len(paths) - 3} more' if len(paths) > 3 else ''}]"


def open_stacked(paths: Sequence, open_file: Callable[..., MultiomeStore]) -> MultiomeStore:
    """The files ``paths`` as one dataset; ``open_file(path)`` opens one with a lazy reader. A
    "path" is whatever ``open_file`` takes (a ``Path``, or a ``{modality: file}`` mapping's
    :class:`~gpuload.formats.modality_files.ModalityFiles`); its ``str()`` names it."""
    stores: list[MultiomeStore] = []
    try:
        for path in paths:
            stores.append(open_file(path))
        _check_same_features(stores)
        keys = {s.key for s in stores}
        if len(keys) != 1:
            raise SchemaError(f"the files read different matrices: {sorted(keys)}")
    except BaseException:
        for store in stores:
            store.close()
        raise
    sizes = [s.n_cells for s in stores]
    starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    index = [s.encoding.index_dtype for s in stores if s.encoding.index_dtype is not None]
    encoding = combined_encoding([s.encoding for s in stores], np.result_type(*index) if index else np.int32)
    obsm_keys = list(dict.fromkeys(k for s in stores for k in s.obsm_keys))

    def obsm(key: str) -> np.ndarray:
        parts = [s.obsm(key) for s in stores]  # a file without the key raises, naming itself
        widths = {p.shape[1] for p in parts}
        if len(widths) != 1:
            raise SchemaError(f"obsm[{key!r}] has different widths {sorted(widths)} across the files")
        return np.concatenate(parts)

    first = stores[0]
    return MultiomeStore(
        describe_files(paths),
        first.key,
        encoding,
        (int(starts[-1]), first.n_vars),
        first.modalities,
        stacked_obs([s.obs for s in stores], describe_files(paths)),
        first.var,
        StackedRows(stores, starts, encoding),
        encodings={f"{p}:{k}": e for s, p in zip(stores, paths, strict=True) for k, e in s.encodings.items()},
        layers=[layer for layer in first.layers if all(layer in s.layers for s in stores)],
        obsm_keys=obsm_keys,
        read_obsm=obsm,
        files=tuple(f for s in stores for f in s.files),
        file_starts=starts,
        close=lambda: None,
        measured={
            m: np.concatenate([s.measured.get(m, np.ones(s.n_cells, dtype=bool)) for s in stores])
            for m in dict.fromkeys(m for s in stores for m in s.measured)
        },
    )
