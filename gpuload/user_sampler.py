"""Orders from the user's own sampler: ``sampler=`` (any ``torch.utils.data.Sampler``, or an
iterable of selected positions) or ``batch_sampler=`` (an iterable of lists of them).

A *position* here is an index into ``loader.positions`` (the selected cells, sorted), as a
``DataLoader``'s sampler yields indices into its dataset. The sampler decides the order and
this rank's share (a ``DistributedSampler`` shards; gpuload does not shard again); gpuload
groups the batches into chunked reads (:func:`~gpuload.sampler.load_requests`) and delivers them
in the sampler's order.

An epoch's order is drawn from the sampler once, when the epoch is first used (its first
iterator, or ``len()`` of a sampler without ``__len__``), after ``set_epoch(epoch)`` is forwarded
to a sampler that has it (or to a batch sampler's ``.sampler``). So a resumed epoch is exact when
the sampler gives the same order for the same ``set_epoch`` (``DistributedSampler``, a sampler
seeded from its epoch); a sampler drawing from a running generator (``RandomSampler``) gives a
fresh process its first order again.
"""

from __future__ import annotations

import operator
import threading
from collections.abc import Iterable, Sized

import numpy as np

from gpuload.errors import ArgumentError


def check_user_sampler(name: str, sampler) -> None:
    """``sampler`` (named ``name``) must be iterable again each epoch: not a one-shot iterator."""
    if not isinstance(sampler, Iterable):
        raise ArgumentError(
            f"{name} must be a torch.utils.data.Sampler or an iterable of "
            f"{'lists of ' if name == 'batch_sampler' else ''}positions, got {type(sampler).__name__}"
        )
    if iter(sampler) is sampler:
        raise ArgumentError(
            f"{name} must be iterable once per epoch (a Sampler, a list, an array), got a one-shot "
            f"iterator ({type(sampler).__name__}); wrap its items in a list"
        )


def selected_indices(values: list, n: int, name: str) -> np.ndarray:
    """``values`` (what ``name`` yielded) as int64 positions in ``range(n)``, or an ArgumentError."""
    try:
        arr = np.asarray(values) if values else np.empty(0, np.int64)
    except ValueError:  # ragged: lists among the items
        arr = np.empty((0, 0))
    if arr.ndim != 1 or arr.dtype.kind not in "iu":
        bad = next((v for v in values if not _is_index(v)), None)
        if bad is not None:
            hint = "; a sampler of batches goes to batch_sampler=" if isinstance(bad, list | tuple) else ""
            raise ArgumentError(
                f"{name} yielded {bad!r} ({type(bad).__name__}); it must yield integer positions, "
                f"indices into loader.positions (0 <= i < {n}){hint}"
            )
        arr = np.array([operator.index(v) for v in values], dtype=np.int64)
    outside = (arr < 0) | (arr >= n)
    if outside.any():
        raise ArgumentError(
            f"{name} yielded position {int(arr[outside][0])}, outside [0, {n}): positions index "
            f"loader.positions, the {n} selected cells"
        )
    return arr.astype(np.int64, copy=False)


def _is_index(value) -> bool:
    try:
        operator.index(value)
    except TypeError:
        return False
    return not isinstance(value, bool | np.bool_)


class UserSampler:
    """The batches of each epoch, from ``sampler`` cut into ``batch_size`` (the last one short
    unless ``drop_last``) or from ``batch_sampler`` as they come; ``n`` selected cells.
    ``chunk_size`` and ``window`` only size the reads (see :func:`~gpuload.sampler.load_requests`)."""

    def __init__(
        self, n: int, *, sampler, batch_sampler, drop_last: bool, chunk_size: int, window: int
    ) -> None:
        self.n, self.drop_last, self.chunk_size, self.window = n, drop_last, chunk_size, window
        self.name = "sampler" if batch_sampler is None else "batch_sampler"
        self.source: Iterable = sampler if batch_sampler is None else batch_sampler
        check_user_sampler(self.name, self.source)
        self._drawn: tuple[int, int | None, list[np.ndarray]] | None = None  # (epoch, batch_size, batches)
        self._lock = threading.Lock()

    def set_epoch(self, epoch: int) -> None:
        """Forward ``epoch`` to the sampler (and a batch sampler's ``.sampler``) that take it."""
        for target in (self.source, getattr(self.source, "sampler", None)):
            set_epoch = getattr(target, "set_epoch", None)
            if callable(set_epoch):
                set_epoch(epoch)

    def batches(self, epoch: int, batch_size: int | None) -> list[np.ndarray]:
        """The epoch's batches as positions in ``range(n)``, drawn from the sampler on first use."""
        with self._lock:
            if self._drawn is not None and self._drawn[:2] == (epoch, batch_size):
                return self._drawn[2]
            self.set_epoch(epoch)
            if self.name == "batch_sampler":
                batches = [self._batch(b) for b in self.source]
            else:
                assert batch_size is not None  # only a batch sampler goes without
                order = selected_indices(list(self.source), self.n, self.name)
                stop = order.size - order.size % batch_size if self.drop_last else order.size
                batches = [order[i : i + batch_size] for i in range(0, stop, batch_size)]
            self._drawn = (epoch, batch_size, batches)
            return batches

    def _batch(self, values) -> np.ndarray:
        if not isinstance(values, Iterable):
            raise ArgumentError(f"batch_sampler yielded {values!r}; it must yield lists of positions")
        batch = selected_indices(list(values), self.n, self.name)
        if batch.size == 0:
            raise ArgumentError("batch_sampler yielded an empty batch; every batch needs a cell")
        return batch

    def n_batches(self, batch_size: int | None, epoch: int) -> int:
        """Batches in ``epoch``: from the sampler's ``len()`` when it has one (as ``DataLoader``),
        else by drawing the epoch's order."""
        if self._drawn is None or self._drawn[:2] != (epoch, batch_size):
            if not isinstance(self.source, Sized):
                return len(self.batches(epoch, batch_size))
            length = len(self.source)
            if self.name == "batch_sampler" or batch_size is None:
                return length
            return length // batch_size if self.drop_last else -(-length // batch_size)
        return len(self._drawn[2])

    def state(self) -> dict:
        """What a checkpoint must agree on with the loader that resumes it."""
        return {
            "sampler": f"{self.name}={type(self.source).__module__}.{type(self.source).__qualname__}",
            "n_cells": self.n,
            "drop_last": self.drop_last,
        }
