"""Soak: many epochs over a small file keep memory, threads and file handles flat, and every
epoch is an exact permutation of the selected cells."""

from __future__ import annotations

import gc
import os

import numpy as np
import pytest

from gpuload import MultiomeLoader

from .conftest import file_digest, gpuload_threads

EPOCHS = 20
MAX_GROWTH = 0.05  # RSS after the warm-up epoch may grow by less than this fraction
N_CELLS, N_GENES, N_PEAKS = 1500, 100, 1500
SUBSET = "batch in ['s1d1', 's1d2', 's2d1', 's3d6', 's4d8', 's1d3', 's2d4']"


@pytest.fixture(scope="module")
def soak_h5ad(synthetic):
    """Big enough that keeping one epoch's batches alive would add > 5% RSS over 20 epochs
    (~6 MB of dense float32 per epoch), small enough for ~10 s of epochs."""
    return synthetic("soak.h5ad", n_cells=N_CELLS, n_genes=N_GENES, n_peaks=N_PEAKS, seed=5)


def rss_bytes() -> int:
    """Resident set size from /proc/self/statm (pages) - no psutil needed."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _settle() -> tuple[int, int]:
    gc.collect()
    return rss_bytes(), open_fds()


def test_epochs_keep_memory_flat_and_are_exact_permutations(soak_h5ad):
    """20 shuffled epochs, transforms and obs included: RSS grows < 5% after the first epoch,
    and each epoch yields every selected cell exactly once, in a new order."""
    before = file_digest(soak_h5ad)
    loader = MultiomeLoader(
        soak_h5ad,
        batch_size=16,
        shuffle=True,
        seed=4,
        device="cpu",
        layer="counts",
        transform={"GEX": "normalize_total", "ATAC": "tfidf"},
        subset=SUBSET,
        chunk_size=16,
        window=4,
        prefetch=4,
    )
    selected = loader.positions
    assert 0 < selected.size < N_CELLS
    orders, rss = [], []
    for epoch in range(EPOCHS):
        rows = []
        for batch in loader:
            rows.append(batch["index"].numpy().copy())
            assert batch["GEX"].shape == (rows[-1].size, N_GENES)
        del batch
        rows = np.concatenate(rows)
        np.testing.assert_array_equal(np.sort(rows), selected, err_msg=f"epoch {epoch}")
        assert loader.epoch == epoch + 1
        orders.append(rows)
        rss.append(_settle()[0])
    assert len({o.tobytes() for o in orders}) == EPOCHS, "some epochs repeated an order"
    growth = (max(rss[1:]) - rss[0]) / rss[0]
    assert growth < MAX_GROWTH, f"RSS grew {growth:.1%} over {EPOCHS} epochs: {[r >> 20 for r in rss]} MiB"
    assert gpuload_threads() == []
    assert file_digest(soak_h5ad) == before


def test_abandoned_epochs_and_fresh_loaders_leak_nothing(soak_h5ad):
    """20 rounds of: a new loader, part of an epoch, ``break``; then a full epoch in the same
    loader. No background thread, file handle or memory accumulates, and each full epoch is exact."""
    before = file_digest(soak_h5ad)
    rng = np.random.default_rng(0)
    kwargs = dict(batch_size=24, shuffle="full", device="cpu", subset=SUBSET, obs_keys=["cell_type", "batch"])
    baseline = None
    rss = []
    for round_ in range(EPOCHS):
        loader = MultiomeLoader(soak_h5ad, seed=round_, **kwargs)
        stop = int(rng.integers(0, len(loader)))
        for i, _batch in enumerate(loader):
            if i == stop:
                break
        assert gpuload_threads() == []
        rows = np.concatenate([b["index"].numpy() for b in loader])
        np.testing.assert_array_equal(np.sort(rows), loader.positions, err_msg=f"round {round_}")
        del loader, _batch
        now_rss, now_fds = _settle()
        if baseline is None:
            baseline = now_fds
        assert now_fds == baseline, (
            f"round {round_}: {now_fds} open file descriptors, {baseline} after round 0"
        )
        rss.append(now_rss)
    growth = (max(rss[1:]) - rss[0]) / rss[0]
    assert growth < MAX_GROWTH, f"RSS grew {growth:.1%} over {EPOCHS} rounds: {[r >> 20 for r in rss]} MiB"
    assert file_digest(soak_h5ad) == before
