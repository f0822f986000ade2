"""Epoch orders: permutations, seeded, sharded exactly, and how well block shuffle mixes."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpuload.errors import ArgumentError
from gpuload.sampler import EpochSampler, batch_label_entropy, block_shuffle_order, load_requests


@settings(max_examples=80, deadline=None)
@given(
    n=st.integers(1, 3000),
    shuffle=st.sampled_from([False, True, "full"]),
    chunk=st.integers(1, 300),
    window=st.integers(1, 10),
    seed=st.integers(0, 2**31),
    epoch=st.integers(0, 100),
)
def test_every_order_is_a_permutation(n, shuffle, chunk, window, seed, epoch):
    order = EpochSampler(n, shuffle, chunk, window, seed).epoch_order(epoch)
    np.testing.assert_array_equal(np.sort(order), np.arange(n))


def test_orders_are_seeded_and_change_per_epoch():
    s = EpochSampler(5000, True, 64, 4, seed=7)
    np.testing.assert_array_equal(s.epoch_order(3), EpochSampler(5000, True, 64, 4, seed=7).epoch_order(3))
    assert not np.array_equal(s.epoch_order(0), s.epoch_order(1))
    assert not np.array_equal(s.epoch_order(0), EpochSampler(5000, True, 64, 4, seed=8).epoch_order(0))
    np.testing.assert_array_equal(EpochSampler(50, False).epoch_order(9), np.arange(50))


def test_block_shuffle_reads_whole_chunks_per_window():
    """A window of the order covers exactly `window` chunks: contiguous reads."""
    s = EpochSampler(4096, True, chunk_size=128, window=4, seed=1)
    order = s.epoch_order(0)
    for w in range(0, 4096, 512):
        chunks = np.unique(order[w : w + 512] // 128)
        assert chunks.size == 4


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 500),
    world=st.integers(1, 7),
    drop_last=st.booleans(),
    shuffle=st.sampled_from([False, True, "full"]),
)
def test_shards_are_disjoint_complete_and_equal(n, world, drop_last, shuffle):
    if world > n:
        with pytest.raises(ArgumentError, match="world_size"):
            EpochSampler(n, shuffle, 16, 2, 0, 0, world, drop_last)
        return
    shards = [EpochSampler(n, shuffle, 16, 2, 3, r, world, drop_last).rank_order(5) for r in range(world)]
    assert len({s.size for s in shards}) == 1
    union = np.concatenate(shards)
    if drop_last:
        assert np.unique(union).size == union.size == (n // world) * world
    else:
        assert set(union) == set(range(n))
        assert union.size - n == (-n) % world  # padding repeats the first few cells


def test_block_shuffle_quality_against_full_permutation():
    """Rows grouped by a label (like batches in the real file): block shuffle mixes them
    almost as well as a full permutation, sequential order not at all."""
    labels = np.repeat(np.arange(13), 800)
    b = 32
    full = batch_label_entropy(EpochSampler(labels.size, "full", seed=0).epoch_order(0), labels, b)
    block = batch_label_entropy(EpochSampler(labels.size, True, 256, 16, seed=0).epoch_order(0), labels, b)
    none = batch_label_entropy(EpochSampler(labels.size, False).epoch_order(0), labels, b)
    assert none < 0.1 < 0.7 * full < block <= full + 0.05


@pytest.mark.parametrize("batch_size", [32, 100, 256])
def test_reads_ramp_up_cover_their_batches_and_read_little_twice(batch_size):
    """The first window is read in groups of 1, 1, 2, 4, ... batches, then a group per window
    (ending at the first batch boundary past it); each group reads every row its batches need;
    over an epoch of block shuffle, rows read stay near rows needed, whether or not batches
    divide windows (a chunk a group barely touches is not read whole)."""
    positions = np.arange(0, 60_000, 3)  # a selection: every third file row
    order = positions[block_shuffle_order(positions.size, 256, 16, np.random.default_rng(0))]
    batches = [order[i : i + batch_size] for i in range(0, order.size, batch_size)]
    requests = list(load_requests(iter(batches), positions, 256, 16, batch_size))
    sizes = [len(r.batches) for r in requests]
    assert sizes[:4] == [1, 1, 2, 4] and max(sizes) == -(-256 * 16 // batch_size)
    assert [b for r in requests for b in r.batches] == batches
    for r in requests:
        assert np.all(np.diff(r.rows) > 0) and np.isin(np.concatenate(r.batches), r.rows).all()
    read = sum(r.rows.size for r in requests)
    assert read <= 1.1 * positions.size, read / positions.size
