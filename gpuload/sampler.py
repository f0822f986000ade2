"""Which cells an epoch visits, in which order, and which share each rank gets.

The sampler owns no I/O and no global RNG: the order is a pure function of
(n, seed, epoch, rank, world_size), so any process can recompute it, which is what makes
mid-epoch resume and exact DDP sharding possible.

Orders
------
``shuffle=False``
    File order.
``shuffle=True`` (block shuffle)
    The rows are cut into chunks of ``chunk_size`` consecutive rows; the chunks are permuted;
    consecutive groups of ``window`` chunks form windows, and the rows inside a window are
    permuted. A window is read from disk in ``window`` contiguous pieces, and every batch
    mixes cells from ``window`` random places in the file.
``shuffle="full"``
    A uniform random permutation (random reads: correct, but slow on disk).

Sharding
--------
Like ``torch.utils.data.DistributedSampler``: with ``drop_last=False`` the order is padded by
repeating its first cells until it divides by ``world_size``; with ``drop_last=True`` the tail
is dropped. Rank ``r`` takes the ``r``-th contiguous segment of the epoch order, so under
block shuffle each rank reads whole windows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gpuload.errors import ArgumentError

SHUFFLE_MODES = (False, True, "block", "full")


def block_shuffle_order(n: int, chunk_size: int, window: int, rng: np.random.Generator) -> np.ndarray:
    """Permute chunks of ``chunk_size`` rows, then rows within windows of ``window`` chunks.

    A short last chunk stays last, so every window but the last holds exactly
    ``chunk_size * window`` rows and the loader's reads line up with the windows.
    """
    n_chunks = -(-n // chunk_size)
    n_full = n // chunk_size
    chunk_rank = np.arange(n_chunks, dtype=np.int64)
    chunk_rank[rng.permutation(n_full)] = np.arange(n_full)
    window_of_row = chunk_rank[np.arange(n) // chunk_size] // window
    return np.lexsort((rng.random(n), window_of_row))


@dataclass(frozen=True)
class EpochSampler:
    """Epoch orders over ``n`` selected cells and this rank's share of them.

    Parameters
    ----------
    n
        Number of selected cells; orders are positions in ``range(n)``.
    shuffle
        ``False``, ``True``/``"block"`` or ``"full"`` (see the module docstring).
    chunk_size, window
        Block-shuffle geometry: rows per contiguous chunk, chunks per shuffled window.
    seed
        With the epoch, determines every order.
    rank, world_size
        This process's share under data parallelism.
    drop_last
        Drop the remainder instead of padding when sharding (and the last short batch).
    """

    n: int
    shuffle: bool | str = True
    chunk_size: int = 256
    window: int = 16
    seed: int = 0
    rank: int = 0
    world_size: int = 1
    drop_last: bool = False

    def __post_init__(self) -> None:
        if self.shuffle not in SHUFFLE_MODES:
            raise ArgumentError(f"shuffle must be one of {SHUFFLE_MODES}, got {self.shuffle!r}")
        for name in ("chunk_size", "window", "world_size"):
            value = getattr(self, name)
            if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < 1:
                raise ArgumentError(f"{name} must be a positive integer, got {value!r}")
        if not 0 <= self.rank < self.world_size:
            raise ArgumentError(f"rank must lie in [0, world_size={self.world_size}), got {self.rank}")
        if self.world_size > self.n:
            raise ArgumentError(f"world_size={self.world_size} is larger than the {self.n} selected cells")

    def epoch_order(self, epoch: int) -> np.ndarray:
        """The whole epoch's order (all ranks), as positions in ``range(n)``."""
        rng = np.random.default_rng([self.seed, epoch])
        if self.shuffle is False:
            return np.arange(self.n, dtype=np.int64)
        if self.shuffle == "full":
            return rng.permutation(self.n)
        return block_shuffle_order(self.n, self.chunk_size, self.window, rng)

    @property
    def per_rank(self) -> int:
        if self.drop_last:
            return self.n // self.world_size
        return -(-self.n // self.world_size)

    def rank_order(self, epoch: int) -> np.ndarray:
        """This rank's contiguous segment of the (padded or trimmed) epoch order."""
        order = self.epoch_order(epoch)
        total = self.per_rank * self.world_size
        if total > order.size:
            order = np.concatenate([order, order[: total - order.size]])
        return order[self.rank * self.per_rank : (self.rank + 1) * self.per_rank]


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
