"""The device room on its own (gpuload.device), no loader: which face a ``device=`` means and
how a GPU is detected (by asking the driver); the page-locked rings (slots in turn, growth,
reuse only after a slot's fence, every byte released) and the pool that leases them to runs;
the ledger's counting and recording; obs frames on the faces without cuDF; the host output
buffers recycled only once no batch views them."""

from __future__ import annotations

import threading

import numpy as np
import pandas as pd
import pytest
import torch

from gpuload.device import (
    Backend,
    Carver,
    DeviceLedger,
    HostBufferPool,
    ObsFrames,
    PinnedRing,
    RingPool,
    RunRings,
    SimulatedCudaBackend,
    get_backend,
    gpu_available,
    simulator_enabled,
)
from gpuload.device.pinned import ALIGN, GROWTH
from gpuload.errors import ArgumentError, DeviceError
from gpuload.plan.obs import query_mask

from .conftest import recording_backend


# -- select -----------------------------------------------------------------------------------
def test_cpu_and_auto_without_a_gpu_are_the_cpu_face():
    assert not gpu_available()  # no GPU here (and never under the simulator)
    for device in ("cpu", "auto", torch.device("cpu")):
        backend = get_backend(device)
        assert type(backend) is Backend and backend.name == "cpu" and not backend.streams


def test_a_backend_already_made_is_used_as_it_is():
    backend = Backend()
    assert get_backend(backend) is backend


@pytest.mark.cudasim
def test_cudasim_is_the_simulated_stream_face():
    assert simulator_enabled()
    backend = get_backend("cudasim")
    assert isinstance(backend, SimulatedCudaBackend) and backend.streams and not backend.on_gpu


@pytest.mark.parametrize("device", ["tpu", "cuda:x", "gpu:0", "cuda0", ""])
def test_an_unknown_device_names_the_valid_ones(device):
    with pytest.raises(ArgumentError, match=f"device must be 'auto', 'cpu', 'cuda'.*got {device!r}"):
        get_backend(device)


@pytest.mark.parametrize("device", ["cuda", "cuda:0", "cuda:3"])
def test_cuda_without_a_gpu_is_a_device_error_naming_it(device):
    with pytest.raises(DeviceError, match=f"device={device!r}"):
        get_backend(device)


@pytest.fixture
def driver(monkeypatch):
    """``gpu_available()`` asked afresh, outside the simulator, with the driver's answers set by
    the test (``driver(torch_says, numba_says)``); the cached answer is restored after."""
    numba_cuda = pytest.importorskip("numba.cuda")
    gpu_available.cache_clear()
    monkeypatch.setenv("NUMBA_ENABLE_CUDASIM", "0")

    def answer(torch_says: bool, numba_says: bool) -> bool:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: torch_says)
        monkeypatch.setattr(numba_cuda, "is_available", lambda: numba_says)
        gpu_available.cache_clear()
        return gpu_available()

    yield answer
    monkeypatch.undo()
    gpu_available.cache_clear()


def test_a_gpu_is_what_the_driver_reports_not_what_imports(driver):
    """torch and numba.cuda import on this machine; only both drivers saying yes is a GPU."""
    assert not driver(False, True)
    assert not driver(True, False)
    assert driver(True, True)


