"""Which cells an epoch visits, in which order, and which share each rank gets.

The sampler owns no I/O and no global RNG: the order is a pure function of
(n, seed, epoch, rank, world_size), so any process can recompute it, which is what makes
mid-epoch resume and exact DDP sharding possible.

Orders
------
``shuffle=False`` (also ``0`` and ``None``, as ``DataLoader`` reads them)
    File order.
``shuffle=True`` (also ``1`` and ``"block"``: block shuffle)
    The rows are cut into chunks of ``chunk_size`` consecutive rows; the chunks are permuted;
    consecutive groups of ``window`` chunks form windows, and the rows inside a window are
    permuted. A window is read from disk in ``window`` contiguous pieces, and every batch
    mixes cells from ``window`` random places in the file.
``shuffle="full"``
    A uniform random permutation (random reads: correct, but slow on disk).
``weights=`` (weighted sampling, as ``torch.utils.data.WeightedRandomSampler``)
    ``num_samples`` positions drawn with probabilities proportional to ``weights`` (with or
    without replacement): one draw per epoch, from the same ``(seed, epoch)`` generator, so a
    cell may appear several times (it is read once per read group) or never. ``shuffle`` is
    irrelevant then, except that ``shuffle=False`` (file order) is refused. Reads are random,
    as under ``"full"``.

Sharding
--------
Like ``torch.utils.data.DistributedSampler``, over the epoch's order (a weighted draw too: the
ranks split one global draw): with ``drop_last=False`` the order is padded by
repeating its first cells until it divides by ``world_size``; with ``drop_last=True`` the tail
is dropped. Rank ``r`` takes the ``r``-th contiguous segment of the epoch order, so under
block shuffle each rank reads whole windows.

Reads
-----
:func:`load_requests` says what to read together: consecutive batches in groups of about
``chunk_size * window`` cells (:class:`LoadRequest`), so a window is read in a few long runs.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from gpuload.checks import is_int, non_negative_int, positive_int, weight_array
from gpuload.errors import ArgumentError

# The one spelling of each order, as ``state()`` records it: file order, block shuffle, permutation.
SHUFFLE_MODES = (False, True, "full")


def shuffle_mode(shuffle) -> bool | str:
    """``shuffle`` as one of :data:`SHUFFLE_MODES`, read as ``DataLoader`` reads it: ``False``,
    ``0`` and ``None`` are file order, ``True``, ``1`` and ``"block"`` the block shuffle."""
    if shuffle is None or isinstance(shuffle, bool | np.bool_) or (is_int(shuffle) and shuffle in (0, 1)):
        return bool(shuffle)
    if isinstance(shuffle, str) and shuffle in ("block", "full"):
        return True if shuffle == "block" else shuffle
    raise ArgumentError(
        f"shuffle must be False, True, 0, 1, None, 'block' (= True) or 'full', got {shuffle!r}"
    )


def index_dtype(n: int) -> np.dtype:
    """The smallest of int32 and int64 that holds positions in ``range(n)``: an epoch's order
    costs 4 bytes a cell below two billion cells."""
    return np.dtype(np.int32 if n < 2**31 else np.int64)


def block_shuffle_order(n: int, chunk_size: int, window: int, rng: np.random.Generator) -> np.ndarray:
    """Permute chunks of ``chunk_size`` rows, then rows within windows of ``window`` chunks.

    A short last chunk stays last, so every window but the last holds exactly
    ``chunk_size * window`` rows and the loader's reads line up with the windows. Linear time
    (no sort): the permuted chunks' rows are laid out window after window, then each window's
    rows are permuted in place of the others'.
    """
    dtype = index_dtype(n)
    n_full = n // chunk_size
    chunks = rng.permutation(n_full).astype(dtype)
    rows = (chunks[:, None] * dtype.type(chunk_size) + np.arange(chunk_size, dtype=dtype)).ravel()
    rows = np.concatenate([rows, np.arange(n_full * chunk_size, n, dtype=dtype)])
    span = chunk_size * window
    whole = (n // span) * span  # rows of the windows of full size
    rows[:whole] = rng.permuted(rows[:whole].reshape(-1, span), axis=1).ravel()
    rows[whole:] = rng.permutation(rows[whole:])
    return rows


@dataclass(frozen=True)
class EpochSampler:
    """Epoch orders over ``n`` selected cells and this rank's share of them.

    Parameters
    ----------
    n
        Number of selected cells; orders are positions in ``range(n)``.
    shuffle
        ``False``, ``True`` or ``"full"``, or another spelling of them (:func:`shuffle_mode`).
    chunk_size, window
        Block-shuffle geometry: rows per contiguous chunk, chunks per shuffled window.
    seed
        With the epoch, determines every order.
    rank, world_size
        This process's share under data parallelism.
    drop_last
        Drop the remainder instead of padding when sharding (and the last short batch).
    weights, num_samples, replacement
        Weighted sampling: one non-negative weight per cell (``None``: unweighted), the epoch's
        number of draws (default ``n``) and whether a cell may be drawn more than once
        (``replacement=False`` needs ``num_samples`` <= the cells of nonzero weight).
    """

    n: int
    shuffle: bool | str = True
    chunk_size: int = 256
    window: int = 16
    seed: int = 0
    rank: int = 0
    world_size: int = 1
    drop_last: bool = False
    weights: np.ndarray | None = field(default=None, compare=False, repr=False)  # in state()'s digest
    num_samples: int | None = None
    replacement: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "shuffle", shuffle_mode(self.shuffle))
        for name in ("chunk_size", "window", "world_size"):
            positive_int(name, getattr(self, name))
        if not 0 <= self.rank < self.world_size:
            raise ArgumentError(f"rank must lie in [0, world_size={self.world_size}), got {self.rank}")
        if self.weights is not None:
            self._check_weighting()
        elif self.num_samples is not None or self.replacement is not True:
            raise ArgumentError(
                "num_samples and replacement=False apply to weighted sampling: pass weights= too "
                "(np.ones(n) for uniform sampling)"
            )
        if self.world_size > self.length:
            cells = f"{self.n} selected cells" if self.weights is None else f"num_samples={self.length}"
            raise ArgumentError(f"world_size={self.world_size} is larger than the {cells}")

    def _check_weighting(self) -> None:
        """Check the weighted options and freeze a private copy of the weights."""
        weights = weight_array(self.weights, self.n).copy()
        weights.flags.writeable = False
        object.__setattr__(self, "weights", weights)
        if self.shuffle is False:
            raise ArgumentError(
                "shuffle=False asks for file order, but weights= draws a random order; leave shuffle "
                "at its default (it is ignored under weights)"
            )
        if not isinstance(self.replacement, (bool, np.bool_)):
            raise ArgumentError(f"replacement must be True or False, got {self.replacement!r}")
        num_samples = self.n if self.num_samples is None else positive_int("num_samples", self.num_samples)
        object.__setattr__(self, "num_samples", num_samples)
        nonzero = int(np.count_nonzero(weights))
        if not self.replacement and num_samples > nonzero:
            raise ArgumentError(
                f"replacement=False draws each cell at most once, so num_samples must be <= the "
                f"{nonzero} cells of nonzero weight, got num_samples={num_samples}"
            )

    @property
    def length(self) -> int:
        """Cells in an epoch's order, before sharding: ``n``, or ``num_samples`` under weights."""
        return self.n if self.num_samples is None else self.num_samples

    def epoch_order(self, epoch: int) -> np.ndarray:
        """The whole epoch's order (all ranks), as positions in ``range(n)``."""
        rng = np.random.default_rng([self.seed, epoch])
        dtype = index_dtype(self.n)
        if self.weights is not None:
            p = self.weights / self.weights.sum()
            drawn = rng.choice(self.n, size=self.num_samples, replace=self.replacement, p=p)
            return drawn.astype(dtype, copy=False)
        if self.shuffle is False:
            return np.arange(self.n, dtype=dtype)
        if self.shuffle == "full":
            return rng.permutation(np.arange(self.n, dtype=dtype))
        return block_shuffle_order(self.n, self.chunk_size, self.window, rng)

    @property
    def per_rank(self) -> int:
        if self.drop_last:
            return self.length // self.world_size
        return -(-self.length // self.world_size)

    def n_batches(self, batch_size: int | None, epoch: int = 0) -> int:
        """Batches of this rank in an epoch (the same in every epoch; ``batch_size`` is None only
        beside a user's batch sampler, never here)."""
        assert batch_size is not None
        return self.per_rank // batch_size if self.drop_last else -(-self.per_rank // batch_size)

    def batches(self, epoch: int, batch_size: int | None) -> list[np.ndarray]:
        """This rank's batches in ``epoch``, as positions in ``range(n)``."""
        order, n_batches = self.rank_order(epoch), self.n_batches(batch_size)
        return [order[i * batch_size : (i + 1) * batch_size] for i in range(n_batches)]  # type: ignore[operator]

    def rank_order(self, epoch: int) -> np.ndarray:
        """This rank's contiguous segment of the (padded or trimmed) epoch order."""
        order = self.epoch_order(epoch)
        total = self.per_rank * self.world_size
        if total > order.size:
            order = np.concatenate([order, order[: total - order.size]])
        return order[self.rank * self.per_rank : (self.rank + 1) * self.per_rank]

    def state(self) -> dict:
        """What a checkpoint must agree on with the sampler that resumes it."""
        digest = None if self.weights is None else hashlib.sha1(self.weights.tobytes()).hexdigest()[:16]
        return {
            "sampler": None,  # gpuload's own order (a user's sampler is named here)
            "seed": self.seed,
            "shuffle": self.shuffle,
            "n_cells": self.n,
            "rank": self.rank,
            "world_size": self.world_size,
            "drop_last": self.drop_last,
            "chunk_size": self.chunk_size,
            "window": self.window,
            # None when unweighted, so that older checkpoints (without these keys) still load.
            "weights": digest,
            "num_samples": self.num_samples,
            "replacement": None if self.weights is None else self.replacement,
        }


def resume_point(state: dict, mine: dict, n_batches: int) -> tuple[int, int]:
    """(epoch, batches done) of a checkpoint ``state``, checked against ``mine`` (the resuming
    loader's own state: every key but the position must agree) and its ``n_batches``."""
    for key, value in mine.items():
        saved = state.get(key)
        if key == "shuffle" and key in state:  # checkpoints before one spelling per mode said "block"
            saved = shuffle_mode(saved)
        if key not in ("epoch", "batches_done") and saved != value:
            raise ArgumentError(
                f"load_state_dict: state has {key}={state.get(key)!r} but this loader has {value!r}"
            )
    if not 0 <= int(state["batches_done"]) <= n_batches:
        raise ArgumentError(
            f"load_state_dict: batches_done={state['batches_done']} is outside [0, {n_batches}]"
        )
    return int(state["epoch"]), int(state["batches_done"])


def distributed_share(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """(rank, world_size) as given, else from an initialized ``torch.distributed``, else (0, 1)."""
    if rank is not None or world_size is not None:
        if rank is None or world_size is None:
            raise ArgumentError("pass both rank and world_size, or neither")
        return non_negative_int("rank", rank), positive_int("world_size", world_size)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


@dataclass(frozen=True)
class LoadRequest:
    """What to read together (sorted unique file ``rows``) and the ``batches`` (file rows, in
    delivery order) cut from it."""

    rows: np.ndarray
    batches: list[np.ndarray]


def load_requests(
    batches: Iterable[np.ndarray],
    positions: np.ndarray,
    chunk_size: int,
    window: int,
    batch_size: int,
    *,
    held: np.ndarray | None = None,
) -> Iterator[LoadRequest]:
    """Consecutive ``batches`` (file rows) grouped into reads of about ``chunk_size * window``
    cells; ``positions`` are the selected file rows, sorted. A generator: a run holds one group's
    rows at a time, not the epoch's (``batches`` may be a generator too).

    Groups end where the epoch order's windows of ``chunk_size * window`` cells end (at the
    first batch boundary at or past each), and the first window is read in groups of one batch,
    then twice as many cells each time: the first batch arrives without waiting for a whole
    window, and the reader keeps ahead of the assembler from the start (a full second group
    behind a one-batch first stalled every epoch's start while it was read). A group reads its
    own rows plus, in each chunk of the block shuffle of which it needs at least half, the rest
    of that chunk: few long contiguous reads instead of many short ones, and a chunk a group
    barely touches (a group runs past its window by less than a batch) is not read whole.
    ``held``: the rows of a block already on the device (a preload), which every group then
    names as its rows, planning no read of its own (sorting a group's rows costs about as much as
    assembling its batches); with nothing to read there is no ramp either.
    """
    window_cells = max(1, chunk_size * window)
    ramp: Iterator[int] = itertools.takewhile(
        lambda end: end < window_cells, (batch_size << k for k in itertools.count())
    )
    if held is not None:  # nothing to read: no reader to keep ahead, whole windows from the start
        ramp = iter(())
    ends = itertools.chain(ramp, (window_cells * k for k in itertools.count(1)))
    batches = iter(batches)
    read = 0  # cells of the batches grouped so far
    for end in ends:
        group = []
        for batch in batches:
            group.append(batch)
            read += batch.size
            if read >= end:
                break
        if not group:
            return
        if held is not None:
            yield LoadRequest(held, group)
            continue
        rows = np.unique(np.concatenate(group))
        chunks, needed = np.unique(np.searchsorted(positions, rows) // chunk_size, return_counts=True)
        sizes = np.minimum(chunk_size, positions.size - chunks * chunk_size)
        mostly = chunks[2 * needed >= sizes]
        if mostly.size:
            whole = (mostly[:, None] * chunk_size + np.arange(chunk_size)).ravel()
            rows = np.union1d(rows, positions[whole[whole < positions.size]])
        yield LoadRequest(rows, group)


def batch_label_entropy(order: np.ndarray, labels: np.ndarray, batch_size: int) -> float:
    """Mean Shannon entropy (nats) of ``labels`` within consecutive batches of ``order``.

    Compare a sampler's value with a full permutation's: the closer, the better mixed.
    """
    codes = np.unique(labels, return_inverse=True)[1]
    n_batches = order.size // batch_size
    batches = codes[order[: n_batches * batch_size]].reshape(n_batches, batch_size)
    entropies = []
    for row in batches:
        p = np.bincount(row) / batch_size
        p = p[p > 0]
        entropies.append(float(-(p * np.log(p)).sum()))
    return float(np.mean(entropies)) if entropies else 0.0
