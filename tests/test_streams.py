"""The GPU face's stream discipline, checked on the simulated face (``cudasim``) through the ledger.

Every device operation goes through the backend, which writes it to its ledger with the stream
current when it was issued. These tests assert that all work of the loader's threads ran on the
loader's stream, that every batch handed out waited on the event recorded after its super-batch
(and was ``record_stream``-ed for the consumer), that launches and syncs are per super-batch,
not per batch, and that page-locked memory stays bounded. What they cannot see is in the README
(the simulator runs operations synchronously: a missing wait is caught as a missing ledger entry,
never as a race).
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from gpuload import MultiomeLoader
from gpuload.device import check
from gpuload.device.happens_before import drains

from .conftest import recording_backend

pytestmark = pytest.mark.cudasim
N_GENES, N_PEAKS = 40, 200  # narrow: the simulator runs every CUDA thread in Python
SUBSET = np.arange(0, 300, 5)  # 60 cells


@pytest.fixture(scope="module")
def narrow_h5ad(synthetic):
    return synthetic("narrow.h5ad", n_cells=300, n_genes=N_GENES, n_peaks=N_PEAKS, seed=6)


def _loader(path, **kw):
    """A cudasim loader whose backend records from the start (the checker needs every event)."""
    backend = recording_backend()
    kwargs = dict(
        batch_size=8,
        shuffle=True,
        seed=4,
        device=backend,
        subset=SUBSET,
        layer="counts",
        transform={"GEX": "log1p_size_factor", "ATAC": "binarize"},
        obs_keys=["cell_type", "GEX_n_genes", "GEX_size_factors"],
        chunk_size=8,
        window=2,
        super_batch_bytes=4 * 8 * (N_GENES + N_PEAKS) * 4,  # four batches of 8 float32 rows
    )
    return MultiomeLoader(path, **{**kwargs, **kw})


@pytest.mark.parametrize(
    "options",
    [{}, {"preload": True}, {"output": "sparse_csr", "subset": SUBSET[:16]}, {"dtype": torch.float16}],
    ids=["streaming", "preloaded", "sparse", "float16"],  # the simulated warps of sparse are slow
)
def test_all_loader_work_runs_on_the_loader_streams(narrow_h5ad, options):
    loader = _loader(narrow_h5ad, **options)
    batches = list(loader)
    ledger = loader.backend.ledger
    assert ledger.counts["launch"] > 0 and ledger.counts["h2d"] > 0
    assert ledger.off_stream() == [], ledger.off_stream()[:5]
    assert check(ledger.ops) == []
    # Reads go to the device on the copy stream, kernels run on the compute stream, which waits
    # for each block's copy event before reading it.
    streams = {
        (op.kind, op.name.split()[0]): op.stream for op in ledger.ops if op.thread.startswith("gpuload-")
    }
    assert streams[("launch", "gather_rows" if "output" not in options else "fill_rows")] == "compute"
    assert {s for (kind, name), s in streams.items() if name in ("block", "preload") and kind == "h2d"} == {
        "copy"
    }
    events = {op.event: op for op in ledger.ops if op.kind == "event"}
    compute_waits = [events[op.event] for op in ledger.ops if op.kind == "wait" and op.stream == "compute"]
    assert {e.stream for e in compute_waits} >= {"copy"}
    # Each super-batch is handed to the consumer's stream once, waiting on the event the
    # assembler recorded after it; every batch is a use of it on that stream.
    consumer = threading.current_thread().name
    hand_offs = [op for op in ledger.ops if op.kind == "wait" and op.thread == consumer]
    assert all(events[op.event].name == "super-batch" for op in hand_offs)
    assert len(hand_offs) <= len(batches) == len(loader) == ledger.counts["use"]
    assert {op.thread for op in ledger.ops if op.kind in ("use", "record_stream") and op.name == "batch"} == {
        consumer
    }


def test_launches_are_per_super_batch_and_no_loader_thread_drains_a_stream(narrow_h5ad):
    loader = _loader(narrow_h5ad, preload=True, chunk_size=16, window=4)  # read groups of 8 batches
    list(loader)  # the preload happens in the first epoch
    ledger = loader.backend.ledger
    ledger.counts.clear()
    batches = len(list(loader))
    assert batches == 8
    super_batches = 4  # the window of 8 batches is read in groups of 1, 1, 2 and 4: a launch each
    assert ledger.counts["launch"] <= super_batches
    assert ledger.counts["h2d"] <= super_batches  # one upload of rows and offsets per launch
    # The status is read by the consumer, not waited for by the assembler: no loader thread
    # waits for the latest event of a stream (which would stall it until the GPU drains).
    assert [op for op in drains(ledger.ops) if op.thread.startswith("gpuload-")] == []
    assert check(ledger.ops) == []


def test_the_ledger_sees_work_off_the_loader_stream(narrow_h5ad):
    """The check is not vacuous: an operation issued outside ``on_stream`` is reported."""
    backend = _loader(narrow_h5ad).backend

    def stray():
        backend.empty(4, torch.float32, "stray")
        with backend.on_stream():
            backend.empty(4, torch.float32, "fine")

    thread = threading.Thread(target=stray, name="gpuload-test")
    thread.start()
    thread.join()
    assert [op.name for op in backend.ledger.off_stream()] == ["stray"]


def test_pinned_memory_is_bounded_by_the_rings(narrow_h5ad):
    loader = _loader(narrow_h5ad, shuffle=False, chunk_size=16, window=1, prefetch=2)
    for _ in range(2):
        list(loader)
    ledger = loader.backend.ledger
    largest_read = max(op.size for op in ledger.ops if op.kind == "h2d" and op.name == "block data")
    # Two buffers for reads, prefetch + 2 each for super-batch rows and for status, each rounded
    # up to the ring's 8 MiB step: one set of rings, reused by the second epoch (never re-pinned).
    slots = 2 + 2 * (2 + 2)
    assert ledger.pinned_peak <= slots * (1 << 23) + slots * largest_read
    assert ledger.pinned_bytes == ledger.pinned_peak
    loader.close()
    assert ledger.pinned_bytes == 0  # close() gives the page-locked memory back


@pytest.mark.parametrize("preload", [True, False], ids=["preloaded", "streaming"])
def test_a_failed_page_lock_falls_back_to_pageable_reads(narrow_h5ad, monkeypatch, preload):
    """One warning, then reads through pageable memory: a preload still preloads, a stream still
    streams, and the batches are the same as without the failure."""
    want = [b["index"].numpy() for b in _loader(narrow_h5ad, preload=preload, shuffle=False)]
    loader = _loader(narrow_h5ad, preload=preload, shuffle=False)
    pinned = loader.backend.pinned

    calls = []

    def fails_after_the_first(nbytes):  # the first read buffer is page-locked, then none
        calls.append(nbytes)
        if len(calls) > 1:
            raise MemoryError("cannot page-lock memory (injected)")
        return pinned(nbytes)

    monkeypatch.setattr(loader.backend, "pinned", fails_after_the_first)
    with pytest.warns(RuntimeWarning, match="pageable memory instead") as caught:
        got = [b["index"].numpy() for b in loader] + [b["index"].numpy() for b in loader]
    assert len([w for w in caught if "pageable" in str(w.message)]) == 1
    np.testing.assert_array_equal(np.concatenate(got), np.concatenate(want + want))
    assert loader.fetcher.preload is preload and loader.backend.pageable
    assert check(loader.backend.ledger.ops) == []


def test_batches_are_views_of_the_kernels_output(narrow_h5ad):
    """Zero-copy, checked through the ledger: each batch lies inside an output buffer the
    backend allocated for a kernel (no copy after the kernel)."""
    loader = _loader(narrow_h5ad)
    batches = list(loader)
    outputs = [(op.address, op.address + op.size) for op in loader.backend.ledger.ops if op.name == "output"]
    for b in batches:
        for name in ("GEX", "ATAC"):
            start, end = b[name].data_ptr(), b[name].data_ptr() + b[name].numel() * b[name].element_size()
            assert any(lo <= start and end <= hi for lo, hi in outputs)
