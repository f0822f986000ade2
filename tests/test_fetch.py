"""The fetcher on its own (gpuload.fetch.BlockFetcher), no loader: a read returns exactly the
file rows asked for, whatever the store (CSR, CSC, dense; compressed or not; several files),
through a page-locked ring on the simulated GPU face too; the read groups come in request
order and stop when told; a preload serves every request from one block; per-modality counts
are the stored values per row."""

from __future__ import annotations

import threading

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

from gpuload import open_multiome
from gpuload.device import RunRings, get_backend
from gpuload.errors import ArgumentError
from gpuload.fetch import BlockFetcher, DeviceBlock
from gpuload.plan import build_plan
from gpuload.sampler import load_requests

from .conftest import PARTS, SMALL, recording_backend

G = SMALL["n_genes"]


def as_csr(block: DeviceBlock, n_vars: int) -> sp.csr_matrix:
    """The block's rows as a host CSR matrix, read from the tensors the kernels see."""
    indptr, indices, data = (t.cpu().numpy() for t in block.tensors)
    return sp.csr_matrix((data, indices, indptr), shape=(block.rows.size, n_vars))


def assert_rows(block: DeviceBlock, rows: np.ndarray, x: sp.csr_matrix) -> None:
    np.testing.assert_array_equal(block.rows, rows)
    np.testing.assert_array_equal(as_csr(block, x.shape[1]).toarray(), x[rows].toarray())


