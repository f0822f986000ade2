"""What a batch's obs values are made of: lazy columns and lazy category strings.

Handing out a batch costs the host time for every Python object it is made of, and a batch with
all of a file's obs columns (the BMMC file has 28) would be made mostly of column tensors and
category strings. So ``batch["obs"]`` and ``batch["obs_codes"]`` make each column when it is
first read, and a categorical column becomes strings only when they are read.
"""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping

import numpy as np

from gpuload.device import moved


class CategoryStrings:
    """One categorical obs column of a batch, turned into strings only when read (None for a
    missing value): ``len``, indexing, iteration, ``tolist()``, ``numpy.asarray``, and equality
    with a list of the same strings.

    Deliberately not a ``collections.abc.Sequence``: frameworks that rebuild sequences while
    moving a batch (Lightning's ``apply_to_collection``) leave it alone, as they leave strings.
    """

    __slots__ = ("codes", "rows", "categories")

    def __init__(self, codes: np.ndarray, rows: np.ndarray, categories: list[str]) -> None:
        self.codes, self.rows, self.categories = codes, rows, categories

    def __len__(self) -> int:
        return self.rows.size

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self._string(c) for c in self.codes[self.rows[i]]]
        return self._string(self.codes[self.rows[i]])

    def _string(self, code) -> str | None:
        return self.categories[code] if code >= 0 else None

    def __iter__(self) -> Iterator[str | None]:
        return iter(self[:])

    def tolist(self) -> list[str | None]:
        return self[:]

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        return np.array(self[:], dtype=dtype if dtype is not None else object)

    def __eq__(self, other) -> bool:
        if isinstance(other, CategoryStrings | list | tuple):
            return self[:] == list(other)
        return NotImplemented

    # Compares like a list, so unhashable like one (typeshed types object.__hash__ as always callable).
    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return repr(self[:])


_NOT_MADE = object()


class LazyColumns(MutableMapping):
    """A batch's obs columns (``batch["obs"]``, ``batch["obs_codes"]``): a mapping with every
    column's key whose tensor (or strings) is made on first access, so a column nobody reads
    costs no tensor.

    ``LazyColumns(mapping)`` holds an ordinary mapping's items (what frameworks that rebuild
    mappings while moving a batch, such as Lightning, construct); setting and deleting keys work
    as on a dict.
    """

    __slots__ = ("_columns", "_make")

    def __init__(self, columns, make=None) -> None:
        if make is None:
            self._columns, self._make = dict(columns), None
        else:
            self._columns, self._make = dict.fromkeys(columns, _NOT_MADE), make

    def __getitem__(self, key):
        value = self._columns[key]
        if value is _NOT_MADE:
            value = self._columns[key] = self._make(key)
        return value

    def __setitem__(self, key, value) -> None:
        self._columns[key] = value

    def __delitem__(self, key) -> None:
        del self._columns[key]

    def to(self, *args, **kwargs) -> LazyColumns:
        """The columns as ``Tensor.to(*args, **kwargs)`` would move each, still lazy: a column is
        moved when first read. Frameworks that move a batch through objects with ``to`` (Lightning's
        ``move_data_to_device``) then leave the unread columns unmade."""
        return LazyColumns(self._columns, lambda key: moved(self[key], *args, **kwargs))

    def made(self) -> list:
        """The values made (or set) so far, without making the others."""
        return [v for v in self._columns.values() if v is not _NOT_MADE]

    def __iter__(self) -> Iterator:
        return iter(self._columns)

    def __len__(self) -> int:
        return len(self._columns)

    def __repr__(self) -> str:
        return f"LazyColumns({dict(self.items())!r})"
