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
from gpuload.bmmc.synth import write_synthetic
from gpuload.device import SimulatedCudaBackend

pytestmark = pytest.mark.cudasim
N_GENES, N_PEAKS = 40, 200  # narrow: the simulator runs every CUDA thread in Python
SUBSET = np.arange(0, 300, 5)  # 60 cells


@pytest.fixture(scope="module")
def narrow_h5ad(data_dir):
    return write_synthetic(
        data_dir / "narrow.h5ad", n_cells=300, n_genes=N_GENES, n_peaks=N_PEAKS, seed=6, progress=False
    )


def _loader(path, **kw):
    kwargs = dict(
        batch_size=8,
        shuffle=True,
        seed=4,
        device="cudasim",
        subset=SUBSET,
        layer="counts",
        transform={"GEX": "log1p_size_factor", "ATAC": "binarize"},
        obs_keys=["cell_type", "GEX_n_genes", "GEX_size_factors"],
        chunk_size=8,
        window=2,
        super_batch_bytes=4 * 8 * (N_GENES + N_PEAKS) * 4,  # four batches of 8 float32 rows
    )
    loader = MultiomeLoader(path, **{**kwargs, **kw})
    loader.backend.ledger.record = True
    return loader


def _events_handed(ledger) -> tuple[list[str], list[str]]:
    recorded = [
        op.name.split("#")[-1] for op in ledger.ops if op.kind == "event" and op.thread.startswith("gpuload")
    ]
    waited = [op.name.split("#")[-1] for op in ledger.ops if op.kind == "wait"]
    return recorded, waited


@pytest.mark.parametrize(
    "options",
    [{}, {"preload": True}, {"output": "sparse_csr", "subset": SUBSET[:16]}, {"dtype": torch.float16}],
    ids=["streaming", "preloaded", "sparse", "float16"],  # the simulated warps of sparse are slow
)
def test_all_loader_work_runs_on_the_loader_stream(narrow_h5ad, options):
    loader = _loader(narrow_h5ad, **options)
    batches = list(loader)
    ledger = loader.backend.ledger
    assert isinstance(loader.backend, SimulatedCudaBackend)
    assert ledger.counts["launch"] > 0 and ledger.counts["h2d"] > 0
    assert ledger.off_stream() == [], ledger.off_stream()[:5]
    # Every batch waited on an event the assembler recorded, before it was handed out.
    recorded, waited = _events_handed(ledger)
    assert len(waited) == len(batches) == len(loader)
    assert set(waited) <= set(recorded)
    consumer = threading.current_thread().name
    handed = [op for op in ledger.ops if op.kind in ("wait", "record_stream")]
    assert {op.thread for op in handed} == {consumer}
    assert ledger.counts["record_stream"] >= len(batches)


def test_launches_and_syncs_are_per_super_batch(narrow_h5ad):
    loader = _loader(narrow_h5ad, preload=True, chunk_size=16, window=4)  # read groups of 8 batches
    list(loader)  # the preload happens in the first epoch
    ledger = loader.backend.ledger
    ledger.reset()
    batches = len(list(loader))
    assert batches == 8
    super_batches = 1 + 2  # the first batch is read alone, then 7 batches, four per launch
    assert ledger.counts["launch"] <= super_batches
    assert ledger.counts["sync"] <= super_batches
    assert ledger.counts["h2d"] <= super_batches  # one upload of rows and offsets per launch


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


def test_pinned_memory_is_bounded_by_the_ring(narrow_h5ad):
    loader = _loader(narrow_h5ad, shuffle=False, chunk_size=16, window=1)
    for _ in range(2):
        list(loader)
    ledger = loader.backend.ledger
    largest_read = max(op.size for op in ledger.ops if op.kind == "h2d" and op.name == "block data")
    # Two buffers for reads, two for super-batch rows, each rounded up to the ring's 8 MiB step.
    assert ledger.pinned_peak <= 4 * (1 << 23) + 4 * largest_read
    assert ledger.pinned_bytes == ledger.pinned_peak  # held, reused: never re-pinned per group


def test_a_failed_pinned_allocation_falls_back_to_streaming(narrow_h5ad, monkeypatch):
    loader = _loader(narrow_h5ad, preload=True, shuffle=False)
    pinned = loader.backend.pinned
    calls = []

    def first_fails(nbytes):
        calls.append(nbytes)
        if len(calls) == 1:
            raise MemoryError("cannot page-lock memory (injected)")
        return pinned(nbytes)

    monkeypatch.setattr(loader.backend, "pinned", first_fails)
    with pytest.warns(RuntimeWarning, match="streaming instead"):
        rows = np.concatenate([b["index"].numpy() for b in loader])
    np.testing.assert_array_equal(rows, SUBSET)
    assert loader.fetcher.preload is False


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