def test_the_simulator_is_never_a_gpu(monkeypatch):
    monkeypatch.setenv("NUMBA_ENABLE_CUDASIM", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    gpu_available.cache_clear()
    try:
        assert simulator_enabled() and not gpu_available()
    finally:
        monkeypatch.undo()
        gpu_available.cache_clear()


# -- pinned -----------------------------------------------------------------------------------
def test_carver_cuts_aligned_views_of_one_buffer():
    buffer = np.zeros(Carver.size_of([(10, np.int64), (3, np.float32)]), dtype=np.uint8)
    carve = Carver(buffer)
    a, b = carve(10, np.int64), carve(3, np.float32)
    assert a.dtype == np.int64 and a.size == 10 and b.dtype == np.float32 and b.size == 3
    assert np.shares_memory(a, buffer) and np.shares_memory(b, buffer) and not np.shares_memory(a, b)
    assert (b.__array_interface__["data"][0] - buffer.__array_interface__["data"][0]) % ALIGN == 0
    with pytest.raises(MemoryError, match="does not fit its"):
        carve(len(buffer), np.uint8)


def test_a_ring_hands_out_its_slots_in_turn_and_grows_in_steps():
    backend = recording_backend()
    ring = PinnedRing(backend, slots=2)
    slot0, small = ring.take(100)
    slot1, _ = ring.take(100)
    assert (slot0, slot1) == (0, 1) and small.size == GROWTH
    ring.release(slot0, None)
    again, same = ring.take(GROWTH)  # fits: the slot's buffer is reused
    assert again == 0 and same is small
    ring.release(again, None)
    ring.take(1)
    grown_slot, grown = ring.take(GROWTH + 1)  # slot 0 again, re-pinned larger
    assert grown_slot == 0 and grown.size == 2 * GROWTH and grown is not small
    # the smaller buffer is released before the larger one is pinned
    assert backend.ledger.pinned_bytes == backend.ledger.pinned_peak == 3 * GROWTH
    ring.close()
    assert backend.ledger.pinned_bytes == 0 and ring.buffers == [None, None]


def test_a_slot_is_reused_only_after_its_fence():
    backend = recording_backend()
    ring = PinnedRing(backend, slots=1)
    slot, _ = ring.take(10)
    fence = backend.fence("copy out of the slot")
    ring.release(slot, fence)
    ring.take(10)
    syncs = [op for op in backend.ledger.ops if op.kind == "sync"]
    assert [op.event for op in syncs] == [fence.number]  # the host waited on that fence first
    assert ring.fences == [None]
    ring.close()


def test_a_pool_leases_rings_to_runs_and_keeps_one_set_between_runs():
    backend = SimulatedCudaBackend()
    pool = RingPool(backend, prefetch=2)
    first, second = pool.lease(), pool.lease()  # two live runs: two sets
    assert isinstance(first, RunRings) and first is not second
    assert len(first.meta.buffers) == len(first.status.buffers) == 2 + 2  # prefetch + 2 in flight
    for rings in (first, second):
        rings.reads.take(10)
    held = backend.ledger.pinned_bytes
    pool.give_back(first)
    pool.give_back(second)  # one set is kept: the other is released
    assert backend.ledger.pinned_bytes == held // 2
    assert pool.lease() is first
    pool.give_back(first)
    pool.close()
    assert backend.ledger.pinned_bytes == 0


def test_faces_without_streams_lease_nothing():
    pool = RingPool(Backend(), prefetch=2)
    assert pool.lease() is None
    pool.give_back(None)
    pool.close()


# -- ledger -----------------------------------------------------------------------------------
def test_the_ledger_counts_always_and_records_when_asked():
    ledger = DeviceLedger()
    ledger.add("h2d", "block", "copy", 64)
    ledger.add("pinned", "buffer", "host", 100)
    ledger.add("pinned", "buffer", "host", -100)
    assert ledger.counts == {"h2d": 1, "pinned": 2} and ledger.ops == []
    assert ledger.pinned_bytes == 0 and ledger.pinned_peak == 100
    ledger.record = True
    ledger.add("launch", "kernel", "compute", reads=((1, 8),), writes=((9, 8),))
    (op,) = ledger.ops
    assert (op.kind, op.name, op.stream, op.thread) == ("launch", "kernel", "compute", "MainThread")
    assert op.reads == ((1, 8),) and op.writes == ((9, 8),)
    ledger.add("pinned", "buffer", "host", 50)
    ledger.reset()
    assert not ledger.counts and not ledger.ops and ledger.pinned_bytes == 50


def test_off_stream_finds_a_loader_threads_work_on_another_stream():
    ledger = DeviceLedger(record=True)

    def work():
        ledger.add("launch", "on the compute stream", "compute")
        ledger.add("h2d", "on the default stream", "default")
        ledger.add("sync", "a host wait", "host")

    for name in ("gpuload-assembler-1", "consumer"):
        thread = threading.Thread(target=work, name=name)
        thread.start()
        thread.join()
    assert [(op.thread, op.name) for op in ledger.off_stream()] == [
        ("gpuload-assembler-1", "on the default stream")
    ]


# -- frames -----------------------------------------------------------------------------------
@pytest.mark.parametrize("device", ["cpu", pytest.param("cudasim", marks=pytest.mark.cudasim)])
def test_faces_without_a_gpu_keep_obs_in_pandas(device):
    obs = pd.DataFrame({"batch": pd.Categorical(["a", "b", "a", "c"]), "n": [1, 5, 3, 7]})
    frames = ObsFrames(get_backend(device))
    assert frames.library == "pandas" and frames.frame(obs) is obs
    np.testing.assert_array_equal(frames.query(obs, "batch == 'a' or n > 6"), [True, False, True, True])
    np.testing.assert_array_equal(frames.query(obs, "n > 2"), query_mask(obs, "n > 2"))
    assert frames.matrices(None, obs) is None


# -- host output buffers ----------------------------------------------------------------------
def test_an_output_buffer_is_recycled_only_once_no_batch_views_it():
    pool = HostBufferPool(max_buffers=2)
    first = pool.take(16, torch.float32)
    view = first[4:8]  # a batch the user still holds
    del first
    second = pool.take(16, torch.float32)
    assert not np.shares_memory(second.numpy(), view.numpy())
    address = second.data_ptr()
    del second
    assert pool.take(16, torch.float32).data_ptr() == address  # unreferenced: reused
    assert pool.take(8, torch.float64).dtype == torch.float64


def test_a_pooled_buffer_serves_any_smaller_request_and_grows_in_steps():
    pool = HostBufferPool(max_buffers=2, round_to=1024)
    first = pool.take_array(1000, np.dtype(np.uint8))
    assert first.size == 1000 and first.base.size == 1024
    address = first.ctypes.data
    del first
    shorter = pool.take_array(10, np.dtype(np.uint8))  # a short last read group: the same memory
    assert shorter.ctypes.data == address
    held = shorter[2:5]  # a view the loader still holds keeps the buffer from reuse
    del shorter
    assert not np.shares_memory(pool.take_array(10, np.dtype(np.uint8)), held)


def test_cpu_reads_go_into_recycled_buffers_and_batches_stay_exact(tmp_path):
    from gpuload import MultiomeLoader
    from gpuload.bmmc.synth import write_synthetic

    path = write_synthetic(tmp_path / "s.h5ad", n_cells=300, n_genes=40, n_peaks=60, seed=3)
    loader = MultiomeLoader(path, batch_size=16, shuffle=False, device="cpu")

    def epoch():
        return [{k: b[k].clone() for k in ("GEX", "ATAC", "index")} for b in loader]

    first = epoch()
    addresses = []  # of the buffers read into (not the buffers: holding one keeps it from reuse)
    original = loader.backend.read_empty

    def spy(n, dtype):
        buffer = original(n, dtype)
        addresses.append(buffer.ctypes.data)
        return buffer

    loader.backend.read_empty = spy
    again, third = epoch(), epoch()
    assert len(set(addresses)) < len(addresses)  # later reads went into earlier reads' memory
    for a, b in zip(first + first, again + third, strict=True):
        for key in a:
            torch.testing.assert_close(a[key], b[key])


def test_a_full_pool_forgets_its_smallest_free_buffer_first():
    """Big buffers cost the most page faults to make again: a full pool drops a small free one
    (never one a batch still views), and the big one it kept serves the next big request."""
    pool = HostBufferPool(max_buffers=2)
    big = pool.take_array(1000, np.dtype(np.uint8))
    big_address = big.ctypes.data
    small = pool.take_array(10, np.dtype(np.uint8))
    del big, small  # both free now
    held = pool.take_array(2000, np.dtype(np.uint8))  # a third size: the pool is full
    assert pool.take_array(1000, np.dtype(np.uint8)).ctypes.data == big_address
    assert held.size == 2000
