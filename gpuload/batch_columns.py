"""What a batch's obs values are made of: lazy columns and lazy category strings.

Handing out a batch costs the host time for every Python object it is made of, and a batch with
all of a file's obs columns (the BMMC file has 28) would be made mostly of column tensors and
category strings. So ``batch["obs"]`` and ``batch["obs_codes"]`` make each column when it is
first read, and a categorical column becomes strings only when they are read. Nothing is made
per batch but the two mappings themselves: their keys are one dict shared by every batch until
a batch's mapping is first read or changed (:class:`ColumnKeys`), and the columns come from one
object per super-batch (:class:`SuperBatchObs`), not from a closure per batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, MutableMapping
from typing import TYPE_CHECKING, Any

import numpy as np

from gpuload.device import moved

if TYPE_CHECKING:
    import torch

    from gpuload.plan.obs import ObsColumns


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
_NO_ARGUMENT = object()


class ColumnKeys:
    """The keys of many batches' :class:`LazyColumns`, as one dict of columns not made yet that
    they share until each is first read or changed (then it copies it: copy on write)."""

    __slots__ = ("unmade",)

    def __init__(self, keys) -> None:
        self.unmade = dict.fromkeys(keys, _NOT_MADE)


class LazyColumns(MutableMapping):
    """A batch's obs columns (``batch["obs"]``, ``batch["obs_codes"]``): a mapping with every
    column's key whose tensor (or strings) is made on first access, so a column nobody reads
    costs no tensor.

    ``LazyColumns(keys, make)`` makes column ``key`` as ``make(key)``, or ``make(argument, key)``
    when an ``argument`` is given (a super-batch's :meth:`SuperBatchObs.value` and a batch's
    number); ``keys`` may be a shared :class:`ColumnKeys`. ``LazyColumns(mapping)`` holds an
    ordinary mapping's items (what frameworks that rebuild mappings while moving a batch, such as
    Lightning, construct); setting and deleting keys work as on a dict.
    """

    __slots__ = ("_columns", "_shared", "_make", "_argument")

    def __init__(self, columns, make: Callable | None = None, argument: Any = _NO_ARGUMENT) -> None:
        self._make, self._argument = make, argument
        if type(columns) is ColumnKeys:  # first: what every batch is handed
            self._columns, self._shared = columns.unmade, True
            return
        self._columns = dict(columns) if make is None else dict.fromkeys(columns, _NOT_MADE)
        self._shared = False

    def _own(self) -> dict:
        """The columns, copied from the shared keys first if they still are those."""
        if self._shared:
            self._columns, self._shared = dict(self._columns), False
        return self._columns

    def __getitem__(self, key):
        value = self._columns[key]
        if value is _NOT_MADE:
            argument = self._argument
            value = self._make(key) if argument is _NO_ARGUMENT else self._make(argument, key)
            self._own()[key] = value
        return value

    def __setitem__(self, key, value) -> None:
        self._own()[key] = value

    def __delitem__(self, key) -> None:
        del self._own()[key]

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


class SuperBatchObs:
    """What the obs of one super-batch's batches are made from, for their :class:`LazyColumns`:
    the gathered obs matrices ``matrices`` (float32, int64 and bool ``[columns, rows]``: numeric
    columns, then categorical codes), batch ``k``'s columns ``[starts[k], stops[k])`` of them and
    its file ``rows[k]`` (a categorical's strings come from the host codes, no device read)."""

    __slots__ = ("layout", "matrices", "starts", "stops", "rows")

    def __init__(
        self,
        layout: ObsLayout,
        matrices: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        starts: list[int],
        stops: list[int],
        rows: list[np.ndarray],
    ) -> None:
        self.layout, self.matrices, self.starts, self.stops, self.rows = layout, matrices, starts, stops, rows

    def value(self, k: int, key: str):
        layout = self.layout
        if key in layout.categories:
            return CategoryStrings(layout.host_codes[key], self.rows[k], layout.categories[key])
        kind, i = layout.numeric[key]
        return self.matrices[kind][i, self.starts[k] : self.stops[k]]

    def code(self, k: int, key: str) -> torch.Tensor:
        return self.matrices[1][self.layout.code_rows[key], self.starts[k] : self.stops[k]]


class ObsLayout:
    """Where each delivered obs column lies in the gathered obs matrices (see
    :class:`~gpuload.plan.obs.ObsColumns`): a numeric column as (matrix, row), a categorical's
    codes as a row of the int64 matrix and its strings from the host codes; made once per
    assembler. ``keys``: ``batch["obs"]``'s (numeric columns, then categoricals), ``code_keys``:
    ``batch["obs_codes"]``'s."""

    def __init__(self, obs: ObsColumns) -> None:
        kinds = {"float": 0, "int": 1, "bool": 2}
        index = {"float": obs.float_keys, "int": obs.int_keys, "bool": obs.bool_keys}
        self.numeric = {key: (kinds[kind], index[kind].index(key)) for key, kind in obs.numeric}
        self.code_rows = {key: len(obs.int_keys) + i for i, key in enumerate(obs.code_keys)}
        self.host_codes = {key: obs.codes(key) for key in obs.code_keys}
        self.categories = obs.categories
        self.keys = ColumnKeys((*self.numeric, *obs.code_keys))
        self.code_keys = ColumnKeys(self.code_rows)