def some_rows(n_cells: int) -> np.ndarray:
    """Sorted unique rows with runs, gaps, the first and the last row."""
    rng = np.random.default_rng(8)
    picked = rng.choice(n_cells, n_cells // 5, replace=False)
    return np.unique(np.concatenate([[0, n_cells - 1], np.arange(10, 25), picked]))


def test_a_read_returns_exactly_the_rows_asked_for_in_every_encoding(variant_h5ad):
    x = sp.csr_matrix(ad.read_h5ad(variant_h5ad).X)
    rows = some_rows(x.shape[0])
    with open_multiome(variant_h5ad) as store:
        fetcher = BlockFetcher(store, get_backend("cpu"), np.arange(store.n_cells), preload=False)
        assert_rows(fetcher.read(rows, None), rows, x)
        assert_rows(fetcher.read(rows[:1], None), rows[:1], x)


def test_a_read_across_files_returns_each_files_rows(parts, small_adata):
    """The three parts (CSR, CSC, dense float64) read as one dataset: a read that spans them."""
    x = sp.csr_matrix(small_adata.X, dtype=np.float64)
    rows = np.array([0, 3, PARTS[1] - 1, PARTS[1], PARTS[1] + 50, PARTS[2] - 1, PARTS[2], PARTS[3] - 1])
    with open_multiome(parts) as store:
        fetcher = BlockFetcher(store, get_backend("cpu"), np.arange(store.n_cells), preload=False)
        assert_rows(fetcher.read(rows, None), rows, x)


def requests_of(positions: np.ndarray, batch_size: int, seed: int) -> list:
    order = np.random.default_rng(seed).permutation(positions)
    batches = [np.sort(order[i : i + batch_size]) for i in range(0, order.size, batch_size)]
    return list(load_requests(batches, positions, chunk_size=16, window=2, batch_size=batch_size))


def served(path, positions: np.ndarray, batch_size: int, seed: int, preload: bool) -> tuple:
    """(the requests, the cpu fetcher, every (block, request) it serves for them)."""
    requests = requests_of(positions, batch_size, seed)
    with open_multiome(path) as store:
        fetcher = BlockFetcher(store, get_backend("cpu"), positions, preload=preload)
        return requests, fetcher, list(fetcher.blocks(requests, None, threading.Event()))


@pytest.fixture(scope="module")
def x(small_adata) -> sp.csr_matrix:
    return sp.csr_matrix(small_adata.X)


def test_read_groups_come_in_request_order_and_hold_their_batches(small_h5ad, x):
    requests, _, groups = served(small_h5ad, np.arange(3, SMALL["n_cells"], 3), 20, seed=1, preload=False)
    assert [r for _, r in groups] == requests
    for block, request in groups:
        assert_rows(block, request.rows, x)
        for batch in request.batches:  # every batch's rows are in its group's block
            np.testing.assert_array_equal(block.rows[block.local(batch)], batch)


def test_read_groups_stop_when_told(small_h5ad):
    positions = np.arange(SMALL["n_cells"])
    requests = requests_of(positions, 20, seed=2)
    stopped = threading.Event()
    with open_multiome(small_h5ad) as store:
        fetcher = BlockFetcher(store, get_backend("cpu"), positions, preload=False)
        groups = fetcher.blocks(requests, None, stopped)
        next(groups)
        stopped.set()
        assert list(groups) == []


def test_a_preload_serves_every_request_from_one_block(small_h5ad, x):
    positions = np.arange(0, SMALL["n_cells"], 2)
    _, fetcher, blocks = served(small_h5ad, positions, 25, seed=3, preload=True)
    assert len({id(block) for block, _ in blocks}) == 1 and fetcher.preloaded is blocks[0][0]
    assert_rows(fetcher.preloaded, positions, x)


def test_counts_per_modality_are_the_stored_values_per_row(small_h5ad, x):
    rows = some_rows(SMALL["n_cells"])
    with open_multiome(small_h5ad) as store:
        layout = build_plan(store).layout
        fetcher = BlockFetcher(store, get_backend("cpu"), rows, preload=False, counts_for=layout)
        block = fetcher.read(rows, None)
    stored = x[rows]
    np.testing.assert_array_equal(block.counts[:, 0], stored[:, :G].getnnz(axis=1))
    np.testing.assert_array_equal(block.counts[:, 1], stored[:, G:].getnnz(axis=1))


def test_preload_takes_true_false_or_auto(small_h5ad):
    with open_multiome(small_h5ad) as store, pytest.raises(ArgumentError, match="preload must be"):
        BlockFetcher(store, get_backend("cpu"), np.arange(3), preload="yes")


@pytest.mark.cudasim
def test_reads_through_a_ring_on_the_copy_stream(small_h5ad, x):
    """The simulated GPU face: each read goes through the run's page-locked ring, is copied on
    the copy stream into fresh device memory, and its slot waits for the copy's fence."""
    backend = recording_backend()
    rings = RunRings.for_run(backend, prefetch=1)
    reads = [some_rows(SMALL["n_cells"]), np.arange(100, 160), np.array([599])]
    with open_multiome(small_h5ad) as store:
        fetcher = BlockFetcher(store, backend, np.arange(store.n_cells), preload=False)
        blocks = [fetcher.read(rows, rings.reads) for rows in reads]
    for block, rows in zip(blocks, reads, strict=True):
        assert_rows(block, rows, x)
        assert block.ready is not None
    buffers = [b for b in rings.reads.buffers if b is not None]
    assert len(buffers) == 2  # two slots used in turn, none grown past the reads
    for block in blocks:  # device memory is not the ring's: reusing a slot cannot change a block
        assert all(not np.shares_memory(t.numpy(), buffer) for t in block.tensors for buffer in buffers)
    copies = [op for op in backend.ledger.ops if op.kind == "h2d"]
    assert copies and {op.stream for op in copies} == {"copy"}
    assert [op.kind for op in backend.ledger.ops].count("host_write") == len(reads)
    rings.close()
    assert backend.ledger.pinned_bytes == 0


def test_requests_over_a_held_block_group_the_same_batches_and_plan_no_read():
    """With ``held`` (a preload's rows), every group names those rows and groups whole windows
    from the start (nothing to read, so no ramp), keeping every batch in order."""
    positions = np.arange(0, 300, 2)
    order = np.random.default_rng(4).permutation(positions)
    batches = [order[i : i + 8] for i in range(0, order.size, 8)]
    planned = list(load_requests(batches, positions, chunk_size=16, window=2, batch_size=8))
    held = list(load_requests(batches, positions, chunk_size=16, window=2, batch_size=8, held=positions))
    assert [len(r.batches) for r in planned] == [1, 1, 2, 4, 4, 4, 3]
    assert [len(r.batches) for r in held] == [4, 4, 4, 4, 3]  # a window is 32 cells
    assert all(r.rows is positions for r in held)
    assert [b for r in held for b in r.batches] == batches
